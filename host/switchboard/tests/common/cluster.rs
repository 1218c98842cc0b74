//! The cluster failure suite's world (issue 17, `cluster_faults.rs`): three `nats-server`
//! processes clustered with routes on loopback (JetStream, streams and buckets R3), three
//! `switchboard serve` child processes with `[cluster]`, SDK clients of the same groups
//! spread over all nodes and sending under load, and the checker that proves nothing
//! acknowledged was lost, repeated or misnumbered.
//!
//! Include with `mod common;`, `#[path = "common/process.rs"] mod process;`,
//! `#[path = "common/tcp_proxy.rs"] mod tcp_proxy;` and `#[path = "common/cluster.rs"] mod
//! cluster;`.
//!
//! Every wait is on a condition (an ack, a health answer, a receiver's progress), bounded
//! by [`PATIENCE`]; no sleep stands in for a signal. The short sleeps left are pacing (a
//! sender's gap between messages, a retry's back-off, a poll's interval).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_client::{Client, ClientConfig, Event, Events};
use switchboard_cluster::names::shard_of;
use switchboard_cluster::ownership::preferred_owner;
use switchboard_cluster::{JetStreamLog, JetStreamLogConfig};
use switchboard_core::{GroupId, TenantId};
use switchboard_store::LogBackend;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::common::{mint, now_secs};
use super::process::NodeProcess;

pub const TENANT: &str = "demo";
pub const SECRET: &str = "cluster-faults-secret-0123456789";
pub const SECRET_ENV: &str = "SB_CLUSTER_FAULTS_SECRET";
pub const PREFIX: &str = "cf";
/// Lease and heartbeat TTL of the nodes: short, so a death costs seconds; long enough for
/// renewals every third of it on a loaded 2-core machine.
pub const TTL_MS: u64 = 2_000;
/// The most any one condition is waited for (2 cores shared by several builds; a fresh
/// cluster creates 256 R3 streams before it serves every shard).
pub const PATIENCE: Duration = Duration::from_secs(120);
/// Users whose clients send and receive; two per node at the start.
pub const USERS: [&str; 6] = ["u0", "u1", "u2", "u3", "u4", "u5"];
/// Users that send only to measure failover (`probe`) or to check readiness (`health`).
const OTHER_MEMBERS: [&str; 1] = ["probe"];

// ---------------------------------------------------------------------------------------
// NATS

/// One nats-server of the cluster: its fixed ports (a restart comes back on the same ones,
/// with the same store) and its process while it runs.
struct NatsProc {
    name: String,
    client_port: u16,
    cluster_port: u16,
    http_port: u16,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Three nats-servers clustered with routes on loopback (see the module docs). Dropping it
/// kills every server.
pub struct NatsCluster {
    servers: Vec<NatsProc>,
    routes: String,
    dir: Option<tempfile::TempDir>,
}

/// A free TCP port on loopback (bind port 0, read it, release it). Another process could
/// take it before nats-server binds it; [`NatsCluster::start`] then fails saying so.
fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free TCP port")
        .port()
}

/// `GET path` on loopback `port`: the status code and body, or `None` if nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

