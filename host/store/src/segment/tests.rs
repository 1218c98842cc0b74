//! The segment log on real files: recovery from torn and damaged records, segment rolling,
//! shards, retention, and the durability contract of `flush`.

use std::path::Path;

use switchboard_core::Lane;

use super::*;
use crate::test_ids::{g, t, u};

fn config(dir: &Path) -> SegmentLogConfig {
    SegmentLogConfig::new(dir.join("log"))
}

/// Appends one message of `ann` to `group` (tenant `acme`); also the summary tests'.
pub(super) fn append(
    log: &SegmentLog,
    group: &str,
    id: &str,
    sent_at_ms: u64,
    body: &[u8],
) -> Appended {
    log.append(
        &t("acme"),
        &g(group),
        NewMessage {
            sender: &u("ann"),
            lane: Lane::Normal,
            client_msg_id: id,
            sent_at_ms,
            body,
        },
    )
    .unwrap()
}

fn seqs(log: &SegmentLog, group: &str) -> Vec<u64> {
    log.read_after(&t("acme"), &g(group), 0, 10_000)
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect()
}

fn only_segment(dir: &Path) -> PathBuf {
    let shard = dir.join("log").join("shard-000");
    let mut segs: Vec<_> = std::fs::read_dir(shard)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs.remove(0)
}

/// Writes three flushed messages, then returns the segment's bytes and where the last
/// record starts.
fn three_records(dir: &Path) -> (Vec<u8>, usize) {
    let log = SegmentLog::open(config(dir)).unwrap();
    append(&log, "a", "1", 1, b"first");
    append(&log, "a", "2", 2, b"second");
    let before_last = log.disk_usage().0 as usize;
    append(&log, "a", "3", 3, b"the third body");
    log.flush().unwrap();
    drop(log);
    (std::fs::read(only_segment(dir)).unwrap(), before_last)
}

#[test]
fn a_record_cut_at_any_byte_is_dropped_and_nothing_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, last) = three_records(dir.path());
    let path = only_segment(dir.path());
    for cut in last..bytes.len() {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let log = SegmentLog::open(config(dir.path())).unwrap();
        assert_eq!(seqs(&log, "a"), vec![1, 2], "cut at {cut}");
        assert_eq!(log.head(&t("acme"), &g("a")), 2);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            last as u64,
            "truncated"
        );
        // The next append takes the dropped record's seq, and survives its own reopen.
        assert_eq!(
            append(&log, "a", "3", 3, b"again"),
            Appended::New { seq: 3 }
        );
        log.flush().unwrap();
        drop(log);
        let log = SegmentLog::open(config(dir.path())).unwrap();
        assert_eq!(seqs(&log, "a"), vec![1, 2, 3]);
    }
}

#[test]
fn a_flipped_bit_in_the_header_or_body_ends_the_log_there() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, last) = three_records(dir.path());
    let path = only_segment(dir.path());
    // Every bit of the last record (prefix, header, body), and one in the middle record.
    let positions = (last * 8..bytes.len() * 8).chain([(last - 3) * 8 + 1]);
    for bit in positions {
        let mut damaged = bytes.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(&path, &damaged).unwrap();
        let log = SegmentLog::open(config(dir.path())).unwrap();
        let expected: Vec<u64> = if bit / 8 >= last { vec![1, 2] } else { vec![1] };
        assert_eq!(seqs(&log, "a"), expected, "bit {bit}");
        assert_eq!(log.head(&t("acme"), &g("a")), expected.len() as u64);
    }
}

#[test]
fn unflushed_appends_are_readable_and_flush_writes_them_in_one_go() {
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(config(dir.path())).unwrap();
    append(&log, "a", "1", 1, b"one");
    append(&log, "b", "1", 1, b"one");
    append(&log, "a", "2", 1, b"two");
    let path = only_segment(dir.path());
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "buffered until flush"
    );
    assert_eq!(seqs(&log, "a"), vec![1, 2]);
    assert_eq!(
        log.message(&t("acme"), &g("b"), 1).unwrap().unwrap().body,
        &b"one"[..]
    );
    log.flush().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 0);
    // A flush with nothing new writes nothing.
    log.flush().unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    // Reads now come from the file, and from the buffer for what follows.
    append(&log, "a", "3", 1, b"three");
    assert_eq!(seqs(&log, "a"), vec![1, 2, 3]);
}

