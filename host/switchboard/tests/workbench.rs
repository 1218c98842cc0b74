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

/// `--node-config`: the check holds a plugin to the node's `[plugins]` budgets, so a plugin
/// that spins through most of the default fuel passes by default and is refused under a node
/// that gives it 200,000 units, as that node's upload would refuse it.
#[test]
fn check_uses_the_budgets_of_the_nodes_config_when_given() {
    plugin(&["check", plugins_artifacts::HEAVY]).ok();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        "data_dir = \"data\"\n[plugins]\nfuel_per_call = 200000\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let refused = plugin(&["check", "--node-config", cfg, plugins_artifacts::HEAVY]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("ran out of fuel"),
        "{}",
        refused.stderr
    );
    let report = plugin(&[
        "check",
        "--json",
        "--node-config",
        cfg,
        plugins_artifacts::PRIORITY,
    ])
    .json();
    assert_eq!(report["fuel_per_call"], 200_000);
    std::fs::write(
        dir.path().join("bad.toml"),
        "data_dir = \"d\"\n[plugins]\ndeadline_ms = 0\n",
    )
    .unwrap();
    let bad = plugin(&[
        "check",
        "--node-config",
        dir.path().join("bad.toml").to_str().unwrap(),
        plugins_artifacts::PRIORITY,
    ]);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("plugins.deadline_ms = 0"),
        "{}",
        bad.stderr
    );
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
    let wasm = build_rust_scaffold(&project, "my-policy");
    let wasm = wasm.to_str().unwrap();
    assert!(plugin(&["check", wasm]).ok().starts_with("ok: "));
    let events = project.join("events.json");
    let report = plugin(&["run", wasm, "--event", events.to_str().unwrap(), "--json"]).json();
    assert_eq!(report["mismatched"], 0, "{report}");
    assert_eq!(report["counters"], json!({ "empty_rejected": 1 }));
}

/// A `switchboard dev` node (the real binary), its admin URL and token as it prints them,
/// and the demo users' tokens. Killed on drop.
struct DevNode {
    child: std::process::Child,
    admin_url: String,
    admin_token: String,
    addr: std::net::SocketAddr,
    alice: String,
    bob: String,
    data: tempfile::TempDir,
}

impl Drop for DevNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dev() -> DevNode {
    use std::io::{BufRead, BufReader};
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--webtransport-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data.path())
        .env_remove("SWITCHBOARD_ADMIN_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut text = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        text.push_str(&line);
        text.push('\n');
        if line.contains("Ctrl-C stops the node") {
            break;
        }
    }
    let after = |marker: &str| -> String {
        text.split(marker)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {marker} in:\n{text}"))
            .to_owned()
    };
    let tokens: Vec<String> = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("SWITCHBOARD_TOKEN="))
        .map(str::to_owned)
        .collect();
    DevNode {
        admin_url: after("SWITCHBOARD_ADMIN_URL="),
        admin_token: after("SWITCHBOARD_ADMIN_TOKEN="),
        addr: after("listening on ").parse().unwrap(),
        alice: tokens[0].clone(),
        bob: tokens[1].clone(),
        child,
        data,
    }
}

impl DevNode {
    /// A session of the dev node's demo tenant, in its open group `general`.
    async fn member(&self, token: &str) -> common::RawClient {
        let cert = std::fs::read(self.data.path().join("cert.der")).unwrap();
        let mut c = common::RawClient::connect(self.addr, &cert, switchboard_wire::ALPN)
            .await
            .unwrap();
        assert!(matches!(
            c.hello(token).await,
            switchboard_wire::ServerFrame::Welcome { .. }
        ));
        c.send(&switchboard_wire::ClientFrame::Join {
            request_id: 0,
            group: "general".into(),
        })
        .await;
        let joined = c.read().await;
        assert!(
            matches!(joined, Some(switchboard_wire::ServerFrame::Joined { .. })),
            "{joined:?}"
        );
        c
    }

