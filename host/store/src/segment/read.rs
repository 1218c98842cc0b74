//! Reading records out of segment files: a buffered positional reader, and read plans made
//! under the shard's lock and carried out after it is released.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use switchboard_core::{GroupId, TenantId};

use super::record::{self, corrupt, Parsed, View, PREFIX};
use crate::{StoreError, StoredMessage};

/// Bytes read from a file at once when scanning (records are usually far smaller).
const CHUNK: usize = 64 << 10;

/// Reads records from one segment: the first `written` bytes from its file, anything after
/// from `pending` (appended, not yet written out).
pub(crate) struct SegmentReader<'a> {
    file: &'a File,
    written: u64,
    pending: &'a [u8],
    max_record: usize,
    buf: Vec<u8>,
    buf_at: u64,
}

impl<'a> SegmentReader<'a> {
    pub(crate) fn new(file: &'a File, written: u64, pending: &'a [u8], max_record: usize) -> Self {
        Self {
            file,
            written,
            pending,
            max_record,
            buf: Vec::new(),
            buf_at: 0,
        }
    }

    /// Bytes from `pos` on, holding at least the whole record there if the data does; `None`
    /// at the end of the data.
    pub(crate) fn bytes_at(&mut self, pos: u64) -> Result<Option<&[u8]>, StoreError> {
        if pos >= self.written {
            let p = (pos - self.written) as usize;
            return Ok((p < self.pending.len()).then(|| &self.pending[p..]));
        }
        let mut need = PREFIX;
        loop {
            let end = pos + need as u64;
            if pos < self.buf_at || end > self.buf_at + self.buf.len() as u64 {
                self.refill(pos, need)?;
            }
            let start = (pos - self.buf_at) as usize;
            let more = match record::parse(&self.buf[start..], self.max_record) {
                // Read on only if the file holds that much: otherwise it is a torn record.
                Parsed::Short { need: n } if n > need && pos + n as u64 <= self.written => n,
                _ => break,
            };
            need = more;
        }
        let start = (pos - self.buf_at) as usize;
        Ok(Some(&self.buf[start..]))
    }

    fn refill(&mut self, pos: u64, need: usize) -> Result<(), StoreError> {
        let available = (self.written - pos) as usize;
        let len = need.max(CHUNK).min(available);
        self.buf.resize(len, 0);
        self.file
            .read_exact_at(&mut self.buf, pos)
            .map_err(|e| StoreError::Io(format!("segment read: {e}")))?;
        self.buf_at = pos;
        Ok(())
    }
}

/// One segment's share of a read: where the group's records start in it, and its newest
/// seq there.
pub(crate) struct Part {
    pub file: Arc<File>,
    pub written: u64,
    /// The appended bytes after `written`, when the read needs them.
    pub pending: Vec<u8>,
    pub start: u64,
    pub last_seq: u64,
}

/// A read of a group's seqs `from..=upto`, at most `limit` messages.
pub(crate) struct Plan {
    pub parts: Vec<Part>,
    pub from: u64,
    pub upto: u64,
    pub limit: usize,
    pub max_record: usize,
}

impl Plan {
    pub(crate) fn run(
        &self,
        tenant: &TenantId,
        group: &GroupId,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut out = Vec::with_capacity(self.limit.min(64));
        self.walk(tenant, group, &mut |view| {
            out.push(view.to_message()?);
            Ok(out.len() < self.limit)
        })?;
        Ok(out)
    }

    /// Calls `f` with each of the group's records in `from..=upto`, in order, until it
    /// returns `false`.
    pub(crate) fn walk(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        f: &mut dyn FnMut(View<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        'parts: for part in &self.parts {
            let mut reader =
                SegmentReader::new(&part.file, part.written, &part.pending, self.max_record);
            let mut pos = part.start;
            while let Some(bytes) = reader.bytes_at(pos)? {
                let (view, len) = match record::parse(bytes, self.max_record) {
                    Parsed::Record(view, len) => (view, len),
                    Parsed::Short { .. } => return Err(corrupt(format!("torn record at {pos}"))),
                    Parsed::Bad(why) => return Err(corrupt(format!("record at {pos}: {why}"))),
                };
                pos += len as u64;
                if !view.is_of(tenant, group) {
                    continue;
                }
                if view.seq > self.upto {
                    break 'parts;
                }
                if view.seq >= self.from && !f(view)? {
                    break 'parts;
                }
                if view.seq >= part.last_seq {
                    continue 'parts;
                }
            }
        }
        Ok(())
    }
}
