//! The TypeScript SDK (`sdk/js`): its pinned npm dependencies installed from the committed
//! `package-lock.json` (`npm ci`), then compiled by its pinned `tsc` into `sdk/js/dist`, which
//! the web chat page and the browser test (`host/switchboard/tests/web_chat.rs`) load.
//! Its unit tests (`npm test`: node's test runner on the build) run right after. Part of
//! `cargo xtask test`; a type error or a failed unit test in the SDK fails the run here.

use std::process::Command;

use anyhow::Result;

use crate::run;

pub(crate) fn build() -> Result<()> {
    let dir = crate::root().join("sdk/js");
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir))?;
    run(Command::new("npm").args(["run", "build"]).current_dir(&dir))?;
    run(Command::new("npm").arg("test").current_dir(&dir))
}
