//! The cluster failure suite (issue 17): three nats-servers clustered with routes (streams
//! and buckets R3), three `switchboard serve` processes, six SDK clients of the same three
//! groups spread over all nodes, every one sending under load, and one fault per scenario:
//!
//! - `kill -9` of the node that owns the busy group, repeatedly (then it restarts);
//! - `kill -9` of the NATS server that leads the busy group's stream, repeatedly;
//! - `SIGSTOP` of the busy group's owner for longer than its lease, then `SIGCONT`
//!   (fencing: the resumed node must not append);
//! - a rolling drain (SIGTERM) and restart of every node;
//! - a slow, flapping link (delay, jitter, connections cut every few seconds) between one
//!   node and its NATS server, through a loopback TCP proxy (`common/tcp_proxy.rs`).
//!
//! After each run the checker (`common/cluster.rs`, `finish_and_check`) reads the log back
//! from JetStream and proves: every acknowledged (sender, client message id) is stored
//! exactly once, at the seq its ack named; each group's seqs run 1..head with no gap or
//! repeat; every receiver got each group gapless, in order, without repeats, and the same
//! message at each seq as the log (so all receivers agree).
//!
//! Failover time = from the fault until a send to the busy group through a surviving node
//! is acknowledged. Each scenario prints its figures (`cluster-faults …`) to stderr; they
//! go in docs/reliability.md ("Cluster failures").
//!
//! CI runs a few faults per scenario; `SB_FAULTS_ROUNDS=N` repeats each fault N times (a
//! soak). The scenarios run one at a time (each starts 6 processes on what may be a
//! 2-core machine).

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "../../cluster/tests/support/mod.rs"]
mod nats;
#[path = "common/process.rs"]
mod process;
#[path = "common/tcp_proxy.rs"]
mod tcp_proxy;

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use cluster::*;
use switchboard_cluster::names::LogNames;
use tcp_proxy::{LinkFaults, TcpProxy};

/// One scenario at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// A sender's pause between two messages.
const PACE: Duration = Duration::from_millis(20);
/// Acks to wait for between two faults (the load runs on between them).
const BETWEEN: usize = 60;

