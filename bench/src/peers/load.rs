//! The client behaviour every system gets: one publisher, N subscribers, a body that carries
//! its send time and index, and one tally of what every subscriber received.
//!
//! - **Windowed** (throughput): the publisher keeps at most `window` messages outstanding,
//!   where a message stops being outstanding when *every* subscriber has it (end to end:
//!   independent of whether a system acknowledges publishes). It encodes as many messages as
//!   it has permits for, up to 64 KiB, and writes them in one call.
//! - **Fixed rate** (latency): message `i` is due at `t0 + i / rate`; at each wake-up the
//!   publisher writes every message that is due, and latency is measured from the due time
//!   (so a late publisher shows up as latency, no coordinated omission).
//!
//! Each delivery is checked against a per-subscriber bitmap (duplicates) and counted; what
//! did not arrive by the end of the drain is a loss.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

pub type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// Body header: send (or due) time in ns since the run's start, then the message index.
pub const HEADER: usize = 16;

#[derive(Default)]
struct SubStats {
    seen: Vec<u64>,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    last_index: Option<u64>,
    latencies_us: Vec<u32>,
}

pub struct Tally {
    start: Instant,
    fanout: usize,
    /// Per message: how many subscribers have it.
    complete: Vec<AtomicU16>,
    window: Option<Arc<Semaphore>>,
    /// Messages below this index are warm-up: counted, but not in the latency figures.
    warmup: u64,
    subs: Vec<Mutex<SubStats>>,
    delivered: AtomicU64,
    last_delivery_ns: AtomicU64,
}

