//! Opening from sealed segments' summaries: the same state as reading every segment, damaged
//! or stale summaries not trusted, orphans deleted, sealed segments not read when their
//! summaries are good, and dedupe windows built lazily that catch the same resends.

use std::collections::BTreeMap;
use std::path::Path;

use super::tests::append;
use super::*;
use crate::test_ids::{g, t, u};

const GROUPS: [&str; 5] = ["a", "b", "c", "d", "e"];

fn config(dir: &Path) -> SegmentLogConfig {
    SegmentLogConfig::new(dir.join("log"))
        .shards(2)
        .segment_bytes(1024)
        .max_record_bytes(512)
        .index_interval(3)
        .dedupe_window(8)
}

/// 300 messages over five groups (uneven shares, bodies of 20 to 139 bytes), flushed now
/// and then: dozens of segments per shard.
fn write_log(dir: &Path) {
    let log = SegmentLog::open(config(dir)).unwrap();
    for i in 0..300u64 {
        let group = GROUPS[[0, 0, 1, 2, 0, 3, 4, 1, 0, 2][(i % 10) as usize]];
        let body = vec![i as u8; 20 + (i as usize * 13) % 120];
        append(&log, group, &format!("m{i}"), i, &body);
        if i % 11 == 0 {
            log.flush().unwrap();
        }
    }
    log.flush().unwrap();
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir.join("log")).unwrap() {
        let shard = shard.unwrap().path();
        if !shard.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&shard).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == ext) {
                out.push(f);
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A group's first seq, head, sparse index (seq, segment, offset), records since its last
/// index entry, and segment and end of its newest record.
type GroupState = (u64, u64, Vec<(u64, u64, u64)>, u32, u64, u64);

/// Everything an open rebuilds, but the dedupe hashes (keyed per process): per group its
/// numbering, sparse index and messages; per segment its summary.
#[derive(Debug, PartialEq)]
struct State {
    groups: BTreeMap<String, GroupState>,
    segments: BTreeMap<(usize, u64), (u64, BTreeMap<String, SegGroup>)>,
    messages: BTreeMap<String, Vec<(u64, String, Vec<u8>)>>,
    /// The seqs in each group's dedupe window once it is whole.
    windows: BTreeMap<String, Vec<u64>>,
}

fn name(key: &GroupKey) -> String {
    format!("{}/{}", key.0.as_str(), key.1.as_str())
}

fn state(log: &SegmentLog) -> State {
    let mut messages = BTreeMap::new();
    for group in GROUPS {
        let all = log.read_after(&t("acme"), &g(group), 0, 100_000).unwrap();
        let all = all
            .into_iter()
            .map(|m| (m.seq, m.client_msg_id, m.body.to_vec()))
            .collect();
        messages.insert(format!("acme/{group}"), all);
        // Builds the window if the open left it to be built.
        log.find_sent(&t("acme"), &g(group), &u("ann"), "none")
            .unwrap();
    }
    let mut groups = BTreeMap::new();
    let mut segments = BTreeMap::new();
    let mut windows = BTreeMap::new();
    for (n, shard) in log.inner.shards.iter().enumerate() {
        let s = shard.lock();
        for (key, gl) in &s.groups {
            let index = gl
                .index
                .iter()
                .map(|e| (e.seq, e.segment, e.offset))
                .collect();
            groups.insert(
                name(key),
                (
                    gl.first,
                    gl.head,
                    index,
                    gl.since_index,
                    gl.last_segment,
                    gl.last_end,
                ),
            );
            assert!(gl.dedupe_ready);
            let window: Vec<u64> = gl.dedupe_order.iter().map(|&(_, seq)| seq).collect();
            assert_eq!(window.len(), gl.dedupe.len(), "{}", name(key));
            windows.insert(name(key), window);
        }
        for (&id, seg) in &s.segments {
            let seg_groups = seg.groups.iter().map(|(k, sg)| (name(k), *sg)).collect();
            segments.insert((n, id), (seg.len, seg_groups));
        }
    }
    State {
        groups,
        segments,
        messages,
        windows,
    }
}

/// Segments the open read, per shard.
fn scanned(log: &SegmentLog) -> Vec<Vec<u64>> {
    log.inner
        .shards
        .iter()
        .map(|s| s.lock().scanned.clone())
        .collect()
}

fn newest_segments(log: &SegmentLog) -> Vec<Vec<u64>> {
    log.inner
        .shards
        .iter()
        .map(|s| vec![s.lock().active])
        .collect()
}

/// The state a full read of every segment gives, on a copy of `dir` without summaries.
fn scanned_state(dir: &Path) -> State {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&dir.join("log"), &copy.path().join("log"));
    for f in files(copy.path(), "idx") {
        std::fs::remove_file(f).unwrap();
    }
    let log = SegmentLog::open(config(copy.path())).unwrap();
    let all: usize = scanned(&log).iter().map(Vec::len).sum();
    assert_eq!(all, log.disk_usage().1, "every segment read");
    state(&log)
}

