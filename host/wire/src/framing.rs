//! Length-prefixed framing: every stream carries `u32 big-endian length` + that many bytes.
//!
//! [`FrameReader`] is the sans-IO core (push bytes in, pull frames out); [`read_frame`] is a
//! thin async driver over any `AsyncRead`, such as quinn's `RecvStream`. Both refuse a frame
//! as soon as its prefix is seen to exceed the limit, before buffering its body.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::WireError;

/// Size of the length prefix in front of every frame: a big-endian `u32`.
pub const LEN_PREFIX: usize = 4;

/// Splits one whole frame off the front of `buf` if it is there. On `Ok(None)` it reserves
/// room for the rest of the announced frame, so a reader can fill `buf` without reallocating.
fn split_frame(buf: &mut BytesMut, max_frame_bytes: u32) -> Result<Option<Bytes>, WireError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if len > max_frame_bytes {
        return Err(WireError::FrameTooLarge {
            len: u64::from(len),
            max: max_frame_bytes,
        });
    }
    // `len <= max_frame_bytes`, so this is bounded by the limit (and fits usize on 32-bit).
    let total = LEN_PREFIX + len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(LEN_PREFIX);
    Ok(Some(buf.split_to(len as usize).freeze()))
}

/// A sans-IO framer: [`push`](Self::push) bytes as they arrive, then call
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)`.
///
/// After an error the stream is unusable (the framing is lost): close the connection.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_frame_bytes: u32,
}

impl FrameReader {
    /// A reader refusing frames longer than `max_frame_bytes` (not counting the prefix).
    pub fn new(max_frame_bytes: u32) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame_bytes,
        }
    }

    /// Appends bytes received from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame (without its prefix), `Ok(None)` if more bytes are needed, or
    /// `FrameTooLarge` as soon as an over-long prefix is complete.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, WireError> {
        split_frame(&mut self.buf, self.max_frame_bytes)
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Call when the stream ended: `Truncated` if it ended inside a frame.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Truncated)
        }
    }
}

/// Reads the next frame (without its prefix) from `r`.
///
/// `buf` carries bytes read past the end of one frame over to the next call: keep one per
/// stream. Returns `Ok(None)` on a clean end of stream between frames, `Truncated` on an end
/// of stream inside a frame, and `FrameTooLarge` as soon as the prefix is read, before the
/// body is read or buffer space is reserved for it.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max_frame_bytes: u32,
) -> Result<Option<Bytes>, WireError> {
    loop {
        if let Some(frame) = split_frame(buf, max_frame_bytes)? {
            return Ok(Some(frame));
        }
        if buf.capacity() == buf.len() {
            // Only reached before a prefix is complete; `split_frame` reserves for bodies.
            buf.reserve(LEN_PREFIX);
        }
        if r.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(WireError::Truncated)
            };
        }
    }
}
