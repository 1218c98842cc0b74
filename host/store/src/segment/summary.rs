//! A sealed segment's summary (`<id>.idx` next to `<id>.seg`): what opening the log would
//! otherwise learn by reading the whole segment, so a sealed segment is not read at open.
//!
//! | bytes      | field                                                             |
//! |------------|-------------------------------------------------------------------|
//! | 8          | magic `SBSEGIDX`                                                  |
//! | 4          | summary format version (1), LE                                    |
//! | 8          | the segment's id, LE (a summary under another segment's name is   |
//! |            | not that segment's)                                               |
//! | 8          | the segment's length in bytes, LE                                 |
//! | 4          | group count, LE                                                   |
//! | per group  | tenant and group id (u8 length each), first seq, last seq, bytes, |
//! |            | newest `sent_at_ms`, end offset of its last record (u64 each),    |
//! |            | index entry count (u32), entries (seq u64, offset u64)            |
//! | 4          | CRC32C of everything before, LE                                   |
//!
//! A summary is a cache of the segment, never the only copy of anything: one that is
//! missing, torn, of another version, inconsistent, or names a length the segment no longer
//! has is ignored, and the segment is read instead (and the summary written again).

use std::path::{Path, PathBuf};

use switchboard_core::{GroupId, TenantId};

use super::{GroupKey, SegGroup};

const MAGIC: &[u8; 8] = b"SBSEGIDX";
const VERSION: u32 = 1;

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Summary {
    pub id: u64,
    /// Length of the segment the summary was made from.
    pub len: u64,
    pub groups: Vec<GroupSummary>,
}

pub(super) fn encode(s: &Summary) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + s.groups.len() * 96);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&s.id.to_le_bytes());
    b.extend_from_slice(&s.len.to_le_bytes());
    b.extend_from_slice(&(s.groups.len() as u32).to_le_bytes());
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
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// The summary in `bytes`, if it is whole, of this version and self-consistent; `None`
/// otherwise (the caller reads the segment instead).
pub(super) fn decode(bytes: &[u8]) -> Option<Summary> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let mut r = Reader(body);
    if r.take(8)? != MAGIC || r.u32()? != VERSION {
        return None;
    }
    let id = r.u64()?;
    let len = r.u64()?;
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
        let g = GroupSummary {
            key: (tenant, group),
            seg,
            end,
            index,
        };
        if !consistent(&g, len) {
            return None;
        }
        groups.push(g);
    }
    r.0.is_empty().then_some(Summary { id, len, groups })
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
        Summary {
            id: 4,
            len: 5000,
            groups: vec![
                GroupSummary {
                    key: (t("acme"), g("a")),
                    seg: SegGroup {
                        first: 3,
                        last: 9,
                        bytes: 700,
                        newest_ms: 42,
                    },
                    end: 4000,
                    index: vec![(3, 0), (7, 2000)],
                },
                GroupSummary {
                    key: (t("acme"), g("b")),
                    seg: SegGroup {
                        first: 1,
                        last: 1,
                        bytes: 100,
                        newest_ms: 7,
                    },
                    end: 200,
                    index: vec![(1, 100)],
                },
            ],
        }
    }

    #[test]
    fn a_summary_reads_back_and_any_damage_is_refused() {
        let bytes = encode(&sample());
        assert_eq!(decode(&bytes), Some(sample()));
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode(&damaged), None, "bit {bit}");
        }
    }

    #[test]
    fn an_inconsistent_summary_is_refused_even_with_a_good_crc() {
        let mut s = sample();
        s.groups[0].index = vec![(4, 0)];
        assert_eq!(
            decode(&encode(&s)),
            None,
            "first entry is not the first record"
        );
        let mut s = sample();
        s.groups[1].end = 6000;
        assert_eq!(decode(&encode(&s)), None, "past the segment's end");
    }

    #[test]
    fn a_summary_of_another_version_is_refused() {
        let mut bytes = encode(&sample());
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        let body = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&bytes), None);
    }
}
