//! [`SegmentLog`]: group messages in append-only segment files, the model being NATS
//! JetStream's filestore and Kafka's log segments.
//!
//! # On disk
//!
//! `<dir>/FORMAT` names the format and the shard count; `<dir>/DEDUPE_KEY` holds the log's
//! random key for dedupe hashes (made with the log; a lost or damaged key is replaced, and
//! only costs the summaries made with it); each shard is a directory
//! `shard-NNN` of segment files `<id>.seg` (ids count up from 1, zero-padded to 20 digits),
//! the sealed segments' summaries `<id>.idx`, and an optional `trimmed` file. A group lives
//! in one shard (FNV-1a of tenant and group); segments of a shard hold the records of all its
//! groups, interleaved in append order ([`record`] has the layout). Only the newest segment of
//! a shard (the active one) is written; a segment is sealed when the next record would take
//! it past `segment_bytes`. A sealed segment's summary ([`summary`] has the layout) holds what
//! reading the segment at open would learn: per group with records in it, its first and last
//! seq, bytes, newest `sent_at_ms`, the end of its last record and its sparse index entries
//! there; the segment's id, its length, the dedupe key's id and a CRC32C; then per group a
//! block of its records' dedupe hashes (8 bytes a record) with its own CRC32C.
//!
//! # Writes and durability
//!
//! An append encodes its record into the shard's buffer in memory (under the shard's lock)
//! and updates the in-memory state: the group's head, its sparse index, its dedupe window
//! and the segment's summary. [`SegmentLog::flush`] is the commit point: per shard one
//! `write` of the buffer at the end of the active segment, then one `fdatasync` per file
//! written since the last flush (the active one; a sealed one too if the batch crossed a
//! segment boundary), and an `fsync` of the shard directory if a segment was created. The
//! fsyncs run outside the lock, so appends continue meanwhile. A buffer that grows past
//! `write_buffer_bytes` between flushes is written out early (not synced). A segment sealed
//! since the last flush gets its summary after the flush has synced the segment's data
//! (written and `fdatasync`ed, still outside the lock): a summary never describes records a
//! crash could take back. A crash before the summary is durable costs a read of the segment
//! at the next open, nothing else; a summary that cannot be written is logged, not an error.
//!
//! # Recovery
//!
//! Opening goes through each shard's segments oldest first. A sealed segment whose summary
//! is whole (CRC32C), of this format, names this segment's id, its current length and this
//! log's dedupe key, and continues the groups where the older segments left them is taken
//! from the summary without reading the segment. Any other segment, and always the active (newest) one, is read from
//! the start: records are checked (length, CRC32C, header) and the first one that is torn or
//! damaged ends the segment: the file is truncated there (a torn write of a batch nobody
//! acknowledged), with a warning; a sealed segment read this way gets its summary written
//! again. Summaries of segments that are not there (a crash inside retention) or of the
//! active segment (a seal whose next segment a crash lost) are deleted. Together this
//! rebuilds each group's head, first seq and sparse index, and the segments' summaries in
//! memory, so open time grows with the number of sealed segments and the size of the
//! active ones, not with the bytes kept.
//!
//! A group's dedupe window (its newest `dedupe_window` client message ids) is rebuilt from
//! the records the open read. When some of the group's newest records came from summaries
//! instead, the window is completed on the group's first dedupe check (its first append or
//! [`SegmentLog::find_sent`]) from those summaries' hash blocks, outside the shard's lock:
//! once per group, at most one block per segment. A damaged block makes that group read its
//! newest `dedupe_window` records through the sparse index instead (correct, slower: the
//! records are interleaved with other groups'). Either way a resend within the window after
//! a restart is a duplicate exactly as before. The hashes are SipHash-1-3 keyed with
//! `DEDUPE_KEY`: stable across restarts, unpredictable to clients.
//!
//! A failed write (a full disk) marks the log failed; [`SegmentLog::recover`] opens it again
//! from disk the same way.
//!
//! Segments are not preallocated: a file grows as records are written, and its length is
//! the end of its records. (Preallocating was measured and gained nothing: every `fdatasync`
//! pays the disk's cache flush whether or not the file grew; `docs/benchmarks.md`.)
//!
//! # Reads
//!
//! A group's sparse index holds the position of its first record in each segment and of
//! every `index_interval`-th record after that. A read finds the nearest entry at or below
//! the first seq it wants and scans forward from there, skipping other groups' records,
//! segment by segment (each segment's summary says which seq of the group it ends with).
//! The plan is made under the shard's lock; the files are read after it is released.
//!
//! # Retention
//!
//! [`SegmentLog::enforce_retention`] deletes whole segments, oldest first: a sealed segment
//! goes when every group with records in it has those records past one of its limits
//! (max age, max messages, max bytes, from [`Retention`]). A group's newest trimmed seq is
//! written to the shard's `trimmed` file (and synced) before any file is deleted, so its
//! head and numbering survive even when all its messages are gone. A segment's summary is
//! deleted before the segment, and retention does not run during a flush (which writes
//! summaries), so no summary outlives its segment. A read of a trimmed
//! range starts at the group's first retained seq ([`SegmentLog::first_seq`]).

