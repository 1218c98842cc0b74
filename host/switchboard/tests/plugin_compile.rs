//! Plugin uploads compiled in a child process (the `switchboard` binary's
//! `__compile-plugin`), under bounds on CPU time and memory (`switchboard_policy::compile`).

use std::time::Duration;

use switchboard_policy::{ChildCompile, LoadError, PolicyEngine, PolicyLimits};

fn engine(tune: impl FnOnce(&mut ChildCompile)) -> PolicyEngine {
    let mut child = ChildCompile::new(
        env!("CARGO_BIN_EXE_switchboard"),
        vec![switchboard::COMPILE_CHILD_ARG.into()],
    );
    // Generous: a busy machine must not turn a real plugin's compile into a refusal.
    child.wall = Duration::from_secs(600);
    tune(&mut child);
    PolicyEngine::new(PolicyLimits {
        compile: Some(child),
        ..PolicyLimits::default()
    })
    .unwrap()
}

fn wasm(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// The child's artifact is what this engine would have compiled: it deserializes, passes the
/// world and instantiation checks, and its hooks run.
#[test]
fn a_plugin_compiled_in_the_child_loads_and_runs() {
    let engine = engine(|_| {});
    let plugin = engine.load(&wasm(plugins_artifacts::PRIORITY)).unwrap();
    let report = plugin
        .self_test(&Default::default())
        .expect("every hook answers like the in-process build");
    assert!(!report.hooks.is_empty());
}

/// Not a component wasmtime accepts: the child's refusal comes back as the same typed error
/// as an in-process compile.
#[test]
fn wasmtimes_refusal_in_the_child_is_an_invalid_component() {
    let engine = engine(|_| {});
    // A component header, then nothing valid.
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    bytes.extend_from_slice(&[0x01, 0xff, 0xff]);
    match engine.load(&bytes) {
        Err(LoadError::Invalid(_)) => {}
        other => panic!("{other:?}"),
    }
}

/// A compile past its CPU time is stopped by the kernel (`RLIMIT_CPU`) and refused, naming
/// the bound. The Python plugin (CPython inside) takes several CPU seconds to compile on any
/// machine, so a one-second bound always stops it.
#[test]
fn a_compile_past_its_cpu_time_is_refused() {
    let engine = engine(|c| c.cpu_secs = 1);
    match engine.load(&wasm(plugins_artifacts::PRIORITY_PY)) {
        Err(LoadError::CompileBound { what }) => assert_eq!(what, "CPU time (1 s)"),
        other => panic!("{:?}", other.map(|_| "loaded")),
    }
}

/// A compile past its memory (`RLIMIT_DATA`) fails to allocate and is refused, naming the
/// bound; the node's own memory is untouched. 64 MiB do not hold the Python plugin's
/// compile (the upload alone is 17.6 MiB).
#[test]
fn a_compile_past_its_memory_is_refused() {
    let engine = engine(|c| c.memory_bytes = 64 << 20);
    match engine.load(&wasm(plugins_artifacts::PRIORITY_PY)) {
        Err(LoadError::CompileBound { what }) => {
            assert_eq!(what, format!("memory ({} bytes)", 64u64 << 20))
        }
        other => panic!("{:?}", other.map(|_| "loaded")),
    }
}
