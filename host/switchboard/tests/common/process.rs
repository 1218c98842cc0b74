//! A node as a child process: the built binary running `switchboard serve --config FILE`, for
//! tests that must stop it for real (SIGKILL) and start it again on the same data dir.
//!
//! Include with `#[path = "common/process.rs"] mod process;` next to `mod common;`.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use switchboard_core::PresenceState;
use switchboard_wire::{self as wire, ClientFrame, GroupCursor, Hello, ServerFrame};

use super::common::RawClient;

/// How long a node may take from spawn to answering a Hello.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `switchboard serve`. Dropping it kills the process (SIGKILL) and reaps it, so a
/// panicking test leaves no node behind.
pub struct NodeProcess {
    child: Option<Child>,
    /// The QUIC address the node was told to listen on.
    pub addr: SocketAddr,
    /// The node's stdout and stderr (tracing writes to stdout).
    pub log: PathBuf,
    /// The data dir (`data_dir` of the config): sled store and dev certificate.
    pub data_dir: PathBuf,
}

/// A free UDP port on loopback: bind port 0, read the port, release it. Another process could
/// take it before the node binds it; [`NodeProcess::start`] retries with a new port when the
/// node fails to bind.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

impl NodeProcess {
    /// Writes `<dir>/node.toml` (`listen` on a free loopback port, `data_dir = "data"`, then
    /// `config_rest`), starts the binary on it with `envs`, and waits until a Hello with
    /// `token` is welcomed. Returns the node and that connected client.
    ///
    /// `name` names the log file (`<dir>/<name>.log`). Panics, with the node's log, if the
    /// node exits or does not answer within [`READY_TIMEOUT`].
    pub async fn start(
        dir: &Path,
        name: &str,
        config_rest: &str,
        envs: &[(&str, &str)],
        token: &str,
        cursors: Vec<GroupCursor>,
    ) -> (NodeProcess, RawClient, ServerFrame) {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut node = Self::spawn(dir, name, config_rest, envs);
            match node.connect_when_ready(token, cursors.clone()).await {
                Ok((client, welcome)) => return (node, client, welcome),
                // Lost the race for the port: try another one.
                Err(log) if attempt < 3 && log.contains("binding") => continue,
                Err(log) => panic!(
                    "node {name} did not become ready (the store must always reopen):\n{log}"
                ),
            }
        }
    }

    fn spawn(dir: &Path, name: &str, config_rest: &str, envs: &[(&str, &str)]) -> NodeProcess {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let config = dir.join("node.toml");
        std::fs::write(
            &config,
            format!("listen = \"{addr}\"\ndata_dir = \"data\"\n\n{config_rest}"),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info,quinn=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn the switchboard binary");
        NodeProcess {
            child: Some(child),
            addr,
            log,
            data_dir: dir.join("data"),
        }
    }

    /// Connects and says Hello until the node answers, or returns the log if it exits or
    /// the deadline passes.
    ///
    /// The process gives no other sign of readiness that a test can wait on: the store opens,
    /// the config is seeded, then the endpoint binds. Until then a QUIC handshake to the port
    /// gets no answer at all (quinn would retransmit its Initial for up to the idle timeout),
    /// so each attempt is bounded, starting short and doubling, and a fresh one is made until
    /// the overall deadline.
    pub async fn connect_when_ready(
        &mut self,
        token: &str,
        cursors: Vec<GroupCursor>,
    ) -> Result<(RawClient, ServerFrame), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut per_attempt = Duration::from_millis(25);
        let mut last_error = String::from("no attempt made");
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!("node exited with {status}\n{}", self.log_text()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready after {READY_TIMEOUT:?} (last attempt: {last_error})\n{}",
                    self.log_text()
                ));
            }
            // The certificate is written into the data dir before the endpoint binds; a
            // read that races the write sees part of it, so only a whole one is used.
            let cert = std::fs::read(self.data_dir.join("cert.der"))
                .ok()
                .filter(|c| {
                    switchboard_client::tls::client_config_with_alpn(c, &[wire::ALPN]).is_ok()
                });
            if let Some(cert) = cert {
                let attempt = async {
                    let mut c = RawClient::connect(self.addr, &cert, wire::ALPN)
                        .await
                        .map_err(|e| e.to_string())?;
                    c.send(&ClientFrame::Hello(Hello {
                        token: token.into(),
                        presence: PresenceState::Foreground,
                        cursors: cursors.clone(),
                        client: "process-test".into(),
                    }))
                    .await;
                    match c.read().await {
                        Some(w @ ServerFrame::Welcome { .. }) => Ok((c, w)),
                        other => Err(format!("hello answered with {other:?}")),
                    }
                };
                match tokio::time::timeout(per_attempt, attempt).await {
                    Ok(Ok(ready)) => return Ok(ready),
                    Ok(Err(e)) => last_error = e,
                    Err(_) => last_error = format!("no answer within {per_attempt:?}"),
                }
                per_attempt = (per_attempt * 2).min(Duration::from_secs(1));
            } else {
                // Not even the whole certificate yet (first start): check again shortly.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Sends SIGKILL and reaps the process; returns how it ended.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("node already stopped");
        child.kill().expect("SIGKILL the node");
        child.wait().expect("reap the node")
    }

    /// Sends SIGTERM (a graceful stop: drain, final flush) and waits up to 20 s for the
    /// process to exit; returns how it ended. SIGKILLs it after the deadline.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.id().expect("node already stopped");
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        self.wait_exit("SIGTERM")
    }

    /// Waits up to 20 s for the process to exit after `cause` (a signal, a drain); returns
    /// how it ended. SIGKILLs it after the deadline.
    pub fn wait_exit(&mut self, cause: &str) -> ExitStatus {
        let mut child = self.child.take().expect("node already stopped");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the node") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("node did not exit within 20 s of {cause}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("wait for the node").is_none())
    }

    /// The process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The node's log so far (for failure messages), at most its last 64 KiB.
    pub fn log_text(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(64 * 1024);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
