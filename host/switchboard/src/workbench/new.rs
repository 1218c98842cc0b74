//! `switchboard plugin new NAME [--lang rust|python|js]`: a plugin project that builds and
//! tests as it is, with an event file for `plugin run` whose `expect`s pass.
//!
//! Rust: a crate on the SDK (`sdk/plugin`, by path: the SDK is not published), a `Policy`
//! with one hook and a native unit test, `cargo test` and `cargo build --release --target
//! wasm32-wasip2`. Python: an `app.py` on componentize-py's bindings of the WIT (copied into
//! the project), built with `componentize-py … --stub-wasi`. JavaScript: a `plugin.js` ES
//! module, built with componentize-qjs (QuickJS) and `--stub-wasi`.

use std::path::{Path, PathBuf};

use super::{Failure, Lang};

/// The WIT of the world, as this binary implements it.
const POLICY_WIT: &str = include_str!("../../../../wit/policy.wit");

/// componentize-py's version the Python scaffold is written for (as `xtask` pins it).
pub(super) const COMPONENTIZE_PY: &str = "0.25.1";
/// componentize-qjs's version the JavaScript scaffold is written for (as `xtask` pins it).
pub(super) const COMPONENTIZE_QJS: &str = "0.4.5";

pub(super) fn run(name: &str, lang: Lang, dir: &Path, repo: Option<&Path>) -> Result<(), Failure> {
    check_name(name)?;
    let root = dir.join(name);
    if root.exists() {
        return Err(Failure::Local(format!(
            "{} already exists; pick another name or --dir",
            root.display()
        )));
    }
    let files = match lang {
        Lang::Rust => rust(name, &find_repo(repo)?)?,
        Lang::Python => python(name),
        Lang::Js => js(name),
    };
    for (path, contents) in &files {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Failure::Local(format!("{}: {e}", parent.display())))?;
        }
        std::fs::write(&path, contents)
            .map_err(|e| Failure::Local(format!("{}: {e}", path.display())))?;
    }
    println!("created {} ({lang:?} plugin)\n", root.display());
    println!("{}", next_steps(name, lang, &root));
    Ok(())
}

fn check_name(name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Failure::Local(format!(
            "{name:?} is not a plugin name: use lowercase letters, digits and `-`, starting \
             with a letter (at most 64)"
        )))
    }
}

/// The repository holding the SDK: `--repo`, else the first ancestor of the current
/// directory, then of this binary, with `sdk/plugin/Cargo.toml`.
fn find_repo(given: Option<&Path>) -> Result<PathBuf, Failure> {
    let is_repo = |dir: &Path| dir.join("sdk").join("plugin").join("Cargo.toml").is_file();
    if let Some(dir) = given {
        return if is_repo(dir) {
            std::fs::canonicalize(dir)
                .map_err(|e| Failure::Local(format!("{}: {e}", dir.display())))
        } else {
            Err(Failure::Local(format!(
                "{} has no sdk/plugin/Cargo.toml: --repo must be the Switchboard repository",
                dir.display()
            )))
        };
    }
    let starts = [std::env::current_dir().ok(), std::env::current_exe().ok()];
    starts
        .iter()
        .flatten()
        .filter_map(|start| std::fs::canonicalize(start).ok())
        .find_map(|start| start.ancestors().find(|d| is_repo(d)).map(Path::to_owned))
        .ok_or_else(|| {
            Failure::Local(
                "cannot find the Switchboard repository (for the plugin SDK): run this inside \
                 it or pass --repo PATH"
                    .into(),
            )
        })
}

