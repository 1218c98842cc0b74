//! The servers under test, each a child process pinned to core 0 with `taskset` (when the
//! machine has two cores or more): the `switchboard` node binary, `nats-server` and
//! `mosquitto`. Installs the Debian packages when missing, writes each server's config into
//! a temp dir, waits until it accepts connections, reads its CPU time from `/proc`, and
//! kills it when dropped: the benchmark stops exactly what it started.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::tls::TestCert;

/// The tenant secret the node is configured with (through the environment, as in production).
pub const SECRET: &str = "bench-secret-0123456789abcdef";
pub const SECRET_ENV: &str = "SWITCHBOARD_PEERS_BENCH_SECRET";

/// Core the servers run on, and the one the load generator runs on.
pub const SERVER_CORE: usize = 0;
pub const CLIENT_CORE: usize = 1;

/// Cores of the machine, as seen before [`pin_self`] (after it, this process sees one).
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Pins the calling process (all its threads, so call it before any runtime starts) to
/// [`CLIENT_CORE`]. Returns whether it did.
pub fn pin_self() -> Result<bool> {
    if cores() < 2 {
        return Ok(false);
    }
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &CLIENT_CORE.to_string()])
        .arg(std::process::id().to_string())
        .stdout(Stdio::null())
        .status()
        .context("taskset")?;
    Ok(status.success())
}

/// How many `rustc` processes are running (other people's builds: the machine is shared,
/// and a compiler on either core skews a run).
pub fn compilers_running() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
                .filter(|c| c.trim() == "rustc")
                .count()
        })
        .unwrap_or(0)
}

/// Installs nats-server and mosquitto from Debian if either is missing.
pub fn ensure_installed(nats: bool, mqtt: bool) -> Result<()> {
    let mut missing = Vec::new();
    if nats && which("nats-server").is_none() {
        missing.push("nats-server");
    }
    if mqtt && which("mosquitto").is_none() {
        missing.push("mosquitto");
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {missing:?} (apt-get)");
    let install = |cmd: &mut Command| -> Result<bool> {
        Ok(cmd
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()?
            .success())
    };
    if !install(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&missing),
    )? {
        install(Command::new("apt-get").arg("update"))?;
        if !install(
            Command::new("apt-get")
                .args(["install", "-y"])
                .args(&missing),
        )? {
            bail!("apt-get install -y {missing:?} failed");
        }
    }
    Ok(())
}

fn which(bin: &str) -> Option<PathBuf> {
    [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(bin))
    .find(|p| p.exists())
}

