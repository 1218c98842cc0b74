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

/// When the compiler process cannot run at all — its program is missing, or it exits at once
/// without writing an artifact — the upload is refused as the node's failure, not the
/// plugin's (`LoadError::CompilerFailed`): HTTP 500 `internal`, over the real admin API of a
/// real node, with nothing stored or cached, and the node still serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_compiler_cannot_run_is_answered_500() {
    use switchboard_admin::client::AdminClient;
    use switchboard_admin::control::types::CreateTenant;

    const TOKEN: &str = "compile-test-admin-token-0123456789";
    // `true` (found on PATH) reads nothing, writes nothing and exits 0.
    for (program, says) in [
        ("/nonexistent/switchboard-compiler", "starting /nonexistent"),
        ("true", "loading the compiled plugin"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("node.toml"),
            "data_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        let mut cfg = switchboard::Config::load(&dir.path().join("node.toml")).unwrap();
        cfg.admin.token = Some(TOKEN.into());
        cfg.plugin_compile.program = Some(program.into());
        let store = switchboard::open_store(&cfg.data_dir).unwrap();
        let node = switchboard::start(&cfg, store).await.unwrap();
        let url = format!("http://{}", node.admin_addr.unwrap());
        let admin = AdminClient::new(&url, Some(TOKEN.into()));
        let wasm = std::fs::read(plugins_artifacts::PRIORITY).unwrap();
        let refused = tokio::task::block_in_place(|| {
            admin
                .create_tenant(&CreateTenant {
                    id: "acme".into(),
                    secret: None,
                    quotas: None,
                })
                .unwrap();
            admin.upload_plugin("acme", &wasm)
        })
        .unwrap_err();
        let problem = refused.problem().expect("problem details");
        assert_eq!(
            (problem.status, problem.code.as_str()),
            (500, "internal"),
            "{program}: {problem:?}"
        );
        assert!(
            problem.detail.contains(says),
            "{program}: {}",
            problem.detail
        );
        let plugins = tokio::task::block_in_place(|| admin.plugins("acme")).unwrap();
        assert!(plugins.is_empty(), "{program}: {plugins:?}");
        assert_eq!(node.control.artifact_count().unwrap(), 0, "{program}");
        let health = tokio::task::block_in_place(|| admin.health()).unwrap();
        assert_eq!(health.status, "ok", "{program}");
        node.shutdown().await;
    }
}