#[test]
fn opening_from_summaries_gives_what_reading_every_segment_gives() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    let segs = files(dir.path(), "seg").len();
    // Every sealed segment got its summary at the flush after it was sealed.
    assert_eq!(files(dir.path(), "idx").len(), segs - 2, "{segs} segments");
    assert!(segs > 20, "{segs} segments");
    let expected = scanned_state(dir.path());

    let log = SegmentLog::open(config(dir.path())).unwrap();
    assert_eq!(
        scanned(&log),
        newest_segments(&log),
        "only the active segments read"
    );
    let got = state(&log);
    assert_eq!(got, expected);
    assert!(got.windows.values().all(|w| w.len() == 8));
    for group in GROUPS {
        let n = got.messages[&format!("acme/{group}")].len() as u64;
        assert!(n > 8, "{group}: {n}");
        assert_eq!(log.head(&t("acme"), &g(group)), n);
        assert_eq!(log.first_seq(&t("acme"), &g(group)), 1);
    }
    // Appends after an open from summaries continue the log, and survive another open.
    assert_eq!(
        append(&log, "a", "after", 1000, b"after"),
        Appended::New {
            seq: log.head(&t("acme"), &g("a"))
        }
    );
    log.flush().unwrap();
    drop(log);
    let expected = scanned_state(dir.path());
    let log = SegmentLog::open(config(dir.path())).unwrap();
    assert_eq!(state(&log), expected);
}

/// Runs `damage` on a copy of a written log, then checks that the open reads the segments
/// `damage` names (returns) and ends with the state a full read gives.
fn check_damage(what: &str, damage: impl FnOnce(&Path) -> Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    let read_anyway = damage(dir.path());
    let expected = scanned_state(dir.path());
    let log = SegmentLog::open(config(dir.path())).unwrap();
    let read: Vec<u64> = scanned(&log).concat();
    for seg in &read_anyway {
        let id: u64 = seg.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        assert!(
            read.contains(&id),
            "{what}: segment {id} not read ({read:?})"
        );
    }
    assert_eq!(state(&log), expected, "{what}");
    drop(log);
    // The summaries were written again: the next open reads only the active segments.
    let log = SegmentLog::open(config(dir.path())).unwrap();
    assert_eq!(scanned(&log), newest_segments(&log), "{what}: rewritten");
    assert_eq!(state(&log), expected, "{what}: after the rewrite");
}

fn header_len(summary: &[u8]) -> usize {
    u32::from_le_bytes(summary[12..16].try_into().unwrap()) as usize
}

fn seg_of(idx: &Path) -> PathBuf {
    idx.with_extension("seg")
}

#[test]
fn a_damaged_summary_is_not_trusted_and_the_open_is_the_same() {
    for at in [0usize, 9, 21, 40, 77] {
        check_damage(&format!("byte {at} flipped"), |dir| {
            let idx = files(dir, "idx").remove(3);
            let mut b = std::fs::read(&idx).unwrap();
            let at = at.min(b.len() - 1);
            b[at] ^= 0x10;
            std::fs::write(&idx, b).unwrap();
            vec![seg_of(&idx)]
        });
    }
    check_damage("the header's CRC flipped", |dir| {
        let idx = files(dir, "idx").remove(0);
        let mut b = std::fs::read(&idx).unwrap();
        let end = header_len(&b);
        b[end - 1] ^= 1;
        std::fs::write(&idx, b).unwrap();
        vec![seg_of(&idx)]
    });
    // Every hash block damaged: the segments are still taken from their summaries, and
    // each dedupe window is built from the records instead (the same windows).
    check_damage("every hash block damaged", |dir| {
        for idx in files(dir, "idx") {
            let mut b = std::fs::read(&idx).unwrap();
            let end = header_len(&b);
            for byte in &mut b[end..] {
                *byte ^= 0x5a;
            }
            std::fs::write(&idx, b).unwrap();
        }
        Vec::new()
    });
    check_damage("truncated", |dir| {
        let idx = files(dir, "idx").remove(5);
        let b = std::fs::read(&idx).unwrap();
        std::fs::write(&idx, &b[..b.len() / 2]).unwrap();
        vec![seg_of(&idx)]
    });
    check_damage("empty", |dir| {
        let idx = files(dir, "idx").remove(2);
        std::fs::write(&idx, b"").unwrap();
        vec![seg_of(&idx)]
    });
    check_damage("the dedupe key lost (a new one is made)", |dir| {
        std::fs::remove_file(dir.join("log").join(KEY_FILE)).unwrap();
        files(dir, "idx").iter().map(|idx| seg_of(idx)).collect()
    });
    check_damage("the dedupe key damaged", |dir| {
        std::fs::write(dir.join("log").join(KEY_FILE), [7; 20]).unwrap();
        files(dir, "idx").iter().map(|idx| seg_of(idx)).collect()
    });
    check_damage("another segment's summary", |dir| {
        let idx = files(dir, "idx");
        std::fs::copy(&idx[1], &idx[2]).unwrap();
        vec![seg_of(&idx[2])]
    });
}

