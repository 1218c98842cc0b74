//! A sealed segment's summary (`<id>.idx` next to `<id>.seg`): what opening the log would
//! otherwise learn by reading the whole segment, so a sealed segment is not read at open.
//!
//! The header, read at open (all little-endian):
//!
//! | bytes      | field                                                             |
//! |------------|-------------------------------------------------------------------|
//! | 8          | magic `SBSEGIDX`                                                  |
//! | 4          | summary format version (1)                                        |
//! | 4          | header length (these rows, CRC included)                          |
//! | 8          | the segment's id (a summary under another segment's name is not   |
//! |            | that segment's)                                                   |
//! | 8          | the segment's length in bytes                                     |
//! | 8          | id of the log's dedupe key the hashes were made with              |
//! | 4          | group count                                                       |
//! | per group  | tenant and group id (u8 length each), first seq, last seq, bytes, |
//! |            | newest `sent_at_ms`, end offset of its last record (u64 each),    |
//! |            | index entry count (u32), entries (seq u64, offset u64), offset of |
//! |            | its hash block in this file (u64)                                 |
//! | 4          | CRC32C of the header before it                                    |
//!
//! Then per group a hash block, read only to build the group's dedupe window: the dedupe
//! hash of each of its records in the segment, `first..=last` in order (u64 each), and a
//! CRC32C of the block.
//!
//! A summary is a cache of the segment, never the only copy of anything: one that is
//! missing, torn, of another version or key, inconsistent, or names a length the segment no
//! longer has is ignored, and the segment is read instead (and the summary written again);
//! a damaged hash block makes the window be built from the records instead.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use switchboard_core::{GroupId, TenantId};

use super::{GroupKey, SegGroup};

const MAGIC: &[u8; 8] = b"SBSEGIDX";
const VERSION: u32 = 1;
/// Magic, version and header length.
const LEAD: usize = 16;
/// A header larger than this is damage (a group takes ~200 bytes plus 16 per index entry).
const MAX_HEADER: u64 = 256 << 20;

pub(super) fn summary_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.idx"))
}

/// One group's records in a sealed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GroupSummary {
    pub key: GroupKey,
    pub seg: SegGroup,
    /// End offset of the group's last record in the segment.
    pub end: u64,
    /// The group's sparse index entries in the segment: (seq, offset), ascending.
    pub index: Vec<(u64, u64)>,
    /// Written: the dedupe hash of each of the group's records in the segment, in order.
    /// Read back: empty (the block stays on disk until needed).
    pub hashes: Vec<u64>,
    /// Read back: where the group's hash block is in the file (0 when written).
    pub hashes_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Summary {
    pub id: u64,
    /// Length of the segment the summary was made from.
    pub len: u64,
    /// Which dedupe key the hashes were made with.
    pub key_id: u64,
    pub groups: Vec<GroupSummary>,
}

