//! `switchboard plugin` (the workbench) end to end: the built binary on the real plugins of
//! `plugins/`, its output (human and `--json`) and its exit codes; `check` refuses what an
//! upload refuses, with the upload's own code and message; `new` makes a project whose
//! native tests and built component pass `check` and `run`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::TestNode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use switchboard_admin::control::types::Caller;
use switchboard_admin::AutoRollback;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    #[track_caller]
    fn ok(self) -> String {
        assert_eq!(
            self.code, 0,
            "stderr: {}\nstdout: {}",
            self.stderr, self.stdout
        );
        self.stdout
    }

    #[track_caller]
    fn json(self) -> Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}

fn switchboard(args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .output()
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn plugin(args: &[&str]) -> Out {
    let mut all = vec!["plugin"];
    all.extend_from_slice(args);
    switchboard(&all)
}

fn sha256_hex(path: &str) -> String {
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn check_passes_first_party_plugins_and_reports_the_self_test() {
    let out = plugin(&["check", plugins_artifacts::PRIORITY]).ok();
    assert!(out.starts_with("ok: "), "{out}");
    assert!(
        out.contains(&sha256_hex(plugins_artifacts::PRIORITY)),
        "{out}"
    );
    for hook in ["on-message", "on-receipt", "evaluate-flags", "on-load"] {
        assert!(out.contains(hook), "{out}");
    }

    let report = plugin(&["check", "--json", plugins_artifacts::MINIMAL_PLUGIN]).json();
    assert_eq!(
        report["version"],
        sha256_hex(plugins_artifacts::MINIMAL_PLUGIN)
    );
    assert_eq!(report["max_size"], 4 << 20);
    let hooks: Vec<&str> = report["self_test"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hook"].as_str().unwrap())
        .collect();
    assert_eq!(
        hooks,
        ["on-message", "on-receipt", "evaluate-flags", "on-load"]
    );
    for h in report["self_test"].as_array().unwrap() {
        let fuel = h["fuel_used"].as_u64().unwrap();
        assert!(
            fuel > 0 && fuel < report["fuel_per_call"].as_u64().unwrap(),
            "{h}"
        );
    }
}

/// Every refusal of `plugin check` is, code and message, what the node's upload answers for
/// the same file: both call `switchboard_policy`'s upload checks.
#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_what_an_upload_refuses_with_the_same_message() {
    let node = TestNode::start().await;
    let control = node
        .control(AutoRollback {
            enabled: false,
            ..AutoRollback::default()
        })
        .await;
    let cases = [
        ("a self-test trap", plugins_artifacts::HOSTILE_TRAP),
        ("a loop", plugins_artifacts::HOSTILE_LOOP),
        ("files", plugins_artifacts::HOSTILE_WASI_FS),
        ("sockets", plugins_artifacts::HOSTILE_WASI_SOCKETS),
        ("the wrong world", plugins_artifacts::HOSTILE_WRONG_WORLD),
        ("a core module", plugins_artifacts::HOSTILE_CORE_MODULE),
    ];
    for (what, path) in cases {
        let wasm = std::fs::read(path).unwrap();
        let refused = control
            .upload_plugin(&Caller::Admin, "acme", bytes::Bytes::from(wasm))
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: the upload was accepted"));
        let out = tokio::task::block_in_place(|| plugin(&["check", path]));
        assert_eq!(out.code, 3, "{what}: {}", out.stderr);
        assert_eq!(
            out.stderr.trim_end(),
            format!("refused ({}): {refused}", refused.code()),
            "{what}"
        );
        assert!(out.stdout.is_empty(), "{what}: {}", out.stdout);
    }

    // The size quota: a new tenant's unless told otherwise.
    let out = tokio::task::block_in_place(|| {
        plugin(&[
            "check",
            "--quota-bytes",
            "1000",
            plugins_artifacts::PRIORITY,
        ])
    });
    assert_eq!(out.code, 3, "{}", out.stderr);
    let size = std::fs::metadata(plugins_artifacts::PRIORITY)
        .unwrap()
        .len();
    assert_eq!(
        out.stderr.trim_end(),
        format!("refused (plugin-too-large): plugin is {size} bytes; at most 1000")
    );

    let out = tokio::task::block_in_place(|| plugin(&["check", "/no/such/plugin.wasm"]));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("/no/such/plugin.wasm"),
        "{}",
        out.stderr
    );
}

fn write_events(dir: &Path, events: &Value) -> String {
    let path = dir.join("events.json");
    std::fs::write(&path, serde_json::to_vec_pretty(events).unwrap()).unwrap();
    path.to_str().unwrap().to_owned()
}

fn priority_events() -> Value {
    json!({
        "tenant": "acme",
        "config": { "vip_users": "ceo" },
        "now_ms": 1_767_225_600_000u64,
        "events": [
            { "name": "vip", "hook": "on-message", "sender": "ceo", "body": "hi",
              "expect": { "accept": { "lane": "high", "notify_offline": true } } },
            { "hook": "on-message", "sender": "bob", "body": "!urgent now",
              "expect": { "accept": { "lane": "high", "notify_offline": false } } },
            { "hook": "on-message", "sender": "bob", "body": "data", "body_size": 20000,
              "expect": { "accept": { "lane": "low", "notify_offline": false } } },
            { "hook": "on-message", "sender": "bob", "body": "!spam buy",
              "expect": { "reject": "spam is not allowed here" } },
            { "hook": "on-message", "sender": "bob", "body_hex": "217370616d",
              "expect": { "reject": "spam is not allowed here" } },
            { "hook": "on-receipt", "kind": "delivered", "expect": "forward" },
            { "hook": "evaluate-flags", "user": "bob", "group": "general", "expect": [] },
            { "hook": "on-load", "level": 3,
              "expect": { "receipts": true, "presence": true, "background_delivery": true } }
        ]
    })
}

#[test]
fn run_reports_each_verdict_with_fuel_time_logs_and_counters() {
    let tmp = tempfile::tempdir().unwrap();
    let events = write_events(tmp.path(), &priority_events());
    let report = plugin(&[
        "run",
        plugins_artifacts::PRIORITY,
        "--event",
        &events,
        "--json",
    ])
    .json();
    assert_eq!(report["version"], sha256_hex(plugins_artifacts::PRIORITY));
    assert_eq!(report["tenant"], "acme");
    let events = report["events"].as_array().unwrap();
    assert_eq!(events.len(), 8);
    for e in events {
        assert_eq!(e["source"], "plugin", "{e}");
        assert_eq!(e["matches"], true, "{e}");
        assert!(e["fuel_used"].as_u64().unwrap() > 0, "{e}");
        assert!(e["time_us"].is_u64(), "{e}");
    }
    assert_eq!(events[0]["name"], "vip");
    assert_eq!(events[0]["hook"], "on-message");
    assert_eq!(
        events[0]["fresh_instance"], true,
        "the first call makes the instance"
    );
    assert_eq!(events[1]["fresh_instance"], false, "later calls reuse it");
    assert_eq!(report["counters"], json!({ "priority_spam_rejected": 2 }));
    assert_eq!(report["instances_made"], 1);
    assert_eq!(report["fell_back"], 0);
    assert_eq!(report["mismatched"], 0);

    // The summary says the same in words.
    let out = plugin(&[
        "run",
        plugins_artifacts::PRIORITY,
        "--event",
        tmp.path().join("events.json").to_str().unwrap(),
    ])
    .ok();
    assert!(
        out.contains("#1 on-message \"vip\" from ceo in general"),
        "{out}"
    );
    assert!(
        out.contains(r#"verdict  {"accept":{"lane":"high","notify_offline":true}}"#),
        "{out}"
    );
    assert!(out.contains("priority_spam_rejected = 2"), "{out}");
    assert!(
        out.contains("8 event(s): 0 fell back, 0 did not match"),
        "{out}"
    );
}

#[test]
fn run_shows_log_lines_and_config_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let events = write_events(
        tmp.path(),
        &json!({ "events": [
            { "hook": "on-message", "body": "x", "body_size": 50,
              "expect": { "accept": { "lane": "normal", "notify_offline": false } } }
        ]}),
    );
    let report = plugin(&[
        "run",
        plugins_artifacts::PRIORITY,
        "--event",
        &events,
        "--config",
        "large_bytes=lots",
        "--json",
    ])
    .json();
    let logs = report["events"][0]["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0]["level"], "warn");
    assert!(
        logs[0]["message"].as_str().unwrap().contains("large_bytes"),
        "{logs:?}"
    );
}

#[test]
fn run_exits_4_on_a_fallback_or_a_verdict_other_than_expected() {
    let tmp = tempfile::tempdir().unwrap();
    let events = write_events(
        tmp.path(),
        &json!({ "events": [
            { "hook": "on-message", "body": "hello" },
            { "hook": "on-load", "level": 0 }
        ]}),
    );
    // hostile-trap traps in on-message: the built-in default answers, and it is reported.
    let out = plugin(&[
        "run",
        plugins_artifacts::HOSTILE_TRAP,
        "--event",
        &events,
        "--json",
    ]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let first = &report["events"][0];
    assert_eq!(first["source"], "fallback");
    assert!(
        first["fallback_reason"]
            .as_str()
            .unwrap()
            .starts_with("plugin trapped"),
        "{first}"
    );
    assert_eq!(
        first["verdict"],
        json!({ "accept": { "lane": "normal", "notify_offline": false } })
    );
    assert!(first["fuel_used"].is_null());
    assert_eq!(
        report["events"][1]["fresh_instance"], true,
        "the failed instance was discarded"
    );
    assert!(
        out.stderr.contains("1 event(s) fell back"),
        "{}",
        out.stderr
    );

    let events = write_events(
        tmp.path(),
        &json!({ "events": [
            { "hook": "on-message", "body": "hello", "expect": { "reject": "no" } }
        ]}),
    );
    let out = plugin(&["run", plugins_artifacts::PRIORITY, "--event", &events]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stdout.contains(r#"EXPECTED {"reject":"no"}"#),
        "{}",
        out.stdout
    );

    // A refused plugin cannot run; a bad event file is a local error.
    let out = plugin(&[
        "run",
        plugins_artifacts::HOSTILE_WASI_FS,
        "--event",
        &events,
    ]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("refused (plugin-rejected)"),
        "{}",
        out.stderr
    );
    std::fs::write(
        tmp.path().join("bad.json"),
        r#"{"events":[{"hook":"on-nothing"}]}"#,
    )
    .unwrap();
    let out = plugin(&[
        "run",
        plugins_artifacts::PRIORITY,
        "--event",
        tmp.path().join("bad.json").to_str().unwrap(),
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("bad.json"), "{}", out.stderr);
}

#[test]
fn new_refuses_bad_names_and_existing_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let out = plugin(&["new", "Bad_Name", "--dir", dir]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not a plugin name"), "{}", out.stderr);
    plugin(&["new", "twice", "--lang", "python", "--dir", dir]).ok();
    let out = plugin(&["new", "twice", "--lang", "python", "--dir", dir]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    let files: BTreeMap<String, u64> = std::fs::read_dir(tmp.path().join("twice"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    assert!(
        files.contains_key("app.py") && files.contains_key("events.json"),
        "{files:?}"
    );
    assert!(tmp.path().join("twice/wit/policy.wit").is_file());
}

/// `plugin new` for Rust, then what its next steps say: `cargo test` (native), a wasm32
/// build, `plugin check` and `plugin run` with the scaffold's events (whose expectations
/// hold). Builds a crate: about a minute the first time.
#[test]
fn new_rust_project_builds_tests_checks_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let out = plugin(&["new", "my-policy", "--dir", dir]).ok();
    assert!(out.contains("cargo test"), "{out}");
    let project = tmp.path().join("my-policy");
    // A target dir of its own beside this test's (kept between runs, so only the first
    // compiles the SDK; the outer build's own directory is locked while tests run).
    let target = Path::new(env!("CARGO_BIN_EXE_switchboard"))
        .ancestors()
        .nth(2)
        .unwrap()
        .join("workbench-scaffold");
    let cargo = |args: &[&str]| {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(&project)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .status()
            .unwrap();
        assert!(status.success(), "cargo {args:?}");
    };
    cargo(&["test", "--offline", "-q"]);
    cargo(&[
        "build",
        "--offline",
        "-q",
        "--release",
        "--target",
        "wasm32-wasip2",
    ]);
    let wasm = target.join("wasm32-wasip2/release/my_policy.wasm");
    let wasm = wasm.to_str().unwrap();
    assert!(plugin(&["check", wasm]).ok().starts_with("ok: "));
    let events = project.join("events.json");
    let report = plugin(&["run", wasm, "--event", events.to_str().unwrap(), "--json"]).json();
    assert_eq!(report["mismatched"], 0, "{report}");
    assert_eq!(report["counters"], json!({ "empty_rejected": 1 }));
}