mod files;
mod open;
mod read;
mod record;
mod retention;
mod summary;
#[cfg(test)]
mod summary_tests;
#[cfg(test)]
mod tests;

use retention::read_trimmed;
pub use retention::{Retention, RetentionLimits, RetentionReport, RetentionStatus};

use files::{create_dir_private, io, lock_exclusive, private_file, segment_path, sync_dir};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::hash::Hasher;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use switchboard_core::{GroupId, TenantId, UserId};

use crate::{Appended, NewMessage, StoreError, StoreHealth, StoredMessage};
use read::{Part, Plan, SegmentReader};
use record::{corrupt, Parsed};
use summary::{summary_path, GroupSummary, Summary};

const FORMAT_FILE: &str = "FORMAT";
const FORMAT_LINE: &str = "switchboard segment log 1";
const TRIMMED_FILE: &str = "trimmed";
const KEY_FILE: &str = "DEDUPE_KEY";

/// How to open a [`SegmentLog`]. Every field is a bound; see `docs/reliability.md`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SegmentLogConfig {
    /// Directory of the log (created 0700 if missing; files are 0600).
    pub dir: PathBuf,
    /// Shards (directories of segments). Fixed when the log is created.
    pub shards: u16,
    /// A segment is sealed before a record would take it past this size.
    pub segment_bytes: u64,
    /// Every this many records of a group, its sparse index gets an entry (besides the
    /// group's first record in each segment); a read scans at most this many of the group's
    /// records (and the other groups' records between them) to reach its first.
    pub index_interval: u32,
    /// Newest messages per group whose client message ids are remembered for dedupe
    /// (about 40 bytes each in memory). A resend of an older message is stored again.
    pub dedupe_window: u32,
    /// Largest record (header and body): the message limit plus room for the ids.
    pub max_record_bytes: u32,
    /// Appended bytes buffered per shard before they are written out ahead of a flush.
    pub write_buffer_bytes: usize,
    /// What retention deletes.
    pub retention: Retention,
}

impl SegmentLogConfig {
    /// Defaults: one shard, 64 MiB segments, an index entry every 64 messages, dedupe of the
    /// newest 100,000 messages per group, records up to 16 MiB, 4 MiB write buffer, and
    /// no retention (every message is kept).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            shards: 1,
            segment_bytes: 64 << 20,
            index_interval: 64,
            dedupe_window: 100_000,
            max_record_bytes: 16 << 20,
            write_buffer_bytes: 4 << 20,
            retention: Retention::default(),
        }
    }

    pub fn shards(mut self, shards: u16) -> Self {
        self.shards = shards;
        self
    }
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }
    pub fn index_interval(mut self, every: u32) -> Self {
        self.index_interval = every;
        self
    }
    pub fn dedupe_window(mut self, messages: u32) -> Self {
        self.dedupe_window = messages;
        self
    }
    pub fn max_record_bytes(mut self, bytes: u32) -> Self {
        self.max_record_bytes = bytes;
        self
    }
    pub fn write_buffer_bytes(mut self, bytes: usize) -> Self {
        self.write_buffer_bytes = bytes;
        self
    }
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    fn validate(&self) -> Result<(), StoreError> {
        let bad = |what: &str| Err(StoreError::Io(format!("segment log config: {what}")));
        if self.shards == 0 || self.shards > 1024 {
            return bad("shards must be 1 to 1024");
        }
        if self.index_interval == 0 {
            return bad("index_interval must be at least 1");
        }
        if u64::from(self.max_record_bytes) > self.segment_bytes {
            return bad("a segment must hold the largest record");
        }
        Ok(())
    }
}

type GroupKey = (TenantId, GroupId);