/// The version line a server prints, for the docs.
pub fn version(system: &str) -> String {
    let out = match system {
        "nats" => Command::new("nats-server").arg("--version").output(),
        _ => Command::new("mosquitto").arg("-h").output(),
    };
    out.ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The node's certificate (Switchboard: its dev certificate, to pin).
    pub cert_der: Vec<u8>,
    dir: tempfile::TempDir,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds the server process (all threads) has used so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(&format!("/proc/{}/stat", self.pid()))
    }

    /// Resident set size of the server process (`VmRSS` of `/proc/<pid>/status`), in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
        text.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS in {path}"))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Fails if the server has exited (crashed) during a run.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("server exited: {status}\n{}", self.log_tail());
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (utime + stime) of a `/proc/<pid>/stat` file.
pub fn cpu_seconds(stat: &str) -> Result<f64> {
    let text = std::fs::read_to_string(stat).with_context(|| stat.to_owned())?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &text[text.rfind(')').context("stat format")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the state (field 3).
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

fn free_port() -> Result<u16> {
    // TCP and UDP ports are separate; Switchboard needs UDP, the others TCP. A port free for
    // both is free for either. The kernel picks a free TCP port; the same number may be
    // taken for UDP (a client socket of an earlier run: "Address already in use" ended an
    // idle run once), so try another.
    let mut last = None;
    for _ in 0..32 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        match std::net::UdpSocket::bind(("127.0.0.1", port)) {
            Ok(_) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried at least once").into())
}

fn spawn(dir: &Path, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<Child> {
    let log = std::fs::File::create(dir.join("server.log"))?;
    let mut cmd = if cores() >= 2 {
        let mut c = Command::new("taskset");
        c.args(["-c", &SERVER_CORE.to_string(), program]);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args)
        .envs(envs.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    cmd.spawn().with_context(|| format!("starting {program}"))
}

/// A started TCP server (NATS, Mosquitto) once its port accepts connections.
fn listening(
    child: std::process::Child,
    port: u16,
    tls: Option<&TestCert>,
    dir: tempfile::TempDir,
) -> Result<Server> {
    let mut server = Server {
        child,
        addr: format!("127.0.0.1:{port}").parse()?,
        cert_der: tls.map(|c| c.cert_der.clone()).unwrap_or_default(),
        dir,
    };
    wait_tcp(&mut server)?;
    Ok(server)
}

fn wait_tcp(server: &mut Server) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        server.check_alive()?;
        if std::net::TcpStream::connect(server.addr).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("server did not listen on {}", server.addr);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Groups of the node's tenant `bench`, each `(id, members)`: all closed.
pub type Groups = Vec<(String, Vec<String>)>;

/// The fan-out scenarios' one group: `g` with members `u0` (the publisher) … `u{fanout}`.
pub fn fanout_group(fanout: usize) -> Groups {
    vec![("g".into(), (0..=fanout).map(|i| format!("u{i}")).collect())]
}

/// The idle scenario's groups: `g0` … `g{groups-1}`, group `k` with the members
/// `u{k*size+1}` … `u{k*size+size}` (subscriber `i` is user `u{i+1}`, as in the fan-out runs)
/// and the publisher `u0`, which sends one message to each after the idle period.
pub fn idle_groups(groups: usize, size: usize) -> Groups {
    (0..groups)
        .map(|k| {
            let members = std::iter::once("u0".to_owned())
                .chain((1..=size).map(|j| format!("u{}", k * size + j)))
                .collect();
            (format!("g{k}"), members)
        })
        .collect()
}

/// `switchboard serve` over a fresh data dir: tenant `bench` with `groups` (closed), bound to
/// the policy `plugin` if given (with the same config as `switchboard-bench`'s priority runs);
/// rate limits off (the benchmark measures capacity, not the per-user ceilings), admin API off.
pub fn switchboard(node_bin: &Path, groups: &Groups, plugin: Option<&Path>) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let config = node_config(port, groups, plugin)?;
    let mut server = start_node(node_bin, dir, port, &config)?;
    // The dev certificate is written before the endpoint binds; the client retries its
    // connect until the node answers.
    let cert = server.dir.path().join("data").join("cert.der");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cert.exists() {
        server.check_alive()?;
        if Instant::now() > deadline {
            bail!("node wrote no certificate\n{}", server.log_tail());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    server.cert_der = std::fs::read(&cert)?;
    Ok(server)
}

/// `switchboard serve` as [`switchboard`] (no plugin), with its WebTransport endpoint on a
/// port of its own too; both endpoints use the certificate `cert_der` and key `key_der` (DER,
/// PKCS #8) as `[tls]`. Returns the server (its `addr` is the QUIC endpoint) and the
/// WebTransport endpoint's address. The node binds both before it serves, so a client that
/// reached the QUIC endpoint finds the WebTransport one; clients retry until then.
#[allow(dead_code)] // the WebTransport benchmark's (`bench/src/webtransport`), which includes this file
pub fn switchboard_webtransport(
    node_bin: &Path,
    groups: &Groups,
    cert_der: &[u8],
    key_der: &[u8],
) -> Result<(Server, SocketAddr)> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let web_port = free_port()?;
    std::fs::write(dir.path().join("cert.der"), cert_der)?;
    std::fs::write(dir.path().join("key.der"), key_der)?;
    let mut config = node_config(port, groups, None)?;
    writeln!(config, "[tls]\ncert = \"cert.der\"\nkey = \"key.der\"")?;
    writeln!(
        config,
        "[webtransport]\nenabled = true\nlisten = \"127.0.0.1:{web_port}\""
    )?;
    let mut server = start_node(node_bin, dir, port, &config)?;
    server.cert_der = cert_der.to_vec();
    Ok((server, format!("127.0.0.1:{web_port}").parse()?))
}

/// Writes `config` as `switchboard.toml` into `dir` and starts `switchboard serve` there.
fn start_node(node_bin: &Path, dir: tempfile::TempDir, port: u16, config: &str) -> Result<Server> {
    std::fs::write(dir.path().join("switchboard.toml"), config)?;
    let child = spawn(
        dir.path(),
        node_bin.to_str().context("node path")?,
        &["serve", "--config", "switchboard.toml"],
        &[(SECRET_ENV, SECRET), ("RUST_LOG", "warn")],
    )?;
    Ok(Server {
        child,
        addr: format!("127.0.0.1:{port}").parse()?,
        cert_der: Vec::new(),
        dir,
    })
}

/// The benchmarks' node config: QUIC on `port`, tenant `bench` with `groups` (closed), bound
/// to the policy `plugin` if given; rate limits off, admin API off.
fn node_config(port: u16, groups: &Groups, plugin: Option<&Path>) -> Result<String> {
    let mut config = String::new();
    writeln!(config, "listen = \"127.0.0.1:{port}\"")?;
    writeln!(config, "data_dir = \"data\"")?;
    writeln!(config, "[limits]")?;
    writeln!(config, "user_messages_per_sec = 0")?;
    writeln!(config, "tenant_messages_per_sec = 0")?;
    writeln!(config, "tenant_connections_per_sec = 0")?;
    writeln!(config, "[admin]\nenabled = false")?;
    writeln!(
        config,
        "[[tenants]]\nid = \"bench\"\nsecret_env = \"{SECRET_ENV}\""
    )?;
    if let Some(p) = plugin {
        // The sender `u0` is no VIP: every message takes the plugin's full path to the
        // normal lane, as with the built-in default.
        writeln!(config, "plugin = {:?}", p.to_str().context("plugin path")?)?;
        writeln!(config, "plugin_config = {{ vip_users = \"u1,u2\" }}")?;
    }
    for (id, members) in groups {
        let members: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
        writeln!(config, "[[tenants.groups]]\nid = \"{id}\"")?;
        writeln!(config, "members = [{}]", members.join(", "))?;
    }
    Ok(config)
}

/// `nats-server` with a config file: core NATS, optionally TLS, optionally JetStream with
/// file storage.
pub fn nats(tls: Option<&TestCert>, jetstream: bool) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let mut config = String::new();
    writeln!(config, "listen: 127.0.0.1:{port}")?;
    // Runs are seconds long; pings every 2 minutes by default, so this only makes sure a
    // long run's publisher (which does not answer pings) is not dropped.
    writeln!(config, "ping_interval: \"10m\"")?;
    if let Some(cert) = tls {
        std::fs::write(dir.path().join("cert.pem"), &cert.cert_pem)?;
        std::fs::write(dir.path().join("key.pem"), &cert.key_pem)?;
        writeln!(
            config,
            "tls {{\n  cert_file: \"cert.pem\"\n  key_file: \"key.pem\"\n  timeout: 5\n}}"
        )?;
    }
    if jetstream {
        writeln!(config, "jetstream {{\n  store_dir: \"js\"\n}}")?;
    }
    std::fs::write(dir.path().join("nats.conf"), config)?;
    let child = spawn(dir.path(), "nats-server", &["-c", "nats.conf"], &[])?;
    listening(child, port, tls, dir)
}

/// `mosquitto` with a config file: one listener, plaintext or TLS; in-memory (no
/// persistence); no per-client limit on QoS 1 messages in flight (the default of 20 would
/// cap a subscriber, and the load generator bounds what is outstanding anyway).
pub fn mosquitto(tls: Option<&TestCert>) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let mut config = String::new();
    // Running as root, mosquitto would switch to the `mosquitto` user and lose access to
    // the key in the temp dir.
    writeln!(config, "user root")?;
    writeln!(config, "persistence false")?;
    writeln!(config, "log_dest stderr")?;
    writeln!(config, "log_type error")?;
    writeln!(config, "log_type warning")?;
    writeln!(config, "allow_anonymous true")?;
    // Off by default in mosquitto: Nagle's algorithm against the client's delayed ACKs
    // holds back small writes by up to ~40 ms. NATS (Go) and quinn send without delay.
    writeln!(config, "set_tcp_nodelay true")?;
    writeln!(config, "max_inflight_messages 0")?;
    writeln!(config, "max_queued_messages 100000")?;
    writeln!(config, "listener {port} 127.0.0.1")?;
    if let Some(cert) = tls {
        let certfile = dir.path().join("cert.pem");
        let keyfile = dir.path().join("key.pem");
        std::fs::write(&certfile, &cert.cert_pem)?;
        std::fs::write(&keyfile, &cert.key_pem)?;
        writeln!(config, "certfile {}", certfile.display())?;
        writeln!(config, "keyfile {}", keyfile.display())?;
    }
    std::fs::write(dir.path().join("mosquitto.conf"), config)?;
    let child = spawn(dir.path(), "mosquitto", &["-c", "mosquitto.conf"], &[])?;
    listening(child, port, tls, dir)
}