fn next_steps(name: &str, lang: Lang, root: &Path) -> String {
    let dir = root.display();
    match lang {
        Lang::Rust => format!(
            "Next:\n  cd {dir}\n  cargo test\n  cargo build --release --target wasm32-wasip2\n  \
             switchboard plugin check target/wasm32-wasip2/release/{lib}.wasm\n  \
             switchboard plugin run target/wasm32-wasip2/release/{lib}.wasm --event events.json\n  \
             switchboard ctl plugin upload TENANT target/wasm32-wasip2/release/{lib}.wasm",
            lib = name.replace('-', "_")
        ),
        Lang::Python => format!(
            "Next (needs componentize-py {COMPONENTIZE_PY}: pip install componentize-py=={COMPONENTIZE_PY}):\n  \
             cd {dir}\n  \
             componentize-py -d wit -w tenant-policy componentize --stub-wasi app -o {name}.wasm\n  \
             switchboard plugin check --quota-bytes 33554432 {name}.wasm\n  \
             switchboard plugin run {name}.wasm --event events.json\n  \
             switchboard ctl tenant quotas TENANT --max-plugin-bytes 33554432\n  \
             switchboard ctl plugin upload TENANT {name}.wasm"
        ),
        Lang::Js => format!(
            "Next (needs npm):\n  \
             cd {dir}\n  \
             npx --yes componentize-qjs@{COMPONENTIZE_QJS} --wit wit -n tenant-policy --js plugin.js --stub-wasi --sync --opt-size -o {name}.wasm\n  \
             switchboard plugin check {name}.wasm\n  \
             switchboard plugin run {name}.wasm --event events.json\n  \
             switchboard ctl plugin upload TENANT {name}.wasm"
        ),
    }
}

/// The sample events: their `expect`s hold for the scaffold's policy.
const EVENTS: &str = r#"{
  "config": { "greeting": "hello" },
  "events": [
    { "name": "shouting goes high", "hook": "on-message", "sender": "alice", "body": "HELLO EVERYONE",
      "expect": { "accept": { "lane": "high", "notify_offline": false } } },
    { "name": "the rest is normal", "hook": "on-message", "sender": "bob", "body": "hello",
      "expect": { "accept": { "lane": "normal", "notify_offline": false } } },
    { "name": "empty is refused", "hook": "on-message", "sender": "bob", "body": "",
      "expect": { "reject": "empty messages are not allowed" } },
    { "hook": "on-receipt", "kind": "read", "expect": "forward" },
    { "hook": "evaluate-flags", "user": "alice", "expect": [] },
    { "hook": "on-load", "level": 2,
      "expect": { "receipts": true, "presence": true, "background_delivery": false } }
  ]
}
"#;

fn rust(name: &str, repo: &Path) -> Result<Vec<(PathBuf, String)>, Failure> {
    let sdk = repo.join("sdk").join("plugin");
    let sdk = sdk
        .to_str()
        .ok_or_else(|| Failure::Local(format!("{}: not UTF-8", sdk.display())))?;
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# cdylib: the plugin; rlib: so `cargo test` can test its logic natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
# The SDK, from the Switchboard repository (it is not published).
switchboard-plugin = {{ path = {sdk:?} }}

[profile.release]
# Small plugins load and instantiate fast; a panic traps the call.
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"

# A project of its own, not part of any workspace around it.
[workspace]
"#
    );
    let lib = r#"//! A tenant policy plugin. Every hook not overridden keeps the node's default
//! (`switchboard_plugin::defaults`).

use switchboard_plugin::{host, Lane, MessageInfo, Policy, Verdict};

#[derive(Debug, Default)]
pub struct Plugin;

impl Policy for Plugin {
    fn on_message(&self, message: &MessageInfo) -> Verdict {
        if message.body_size == 0 {
            host::counter_add("empty_rejected", 1);
            return Verdict::reject("empty messages are not allowed");
        }
        // Shouting: capital letters and no small ones (ASCII, in the first 64 bytes).
        let body = &message.body_prefix;
        let shouting =
            body.iter().any(u8::is_ascii_uppercase) && !body.iter().any(u8::is_ascii_lowercase);
        if shouting {
            return Verdict::accept(Lane::High);
        }
        Verdict::accept(Lane::Normal)
    }
}

switchboard_plugin::export_policy!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_plugin::testing::{self, TestHost};

    #[test]
    fn shouting_goes_high_and_empty_messages_are_refused() {
        let host = TestHost::builder().install();
        let verdict = |body: &[u8]| Plugin.on_message(&testing::message("general", "alice", body));
        assert_eq!(verdict(b"HELLO EVERYONE"), Verdict::accept(Lane::High));
        assert_eq!(verdict(b"hello"), Verdict::accept(Lane::Normal));
        assert_eq!(verdict(b""), Verdict::reject("empty messages are not allowed"));
        assert_eq!(host.counter("empty_rejected"), 1);
    }
}
"#;
    Ok(vec![
        (PathBuf::from("Cargo.toml"), cargo),
        (PathBuf::from("src/lib.rs"), lib.to_owned()),
        (PathBuf::from("events.json"), EVENTS.to_owned()),
        (PathBuf::from(".gitignore"), "/target\n".to_owned()),
    ])
}

