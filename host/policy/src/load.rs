//! What `PolicyEngine::load` refuses, and why: the typed errors and the pure checks behind
//! them (binary header, import names, export shape). No wasmtime here, so every rule has a
//! plain unit test.

/// Why a plugin upload was refused. Each message is meant for the tenant who uploaded it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("plugin is {size} bytes; the limit is {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error("forbidden import `{name}`: {why}")]
    ForbiddenImport { name: String, why: String },
    #[error("wrong world: {0}")]
    WrongWorld(String),
    /// More of something than any real plugin needs, found before compiling: such modules
    /// cost far more to compile than their size suggests (see `shape.rs`).
    #[error(
        "the plugin has at least {count} {what}; at most {max} are accepted (a module \
         shaped to be slow to compile)"
    )]
    TooComplex {
        what: &'static str,
        count: u64,
        max: u64,
    },
    /// Compiling the plugin in its child process (`compile.rs`) went past a bound: CPU time,
    /// memory, wall-clock time or the compiled size.
    #[error(
        "compiling the plugin exceeded the node's bound on {what}: a plugin this costly to \
         compile is refused"
    )]
    CompileBound { what: String },
    /// The compiler process failed for a reason that is not the plugin's (it could not be
    /// started, or its artifact did not load). Retrying later may help.
    #[error("the node could not compile the plugin: {0}")]
    CompilerFailed(String),
    /// The version given with the upload is not its SHA-256 (`load_cached`).
    #[error(
        "version `{given}` is not this plugin's version `{computed}` (a plugin's version is \
         the hex SHA-256 of its bytes)"
    )]
    WrongVersion { given: String, computed: String },
}

/// The policy package version this node implements.
pub(crate) const POLICY_VERSION: &str = "0.1.0";
/// The export every plugin must have.
pub(crate) const POLICY_EXPORT: &str = "switchboard:policy/policy@0.1.0";
/// The functions it must export.
pub(crate) const POLICY_FUNCS: [&str; 4] =
    ["on-message", "on-receipt", "evaluate-flags", "on-load"];

const HEADER_MAGIC: &[u8; 4] = b"\0asm";
const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];
const COMPONENT_LAYER: [u8; 2] = [1, 0];

/// Checks the 8-byte preamble: `\0asm`, then a version and a layer; components are layer 1.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != HEADER_MAGIC {
        return Err(LoadError::NotAComponent(
            "the file does not start with the WebAssembly magic bytes (`\\0asm`)".into(),
        ));
    }
    if bytes[4..8] == CORE_MODULE_VERSION {
        return Err(LoadError::NotAComponent(
            "this is a core WebAssembly module; policy plugins must be components that \
             implement the `switchboard:policy/tenant-policy` world (build for the \
             wasm32-wasip2 target, see docs/plugins.md)"
                .into(),
        ));
    }
    if bytes[6..8] != COMPONENT_LAYER {
        return Err(LoadError::NotAComponent(format!(
            "unknown WebAssembly binary layer {:?}",
            &bytes[6..8]
        )));
    }
    Ok(())
}

/// How the node satisfies an allowed import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImportKind {
    /// `switchboard:policy/host` or `switchboard:policy/types`.
    Policy,
    /// A WASI interface that gets an inert implementation (see `wasi.rs`).
    InertWasi,
}

/// The WASI interfaces Rust's standard library links for wasm32-wasip2 that are given inert
/// implementations: `(package, interface)`, at any 0.2.x version.
pub(crate) const INERT_WASI: &[(&str, &str)] = &[
    ("wasi:cli", "environment"),
    ("wasi:cli", "exit"),
    ("wasi:cli", "stdin"),
    ("wasi:cli", "stdout"),
    ("wasi:cli", "stderr"),
    ("wasi:cli", "terminal-input"),
    ("wasi:cli", "terminal-output"),
    ("wasi:cli", "terminal-stdin"),
    ("wasi:cli", "terminal-stdout"),
    ("wasi:cli", "terminal-stderr"),
    ("wasi:io", "error"),
    ("wasi:io", "poll"),
    ("wasi:io", "streams"),
];