#[test]
fn segments_roll_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path())
        .segment_bytes(1024)
        .max_record_bytes(512)
        .index_interval(2);
    let log = SegmentLog::open(cfg.clone()).unwrap();
    for i in 0..100 {
        append(
            &log,
            if i % 3 == 0 { "a" } else { "b" },
            &i.to_string(),
            i,
            &[1; 100],
        );
        if i % 7 == 0 {
            log.flush().unwrap();
        }
    }
    log.flush().unwrap();
    let (bytes, files) = log.disk_usage();
    assert!(files > 10, "{files} segments");
    assert!(bytes <= files as u64 * 1024);
    assert_eq!(seqs(&log, "a"), (1..=34).collect::<Vec<_>>());
    assert_eq!(seqs(&log, "b"), (1..=66).collect::<Vec<_>>());
    for after in 0..66 {
        let got = log.read_after(&t("acme"), &g("b"), after, 3).unwrap();
        let got: Vec<u64> = got.iter().map(|m| m.seq).collect();
        assert_eq!(got, (after + 1..=66).take(3).collect::<Vec<_>>());
    }
    drop(log);
    let log = SegmentLog::open(cfg).unwrap();
    assert_eq!(seqs(&log, "b"), (1..=66).collect::<Vec<_>>());
    assert_eq!(log.disk_usage().1, files);
}

#[test]
fn a_record_over_the_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(config(dir.path()).max_record_bytes(1000)).unwrap();
    let err = log
        .append(
            &t("acme"),
            &g("a"),
            NewMessage {
                sender: &u("ann"),
                lane: Lane::Normal,
                client_msg_id: "1",
                sent_at_ms: 0,
                body: &[0; 1000],
            },
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "{err}");
    assert_eq!(log.head(&t("acme"), &g("a")), 0);
}

#[test]
fn the_shard_count_cannot_change() {
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(config(dir.path()).shards(2)).unwrap();
    drop(log);
    let err = SegmentLog::open(config(dir.path()).shards(3)).unwrap_err();
    assert!(err.to_string().contains("shard count"), "{err}");
}

#[test]
fn the_dedupe_window_forgets_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path()).dedupe_window(3);
    let log = SegmentLog::open(cfg.clone()).unwrap();
    for i in 1..=5 {
        append(&log, "a", &i.to_string(), 0, b"");
    }
    let find =
        |log: &SegmentLog, id: &str| log.find_sent(&t("acme"), &g("a"), &u("ann"), id).unwrap();
    assert_eq!(find(&log, "2"), None);
    assert_eq!(find(&log, "3"), Some(3));
    log.flush().unwrap();
    drop(log);
    // Rebuilt from the tail on open: the same window.
    let log = SegmentLog::open(cfg).unwrap();
    assert_eq!(find(&log, "2"), None);
    assert_eq!(find(&log, "5"), Some(5));
    assert_eq!(
        append(&log, "a", "4", 0, b""),
        Appended::Duplicate { seq: 4 }
    );
}

fn retention_config(dir: &Path, limits: RetentionLimits) -> SegmentLogConfig {
    config(dir)
        .segment_bytes(1024)
        .max_record_bytes(512)
        .retention(Retention {
            default: limits,
            ..Retention::default()
        })
}

#[test]
fn retention_by_count_deletes_whole_old_segments_and_reads_start_at_the_first_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = retention_config(
        dir.path(),
        RetentionLimits {
            max_messages: Some(20),
            ..Default::default()
        },
    );
    let log = SegmentLog::open(cfg.clone()).unwrap();
    for i in 1..=100u64 {
        append(&log, "a", &i.to_string(), i, &[0; 100]);
    }
    log.flush().unwrap();
    let report = log.enforce_retention(1000).unwrap();
    assert!(report.segments_deleted > 0);
    let first = log.first_seq(&t("acme"), &g("a"));
    // Whole segments go, and never one holding any of the newest 20.
    assert!(first > 1 && first <= 81, "first kept {first}");
    assert_eq!(seqs(&log, "a"), (first..=100).collect::<Vec<_>>());
    // A cursor inside the trimmed range resumes at the first kept message.
    let resumed = log.read_after(&t("acme"), &g("a"), 3, 5).unwrap();
    assert_eq!(resumed[0].seq, first);
    assert_eq!(log.message(&t("acme"), &g("a"), 1).unwrap(), None);
    assert_eq!(log.head(&t("acme"), &g("a")), 100);
    drop(log);
    let log = SegmentLog::open(cfg).unwrap();
    assert_eq!(log.first_seq(&t("acme"), &g("a")), first);
    assert_eq!(
        append(&log, "a", "101", 101, b""),
        Appended::New { seq: 101 }
    );
}