fn python(name: &str) -> Vec<(PathBuf, String)> {
    let app = r#""""A tenant policy plugin in Python (componentize-py).

Build: componentize-py -d wit -w tenant-policy componentize --stub-wasi app -o plugin.wasm
Test:  switchboard plugin run plugin.wasm --event events.json

`--stub-wasi` leaves the component no WASI imports at all (the node refuses clocks, random,
files and sockets): use `host.now_ms()` for the time and `host.log()` instead of print().
"""

from typing import List

from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    Delivery,
    Flag,
    FlagContext,
    Lane,
    LoadInfo,
    MessageInfo,
    ReceiptAction,
    ReceiptInfo,
    Shedding,
    Verdict,
    Verdict_Accept,
    Verdict_Reject,
)


class Policy(exports.Policy):
    def on_message(self, message: MessageInfo) -> Verdict:
        if message.body_size == 0:
            host.counter_add("empty_rejected", 1)
            return Verdict_Reject("empty messages are not allowed")
        # Shouting: capital letters and no small ones (ASCII, in the first 64 bytes).
        body = bytes(message.body_prefix)
        if any(65 <= b <= 90 for b in body) and not any(97 <= b <= 122 for b in body):
            return Verdict_Accept(Delivery(Lane.HIGH, False))
        return Verdict_Accept(Delivery(Lane.NORMAL, False))

    # The node's defaults for the other hooks.
    def on_receipt(self, receipt: ReceiptInfo) -> ReceiptAction:
        return ReceiptAction.FORWARD

    def evaluate_flags(self, context: FlagContext) -> List[Flag]:
        return []

    def on_load(self, load: LoadInfo) -> Shedding:
        return Shedding(
            receipts=load.level >= 2,
            presence=load.level >= 1,
            background_delivery=load.level >= 3,
        )
"#;
    vec![
        (PathBuf::from("app.py"), app.to_owned()),
        (PathBuf::from("wit/policy.wit"), POLICY_WIT.to_owned()),
        (PathBuf::from("events.json"), EVENTS.to_owned()),
        (
            PathBuf::from(".gitignore"),
            format!("/{name}.wasm\n__pycache__/\n"),
        ),
    ]
}

fn js(name: &str) -> Vec<(PathBuf, String)> {
    let plugin = r#"// A tenant policy plugin in JavaScript (componentize-qjs: QuickJS in a component).
//
// Build: npx --yes componentize-qjs@0.4.5 --wit wit -n tenant-policy --js plugin.js \
//          --stub-wasi --sync --opt-size -o plugin.wasm
// Test:  switchboard plugin run plugin.wasm --event events.json
//
// `--stub-wasi` leaves the component no WASI imports at all (the node refuses clocks, random,
// files and sockets): use nowMs() for the time and log() instead of console.log. WIT names
// are camelCase here; variants are { tag, val }, enums are strings, integers (u64 too) are Numbers.

import { counterAdd } from "switchboard:policy/host@0.1.0";

const accept = (lane) => ({ tag: "accept", val: { lane, notifyOffline: false } });

export const policy = {
  onMessage(message) {
    if (message.bodySize === 0) {
      counterAdd("empty_rejected", 1);
      return { tag: "reject", val: "empty messages are not allowed" };
    }
    // Shouting: capital letters and no small ones (ASCII, in the first 64 bytes).
    const body = message.bodyPrefix;
    const upper = body.some((b) => b >= 65 && b <= 90);
    const lower = body.some((b) => b >= 97 && b <= 122);
    return accept(upper && !lower ? "high" : "normal");
  },

  // The node's defaults for the other hooks.
  onReceipt(_receipt) {
    return "forward";
  },
  evaluateFlags(_context) {
    return [];
  },
  onLoad(load) {
    return {
      receipts: load.level >= 2,
      presence: load.level >= 1,
      backgroundDelivery: load.level >= 3,
    };
  },
};
"#;
    vec![
        (PathBuf::from("plugin.js"), plugin.to_owned()),
        (PathBuf::from("wit/policy.wit"), POLICY_WIT.to_owned()),
        (PathBuf::from("events.json"), EVENTS.to_owned()),
        (
            PathBuf::from(".gitignore"),
            format!("/{name}.wasm\nnode_modules/\n"),
        ),
    ]
}
