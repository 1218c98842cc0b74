//! What browser tests need: Debian's `chromium` (headless) and the npm package `playwright-core`
//! that drives it. Installed on first use; the paths reach the tests through the environment:
//! - `SWITCHBOARD_CHROMIUM`: the browser binary (`/usr/bin/chromium`).
//! - `SWITCHBOARD_BROWSER_NODE_PATH`: a `node_modules` folder holding `playwright-core`, for
//!   `NODE_PATH` of the test scripts `node` runs.
//!
//! Debian's security archive keeps only the newest chromium build, so the package is not
//! pinned to a version (a pin would break the install when Debian ships a fix); the npm
//! packages are pinned.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::run;

/// Drives Chromium over CDP from the test scripts (no browser download: Debian's is used).
const PLAYWRIGHT_NPM: &str = "playwright-core@1.65.2";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Installs chromium and playwright-core when missing and exports their paths to the commands
/// this process starts.
pub(crate) fn ensure() -> Result<()> {
    if !Path::new(CHROMIUM).exists() {
        let install = || run(Command::new("apt-get").args(["install", "-y", "chromium"]));
        if install().is_err() {
            run(Command::new("apt-get").arg("update"))?;
            install()?;
        }
    }
    let tools = crate::mobile::target_dir().join("browser-tools");
    let modules = tools.join("node_modules");
    if !modules.join("playwright-core/package.json").exists() {
        std::fs::create_dir_all(&tools).with_context(|| format!("creating {}", tools.display()))?;
        run(Command::new("npm")
            .args([
                "install",
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--prefix",
            ])
            .arg(&tools)
            .arg(PLAYWRIGHT_NPM))?;
    }
    let version = Command::new(CHROMIUM)
        .arg("--version")
        .output()
        .with_context(|| format!("running {CHROMIUM} --version"))?;
    if !version.status.success() {
        bail!("{CHROMIUM} --version failed: {}", version.status);
    }
    eprintln!(
        "browser tests use {}",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    std::env::set_var("SWITCHBOARD_CHROMIUM", CHROMIUM);
    std::env::set_var("SWITCHBOARD_BROWSER_NODE_PATH", absolute(&modules)?);
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}