/// Group messages in segment files. Cheap to clone (clones share the log).
#[derive(Clone)]
pub struct SegmentLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.inner.config.dir)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: SegmentLogConfig,
    /// `<dir>/LOCK`, locked exclusively while the log is open: a second process (or a second
    /// open in this one) would append behind this one's back.
    _lock: File,
    shards: Vec<Mutex<Shard>>,
    /// One flush at a time: a flush writes out every shard's buffer, then syncs.
    flushing: Mutex<()>,
    /// Keys the dedupe hashes (SipHash-1-3): random per log and kept in its `DEDUPE_KEY`
    /// file, so client ids cannot be chosen to collide, yet hashes in summaries stay valid.
    key: (u64, u64),
    /// Names the key in summaries: one made with another key is not trusted.
    key_id: u64,
}

/// A position in a shard: segment id and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexEntry {
    seq: u64,
    segment: u64,
    offset: u64,
}

/// What the log knows about one group of a shard, in memory.
#[derive(Debug)]
struct GroupLog {
    /// Lowest retained seq (`head + 1` when none is).
    first: u64,
    head: u64,
    /// Sparse index, ascending (by seq and by segment).
    index: Vec<IndexEntry>,
    since_index: u32,
    /// Segment and end offset of the newest record.
    last_segment: u64,
    last_end: u64,
    /// `hash(sender, client_msg_id)` → seq for the newest `dedupe_window` messages; a hit is
    /// confirmed against the record (a hash is not proof).
    dedupe: HashMap<u64, u64>,
    dedupe_order: VecDeque<(u64, u64)>,
    /// Whether `dedupe` holds the whole window. After an open that took some of the group's
    /// records from segment summaries it does not: it is built on the group's first dedupe
    /// check, from the group's newest records ([`SegmentLog::ready_shard`]).
    dedupe_ready: bool,
}

impl GroupLog {
    fn new(trimmed_through: u64) -> Self {
        Self {
            first: trimmed_through + 1,
            head: trimmed_through,
            index: Vec::new(),
            since_index: 0,
            last_segment: 0,
            last_end: 0,
            dedupe: HashMap::new(),
            dedupe_order: VecDeque::new(),
            dedupe_ready: true,
        }
    }
}

/// A group's records in one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegGroup {
    first: u64,
    last: u64,
    bytes: u64,
    newest_ms: u64,
}

struct Segment {
    file: Arc<File>,
    /// Bytes in the file (for the active segment, written out so far).
    len: u64,
    groups: HashMap<GroupKey, SegGroup>,
    /// Dedupe hashes of each group's records here, in order, for the summary: kept while
    /// the segment is active (8 bytes per record), dropped once the summary is encoded.
    hashes: HashMap<GroupKey, Vec<u64>>,
    /// For a segment taken from its summary: where each group's hash block is in it.
    hash_blocks: HashMap<GroupKey, u64>,
}

struct Shard {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    /// Id of the newest segment, the only one written to.
    active: u64,
    /// Appended records not written out yet; they follow the active segment's `len`.
    pending: Vec<u8>,
    /// Files written since the last flush, besides the active one (sealed since).
    unsynced: Vec<Arc<File>>,
    /// A segment file was created since the last flush: its directory entry needs a sync.
    dir_dirty: bool,
    /// Summaries of segments sealed since the last flush, written by the flush once the
    /// segment's data is synced.
    summaries_due: Vec<(u64, Vec<u8>)>,
    groups: HashMap<GroupKey, GroupLog>,
    /// Newest trimmed seq per group, as in the `trimmed` file.
    trimmed: HashMap<GroupKey, u64>,
    /// Why the shard stopped accepting writes, after a failed write or sync.
    failed: Option<String>,
    /// The log's dedupe key id, for the summaries.
    key_id: u64,
    /// Segments the open read (not taken from a summary), for the tests.
    #[cfg(test)]
    scanned: Vec<u64>,
}