/// The summary's file contents. Each group's `hashes` must hold one hash per seq of
/// `first..=last`.
pub(super) fn encode(s: &Summary) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + s.groups.len() * 128);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    for n in [s.id, s.len, s.key_id] {
        b.extend_from_slice(&n.to_le_bytes());
    }
    b.extend_from_slice(&(s.groups.len() as u32).to_le_bytes());
    let mut slots = Vec::with_capacity(s.groups.len());
    for g in &s.groups {
        for id in [g.key.0.as_str(), g.key.1.as_str()] {
            // Ids are at most 64 bytes (switchboard-core checks them).
            b.push(id.len() as u8);
            b.extend_from_slice(id.as_bytes());
        }
        for n in [g.seg.first, g.seg.last, g.seg.bytes, g.seg.newest_ms, g.end] {
            b.extend_from_slice(&n.to_le_bytes());
        }
        b.extend_from_slice(&(g.index.len() as u32).to_le_bytes());
        for &(seq, offset) in &g.index {
            b.extend_from_slice(&seq.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
        }
        slots.push(b.len());
        b.extend_from_slice(&[0; 8]);
    }
    let header_len = b.len() + 4;
    b[12..16].copy_from_slice(&(header_len as u32).to_le_bytes());
    let mut at = header_len as u64;
    for (slot, g) in slots.iter().zip(&s.groups) {
        b[*slot..*slot + 8].copy_from_slice(&at.to_le_bytes());
        at += g.hashes.len() as u64 * 8 + 4;
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    for g in &s.groups {
        let start = b.len();
        for h in &g.hashes {
            b.extend_from_slice(&h.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b[start..]);
        b.extend_from_slice(&crc.to_le_bytes());
    }
    b
}

/// The summary in `file` (of `file_len` bytes), header only, if it is whole, of this version
/// and self-consistent, with a hash block of the right size per group; `None` otherwise (the caller
/// reads the segment instead).
pub(super) fn read(file: &File, file_len: u64) -> Option<Summary> {
    let mut lead = [0; LEAD];
    file.read_exact_at(&mut lead, 0).ok()?;
    if &lead[..8] != MAGIC || lead[8..12] != VERSION.to_le_bytes() {
        return None;
    }
    let header_len = u64::from(u32::from_le_bytes(lead[12..16].try_into().ok()?));
    if header_len > file_len.min(MAX_HEADER) || header_len < LEAD as u64 + 4 {
        return None;
    }
    let mut header = vec![0; header_len as usize];
    file.read_exact_at(&mut header, 0).ok()?;
    let s = decode(&header)?;
    // The blocks follow the header back to back, one hash per record, to the file's end.
    let mut at = Some(header_len);
    for g in &s.groups {
        let n = g.seg.last - g.seg.first + 1;
        at = at
            .filter(|&at| at == g.hashes_at)
            .and_then(|at| at.checked_add(n.checked_mul(8)?.checked_add(4)?));
    }
    (at == Some(file_len)).then_some(s)
}

/// The hashes of a group's `count` records from its block at `at`, if the block is whole.
pub(super) fn read_hashes(path: &Path, at: u64, count: u64) -> Option<Vec<u64>> {
    let file = File::open(path).ok()?;
    let mut block = vec![0; usize::try_from(count.checked_mul(8)?.checked_add(4)?).ok()?];
    file.read_exact_at(&mut block, at).ok()?;
    let (hashes, crc) = block.split_at(block.len() - 4);
    if crc32c::crc32c(hashes).to_le_bytes() != crc {
        return None;
    }
    Some(
        hashes
            .chunks_exact(8)
            .map(|h| u64::from_le_bytes(h.try_into().unwrap_or_default()))
            .collect(),
    )
}

/// The header in `bytes` (exactly the header, CRC included).
fn decode(bytes: &[u8]) -> Option<Summary> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let mut r = Reader(body);
    if r.take(8)? != MAGIC || r.u32()? != VERSION {
        return None;
    }
    let _header_len = r.u32()?;
    let id = r.u64()?;
    let len = r.u64()?;
    let key_id = r.u64()?;
    let count = r.u32()?;
    let mut groups = Vec::new();
    for _ in 0..count {
        let tenant = TenantId::new(r.id()?).ok()?;
        let group = GroupId::new(r.id()?).ok()?;
        let seg = SegGroup {
            first: r.u64()?,
            last: r.u64()?,
            bytes: r.u64()?,
            newest_ms: r.u64()?,
        };
        let end = r.u64()?;
        let entries = r.u32()?;
        let mut index = Vec::new();
        for _ in 0..entries {
            index.push((r.u64()?, r.u64()?));
        }
        let hashes_at = r.u64()?;
        let g = GroupSummary {
            key: (tenant, group),
            seg,
            end,
            index,
            hashes: Vec::new(),
            hashes_at,
        };
        if !consistent(&g, len) {
            return None;
        }
        groups.push(g);
    }
    r.0.is_empty().then_some(Summary {
        id,
        len,
        key_id,
        groups,
    })
}

/// What a summary written by this code always satisfies: the group's first record has the
/// first index entry, entries ascend, and everything lies inside the segment.
fn consistent(g: &GroupSummary, len: u64) -> bool {
    let Some(&(first_seq, _)) = g.index.first() else {
        return false;
    };
    first_seq == g.seg.first
        && g.seg.first <= g.seg.last
        && g.index.last().is_some_and(|&(seq, _)| seq <= g.seg.last)
        && g.index
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
        && g.index.iter().all(|&(_, offset)| offset < g.end)
        && g.end <= len
        && g.seg.bytes <= len
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn id(&mut self) -> Option<&'a str> {
        let n = self.take(1)?[0];
        std::str::from_utf8(self.take(usize::from(n))?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_ids::{g, t};

    fn sample() -> Summary {
        let group = |name, first, last, end, index: Vec<(u64, u64)>| GroupSummary {
            key: (t("acme"), g(name)),
            seg: SegGroup {
                first,
                last,
                bytes: 100 * (last - first + 1),
                newest_ms: 42,
            },
            end,
            index,
            hashes: (first..=last).map(|s| s * 1_000_003).collect(),
            hashes_at: 0,
        };
        Summary {
            id: 4,
            len: 5000,
            key_id: 99,
            groups: vec![
                group("a", 3, 9, 4000, vec![(3, 0), (7, 2000)]),
                group("b", 1, 1, 200, vec![(1, 100)]),
            ],
        }
    }

    fn write(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.idx");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    fn read_bytes(bytes: &[u8]) -> Option<Summary> {
        let (_dir, path) = write(bytes);
        read(&File::open(&path).unwrap(), bytes.len() as u64)
    }

    /// What `read` gives back: everything but the hashes, which stay in the file.
    fn header_of(s: &Summary) -> Summary {
        let mut s = s.clone();
        for g in &mut s.groups {
            g.hashes.clear();
        }
        s
    }

    #[test]
    fn a_summary_reads_back_and_its_hash_blocks_too() {
        let bytes = encode(&sample());
        let (_dir, path) = write(&bytes);
        let got = read(&File::open(&path).unwrap(), bytes.len() as u64).unwrap();
        let mut want = header_of(&sample());
        for (w, g) in want.groups.iter_mut().zip(&got.groups) {
            w.hashes_at = g.hashes_at;
        }
        assert_eq!(got, want);
        for (g, s) in got.groups.iter().zip(&sample().groups) {
            let n = g.seg.last - g.seg.first + 1;
            assert_eq!(read_hashes(&path, g.hashes_at, n), Some(s.hashes.clone()));
        }
    }

    #[test]
    fn any_damage_to_the_header_is_refused_and_to_a_block_is_caught() {
        let bytes = encode(&sample());
        let header_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        for cut in 0..header_len {
            assert_eq!(read_bytes(&bytes[..cut]), None, "cut at {cut}");
        }
        for cut in header_len..bytes.len() {
            // A cut block: the header says where the blocks end, past the file's end.
            assert_eq!(read_bytes(&bytes[..cut]), None, "cut at {cut}");
        }
        for bit in 0..header_len * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(read_bytes(&damaged), None, "bit {bit}");
        }
        let s = read_bytes(&bytes).unwrap();
        for bit in header_len * 8..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let (_dir, path) = write(&damaged);
            let whole = s.groups.iter().all(|g| {
                let n = g.seg.last - g.seg.first + 1;
                read_hashes(&path, g.hashes_at, n).is_some()
            });
            assert!(!whole, "bit {bit}");
        }
    }

    #[test]
    fn an_inconsistent_summary_is_refused_even_with_good_crcs() {
        let mut s = sample();
        s.groups[0].index = vec![(4, 0)];
        assert_eq!(
            read_bytes(&encode(&s)),
            None,
            "first entry is not the first record"
        );
        let mut s = sample();
        s.groups[1].end = 6000;
        assert_eq!(read_bytes(&encode(&s)), None, "past the segment's end");
        let mut s = sample();
        s.groups[0].hashes.pop();
        assert_eq!(read_bytes(&encode(&s)), None, "a hash short");
    }

    #[test]
    fn a_summary_of_another_version_is_refused() {
        let mut bytes = encode(&sample());
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(read_bytes(&bytes), None);
    }
}
