//! Builds the plugins of `plugins/` and the walkthrough plugin `examples/minimal-plugin` for
//! wasm32: `cargo xtask build-plugins`.
//!
//! `sdk/plugin-artifacts/build.rs` includes this file (`#[path]`) and runs the same build into
//! its own target directory, so the two can never disagree about how a plugin is built. Keep
//! it to `std` and `anyhow`.
//!
//! Every directory of `plugins/` with a `Cargo.toml` is a plugin named after the directory; it
//! must be a member of `plugins/Cargo.toml` and build a `cdylib`. All are components built for
//! `wasm32-wasip2`, except those in [`CORE_MODULES`]: plain core modules built for
//! `wasm32-unknown-unknown` (`wasm32-wasip2` always links a component).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Plugins that are core wasm modules rather than components.
pub const CORE_MODULES: &[&str] = &["hostile-core-module"];

/// The walkthrough plugin, a project of its own (see its README); built and exposed beside
/// the plugins of `plugins/` so that it keeps working.
pub const EXAMPLE: &str = "minimal-plugin";

const COMPONENT_TARGET: &str = "wasm32-wasip2";
const CORE_TARGET: &str = "wasm32-unknown-unknown";

/// One built plugin.
#[derive(Debug, Clone)]
// `manifest` and `dep_info` are read by sdk/plugin-artifacts/build.rs only.
#[allow(dead_code)]
pub struct Artifact {
    /// The plugin's name: its directory (and package) name, e.g. `hostile-loop`.
    pub name: String,
    /// Its `Cargo.toml`.
    pub manifest: PathBuf,
    /// The `.wasm` file, in the artifacts directory.
    pub wasm: PathBuf,
    /// Cargo's dep-info file: every source file the `.wasm` was built from.
    pub dep_info: PathBuf,
}

/// `cargo xtask build-plugins`: builds every plugin into `<target>/plugins` (where `<target>`
/// is `$CARGO_TARGET_DIR`, else the repository's `target`) and returns the directory holding
/// the `.wasm` files.
pub fn build(release: bool) -> Result<PathBuf> {
    let repo = repo_root()?;
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => std::env::current_dir()?.join(dir),
        None => repo.join("target"),
    };
    let artifacts = build_into(&repo, &target_dir.join("plugins"), release)?;
    for artifact in &artifacts {
        eprintln!("{:>24}  {}", artifact.name, artifact.wasm.display());
    }
    let dir = artifacts
        .first()
        .and_then(|a| a.wasm.parent())
        .context("no plugins were built")?;
    Ok(dir.to_owned())
}

/// Builds every plugin with `target_dir` as cargo's target directory, copies the `.wasm`
/// files into `<target_dir>/artifacts/{debug,release}`, and returns them sorted by name.
pub fn build_into(repo: &Path, target_dir: &Path, release: bool) -> Result<Vec<Artifact>> {
    let plugins_dir = repo.join("plugins");
    let names = plugin_names(&plugins_dir)?;
    for core in CORE_MODULES {
        if !names.iter().any(|name| name == core) {
            bail!("CORE_MODULES names {core}, but there is no plugins/{core}");
        }
    }
    check_target_installed(COMPONENT_TARGET)?;
    check_target_installed(CORE_TARGET)?;

    let workspace = plugins_dir.join("Cargo.toml");
    let example = repo.join("examples").join(EXAMPLE).join("Cargo.toml");
    let mut components = cargo_build(target_dir, release, COMPONENT_TARGET, &workspace);
    components.arg("--workspace");
    for core in CORE_MODULES {
        components.args(["--exclude", core]);
    }
    run(&mut components)?;
    let mut core_modules = cargo_build(target_dir, release, CORE_TARGET, &workspace);
    for core in CORE_MODULES {
        core_modules.args(["--package", core]);
    }
    run(&mut core_modules)?;
    run(&mut cargo_build(
        target_dir,
        release,
        COMPONENT_TARGET,
        &example,
    ))?;

    let profile = if release { "release" } else { "debug" };
    let out_dir = target_dir.join("artifacts").join(profile);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {out_dir:?}"))?;
    let mut artifacts = Vec::new();
    let all = names
        .iter()
        .map(|name| (name.as_str(), plugins_dir.join(name)))
        .chain([(EXAMPLE, repo.join("examples").join(EXAMPLE))]);
    for (name, dir) in all {
        let target = if CORE_MODULES.contains(&name) {
            CORE_TARGET
        } else {
            COMPONENT_TARGET
        };
        let lib = name.replace('-', "_");
        let built = target_dir
            .join(target)
            .join(profile)
            .join(format!("{lib}.wasm"));
        if !built.is_file() {
            bail!(
                "{} built no {built:?}: every plugin directory must be a member of \
                 plugins/Cargo.toml, be named like its package and have \
                 crate-type = [\"cdylib\", \"rlib\"]",
                dir.display()
            );
        }
        let wasm = out_dir.join(format!("{lib}.wasm"));
        std::fs::copy(&built, &wasm).with_context(|| format!("copying {built:?}"))?;
        artifacts.push(Artifact {
            name: name.to_owned(),
            manifest: dir.join("Cargo.toml"),
            wasm,
            dep_info: built.with_extension("d"),
        });
    }
    artifacts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(artifacts)
}

/// The plugins of `plugins_dir`: its subdirectories with a `Cargo.toml`, sorted.
pub fn plugin_names(plugins_dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(plugins_dir).with_context(|| format!("{plugins_dir:?}"))? {
        let path = entry?.path();
        if path.join("Cargo.toml").is_file() {
            let name = path.file_name().and_then(|n| n.to_str());
            names.push(name.context("non-UTF-8 plugin directory")?.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The repository: the first ancestor with `plugins/Cargo.toml` of the running crate's
/// directory as cargo reports it at run time (this file is also the build script of
/// `plugins-artifacts`). Not the compile-time `env!` path: a target directory shared between
/// checkouts (CI's cache) can hand a binary built in one clone to another.
fn repo_root() -> Result<PathBuf> {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    start
        .ancestors()
        .find(|dir| dir.join("plugins").join("Cargo.toml").is_file())
        .map(Path::to_owned)
        .context("no plugins/Cargo.toml above this crate")
}

/// Fails with what to do when the standard library for `target` is not installed.
fn check_target_installed(target: &str) -> Result<()> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .with_context(|| format!("running {rustc:?} --print sysroot"))?;
    let sysroot = String::from_utf8(output.stdout).context("non-UTF-8 sysroot")?;
    let std_dir = Path::new(sysroot.trim())
        .join("lib")
        .join("rustlib")
        .join(target)
        .join("lib");
    if !std_dir.is_dir() {
        bail!(
            "the Rust target {target} is not installed (plugins are built for it): \
             run `rustup target add {target}` or `cargo xtask test`"
        );
    }
    Ok(())
}

fn cargo_build(target_dir: &Path, release: bool, target: &str, manifest: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    cmd.args(["--target", target])
        .arg("--manifest-path")
        .arg(manifest)
        .env("CARGO_TARGET_DIR", target_dir);
    // When this runs inside another cargo (a build script, `cargo clippy`), do not pass on
    // what that cargo set for its own, native, build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
        "CLIPPY_CONF_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    // Progress goes to stderr; so does anything on stdout, which a build script's caller
    // would read as directives.
    let status = cmd
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
