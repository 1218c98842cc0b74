//! Value encodings: hand-written, big-endian, each starting with a version byte so the format
//! can change without guessing. Anything that does not decode is [`StoreError::Corrupt`].
//!
//! | record  | layout after the version byte                                               |
//! |---------|-----------------------------------------------------------------------------|
//! | tenant  | secret (rest)                                                               |
//! | group   | flags u8 (bit 0 = open), max_members u32, member count u32                  |
//! | member, user→group | (empty value, no version byte: the key is the record)            |
//! | message | sent_at_ms u64, lane u8, sender len u8, sender, client_msg_id len u32, id, body (rest) |
//! | dedupe, cursor | seq u64                                                              |
//! | receipt | kind u8 (0 delivered, 1 read), at_ms u64                                    |

use bytes::Bytes;
use sled::IVec;
use switchboard_core::{Lane, ReceiptKind, TenantId, UserId};

use crate::{GroupMeta, NewMessage, StoreError, StoredMessage, StoredReceipt, TenantRecord};

const V1: u8 = 1;

/// Names of the trees, for errors.
pub(super) const DIRECTORY: &str = "directory";
pub(super) const LOG: &str = "log";
pub(super) const DEDUPE: &str = "dedupe";
pub(super) const CURSORS: &str = "cursors";
pub(super) const RECEIPTS: &str = "receipts";

pub(super) fn corrupt(tree: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        tree,
        detail: detail.into(),
    }
}

/// Reads a value front to back.
struct Reader<'a> {
    tree: &'static str,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the version byte.
    fn new(tree: &'static str, buf: &'a [u8]) -> Result<Self, StoreError> {
        match buf.split_first() {
            Some((&V1, rest)) => Ok(Self { tree, buf: rest }),
            Some((v, _)) => Err(corrupt(tree, format!("unknown record version {v}"))),
            None => Err(corrupt(tree, "empty record")),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.buf.len() < n {
            return Err(corrupt(self.tree, "record truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn str(&mut self, len: usize) -> Result<&'a str, StoreError> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| corrupt(self.tree, "string is not UTF-8"))
    }

    /// Everything left.
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails unless everything was read.
    fn finish(self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(corrupt(self.tree, "trailing bytes"))
        }
    }
}

/// Decodes an id stored in a key or value.
pub(super) fn parse_id<T>(
    tree: &'static str,
    bytes: &[u8],
    parse: impl FnOnce(&str) -> Result<T, switchboard_core::IdError>,
) -> Result<T, StoreError> {
    let s = std::str::from_utf8(bytes).map_err(|_| corrupt(tree, "id is not UTF-8"))?;
    parse(s).map_err(|e| corrupt(tree, format!("bad id: {e}")))
}

// --- tenant ---

pub(super) fn encode_tenant(secret: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + secret.len());
    v.push(V1);
    v.extend_from_slice(secret);
    v
}

pub(super) fn decode_tenant(id: TenantId, value: &[u8]) -> Result<TenantRecord, StoreError> {
    let mut r = Reader::new(DIRECTORY, value)?;
    Ok(TenantRecord {
        id,
        secret: r.rest().to_vec(),
    })
}

// --- group ---

/// A group's record: its settings and how many members it has (kept with the member set,
/// in the same transaction, so the limit check never scans).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GroupRecord {
    pub(super) meta: GroupMeta,
    pub(super) members: u32,
}

const GROUP_OPEN: u8 = 1;

pub(super) fn encode_group(g: &GroupRecord) -> [u8; 10] {
    let mut v = [0u8; 10];
    v[0] = V1;
    v[1] = if g.meta.open { GROUP_OPEN } else { 0 };
    v[2..6].copy_from_slice(&g.meta.max_members.to_be_bytes());
    v[6..10].copy_from_slice(&g.members.to_be_bytes());
    v
}

pub(super) fn decode_group(value: &[u8]) -> Result<GroupRecord, StoreError> {
    let mut r = Reader::new(DIRECTORY, value)?;
    let flags = r.u8()?;
    if flags & !GROUP_OPEN != 0 {
        return Err(corrupt(
            DIRECTORY,
            format!("unknown group flags {flags:#x}"),
        ));
    }
    let max_members = r.u32()?;
    let members = r.u32()?;
    r.finish()?;
    Ok(GroupRecord {
        meta: GroupMeta {
            open: flags & GROUP_OPEN != 0,
            max_members,
        },
        members,
    })
}

// --- message ---

pub(super) fn encode_message(m: &NewMessage<'_>) -> Vec<u8> {
    let sender = m.sender.as_str();
    let id = m.client_msg_id.as_bytes();
    let id_len = u32::try_from(id.len()).expect("client_msg_id shorter than 4 GiB");
    let mut v = Vec::with_capacity(1 + 8 + 1 + 1 + sender.len() + 4 + id.len() + m.body.len());
    v.push(V1);
    v.extend_from_slice(&m.sent_at_ms.to_be_bytes());
    v.push(m.lane.rank());
    v.push(sender.len() as u8);
    v.extend_from_slice(sender.as_bytes());
    v.extend_from_slice(&id_len.to_be_bytes());
    v.extend_from_slice(id);
    v.extend_from_slice(m.body);
    v
}