struct InterfaceName<'a> {
    /// `namespace:package`
    package: &'a str,
    interface: &'a str,
    version: Option<&'a str>,
}

fn parse_interface_name(name: &str) -> Option<InterfaceName<'_>> {
    let (path, version) = match name.split_once('@') {
        Some((path, version)) => (path, Some(version)),
        None => (name, None),
    };
    let (package, interface) = path.split_once('/')?;
    if !package.contains(':') || interface.is_empty() {
        return None;
    }
    Some(InterfaceName {
        package,
        interface,
        version,
    })
}

/// Decides whether an import of a component (by its name) may be satisfied.
pub(crate) fn classify_import(name: &str) -> Result<ImportKind, LoadError> {
    let forbid = |why: &str| LoadError::ForbiddenImport {
        name: name.to_string(),
        why: why.to_string(),
    };
    let Some(iface) = parse_interface_name(name) else {
        return Err(forbid(
            "policy plugins may import only `switchboard:policy/host@0.1.0` (and the inert \
             parts of WASI that Rust's standard library links)",
        ));
    };
    match iface.package {
        "switchboard:policy" => {
            if iface.version != Some(POLICY_VERSION) {
                return Err(LoadError::WrongWorld(format!(
                    "the plugin was built against `switchboard:policy@{}`; this node implements \
                     `switchboard:policy@{POLICY_VERSION}`",
                    iface.version.unwrap_or("(no version)")
                )));
            }
            match iface.interface {
                "host" | "types" => Ok(ImportKind::Policy),
                _ => Err(forbid(
                    "only `host` and `types` of `switchboard:policy` can be imported; `policy` \
                     is what a plugin exports",
                )),
            }
        }
        "wasi:cli" | "wasi:io" => {
            let inert = INERT_WASI
                .iter()
                .any(|&(p, i)| p == iface.package && i == iface.interface);
            if !inert {
                return Err(forbid(&format!(
                    "`{}/{}` is not available to policy plugins (only the inert \
                     environment/exit/stdio/terminal/io interfaces are)",
                    iface.package, iface.interface
                )));
            }
            match iface.version {
                Some(v) if v.starts_with("0.2.") => Ok(ImportKind::InertWasi),
                _ => Err(forbid(&format!(
                    "WASI version `{}` is not supported; this node provides WASI 0.2.x",
                    iface.version.unwrap_or("(no version)")
                ))),
            }
        }
        "wasi:filesystem" => Err(forbid(
            "file system access is not available to policy plugins",
        )),
        "wasi:sockets" => Err(forbid("network access is not available to policy plugins")),
        "wasi:http" => Err(forbid("HTTP is not available to policy plugins")),
        "wasi:clocks" => Err(forbid(
            "WASI clocks are not available to policy plugins; use `host.now-ms` for the time \
             (Rust: avoid std::time::SystemTime/Instant)",
        )),
        "wasi:random" => Err(forbid(
            "randomness is not available to policy plugins: decisions must be reproducible \
             (Rust: std's HashMap seeds itself randomly, use BTreeMap or a fixed hasher)",
        )),
        _ => Err(forbid(
            "unknown interface; policy plugins may import only `switchboard:policy/host@0.1.0` \
             (and the inert parts of WASI that Rust's standard library links)",
        )),
    }
}

/// Which refusal to report when a plugin has several forbidden imports: the capability the
/// tenant most likely reached for (std::fs also pulls in clocks, std::net also files).
fn severity(name: &str) -> u8 {
    match parse_interface_name(name).map(|i| i.package) {
        Some("wasi:sockets" | "wasi:http") => 0,
        Some("wasi:filesystem") => 1,
        Some("wasi:random") => 2,
        Some("wasi:clocks") => 3,
        _ => 4,
    }
}