/// How many times each scenario repeats its fault: `SB_FAULTS_ROUNDS`, else `ci`.
fn rounds(ci: usize) -> usize {
    std::env::var("SB_FAULTS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ci)
}

struct World {
    nats: NatsCluster,
    nodes: Nodes,
    load: Load,
    members: Vec<Member>,
    probes: AtomicU64,
}

/// Starts the cluster (node `i` reaching NATS through `nats_of(cluster, i)`), waits until
/// every group accepts a send, and starts the members, two per node.
async fn world(nats_of: impl Fn(&NatsCluster, usize) -> String) -> World {
    let nats = tokio::task::block_in_place(NatsCluster::start);
    world_on(nats, nats_of).await
}

/// [`world`] on a NATS cluster already started.
async fn world_on(nats: NatsCluster, nats_of: impl Fn(&NatsCluster, usize) -> String) -> World {
    std::env::set_var(SECRET_ENV, SECRET);
    let urls = [0, 1, 2].map(|i| nats_of(&nats, i));
    let nodes = Nodes::start(urls).await;
    let load = Load::default();
    let probes = AtomicU64::new(0);
    // Ready: each group's owner serves its shard (a fresh cluster first creates its streams).
    for g in groups() {
        failover_time(&load, &nodes.endpoint(0), &g, Instant::now(), &probes).await;
    }
    let mut members = Vec::new();
    for (i, user) in USERS.iter().enumerate() {
        let node = i / 2;
        members.push(Member::start(user, node, &nodes.endpoint(node), &load, PACE).await);
    }
    load.progress(BETWEEN, "start").await;
    World {
        nats,
        nodes,
        load,
        members,
        probes,
    }
}

impl World {
    /// Moves the members of node `from` to the other live nodes, in turn.
    async fn evacuate(&self, from: usize) {
        let others: Vec<usize> = self
            .nodes
            .live()
            .into_iter()
            .filter(|&i| i != from)
            .collect();
        for (k, m) in self.members.iter().filter(|m| m.node() == from).enumerate() {
            let to = others[k % others.len()];
            m.move_to(to, &self.nodes.endpoint(to)).await;
        }
    }

    /// Moves every member back to its first node (two per node).
    async fn rebalance(&self) {
        for (i, m) in self.members.iter().enumerate() {
            let home = i / 2;
            if m.node() != home {
                m.move_to(home, &self.nodes.endpoint(home)).await;
            }
        }
    }

    /// Measures failover of `group` from `since`, through live node `via`.
    async fn failover(&self, group: &str, via: usize, since: Instant) -> Duration {
        let at = self.nodes.endpoint(via);
        failover_time(&self.load, &at, group, since, &self.probes).await
    }

    async fn check(self, scenario: &str, faults: usize, failovers: &[Duration]) {
        let count = |needle: &str| -> Vec<usize> {
            (0..3)
                .map(|i| self.nodes.count_in_logs(i, needle))
                .collect()
        };
        // Evidence from the nodes' logs, per node: appends the log's fencing refused, and
        // membership watches reopened because they fell silent.
        let fenced = count("fenced out of shard");
        let silent = count("membership watch silent");
        let urls = self.nats.urls();
        let figures = finish_and_check(&self.load, self.members, &self.nodes, &urls).await;
        let failover = if failovers.is_empty() {
            "failover n/a".to_owned()
        } else {
            let (p50, p99) = percentiles(failovers);
            format!(
                "failover p50 {} ms p99 {} ms (each: {:?} ms)",
                p50.as_millis(),
                p99.as_millis(),
                failovers
                    .iter()
                    .map(Duration::as_millis)
                    .collect::<Vec<_>>()
            )
        };
        eprintln!(
            "cluster-faults {scenario}: faults {faults}, acked {}, stored {}, delivered {}, \
             lost 0, retried sends {}, receivers resumed at the end {}, {failover}; per \
             node: fenced appends {fenced:?}, silent watches reopened {silent:?}",
            figures.acked,
            figures.stored,
            figures.delivered,
            figures.retries,
            figures.resumed_at_end,
        );
        drop(self.nodes);
        drop(self.nats);
    }
}

fn all_urls(n: &NatsCluster, _: usize) -> String {
    n.urls()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_busy_groups_owner_loses_nothing_acknowledged() {
    let _one = SERIAL.lock().await;
    let mut w = world(all_urls).await;
    let mut failovers = Vec::new();
    let rounds = rounds(3);
    for r in 0..rounds {
        let group = groups()[r % 3].clone();
        let owner = owner_of(&group, &w.nodes.live());
        let via = (owner + 1) % 3;
        w.nodes.kill(owner);
        let killed = Instant::now();
        let at = w.nodes.endpoint(via);
        let (took, ()) = tokio::join!(
            failover_time(&w.load, &at, &group, killed, &w.probes),
            w.evacuate(owner)
        );
        failovers.push(took);
        w.load.progress(BETWEEN, "after the kill").await;
        w.nodes.start_node(owner).await;
        w.rebalance().await;
        w.load.progress(BETWEEN, "after the restart").await;
    }
    w.check("kill -9 of the owner", rounds, &failovers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_stream_leader_loses_nothing_acknowledged() {
    let _one = SERIAL.lock().await;
    let mut w = world(all_urls).await;
    let mut failovers = Vec::new();
    let rounds = rounds(2);
    let names = LogNames::new(PREFIX).unwrap();
    for r in 0..rounds {
        let group = groups()[r % 3].clone();
        let stream = names.stream(shard(&group));
        let leader = tokio::task::block_in_place(|| {
            let deadline = Instant::now() + PATIENCE;
            loop {
                if let Some(l) = w.nats.stream_leader(&stream) {
                    return l;
                }
                assert!(Instant::now() < deadline, "{stream} has no leader");
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        eprintln!(
            "round {r}: killing {} (leads {stream})",
            w.nats.name(leader)
        );
        w.nats.kill(leader);
        let killed = Instant::now();
        let via = r % 3;
        failovers.push(w.failover(&group, via, killed).await);
        let new = tokio::task::block_in_place(|| w.nats.wait_leader_other_than(&stream, leader));
        eprintln!("round {r}: {} leads {stream} now", w.nats.name(new));
        w.load.progress(BETWEEN, "after the NATS kill").await;
        tokio::task::block_in_place(|| w.nats.restart(leader));
        w.load.progress(BETWEEN, "after the NATS restart").await;
    }
    w.check("kill -9 of the stream leader", rounds, &failovers)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_owner_past_its_lease_is_fenced_and_loses_nothing() {
    let _one = SERIAL.lock().await;
    let w = world(all_urls).await;
    let mut failovers = Vec::new();
    let rounds = rounds(2);
    for r in 0..rounds {
        let group = groups()[r % 3].clone();
        let owner = owner_of(&group, &w.nodes.live());
        let via = (owner + 1) % 3;
        w.nodes.signal(owner, "STOP");
        let stopped = Instant::now();
        failovers.push(w.failover(&group, via, stopped).await);
        // Paused well past its lease, while the others go on appending to its groups.
        w.load.progress(BETWEEN, "while the owner is stopped").await;
        let until = stopped + Duration::from_millis(3 * TTL_MS);
        tokio::time::sleep_until(until.into()).await;
        w.nodes.signal(owner, "CONT");
        w.load.progress(BETWEEN, "after SIGCONT").await;
        // The resumed node takes its shards back (rendezvous still prefers it): its
        // members send through it again, and so does a probe.
        let at = w.nodes.endpoint(owner);
        failover_time(&w.load, &at, &group, Instant::now(), &w.probes).await;
    }
    w.check("SIGSTOP of the owner", rounds, &failovers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_drain_and_restart_of_every_node_loses_nothing() {
    let _one = SERIAL.lock().await;
    let mut w = world(all_urls).await;
    let mut failovers = Vec::new();
    let rounds = rounds(1);
    for _ in 0..rounds {
        for node in 0..3 {
            let group = groups()
                .into_iter()
                .find(|g| owner_of(g, &[0, 1, 2]) == node)
                .unwrap();
            tokio::task::block_in_place(|| w.nodes.drain(node));
            let drained = Instant::now();
            let via = (node + 1) % 3;
            let at = w.nodes.endpoint(via);
            let (took, ()) = tokio::join!(
                failover_time(&w.load, &at, &group, drained, &w.probes),
                w.evacuate(node)
            );
            failovers.push(took);
            w.load.progress(BETWEEN, "after the drain").await;
            w.nodes.start_node(node).await;
            w.rebalance().await;
            w.load.progress(BETWEEN, "after the restart").await;
        }
    }
    w.check("rolling drain and restart", 3 * rounds, &failovers)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_flapping_link_to_nats_loses_nothing() {
    let _one = SERIAL.lock().await;
    // node-3 reaches nats-3 only, through the proxy; the others reach every server.
    let faults = LinkFaults {
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(20),
        cut_every: Some((Duration::from_secs(1), Duration::from_secs(3))),
    };
    let seed = common::now_secs();
    eprintln!("cluster-faults lossy link: seed {seed}");
    let nats = tokio::task::block_in_place(NatsCluster::start);
    // A clean link while the cluster starts (a node that cannot reach NATS at start exits).
    let proxy = TcpProxy::start(nats.client_addr(2), LinkFaults::default(), seed).await;
    let proxy_url = proxy.url();
    let w = world_on(
        nats,
        |n, i| if i == 2 { proxy_url.clone() } else { n.urls() },
    )
    .await;
    proxy.set_faults(faults);
    // Load in stretches until the link was cut at least `rounds` times, and for at least
    // `rounds` stretches.
    let rounds = rounds(6);
    let mut stretches = 0;
    while stretches < rounds
        || proxy.stats.cuts.load(std::sync::atomic::Ordering::Relaxed) < rounds as u64
    {
        w.load.progress(BETWEEN, "over the flapping link").await;
        stretches += 1;
    }
    let stats = {
        let s = &proxy.stats;
        use std::sync::atomic::Ordering::Relaxed;
        (
            s.connections.load(Relaxed),
            s.cuts.load(Relaxed),
            s.bytes.load(Relaxed),
        )
    };
    eprintln!(
        "cluster-faults lossy link: {} connections through the proxy, {} cuts, {} bytes",
        stats.0, stats.1, stats.2
    );
    assert!(stats.1 >= 1, "the link was never cut");
    w.check("slow flapping link to NATS", stats.1 as usize, &[])
        .await;
}
