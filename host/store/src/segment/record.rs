//! One record of a segment file: a message with everything [`StoredMessage`] needs, framed
//! so a reader can tell a whole record from a torn or damaged one.
//!
//! | bytes | field                                                           |
//! |-------|-----------------------------------------------------------------|
//! | 4     | `len`: bytes after this 8-byte prefix (header and body), LE     |
//! | 4     | CRC32C of `len`'s 4 bytes, the header and the body, LE          |
//! | 1     | format version (1)                                              |
//! | 1     | lane rank                                                       |
//! | 8     | seq, LE                                                         |
//! | 8     | sent_at_ms, LE                                                  |
//! | 1 + n | tenant id (length-prefixed; ids are at most 64 bytes)           |
//! | 1 + n | group id                                                        |
//! | 1 + n | sender id                                                       |
//! | 4 + n | client message id (any UTF-8), LE length                        |
//! | rest  | body                                                            |
//!
//! The CRC covers the length, so a damaged length is caught rather than trusted; a length
//! above the configured maximum is damage too (no valid record is that long). Nothing is
//! padded or aligned: a record is one contiguous run of bytes, and a segment is records back
//! to back.

use bytes::Bytes;
use switchboard_core::{GroupId, Lane, TenantId, UserId};

use crate::{NewMessage, StoreError, StoredMessage};

/// Bytes before the header: length and CRC.
pub(crate) const PREFIX: usize = 8;
const VERSION: u8 = 1;
/// Fixed part of the header: version, lane, seq, sent_at_ms.
const FIXED: usize = 1 + 1 + 8 + 8;

/// Bytes a record of `msg` takes, prefix included.
pub(crate) fn encoded_len(tenant: &TenantId, group: &GroupId, msg: &NewMessage<'_>) -> usize {
    PREFIX
        + FIXED
        + 1
        + tenant.as_str().len()
        + 1
        + group.as_str().len()
        + 1
        + msg.sender.as_str().len()
        + 4
        + msg.client_msg_id.len()
        + msg.body.len()
}

/// Appends the record of `msg` with `seq` to `out`.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    tenant: &TenantId,
    group: &GroupId,
    seq: u64,
    msg: &NewMessage<'_>,
) {
    let start = out.len();
    let len = encoded_len(tenant, group, msg) - PREFIX;
    out.reserve(PREFIX + len);
    // The caller checked the record against the maximum (far below 4 GiB).
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(VERSION);
    out.push(msg.lane.rank());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&msg.sent_at_ms.to_le_bytes());
    for id in [tenant.as_str(), group.as_str(), msg.sender.as_str()] {
        out.push(id.len() as u8);
        out.extend_from_slice(id.as_bytes());
    }
    out.extend_from_slice(&(msg.client_msg_id.len() as u32).to_le_bytes());
    out.extend_from_slice(msg.client_msg_id.as_bytes());
    out.extend_from_slice(msg.body);
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&out[start..start + 4]),
        &out[start + PREFIX..],
    );
    out[start + 4..start + PREFIX].copy_from_slice(&crc.to_le_bytes());
}

/// A record read in place.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    pub lane: Lane,
    pub seq: u64,
    pub sent_at_ms: u64,
    pub tenant: &'a str,
    pub group: &'a str,
    pub sender: &'a str,
    pub client_msg_id: &'a str,
    pub body: &'a [u8],
}

impl View<'_> {
    pub(crate) fn is_of(&self, tenant: &TenantId, group: &GroupId) -> bool {
        self.group == group.as_str() && self.tenant == tenant.as_str()
    }

    pub(crate) fn to_message(self) -> Result<StoredMessage, StoreError> {
        Ok(StoredMessage {
            seq: self.seq,
            lane: self.lane,
            sender: UserId::new(self.sender).map_err(|e| corrupt(e.to_string()))?,
            client_msg_id: self.client_msg_id.to_owned(),
            sent_at_ms: self.sent_at_ms,
            body: Bytes::copy_from_slice(self.body),
        })
    }
}

