//! Splitting a byte stream into frames: the sans-IO `FrameReader` and the async `read_frame`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use switchboard_wire::{read_frame, ClientFrame, FrameReader, WireError, LEN_PREFIX};
use tokio::io::{AsyncRead, ReadBuf};

const MAX: u32 = 1024;

/// Three frames back to back, and the bodies a reader must return.
fn stream() -> (Vec<u8>, Vec<Bytes>) {
    let frames = [
        switchboard_wire::encode_client(&ClientFrame::Ping { request_id: 1 }),
        switchboard_wire::encode_client(&ClientFrame::Send {
            request_id: 2,
            group: "general".into(),
            client_msg_id: "c-1".into(),
            body: Bytes::from(vec![0xab; 300]),
        }),
        // An empty frame is well-formed framing (the decoder refuses it later).
        Bytes::from_static(&[0, 0, 0, 0]),
    ];
    let bytes = frames.iter().flat_map(|f| f.iter().copied()).collect();
    let bodies = frames.iter().map(|f| f.slice(LEN_PREFIX..)).collect();
    (bytes, bodies)
}

/// Feeds `bytes` in chunks of the given sizes (cycled) and collects the frames.
fn frames_in_chunks(bytes: &[u8], sizes: &[usize]) -> Vec<Bytes> {
    let mut r = FrameReader::new(MAX);
    let mut out = Vec::new();
    let mut rest = bytes;
    for &n in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        r.push(chunk);
        while let Some(f) = r.next_frame().unwrap() {
            out.push(f);
        }
    }
    r.finish().unwrap();
    out
}

#[test]
fn frame_reader_any_chunking() {
    let (bytes, bodies) = stream();
    // Every split point for two chunks...
    for cut in 0..=bytes.len() {
        let mut r = FrameReader::new(MAX);
        let mut out = Vec::new();
        for chunk in [&bytes[..cut], &bytes[cut..]] {
            r.push(chunk);
            while let Some(f) = r.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, bodies, "cut at {cut}");
        r.finish().unwrap();
    }
    // ...and assorted repeating chunk sizes, including one byte at a time.
    for sizes in [&[1][..], &[2], &[3, 1, 4, 1, 5, 9, 2, 6], &[7], &[4096]] {
        assert_eq!(frames_in_chunks(&bytes, sizes), bodies, "chunks {sizes:?}");
    }
}

#[test]
fn frame_reader_waits_for_whole_frames() {
    let mut r = FrameReader::new(MAX);
    assert!(r.next_frame().unwrap().is_none());
    r.push(&[0, 0, 0]);
    assert!(r.next_frame().unwrap().is_none());
    r.push(&[3, b'a', b'b']);
    assert!(r.next_frame().unwrap().is_none());
    assert!(matches!(r.finish(), Err(WireError::Truncated)));
    r.push(b"c");
    assert_eq!(r.next_frame().unwrap().unwrap(), Bytes::from_static(b"abc"));
    assert_eq!(r.buffered(), 0);
    r.finish().unwrap();
}

#[test]
fn frame_reader_accepts_exactly_the_limit() {
    let mut r = FrameReader::new(4);
    r.push(&[0, 0, 0, 4, 1, 2, 3, 4, 0, 0, 0, 5]);
    assert_eq!(&r.next_frame().unwrap().unwrap()[..], &[1, 2, 3, 4]);
    assert!(matches!(
        r.next_frame(),
        Err(WireError::FrameTooLarge { len: 5, max: 4 })
    ));
}

/// Hands out at most `chunk` bytes per read, then either EOF or `then_fail`.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
    then_fail: bool,
}

impl Trickle {
    fn new(data: &[u8], chunk: usize) -> Self {
        Self {
            data: data.to_vec(),
            pos: 0,
            chunk,
            then_fail: false,
        }
    }
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let left = self.data.len() - self.pos;
        if left == 0 && self.then_fail {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset")));
        }
        let n = left.min(self.chunk).min(buf.remaining());
        buf.put_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

async fn read_all(r: &mut Trickle) -> Result<Vec<Bytes>, WireError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    while let Some(f) = read_frame(r, &mut buf, MAX).await? {
        out.push(f);
    }
    Ok(out)
}

#[tokio::test]
async fn read_frame_reads_every_frame_then_none() {
    let (bytes, bodies) = stream();
    for chunk in [1, 2, 5, 64, 100_000] {
        let got = read_all(&mut Trickle::new(&bytes, chunk)).await.unwrap();
        assert_eq!(got, bodies, "chunk {chunk}");
    }
    // The slice reader tokio provides, too.
    let mut buf = BytesMut::new();
    let mut r = &bytes[..];
    for body in &bodies {
        assert_eq!(
            &read_frame(&mut r, &mut buf, MAX).await.unwrap().unwrap(),
            body
        );
    }
    assert!(read_frame(&mut r, &mut buf, MAX).await.unwrap().is_none());
}

#[tokio::test]
async fn read_frame_eof_cases() {
    let (bytes, _) = stream();
    // Nothing at all: a clean end.
    assert!(read_all(&mut Trickle::new(&[], 8))
        .await
        .unwrap()
        .is_empty());
    // Inside the prefix, inside the first body, inside the second frame.
    for cut in [2, LEN_PREFIX + 1, bytes.len() - 5] {
        let err = read_all(&mut Trickle::new(&bytes[..cut], 3))
            .await
            .unwrap_err();
        assert!(matches!(err, WireError::Truncated), "cut {cut}: {err}");
    }
}

#[tokio::test]
async fn read_frame_refuses_a_large_prefix_before_reading_the_body() {
    // The reader fails if asked for more than the prefix: the error proves nothing more was read.
    let mut r = Trickle::new(&(MAX + 1).to_be_bytes(), 1);
    r.then_fail = true;
    let mut buf = BytesMut::new();
    let err = read_frame(&mut r, &mut buf, MAX).await.unwrap_err();
    assert!(
        matches!(err, WireError::FrameTooLarge { len, max: MAX } if len == u64::from(MAX) + 1),
        "{err}"
    );
    assert!(buf.capacity() < MAX as usize, "reserved {}", buf.capacity());
    // A huge prefix reserves nothing either.
    let mut r = Trickle::new(&[0xff; 4], 4);
    r.then_fail = true;
    let mut buf = BytesMut::new();
    let err = read_frame(&mut r, &mut buf, MAX).await.unwrap_err();
    assert!(matches!(err, WireError::FrameTooLarge { .. }), "{err}");
    assert!(buf.capacity() < MAX as usize, "reserved {}", buf.capacity());
}

#[tokio::test]
async fn read_frame_passes_io_errors_on() {
    let (bytes, _) = stream();
    let mut r = Trickle::new(&bytes[..10], 4);
    r.then_fail = true;
    let err = read_all(&mut r).await.unwrap_err();
    assert!(
        matches!(&err, WireError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "{err}"
    );
    assert_eq!(err.code(), switchboard_core::ErrorCode::MalformedFrame);
}
