//! Every plugin is built, exposed, and is what its name says: a component of the policy world
//! importing only what the node allows, or exactly the hostile thing it is named after.

use std::collections::BTreeSet;
use std::path::Path;

use wasmparser::{Parser, Payload};

/// What Rust's standard library links into every `wasm32-wasip2` component, which the node
/// provides inertly. Everything else but `switchboard:policy/host` is refused.
const INERT_WASI: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
];
/// The world's own imports. `types` is imported too (an instance of types only): `host` and
/// `policy` use it. A plugin that calls no host function does not import `host`.
const HOST: &str = "switchboard:policy/host";
const TYPES: &str = "switchboard:policy/types";
const POLICY: &str = "switchboard:policy/policy@0.1.0";

#[derive(Debug, Default)]
struct Shape {
    component: bool,
    /// Top-level imports, without versions.
    imports: BTreeSet<String>,
    /// Top-level imports as named, with versions (for the test's output).
    versioned_imports: Vec<String>,
    /// Top-level exports, with versions.
    exports: BTreeSet<String>,
}

fn shape(path: &str) -> Shape {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let mut shape = Shape {
        component: Parser::is_component(&bytes),
        ..Shape::default()
    };
    // parse_all walks nested modules and components too; only the outermost level is the
    // component's interface.
    let mut depth = 0u32;
    for payload in Parser::new(0).parse_all(&bytes) {
        match payload.unwrap_or_else(|e| panic!("parsing {path}: {e}")) {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(imports) if depth == 0 => {
                for import in imports {
                    let name = import.unwrap().name.name;
                    let unversioned = name.split('@').next().unwrap_or(name);
                    shape.imports.insert(unversioned.to_owned());
                    shape.versioned_imports.push(name.to_owned());
                }
            }
            Payload::ComponentExportSection(exports) if depth == 0 => {
                for export in exports {
                    shape.exports.insert(export.unwrap().name.name.to_owned());
                }
            }
            Payload::ImportSection(imports) if depth == 0 => {
                for import in imports.into_imports() {
                    let import = import.unwrap();
                    shape
                        .imports
                        .insert(format!("{}/{}", import.module, import.name));
                }
            }
            Payload::ExportSection(exports) if depth == 0 => {
                for export in exports {
                    shape.exports.insert(export.unwrap().name.to_owned());
                }
            }
            _ => {}
        }
    }
    shape
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn every_artifact_exists_and_is_wasm() {
    assert!(!plugins_artifacts::ALL.is_empty());
    for (name, path) in plugins_artifacts::ALL {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {path}: {e}"));
        assert!(bytes.starts_with(b"\0asm"), "{name}: {path} is not wasm");
        assert!(bytes.len() > 8, "{name}: {path} is empty");
        assert!(Path::new(path).is_absolute(), "{name}: {path}");
    }
}

/// The directory listing of `plugins/` is the source of truth: a plugin added there (and to
/// `plugins/Cargo.toml`) must appear in `ALL`, and so be tested by the host.
#[test]
fn every_plugin_directory_is_in_all() {
    // Read at run time: a test binary reused from a checkout at another path (a shared
    // target dir) would otherwise look there.
    let plugins = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf(),
            Into::into,
        )
        .join("../../plugins");
    let mut directories = BTreeSet::new();
    for entry in std::fs::read_dir(&plugins).unwrap() {
        let path = entry.unwrap().path();
        // A crate, or a plugin in Python (`app.py`) or JavaScript (`plugin.js`).
        let plugin = ["Cargo.toml", "app.py", "plugin.js"]
            .iter()
            .any(|entry| path.join(entry).is_file());
        if plugin {
            directories.insert(path.file_name().unwrap().to_str().unwrap().to_owned());
        }
    }
    let all: BTreeSet<String> = plugins_artifacts::ALL
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    let missing: Vec<_> = directories.difference(&all).collect();
    assert!(
        missing.is_empty(),
        "plugins/ has {missing:?} but ALL does not: add them to plugins/Cargo.toml (a crate) \
         or touch xtask/src/plugins.rs (another language)"
    );
    let extra: Vec<_> = all.difference(&directories).collect();
    assert_eq!(
        extra,
        ["minimal-plugin"],
        "only the example lives elsewhere"
    );
}

