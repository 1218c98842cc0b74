//! `switchboard-bench`: loopback benchmarks of a real node (QUIC, sled on disk).
//!
//! Fan-out 1→N: one sender and N receivers in one group. The sender keeps a window of sends
//! in flight (acks come back only after durability); every receiver timestamps each delivery
//! against the send time written in the body. Reports acked messages/s, deliveries/s and
//! delivery latency percentiles. Run through `cargo xtask bench`.
//!
//! Hot swap (`--scenario swap`, [`swap`]): activation-to-first-message latency and throughput
//! with policy versions swapped continuously through the control plane, versus none.
//!
//! Large group (`--scenario large-group`, [`large_group`]): how soon the foreground members
//! of a 10,000-member group have a message, active first versus naive fan-out.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
// The SDK's QUIC client config (pinned certificate, TLS 1.3, `switchboard/1`), so the raw
// clients here connect exactly as apps do.
use flow::Conn;
use switchboard_client::tls::client_config;
use switchboard_core::{GroupId, Limits, TenantId, UserId};
use switchboard_edge::{EdgeConfig, Node, TlsIdentity};
use switchboard_store::{GroupMeta, SledStore, Store, TenantRecord};

mod flow;
mod large_group;
mod push;
mod session;
mod swap;
mod threads;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// One sender, N receivers (`--policy`, `--fanout`, `--payload`, `--window`).
    Fanout,
    /// Hot swap under load (issue 4): `--swaps`, `--swap-every-ms`, `--runs`, `--messages`.
    Swap,
    /// A large group, active first vs naive fan-out (issue 5): `--members`, `--active-every`,
    /// `--group-messages`, `--modes`, `--bg-rate`, `--bg-groups`, `--bg-group-size`.
    LargeGroup,
}

#[derive(Parser, Debug)]
struct Args {
    /// The benchmark to run.
    #[arg(long, value_enum, default_value_t = Which::Fanout)]
    scenario: Which,
    /// Fewer messages per scenario (a smoke run).
    #[arg(long)]
    quick: bool,
    /// Worker threads of the node's runtime (the node's cores; the clients keep one).
    #[arg(long, default_value_t = 1)]
    node_threads: usize,
    /// Messages per scenario.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Sends in flight from the sender: 1 measures unloaded latency, larger windows
    /// throughput (and latency under that load).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 128])]
    window: Vec<usize>,
    /// Fan-outs to run.
    #[arg(long, value_delimiter = ',', default_values_t = vec![10usize, 100])]
    fanout: Vec<usize>,
    /// Tenant policies to run with: `builtin` (no plugin) and/or `priority` (the reference
    /// priority plugin from plugins/).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["builtin".to_string()])]
    policy: Vec<String>,
    /// Body sizes to run, in bytes (at least 16).
    #[arg(long, value_delimiter = ',', default_values_t = vec![64usize, 512])]
    payload: Vec<usize>,
    /// swap: timed activations in the latency part (after one warm-up activation of each
    /// version).
    #[arg(long, default_value_t = 50)]
    swaps: usize,
    /// swap: pause between activations in the throughput part, in ms (0: back to back).
    #[arg(long, default_value_t = 0)]
    swap_every_ms: u64,
    /// swap: runs of each throughput variant (no swaps / swaps), alternating; medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// large-group: receiving members of the group (besides the sender).
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    /// large-group: every n-th member (in member order) is foreground, the rest background.
    #[arg(long, default_value_t = 10)]
    active_every: usize,
    /// large-group: measured messages to the large group, one at a time.
    #[arg(long, default_value_t = 20)]
    group_messages: usize,
    /// large-group: the modes to run, each on a fresh node.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![large_group::Mode::ActiveFirst, large_group::Mode::Naive, large_group::Mode::Nudges])]
    modes: Vec<large_group::Mode>,
    /// large-group: background messages per second, round robin over the background groups.
    #[arg(long, default_value_t = 500)]
    bg_rate: u32,
    /// large-group: small groups that carry the background load.
    #[arg(long, default_value_t = 4)]
    bg_groups: usize,
    /// large-group: receivers in each background group (spread over the member order).
    #[arg(long, default_value_t = 100)]
    bg_group_size: usize,
    /// large-group: pause after a message reached every recipient, before the next, in ms
    /// (long enough for the ACKs and loss probes of a 10,000-session fan-out to drain, and
    /// for every message to nudge: at most one nudge a second per connection).
    #[arg(long, default_value_t = 1_000)]
    settle_ms: u64,
    /// large-group: client UDP sockets the sessions are spread over (4 MiB receive buffers).
    #[arg(long, default_value_t = 8)]
    client_sockets: usize,
    /// large-group: busy processes (shell loops) beside the node for the whole run, to
    /// measure active-first on a busy machine (0: none).
    #[arg(long, default_value_t = 0)]
    cpu_hog: usize,
}

