//! The offline outbox: sends not yet acknowledged, kept in a directory so that the next
//! client opening it (after an app restart too) sends them again with their `client_msg_id`.
//!
//! **Format.** One file per pending send, `<key>.msg`, where `key` is a 20-digit decimal
//! counter (file names sort in the order the app made the sends). A file is
//! `SBO1 | crc32 (LE) | group len (u16 LE) | group | id len (u16 LE) | id | body`, the CRC
//! covering everything after it. A file is written as `<key>.tmp`, synced, then renamed, so a
//! crash never leaves a half-written `.msg`; acknowledging a send deletes its file. A file that
//! fails its check (storage corruption) is renamed `<key>.bad`, kept for inspection and never
//! sent. One file per send keeps removal an unlink: no compaction, no rewrite of the rest.
//!
//! **Bounds.** At most [`OutboxLimits::max_entries`] sends and [`OutboxLimits::max_bytes`] of
//! bodies; past either, adding fails with [`ClientError::OutboxFull`].

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::{ClientError, OutboxLimits};

const MAGIC: &[u8; 4] = b"SBO1";
const HEADER: usize = 8;

/// A send kept in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingSend {
    pub(crate) group: String,
    pub(crate) client_msg_id: String,
    pub(crate) body: Bytes,
}

/// The outbox directory and what it holds (bodies stay on disk).
#[derive(Debug)]
pub(crate) struct Outbox {
    dir: PathBuf,
    limits: OutboxLimits,
    /// key → body length.
    entries: BTreeMap<u64, u64>,
    bytes: u64,
    next_key: u64,
}

impl Outbox {
    /// Opens (creating) `dir` and indexes the pending sends in it.
    pub(crate) fn open(dir: &Path, limits: OutboxLimits) -> Result<Self, ClientError> {
        fs::create_dir_all(dir).map_err(|e| io_at(dir, e))?;
        let mut outbox = Self {
            dir: dir.to_owned(),
            limits,
            entries: BTreeMap::new(),
            bytes: 0,
            next_key: 1,
        };
        for entry in fs::read_dir(dir).map_err(|e| io_at(dir, e))? {
            let path = entry.map_err(|e| io_at(dir, e))?.path();
            let Some(key) = key_of(&path, "msg").or_else(|| key_of(&path, "tmp")) else {
                continue;
            };
            outbox.next_key = outbox.next_key.max(key + 1);
            if path.extension().is_some_and(|e| e == "tmp") {
                // A write the app did not finish: its send never returned, so drop it.
                let _ = fs::remove_file(&path);
                continue;
            }
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| decode(&b))
            {
                Ok(send) => {
                    let len = send.body.len() as u64;
                    outbox.entries.insert(key, len);
                    outbox.bytes += len;
                }
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason, "corrupt outbox entry set aside");
                    let _ = fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
        Ok(outbox)
    }

    /// Stores a send durably; returns its key.
    pub(crate) fn add(&mut self, send: &PendingSend) -> Result<u64, ClientError> {
        let len = send.body.len() as u64;
        if self.entries.len() >= self.limits.max_entries
            || self.bytes.saturating_add(len) > self.limits.max_bytes
        {
            return Err(ClientError::OutboxFull {
                entries: self.entries.len(),
                bytes: self.bytes,
            });
        }
        let key = self.next_key;
        let bytes = encode(send)?;
        let tmp = self.path(key, "tmp");
        let done = self.path(key, "msg");
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &done)?;
            // The rename itself is durable once the directory is synced (not on every OS
            // possible; where it fails, the file is still complete, only maybe not yet there).
            if let Ok(d) = fs::File::open(&self.dir) {
                let _ = d.sync_all();
            }
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_at(&done, e));
        }
        self.next_key += 1;
        self.entries.insert(key, len);
        self.bytes += len;
        Ok(key)
    }

    /// Reads a pending send back.
    pub(crate) fn get(&self, key: u64) -> Result<PendingSend, ClientError> {
        let path = self.path(key, "msg");
        let bytes = fs::read(&path).map_err(|e| io_at(&path, e))?;
        decode(&bytes).map_err(|reason| {
            ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {reason}", path.display()),
            ))
        })
    }

    /// Forgets a send (acknowledged, or refused for good).
    pub(crate) fn remove(&mut self, key: u64) -> Result<(), ClientError> {
        let Some(len) = self.entries.remove(&key) else {
            return Ok(());
        };
        self.bytes -= len;
        let path = self.path(key, "msg");
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_at(&path, e)),
            _ => Ok(()),
        }
    }

    /// Keys of the pending sends, oldest first.
    pub(crate) fn keys(&self) -> Vec<u64> {
        self.entries.keys().copied().collect()
    }

    fn path(&self, key: u64, ext: &str) -> PathBuf {
        self.dir.join(format!("{key:020}.{ext}"))
    }
}

