//! Time to open a segment log: from sealed segments' summaries against reading every
//! segment, on the same data in one run.
//!
//! `cargo run --release -p switchboard-store --example open_time -- [MESSAGES] [BODY_BYTES]`
//!
//! Writes `MESSAGES` messages round-robin over 1,000 groups into 4 MiB segments (flushing
//! every 256), closes the log, then opens it three times per round: with the summaries the
//! seals wrote, with every summary deleted (each segment read; this open writes them again),
//! and with them again; then the cost of the first dedupe check of every group after an open
//! from summaries (each builds its window from its newest records). Files are in a temporary
//! directory under `$TMPDIR` (default `/tmp`) and were just written: the page cache holds
//! them, so this is the CPU and syscall cost of an open, not the disk's read time.

use std::time::Instant;

use switchboard_core::{GroupId, Lane, TenantId, UserId};
use switchboard_store::{NewMessage, SegmentLog, SegmentLogConfig};

const GROUPS: usize = 1000;

fn config(dir: &std::path::Path) -> SegmentLogConfig {
    SegmentLogConfig::new(dir.join("log"))
        .segment_bytes(4 << 20)
        .max_record_bytes(1 << 20)
}

fn open_ms(dir: &std::path::Path) -> (SegmentLog, f64) {
    let t = Instant::now();
    let log = SegmentLog::open(config(dir)).expect("open");
    (log, t.elapsed().as_secs_f64() * 1e3)
}

fn summaries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join("log").join("shard-000"))
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let messages: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let body_bytes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let body = vec![b'x'; body_bytes];
    let dir = tempfile::tempdir().expect("temp dir");
    let tenant = TenantId::new("bench").expect("id");
    let groups: Vec<GroupId> = (0..GROUPS)
        .map(|i| GroupId::new(&format!("g{i}")).expect("id"))
        .collect();
    let sender = UserId::new("alice").expect("id");
    {
        let log = SegmentLog::open(config(dir.path())).expect("open");
        for i in 0..messages {
            let id = format!("m{i}");
            let msg = NewMessage {
                sender: &sender,
                lane: Lane::Normal,
                client_msg_id: &id,
                sent_at_ms: i as u64,
                body: &body,
            };
            log.append(&tenant, &groups[i % GROUPS], msg)
                .expect("append");
            if (i + 1) % 256 == 0 {
                log.flush().expect("flush");
            }
        }
        log.flush().expect("flush");
        let (bytes, segments) = log.disk_usage();
        println!(
            "{messages} messages of {body_bytes} B over {GROUPS} groups: {segments} segments, \
             {:.1} MiB",
            bytes as f64 / (1 << 20) as f64
        );
    }
    println!("| round | open with summaries (ms) | open reading every segment (ms) | again with summaries (ms) | first dedupe check of every group (ms) |");
    println!("|---|---|---|---|---|");
    for round in 1..=3 {
        let (log, with) = open_ms(dir.path());
        drop(log);
        for p in summaries(dir.path()) {
            std::fs::remove_file(p).expect("delete summary");
        }
        let (log, without) = open_ms(dir.path());
        drop(log);
        let (log, again) = open_ms(dir.path());
        let t = Instant::now();
        for g in &groups {
            let found = log.find_sent(&tenant, g, &sender, "m0").expect("find_sent");
            assert!(found.is_none() || g.as_str() == "g0");
        }
        let dedupe = t.elapsed().as_secs_f64() * 1e3;
        drop(log);
        println!("| {round} | {with:.1} | {without:.1} | {again:.1} | {dedupe:.1} |");
    }
}