impl NatsCluster {
    /// Starts three servers (`nats-1`..`nats-3`) and waits until each reports healthy
    /// (`/healthz`: JetStream up, the meta group has a leader), so R3 streams can be made.
    /// `--no_advertise`: clients use only the URLs they were given, so a node behind a
    /// proxy stays behind it.
    pub fn start() -> NatsCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut servers: Vec<NatsProc> = (1..=3)
            .map(|i| NatsProc {
                name: format!("nats-{i}"),
                client_port: free_tcp_port(),
                cluster_port: free_tcp_port(),
                http_port: free_tcp_port(),
                store: dir.path().join(format!("nats-{i}")),
                log: dir.path().join(format!("nats-{i}.log")),
                child: None,
            })
            .collect();
        let routes = servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        for s in &mut servers {
            s.spawn(&routes);
        }
        let cluster = NatsCluster {
            servers,
            routes,
            dir: Some(dir),
        };
        for i in 0..3 {
            cluster.wait_healthy(i);
        }
        cluster
    }

    /// Every server's client URL, comma-separated (a node's `cluster.nats`).
    pub fn urls(&self) -> String {
        (0..3).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].client_port)
    }

    pub fn client_addr(&self, i: usize) -> SocketAddr {
        format!("127.0.0.1:{}", self.servers[i].client_port)
            .parse()
            .unwrap()
    }

    pub fn name(&self, i: usize) -> &str {
        &self.servers[i].name
    }

    /// SIGKILLs server `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        let mut child = self.servers[i].child.take().expect("server runs");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts server `i` again on its ports and store, and waits until it is healthy (it
    /// rejoined and caught up: `/healthz` checks its streams are current).
    pub fn restart(&mut self, i: usize) {
        let routes = self.routes.clone();
        self.servers[i].spawn(&routes);
        self.wait_healthy(i);
    }

    /// Waits until server `i` is healthy and the whole JetStream cluster formed: the meta
    /// leader reports both other servers current (`/healthz` alone passes before every peer
    /// is known, and an R3 stream made then is refused: "no suitable peers for placement").
    /// Only the leader knows its followers' state, so each running server is asked.
    fn wait_healthy(&self, i: usize) {
        let s = &self.servers[i];
        let deadline = Instant::now() + PATIENCE;
        let formed_here = |body: &str, name: &str| {
            let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
                return false;
            };
            let meta = &json["meta_cluster"];
            let peers = meta["replicas"].as_array().cloned().unwrap_or_default();
            meta["leader"] == name
                && peers.len() == 2
                && peers
                    .iter()
                    .all(|p| p["current"] == true && p["offline"] != true)
        };
        let formed = || {
            self.servers.iter().filter(|o| o.child.is_some()).any(|o| {
                http_get(o.http_port, "/jsz")
                    .is_some_and(|(c, b)| c == 200 && formed_here(&b, &o.name))
            })
        };
        loop {
            if let Some((200, _)) = http_get(s.http_port, "/healthz") {
                if formed() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} not healthy within {PATIENCE:?}:\n{}",
                s.name,
                tail(&s.log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the server that leads `stream` (its Raft leader), as a running server's
    /// monitoring endpoint reports it (`/jsz?accounts=true&streams=true`).
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        for s in self.servers.iter().filter(|s| s.child.is_some()) {
            let Some((200, body)) = http_get(s.http_port, "/jsz?accounts=true&streams=true") else {
                continue;
            };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            let leader = json["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .find(|d| d["name"] == stream)
                .and_then(|d| d["cluster"]["leader"].as_str().map(str::to_owned));
            if let Some(leader) = leader {
                return self.servers.iter().position(|s| s.name == leader);
            }
        }
        None
    }

    /// Waits until `stream` has a leader that is not server `not`, and returns it.
    pub fn wait_leader_other_than(&self, stream: &str, not: usize) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.stream_leader(stream) {
                Some(l) if l != not => return l,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "{stream} has no new leader within {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl NatsProc {
    fn spawn(&mut self, routes: &str) {
        let binary = super::nats::nats_server_binary();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-js", "--no_advertise", "-n", &self.name])
            .args(["-p", &self.client_port.to_string()])
            .args(["-m", &self.http_port.to_string()])
            .args(["--cluster_name", "sb-faults"])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.cluster_port),
            ])
            .args(["--routes", routes])
            .arg("-sd")
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
    }
}

