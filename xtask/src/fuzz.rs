//! `cargo xtask fuzz`: the fuzz targets of `fuzz/` (see docs/reliability.md, "Fuzzing").
//!
//! - `--smoke`: every target's stable `#[test]` replay (checked-in corpus, then seeded
//!   generated inputs for `FUZZ_SMOKE_SECS`, default 3 s each). Part of `cargo xtask test`.
//! - `TARGET [SECONDS] [-- LIBFUZZER ARGS]` (or `all SECONDS`): a libFuzzer run with
//!   cargo-fuzz, installed if missing. The toolchain is stable, so the sanitizer flags are
//!   allowed with `RUSTC_BOOTSTRAP=1`. New inputs go to `fuzz/corpus-run/TARGET` (not
//!   checked in; copy the ones worth keeping to `fuzz/corpus/TARGET`), crashes to
//!   `fuzz/artifacts/TARGET/`. The instrumented build has its own target directory (a
//!   sibling of the shared one), so it neither rebuilds nor locks the normal build.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::{cargo, root, run};

pub(crate) const TARGETS: [&str; 5] = ["frame", "token", "plugin_upload", "routing", "routing_sim"];

/// The cargo-fuzz installed when missing (pinned, as every tool a step installs).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Seconds of one long run unless given.
const DEFAULT_SECONDS: u64 = 600;

pub(crate) fn main(args: &[&str]) -> Result<()> {
    let (ours, libfuzzer) = match args.iter().position(|a| *a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    match ours {
        ["--smoke"] => smoke(),
        [target, rest @ ..] => {
            let seconds = match rest {
                [] => DEFAULT_SECONDS,
                [s] => s.parse().context("SECONDS must be a number")?,
                _ => bail!("usage: cargo xtask fuzz <--smoke|TARGET|all> [SECONDS] [-- ARGS]"),
            };
            let targets: Vec<&str> = match *target {
                "all" => TARGETS.to_vec(),
                t if TARGETS.contains(&t) => vec![t],
                t => bail!("unknown fuzz target {t}; targets: {}", TARGETS.join(", ")),
            };
            // Every target runs even when one fails (a report of one must not hide the rest).
            let failed: Vec<String> = targets
                .into_iter()
                .filter_map(|t| {
                    long_run(t, seconds, libfuzzer)
                        .err()
                        .map(|e| format!("{t}: {e:#}"))
                })
                .collect();
            if !failed.is_empty() {
                bail!("fuzz targets failed:\n{}", failed.join("\n"));
            }
            Ok(())
        }
        [] => bail!("usage: cargo xtask fuzz <--smoke|TARGET|all> [SECONDS] [-- ARGS]"),
    }
}

/// The stable replay of every target, as CI runs it.
pub(crate) fn smoke() -> Result<()> {
    run(cargo().args([
        "test",
        "--manifest-path",
        "fuzz/Cargo.toml",
        "--test",
        "smoke",
        "--",
        "--nocapture",
    ]))
}

fn ensure_cargo_fuzz() -> Result<()> {
    let installed = cargo()
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !installed {
        run(cargo().args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ]))?;
    }
    Ok(())
}

/// The instrumented build's target directory: beside the shared one.
fn fuzz_target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            dir.parent()
                .map(|p| p.join("fuzz-target"))
                .unwrap_or_else(|| dir.join("fuzz"))
        }
        None => root().join("fuzz").join("target"),
    }
}

fn long_run(target: &str, seconds: u64, libfuzzer: &[&str]) -> Result<()> {
    ensure_cargo_fuzz()?;
    let fuzz = root().join("fuzz");
    let work = fuzz.join("corpus-run").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&artifacts)?;
    // Uploads compile wasm: give them room; the rest are fast.
    let timeout = if target == "plugin_upload" { 60 } else { 20 };
    let mut cmd = cargo();
    // sled's detached I/O threads may outlive a run; fuzz/lsan.supp says why that is no leak.
    let suppressions = fuzz.join("lsan.supp");
    cmd.env(
        "LSAN_OPTIONS",
        format!("suppressions={}", suppressions.display()),
    )
    .env("RUSTC_BOOTSTRAP", "1")
    .env("CARGO_TARGET_DIR", fuzz_target_dir())
    .args(["fuzz", "run", "--fuzz-dir", "fuzz", target])
    .arg(&work)
    .arg(fuzz.join("corpus").join(target))
    .arg("--")
    .arg(format!("-max_total_time={seconds}"))
    .arg(format!("-timeout={timeout}"))
    .arg("-rss_limit_mb=4096")
    .arg("-print_final_stats=1")
    .arg(format!("-artifact_prefix={}/", artifacts.display()))
    .args(libfuzzer);
    run(&mut cmd)
}
