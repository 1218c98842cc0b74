//! Compiling an upload in a child process, under bounds on its CPU time, memory and wall time.
//!
//! The shape limits (`shape.rs`) refuse modules shaped to be slow to compile, but what
//! cranelift spends on a module inside them is only known by compiling it, and a compile in
//! the node's own process spends the node's memory. So the node compiles uploads in a child:
//!
//! - The parent ([`compile_in_child`]) starts [`ChildCompile::program`] with its `args` (the
//!   node's own binary and `__compile-plugin`) plus the bounds and the engine settings that
//!   shape the code, writes the upload on the child's stdin, reads the compiled artifact from
//!   its stdout (at most [`ChildCompile::max_artifact_bytes`], into an anonymous mapping
//!   rather than the heap: [`read_artifact`]), and kills it when
//!   [`ChildCompile::wall`] has passed.
//! - The child sets its own rlimits first (`RLIMIT_CPU`: the kernel stops it with `SIGXCPU`;
//!   `RLIMIT_DATA`: an allocation past it fails and the process aborts), then
//!   [`serve_child`] compiles with the same code-generation settings as the node's engine
//!   ([`compile_config`]), and writes `Component::serialize`'s output.
//! - The parent maps the artifact with `Component::deserialize`, which checks the wasmtime
//!   version and the engine configuration it was compiled for; then the usual checks run
//!   (world, imports, one instantiation).
//!
//! A compile that hits a bound is refused with [`LoadError::CompileBound`], which names the
//! bound; nothing of it outlives the child.

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;

use memmap2::{MmapMut, MmapOptions};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, WasmFeatures};

use crate::limits::ChildCompile;
use crate::{LoadError, PolicyLimits};

/// What the child needs: its bounds (which it applies to itself) and the engine settings that
/// shape the compiled code, so that the parent's engine accepts the artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildParams {
    pub cpu_secs: u64,
    pub memory_bytes: u64,
    pub max_plugin_bytes: usize,
    pub max_wasm_stack: usize,
    pub max_memory_bytes: usize,
}

impl ChildParams {
    /// Parses the arguments [`compile_in_child`] passes (`--name=value` each, all required).
    pub fn from_args<S: AsRef<str>>(args: &[S]) -> Result<ChildParams, String> {
        let value = |name: &str| -> Result<u64, String> {
            let prefix = format!("--{name}=");
            let v = args
                .iter()
                .find_map(|a| a.as_ref().strip_prefix(&prefix))
                .ok_or_else(|| format!("missing --{name}"))?;
            v.parse()
                .map_err(|_| format!("--{name}: {v:?} is not a number"))
        };
        let size = |name: &str| -> Result<usize, String> {
            usize::try_from(value(name)?).map_err(|_| format!("--{name} is too large"))
        };
        Ok(ChildParams {
            cpu_secs: value("cpu-secs")?,
            memory_bytes: value("memory-bytes")?,
            max_plugin_bytes: size("max-plugin-bytes")?,
            max_wasm_stack: size("max-wasm-stack")?,
            max_memory_bytes: size("max-memory-bytes")?,
        })
    }
}

/// The child's exit code for a module wasmtime refused (its message is on stderr).
const EXIT_INVALID: i32 = 3;
/// The child's exit code for input it could not read or that is over the size limit.
const EXIT_INPUT: i32 = 4;
/// Most bytes of the child's stderr kept (wasmtime's message).
const MAX_STDERR: u64 = 16 << 10;

/// The child's side: reads the upload from `input`, compiles it, writes the artifact to
/// `output`; returns the process's exit code. The caller has applied `params`' rlimits.
pub fn serve_child(
    params: &ChildParams,
    input: impl Read,
    mut output: impl Write,
    mut errors: impl Write,
) -> i32 {
    let mut wasm = Vec::new();
    let max = params.max_plugin_bytes as u64;
    if let Err(e) = input.take(max + 1).read_to_end(&mut wasm) {
        let _ = writeln!(errors, "reading the plugin: {e}");
        return EXIT_INPUT;
    }
    if wasm.len() as u64 > max {
        let _ = writeln!(errors, "the plugin is over {max} bytes");
        return EXIT_INPUT;
    }
    let limits = PolicyLimits {
        max_plugin_bytes: params.max_plugin_bytes,
        max_wasm_stack: params.max_wasm_stack,
        max_memory_bytes: params.max_memory_bytes,
        ..PolicyLimits::default()
    };
    // Functions compile in parallel, as in the node; `RLIMIT_CPU` counts every thread's time.
    let config = compile_config(&limits);
    let engine = match Engine::new(&config) {
        Ok(engine) => engine,
        Err(e) => {
            let _ = writeln!(errors, "engine: {e:#}");
            return 1;
        }
    };
    match engine.precompile_component(&wasm) {
        Ok(artifact) => match output.write_all(&artifact).and_then(|()| output.flush()) {
            Ok(()) => 0,
            Err(e) => {
                let _ = writeln!(errors, "writing the artifact: {e}");
                1
            }
        },
        Err(e) => {
            let _ = write!(errors, "{e:#}");
            EXIT_INVALID
        }
    }
}