#[test]
fn well_behaved_plugins_import_only_the_host_and_inert_wasi() {
    let well_behaved = [
        ("priority", plugins_artifacts::PRIORITY),
        ("receipts", plugins_artifacts::RECEIPTS),
        ("flags", plugins_artifacts::FLAGS),
        ("degradation", plugins_artifacts::DEGRADATION),
        ("minimal-plugin", plugins_artifacts::MINIMAL_PLUGIN),
        ("probe-memory", plugins_artifacts::PROBE_MEMORY),
        ("heavy", plugins_artifacts::HEAVY),
        ("hostile-loop", plugins_artifacts::HOSTILE_LOOP),
        ("hostile-memory", plugins_artifacts::HOSTILE_MEMORY),
        ("hostile-recursion", plugins_artifacts::HOSTILE_RECURSION),
        ("hostile-trap", plugins_artifacts::HOSTILE_TRAP),
        (
            "hostile-huge-output",
            plugins_artifacts::HOSTILE_HUGE_OUTPUT,
        ),
    ];
    let allowed: BTreeSet<String> = names(INERT_WASI)
        .into_iter()
        .chain([HOST.into(), TYPES.into()])
        .collect();
    for (name, path) in well_behaved {
        let shape = shape(path);
        eprintln!("{name}: imports {:?}", shape.versioned_imports);
        assert!(shape.component, "{name} is not a component");
        let refused: Vec<_> = shape.imports.difference(&allowed).collect();
        assert!(refused.is_empty(), "{name} imports {refused:?}");
        assert_eq!(shape.exports, names(&[POLICY]), "{name}");
    }
}

/// The Python and JavaScript plugins are built with WASI stubbed out: they import only the
/// world's own interfaces (no inert WASI even), and export the policy (JavaScript's runtime
/// also exports its `init`, which the node never calls).
#[test]
fn interpreted_plugins_import_only_the_host() {
    let langs: BTreeSet<&str> = plugins_artifacts::INTERPRETED
        .iter()
        .map(|(_, l)| *l)
        .collect();
    assert_eq!(langs, BTreeSet::from(["js", "python"]));
    for (name, _) in plugins_artifacts::INTERPRETED {
        let (_, path) = plugins_artifacts::ALL
            .iter()
            .find(|(n, _)| n == name)
            .unwrap();
        let shape = shape(path);
        eprintln!(
            "{name}: imports {:?}, exports {:?}",
            shape.versioned_imports, shape.exports
        );
        assert!(shape.component, "{name}");
        assert_eq!(shape.imports, names(&[HOST, TYPES]), "{name}");
        assert!(
            shape.exports.contains(POLICY),
            "{name}: {:?}",
            shape.exports
        );
    }
}

#[test]
fn wasi_plugins_import_what_the_node_refuses() {
    let fs = shape(plugins_artifacts::HOSTILE_WASI_FS);
    eprintln!("hostile-wasi-fs: imports {:?}", fs.versioned_imports);
    assert!(fs.component);
    assert!(
        fs.imports.contains("wasi:filesystem/types"),
        "{:?}",
        fs.imports
    );
    assert!(
        fs.imports.contains("wasi:filesystem/preopens"),
        "{:?}",
        fs.imports
    );
    assert_eq!(fs.exports, names(&[POLICY]));

    let sockets = shape(plugins_artifacts::HOSTILE_WASI_SOCKETS);
    eprintln!(
        "hostile-wasi-sockets: imports {:?}",
        sockets.versioned_imports
    );
    assert!(sockets.component);
    assert!(
        sockets.imports.contains("wasi:sockets/tcp"),
        "{:?}",
        sockets.imports
    );
    assert_eq!(sockets.exports, names(&[POLICY]));
}

#[test]
fn the_wrong_world_is_a_component_without_the_policy_export() {
    let wrong = shape(plugins_artifacts::HOSTILE_WRONG_WORLD);
    eprintln!(
        "hostile-wrong-world: imports {:?}, exports {:?}",
        wrong.imports, wrong.exports
    );
    assert!(wrong.component);
    assert_eq!(wrong.exports, names(&["hostile:wrong-world/policy@0.1.0"]));
    assert!(wrong.imports.is_empty(), "{:?}", wrong.imports);
}

#[test]
fn the_core_module_is_not_a_component() {
    let core = shape(plugins_artifacts::HOSTILE_CORE_MODULE);
    eprintln!(
        "hostile-core-module: imports {:?}, exports {:?}",
        core.imports, core.exports
    );
    assert!(!core.component);
    assert!(core.imports.is_empty());
    assert!(core
        .exports
        .contains("switchboard:policy/policy@0.1.0#on-message"));
}