#[test]
fn retention_by_age_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = retention_config(
        dir.path(),
        RetentionLimits {
            max_age_ms: Some(1_000),
            ..Default::default()
        },
    );
    let log = SegmentLog::open(cfg).unwrap();
    for i in 1..=60u64 {
        append(&log, "a", &i.to_string(), i * 100, &[0; 100]);
    }
    log.flush().unwrap();
    // At 3,000 ms every message sent before 2,000 ms is past its age.
    log.enforce_retention(3_000).unwrap();
    let first = log.first_seq(&t("acme"), &g("a"));
    assert!(first > 1 && first <= 20, "first kept {first}");
    drop(log);

    let dir = tempfile::tempdir().unwrap();
    let cfg = retention_config(
        dir.path(),
        RetentionLimits {
            max_bytes: Some(2_000),
            ..Default::default()
        },
    );
    let log = SegmentLog::open(cfg).unwrap();
    for i in 1..=60u64 {
        append(&log, "a", &i.to_string(), i, &[0; 100]);
    }
    log.flush().unwrap();
    log.enforce_retention(0).unwrap();
    let kept = seqs(&log, "a");
    // At least 2,000 bytes kept (about 15 records), less than a segment more than that.
    assert!(kept.len() >= 15 && kept.len() < 30, "{} kept", kept.len());
}

#[test]
fn a_group_without_limits_keeps_older_segments_of_others_and_trimmed_heads_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mut retention = Retention::default();
    retention.tenants.insert(
        t("acme"),
        RetentionLimits {
            max_messages: Some(1),
            ..Default::default()
        },
    );
    retention.groups.insert(
        (t("acme"), g("keep")),
        RetentionLimits {
            max_messages: Some(u64::MAX),
            ..Default::default()
        },
    );
    let cfg = config(dir.path())
        .segment_bytes(1024)
        .max_record_bytes(512)
        .retention(retention);
    let log = SegmentLog::open(cfg.clone()).unwrap();
    append(&log, "keep", "k", 0, &[0; 100]);
    for i in 1..=40u64 {
        append(&log, "a", &i.to_string(), i, &[0; 100]);
    }
    log.flush().unwrap();
    // "keep"'s record pins the oldest segment, and with it everything after.
    assert_eq!(log.enforce_retention(0).unwrap().segments_deleted, 0);
    assert_eq!(log.first_seq(&t("acme"), &g("a")), 1);
    drop(log);

    let dir = tempfile::tempdir().unwrap();
    let cfg = retention_config(
        dir.path(),
        RetentionLimits {
            max_age_ms: Some(1_000),
            ..Default::default()
        },
    );
    let log = SegmentLog::open(cfg.clone()).unwrap();
    for i in 1..=30u64 {
        append(&log, "gone", &i.to_string(), i, &[0; 100]);
    }
    // Another group fills the next segments (its first messages as old as "gone"'s, as they
    // may share a segment with its last), so every segment of "gone" is sealed and expired.
    for i in 1..=30u64 {
        let sent = if i <= 10 { i } else { 9_500 };
        append(&log, "b", &i.to_string(), sent, &[0; 100]);
    }
    log.flush().unwrap();
    log.enforce_retention(10_000).unwrap();
    assert!(seqs(&log, "gone").is_empty());
    assert_eq!(seqs(&log, "b").last(), Some(&30));
    assert_eq!(log.first_seq(&t("acme"), &g("gone")), 31);
    drop(log);
    let log = SegmentLog::open(cfg).unwrap();
    assert_eq!(log.head(&t("acme"), &g("gone")), 30);
    assert_eq!(
        append(&log, "gone", "31", 0, b""),
        Appended::New { seq: 31 }
    );
}

