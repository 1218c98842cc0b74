//! Target `plugin_upload`: what an upload goes through (`PolicyEngine::load`, then
//! `Plugin::self_test`, as `control::ops::upload_plugin` runs them) fed hostile wasm.
//!
//! Modes (first input byte):
//! - raw: the rest as the upload (the checked-in corpus holds real components, hostile and
//!   benign, so libFuzzer's mutations start from real binaries);
//! - policy-shaped: a core module from wasm-smith with exactly the imports and exports the
//!   `tenant-policy` world lowers to (`wit_component::dummy_module`), whose function bodies
//!   are arbitrary code (loops, traps, wild pointers, huge allocations), wrapped into a
//!   component with `wit-component`: it passes the world checks, so the self-test runs it;
//! - component: an arbitrary component from wasm-smith's component-model generator;
//! - core: an arbitrary core module from wasm-smith, as is.
//!
//! Checks: nothing panics; `load` and `self_test` return (typed errors with a message, or a
//! report naming every hook) within [`BUDGET`] each, whatever the code does.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::{Result as AResult, Unstructured};
use switchboard_policy::{Hook, LoadError, PolicyEngine, PolicyLimits};
use wit_parser::{LiftLowerAbi, ManglingAndAbi, Resolve, WorldId};

/// Longest a load or a self-test may take before the target reports a hang. Compiling is
/// not bounded by fuel (only the plugin size bounds it), so this is generous; libFuzzer's
/// own `-timeout` catches a real hang either way.
pub const BUDGET: Duration = Duration::from_secs(20);

fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        PolicyEngine::new(PolicyLimits {
            // One upload at a time: a small pool keeps the reserved address space small
            // (sanitizers care). Every other budget is the node's default.
            max_instances: 8,
            ..PolicyLimits::default()
        })
        .expect("engine")
    })
}

fn world() -> &'static (Resolve, WorldId, Vec<u8>) {
    static WORLD: OnceLock<(Resolve, WorldId, Vec<u8>)> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut resolve = Resolve::default();
        let pkg = resolve
            .push_str("policy.wit", include_str!("../../wit/policy.wit"))
            .expect("wit/policy.wit parses");
        let world = resolve
            .select_world(&[pkg], Some("tenant-policy"))
            .expect("world tenant-policy");
        let shape = wit_component::dummy_module(
            &resolve,
            world,
            ManglingAndAbi::Legacy(LiftLowerAbi::Sync),
        );
        (resolve, world, shape)
    })
}

/// What the uploads of this process came to (for the figures): candidates, loaded, passed
/// the self-test.
pub static STATS: [std::sync::atomic::AtomicU64; 3] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