const SECRET: &[u8] = b"bench-secret-0123456789abcdef";

struct Report {
    policy: &'static str,
    metrics: switchboard_edge::MetricsSnapshot,
    window: usize,
    fanout: usize,
    payload: usize,
    messages: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    /// CPU of the node's threads and of the load generator's over the measured interval.
    cpu: threads::Split,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        // Logs on stderr: stdout carries the tables.
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut args = Args::parse();
    if args.quick {
        args.messages = args.messages.min(2_000);
        args.swaps = args.swaps.min(10);
        args.runs = 1;
        args.members = args.members.min(1_000);
        args.group_messages = args.group_messages.min(5);
    }
    // The node gets its own runtime (one worker by default: the server is measured on one
    // core; `--node-threads` for more); the clients run on another.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.node_threads.max(1))
        .thread_name("node")
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("clients")
        .enable_all()
        .build()?;
    if args.scenario == Which::Swap {
        return swap::run(
            &server_rt,
            &client_rt,
            swap::SwapArgs {
                swaps: args.swaps.max(2),
                messages: args.messages,
                runs: args.runs.max(1),
                swap_every: Duration::from_millis(args.swap_every_ms),
            },
        );
    }
    if args.scenario == Which::LargeGroup {
        return large_group::run(
            &server_rt,
            &client_rt,
            large_group::LargeArgs {
                members: args.members,
                active_every: args.active_every.max(1),
                messages: args.group_messages.max(1),
                modes: args.modes.clone(),
                bg_groups: args.bg_groups,
                bg_group_size: args.bg_group_size,
                bg_rate: args.bg_rate,
                settle: Duration::from_millis(args.settle_ms),
                client_sockets: args.client_sockets,
                cpu_hog: args.cpu_hog,
            },
        );
    }
    println!(
        "| policy | fan-out | payload | window | messages | msgs/s (acked) | deliveries/s | p50 µs | p99 µs | max µs | msgs/flush | from log | node CPU µs/delivery | load gen CPU µs/delivery | load gen busy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for policy in &args.policy {
        let policy: &'static str = match policy.as_str() {
            "builtin" => "builtin",
            "priority" => "priority",
            other => bail!("unknown --policy {other}: builtin or priority"),
        };
        for &window in &args.window {
            for &fanout in &args.fanout {
                for &payload in &args.payload {
                    let messages = if window == 1 {
                        args.messages.min(2_000)
                    } else {
                        args.messages
                    };
                    let s = Scenario {
                        policy,
                        fanout,
                        payload: payload.max(16),
                        window,
                        messages,
                    };
                    print_row(&run_scenario(&server_rt, &client_rt, s)?);
                }
            }
        }
    }
    Ok(())
}

fn print_row(r: &Report) {
    let mut l = r.latencies_us.clone();
    l.sort_unstable();
    let pct = |p: f64| l[((l.len() as f64 - 1.0) * p) as usize];
    let secs = r.elapsed.as_secs_f64();
    let deliveries = (r.messages as f64 * r.fanout as f64).max(1.0);
    let busy = r.cpu.clients_busy(r.elapsed);
    // A generator near a full core is the bound, not the node: the row says so.
    let flag = if busy >= threads::GENERATOR_BOUND {
        " (generator-bound)"
    } else {
        ""
    };
    println!(
        "| {} | 1→{} | {} B | {} | {} | {:.0} | {:.0} | {} | {} | {} | {:.1} | {:.1}% | {:.2} | {:.2} | {:.0}%{} |",
        r.policy,
        r.fanout,
        r.payload,
        r.window,
        r.messages,
        r.messages as f64 / secs,
        (r.messages as f64 * r.fanout as f64) / secs,
        pct(0.5),
        pct(0.99),
        l.last().copied().unwrap_or(0),
        r.messages as f64 / r.metrics.flushes.max(1) as f64,
        100.0 * r.metrics.deliveries_catch_up as f64 / deliveries,
        r.cpu.node * 1e6 / deliveries,
        r.cpu.clients * 1e6 / deliveries,
        busy * 100.0,
        flag,
    );
}

