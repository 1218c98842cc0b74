//! The README's first command: `switchboard dev` starts a node with a demo tenant and prints
//! working tokens and the chat command. Runs the real binary.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::RawClient;
use switchboard_wire::{ClientFrame, ServerFrame};

#[tokio::test]
async fn dev_prints_tokens_that_work_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
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
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("Ctrl-C stops the node");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    })
    .await
    .unwrap();
    let text = lines.join("\n");
    let addr: std::net::SocketAddr = text
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in:\n{text}"))
        .parse()
        .unwrap();
    // Browsers: the WebTransport URL (its real port), the certificate's SHA-256 and the web
    // chat's link carrying both.
    let web_url = text
        .split("WebTransport for browsers: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no WebTransport URL in:\n{text}"));
    assert!(web_url.starts_with("https://127.0.0.1:"), "{text}");
    assert!(!web_url.starts_with("https://127.0.0.1:0/"), "{text}");
    let hash = text
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no certificate hash in:\n{text}"));
    assert!(
        text.contains(&format!("?url={web_url}&hash={hash}&")),
        "{text}"
    );
    let chat_cmds = text.matches("cargo run -p chat --").count();
    assert_eq!(chat_cmds, 2, "{text}");
    // Tokens go in the environment, not on the chat's command line (`ps` shows that).
    assert!(!text.contains("--token "), "{text}");
    let token_args: Vec<&str> = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("SWITCHBOARD_TOKEN="))
        .collect();
    assert_eq!(token_args.len(), 2, "{text}");
    assert!(token_args.iter().all(|t| t.starts_with("sb1.")), "{text}");

    let cert = std::fs::read(dir.path().join("cert.der")).unwrap();
    let mut clients = Vec::new();
    for token in &token_args {
        let mut c = RawClient::connect(addr, &cert, switchboard_wire::ALPN)
            .await
            .unwrap();
        assert!(matches!(c.hello(token).await, ServerFrame::Welcome { .. }));
        c.send(&ClientFrame::Join {
            request_id: 1,
            group: "general".into(),
        })
        .await;
        assert!(matches!(c.read().await, Some(ServerFrame::Joined { .. })));
        clients.push(c);
    }
    clients[0]
        .send(&ClientFrame::Send {
            request_id: 2,
            group: "general".into(),
            client_msg_id: "hi".into(),
            body: common::body("hi bob"),
        })
        .await;
    assert!(matches!(
        clients[0].read().await,
        Some(ServerFrame::Ack { seq: 1, .. })
    ));
    // Presence notices (the first client's arrival) may come first.
    let m = common::next_deliver(&mut clients[1]).await;
    assert_eq!(
        (m.sender.as_str(), m.body),
        ("alice", common::body("hi bob"))
    );

    let ok = Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    // Clients were told the node is shutting down.
    assert_eq!(
        clients[1].closed_code().await,
        Some(switchboard_core::ErrorCode::ShuttingDown.as_u16().into())
    );
}

/// Starts `switchboard dev` on `dir` (ports of its own) and returns it with what it printed.
fn start_dev(dir: &std::path::Path) -> (std::process::Child, String) {
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
        .arg(dir)
        .env_remove("SWITCHBOARD_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
    (child, text)
}

fn stop(mut child: std::process::Child) {
    assert!(Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

fn admin_token(printed: &str) -> String {
    printed
        .split("SWITCHBOARD_ADMIN_TOKEN=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no admin token in:\n{printed}"))
        .to_owned()
}

/// A restarted dev node keeps its admin token (kept 0600 in the data dir, as it says), so the
/// exported `SWITCHBOARD_ADMIN_TOKEN` and the dashboard's sign-in keep working; and while it
/// runs, `switchboard token` (which needs the store the node holds) says to mint with
/// `ctl token mint` instead.
#[test]
fn dev_keeps_its_admin_token_and_token_points_to_ctl_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (child, printed) = start_dev(dir.path());
    let token = admin_token(&printed);
    let file = dir.path().join("admin.token");
    assert!(printed.contains("admin.token"), "{printed}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["token", "--user", "carol", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("switchboard ctl token mint demo carol"),
        "{stderr}"
    );
    stop(child);

    // Stopped, `token` mints from the store.
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["token", "--user", "carol", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sb1."));

    let (child, printed) = start_dev(dir.path());
    assert_eq!(
        admin_token(&printed),
        token,
        "the same token after a restart"
    );
    stop(child);
}
