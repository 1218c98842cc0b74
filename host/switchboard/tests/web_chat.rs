//! The web chat (examples/web-chat, over sdk/js) in a real browser: headless Chromium, driven
//! by playwright-core from scripts in `tests/browser/`, connects to a real node over
//! WebTransport with the dev certificate pinned by `serverCertificateHashes`. Two tests:
//! - `web_chat.mjs`: two tabs chat, one reloads and gets exactly what it missed, then its
//!   session drops and the SDK reconnects and resumes by itself;
//! - `web_chat_group.mjs`: presence (the snapshot at connect, /bg and /fg, a closed page),
//!   a read receipt from one page to the other, and a page that leaves the group, stops
//!   receiving, and on rejoining fetches exactly what it missed.
//!
//! What the pages showed is checked against the node's log read back over native QUIC.
//! The page is served from loopback by a tiny static server here, and the node's origin
//! policy allows only that origin.
//!
//! Needs Chromium, playwright-core and a built sdk/js: `cargo xtask test` provides all three
//! (`xtask/src/browser.rs`, `xtask/src/js.rs`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use switchboard_core::Limits;
use switchboard_wire::{ClientFrame, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RUN_VIA_XTASK: &str = "run it with `cargo xtask test`, which installs Chromium and \
     playwright-core, builds sdk/js and exports SWITCHBOARD_CHROMIUM and \
     SWITCHBOARD_BROWSER_NODE_PATH";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{name} is not set: this test drives a real browser; {RUN_VIA_XTASK}"),
    }
}

/// Only these parts of the repository are served: the page, the SDK's build and its one
/// runtime dependency.
const SERVED: &[&str] = &[
    "examples/web-chat/",
    "sdk/js/dist/",
    "sdk/js/node_modules/flatbuffers/",
];

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("map" | "json") => "application/json",
        Some("css") => "text/css",
        _ => "application/octet-stream",
    }
}

/// Answers one HTTP/1.1 GET with a file under [`SERVED`] (or 404), then closes.
async fn serve_file(mut sock: tokio::net::TcpStream, root: PathBuf) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let path = target
        .split('?')
        .next()
        .unwrap_or("/")
        .trim_start_matches('/');
    let path = if path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_owned()
    };
    let allowed = !path.contains("..") && SERVED.iter().any(|p| path.starts_with(p));
    let body = if allowed {
        tokio::fs::read(root.join(&path)).await.ok()
    } else {
        None
    };
    let response = match body {
        Some(body) => {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
                content_type(&path),
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(&body);
            r
        }
        None => {
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
        }
    };
    let _ = sock.write_all(&response).await;
    let _ = sock.shutdown().await;
}

/// A real node with WebTransport, the chat page served from loopback (the node's origin
/// policy allows only that origin), and `script` (under `tests/browser/`) run by Node.js
/// against both with alice's and bob's tokens. Returns the node and the script's `RESULT`.
async fn run_browser_script(script: &str) -> (TestNode, serde_json::Value) {
    let chromium = required_env("SWITCHBOARD_CHROMIUM");
    let node_path = required_env("SWITCHBOARD_BROWSER_NODE_PATH");
    let root = repo_root();
    for built in [
        "sdk/js/dist/index.js",
        "sdk/js/node_modules/flatbuffers/mjs/flatbuffers.js",
    ] {
        assert!(
            root.join(built).exists(),
            "{built} is missing: sdk/js is not built; {RUN_VIA_XTASK} (or run `npm ci && npm run \
             build` in sdk/js)"
        );
    }

    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", http.local_addr().unwrap());
    let files = root.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = http.accept().await {
            tokio::spawn(serve_file(sock, files.clone()));
        }
    });

    let n = TestNode::start_webtransport(Limits::default(), vec![origin.clone()]).await;
    let mut cmd = Command::new("node");
    cmd.arg(root.join("host/switchboard/tests/browser").join(script))
        .env("NODE_PATH", &node_path)
        .env("SWITCHBOARD_CHROMIUM", &chromium)
        .env(
            "CHAT_PAGE",
            format!("{origin}/examples/web-chat/index.html"),
        )
        .env(
            "WT_URL",
            format!("https://127.0.0.1:{}/switchboard/1", n.web_addr().port()),
        )
        .env("WT_HASH", n.web_cert_sha256())
        .env("ALICE_TOKEN", n.token("acme", "alice"))
        .env("BOB_TOKEN", n.token("acme", "bob"));
    // The script bounds each of its waits; this bounds the whole run (a hung browser).
    let run = tokio::task::spawn_blocking(move || cmd.output());
    let out = tokio::time::timeout(std::time::Duration::from_secs(180), run)
        .await
        .expect("the browser run did not finish in 180 s")
        .unwrap()
        .expect("running node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser run failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let result = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|j| serde_json::from_str(j).unwrap())
        .unwrap_or_else(|| panic!("no RESULT line:\n{stdout}\n{stderr}"));
    (n, result)
}