/// Checks every import. A policy version mismatch is reported as such; otherwise the most
/// telling forbidden import is reported, with the other forbidden ones listed after it.
pub(crate) fn check_imports<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), LoadError> {
    let mut forbidden: Vec<(String, String)> = Vec::new();
    for name in names {
        match classify_import(name) {
            Ok(_) => {}
            Err(LoadError::ForbiddenImport { name, why }) => forbidden.push((name, why)),
            Err(other) => return Err(other),
        }
    }
    forbidden.sort_by_key(|(name, _)| severity(name));
    let mut forbidden = forbidden.into_iter();
    let Some((name, mut why)) = forbidden.next() else {
        return Ok(());
    };
    let others: Vec<String> = forbidden.map(|(name, _)| format!("`{name}`")).collect();
    if !others.is_empty() {
        why.push_str(&format!(" (also not available: {})", others.join(", ")));
    }
    Err(LoadError::ForbiddenImport { name, why })
}

/// Checks the shape of the exports: `switchboard:policy/policy@0.1.0` with every hook.
/// `exports` lists the component's export names; `funcs_of_policy` the function names of
/// the policy export instance, when it exists and is an instance.
pub(crate) fn check_exports<'a>(
    exports: impl IntoIterator<Item = &'a str>,
    funcs_of_policy: Option<Vec<&'a str>>,
) -> Result<(), LoadError> {
    let exports: Vec<&str> = exports.into_iter().collect();
    let Some(funcs) = funcs_of_policy else {
        let other_policy = exports
            .iter()
            .find(|e| e.starts_with("switchboard:policy/policy"));
        return Err(LoadError::WrongWorld(match other_policy {
            Some(found) => {
                format!("the plugin exports `{found}`; this node calls `{POLICY_EXPORT}`")
            }
            None => format!(
                "the plugin does not export `{POLICY_EXPORT}` (it exports: {}); implement \
                 the `switchboard:policy/tenant-policy` world",
                if exports.is_empty() {
                    "nothing".to_string()
                } else {
                    exports.join(", ")
                }
            ),
        }));
    };
    let missing: Vec<&str> = POLICY_FUNCS
        .iter()
        .copied()
        .filter(|f| !funcs.contains(f))
        .collect();
    if !missing.is_empty() {
        return Err(LoadError::WrongWorld(format!(
            "`{POLICY_EXPORT}` is missing {}",
            missing
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden_why(name: &str) -> String {
        match classify_import(name) {
            Err(LoadError::ForbiddenImport { name: n, why }) => {
                assert_eq!(n, name);
                why
            }
            other => panic!("{name}: expected ForbiddenImport, got {other:?}"),
        }
    }

    #[test]
    fn policy_imports_are_allowed() {
        assert_eq!(
            classify_import("switchboard:policy/host@0.1.0"),
            Ok(ImportKind::Policy)
        );
        assert_eq!(
            classify_import("switchboard:policy/types@0.1.0"),
            Ok(ImportKind::Policy)
        );
    }

    #[test]
    fn other_policy_versions_are_the_wrong_world() {
        for name in [
            "switchboard:policy/host@0.2.0",
            "switchboard:policy/host@0.1.1",
            "switchboard:policy/host",
        ] {
            assert!(
                matches!(classify_import(name), Err(LoadError::WrongWorld(m)) if m.contains("0.1.0")),
                "{name}"
            );
        }
        assert!(forbidden_why("switchboard:policy/policy@0.1.0").contains("exports"));
    }

    #[test]
    fn inert_wasi_is_allowed_at_any_0_2_version() {
        for (package, interface) in INERT_WASI {
            for version in ["0.2.0", "0.2.3", "0.2.12"] {
                let name = format!("{package}/{interface}@{version}");
                assert_eq!(classify_import(&name), Ok(ImportKind::InertWasi), "{name}");
            }
        }
        assert!(forbidden_why("wasi:cli/stdout@0.3.0").contains("0.2.x"));
        assert!(forbidden_why("wasi:io/streams").contains("0.2.x"));
    }

    #[test]
    fn capabilities_are_forbidden_with_a_reason() {
        let cases = [
            ("wasi:filesystem/types@0.2.0", "file system"),
            ("wasi:filesystem/preopens@0.2.3", "file system"),
            ("wasi:sockets/tcp@0.2.0", "network"),
            ("wasi:sockets/ip-name-lookup@0.2.0", "network"),
            ("wasi:http/outgoing-handler@0.2.0", "HTTP"),
            ("wasi:clocks/wall-clock@0.2.0", "now-ms"),
            ("wasi:random/random@0.2.0", "reproducible"),
            ("wasi:random/insecure-seed@0.2.0", "BTreeMap"),
            ("wasi:cli/run@0.2.0", "not available"),
            ("wasi:cli/environment-variables@0.2.0", "not available"),
            ("acme:evil/exfiltrate@1.0.0", "unknown interface"),
            ("plain-function", "may import only"),
            ("wasi:cli", "may import only"),
        ];
        for (name, needle) in cases {
            let why = forbidden_why(name);
            assert!(why.contains(needle), "{name}: {why}");
        }
    }

    #[test]
    fn the_most_telling_forbidden_import_is_reported_first() {
        let err = check_imports([
            "switchboard:policy/host@0.1.0",
            "wasi:clocks/monotonic-clock@0.2.6",
            "wasi:filesystem/types@0.2.6",
            "wasi:sockets/tcp@0.2.6",
            "wasi:io/streams@0.2.6",
        ])
        .unwrap_err();
        match err {
            LoadError::ForbiddenImport { name, why } => {
                assert_eq!(name, "wasi:sockets/tcp@0.2.6");
                assert!(why.starts_with("network access"), "{why}");
                assert!(
                    why.contains(
                        "`wasi:filesystem/types@0.2.6`, `wasi:clocks/monotonic-clock@0.2.6`"
                    ),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(check_imports(["switchboard:policy/host@0.1.0", "wasi:cli/exit@0.2.6"]).is_ok());
        assert!(matches!(
            check_imports([
                "wasi:clocks/wall-clock@0.2.0",
                "switchboard:policy/host@0.3.0"
            ]),
            Err(LoadError::WrongWorld(_))
        ));
    }

    #[test]
    fn header_checks() {
        assert!(check_header(b"\0asm\x0d\0\x01\0rest").is_ok());
        let core = check_header(b"\0asm\x01\0\0\0").unwrap_err();
        assert!(
            matches!(&core, LoadError::NotAComponent(m) if m.contains("core WebAssembly module"))
        );
        assert!(
            matches!(check_header(b"hello world"), Err(LoadError::NotAComponent(m)) if m.contains("magic"))
        );
        assert!(matches!(
            check_header(b""),
            Err(LoadError::NotAComponent(_))
        ));
        assert!(
            matches!(check_header(b"\0asm\x0d\0\x02\0"), Err(LoadError::NotAComponent(m)) if m.contains("layer"))
        );
    }

    #[test]
    fn export_checks() {
        let all = POLICY_FUNCS.to_vec();
        assert!(check_exports([POLICY_EXPORT], Some(all)).is_ok());
        let err = check_exports(["wasi:cli/run@0.2.0"], None).unwrap_err();
        assert!(
            matches!(&err, LoadError::WrongWorld(m) if m.contains("does not export") && m.contains("wasi:cli/run"))
        );
        let err = check_exports(["switchboard:policy/policy@0.2.0"], None).unwrap_err();
        assert!(matches!(&err, LoadError::WrongWorld(m) if m.contains("@0.2.0")));
        let err = check_exports([POLICY_EXPORT], Some(vec!["on-message", "on-load"])).unwrap_err();
        assert!(
            matches!(&err, LoadError::WrongWorld(m) if m.contains("`on-receipt`, `evaluate-flags`")),
            "{err}"
        );
    }
}