#[test]
fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(config(dir.path())).unwrap();
    append(&log, "a", "1", 0, b"x");
    log.flush().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("log")), 0o700);
    assert_eq!(mode(&dir.path().join("log/shard-000")), 0o700);
    assert_eq!(mode(&only_segment(dir.path())), 0o600);
    assert_eq!(mode(&dir.path().join("log/FORMAT")), 0o600);
}

const CHILD_ENV: &str = "SWITCHBOARD_SEGMENT_KILL_CHILD";

/// A child process, killed when dropped (so a failing test leaves none behind).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
const KILL_TEST: &str = "segment::tests::a_kill_between_write_and_fsync_loses_nothing_acked";

/// The child's part: appends and flushes a batch ("acked"), appends another and writes it
/// without syncing ("written"), then waits to be killed.
fn kill_child(dir: &Path) -> ! {
    use std::io::Write;
    let log = SegmentLog::open(config(dir).segment_bytes(4096).max_record_bytes(1024)).unwrap();
    let head = log.head(&t("acme"), &g("a"));
    for i in head + 1..=head + 50 {
        append(&log, "a", &i.to_string(), i, format!("body {i}").as_bytes());
    }
    log.flush().unwrap();
    let mut out = std::io::stdout();
    writeln!(out, "\n@@acked={}@@", head + 50).unwrap();
    for i in head + 51..=head + 80 {
        append(&log, "a", &i.to_string(), i, format!("body {i}").as_bytes());
    }
    log.write_unsynced().unwrap();
    writeln!(out, "\n@@written@@").unwrap();
    out.flush().unwrap();
    loop {
        std::thread::park();
    }
}

/// A child process appends, flushes (its messages are acked from here), appends more and
/// writes them, and is killed with SIGKILL before the fdatasync; five times over one log.
/// Every acked message is there after each kill, the log has no gap, and a reopen sees the
/// written-but-unsynced records only whole (the page cache outlives the process).
#[test]
fn a_kill_between_write_and_fsync_loses_nothing_acked() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        kill_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acked = 0;
    for round in 0..5 {
        let mut child = Child(
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", KILL_TEST, "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, dir.path())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stdout = child.0.stdout.take().unwrap();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("@@acked=") {
                acked = n.trim_end_matches('@').parse().unwrap();
            } else if line == "@@written@@" {
                break;
            }
        }
        child.0.kill().unwrap();
        let status = child.0.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "round {round}: killed");
        let log = SegmentLog::open(
            config(dir.path())
                .segment_bytes(4096)
                .max_record_bytes(1024),
        )
        .unwrap();
        let head = log.head(&t("acme"), &g("a"));
        assert!(
            head >= acked,
            "round {round}: head {head} below acked {acked}"
        );
        let all = log.read_after(&t("acme"), &g("a"), 0, 100_000).unwrap();
        assert_eq!(all.len() as u64, head, "round {round}: no gap");
        for (i, m) in all.iter().enumerate() {
            let seq = i as u64 + 1;
            assert_eq!(m.seq, seq);
            assert_eq!(m.client_msg_id, seq.to_string());
            assert_eq!(m.body, format!("body {seq}").into_bytes());
        }
    }
    assert_eq!(
        acked,
        50 + 4 * 80,
        "every round started from the last one's head"
    );
}

/// A second open of a log that is open is refused as in use, once the LOCK wait is over
/// (no earlier: a lock briefly shared with a forked child is waited out); after the first
/// closes, the log opens.
#[test]
fn a_log_that_is_open_is_refused_as_in_use_until_it_closes() {
    let dir = tempfile::tempdir().unwrap();
    let first = SegmentLog::open(config(dir.path())).unwrap();
    let asked = std::time::Instant::now();
    let second = SegmentLog::open(config(dir.path()));
    assert!(
        asked.elapsed() >= files::LOCK_WAIT,
        "refused before the wait"
    );
    match second {
        Err(StoreError::Io(e)) => assert!(e.contains("in use"), "{e}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("two opens of one log"),
    }
    drop(first);
    SegmentLog::open(config(dir.path())).unwrap();
}