/// The parent's side: compiles `wasm` in a child as `child` says, for `engine`.
pub(crate) fn compile_in_child(
    engine: &Engine,
    child: &ChildCompile,
    limits: &PolicyLimits,
    wasm: &[u8],
) -> Result<Component, LoadError> {
    let failed = |detail: String| LoadError::CompilerFailed(detail);
    let mut process = Command::new(&child.program)
        .args(&child.args)
        .args(child.child_args(limits))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("starting {}: {e}", child.program.display())))?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) = (
        process.stdin.take(),
        process.stdout.take(),
        process.stderr.take(),
    ) else {
        let _ = process.kill();
        let _ = process.wait();
        return Err(failed("the compiler process has no pipes".into()));
    };
    let max = child.max_artifact_bytes;
    let (artifact, status, stderr, timed_out) = std::thread::scope(|s| {
        // A child that stops reading (it hit a bound) closes the pipe: the write fails then,
        // which is not an error of its own.
        s.spawn(move || {
            let _ = stdin.write_all(wasm);
        });
        let errors = s.spawn(move || {
            let mut text = String::new();
            let _ = stderr.take(MAX_STDERR).read_to_string(&mut text);
            text
        });
        let (tx, rx) = mpsc::channel();
        s.spawn(move || {
            let _ = tx.send(read_artifact(stdout, max));
        });
        // The reader finishes when the child exits (its stdout closes) or the artifact is
        // over the bound; past the wall-clock bound the child is killed, which closes it.
        let (artifact, timed_out) = match rx.recv_timeout(child.wall) {
            Ok(read) => (read, false),
            Err(_) => {
                let _ = process.kill();
                let read = rx
                    .recv()
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::Other.into()));
                (read, true)
            }
        };
        if artifact.as_ref().is_ok_and(|a| a.len as u64 > max) {
            let _ = process.kill();
        }
        let status = process.wait();
        let stderr = errors.join().unwrap_or_default();
        (artifact, status, stderr, timed_out)
    });
    let status = status.map_err(|e| failed(format!("waiting for the compiler process: {e}")))?;
    if timed_out {
        return Err(LoadError::CompileBound {
            what: format!("wall-clock time ({} s)", child.wall.as_secs()),
        });
    }
    let artifact = artifact.map_err(|e| failed(format!("reading the compiled plugin: {e}")))?;
    if artifact.len as u64 > max {
        return Err(LoadError::CompileBound {
            what: format!("compiled size ({max} bytes)"),
        });
    }
    if !status.success() {
        return Err(refusal(status, &stderr, child));
    }
    deserialize(engine, artifact.bytes())
}

/// The child's artifact, in an anonymous mapping of the bound's size of which only the
/// written pages are ever backed.
struct Artifact {
    map: MmapMut,
    len: usize,
}

