//! CPU per durable message: sled against the segment log, in one run.
//!
//! `cargo run --release -p switchboard-store --example store_cpu -- [MESSAGES] [BODY_BYTES]`
//!
//! Each store appends `MESSAGES` messages round-robin over 16 groups and flushes after every
//! `batch` appends (the node's group commit: a flush covers every append before it), for
//! batch sizes 1, 16, 64 and 256. It prints the process's CPU time per message (all threads:
//! sled's IO threads count) and the wall time, both in µs. The stores live in a temporary
//! directory under `$TMPDIR` (default `/tmp`): the disk the node's data would be on.

use std::time::Instant;

use rustix::time::{clock_gettime, ClockId};
use switchboard_core::{GroupId, Lane, TenantId, UserId};
use switchboard_store::{
    GroupMeta, MessageLog, NewMessage, NodeStore, SegmentLogConfig, SledStore, Store,
};

const GROUPS: usize = 16;

fn cpu_ns() -> u128 {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

fn open(kind: &str, dir: &std::path::Path) -> Box<dyn Store> {
    let sled = SledStore::open(&dir.join("store")).expect("open sled");
    match kind {
        "sled" => Box::new(sled),
        _ => Box::new(
            NodeStore::open(
                sled,
                MessageLog::Segment(SegmentLogConfig::new(dir.join("messages"))),
                None,
            )
            .expect("open the segment log"),
        ),
    }
}

/// Appends and flushes; returns (CPU µs, wall µs) per message.
fn run(kind: &str, messages: usize, batch: usize, body: &[u8]) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(kind, dir.path());
    let tenant = TenantId::new("bench").expect("id");
    let groups: Vec<GroupId> = (0..GROUPS)
        .map(|i| GroupId::new(&format!("g{i}")).expect("id"))
        .collect();
    for g in &groups {
        let meta = GroupMeta {
            open: true,
            max_members: 10,
        };
        store.create_group(&tenant, g, meta).expect("group");
    }
    store.flush().expect("flush");
    let sender = UserId::new("alice").expect("id");
    let ids: Vec<String> = (0..messages).map(|i| format!("m{i}")).collect();
    let (cpu, wall) = (cpu_ns(), Instant::now());
    for (i, id) in ids.iter().enumerate() {
        let msg = NewMessage {
            sender: &sender,
            lane: Lane::Normal,
            client_msg_id: id,
            sent_at_ms: i as u64,
            body,
        };
        store
            .append(&tenant, &groups[i % GROUPS], msg)
            .expect("append");
        if (i + 1) % batch == 0 {
            store.flush().expect("flush");
        }
    }
    store.flush().expect("flush");
    let cpu = (cpu_ns() - cpu) as f64 / 1000.0 / messages as f64;
    let wall = wall.elapsed().as_secs_f64() * 1e6 / messages as f64;
    (cpu, wall)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let body_bytes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let body = vec![b'x'; body_bytes];
    println!("{messages} messages of {body_bytes} B over {GROUPS} groups, flush every `batch`");
    println!("| batch | store | CPU µs/msg | wall µs/msg | CPU ratio sled/segment |");
    println!("|---|---|---|---|---|");
    for batch in [1usize, 16, 64, 256] {
        // Fewer messages with a flush each: an fsync per message is slow in wall time.
        let n = if batch == 1 { messages / 20 } else { messages };
        let (sled_cpu, sled_wall) = run("sled", n, batch, &body);
        let (seg_cpu, seg_wall) = run("segment", n, batch, &body);
        println!("| {batch} | sled | {sled_cpu:.2} | {sled_wall:.2} | |");
        println!(
            "| {batch} | segment | {seg_cpu:.2} | {seg_wall:.2} | {:.1}× |",
            sled_cpu / seg_cpu
        );
    }
}
