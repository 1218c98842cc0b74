//! Appends per second and CPU per append: the JetStream group log against the segment log,
//! in one run on one machine.
//!
//! `SWITCHBOARD_NATS_SERVER=… cargo run --release -p switchboard-cluster --example append_cost -- [MESSAGES] [BODY_BYTES]`
//!
//! Every store appends `MESSAGES` messages over 16 groups, and an append counts once it is
//! durable in that store's sense: the segment log after a flush (`fdatasync`), per append
//! and per batch of 64 (the node's group commit); JetStream after its acknowledgement
//! (replicas 1, one local server), with the server's default `sync_interval` (2 min) and with
//! `sync_interval: always` (an fsync per write), from one thread and from 16 threads (one
//! group each, as the node's per-group locks allow). JetStream's 16 groups are in 16
//! different shards, and once more all in one shard: a writer has one append in flight per
//! shard (the shard-wide fence's chain), so that row shows what the fence costs a hot
//! shard. One thread appends to one shard's 16 groups once more one at a time, and then in
//! commit batches of 64 ([`JetStreamLog::append_batch`]: one atomic batch and one
//! acknowledgement per 64), and in batches of 64 over 16 shards (runs of 4 per shard, below
//! `min_batch_messages`: single appends, the shards in parallel). CPU is this process's plus the nats-server's (from `/proc`, in clock ticks of
//! 10 ms), per append.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_cluster::{BatchItem, JetStreamLog, JetStreamLogConfig};
use switchboard_core::{GroupId, Lane, TenantId, UserId};
use switchboard_store::{
    LogBackend, MessageLog, NewMessage, NodeStore, SegmentLogConfig, SledStore, Store,
};

const GROUPS: usize = 16;

/// CPU seconds (user + system) of a process, from `/proc/<pid>/stat`.
fn cpu_s(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of the file (utime, stime); `rest` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(sync_always: bool) -> Self {
        let binary = std::env::var("SWITCHBOARD_NATS_SERVER")
            .expect("set SWITCHBOARD_NATS_SERVER to a nats-server (cargo xtask test installs one)");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port")
            .port();
        let sync = if sync_always {
            "sync_interval: always"
        } else {
            ""
        };
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} \n {sync} }}\n",
                dir.path().join("js")
            ),
        )
        .expect("write the config");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    fn cpu_s(&self) -> f64 {
        cpu_s(&self.child.id().to_string())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ids() -> (TenantId, Vec<GroupId>, UserId) {
    let groups = (0..GROUPS)
        .map(|i| GroupId::new(&format!("g{i}")).expect("id"))
        .collect();
    (
        TenantId::new("bench").expect("id"),
        groups,
        UserId::new("alice").expect("id"),
    )
}

/// `GROUPS` groups, each in a shard of its own, or all in the shard of `g0`.
fn js_groups(tenant: &TenantId, one_shard: bool) -> Vec<GroupId> {
    use switchboard_cluster::names::shard_of;
    let first = shard_of(tenant, &GroupId::new("g0").expect("id"));
    let mut shards = std::collections::HashSet::new();
    (0..)
        .map(|i| GroupId::new(&format!("g{i}")).expect("id"))
        .filter(|g| {
            let shard = shard_of(tenant, g);
            if one_shard {
                shard == first
            } else {
                shards.insert(shard)
            }
        })
        .take(GROUPS)
        .collect()
}

fn msg<'a>(sender: &'a UserId, id: &'a str, body: &'a [u8]) -> NewMessage<'a> {
    NewMessage {
        sender,
        lane: Lane::Normal,
        client_msg_id: id,
        sent_at_ms: 1,
        body,
    }
}

/// (appends/s, CPU µs per append) for the segment log, flushing every `batch`.
fn segment(messages: usize, batch: usize, body: &[u8], dir: &Path) -> (f64, f64) {
    let sled = SledStore::open(&dir.join("store")).expect("sled");
    let config = SegmentLogConfig::new(dir.join("messages"));
    let store = NodeStore::open(sled, MessageLog::Segment(config), None).expect("open");
    let (tenant, groups, sender) = ids();
    let (cpu, wall) = (cpu_s("self"), Instant::now());
    for i in 0..messages {
        let id = format!("m{i}");
        store
            .append(&tenant, &groups[i % GROUPS], msg(&sender, &id, body))
            .expect("append");
        if (i + 1) % batch == 0 {
            store.flush().expect("flush");
        }
    }
    store.flush().expect("flush");
    let wall = wall.elapsed().as_secs_f64();
    (
        messages as f64 / wall,
        (cpu_s("self") - cpu) * 1e6 / messages as f64,
    )
}

