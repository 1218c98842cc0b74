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
//!
//! A directory with an `app.py` (Python) or a `plugin.js` (JavaScript) instead is a plugin in
//! that language ([`Lang`]), built with a pinned tool that this build installs itself under
//! `<target>/toolchains` the first time (so a fresh machine needs nothing by hand but
//! `python3` with `venv` and `npm`): [`COMPONENTIZE_PY`] from PyPI, [`COMPONENTIZE_QJS`] from
//! npm. Both are built with WASI stubbed out (`--stub-wasi`): the components import nothing
//! but `switchboard:policy`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Plugins that are core wasm modules rather than components.
pub const CORE_MODULES: &[&str] = &["hostile-core-module"];

/// The walkthrough plugin, a project of its own (see its README); built and exposed beside
/// the plugins of `plugins/` so that it keeps working.
pub const EXAMPLE: &str = "minimal-plugin";

/// componentize-py, from PyPI: CPython in a component (docs/plugins.md, "Python").
pub const COMPONENTIZE_PY: &str = "0.25.1";
/// componentize-qjs, from npm (the QuickJS engine jco uses; docs/plugins.md, "JavaScript").
pub const COMPONENTIZE_QJS: &str = "0.4.5";

/// The language of a plugin of `plugins/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lang {
    /// A crate (`Cargo.toml`), compiled to wasm.
    Rust,
    /// `app.py`, with CPython embedded by componentize-py.
    Python,
    /// `plugin.js`, with QuickJS embedded by componentize-qjs.
    Js,
}

impl Lang {
    /// The language of the plugin in `dir`, if it is one.
    pub fn of(dir: &Path) -> Option<Lang> {
        if dir.join("Cargo.toml").is_file() {
            Some(Lang::Rust)
        } else if dir.join("app.py").is_file() {
            Some(Lang::Python)
        } else if dir.join("plugin.js").is_file() {
            Some(Lang::Js)
        } else {
            None
        }
    }

    // Read by sdk/plugin-artifacts/build.rs only.
    #[allow(dead_code)]
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }
}

const COMPONENT_TARGET: &str = "wasm32-wasip2";
const CORE_TARGET: &str = "wasm32-unknown-unknown";

/// One built plugin.
#[derive(Debug, Clone)]
// `manifest` and `dep_info` are read by sdk/plugin-artifacts/build.rs only.
#[allow(dead_code)]
pub struct Artifact {
    /// The plugin's name: its directory (and package) name, e.g. `hostile-loop`.
    pub name: String,
    /// Its `Cargo.toml` (or, in another language, its entry file: `app.py`, `plugin.js`).
    pub manifest: PathBuf,
    /// The `.wasm` file, in the artifacts directory.
    pub wasm: PathBuf,
    /// Cargo's dep-info file: every source file the `.wasm` was built from (Rust only).
    pub dep_info: Option<PathBuf>,
    /// The plugin's language.
    pub lang: Lang,
    /// Its source files, for plugins not in Rust (Rust's are in `dep_info`).
    pub sources: Vec<PathBuf>,
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
    let mut artifacts = build_rust(repo, target_dir, release)?;
    let profile = if release { "release" } else { "debug" };
    let out_dir = target_dir.join("artifacts").join(profile);
    artifacts.extend(build_guests(repo, target_dir, &out_dir)?);
    artifacts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(artifacts)
}

fn build_rust(repo: &Path, target_dir: &Path, release: bool) -> Result<Vec<Artifact>> {
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
            dep_info: Some(built.with_extension("d")),
            lang: Lang::Rust,
            sources: Vec::new(),
        });
    }
    Ok(artifacts)
}

