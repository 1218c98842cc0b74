//! Builds every plugin of `plugins/` (and `examples/minimal-plugin`) for wasm32, exactly as
//! `cargo xtask build-plugins` does, and generates a path constant per plugin.
//!
//! The nested cargo gets a target directory of its own (`<target>/plugins-artifacts`): the
//! outer cargo holds the lock on its own build directory while this script runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[allow(dead_code)]
#[path = "../../xtask/src/plugins.rs"]
mod plugins;

fn main() {
    if let Err(error) = generate() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn generate() -> Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let repo = manifest_dir
        .ancestors()
        .nth(2)
        .context("sdk/plugin-artifacts lives two levels below the repository")?
        .to_owned();

    let nested = nested_target_dir(&out_dir);
    let artifacts = plugins::build_into(&repo, &nested, true)?;
    // The tools the Python and JavaScript plugins were built with (installed by now when
    // there are such plugins), for tests that build a scaffold.
    let toolchains = nested.join("toolchains");
    let componentize_py = plugins::install_componentize_py(&toolchains)?;
    let componentize_qjs = plugins::install_componentize_qjs(&toolchains)?;

    rerun_if_changed(&repo, &artifacts)?;

    let mut code = String::new();
    let mut all = String::new();
    let mut interpreted = String::new();
    for artifact in &artifacts {
        let constant = artifact.name.to_uppercase().replace('-', "_");
        let source = artifact
            .manifest
            .parent()
            .and_then(|dir| dir.strip_prefix(&repo).ok())
            .unwrap_or(&artifact.manifest);
        writeln!(
            code,
            "/// `{}`: {}",
            source.display(),
            description(&artifact.manifest)?
        )?;
        writeln!(code, "pub const {constant}: &str = {:?};", artifact.wasm)?;
        writeln!(all, "    ({:?}, {constant}),", artifact.name)?;
        if artifact.lang != plugins::Lang::Rust {
            writeln!(
                interpreted,
                "    ({:?}, {:?}),",
                artifact.name,
                artifact.lang.name()
            )?;
        }
    }
    writeln!(
        code,
        "/// The plugins written in a language whose runtime they embed (Python, JavaScript), \
         as (name, language): megabytes of interpreter, far larger than the Rust plugins."
    )?;
    writeln!(
        code,
        "pub const INTERPRETED: &[(&str, &str)] = &[\n{interpreted}];"
    )?;
    writeln!(
        code,
        "/// Every plugin, as (name, path), sorted by name. The name is the plugin's directory."
    )?;
    writeln!(code, "pub const ALL: &[(&str, &str)] = &[\n{all}];")?;
    writeln!(
        code,
        "/// componentize-py {}, as the Python plugins are built.\npub const COMPONENTIZE_PY: &str = {:?};",
        plugins::COMPONENTIZE_PY,
        componentize_py
    )?;
    writeln!(
        code,
        "/// componentize-qjs {}, as the JavaScript plugins are built.\npub const COMPONENTIZE_QJS: &str = {:?};",
        plugins::COMPONENTIZE_QJS,
        componentize_qjs
    )?;
    std::fs::write(out_dir.join("artifacts.rs"), code)?;
    Ok(())
}

/// `<target>/plugins-artifacts`, where `<target>` is the outer build's target directory (the
/// parent of the profile directory holding `build/<this package>/out`), else under `OUT_DIR`.
fn nested_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .and_then(|build| build.parent()?.parent())
        .map(|target| target.join("plugins-artifacts"))
        .unwrap_or_else(|| out_dir.join("plugins-target"))
}

/// Reruns when a plugin's sources (as cargo's dep-info lists them), a manifest, the SDK or the
/// WIT change. A new plugin directory is noticed when it is added to `plugins/Cargo.toml`.
/// (Not the whole `plugins/`: a `cargo build` there puts a `target/` in it.)
fn rerun_if_changed(repo: &Path, artifacts: &[plugins::Artifact]) -> Result<()> {
    let mut paths = vec![
        repo.join("plugins").join("Cargo.toml"),
        repo.join("plugins").join("Cargo.lock"),
        repo.join("examples")
            .join(plugins::EXAMPLE)
            .join("Cargo.lock"),
        // The SDK inherits its wit-bindgen version from the root workspace.
        repo.join("Cargo.toml"),
        repo.join("sdk").join("plugin").join("Cargo.toml"),
        repo.join("wit"),
        repo.join("xtask").join("src").join("plugins.rs"),
    ];
    for artifact in artifacts {
        paths.push(artifact.manifest.clone());
        if let Some(info) = &artifact.dep_info {
            paths.extend(dep_info(info)?);
        }
        paths.extend(artifact.sources.iter().cloned());
    }
    paths.sort();
    paths.dedup();
    for path in paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    Ok(())
}

/// The source files listed in a cargo dep-info file (`out: src1 src2 ...`, spaces escaped).
fn dep_info(path: &Path) -> Result<Vec<PathBuf>> {
    let contents =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut files = Vec::new();
    for line in contents.lines() {
        let Some((_, deps)) = line.split_once(": ") else {
            continue;
        };
        let mut current = String::new();
        let mut parts = deps.split(' ').peekable();
        while let Some(part) = parts.next() {
            if let Some(escaped) = part.strip_suffix('\\') {
                current.push_str(escaped);
                current.push(' ');
                if parts.peek().is_some() {
                    continue;
                }
            } else {
                current.push_str(part);
            }
            if !current.is_empty() {
                files.push(PathBuf::from(std::mem::take(&mut current)));
            }
        }
    }
    Ok(files)
}

/// The package's `description`, for the constant's doc comment; for a plugin in another
/// language, the first line of its entry file's leading comment.
fn description(manifest: &Path) -> Result<String> {
    let text = std::fs::read_to_string(manifest)?;
    if manifest.file_name().is_some_and(|n| n != "Cargo.toml") {
        let line = text
            .lines()
            .map(|l| {
                l.trim()
                    .trim_start_matches("\"\"\"")
                    .trim_start_matches("//")
                    .trim()
            })
            .find(|l| !l.is_empty())
            .unwrap_or("");
        return Ok(line.to_owned());
    }
    let description = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("description = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or("");
    Ok(description.replace("\\\"", "\""))
}