/// Keeps `dir` (the logs) when a test fails, and says where.
fn keep_if_failing(dir: &mut Option<tempfile::TempDir>, what: &str) {
    if std::thread::panicking() {
        if let Some(d) = dir.take() {
            eprintln!("cluster-faults: {what} kept in {}", d.keep().display());
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        keep_if_failing(&mut self.dir, "the nats-servers' stores and logs");
        for s in &mut self.servers {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(8 * 1024);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

// ---------------------------------------------------------------------------------------
// Nodes

/// The groups the load sends to, all with every user as a member.
pub fn groups() -> Vec<String> {
    // One group per node's rendezvous share, so a kill of any node kills a busy owner.
    let nodes = node_names();
    let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for owner in &names {
        let g = (0..)
            .map(|i| format!("busy-{i}"))
            .find(|g| preferred_owner(shard(g), &names) == Some(owner))
            .unwrap();
        out.push(g);
    }
    out
}

pub fn node_names() -> Vec<String> {
    (1..=3).map(|i| format!("node-{i}")).collect()
}

pub fn shard(group: &str) -> u16 {
    shard_of(
        &TenantId::new(TENANT).unwrap(),
        &GroupId::new(group).unwrap(),
    )
}

/// The node (index) rendezvous gives `group` among the nodes `live`.
pub fn owner_of(group: &str, live: &[usize]) -> usize {
    let names: Vec<String> = live.iter().map(|&i| format!("node-{}", i + 1)).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let owner = preferred_owner(shard(group), &names).unwrap();
    live[names.iter().position(|n| *n == owner).unwrap()]
}

/// Where a node can be reached now.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub cert: Vec<u8>,
}

struct NodeSlot {
    dir: PathBuf,
    nats: String,
    process: Option<NodeProcess>,
    endpoint: Option<Endpoint>,
}

/// The three Switchboard nodes, as child processes (`switchboard serve`).
pub struct Nodes {
    slots: Vec<NodeSlot>,
    dir: Option<tempfile::TempDir>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        keep_if_failing(&mut self.dir, "the nodes' data dirs and logs");
    }
}

pub fn token(user: &str) -> String {
    let now = now_secs();
    mint(TENANT, user, SECRET.as_bytes(), now + 3600, now - 5)
}

fn node_config(name: &str, nats: &str) -> String {
    let members: Vec<String> = USERS
        .iter()
        .chain(OTHER_MEMBERS.iter())
        .map(|u| format!("\"{u}\""))
        .collect();
    let groups: String = groups()
        .iter()
        .map(|g| {
            format!(
                "[[tenants.groups]]\nid = \"{g}\"\nmembers = [{}]\n",
                members.join(", ")
            )
        })
        .collect();
    // One store key for the cluster (node-1 creates it; the shared directory's tenant
    // secrets are sealed with it), beside the nodes' own directories.
    format!(
        "store_key_file = \"../cluster.key\"\n\
         [admin]\nenabled = false\n\
         [cluster]\nnats = \"{nats}\"\nnode = \"{name}\"\nprefix = \"{PREFIX}\"\nreplicas = 3\n\
         lease_ttl_ms = {TTL_MS}\nrequest_timeout_ms = 2000\n\
         [[tenants]]\nid = \"{TENANT}\"\nsecret_env = \"{SECRET_ENV}\"\n{groups}"
    )
}

impl Nodes {
    /// Starts `node-1`..`node-3`, node `i` connecting to NATS at `nats[i]` (a URL list).
    pub async fn start(nats: [String; 3]) -> Nodes {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Nodes {
            slots: nats
                .into_iter()
                .enumerate()
                .map(|(i, nats)| NodeSlot {
                    dir: dir.path().join(format!("node-{}", i + 1)),
                    nats,
                    process: None,
                    endpoint: None,
                })
                .collect(),
            dir: Some(dir),
        };
        for i in 0..3 {
            std::fs::create_dir_all(&nodes.slots[i].dir).unwrap();
            nodes.start_node(i).await;
        }
        nodes
    }

    /// Starts node `i` (again) on its data dir, on a new port; returns once it answers a
    /// `Hello` (its shards may not be served yet).
    pub async fn start_node(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        assert!(slot.process.is_none(), "node-{} runs already", i + 1);
        // The process harness starts a new log file: keep the last run's for the counts.
        let log = slot.dir.join(format!("node-{}.log", i + 1));
        if log.exists() {
            let runs = std::fs::read_dir(&slot.dir).unwrap().count();
            std::fs::rename(&log, slot.dir.join(format!("node-{}.run{runs}.log", i + 1))).unwrap();
        }
        let config = node_config(&format!("node-{}", i + 1), &slot.nats);
        let (process, client, _) = NodeProcess::start(
            &slot.dir,
            &format!("node-{}", i + 1),
            &config,
            &[(SECRET_ENV, SECRET)],
            &token("health"),
            vec![],
        )
        .await;
        drop(client);
        let cert = std::fs::read(process.data_dir.join("cert.der")).unwrap();
        slot.endpoint = Some(Endpoint {
            addr: process.addr,
            cert,
        });
        slot.process = Some(process);
    }

    pub fn endpoint(&self, i: usize) -> Endpoint {
        self.slots[i].endpoint.clone().expect("node runs")
    }

    /// The nodes running now (indices).
    pub fn live(&self) -> Vec<usize> {
        (0..3)
            .filter(|&i| self.slots[i].process.is_some())
            .collect()
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.slots[i].process.as_ref().unwrap().id().unwrap()
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        let mut p = self.slots[i].process.take().expect("node runs");
        p.kill();
        self.slots[i].endpoint = None;
    }

    /// SIGTERM: the node drains and exits; panics if it does not exit cleanly.
    pub fn drain(&mut self, i: usize) {
        let mut p = self.slots[i].process.take().expect("node runs");
        let status = p.terminate();
        assert!(
            status.success(),
            "node-{} exited with {status} after SIGTERM:\n{}",
            i + 1,
            p.log_text()
        );
        self.slots[i].endpoint = None;
    }

    pub fn signal(&self, i: usize, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid(i).to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} node-{}", i + 1);
    }

    pub fn log_text(&self, i: usize) -> String {
        self.slots[i]
            .process
            .as_ref()
            .map(NodeProcess::log_text)
            .unwrap_or_default()
    }

    /// How many lines of node `i`'s logs (every run of it so far) contain `needle`.
    pub fn count_in_logs(&self, i: usize, needle: &str) -> usize {
        std::fs::read_dir(&self.slots[i].dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| {
                let text = std::fs::read(e.path()).unwrap_or_default();
                String::from_utf8_lossy(&text)
                    .lines()
                    .filter(|l| l.contains(needle))
                    .count()
            })
            .sum()
    }
}

// ---------------------------------------------------------------------------------------
// Clients

/// One acknowledged send.
#[derive(Debug, Clone)]
pub struct AckRec {
    pub sender: String,
    pub client_msg_id: String,
    pub group: String,
    pub seq: u64,
}

/// One delivered message, as the app saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub seq: u64,
    pub sender: String,
    pub client_msg_id: String,
}