/// The plugins of `plugins_dir` in languages other than Rust, sorted.
pub fn guest_names(plugins_dir: &Path) -> Result<Vec<(String, Lang)>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(plugins_dir).with_context(|| format!("{plugins_dir:?}"))? {
        let path = entry?.path();
        match Lang::of(&path) {
            Some(Lang::Rust) | None => {}
            Some(lang) => {
                let name = path.file_name().and_then(|n| n.to_str());
                names.push((name.context("non-UTF-8 plugin directory")?.to_owned(), lang));
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Builds the Python and JavaScript plugins into `out_dir`, installing their tools first
/// when missing. A plugin whose `.wasm` is newer than its sources, the WIT and this file is
/// not built again (componentize-py takes about 15 s).
fn build_guests(repo: &Path, target_dir: &Path, out_dir: &Path) -> Result<Vec<Artifact>> {
    let plugins_dir = repo.join("plugins");
    let guests = guest_names(&plugins_dir)?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {out_dir:?}"))?;
    let toolchains = target_dir.join("toolchains");
    let wit = repo.join("wit");
    let mut inputs = files_under(&wit)?;
    inputs.push(repo.join("xtask").join("src").join("plugins.rs"));
    let mut artifacts = Vec::new();
    for (name, lang) in guests {
        let dir = plugins_dir.join(&name);
        let sources: Vec<PathBuf> = files_under(&dir)?
            .into_iter()
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "py" || e == "js" || e == "toml" || e == "json")
            })
            .collect();
        let wasm = out_dir.join(format!("{}.wasm", name.replace('-', "_")));
        if !is_fresh(&wasm, sources.iter().chain(&inputs))? {
            let mut cmd = match lang {
                Lang::Python => {
                    let tool = install_componentize_py(&toolchains)?;
                    let mut cmd = Command::new(tool);
                    cmd.arg("-d")
                        .arg(&wit)
                        .args(["-w", "tenant-policy", "componentize", "--stub-wasi", "-p"])
                        .arg(&dir)
                        .arg("app")
                        .arg("-o")
                        .arg(&wasm)
                        // No __pycache__ in the source tree.
                        .env("PYTHONDONTWRITEBYTECODE", "1");
                    cmd
                }
                Lang::Js => {
                    let tool = install_componentize_qjs(&toolchains)?;
                    let mut cmd = Command::new(tool);
                    cmd.arg("--wit")
                        .arg(&wit)
                        .args(["-n", "tenant-policy", "--js"])
                        .arg(dir.join("plugin.js"))
                        // No WASI at all; no component-model async (the engine has it off).
                        .args(["--stub-wasi", "--sync", "--opt-size", "-o"])
                        .arg(&wasm);
                    cmd
                }
                Lang::Rust => continue,
            };
            run(&mut cmd)?;
        }
        let entry = match lang {
            Lang::Python => dir.join("app.py"),
            _ => dir.join("plugin.js"),
        };
        artifacts.push(Artifact {
            name,
            manifest: entry,
            wasm,
            dep_info: None,
            lang,
            sources,
        });
    }
    Ok(artifacts)
}

/// Every file under `dir`, recursively, sorted (skipping `__pycache__` and `node_modules`).
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{dir:?}"))? {
            let path = entry?.path();
            let skip = path
                .file_name()
                .is_some_and(|n| n == "__pycache__" || n == "node_modules");
            if skip {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Whether `output` exists and is newer than every one of `inputs`.
fn is_fresh<'a>(output: &Path, inputs: impl IntoIterator<Item = &'a PathBuf>) -> Result<bool> {
    let Ok(built) = std::fs::metadata(output).and_then(|m| m.modified()) else {
        return Ok(false);
    };
    for input in inputs {
        let changed = std::fs::metadata(input)
            .and_then(|m| m.modified())
            .with_context(|| format!("{input:?}"))?;
        if changed >= built {
            return Ok(false);
        }
    }
    Ok(true)
}

/// componentize-py [`COMPONENTIZE_PY`] in a virtual environment of its own under
/// `toolchains`, installed with pip on first use; returns the tool.
pub fn install_componentize_py(toolchains: &Path) -> Result<PathBuf> {
    let venv = toolchains.join(format!("componentize-py-{COMPONENTIZE_PY}"));
    let tool = venv.join("bin").join("componentize-py");
    if tool.is_file() {
        return Ok(tool);
    }
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    run(Command::new(&python).args(["-m", "venv"]).arg(&venv))
        .context("Python plugins need python3 with venv (Debian: apt-get install python3-venv)")?;
    run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("componentize-py=={COMPONENTIZE_PY}"),
    ]))?;
    if !tool.is_file() {
        bail!("installing componentize-py made no {tool:?}");
    }
    Ok(tool)
}

/// componentize-qjs [`COMPONENTIZE_QJS`] under `toolchains`, installed with npm on first
/// use; returns the tool.
pub fn install_componentize_qjs(toolchains: &Path) -> Result<PathBuf> {
    let prefix = toolchains.join(format!("componentize-qjs-{COMPONENTIZE_QJS}"));
    let tool = prefix
        .join("node_modules")
        .join(".bin")
        .join("componentize-qjs");
    if tool.is_file() {
        return Ok(tool);
    }
    std::fs::create_dir_all(&prefix).with_context(|| format!("creating {prefix:?}"))?;
    let npm = std::env::var_os("NPM").unwrap_or_else(|| "npm".into());
    run(Command::new(&npm)
        .arg("install")
        .arg("--prefix")
        .arg(&prefix)
        .args([
            "--no-audit",
            "--no-fund",
            "--save-exact",
            &format!("componentize-qjs@{COMPONENTIZE_QJS}"),
        ]))
    .context("JavaScript plugins need npm (Debian: apt-get install npm)")?;
    if !tool.is_file() {
        bail!("installing componentize-qjs made no {tool:?}");
    }
    Ok(tool)
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