/// Decodes a message; the body shares the value's buffer instead of copying it.
pub(super) fn decode_message(seq: u64, value: IVec) -> Result<StoredMessage, StoreError> {
    let mut r = Reader::new(LOG, &value)?;
    let sent_at_ms = r.u64()?;
    let lane = r.u8()?;
    let lane = Lane::from_rank(lane).ok_or_else(|| StoreError::Corrupt {
        tree: LOG,
        detail: format!("unknown lane {lane}"),
    })?;
    let sender_len = r.u8()?;
    let sender = parse_id(LOG, r.take(usize::from(sender_len))?, UserId::new)?;
    let id_len = r.u32()?;
    let client_msg_id = r.str(id_len as usize)?.to_owned();
    let body_start = value.len() - r.rest().len();
    let body = Bytes::from_owner(value).slice(body_start..);
    Ok(StoredMessage {
        seq,
        lane,
        sender,
        client_msg_id,
        sent_at_ms,
        body,
    })
}

// --- dedupe, cursor ---

pub(super) fn encode_seq(seq: u64) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[0] = V1;
    v[1..].copy_from_slice(&seq.to_be_bytes());
    v
}

pub(super) fn decode_seq(tree: &'static str, value: &[u8]) -> Result<u64, StoreError> {
    let mut r = Reader::new(tree, value)?;
    let seq = r.u64()?;
    r.finish()?;
    Ok(seq)
}

// --- receipt ---

pub(super) fn encode_receipt(kind: ReceiptKind, at_ms: u64) -> [u8; 10] {
    let mut v = [0u8; 10];
    v[0] = V1;
    v[1] = match kind {
        ReceiptKind::Delivered => 0,
        ReceiptKind::Read => 1,
    };
    v[2..].copy_from_slice(&at_ms.to_be_bytes());
    v
}

pub(super) fn decode_receipt(value: &[u8]) -> Result<(ReceiptKind, u64), StoreError> {
    let mut r = Reader::new(RECEIPTS, value)?;
    let kind = match r.u8()? {
        0 => ReceiptKind::Delivered,
        1 => ReceiptKind::Read,
        k => return Err(corrupt(RECEIPTS, format!("unknown receipt kind {k}"))),
    };
    let at_ms = r.u64()?;
    r.finish()?;
    Ok((kind, at_ms))
}

pub(super) fn receipt(user: UserId, value: &[u8]) -> Result<StoredReceipt, StoreError> {
    let (kind, at_ms) = decode_receipt(value)?;
    Ok(StoredReceipt { user, kind, at_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn round_trips() {
        let g = GroupRecord {
            meta: GroupMeta {
                open: true,
                max_members: 7,
            },
            members: 3,
        };
        assert_eq!(decode_group(&encode_group(&g)).unwrap(), g);
        assert_eq!(decode_seq(DEDUPE, &encode_seq(u64::MAX)).unwrap(), u64::MAX);
        for kind in [ReceiptKind::Delivered, ReceiptKind::Read] {
            assert_eq!(
                decode_receipt(&encode_receipt(kind, 42)).unwrap(),
                (kind, 42)
            );
        }
        let t = TenantId::new("t").unwrap();
        assert_eq!(
            decode_tenant(t.clone(), &encode_tenant(b"s3cret"))
                .unwrap()
                .secret,
            b"s3cret"
        );
        let sender = user("alice");
        let new = NewMessage {
            sender: &sender,
            lane: Lane::Low,
            client_msg_id: "héllo",
            sent_at_ms: 9,
            body: b"hi",
        };
        let m = decode_message(5, IVec::from(encode_message(&new))).unwrap();
        assert_eq!(
            m,
            StoredMessage {
                seq: 5,
                lane: Lane::Low,
                sender,
                client_msg_id: "héllo".into(),
                sent_at_ms: 9,
                body: Bytes::from_static(b"hi")
            }
        );
    }

    /// Every malformed value is `Corrupt`, never a panic.
    #[test]
    fn malformed_values_are_corrupt() {
        fn check(result: Result<impl std::fmt::Debug, StoreError>, expect: &str) {
            match result {
                Err(StoreError::Corrupt { detail, .. }) => assert_eq!(detail, expect),
                other => panic!("expected Corrupt({expect:?}), got {other:?}"),
            }
        }
        check(decode_seq(CURSORS, &[]), "empty record");
        check(
            decode_seq(CURSORS, &[2, 0, 0, 0, 0, 0, 0, 0, 1]),
            "unknown record version 2",
        );
        check(decode_seq(CURSORS, &[1, 0, 0]), "record truncated");
        check(
            decode_seq(CURSORS, &[1, 0, 0, 0, 0, 0, 0, 0, 1, 9]),
            "trailing bytes",
        );
        check(
            decode_group(&[1, 2, 0, 0, 0, 1, 0, 0, 0, 0]),
            "unknown group flags 0x2",
        );
        check(
            decode_receipt(&[1, 7, 0, 0, 0, 0, 0, 0, 0, 0]),
            "unknown receipt kind 7",
        );
        check(
            decode_message(1, IVec::from(&[1u8, 0, 0][..])),
            "record truncated",
        );
        // lane out of range
        check(
            decode_message(
                1,
                IVec::from(&[1u8, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0][..]),
            ),
            "unknown lane 3",
        );
        // sender length 3 but only 2 bytes
        check(
            decode_message(
                1,
                IVec::from(&[1u8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, b'a', b'b'][..]),
            ),
            "record truncated",
        );
        // sender is not a valid id
        check(
            decode_message(
                1,
                IVec::from(&[1u8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, b'/', 0, 0, 0, 0][..]),
            ),
            "bad id: id contains '/'; allowed: ASCII letters, digits, '-', '_', '.', ':', '@'",
        );
        // client_msg_id is not UTF-8
        check(
            decode_message(
                1,
                IVec::from(&[1u8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, b'a', 0, 0, 0, 1, 0xff][..]),
            ),
            "string is not UTF-8",
        );
    }
}