impl SegmentLog {
    /// Opens (or creates) the log in `config.dir`, recovering every shard (see the module
    /// docs). Blocking: it reads the summaries of sealed segments and the active segments
    /// (and any sealed segment without a good summary).
    pub fn open(config: SegmentLogConfig) -> Result<Self, StoreError> {
        config.validate()?;
        create_dir_private(&config.dir)?;
        let lock = private_file(OpenOptions::new().read(true).write(true).create(true))
            .open(config.dir.join("LOCK"))
            .map_err(|e| io("open LOCK", e))?;
        lock_exclusive(&lock).map_err(|e| {
            StoreError::Io(format!(
                "segment log {} is in use by another process or store (is the node running?): {e}",
                config.dir.display()
            ))
        })?;
        let format = format!("{FORMAT_LINE}\nshards {}\n", config.shards);
        let format_path = config.dir.join(FORMAT_FILE);
        match std::fs::read_to_string(&format_path) {
            Ok(found) if found == format => {}
            Ok(found) => {
                return Err(corrupt(format!(
                    "{} says {found:?}, this node is configured for {format:?} (the shard count \
                     of a log cannot change)",
                    format_path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let tmp = config.dir.join("FORMAT.tmp");
                let file = private_file(OpenOptions::new().write(true).create(true).truncate(true))
                    .open(&tmp)
                    .map_err(|e| io("create FORMAT", e))?;
                file.write_all_at(format.as_bytes(), 0)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io("write FORMAT", e))?;
                std::fs::rename(&tmp, &format_path).map_err(|e| io("rename FORMAT", e))?;
                sync_dir(&config.dir)?;
            }
            Err(e) => return Err(io("read FORMAT", e)),
        }
        let key = dedupe_key(&config.dir)?;
        let key_id = {
            let mut h = siphasher::sip::SipHasher13::new_with_keys(key.0, key.1);
            h.write(b"switchboard dedupe key id");
            h.finish()
        };
        let inner = Inner {
            _lock: lock,
            key,
            key_id,
            flushing: Mutex::new(()),
            shards: Vec::new(),
            config,
        };
        let mut shards = Vec::with_capacity(usize::from(inner.config.shards));
        for n in 0..inner.config.shards {
            shards.push(Mutex::new(inner.open_shard(n)?));
        }
        Ok(Self {
            inner: Arc::new(Inner { shards, ..inner }),
        })
    }

    /// Whether the directory holds a segment log with at least one record.
    pub fn has_records(dir: &Path) -> Result<bool, StoreError> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(false);
        };
        for shard in entries {
            let shard = shard.map_err(|e| io("list", e))?.path();
            if !shard.is_dir() {
                continue;
            }
            for seg in std::fs::read_dir(&shard).map_err(|e| io("list", e))? {
                let meta = seg
                    .map_err(|e| io("list", e))?
                    .metadata()
                    .map_err(|e| io("stat", e))?;
                if meta.is_file() && meta.len() > 0 {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    pub fn config(&self) -> &SegmentLogConfig {
        &self.inner.config
    }

    fn shard(&self, tenant: &TenantId, group: &GroupId) -> &Mutex<Shard> {
        let n = self.inner.shards.len();
        if n == 1 {
            return &self.inner.shards[0];
        }
        // FNV-1a: stable across processes and versions (it places groups on disk).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in tenant
            .as_str()
            .bytes()
            .chain([0])
            .chain(group.as_str().bytes())
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        &self.inner.shards[(h % n as u64) as usize]
    }

    fn dedupe_hash(&self, sender: &UserId, client_msg_id: &str) -> u64 {
        self.inner.dedupe_hash(sender.as_str(), client_msg_id)
    }

    /// The group's shard, locked, with the group's dedupe window whole. A window the open
    /// left to be completed (some of the group's newest records came from summaries) is
    /// completed here, once: the hashes of its newest `dedupe_window` records are read from
    /// those segments' summaries (the hash blocks), with the lock released as for any read.
    /// A damaged or missing block makes it read the records themselves instead, through
    /// the sparse index. Nothing else appends to the group meanwhile (an append needs the
    /// window first), so what was read is still the group's newest when it is kept.
    fn ready_shard(&self, key: &GroupKey) -> Result<MutexGuard<'_, Shard>, StoreError> {
        let shard = self.shard(&key.0, &key.1);
        let mut by_records = false;
        'again: loop {
            let s = shard.lock();
            let Some(g) = s.groups.get(key).filter(|g| !g.dedupe_ready) else {
                return Ok(s);
            };
            let head = g.head;
            let window = u64::from(self.inner.config.dedupe_window);
            let from = g.first.max((head + 1).saturating_sub(window));
            // seq → hash of the window's records.
            let mut found = BTreeMap::new();
            let mut blocks = Vec::new();
            let mut plan = None;
            if window > 0 && from <= head {
                if by_records {
                    plan = Some(s.plan(&self.inner.config, key, from, head, usize::MAX));
                } else {
                    // The records the open read (newer than any left out of the window)...
                    found.extend(
                        g.dedupe_order
                            .iter()
                            .filter(|&&(_, seq)| seq >= from)
                            .map(|&(hash, seq)| (seq, hash)),
                    );
                    // ...and those of the segments taken from summaries.
                    for (&id, seg) in s.segments.range(g.index.first().map_or(0, |e| e.segment)..) {
                        if let (Some(&at), Some(sg)) =
                            (seg.hash_blocks.get(key), seg.groups.get(key))
                        {
                            if sg.last >= from {
                                blocks.push((summary_path(&s.dir, id), at, sg.first, sg.last));
                            }
                        }
                    }
                }
            }
            drop(s);
            if let Some(plan) = plan {
                plan.walk(&key.0, &key.1, &mut |view| {
                    let hash = self.inner.dedupe_hash(view.sender, view.client_msg_id);
                    found.insert(view.seq, hash);
                    Ok(true)
                })?;
            }
            for (path, at, first, last) in blocks {
                let Some(hashes) = summary::read_hashes(&path, at, last - first + 1) else {
                    tracing::warn!(
                        summary = %path.display(),
                        "segment log: a summary's hash block is damaged; reading the records"
                    );
                    by_records = true;
                    continue 'again;
                };
                for (seq, hash) in (first..=last).zip(hashes) {
                    if seq >= from && seq <= head {
                        found.insert(seq, hash);
                    }
                }
            }
            let mut s = shard.lock();
            if let Some(g) = s.groups.get_mut(key) {
                if !g.dedupe_ready && g.head == head {
                    g.dedupe.clear();
                    g.dedupe_order.clear();
                    for (seq, hash) in found {
                        g.dedupe.insert(hash, seq);
                        g.dedupe_order.push_back((hash, seq));
                    }
                    g.dedupe_ready = true;
                }
            }
            // Kept, or completed by another caller meanwhile: either way, look again.
        }
    }

    /// Appends a message with the group's next seq, or finds the earlier append of the same
    /// `(sender, client_msg_id)` within the dedupe window. Durable after the next
    /// [`SegmentLog::flush`].
    pub fn append(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        msg: NewMessage<'_>,
    ) -> Result<Appended, StoreError> {
        let len = record::encoded_len(tenant, group, &msg);
        if len > self.inner.config.max_record_bytes as usize {
            return Err(StoreError::Io(format!(
                "message of {len} bytes exceeds the segment log's record limit of {}",
                self.inner.config.max_record_bytes
            )));
        }
        let hash = self.dedupe_hash(msg.sender, msg.client_msg_id);
        let key = (tenant.clone(), group.clone());
        let mut shard = self.ready_shard(&key)?;
        if let Some(reason) = &shard.failed {
            return Err(StoreError::Io(format!("segment log failed: {reason}")));
        }
        if let Some(seq) =
            self.confirmed_duplicate(&shard, &key, hash, msg.sender, msg.client_msg_id)?
        {
            return Ok(Appended::Duplicate { seq });
        }
        let active_len = shard.active_len();
        if active_len > 0 && active_len + len as u64 > self.inner.config.segment_bytes {
            if let Err(e) = shard.roll() {
                return Err(shard.fail(e));
            }
        }
        let offset = shard.active_len();
        let seq = shard.groups.get(&key).map_or(0, |g| g.head) + 1;
        record::encode(&mut shard.pending, tenant, group, seq, &msg);
        let segment = shard.active;
        shard.note(
            &self.inner.config,
            key,
            Noted {
                seq,
                segment,
                offset,
                len: len as u64,
                sent_at_ms: msg.sent_at_ms,
                hash,
            },
        );
        if shard.pending.len() >= self.inner.config.write_buffer_bytes {
            if let Err(e) = shard.write_out() {
                // The record may or may not be in the file now.
                return Err(StoreError::OutcomeUnknown(shard.fail(e).to_string()));
            }
        }
        Ok(Appended::New { seq })
    }

    /// The seq of `hash` in the group's dedupe window, if the record there really is
    /// `(sender, client_msg_id)`. A trimmed record is trusted on its hash (64 bits).
    fn confirmed_duplicate(
        &self,
        shard: &Shard,
        key: &GroupKey,
        hash: u64,
        sender: &UserId,
        client_msg_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        let Some(g) = shard.groups.get(key) else {
            return Ok(None);
        };
        let Some(&seq) = g.dedupe.get(&hash) else {
            return Ok(None);
        };
        if seq < g.first {
            return Ok(Some(seq));
        }
        let plan = shard.plan(&self.inner.config, key, seq, seq, 1);
        let found = plan.run(&key.0, &key.1)?;
        Ok(found
            .first()
            .filter(|m| m.sender == *sender && m.client_msg_id == client_msg_id)
            .map(|m| m.seq))
    }

    /// The seq an earlier append of `(sender, client_msg_id)` got, within the dedupe window.
    pub fn find_sent(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        sender: &UserId,
        client_msg_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        let hash = self.dedupe_hash(sender, client_msg_id);
        let key = (tenant.clone(), group.clone());
        let shard = self.ready_shard(&key)?;
        self.confirmed_duplicate(&shard, &key, hash, sender, client_msg_id)
    }

    /// Newest seq of a group, 0 when it never had a message.
    pub fn head(&self, tenant: &TenantId, group: &GroupId) -> u64 {
        let shard = self.shard(tenant, group).lock();
        shard
            .groups
            .get(&(tenant.clone(), group.clone()))
            .map_or(0, |g| g.head)
    }

    /// Oldest retained seq of a group: 1 until retention trimmed it, `head + 1` when every
    /// message is gone.
    pub fn first_seq(&self, tenant: &TenantId, group: &GroupId) -> u64 {
        let shard = self.shard(tenant, group).lock();
        shard
            .groups
            .get(&(tenant.clone(), group.clone()))
            .map_or(1, |g| g.first)
    }

    /// Up to `limit` messages with `seq > after`, in order. Below the first retained seq
    /// there is nothing: such a read starts at the first retained message.
    pub fn read_after(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        if limit == 0 || after == u64::MAX {
            return Ok(Vec::new());
        }
        let key = (tenant.clone(), group.clone());
        let plan = {
            let shard = self.shard(tenant, group).lock();
            let Some(g) = shard.groups.get(&key) else {
                return Ok(Vec::new());
            };
            let from = (after + 1).max(g.first);
            if from > g.head {
                return Ok(Vec::new());
            }
            let upto = from.saturating_add(limit as u64 - 1).min(g.head);
            shard.plan(&self.inner.config, &key, from, upto, limit)
        };
        plan.run(tenant, group)
    }

    /// One message, if it is retained.
    pub fn message(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let key = (tenant.clone(), group.clone());
        let plan = {
            let shard = self.shard(tenant, group).lock();
            match shard.groups.get(&key) {
                Some(g) if seq >= g.first && seq <= g.head => {
                    shard.plan(&self.inner.config, &key, seq, seq, 1)
                }
                _ => return Ok(None),
            }
        };
        Ok(plan.run(tenant, group)?.into_iter().next())
    }

    /// Makes every append that returned before this call durable: per shard one write of
    /// the buffered records and one `fdatasync` per file written (see the module docs).
    pub fn flush(&self) -> Result<(), StoreError> {
        let _one = self.inner.flushing.lock();
        for shard in &self.inner.shards {
            let files = {
                let mut s = shard.lock();
                if let Some(reason) = &s.failed {
                    return Err(StoreError::Io(format!("segment log failed: {reason}")));
                }
                if let Err(e) = s.write_out() {
                    return Err(s.fail(e));
                }
                let mut files = std::mem::take(&mut s.unsynced);
                if let Some(active) = s.segments.get(&s.active) {
                    files.push(active.file.clone());
                }
                let dir = std::mem::take(&mut s.dir_dirty).then(|| s.dir.clone());
                let summaries = std::mem::take(&mut s.summaries_due);
                (files, dir, summaries, s.dir.clone())
            };
            let (files, dir, summaries, shard_dir) = files;
            let synced = files
                .iter()
                .try_for_each(|f| f.sync_data().map_err(|e| io("fdatasync", e)))
                .and_then(|()| dir.as_deref().map_or(Ok(()), sync_dir));
            if let Err(e) = synced {
                // What the failed sync covered may or may not be on disk: reopen to know.
                return Err(shard.lock().fail(e));
            }
            // After the sealed segments' data: a summary never describes records that a
            // crash could still take away.
            for (id, bytes) in summaries {
                write_summary(&shard_dir, id, &bytes);
            }
        }
        Ok(())
    }

    /// Writes every shard's buffer out without syncing: the state a flush is in between
    /// its write and its fdatasync (for the kill tests).
    #[cfg(test)]
    pub(crate) fn write_unsynced(&self) -> Result<(), StoreError> {
        for shard in &self.inner.shards {
            shard.lock().write_out()?;
        }
        Ok(())
    }

    /// Whether the log works.
    pub fn health(&self) -> StoreHealth {
        for shard in &self.inner.shards {
            if let Some(reason) = &shard.lock().failed {
                return StoreHealth::Failed {
                    reason: reason.clone(),
                };
            }
        }
        StoreHealth::Ok
    }

    /// Opens every failed shard again from disk (what was synced is read back, a torn tail
    /// truncated, appends that were never written forgotten). `Ok(false)` when none had
    /// failed. On an error the shard stays failed and the call may be repeated.
    pub fn recover(&self) -> Result<bool, StoreError> {
        let _one = self.inner.flushing.lock();
        let mut reopened = false;
        for (n, shard) in self.inner.shards.iter().enumerate() {
            let mut s = shard.lock();
            if s.failed.is_none() {
                continue;
            }
            *s = self.inner.open_shard(n as u16)?;
            reopened = true;
        }
        if reopened {
            tracing::info!("segment log reopened after a storage failure");
        }
        Ok(reopened)
    }

    /// Bytes of segment files on disk, and how many there are.
    pub fn disk_usage(&self) -> (u64, usize) {
        let mut bytes = 0;
        let mut files = 0;
        for shard in &self.inner.shards {
            let s = shard.lock();
            files += s.segments.len();
            bytes += s.segments.values().map(|seg| seg.len).sum::<u64>() + s.pending.len() as u64;
        }
        (bytes, files)
    }
}

/// A record just appended or read at open, for [`Shard::note`].
struct Noted {
    seq: u64,
    segment: u64,
    offset: u64,
    len: u64,
    sent_at_ms: u64,
    hash: u64,
}

impl Inner {
    /// The dedupe hash of `(sender, client_msg_id)`: stable for the log (summaries keep it).
    fn dedupe_hash(&self, sender: &str, client_msg_id: &str) -> u64 {
        let mut h = siphasher::sip::SipHasher13::new_with_keys(self.key.0, self.key.1);
        h.write(&(sender.len() as u64).to_le_bytes());
        h.write(sender.as_bytes());
        h.write(client_msg_id.as_bytes());
        h.finish()
    }
}

impl Shard {
    /// Bytes of the active segment, buffered ones included.
    fn active_len(&self) -> u64 {
        self.segments.get(&self.active).map_or(0, |s| s.len) + self.pending.len() as u64
    }

    /// Marks the shard failed (the first reason stays) and passes the error on.
    fn fail(&mut self, e: StoreError) -> StoreError {
        if self.failed.is_none() {
            tracing::error!(error = %e, "segment log failed; writes are refused until it is reopened");
            self.failed = Some(e.to_string());
        }
        e
    }

    fn create_segment(&mut self, id: u64) -> Result<(), StoreError> {
        let file = private_file(OpenOptions::new().read(true).write(true).create_new(true))
            .open(segment_path(&self.dir, id))
            .map_err(|e| io("create segment", e))?;
        self.segments.insert(
            id,
            Segment {
                file: Arc::new(file),
                len: 0,
                groups: HashMap::new(),
                hashes: HashMap::new(),
                hash_blocks: HashMap::new(),
            },
        );
        self.active = id;
        self.dir_dirty = true;
        Ok(())
    }

    /// Seals the active segment (its buffer written out, its sync left to the next flush)
    /// and starts the next one.
    fn roll(&mut self) -> Result<(), StoreError> {
        self.write_out()?;
        if let Some(seg) = self.segments.get(&self.active) {
            self.unsynced.push(seg.file.clone());
        }
        if let Some(summary) = self.summary(self.active) {
            self.summaries_due
                .push((self.active, summary::encode(&summary)));
        }
        if let Some(seg) = self.segments.get_mut(&self.active) {
            seg.hashes = HashMap::new();
        }
        self.create_segment(self.active + 1)
    }

    /// Writes the buffered records at the end of the active segment (one `write`).
    fn write_out(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let seg = self
            .segments
            .get_mut(&self.active)
            .ok_or_else(|| corrupt("no active segment"))?;
        seg.file
            .write_all_at(&self.pending, seg.len)
            .map_err(|e| io("write", e))?;
        seg.len += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Records a record's place in the group's state and the segment's summary.
    fn note(&mut self, config: &SegmentLogConfig, key: GroupKey, r: Noted) {
        if let Some(seg) = self.segments.get_mut(&r.segment) {
            match seg.hashes.get_mut(&key) {
                Some(h) => h.push(r.hash),
                None => {
                    seg.hashes.insert(key.clone(), vec![r.hash]);
                }
            }
            match seg.groups.get_mut(&key) {
                Some(sg) => {
                    sg.last = r.seq;
                    sg.bytes += r.len;
                    sg.newest_ms = sg.newest_ms.max(r.sent_at_ms);
                }
                None => {
                    seg.groups.insert(
                        key.clone(),
                        SegGroup {
                            first: r.seq,
                            last: r.seq,
                            bytes: r.len,
                            newest_ms: r.sent_at_ms,
                        },
                    );
                }
            }
        }
        let trimmed = self.trimmed.get(&key).copied().unwrap_or(0);
        let g = self
            .groups
            .entry(key)
            .or_insert_with(|| GroupLog::new(trimmed));
        if g.index.is_empty() {
            g.first = r.seq;
        }
        if g.index.last().is_none_or(|e| e.segment != r.segment)
            || g.since_index >= config.index_interval
        {
            g.index.push(IndexEntry {
                seq: r.seq,
                segment: r.segment,
                offset: r.offset,
            });
            g.since_index = 0;
        }
        g.since_index += 1;
        g.head = r.seq;
        g.last_segment = r.segment;
        g.last_end = r.offset + r.len;
        if config.dedupe_window > 0 {
            g.dedupe.insert(r.hash, r.seq);
            g.dedupe_order.push_back((r.hash, r.seq));
            while g.dedupe_order.len() > config.dedupe_window as usize {
                if let Some((hash, seq)) = g.dedupe_order.pop_front() {
                    if g.dedupe.get(&hash) == Some(&seq) {
                        g.dedupe.remove(&hash);
                    }
                }
            }
        }
    }

    /// The read of `from..=upto` (retained seqs of a group that has them).
    fn plan(
        &self,
        config: &SegmentLogConfig,
        key: &GroupKey,
        from: u64,
        upto: u64,
        limit: usize,
    ) -> Plan {
        let mut parts = Vec::new();
        if let Some(g) = self.groups.get(key) {
            let i = g.index.partition_point(|e| e.seq <= from).saturating_sub(1);
            if let Some(start) = g.index.get(i) {
                for (&id, seg) in self.segments.range(start.segment..) {
                    let Some(sg) = seg.groups.get(key) else {
                        continue;
                    };
                    let offset = if id == start.segment {
                        start.offset
                    } else {
                        // The group's first record in a segment always has an index entry.
                        let j = g.index.partition_point(|e| e.seq < sg.first);
                        match g.index.get(j) {
                            Some(e) if e.segment == id => e.offset,
                            _ => 0,
                        }
                    };
                    let pending =
                        if id == self.active && g.last_segment == id && g.last_end > seg.len {
                            self.pending[..(g.last_end - seg.len) as usize].to_vec()
                        } else {
                            Vec::new()
                        };
                    parts.push(Part {
                        file: seg.file.clone(),
                        written: seg.len,
                        pending,
                        start: offset,
                        last_seq: sg.last,
                    });
                    if sg.last >= upto {
                        break;
                    }
                }
            }
        }
        Plan {
            parts,
            from,
            upto,
            limit,
            max_record: config.max_record_bytes as usize,
        }
    }
}

/// The log's dedupe key from `<dir>/DEDUPE_KEY` (16 random bytes and their CRC32C), made
/// on first use. A key that is missing or damaged is replaced: the summaries made with the
/// old one are then not trusted (their key id differs) and their segments are read again.
fn dedupe_key(dir: &Path) -> Result<(u64, u64), StoreError> {
    let path = dir.join(KEY_FILE);
    let split = |b: &[u8]| -> Option<(u64, u64)> {
        let (key, crc) = b.split_at_checked(16)?;
        if crc32c::crc32c(key).to_le_bytes() != crc {
            return None;
        }
        Some((
            u64::from_le_bytes(key[..8].try_into().ok()?),
            u64::from_le_bytes(key[8..].try_into().ok()?),
        ))
    };
    match std::fs::read(&path) {
        Ok(b) => {
            if let Some(key) = split(&b) {
                return Ok(key);
            }
            tracing::warn!(file = %path.display(), "segment log: dedupe key damaged; making a new one");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read DEDUPE_KEY", e)),
    }
    let mut b = [0u8; 20];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b[..16])
        .map_err(|_| StoreError::Io("segment log: no randomness for the dedupe key".into()))?;
    let crc = crc32c::crc32c(&b[..16]);
    b[16..].copy_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(format!("{KEY_FILE}.tmp"));
    let file = private_file(OpenOptions::new().write(true).create(true).truncate(true))
        .open(&tmp)
        .map_err(|e| io("create DEDUPE_KEY", e))?;
    file.write_all_at(&b, 0)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write DEDUPE_KEY", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("rename DEDUPE_KEY", e))?;
    sync_dir(dir)?;
    split(&b).ok_or_else(|| corrupt("dedupe key"))
}

/// Writes a sealed segment's summary and syncs it. A failure costs only a read of the
/// segment at the next open, so it is logged, not returned; a torn summary fails its CRC.
fn write_summary(dir: &Path, id: u64, bytes: &[u8]) {
    let path = summary_path(dir, id);
    let written = private_file(OpenOptions::new().write(true).create(true).truncate(true))
        .open(&path)
        .and_then(|f| f.write_all_at(bytes, 0).and_then(|()| f.sync_data()));
    if let Err(e) = written {
        tracing::warn!(summary = %path.display(), error = %e, "segment log: summary not written");
        let _ = std::fs::remove_file(&path);
    }
}