impl Tally {
    pub fn new(
        start: Instant,
        fanout: usize,
        max_messages: usize,
        window: Option<Arc<Semaphore>>,
        warmup: u64,
    ) -> Arc<Tally> {
        Arc::new(Tally {
            start,
            fanout,
            complete: (0..max_messages).map(|_| AtomicU16::new(0)).collect(),
            window,
            warmup,
            subs: (0..fanout).map(|_| Mutex::default()).collect(),
            delivered: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
        })
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Subscriber `sub` received `body`.
    pub fn deliver(&self, sub: usize, body: &[u8]) {
        if body.len() < HEADER {
            return;
        }
        let sent = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
        let index = u64::from_be_bytes(body[8..16].try_into().expect("8 bytes"));
        let now = self.now_ns();
        {
            let mut s = self.subs[sub].lock().expect("not poisoned");
            let (word, bit) = ((index / 64) as usize, index % 64);
            if s.seen.len() <= word {
                s.seen.resize(word + 1024, 0);
            }
            if s.seen[word] & (1 << bit) != 0 {
                s.duplicates += 1;
                return;
            }
            s.seen[word] |= 1 << bit;
            s.received += 1;
            if s.last_index.is_some_and(|l| index < l) {
                s.out_of_order += 1;
            }
            s.last_index = Some(index);
            if index >= self.warmup {
                s.latencies_us
                    .push((now.saturating_sub(sent) / 1_000).min(u32::MAX as u64) as u32);
            }
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
        if let Some(c) = self.complete.get(index as usize) {
            if c.fetch_add(1, Ordering::Relaxed) as usize + 1 == self.fanout {
                if let Some(w) = &self.window {
                    w.add_permits(1);
                }
            }
        }
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// What subscriber `sub` received: (messages, index of the last one).
    pub fn received(&self, sub: usize) -> (u64, Option<u64>) {
        let s = self.subs[sub].lock().expect("not poisoned");
        (s.received, s.last_index)
    }

    /// Waits until `want` deliveries arrived, or none did for `idle`. Returns those missing.
    pub async fn drain_deliveries(&self, want: u64, idle: Duration) -> u64 {
        let mut last = self.delivered();
        let mut since = Instant::now();
        loop {
            let now = self.delivered();
            if now >= want {
                return 0;
            }
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() > idle {
                return want - now;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `published` messages reached every subscriber, or nothing arrived for
    /// `idle`. Returns the deliveries missing.
    pub async fn drain(&self, published: u64, idle: Duration) -> u64 {
        self.drain_deliveries(published * self.fanout as u64, idle)
            .await
    }

    pub fn last_delivery(&self) -> Duration {
        Duration::from_nanos(self.last_delivery_ns.load(Ordering::Relaxed))
    }

    /// (all latencies sorted, duplicates, out-of-order deliveries).
    pub fn collect(&self) -> (Vec<u32>, u64, u64) {
        let mut lat = Vec::new();
        let (mut dups, mut ooo) = (0, 0);
        for s in &self.subs {
            let s = s.lock().expect("not poisoned");
            lat.extend_from_slice(&s.latencies_us);
            dups += s.duplicates;
            ooo += s.out_of_order;
        }
        lat.sort_unstable();
        (lat, dups, ooo)
    }
}

/// Appends one publish of `body` to `buf` in the system's own framing.
pub trait Encode {
    fn encode(&mut self, buf: &mut BytesMut, index: u64, body: &[u8]);
}

pub fn body(buf: &mut Vec<u8>, payload: usize, sent_ns: u64, index: u64) {
    buf.clear();
    buf.put_u64(sent_ns);
    buf.put_u64(index);
    buf.resize(payload.max(HEADER), b'x');
}

const WRITE_BATCH: usize = 64 * 1024;

/// Windowed publishing for `duration` (or `max` messages). Returns messages published.
#[allow(clippy::too_many_arguments)]
pub async fn publish_windowed<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    enc: &mut dyn Encode,
    tally: &Tally,
    permits: &Semaphore,
    payload: usize,
    duration: Duration,
    max: u64,
) -> Result<u64> {
    let deadline = Instant::now() + duration;
    let mut buf = BytesMut::with_capacity(WRITE_BATCH + 1024);
    let mut b = Vec::with_capacity(payload);
    let mut i = 0u64;
    while i < max && Instant::now() < deadline {
        permits.acquire().await?.forget();
        loop {
            body(&mut b, payload, tally.now_ns(), i);
            enc.encode(&mut buf, i, &b);
            i += 1;
            if i >= max || buf.len() >= WRITE_BATCH {
                break;
            }
            match permits.try_acquire() {
                Ok(p) => p.forget(),
                Err(_) => break,
            }
        }
        w.write_all(&buf).await?;
        buf.clear();
    }
    w.flush().await?;
    Ok(i)
}

/// Fixed-rate publishing: `rate` messages/s for `duration`. Returns messages published.
pub async fn publish_fixed<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    enc: &mut dyn Encode,
    tally: &Tally,
    payload: usize,
    rate: f64,
    duration: Duration,
) -> Result<u64> {
    let total = (rate * duration.as_secs_f64()) as u64;
    let interval_ns = 1e9 / rate;
    let t0 = tally.now_ns();
    let due = |i: u64| t0 + (i as f64 * interval_ns) as u64;
    let mut buf = BytesMut::with_capacity(WRITE_BATCH + 1024);
    let mut b = Vec::with_capacity(payload);
    let mut i = 0u64;
    while i < total {
        let now = tally.now_ns();
        while i < total && due(i) <= now && buf.len() < WRITE_BATCH {
            body(&mut b, payload, due(i), i);
            enc.encode(&mut buf, i, &b);
            i += 1;
        }
        if !buf.is_empty() {
            w.write_all(&buf).await?;
            buf.clear();
        }
        if i < total {
            let next = due(i);
            let now = tally.now_ns();
            if next > now {
                tokio::time::sleep(Duration::from_nanos(next - now)).await;
            }
        }
    }
    w.flush().await?;
    Ok(total)
}

pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Acknowledged publishes (durable scenario): per message its send time, and a window that
/// an ack (not a delivery) frees.
pub struct AckTally {
    start: std::time::Instant,
    sent_ns: Vec<AtomicU64>,
    pub window: Arc<Semaphore>,
    acked: AtomicU64,
    errors: AtomicU64,
    last_ack_ns: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

impl AckTally {
    pub fn new(start: Instant, max_messages: usize, window: usize) -> Arc<AckTally> {
        Arc::new(AckTally {
            start,
            sent_ns: (0..max_messages).map(|_| AtomicU64::new(0)).collect(),
            window: Arc::new(Semaphore::new(window)),
            acked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_ack_ns: AtomicU64::new(0),
            latencies_us: Mutex::default(),
        })
    }

    /// Message `index` was acknowledged (`ok`) or refused.
    pub fn ack(&self, index: u64, ok: bool) {
        let now = self.start.elapsed().as_nanos() as u64;
        if ok {
            let sent = self
                .sent_ns
                .get(index as usize)
                .map_or(now, |s| s.load(Ordering::Relaxed));
            self.latencies_us
                .lock()
                .expect("not poisoned")
                .push((now.saturating_sub(sent) / 1_000).min(u32::MAX as u64) as u32);
            self.acked.fetch_add(1, Ordering::Relaxed);
            self.last_ack_ns.fetch_max(now, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.window.add_permits(1);
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn last_ack(&self) -> Duration {
        Duration::from_nanos(self.last_ack_ns.load(Ordering::Relaxed))
    }

    /// Waits until `published` are answered or nothing is for `idle`; returns those missing.
    pub async fn drain(&self, published: u64, idle: Duration) -> u64 {
        let mut last = 0;
        let mut since = Instant::now();
        loop {
            let now = self.acked() + self.errors();
            if now >= published {
                return 0;
            }
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() > idle {
                return published - now;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn latencies(&self) -> Vec<u32> {
        let mut l = self.latencies_us.lock().expect("not poisoned").clone();
        l.sort_unstable();
        l
    }
}

/// An encoder that also records each message's send time (from its body) for [`AckTally`].
pub struct Recording<E> {
    pub inner: E,
    pub tally: Arc<AckTally>,
}

impl<E: Encode> Encode for Recording<E> {
    fn encode(&mut self, buf: &mut BytesMut, index: u64, body: &[u8]) {
        if let Some(s) = self.tally.sent_ns.get(index as usize) {
            s.store(
                u64::from_be_bytes(body[..8].try_into().expect("8 bytes")),
                Ordering::Relaxed,
            );
        }
        self.inner.encode(buf, index, body);
    }
}

/// Reads more of a subscriber's stream into `buf`; false once it ended, including the way
/// a server killed at the end of a run ends it (no TLS close_notify, or a reset).
pub async fn read_more<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut bytes::BytesMut,
) -> anyhow::Result<bool> {
    use tokio::io::AsyncReadExt;
    match r.read_buf(buf).await {
        Ok(0) => Ok(false),
        Ok(_) => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}