fn count(i: usize) {
    STATS[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if let Some(wasm) = generate(mode, rest) {
        upload(&wasm);
    }
}

/// The upload an input stands for (see the module docs for the modes), if it makes one.
pub fn generate(mode: u8, rest: &[u8]) -> Option<Vec<u8>> {
    match mode % 4 {
        0 => Some(rest.to_vec()),
        1 => policy_shaped(&mut Unstructured::new(rest)).ok().flatten(),
        2 => component(&mut Unstructured::new(rest)).ok(),
        _ => core_module(&mut Unstructured::new(rest)).ok(),
    }
}

/// Like [`upload`], but says what happened (for `examples/plugin_outcomes.rs`).
pub fn outcome(wasm: &[u8]) -> String {
    match engine().load(wasm) {
        Err(e) => format!("load: {e}"),
        Ok(p) => match p.self_test(&Default::default()) {
            Ok(_) => "passed".into(),
            Err(e) => e.to_string(),
        },
    }
}

/// `load`, then `self_test` if it loaded: what an upload runs. Returns whether it passed.
pub fn upload(wasm: &[u8]) -> bool {
    count(0);
    let started = Instant::now();
    let loaded = engine().load(wasm);
    let took = started.elapsed();
    assert!(took < BUDGET, "load took {took:?}");
    let plugin = match loaded {
        Ok(p) => {
            count(1);
            p
        }
        Err(e) => {
            check_load_error(&e, wasm);
            return false;
        }
    };
    let started = Instant::now();
    let tested = plugin.self_test(&Default::default());
    let took = started.elapsed();
    assert!(took < BUDGET, "self-test took {took:?}");
    match tested {
        Ok(report) => {
            let hooks: Vec<Hook> = report.hooks.iter().map(|h| h.hook).collect();
            assert_eq!(hooks, Hook::ALL, "a passed self-test reports every hook");
            for h in &report.hooks {
                assert!(h.fuel_used <= report.fuel_per_call, "{h:?} over its fuel");
            }
            count(2);
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            false
        }
    }
}

fn check_load_error(e: &LoadError, wasm: &[u8]) {
    let text = e.to_string();
    assert!(!text.is_empty());
    match e {
        LoadError::TooLarge { size, max } => assert!(size > max && *size == wasm.len()),
        LoadError::NotAComponent(_) => {
            // Only the header decides this.
            assert!(wasm.len() < 8 || wasm[..4] != *b"\0asm" || wasm[6..8] != [1, 0]);
        }
        LoadError::WrongVersion { .. } => panic!("load never checks a version: {text}"),
        LoadError::TooComplex { count, max, .. } => assert!(count > max, "{text}"),
        // The fuzz engine compiles in-process: no child, so no compile bound or compiler.
        LoadError::CompileBound { .. } | LoadError::CompilerFailed(_) => {
            panic!("an in-process compile has no child to fail: {text}")
        }
        LoadError::Invalid(_) | LoadError::ForbiddenImport { .. } | LoadError::WrongWorld(_) => {}
    }
}

/// wasm-smith's defaults minus what the engine turns off, so generated code gets past
/// validation; one input in eight keeps every proposal to test their refusal too.
fn smith_config(u: &mut Unstructured) -> AResult<wasm_smith::Config> {
    let mut c: wasm_smith::Config = u.arbitrary()?;
    if !u.ratio(1, 8)? {
        c.memory64_enabled = false;
        c.tail_call_enabled = false;
        c.relaxed_simd_enabled = false;
        c.gc_enabled = false;
        c.exceptions_enabled = false;
        c.threads_enabled = false;
        c.shared_everything_threads_enabled = false;
        c.wide_arithmetic_enabled = false;
        c.custom_page_sizes_enabled = false;
        c.max_memories = c.max_memories.min(1);
        // Typed function references are off in the engine; wasm-smith reaches them through
        // reference types.
        if u.ratio(3, 4)? {
            c.reference_types_enabled = false;
        }
    }
    c.max_funcs = c.max_funcs.min(64);
    c.max_instructions = c.max_instructions.min(1000);
    Ok(c)
}

fn policy_shaped(u: &mut Unstructured) -> AResult<Option<Vec<u8>>> {
    let (resolve, world, shape) = world();
    let mut config = smith_config(u)?;
    config.module_shape = Some(shape.clone());
    // Mostly code that runs to an answer; sometimes code that may trap anywhere.
    config.disallow_traps = u.ratio(1, 2)?;
    let module = wasm_smith::Module::new(config, u)?;
    let mut bytes = module.to_bytes();
    if wit_component::embed_component_metadata(
        &mut bytes,
        resolve,
        *world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .is_err()
    {
        return Ok(None);
    }
    let mut encoder = wit_component::ComponentEncoder::default();
    let Ok(encoder) = encoder.module(&bytes) else {
        return Ok(None);
    };
    Ok(encoder.validate(true).encode().ok())
}

fn component(u: &mut Unstructured) -> AResult<Vec<u8>> {
    let config = smith_config(u)?;
    Ok(wasm_smith::Component::new(config, u)?.to_bytes())
}

fn core_module(u: &mut Unstructured) -> AResult<Vec<u8>> {
    let config = smith_config(u)?;
    Ok(wasm_smith::Module::new(config, u)?.to_bytes())
}