fn key_of(path: &Path, ext: &str) -> Option<u64> {
    if path.extension()? != ext {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    (stem.len() == 20).then(|| stem.parse().ok()).flatten()
}

fn io_at(path: &Path, e: std::io::Error) -> ClientError {
    ClientError::Io(std::io::Error::new(
        e.kind(),
        format!("outbox {}: {e}", path.display()),
    ))
}

fn encode(send: &PendingSend) -> Result<Vec<u8>, ClientError> {
    let too_long = |what| ClientError::Protocol(format!("{what} is too long for the outbox"));
    let group_len = u16::try_from(send.group.len()).map_err(|_| too_long("group"))?;
    let id_len = u16::try_from(send.client_msg_id.len()).map_err(|_| too_long("message id"))?;
    let mut out = Vec::with_capacity(HEADER + 4 + send.group.len() + send.body.len() + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&group_len.to_le_bytes());
    out.extend_from_slice(send.group.as_bytes());
    out.extend_from_slice(&id_len.to_le_bytes());
    out.extend_from_slice(send.client_msg_id.as_bytes());
    out.extend_from_slice(&send.body);
    let crc = crc32fast::hash(&out[HEADER..]);
    out[4..HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<PendingSend, String> {
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err("not an outbox entry".into());
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[4..HEADER]);
    let rest = &bytes[HEADER..];
    if crc32fast::hash(rest) != u32::from_le_bytes(crc) {
        return Err("checksum mismatch".into());
    }
    let (group, rest) = take_str(rest)?;
    let (client_msg_id, body) = take_str(rest)?;
    Ok(PendingSend {
        group,
        client_msg_id,
        body: Bytes::copy_from_slice(body),
    })
}

fn take_str(b: &[u8]) -> Result<(String, &[u8]), String> {
    let truncated = || "truncated".to_owned();
    let len_bytes = b.get(..2).ok_or_else(truncated)?;
    let len = usize::from(u16::from_le_bytes([len_bytes[0], len_bytes[1]]));
    let s = b.get(2..2 + len).ok_or_else(truncated)?;
    let s = String::from_utf8(s.to_vec()).map_err(|_| "not UTF-8".to_owned())?;
    Ok((s, &b[2 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(group: &str, id: &str, body: &[u8]) -> PendingSend {
        PendingSend {
            group: group.into(),
            client_msg_id: id.into(),
            body: Bytes::copy_from_slice(body),
        }
    }

    fn limits(max_entries: usize, max_bytes: u64) -> OutboxLimits {
        OutboxLimits {
            max_entries,
            max_bytes,
        }
    }

    #[test]
    fn pending_sends_survive_reopening_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
        let a = o.add(&send("g", "m1", b"one")).unwrap();
        let b = o.add(&send("h", "m2", b"")).unwrap();
        let c = o.add(&send("g", "m3", b"three")).unwrap();
        o.remove(b).unwrap();
        drop(o);
        let mut o = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
        assert_eq!(o.keys(), vec![a, c]);
        assert_eq!(o.get(a).unwrap(), send("g", "m1", b"one"));
        assert_eq!(o.get(c).unwrap(), send("g", "m3", b"three"));
        // New keys come after every old one, even removed ones.
        let d = o.add(&send("g", "m4", b"4")).unwrap();
        assert!(d > c);
    }

    #[test]
    fn bounds_refuse_with_outbox_full() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), limits(2, 10)).unwrap();
        o.add(&send("g", "a", b"12345")).unwrap();
        let e = o.add(&send("g", "b", b"123456")).unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::OutboxFull {
                    entries: 1,
                    bytes: 5
                }
            ),
            "{e}"
        );
        let k = o.add(&send("g", "c", b"12345")).unwrap();
        let e = o.add(&send("g", "d", b"")).unwrap_err();
        assert!(
            matches!(e, ClientError::OutboxFull { entries: 2, .. }),
            "{e}"
        );
        o.remove(k).unwrap();
        o.add(&send("g", "d", b"")).unwrap();
    }

    #[test]
    fn corrupt_and_unfinished_files_are_never_sent() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
        let good = o.add(&send("g", "ok", b"fine")).unwrap();
        let bad = o.add(&send("g", "flipped", b"data")).unwrap();
        drop(o);
        let bad_path = dir.path().join(format!("{bad:020}.msg"));
        let mut bytes = fs::read(&bad_path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&bad_path, bytes).unwrap();
        fs::write(dir.path().join(format!("{:020}.tmp", bad + 1)), b"SBO1").unwrap();
        fs::write(dir.path().join("notes.txt"), b"not ours").unwrap();

        let mut o = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
        assert_eq!(o.keys(), vec![good]);
        assert!(dir.path().join(format!("{bad:020}.bad")).exists());
        assert!(!dir.path().join(format!("{:020}.tmp", bad + 1)).exists());
        assert!(o.add(&send("g", "n", b"")).unwrap() > bad + 1);
    }

    #[test]
    fn decode_refuses_what_encode_did_not_make() {
        for bytes in [&b""[..], b"SBO1", b"XXXX\0\0\0\0", b"SBO1\0\0\0\0\x05\0ab"] {
            assert!(decode(bytes).is_err(), "{bytes:?}");
        }
        let ok = encode(&send("g", "i", b"b")).unwrap();
        assert_eq!(decode(&ok).unwrap(), send("g", "i", b"b"));
        assert!(decode(&ok[..ok.len() - 2]).is_err());
    }
}