/// `(seq, sender, text)` of the messages a page showed (`window.chat.messages` and the like).
fn shown(v: &serde_json::Value) -> Vec<(u64, String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["seq"].as_str().unwrap().parse().unwrap(),
                m["sender"].as_str().unwrap().to_owned(),
                m["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `general`'s whole log, read back over native QUIC by carol (who joins it to read).
async fn general_log(n: &TestNode) -> Vec<(u64, String, String)> {
    let mut reader = n.raw().await;
    assert!(matches!(
        reader.hello(&n.token("acme", "carol")).await,
        ServerFrame::Welcome { .. }
    ));
    reader
        .send(&ClientFrame::Join {
            request_id: 1,
            group: "general".into(),
        })
        .await;
    reader.read().await;
    reader
        .send(&ClientFrame::Fetch {
            request_id: 2,
            group: "general".into(),
            after_seq: 0,
            limit: 100,
        })
        .await;
    let Some(ServerFrame::FetchResult { messages, .. }) = reader.read().await else {
        panic!("no FetchResult");
    };
    messages
        .iter()
        .map(|m| {
            (
                m.seq,
                m.sender.clone(),
                String::from_utf8(m.body.to_vec()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_chat_and_a_reloaded_or_reconnected_tab_gets_exactly_what_it_missed() {
    let (n, result) = run_browser_script("web_chat.mjs").await;
    // What the reloaded tab showed is exactly the node's log after the message it last saw:
    // read the log back over native QUIC and compare seqs, senders and bodies.
    let before = shown(&result["before"]);
    let after = shown(&result["after"]);
    let log = general_log(&n).await;
    assert_eq!(log.len(), 7, "{log:?}");
    assert_eq!(before, log[..2].to_vec());
    assert_eq!(after, log[2..].to_vec());
    assert_eq!(
        after.iter().map(|m| m.2.as_str()).collect::<Vec<_>>(),
        [
            "missed one",
            "missed two",
            "back again",
            "during the drop",
            "reconnected"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_share_presence_and_receipts_and_a_page_that_left_fetches_what_it_missed() {
    let (n, result) = run_browser_script("web_chat_group.mjs").await;
    // The log: bob's "read me", the two sent while alice was out, "welcome back".
    let log = general_log(&n).await;
    let texts: Vec<&str> = log.iter().map(|m| m.2.as_str()).collect();
    assert_eq!(
        texts,
        [
            "read me",
            "while you were out 1",
            "while you were out 2",
            "welcome back"
        ]
    );
    // What alice's page fetched on rejoining is exactly the log's part she was out for, and
    // live she got exactly the rest.
    assert_eq!(shown(&result["history"]), log[1..3].to_vec());
    assert_eq!(shown(&result["live"]), vec![log[0].clone(), log[3].clone()]);
    // Bob's page got alice's read receipt for his first message.
    let receipts = result["receipts"].as_array().unwrap();
    let read_me = log[0].0.to_string();
    assert!(
        receipts
            .iter()
            .any(|r| r["seq"] == read_me.as_str() && r["user"] == "alice" && r["kind"] == "read"),
        "{receipts:?}"
    );
}
