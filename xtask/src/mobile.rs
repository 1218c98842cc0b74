//! The mobile SDK (`sdk/mobile`) through its generated bindings: build the library and the
//! node, generate the Python, Kotlin and Swift bindings with the crate's own `uniffi-bindgen`,
//! then run the end-to-end tests, which start real nodes and talk to them over QUIC:
//! - Python (`sdk/mobile/tests/python`): the standard library's `unittest`, nothing to install.
//! - Kotlin on the JVM (`sdk/mobile/tests/kotlin`): kotlinc, the Kotlin standard library and
//!   kotlinx-coroutines come from the npm package `kotlin-compiler` (installed into the target
//!   directory), JNA from Debian's `libjna-java`; Java 17 is the machine's.
//!
//! Part of `cargo xtask test`; alone: `cargo xtask test-mobile`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{cargo, root, run};

/// The npm package that ships kotlinc with the JVM standard library and kotlinx-coroutines.
const KOTLIN_NPM: &str = "kotlin-compiler@2.4.20";
/// Where Debian's `libjna-java` puts JNA.
const JNA_JAR: &str = "/usr/share/java/jna.jar";

/// The cargo target directory, as cargo itself resolves it for this workspace.
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// Generates the bindings for `language` from `library` into `out`.
fn bindgen(library: &Path, language: &str, out: &Path) -> Result<()> {
    run(cargo()
        .args([
            "run",
            "--quiet",
            "-p",
            "switchboard-mobile-bindgen",
            "--",
            "generate",
            "--no-format",
            "--language",
            language,
            "--out-dir",
        ])
        .arg(out)
        .arg("--library")
        .arg(library))
}

pub(crate) fn test() -> Result<()> {
    run(cargo().args(["build", "-p", "switchboard", "-p", "switchboard-mobile"]))?;
    let debug = target_dir().join("debug");
    let lib_name = format!(
        "{}switchboard_mobile{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let library = debug.join(&lib_name);
    let out = target_dir().join("mobile-bindings");
    for language in ["kotlin", "swift", "python"] {
        let dir = out.join(language);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        bindgen(&library, language, &dir)?;
    }
    // The generated module loads the library from its own folder.
    let python = out.join("python");
    std::fs::copy(&library, python.join(&lib_name))
        .with_context(|| format!("copying {} next to the Python module", library.display()))?;
    let node = debug.join("switchboard");
    run(Command::new("python3")
        .args([
            "-m",
            "unittest",
            "discover",
            "-v",
            "-s",
            "sdk/mobile/tests/python",
        ])
        .env("PYTHONPATH", &python)
        .env("SWITCHBOARD_BIN", &node))?;
    kotlin(&out.join("kotlin"), &debug, &node)
}

/// Compiles the generated Kotlin with `sdk/mobile/tests/kotlin` and runs it on the JVM.
fn kotlin(generated: &Path, lib_dir: &Path, node: &Path) -> Result<()> {
    let tools = target_dir().join("mobile-tools");
    let kotlin_home = tools.join("node_modules/kotlin-compiler");
    let kotlinc = kotlin_home.join("bin/kotlinc-jvm");
    if !kotlinc.exists() {
        std::fs::create_dir_all(&tools)?;
        run(Command::new("npm")
            .args([
                "install",
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--prefix",
            ])
            .arg(&tools)
            .arg(KOTLIN_NPM))?;
    }
    if !Path::new(JNA_JAR).exists() {
        let install = || run(Command::new("apt-get").args(["install", "-y", "libjna-java"]));
        if install().is_err() {
            run(Command::new("apt-get").arg("update"))?;
            install()?;
        }
    }
    let lib = kotlin_home.join("lib");
    let coroutines = lib.join("kotlinx-coroutines-core-jvm.jar");
    let compile_cp = join_paths(&[Path::new(JNA_JAR), &coroutines])?;
    let sources: Vec<PathBuf> = walk(generated, "kt")?;
    let jar = target_dir().join("mobile-bindings/kotlin-test.jar");
    // The npm package's scripts are bash, and may lack their execute bit.
    run(Command::new("bash")
        .arg(&kotlinc)
        .args(["-nowarn", "-jvm-target", "17", "-cp"])
        .arg(&compile_cp)
        .arg("-d")
        .arg(&jar)
        .args(&sources)
        .arg("sdk/mobile/tests/kotlin/MobileTest.kt"))?;
    let run_cp = join_paths(&[
        &jar,
        &lib.join("kotlin-stdlib.jar"),
        &coroutines,
        Path::new(JNA_JAR),
    ])?;
    run(Command::new("java")
        .arg(format!("-Djna.library.path={}", lib_dir.display()))
        .arg("-cp")
        .arg(run_cp)
        .arg("MobileTestKt")
        .env("SWITCHBOARD_BIN", node))
}

fn join_paths(paths: &[&Path]) -> Result<std::ffi::OsString> {
    std::env::join_paths(paths).context("a classpath entry contains the separator")
}

/// Files under `dir` ending in `.ext`.
fn walk(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(walk(&path, ext)?);
        } else if path.extension().is_some_and(|e| e == ext) {
            found.push(path);
        }
    }
    Ok(found)
}