impl Artifact {
    fn bytes(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

/// Reads the child's stdout, up to `max + 1` bytes (one more says "over the bound").
///
/// Not into a `Vec`: a buffer of an artifact's size (hundreds of KiB and up) that is freed
/// raises glibc's mmap threshold to its size and the trim threshold to twice that, after
/// which every allocator arena may keep that much freed memory — 16 arenas of ~1 MiB after
/// 200 refused uploads (docs/reliability.md, "Refused uploads and the node's memory"). A
/// mapping goes back to the kernel whole when dropped.
fn read_artifact(mut stdout: impl Read, max: u64) -> std::io::Result<Artifact> {
    let size = usize::try_from(max.saturating_add(1)).unwrap_or(usize::MAX);
    let mut map = MmapOptions::new().len(size).map_anon()?;
    let mut len = 0;
    while len < size {
        match stdout.read(&mut map[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Artifact { map, len })
}

/// Why the child did not succeed, in the uploader's terms.
fn refusal(status: ExitStatus, stderr: &str, child: &ChildCompile) -> LoadError {
    let memory = || LoadError::CompileBound {
        what: format!("memory ({} bytes)", child.memory_bytes),
    };
    match status.code() {
        Some(EXIT_INVALID) => return LoadError::Invalid(stderr.trim().to_owned()),
        // Rust's allocation failure message; exit code 134 if a shell were in between.
        _ if stderr.contains("memory allocation of") => return memory(),
        Some(code) => {
            return LoadError::CompilerFailed(format!(
                "the compiler process exited with {code}: {}",
                stderr.trim()
            ))
        }
        None => {}
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        match status.signal() {
            // RLIMIT_CPU's soft limit.
            Some(24) => {
                return LoadError::CompileBound {
                    what: format!("CPU time ({} s)", child.cpu_secs),
                }
            }
            // An allocation past RLIMIT_DATA aborts; so may one of the allocator's own.
            Some(6) => return memory(),
            // The kernel's out-of-memory killer, or RLIMIT_CPU's hard limit.
            Some(9) => {
                return LoadError::CompileBound {
                    what: "memory or CPU time (killed)".into(),
                }
            }
            _ => {}
        }
    }
    LoadError::CompilerFailed(format!("the compiler process ended with {status}"))
}

/// The crate's second `unsafe`, beside the artifact cache's (`cache.rs`).
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> Result<Component, LoadError> {
    // SAFETY: `Component::deserialize` trusts its input to be `Component::serialize` output
    // of a compatible engine, and maps it as machine code. These bytes are what the child
    // process wrote: the node's own binary (`ChildCompile::program`, which the node sets to
    // itself), running `serve_child`, which writes only `Engine::precompile_component`'s
    // output for an engine with this engine's code-generation settings. wasmtime checks its
    // version and those settings before mapping. A plugin that could subvert the compiler
    // to write other bytes could equally subvert it in this process, where the node compiled
    // before; the child adds bounds, not new trust.
    unsafe { Component::deserialize(engine, artifact) }
        .map_err(|e| LoadError::CompilerFailed(format!("loading the compiled plugin: {e:#}")))
}

/// Guard pages after each linear memory. Bounds are checked explicitly (the reservation is
/// only as large as the memory cap), so this only needs to absorb small constant offsets.
const MEMORY_GUARD_BYTES: u64 = 64 << 10;

/// Everything that shapes the compiled code: what a compile in a child process
/// (`compile.rs`) must use for this engine to accept its artifact.
pub(crate) fn compile_config(limits: &PolicyLimits) -> Config {
    let mut config = Config::new();
    config
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(limits.max_wasm_stack)
        .wasm_component_model(true)
        // Proposals a policy plugin does not need. GC, exceptions, threads and
        // component-model async are already compiled out (cargo features).
        .wasm_memory64(false)
        // On: a component composed of components (JavaScript's, docs/plugins.md §14) gets
        // adapters that copy between their memories, and wasmtime generates those with
        // multi-memory (with it off, it panics compiling one). Memory stays bounded per
        // instance, not per memory: the limiter caps the sum of an instance's memories.
        .wasm_multi_memory(true)
        // On: QuickJS, the JavaScript engine of JS plugins, is compiled with tail calls. A
        // tail call replaces its caller's frame: it cannot grow the stack past
        // `max_wasm_stack`, and every call still costs fuel.
        .wasm_tail_call(true)
        .wasm_relaxed_simd(false)
        .wasm_wide_arithmetic(false)
        .wasm_custom_page_sizes(false)
        .wasm_stack_switching(false)
        .wasm_shared_everything_threads(false)
        .wasm_features(WasmFeatures::FUNCTION_REFERENCES, false)
        // Reserve only what the cap allows: thousands of instances then cost little
        // address space, at the price of explicit bounds checks.
        .memory_reservation(round_up_to_page(limits.max_memory_bytes))
        .memory_guard_size(MEMORY_GUARD_BYTES)
        .memory_reservation_for_growth(0)
        .memory_may_move(false);
    config
}

fn round_up_to_page(bytes: usize) -> u64 {
    const PAGE: u64 = 64 << 10;
    (bytes as u64).div_ceil(PAGE) * PAGE
}

#[cfg(test)]
mod tests {
    //! The parent's side against stand-in children (`sh` scripts that behave as a compile
    //! past each bound would); the real child, the node's binary, is tested in
    //! `host/switchboard/tests/plugin_compile.rs`.

    use std::time::Duration;

    use super::*;

    fn run(script: &str, tune: impl FnOnce(&mut ChildCompile)) -> LoadError {
        let mut child = ChildCompile::new("sh", vec!["-c".into(), script.into(), "sh".into()]);
        tune(&mut child);
        let limits = PolicyLimits::default();
        match compile_in_child(&Engine::default(), &child, &limits, b"\0asm not compiled") {
            Ok(_) => panic!("{script}: loaded"),
            Err(e) => e,
        }
    }

    fn bound(e: LoadError) -> String {
        match e {
            LoadError::CompileBound { what } => what,
            other => panic!("expected a compile bound, got {other:?}"),
        }
    }

    #[test]
    fn a_child_past_the_wall_clock_bound_is_killed_and_named() {
        let what = bound(run("exec sleep 600", |c| {
            c.wall = Duration::from_millis(200);
        }));
        assert!(what.starts_with("wall-clock time"), "{what}");
    }

    #[test]
    fn a_child_stopped_for_cpu_time_is_named() {
        let what = bound(run("kill -XCPU $$", |_| {}));
        assert_eq!(what, "CPU time (120 s)");
    }

    #[test]
    fn a_child_out_of_memory_is_named() {
        let script = "echo 'memory allocation of 1048576 bytes failed' >&2; kill -ABRT $$";
        assert_eq!(bound(run(script, |_| {})), "memory (2147483648 bytes)");
        assert_eq!(
            bound(run("kill -ABRT $$", |c| c.memory_bytes = 1 << 20)),
            "memory (1048576 bytes)"
        );
    }

    #[test]
    fn an_artifact_over_its_bound_is_refused() {
        let what = bound(run("head -c 5000 /dev/zero", |c| {
            c.max_artifact_bytes = 1000
        }));
        assert_eq!(what, "compiled size (1000 bytes)");
    }

    #[test]
    fn wasmtimes_refusal_is_passed_on_as_an_invalid_component() {
        let e = run(
            "cat >/dev/null; echo 'type mismatch at 0x2a' >&2; exit 3",
            |_| {},
        );
        assert_eq!(e, LoadError::Invalid("type mismatch at 0x2a".into()));
    }

    #[test]
    fn a_compiler_that_fails_or_cannot_start_is_the_nodes_failure() {
        let e = run("echo broken >&2; exit 1", |_| {});
        assert!(
            matches!(&e, LoadError::CompilerFailed(m) if m.contains("exited with 1: broken")),
            "{e:?}"
        );
        let limits = PolicyLimits::default();
        let missing = ChildCompile::new("/nonexistent/compiler", Vec::new());
        let e = compile_in_child(&Engine::default(), &missing, &limits, b"")
            .err()
            .unwrap();
        assert!(
            matches!(&e, LoadError::CompilerFailed(m) if m.contains("starting")),
            "{e:?}"
        );
    }

    #[test]
    fn the_child_reads_back_every_argument_it_is_given() {
        let limits = PolicyLimits {
            max_plugin_bytes: 123,
            max_wasm_stack: 456,
            max_memory_bytes: 789,
            ..PolicyLimits::default()
        };
        let mut child = ChildCompile::new("x", Vec::new());
        child.cpu_secs = 7;
        child.memory_bytes = 8;
        let params = ChildParams::from_args(&child.child_args(&limits)).unwrap();
        assert_eq!(
            params,
            ChildParams {
                cpu_secs: 7,
                memory_bytes: 8,
                max_plugin_bytes: 123,
                max_wasm_stack: 456,
                max_memory_bytes: 789,
            }
        );
        assert!(ChildParams::from_args(&["--cpu-secs=1"]).is_err());
        assert!(ChildParams::from_args(&child.child_args(&limits)[1..]).is_err());
    }

    #[test]
    fn the_child_refuses_input_over_the_plugin_limit() {
        let params = ChildParams {
            cpu_secs: 1,
            memory_bytes: 1,
            max_plugin_bytes: 4,
            max_wasm_stack: 512 << 10,
            max_memory_bytes: 16 << 20,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = serve_child(&params, &b"12345"[..], &mut out, &mut err);
        assert_eq!(code, EXIT_INPUT);
        assert!(out.is_empty());
        assert!(String::from_utf8_lossy(&err).contains("over 4 bytes"));
    }
}
