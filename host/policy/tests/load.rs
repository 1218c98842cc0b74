//! Uploads the node must refuse, each with the right `LoadError` and a message the tenant
//! can act on. Components here are written in the text format so each one breaks exactly
//! one rule; real plugins built from `plugins/` are loaded in `plugins.rs`.

use switchboard_policy::{EngineError, LoadError, PolicyEngine, PolicyLimits};

fn engine() -> PolicyEngine {
    PolicyEngine::new(PolicyLimits {
        max_instances: 8,
        ..PolicyLimits::default()
    })
    .unwrap()
}

fn component(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

fn refuse(bytes: &[u8]) -> LoadError {
    let err = engine().load(bytes).unwrap_err();
    // Every refusal renders as a sentence for the uploader.
    assert!(!err.to_string().is_empty());
    err
}

#[test]
fn garbage_is_not_a_component() {
    let err = refuse(b"this is not wasm at all");
    assert!(
        matches!(&err, LoadError::NotAComponent(m) if m.contains("magic")),
        "{err}"
    );
    assert!(matches!(refuse(b""), LoadError::NotAComponent(_)));
}

#[test]
fn a_core_module_is_not_a_component() {
    let module = wat::parse_str(r#"(module (func (export "on-message")))"#).unwrap();
    let err = refuse(&module);
    assert!(
        matches!(&err, LoadError::NotAComponent(m) if m.contains("core WebAssembly module") && m.contains("wasm32-wasip2")),
        "{err}"
    );
}

#[test]
fn too_large_is_refused_before_anything_else() {
    let engine = PolicyEngine::new(PolicyLimits {
        max_plugin_bytes: 1024,
        max_instances: 8,
        ..PolicyLimits::default()
    })
    .unwrap();
    let err = engine.load(&vec![0u8; 1025]).unwrap_err();
    assert_eq!(
        err,
        LoadError::TooLarge {
            size: 1025,
            max: 1024
        }
    );
    assert_eq!(
        err.to_string(),
        "plugin is 1025 bytes; the limit is 1024 bytes"
    );
}

#[test]
fn a_broken_component_is_invalid() {
    let mut bytes = component("(component)");
    bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
    assert!(matches!(refuse(&bytes), LoadError::Invalid(_)));
}

#[test]
fn file_system_imports_are_forbidden() {
    let err = refuse(&component(
        r#"(component (import "wasi:filesystem/types@0.2.3" (instance)))"#,
    ));
    assert!(
        matches!(&err, LoadError::ForbiddenImport { name, why }
            if name == "wasi:filesystem/types@0.2.3" && why.contains("file system")),
        "{err}"
    );
}

#[test]
fn socket_imports_are_forbidden() {
    let err = refuse(&component(
        r#"(component (import "wasi:sockets/tcp@0.2.0" (instance)))"#,
    ));
    assert!(
        matches!(&err, LoadError::ForbiddenImport { why, .. } if why.contains("network")),
        "{err}"
    );
}

#[test]
fn clocks_random_and_unknown_imports_are_forbidden() {
    for (name, needle) in [
        ("wasi:clocks/monotonic-clock@0.2.0", "now-ms"),
        ("wasi:random/insecure-seed@0.2.0", "BTreeMap"),
        ("wasi:http/outgoing-handler@0.2.0", "HTTP"),
        ("other:tenant/backdoor@1.0.0", "unknown"),
    ] {
        let err = refuse(&component(&format!(
            r#"(component (import "{name}" (instance)))"#
        )));
        assert!(
            matches!(&err, LoadError::ForbiddenImport { why, .. } if why.contains(needle)),
            "{name}: {err}"
        );
    }
}

#[test]
fn a_component_without_the_policy_export_is_the_wrong_world() {
    let err = refuse(&component("(component)"));
    assert!(
        matches!(&err, LoadError::WrongWorld(m) if m.contains("switchboard:policy/policy@0.1.0")),
        "{err}"
    );
}

/// A component exporting `switchboard:policy/policy@0.1.0` with the given functions, each of
/// type `func()`.
fn policy_with_funcs(funcs: &[&str]) -> Vec<u8> {
    let core_funcs: String = funcs
        .iter()
        .map(|f| format!(r#"(func (export "{f}"))"#))
        .collect();
    let lifted: String = funcs
        .iter()
        .map(|f| format!(r#"(func ${f} (canon lift (core func $i "{f}")))"#))
        .collect();
    let exported: String = funcs
        .iter()
        .map(|f| format!(r#"(export "{f}" (func ${f}))"#))
        .collect();
    component(&format!(
        r#"(component
            (core module $m {core_funcs})
            (core instance $i (instantiate $m))
            {lifted}
            (instance $policy {exported})
            (export "switchboard:policy/policy@0.1.0" (instance $policy)))"#
    ))
}

#[test]
fn missing_hooks_are_named() {
    let err = refuse(&policy_with_funcs(&["on-message", "on-load"]));
    assert!(
        matches!(&err, LoadError::WrongWorld(m) if m.contains("`on-receipt`") && m.contains("`evaluate-flags`")),
        "{err}"
    );
}

#[test]
fn hooks_of_the_wrong_type_are_the_wrong_world() {
    let err = refuse(&policy_with_funcs(&[
        "on-message",
        "on-receipt",
        "evaluate-flags",
        "on-load",
    ]));
    assert!(
        matches!(&err, LoadError::WrongWorld(m) if m.contains("does not have the functions")),
        "{err}"
    );
}

#[test]
fn another_policy_version_is_the_wrong_world() {
    let err = refuse(&component(
        r#"(component (import "switchboard:policy/host@0.2.0" (instance)))"#,
    ));
    assert!(
        matches!(&err, LoadError::WrongWorld(m) if m.contains("switchboard:policy@0.2.0")),
        "{err}"
    );
}

#[test]
fn invalid_limits_are_refused() {
    let err = PolicyEngine::new(PolicyLimits {
        epoch_tick: std::time::Duration::ZERO,
        ..PolicyLimits::default()
    })
    .unwrap_err();
    assert!(matches!(err, EngineError::Limits(_)));
}