type Received = Arc<Mutex<BTreeMap<String, Vec<Got>>>>;

fn client_config(user: &str, at: &Endpoint, resume: Vec<(String, u64)>) -> ClientConfig {
    let mut c = ClientConfig::new(at.addr, at.cert.clone(), token(user));
    c.request_timeout = Duration::from_secs(5);
    c.connect_timeout = Duration::from_secs(5);
    c.resume = resume;
    c
}

/// Connects `user` to `at`, trying again (a node just started may not answer yet) within
/// [`PATIENCE`].
async fn connect(user: &str, at: &Endpoint, resume: Vec<(String, u64)>) -> (Client, Events) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match Client::connect(client_config(user, at, resume.clone())).await {
            Ok(c) => return c,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{user} cannot connect to {}: {e}",
                at.addr
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

enum Cmd {
    MoveTo(Endpoint, usize, oneshot::Sender<()>),
}

/// A user's app: an SDK client that sends to every group in turn (each send retried with
/// its id until acknowledged) and records every message it is delivered. The harness moves
/// it to another node when its node dies ([`Member::move_to`]): the new client resumes
/// every group after the last seq the app got, as an app with several node addresses
/// would.
pub struct Member {
    pub user: String,
    node: Arc<AtomicU64>,
    client: Arc<Mutex<Client>>,
    received: Received,
    cmd: mpsc::Sender<Cmd>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the senders share: the stop switch and the acks.
#[derive(Clone, Default)]
pub struct Load {
    stop: Arc<AtomicBool>,
    pub acks: Arc<Mutex<Vec<AckRec>>>,
    /// Send attempts that failed and were retried (timeouts, refusals while a shard moved).
    pub retries: Arc<AtomicU64>,
    /// Sends not acknowledged within [`PATIENCE`] (a failure of the run).
    pub stuck: Arc<Mutex<Vec<String>>>,
    /// Each sender's latest failed attempt (for the message of a failing test).
    pub last_error: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Load {
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }

    pub fn acked(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    /// Waits until `n` more sends were acknowledged than now (the load makes progress).
    pub async fn progress(&self, n: usize, what: &str) {
        let target = self.acked() + n;
        let deadline = Instant::now() + PATIENCE;
        while self.acked() < target {
            assert!(
                Instant::now() < deadline,
                "{what}: the load made no progress ({} of {target} acks) within {PATIENCE:?}; \
                 the senders' latest failures: {:#?}",
                self.acked(),
                self.last_error.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sends `client_msg_id` to `group` through whatever client `client` holds, until it is
/// acknowledged; records the ack. Returns false if it was not within [`PATIENCE`].
async fn send_until_acked(
    load: &Load,
    user: &str,
    client: &Mutex<Client>,
    group: &str,
    client_msg_id: &str,
) -> bool {
    let started = Instant::now();
    let body = Bytes::from(format!("{user} {client_msg_id}"));
    loop {
        let c = client.lock().unwrap().clone();
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            c.send_with_id(group, client_msg_id, body.clone()),
        )
        .await;
        if let Ok(Ok(ack)) = sent {
            load.acks.lock().unwrap().push(AckRec {
                sender: user.to_owned(),
                client_msg_id: client_msg_id.to_owned(),
                group: group.to_owned(),
                seq: ack.seq,
            });
            return true;
        }
        load.retries.fetch_add(1, Relaxed);
        let failure = match &sent {
            Ok(Err(e)) => format!("{client_msg_id} to {group}: {e}"),
            _ => format!("{client_msg_id} to {group}: no answer within 10 s"),
        };
        load.last_error
            .lock()
            .unwrap()
            .insert(user.to_owned(), failure);
        if started.elapsed() > PATIENCE {
            load.stuck
                .lock()
                .unwrap()
                .push(format!("{user}/{client_msg_id} to {group}: {sent:?}"));
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Member {
    /// Connects `user` to node `node` at `at`, and starts its sender (a message every
    /// `pace`, until the load stops) and its receiver.
    pub async fn start(
        user: &str,
        node: usize,
        at: &Endpoint,
        load: &Load,
        pace: Duration,
    ) -> Member {
        let groups = groups();
        let resume: Vec<(String, u64)> = groups.iter().map(|g| (g.clone(), 0)).collect();
        let (client, events) = connect(user, at, resume).await;
        let client = Arc::new(Mutex::new(client));
        let received: Received = Arc::new(Mutex::new(
            groups.iter().map(|g| (g.clone(), Vec::new())).collect(),
        ));
        let (cmd, cmd_rx) = mpsc::channel(4);
        let receiver = tokio::spawn(receive(
            user.to_owned(),
            events,
            client.clone(),
            received.clone(),
            cmd_rx,
        ));
        let sender = {
            let (user, client, load) = (user.to_owned(), client.clone(), load.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !load.stop.load(Relaxed) {
                    n += 1;
                    let group = &groups[(n as usize) % groups.len()];
                    if !send_until_acked(&load, &user, &client, group, &format!("{user}-{n}")).await
                    {
                        return;
                    }
                    tokio::time::sleep(pace).await;
                }
            })
        };
        Member {
            user: user.to_owned(),
            node: Arc::new(AtomicU64::new(node as u64)),
            client,
            received,
            cmd,
            tasks: vec![sender, receiver],
        }
    }

    /// The node this member is connected to.
    pub fn node(&self) -> usize {
        self.node.load(Relaxed) as usize
    }

    /// Closes the client and connects a new one to `at` (node `node`), resuming every group
    /// after the last message the app got. Returns once the new client is connected.
    pub async fn move_to(&self, node: usize, at: &Endpoint) {
        let (done, wait) = oneshot::channel();
        self.cmd
            .send(Cmd::MoveTo(at.clone(), node, done))
            .await
            .expect("the receiver runs");
        tokio::time::timeout(PATIENCE, wait)
            .await
            .expect("move within PATIENCE")
            .expect("the receiver moved");
        self.node.store(node as u64, Relaxed);
    }

    /// The newest seq the app got of `group`.
    pub fn last_seq(&self, group: &str) -> u64 {
        self.received.lock().unwrap()[group]
            .last()
            .map_or(0, |g| g.seq)
    }

    pub fn received(&self) -> BTreeMap<String, Vec<Got>> {
        self.received.lock().unwrap().clone()
    }

    /// Stops the sender after its current send (acked or given up).
    pub async fn stop_sending(&mut self) {
        let sender = self.tasks.remove(0);
        tokio::time::timeout(PATIENCE + Duration::from_secs(15), sender)
            .await
            .expect("the sender stops")
            .expect("the sender ran");
    }

    pub async fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
        let c = self.client.lock().unwrap().clone();
        c.close().await;
    }
}

/// The member's receiving side: records every delivered message; on a move, closes the
/// client and connects the new one resuming after what it recorded.
async fn receive(
    user: String,
    mut events: Events,
    client: Arc<Mutex<Client>>,
    received: Received,
    mut cmd: mpsc::Receiver<Cmd>,
) {
    let mut ended = false;
    loop {
        tokio::select! {
            ev = events.next(), if !ended => match ev {
                Some(Event::Message(m)) => {
                    received.lock().unwrap().entry(m.group.clone()).or_default().push(Got {
                        seq: m.seq,
                        sender: m.sender,
                        client_msg_id: m.client_msg_id,
                    });
                }
                Some(_) => {}
                None => ended = true,
            },
            c = cmd.recv() => match c {
                Some(Cmd::MoveTo(at, _node, done)) => {
                    let old = client.lock().unwrap().clone();
                    old.close().await;
                    let resume: Vec<(String, u64)> = received
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(g, got)| (g.clone(), got.last().map_or(0, |m| m.seq)))
                        .collect();
                    let (new, new_events) = connect(&user, &at, resume).await;
                    *client.lock().unwrap() = new;
                    events = new_events;
                    ended = false;
                    let _ = done.send(());
                }
                None => return,
            },
        }
    }
}

/// Measures failover: sends `probe-<k>` messages to `group` through a `probe` client on a
/// node that stays up, each retried until acked, and returns how long after `since` the
/// first was acknowledged (the ack is recorded in `load` like any other).
pub async fn failover_time(
    load: &Load,
    at: &Endpoint,
    group: &str,
    since: Instant,
    k: &AtomicU64,
) -> Duration {
    let resume: Vec<(String, u64)> = groups().iter().map(|g| (g.clone(), 0)).collect();
    let (client, mut events) = connect("probe", at, resume).await;
    // The probe reads nothing; drain its events so its buffer never stops the connection.
    let drain = tokio::spawn(async move { while events.next().await.is_some() {} });
    let k = k.fetch_add(1, Relaxed) + 1;
    let client = Mutex::new(client);
    let ok = send_until_acked(load, "probe", &client, group, &format!("probe-{k}")).await;
    let took = since.elapsed();
    assert!(ok, "the probe's send to {group} was never acknowledged");
    let c = client.lock().unwrap().clone();
    c.close().await;
    drain.abort();
    took
}

// ---------------------------------------------------------------------------------------
// The checker

/// What a run did, for docs/reliability.md.
#[derive(Debug, Default)]
pub struct Figures {
    pub acked: usize,
    pub stored: u64,
    pub delivered: u64,
    pub retries: u64,
    /// Receivers that had to reconnect at the end to reach the head (a missed commit
    /// notice of a group's newest message: head announcements are not built).
    pub resumed_at_end: usize,
}

/// A reader of the cluster's log that holds no shard (it never appends).
pub fn log_reader(nats_urls: &str) -> JetStreamLog {
    JetStreamLog::connect(JetStreamLogConfig::new(nats_urls, PREFIX).replicas(3))
        .expect("connect a log reader")
}

/// Every message of `group` in the log, read back from JetStream by a fresh reader.
pub fn read_group(log: &JetStreamLog, group: &str) -> Vec<Got> {
    let t = TenantId::new(TENANT).unwrap();
    let g = GroupId::new(group).unwrap();
    let mut out: Vec<Got> = Vec::new();
    loop {
        let after = out.last().map_or(0, |m| m.seq);
        let page = log.read_after(&t, &g, after, 500).expect("read the log");
        if page.is_empty() {
            break;
        }
        out.extend(page.into_iter().map(|m| Got {
            seq: m.seq,
            sender: m.sender.as_str().to_owned(),
            client_msg_id: m.client_msg_id,
        }));
    }
    let head = log.head(&t, &g).expect("the group's head");
    assert_eq!(
        out.len() as u64,
        head,
        "{group}: read {} messages, the head is {head}",
        out.len()
    );
    out
}

/// Stops the load, waits until every member got every group up to its head (reconnecting,
/// once, a member stuck short of it), then proves the run's claims (see the module docs);
/// panics naming the first violation. Closes the members.
pub async fn finish_and_check(
    load: &Load,
    mut members: Vec<Member>,
    nodes: &Nodes,
    nats_urls: &str,
) -> Figures {
    load.stop();
    for m in &mut members {
        m.stop_sending().await;
    }
    let stuck = load.stuck.lock().unwrap().clone();
    assert!(stuck.is_empty(), "sends never acknowledged: {stuck:?}");

    let urls = nats_urls.to_owned();
    let log: Vec<(String, Vec<Got>)> = tokio::task::spawn_blocking(move || {
        let reader = log_reader(&urls);
        groups()
            .into_iter()
            .map(|g| {
                let got = read_group(&reader, &g);
                (g, got)
            })
            .collect()
    })
    .await
    .unwrap();
    let log: BTreeMap<String, Vec<Got>> = log.into_iter().collect();
    let mut figures = Figures {
        acked: load.acked(),
        retries: load.retries.load(Relaxed),
        ..Figures::default()
    };

    // Each group's seqs run 1..head; each (sender, id) is stored once.
    let mut stored_at: HashMap<(String, String), (String, u64)> = HashMap::new();
    for (group, msgs) in &log {
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(
                m.seq,
                i as u64 + 1,
                "{group}: seq {} at position {}",
                m.seq,
                i + 1
            );
            let key = (m.sender.clone(), m.client_msg_id.clone());
            if let Some(first) = stored_at.insert(key.clone(), (group.clone(), m.seq)) {
                panic!("{key:?} stored twice: {first:?} and ({group}, {})", m.seq);
            }
        }
        figures.stored += msgs.len() as u64;
    }
    // Every ack is in the log, at its seq.
    let acks = load.acks.lock().unwrap().clone();
    let mut acked_keys = std::collections::HashSet::new();
    for a in &acks {
        let key = (a.sender.clone(), a.client_msg_id.clone());
        assert!(acked_keys.insert(key.clone()), "{key:?} acked twice");
        match stored_at.get(&key) {
            Some((g, seq)) => assert_eq!(
                (g, *seq),
                (&a.group, a.seq),
                "{key:?}: acked as {}#{}, stored as {g}#{seq}",
                a.group,
                a.seq
            ),
            None => panic!(
                "acked {key:?} ({}#{}) is not in the log: lost",
                a.group, a.seq
            ),
        }
    }
    // Every sender finished each send, so every stored message was acked.
    for key in stored_at.keys() {
        assert!(acked_keys.contains(key), "{key:?} stored but never acked");
    }

    // Receivers: up to the head, then gapless, in order, no repeats, same message per seq.
    for m in &members {
        if !caught_up(m, &log, Duration::from_secs(30)).await {
            figures.resumed_at_end += 1;
            let node = m.node();
            m.move_to(node, &nodes.endpoint(node)).await;
            assert!(
                caught_up(m, &log, PATIENCE).await,
                "{} (on node-{}) did not reach every head even after resuming: {:?} of {:?}",
                m.user,
                node + 1,
                groups().iter().map(|g| m.last_seq(g)).collect::<Vec<_>>(),
                log.values().map(Vec::len).collect::<Vec<_>>()
            );
        }
        for (group, got) in m.received() {
            let want = &log[&group];
            assert_eq!(
                got.len(),
                want.len(),
                "{} got {} messages of {group}, the log has {}",
                m.user,
                got.len(),
                want.len()
            );
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert_eq!(
                    g,
                    w,
                    "{}: {group} delivery {} differs from the log",
                    m.user,
                    i + 1
                );
            }
            figures.delivered += got.len() as u64;
        }
    }
    for m in members {
        m.close().await;
    }
    figures
}

/// Whether `m` reaches every group's head within `within`.
async fn caught_up(m: &Member, log: &BTreeMap<String, Vec<Got>>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if log
            .iter()
            .all(|(g, msgs)| m.last_seq(g) >= msgs.len() as u64)
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// p50 and p99 (nearest rank) of `times`.
pub fn percentiles(times: &[Duration]) -> (Duration, Duration) {
    let mut t = times.to_vec();
    t.sort();
    let at = |p: f64| t[((p * t.len() as f64).ceil() as usize).clamp(1, t.len()) - 1];
    (at(0.50), at(0.99))
}