#[derive(Clone, Copy)]
struct Scenario {
    policy: &'static str,
    fanout: usize,
    payload: usize,
    window: usize,
    messages: u64,
}

fn run_scenario(
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    s: Scenario,
) -> Result<Report> {
    let dir = tempfile::tempdir()?;
    let (_store, node, cert) = start_node(server_rt, dir.path(), s.fanout)?;
    if s.policy == "priority" {
        let engine = switchboard_policy::PolicyEngine::new(Default::default())?;
        let plugin = engine.load(&std::fs::read(plugins_artifacts::PRIORITY)?)?;
        let config = [("vip_users".to_string(), "u1,u2".to_string())].into();
        let policy = switchboard_policy::TenantPolicy::new(&plugin, "bench", config);
        node.hub()
            .set_policy(&TenantId::new("bench")?, Some(Arc::new(policy)));
    }
    let addr = node.local_addr();
    let mut report = client_rt.block_on(drive(addr, cert, s))?;
    report.metrics = node.hub().metrics().snapshot();
    server_rt.block_on(node.shutdown());
    Ok(report)
}

/// A node on its own runtime over a new sled store in `dir`: tenant `bench`, closed group
/// `g` with members `u0` (the sender) … `u{fanout}`. Returns the store, the node and its
/// certificate.
fn start_node(
    server_rt: &tokio::runtime::Runtime,
    dir: &Path,
    fanout: usize,
) -> Result<(Arc<SledStore>, Node, Vec<u8>)> {
    let store = Arc::new(SledStore::open(&dir.join("store"))?);
    let tenant = TenantId::new("bench")?;
    let group = GroupId::new("g")?;
    store.put_tenant(&TenantRecord {
        id: tenant.clone(),
        secret: SECRET.to_vec(),
    })?;
    store.create_group(
        &tenant,
        &group,
        GroupMeta {
            open: false,
            max_members: 100_000,
        },
    )?;
    for i in 0..=fanout {
        store.add_member(&tenant, &group, &UserId::new(&format!("u{i}"))?)?;
    }
    store.flush()?;
    let identity = TlsIdentity::self_signed()?;
    let cert = identity.cert_chain[0].to_vec();
    let node = server_rt.block_on(Node::start(
        EdgeConfig {
            listen: "127.0.0.1:0".parse()?,
            limits: Limits::default(),
            identity,
            webtransport: None,
        },
        store.clone(),
    ))?;
    Ok((store, node, cert))
}

/// A token for `user` of `tenant`, signed with the bench tenants' secret, valid for an hour.
fn bench_token(tenant: &str, user: &str) -> Result<String> {
    session::token(tenant, user, SECRET)
}

async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr, user: &str) -> Result<Conn> {
    flow::connect(endpoint, addr, bench_token("bench", user)?).await
}

async fn drive(addr: SocketAddr, cert: Vec<u8>, s: Scenario) -> Result<Report> {
    let Scenario {
        fanout,
        payload,
        window,
        messages,
        ..
    } = s;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(client_config(&cert)?);
    let start = Instant::now();

    let mut receivers = Vec::new();
    for i in 1..=fanout {
        let c = connect(&endpoint, addr, &format!("u{i}")).await?;
        receivers.push(tokio::spawn(flow::receive(c, None, messages, start)));
    }
    let mut sender = connect(&endpoint, addr, "u0").await?;

    let t0 = Instant::now();
    let cpu0 = threads::Split::now();
    flow::send_window(&mut sender, "g", window, messages, payload, start).await?;
    let mut latencies = Vec::with_capacity((messages as usize) * fanout);
    for r in receivers {
        latencies.extend(r.await??);
    }
    let elapsed = t0.elapsed();
    let cpu = threads::Split::now().since(cpu0);
    endpoint.close(0u32.into(), b"done");
    Ok(Report {
        policy: s.policy,
        metrics: Default::default(),
        window,
        fanout,
        payload,
        messages,
        elapsed,
        latencies_us: latencies,
        cpu,
    })
}