/// What the bytes at a position hold.
#[derive(Debug)]
pub(crate) enum Parsed<'a> {
    /// A whole, intact record of `len` bytes (prefix included).
    Record(View<'a>, usize),
    /// The bytes end inside a record (or before its prefix): a torn write at the end of a
    /// segment, or a reader's buffer that must be refilled.
    Short { need: usize },
    /// A damaged record: bad CRC, impossible length or an undecodable header.
    Bad(&'static str),
}

/// Reads the record at the start of `buf`. `max_len` bounds a record (prefix included).
pub(crate) fn parse(buf: &[u8], max_len: usize) -> Parsed<'_> {
    if buf.len() < PREFIX {
        return Parsed::Short { need: PREFIX };
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let total = PREFIX + len;
    if len < FIXED || total > max_len {
        return Parsed::Bad("impossible length");
    }
    if buf.len() < total {
        return Parsed::Short { need: total };
    }
    let stored = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[..4]), &buf[PREFIX..total]);
    if crc != stored {
        return Parsed::Bad("checksum mismatch");
    }
    match header(&buf[PREFIX..total]) {
        Some(view) => Parsed::Record(view, total),
        None => Parsed::Bad("undecodable header"),
    }
}

fn header(b: &[u8]) -> Option<View<'_>> {
    if b[0] != VERSION {
        return None;
    }
    let lane = Lane::from_rank(b[1])?;
    let seq = u64::from_le_bytes(b.get(2..10)?.try_into().ok()?);
    let sent_at_ms = u64::from_le_bytes(b.get(10..18)?.try_into().ok()?);
    let mut rest = &b[FIXED..];
    let mut id = || -> Option<&str> {
        let (&n, tail) = rest.split_first()?;
        let (s, tail) = tail.split_at_checked(usize::from(n))?;
        rest = tail;
        std::str::from_utf8(s).ok()
    };
    let (tenant, group, sender) = (id()?, id()?, id()?);
    let (n, tail) = rest.split_at_checked(4)?;
    let n = u32::from_le_bytes(n.try_into().ok()?) as usize;
    let (client_msg_id, body) = tail.split_at_checked(n)?;
    Some(View {
        lane,
        seq,
        sent_at_ms,
        tenant,
        group,
        sender,
        client_msg_id: std::str::from_utf8(client_msg_id).ok()?,
        body,
    })
}

pub(crate) fn corrupt(detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        tree: "segment",
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(body: &[u8]) -> Vec<u8> {
        let sender = UserId::new("ann").unwrap();
        let mut out = Vec::new();
        encode(
            &mut out,
            &TenantId::new("acme").unwrap(),
            &GroupId::new("general").unwrap(),
            7,
            &NewMessage {
                sender: &sender,
                lane: Lane::High,
                client_msg_id: "ü-1",
                sent_at_ms: 42,
                body,
            },
        );
        out
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let bytes = record(b"hello");
        let Parsed::Record(v, len) = parse(&bytes, 1 << 20) else {
            panic!("not a record");
        };
        assert_eq!(len, bytes.len());
        assert_eq!(
            (v.seq, v.lane, v.sent_at_ms, v.tenant, v.group, v.sender),
            (7, Lane::High, 42, "acme", "general", "ann")
        );
        assert_eq!((v.client_msg_id, v.body), ("ü-1", &b"hello"[..]));
    }

    #[test]
    fn every_cut_is_short_and_every_flipped_bit_is_bad() {
        let bytes = record(b"some body bytes");
        for cut in 0..bytes.len() {
            assert!(
                matches!(parse(&bytes[..cut], 1 << 20), Parsed::Short { .. }),
                "cut at {cut}"
            );
        }
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            // A flipped length bit may also make the record look longer than the bytes.
            assert!(
                matches!(
                    parse(&damaged, 1 << 20),
                    Parsed::Bad(_) | Parsed::Short { .. }
                ),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn a_length_over_the_maximum_is_damage() {
        let bytes = record(&[0; 100]);
        assert!(matches!(parse(&bytes, 50), Parsed::Bad(_)));
    }
}
