//! An impairing TCP proxy on loopback, for a bad link between a node and its NATS server:
//! the node connects to the proxy's address, the proxy connects to the server, and every
//! chunk it relays either way is held for a delay drawn from `delay..=delay + jitter`
//! (order kept, as TCP keeps it), while a flapper cuts every open connection at random
//! intervals (the client sees the connection die and reconnects through the proxy).
//!
//! Why no byte drops: TCP turns a lost segment into a retransmission, i.e. delay, and a
//! relay that silently dropped bytes would corrupt the protocol stream rather than model a
//! lossy network. Loss that TCP cannot hide shows up as a broken connection: the cuts.
//!
//! Bounds: each direction of a connection holds at most `QUEUE` chunks of at most
//! `CHUNK` bytes (past that the proxy stops reading, so TCP flow control pushes back).
//! The RNG is seeded; timing still depends on the scheduler, so a seed replays the
//! delay and cut draws, not the exact run.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Most bytes read at once.
const CHUNK: usize = 16 * 1024;
/// Most chunks waiting for their time, per direction of a connection.
const QUEUE: usize = 256;

/// What the proxy does to the link.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkFaults {
    /// Every chunk waits `delay..=delay + jitter`.
    pub delay: Duration,
    pub jitter: Duration,
    /// Every open connection is cut after an interval drawn from `cut_every` (none when
    /// `None`), again and again.
    pub cut_every: Option<(Duration, Duration)>,
}

/// Counters.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    pub cuts: AtomicU64,
    pub bytes: AtomicU64,
}

/// See the module docs. Dropping it stops the proxy and cuts its connections.
pub struct TcpProxy {
    pub addr: SocketAddr,
    pub stats: Arc<ProxyStats>,
    /// Bumped to cut every open connection.
    cut: watch::Sender<u64>,
    faults: Arc<Mutex<LinkFaults>>,
    tasks: Vec<JoinHandle<()>>,
}

impl TcpProxy {
    /// A proxy on a free loopback port in front of `upstream`.
    pub async fn start(upstream: SocketAddr, faults: LinkFaults, seed: u64) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ProxyStats::default());
        let (cut, cut_rx) = watch::channel(0u64);
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
        let faults = Arc::new(Mutex::new(faults));
        let accept = {
            let (stats, rng, faults) = (stats.clone(), rng.clone(), faults.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    stats.connections.fetch_add(1, Relaxed);
                    let (stats, rng, cut) = (stats.clone(), rng.clone(), cut_rx.clone());
                    let faults = faults.clone();
                    tokio::spawn(relay(client, upstream, faults, rng, stats, cut));
                }
            })
        };
        let flapper = {
            let (cut, stats, rng, faults) =
                (cut.clone(), stats.clone(), rng.clone(), faults.clone());
            tokio::spawn(async move {
                loop {
                    let every = faults.lock().unwrap().cut_every;
                    let Some((min, max)) = every else {
                        // Not cutting now: look again shortly (set_faults may arm it).
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let wait = {
                        let mut rng = rng.lock().unwrap();
                        min + (max - min).mul_f64(rng.gen::<f64>())
                    };
                    tokio::time::sleep(wait).await;
                    if faults.lock().unwrap().cut_every.is_some() {
                        stats.cuts.fetch_add(1, Relaxed);
                        cut.send_modify(|n| *n += 1);
                    }
                }
            })
        };
        TcpProxy {
            addr,
            stats,
            cut,
            faults,
            tasks: vec![accept, flapper],
        }
    }

    /// Changes what the proxy does from now on (chunks already queued keep their time).
    pub fn set_faults(&self, faults: LinkFaults) {
        *self.faults.lock().unwrap() = faults;
    }

    /// Cuts every open connection now.
    pub fn cut_all(&self) {
        self.stats.cuts.fetch_add(1, Relaxed);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut.send_modify(|n| *n += 1);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One connection: relays both ways until either side closes or the link is cut.
async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    faults: Arc<Mutex<LinkFaults>>,
    rng: Arc<Mutex<StdRng>>,
    stats: Arc<ProxyStats>,
    mut cut: watch::Receiver<u64>,
) {
    cut.borrow_and_update();
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let (up_tx, up_rx) = mpsc::channel(QUEUE);
    let (down_tx, down_rx) = mpsc::channel(QUEUE);
    // Whichever ends first (EOF, an error, a cut) ends the connection: both sockets drop.
    tokio::select! {
        _ = read_side(cr, up_tx, faults.clone(), rng.clone(), stats.clone()) => {}
        _ = write_side(up_rx, sw) => {}
        _ = read_side(sr, down_tx, faults, rng, stats) => {}
        _ = write_side(down_rx, cw) => {}
        _ = cut.changed() => {}
    }
}

async fn read_side(
    mut from: tokio::net::tcp::OwnedReadHalf,
    to: mpsc::Sender<(Instant, Vec<u8>)>,
    faults: Arc<Mutex<LinkFaults>>,
    rng: Arc<Mutex<StdRng>>,
    stats: Arc<ProxyStats>,
) {
    let mut buf = vec![0u8; CHUNK];
    let mut last_due = Instant::now();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        stats.bytes.fetch_add(n as u64, Relaxed);
        let delay = {
            let f = *faults.lock().unwrap();
            let mut rng = rng.lock().unwrap();
            f.delay + f.jitter.mul_f64(rng.gen::<f64>())
        };
        // Never before the previous chunk: a TCP stream stays in order.
        last_due = last_due.max(Instant::now() + delay);
        if to.send((last_due, buf[..n].to_vec())).await.is_err() {
            return;
        }
    }
}

async fn write_side(
    mut from: mpsc::Receiver<(Instant, Vec<u8>)>,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) {
    while let Some((due, bytes)) = from.recv().await {
        tokio::time::sleep_until(due).await;
        if to.write_all(&bytes).await.is_err() {
            return;
        }
    }
}