/// A sealed segment shorter than its summary says (its last record cut): the summary is not
/// trusted, the segment is read and its torn record dropped, as without summaries.
#[test]
fn a_summary_of_another_length_is_not_trusted() {
    check_damage("segment cut by a byte", |dir| {
        let idx = files(dir, "idx").remove(4);
        let seg = seg_of(&idx);
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 1).unwrap();
        vec![seg]
    });
    check_damage("segment grown by a byte", |dir| {
        let idx = files(dir, "idx").remove(4);
        let seg = seg_of(&idx);
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len + 1).unwrap();
        vec![seg]
    });
}

#[test]
fn an_orphan_summary_and_one_of_the_active_segment_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    let expected = scanned_state(dir.path());
    let idx = files(dir.path(), "idx");
    let shard = idx[0].parent().unwrap().to_path_buf();
    // A summary with no segment (as a crash inside retention's deletion could leave).
    let orphan = summary_path(&shard, 999_999);
    std::fs::copy(&idx[0], &orphan).unwrap();
    // A summary of the newest segment (a seal whose next segment a crash lost).
    let mut segs: Vec<PathBuf> = files(dir.path(), "seg")
        .into_iter()
        .filter(|p| p.starts_with(&shard))
        .collect();
    let newest = segs.pop().unwrap();
    let newest_idx = newest.with_extension("idx");
    std::fs::copy(&idx[0], &newest_idx).unwrap();
    let log = SegmentLog::open(config(dir.path())).unwrap();
    assert!(!orphan.exists());
    assert!(!newest_idx.exists());
    assert_eq!(state(&log), expected);
}

/// Every sealed segment is overwritten with zeros after the log is closed: the open takes
/// them from their summaries without reading them (a read would find no record in them and
/// truncate them to nothing), so the groups' numbering is untouched.
#[test]
fn open_does_not_read_sealed_segments_whose_summaries_are_good() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    let expected = scanned_state(dir.path());
    for idx in files(dir.path(), "idx") {
        let seg = seg_of(&idx);
        let len = std::fs::metadata(&seg).unwrap().len();
        std::fs::write(&seg, vec![0; len as usize]).unwrap();
    }
    let log = SegmentLog::open(config(dir.path())).unwrap();
    for group in GROUPS {
        let key = format!("acme/{group}");
        let (first, head, ..) = expected.groups[&key];
        assert_eq!(log.head(&t("acme"), &g(group)), head, "{group}");
        assert_eq!(log.first_seq(&t("acme"), &g(group)), first, "{group}");
        // The dedupe window comes from the summaries' hash blocks, not the records.
        let found = log.find_sent(&t("acme"), &g(group), &u("ann"), "never sent");
        assert_eq!(found.unwrap(), None, "{group}");
        // Reading the zeroed records is an error, never a silent gap.
        let err = log.read_after(&t("acme"), &g(group), 0, 1).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }
    for idx in files(dir.path(), "idx") {
        let len = std::fs::metadata(seg_of(&idx)).unwrap().len();
        assert!(len > 0, "{} not truncated", idx.display());
    }
}