/// (appends/s, CPU µs per append of this process, of the server) for JetStream from
/// `threads` threads, each append on its own (`batch` 1) or in `append_batch` calls of
/// `batch` (one thread).
fn jetstream(
    server: &Server,
    messages: usize,
    threads: usize,
    one_shard: bool,
    batch: usize,
    body: &[u8],
) -> (f64, f64, f64) {
    let prefix = format!(
        "bench{threads}{}b{batch}",
        if one_shard { "one" } else { "" }
    );
    let log = JetStreamLog::connect(JetStreamLogConfig::new(&server.url, prefix).replicas(1))
        .expect("connect");
    let (tenant, _, sender) = ids();
    let groups = js_groups(&tenant, one_shard);
    // The only writer takes the groups' shards (creating their streams); not measured.
    let shards: std::collections::BTreeSet<u16> = groups
        .iter()
        .map(|g| switchboard_cluster::names::shard_of(&tenant, g))
        .collect();
    log.take_shards(shards, "bench", 1)
        .expect("take the shards");
    for g in &groups {
        LogBackend::head(&log, &tenant, g).expect("head");
        log.append_message(&tenant, g, msg(&sender, "warm", body))
            .expect("warm-up append");
    }
    let (cpu, server_cpu, wall) = (cpu_s("self"), server.cpu_s(), Instant::now());
    if batch > 1 {
        let ids: Vec<String> = (0..messages).map(|i| format!("m{i}")).collect();
        for (c, chunk) in ids.chunks(batch).enumerate() {
            let items = chunk
                .iter()
                .enumerate()
                .map(|(k, id)| BatchItem {
                    tenant: tenant.clone(),
                    group: groups[(c * batch + k) % GROUPS].clone(),
                    sender: sender.clone(),
                    client_msg_id: id.clone(),
                    lane: Lane::Normal,
                    sent_at_ms: 1,
                    body: Bytes::copy_from_slice(body),
                })
                .collect();
            for outcome in log.append_batch(items).expect("append a batch") {
                outcome.expect("append");
            }
        }
    }
    std::thread::scope(|s| {
        for t in 0..threads {
            let (log, tenant, groups, sender) = (&log, &tenant, &groups, &sender);
            s.spawn(move || {
                if batch > 1 {
                    return;
                }
                for i in (t..messages).step_by(threads) {
                    let id = format!("m{i}");
                    let group = &groups[if threads == 1 { i % GROUPS } else { t % GROUPS }];
                    log.append_message(tenant, group, msg(sender, &id, body))
                        .expect("append");
                }
            });
        }
    });
    let wall = wall.elapsed().as_secs_f64();
    let per = |s: f64| s * 1e6 / messages as f64;
    (
        messages as f64 / wall,
        per(cpu_s("self") - cpu),
        per(server.cpu_s() - server_cpu),
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let body_bytes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let body = vec![b'x'; body_bytes];
    println!("{messages} appends of {body_bytes} B over {GROUPS} groups; durable as each store defines it");
    println!("| store | appends/s | CPU µs/append: all (client + server) |");
    println!("|---|---|---|");
    let dir = tempfile::tempdir().expect("temp dir");
    let (rate, cpu) = segment(messages / 10, 1, &body, &dir.path().join("a"));
    println!("| segment log, fdatasync per append | {rate:.0} | {cpu:.1} |");
    let (rate, cpu) = segment(messages, 64, &body, &dir.path().join("b"));
    println!("| segment log, fdatasync per 64 (group commit) | {rate:.0} | {cpu:.1} |");
    for sync_always in [false, true] {
        let server = Server::start(sync_always);
        let sync = if sync_always {
            "always"
        } else {
            "default 2 min"
        };
        for (threads, one_shard, batch) in [
            (1, false, 1),
            (16, false, 1),
            (16, true, 1),
            (1, true, 1),
            (1, true, 64),
            (1, false, 64),
        ] {
            if sync_always && one_shard && threads > 1 {
                continue;
            }
            let n = if sync_always { messages / 4 } else { messages };
            let (rate, client, server) = jetstream(&server, n, threads, one_shard, batch, &body);
            let groups = if one_shard {
                "groups in one shard"
            } else {
                "groups in 16 shards"
            };
            let how = if batch > 1 {
                format!(", batches of {batch}")
            } else {
                String::new()
            };
            println!(
                "| JetStream R1, sync_interval {sync}, {threads} thread(s){how}, {groups} | {rate:.0} | {:.1} ({client:.1} + {server:.1}) |",
                client + server
            );
        }
    }
}