    /// `switchboard ctl ARGS` with the two variables the dev node says to export.
    fn ctl(&self, args: &[&str]) -> Out {
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("ctl")
            .args(args)
            .env("SWITCHBOARD_ADMIN_URL", &self.admin_url)
            .env("SWITCHBOARD_ADMIN_TOKEN", &self.admin_token)
            .output()
            .unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The line of `plugin new`'s next steps that builds the component, run in the project as
/// printed, with the pinned tool the plugins of `plugins/` are built with in place of its
/// name (`npx --yes componentize-qjs@V` or `componentize-py`): no network in tests.
fn build_as_printed(next_steps: &str, project: &Path, tool_name: &str, tool: &str) {
    let line = next_steps
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(tool_name))
        .unwrap_or_else(|| panic!("no `{tool_name}` line in:\n{next_steps}"));
    let args: Vec<&str> = line[tool_name.len()..].split_whitespace().collect();
    let status = Command::new(tool)
        .args(&args)
        .current_dir(project)
        // No __pycache__ in the project.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .status()
        .unwrap();
    assert!(status.success(), "{line}");
}

/// The README's plugin loop for each language, with the real binary throughout:
/// `plugin new` → build as its next steps say → `plugin check` → `plugin run` (the
/// scaffold's `expect`s hold) → `ctl plugin upload --quiet` → `ctl policy activate` with a
/// version prefix, against a `switchboard dev` node; then the plugin judges real traffic
/// (shouting goes to the high lane). The Python upload compiles CPython in the node's compile
/// child: most of this test's minute or two.
#[tokio::test(flavor = "multi_thread")]
async fn new_check_run_upload_activate_in_each_language() {
    let node = tokio::task::block_in_place(start_dev);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    // As `plugin new --lang python` says: a Python plugin needs a raised quota.
    node.ctl(&["tenant", "quotas", "demo", "--max-plugin-bytes", "33554432"])
        .ok();
    let mut sent = 0u64;
    for lang in ["rust", "js", "python"] {
        let name = format!("loop-{lang}");
        let steps = plugin(&["new", &name, "--lang", lang, "--dir", dir]).ok();
        let project = tmp.path().join(&name);
        let wasm = match lang {
            "rust" => tokio::task::block_in_place(|| build_rust_scaffold(&project, &name)),
            "js" => {
                let tool_name = steps
                    .lines()
                    .map(str::trim)
                    .find(|l| l.starts_with("npx --yes componentize-qjs@"))
                    .and_then(|l| l.split_whitespace().nth(2))
                    .unwrap_or_else(|| panic!("no componentize-qjs line in:\n{steps}"))
                    .to_owned();
                // The version the scaffold names is the one the plugins here are built with.
                assert!(
                    plugins_artifacts::COMPONENTIZE_QJS.contains(&tool_name.replace('@', "-")),
                    "{tool_name} vs {}",
                    plugins_artifacts::COMPONENTIZE_QJS
                );
                build_as_printed(
                    &steps,
                    &project,
                    &format!("npx --yes {tool_name}"),
                    plugins_artifacts::COMPONENTIZE_QJS,
                );
                project.join(format!("{name}.wasm"))
            }
            _ => {
                let pinned = steps
                    .split("pip install componentize-py==")
                    .nth(1)
                    .and_then(|rest| rest.split(')').next())
                    .unwrap_or_else(|| panic!("no pinned componentize-py in:\n{steps}"));
                assert!(
                    plugins_artifacts::COMPONENTIZE_PY
                        .contains(&format!("componentize-py-{pinned}")),
                    "{pinned} vs {}",
                    plugins_artifacts::COMPONENTIZE_PY
                );
                build_as_printed(
                    &steps,
                    &project,
                    "componentize-py",
                    plugins_artifacts::COMPONENTIZE_PY,
                );
                project.join(format!("{name}.wasm"))
            }
        };
        let wasm = wasm.to_str().unwrap();
        let check = plugin(&["check", "--quota-bytes", "33554432", wasm]).ok();
        assert!(check.starts_with("ok: "), "{lang}: {check}");
        let events = project.join("events.json");
        let report = plugin(&["run", wasm, "--event", events.to_str().unwrap(), "--json"]).json();
        assert_eq!(report["mismatched"], 0, "{lang}: {report}");
        assert_eq!(report["fell_back"], 0, "{lang}: {report}");

        let version = tokio::task::block_in_place(|| {
            node.ctl(&["plugin", "upload", "--quiet", "demo", wasm])
                .ok()
        });
        let version = version.trim();
        assert_eq!(version, sha256_hex(wasm), "{lang}");
        let status = tokio::task::block_in_place(|| {
            node.ctl(&["--json", "policy", "activate", "demo", &version[..8]])
                .json()
        });
        assert_eq!(status["active"]["version"], version, "{lang}: {status}");

        // It serves: shouting goes to the high lane, the rest to the normal one. (Sessions
        // opened now: a build or a Python compile outlasts a quiet connection's idle timeout.)
        let (mut alice, mut bob) = (node.member(&node.alice).await, node.member(&node.bob).await);
        for (body, lane) in [
            ("HELLO EVERYONE", switchboard_core::Lane::High),
            ("hello", switchboard_core::Lane::Normal),
        ] {
            sent += 1;
            alice
                .send(&common::send(sent, "general", body.as_bytes()))
                .await;
            let seq = match alice.read().await {
                Some(switchboard_wire::ServerFrame::Ack { seq, .. }) => seq,
                other => panic!("{lang}: {other:?}"),
            };
            // A new session may first catch up on what it missed.
            let m = loop {
                let m = common::next_deliver(&mut bob).await;
                if m.seq == seq {
                    break m;
                }
            };
            assert_eq!((m.body, m.lane), (common::body(body), lane), "{lang}");
        }
    }
}

/// `cargo test` and a release wasm32 build of the Rust scaffold at `project`, in a target dir
/// of its own beside this test's (kept between runs, so only the first compiles the SDK; the
/// outer build's own directory is locked while tests run); returns the component.
fn build_rust_scaffold(project: &Path, name: &str) -> std::path::PathBuf {
    let target = Path::new(env!("CARGO_BIN_EXE_switchboard"))
        .ancestors()
        .nth(2)
        .unwrap()
        .join("workbench-scaffold");
    for args in [
        &["test", "--offline", "-q"][..],
        &[
            "build",
            "--offline",
            "-q",
            "--release",
            "--target",
            "wasm32-wasip2",
        ],
    ] {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(project)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .status()
            .unwrap();
        assert!(status.success(), "cargo {args:?}");
    }
    target.join(format!(
        "wasm32-wasip2/release/{}.wasm",
        name.replace('-', "_")
    ))
}