/// After an open from summaries, a resend of a message whose record is in a sealed segment
/// (within the window) is a duplicate; one just outside the window is stored again, as
/// before the restart.
#[test]
fn a_resend_after_a_restart_is_found_through_a_lazily_built_window() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path()).shards(1).dedupe_window(20);
    let log = SegmentLog::open(cfg.clone()).unwrap();
    // Group "a" gets 30 messages, then "b" fills whole segments after them, so every
    // record of "a" is in a sealed segment.
    for i in 1..=30u64 {
        append(&log, "a", &format!("a{i}"), i, &[1; 100]);
    }
    for i in 1..=30u64 {
        append(&log, "b", &format!("b{i}"), i, &[2; 100]);
    }
    log.flush().unwrap();
    let a_segments: Vec<u64> = {
        let s = log.inner.shards[0].lock();
        s.segments
            .iter()
            .filter(|(_, seg)| seg.groups.contains_key(&(t("acme"), g("a"))))
            .map(|(&id, _)| id)
            .collect()
    };
    drop(log);
    let log = SegmentLog::open(cfg.clone()).unwrap();
    let read = scanned(&log).concat();
    assert!(
        a_segments.iter().all(|id| !read.contains(id)),
        "{a_segments:?} read: {read:?}"
    );
    {
        let s = log.inner.shards[0].lock();
        assert!(
            !s.groups[&(t("acme"), g("a"))].dedupe_ready,
            "left for later"
        );
    }
    let find = |id: &str| log.find_sent(&t("acme"), &g("a"), &u("ann"), id).unwrap();
    assert_eq!(find("a30"), Some(30));
    assert_eq!(find("a11"), Some(11), "the oldest in the window");
    assert_eq!(find("a10"), None, "just outside the window");
    assert_eq!(
        append(&log, "a", "a15", 0, b"resent"),
        Appended::Duplicate { seq: 15 }
    );
    assert_eq!(
        append(&log, "a", "a10", 0, b"resent"),
        Appended::New { seq: 31 }
    );
    // The window moves on from there as it always did: 12..=31 now.
    assert_eq!(find("a11"), None);
    assert_eq!(find("a12"), Some(12));
    drop(log);

    // The same through an append as the first use after a restart (no find_sent first).
    let log = SegmentLog::open(cfg).unwrap();
    assert_eq!(
        append(&log, "a", "a13", 0, b"resent"),
        Appended::Duplicate { seq: 13 }
    );
    assert_eq!(
        append(&log, "b", "b30", 0, b"resent"),
        Appended::Duplicate { seq: 30 }
    );
}

#[test]
fn retention_deletes_a_segments_summary_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path()).shards(1).retention(Retention {
        default: RetentionLimits {
            max_messages: Some(20),
            ..Default::default()
        },
        ..Retention::default()
    });
    let log = SegmentLog::open(cfg.clone()).unwrap();
    for i in 1..=100u64 {
        append(&log, "a", &i.to_string(), i, &[0; 100]);
    }
    log.flush().unwrap();
    let before = files(dir.path(), "idx").len();
    let report = log.enforce_retention(0).unwrap();
    assert!(report.segments_deleted > 0);
    let idx = files(dir.path(), "idx");
    assert_eq!(idx.len(), before - report.segments_deleted);
    for f in &idx {
        assert!(seg_of(f).exists(), "{} without its segment", f.display());
    }
    let first = log.first_seq(&t("acme"), &g("a"));
    drop(log);
    let log = SegmentLog::open(cfg).unwrap();
    assert_eq!(scanned(&log), newest_segments(&log));
    assert_eq!(log.first_seq(&t("acme"), &g("a")), first);
    assert_eq!(log.head(&t("acme"), &g("a")), 100);
}

/// A sealed segment's summary is written by the flush that syncs the segment, not at the
/// seal: until then a crash could still take the segment's unsynced records back.
#[test]
fn a_summary_is_written_by_the_flush_after_the_seal() {
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(config(dir.path()).shards(1)).unwrap();
    let mut i = 0;
    while log.disk_usage().1 < 3 {
        i += 1;
        append(&log, "a", &i.to_string(), i, &[3; 100]);
    }
    assert!(
        files(dir.path(), "idx").is_empty(),
        "written before the flush"
    );
    log.flush().unwrap();
    let idx = files(dir.path(), "idx");
    assert_eq!(idx.len(), 2, "{idx:?}");
    for f in &idx {
        let seg = std::fs::metadata(seg_of(f)).unwrap().len();
        let file = File::open(f).unwrap();
        let len = file.metadata().unwrap().len();
        let s = summary::read(&file, len).unwrap();
        assert_eq!(s.len, seg, "{}", f.display());
    }
}
