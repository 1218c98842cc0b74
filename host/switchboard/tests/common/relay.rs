//! An impairing UDP relay for tests of clients on bad networks: clients connect to the
//! relay's address instead of the node's, and the relay forwards each datagram after
//! deciding, with a seeded RNG per direction, whether to drop it and how long to delay it
//! (`tc netem` style: loss, delay with jitter, and a share of datagrams held back long enough
//! for later ones to overtake them).
//!
//! Each client source address gets a flow with its own upstream socket, as a NAT gives each
//! client its own port: [`Relay::rebind`] moves every flow to a new upstream port (what the
//! node sees when a client's NAT rebinds), [`Relay::kill_flows`] silently drops everything on
//! the current flows while new ones pass (a client that moved to another network and comes
//! back from a new socket), [`Relay::kill_flows_toward_client`] only what the node sends.
//!
//! Userspace rather than `tc netem` in a network namespace: the node runs in the test
//! process, and this keeps the test free of root, veth pairs and namespaces. The RNG decides
//! per datagram in arrival order; the datagrams themselves depend on real timing (QUIC's
//! timers, the scheduler), so a seed replays the impairment pattern, not the exact run.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What one direction of the relay does to datagrams.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Every datagram's delay is drawn from `delay..=delay + jitter`.
    pub delay: Duration,
    pub jitter: Duration,
    /// Probability that a datagram is held back a further `1..=reorder_by`, so datagrams
    /// that arrive after it overtake it.
    pub reorder: f64,
    pub reorder_by: Duration,
}

impl Impairment {
    pub const CLEAN: Impairment = Impairment {
        loss: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        reorder: 0.0,
        reorder_by: Duration::ZERO,
    };

    /// `loss` with the reordering every lossy test uses: 2–4 ms each way, one datagram in
    /// ten held back up to 25 ms more.
    pub fn lossy(loss: f64) -> Impairment {
        Impairment {
            loss,
            delay: Duration::from_millis(2),
            jitter: Duration::from_millis(2),
            reorder: 0.1,
            reorder_by: Duration::from_millis(25),
        }
    }
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct DirectionStats {
    /// Datagrams that reached the relay.
    pub received: AtomicU64,
    /// Dropped by the loss draw.
    pub dropped: AtomicU64,
    /// Dropped because their flow was killed.
    pub blackholed: AtomicU64,
    /// Held back by the reorder draw.
    pub held_back: AtomicU64,
    /// Sent after a datagram that reached the relay later than they did.
    pub overtaken: AtomicU64,
    /// Sent on.
    pub forwarded: AtomicU64,
}

/// A snapshot of [`DirectionStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub received: u64,
    pub dropped: u64,
    pub blackholed: u64,
    pub held_back: u64,
    pub overtaken: u64,
    pub forwarded: u64,
}

impl DirectionStats {
    pub fn counts(&self) -> Counts {
        Counts {
            received: self.received.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            blackholed: self.blackholed.load(Relaxed),
            held_back: self.held_back.load(Relaxed),
            overtaken: self.overtaken.load(Relaxed),
            forwarded: self.forwarded.load(Relaxed),
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} in, {} dropped ({:.1}%), {} held back, {} overtaken, {} blackholed, {} out",
            self.received,
            self.dropped,
            100.0 * self.dropped as f64 / self.received.max(1) as f64,
            self.held_back,
            self.overtaken,
            self.blackholed,
            self.forwarded
        )
    }
}

/// A datagram waiting for its time.
struct Job {
    due: Instant,
    /// Arrival order at the relay, in this direction.
    arrival: u64,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// One direction: the draws, the counters and the queue of delayed datagrams.
struct Direction {
    impairment: Impairment,
    rng: Mutex<StdRng>,
    next_arrival: AtomicU64,
    stats: Arc<DirectionStats>,
    queue: mpsc::UnboundedSender<Job>,
}

impl Direction {
    fn new(impairment: Impairment, seed: u64) -> (Arc<Direction>, JoinHandle<()>) {
        let (queue, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(DirectionStats::default());
        let sender = tokio::spawn(send_when_due(rx, stats.clone()));
        let d = Direction {
            impairment,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            next_arrival: AtomicU64::new(0),
            stats,
            queue,
        };
        (Arc::new(d), sender)
    }

    /// Drops `bytes` or queues them for `to` through `socket`, `extra` later than drawn.
    fn pass(&self, socket: &Arc<UdpSocket>, to: SocketAddr, bytes: &[u8], extra: Duration) {
        self.stats.received.fetch_add(1, Relaxed);
        let imp = &self.impairment;
        let delay = {
            let mut rng = self.rng.lock().unwrap();
            if rng.gen_bool(imp.loss) {
                self.stats.dropped.fetch_add(1, Relaxed);
                return;
            }
            let mut delay = imp.delay + imp.jitter.mul_f64(rng.gen::<f64>());
            if rng.gen_bool(imp.reorder) {
                self.stats.held_back.fetch_add(1, Relaxed);
                delay += imp.reorder_by.mul_f64(rng.gen_range(0.04..=1.0));
            }
            delay + extra
        };
        let _ = self.queue.send(Job {
            due: Instant::now() + delay,
            arrival: self.next_arrival.fetch_add(1, Relaxed),
            socket: socket.clone(),
            to,
            bytes: bytes.to_vec(),
        });
    }
}

/// Sends each queued datagram at its due time (ties in arrival order), counting overtakes.
async fn send_when_due(mut rx: mpsc::UnboundedReceiver<Job>, stats: Arc<DirectionStats>) {
    struct Due(Job);
    impl PartialEq for Due {
        fn eq(&self, o: &Self) -> bool {
            (self.0.due, self.0.arrival) == (o.0.due, o.0.arrival)
        }
    }
    impl Eq for Due {}
    impl PartialOrd for Due {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Due {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            (self.0.due, self.0.arrival).cmp(&(o.0.due, o.0.arrival))
        }
    }
    let mut heap: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut highest_sent: Option<u64> = None;
    loop {
        let next_due = heap.peek().map(|Reverse(d)| d.0.due);
        tokio::select! {
            job = rx.recv() => match job {
                Some(job) => heap.push(Reverse(Due(job))),
                None => return,
            },
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                let Reverse(Due(job)) = heap.pop().expect("peeked");
                if highest_sent.is_some_and(|h| h > job.arrival) {
                    stats.overtaken.fetch_add(1, Relaxed);
                }
                highest_sent = highest_sent.max(Some(job.arrival));
                // A full socket buffer is one more loss; QUIC recovers either way.
                if job.socket.send_to(&job.bytes, job.to).await.is_ok() {
                    stats.forwarded.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

/// One client source address and its upstream socket.
struct Flow {
    upstream: Arc<UdpSocket>,
    reader: JoinHandle<()>,
    /// Killed toward the node / toward the client: everything that way is dropped.
    dead_to_node: Arc<AtomicBool>,
    dead_to_client: Arc<AtomicBool>,
    /// Datagrams from the node on this upstream socket.
    from_node: Arc<AtomicU64>,
    /// How much later than drawn the client's 1-RTT packets go to the node.
    one_rtt_delay: Duration,
}

/// See the module docs. Dropping it stops the relay.
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    pub seed: u64,
    node: SocketAddr,
    front: Arc<UdpSocket>,
    flows: Arc<Mutex<HashMap<SocketAddr, Flow>>>,
    to_node: Arc<Direction>,
    to_client: Arc<Direction>,
    /// For the next flow: see [`Relay::delay_next_hello`].
    hold_one_rtt: Arc<Mutex<Option<Duration>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    /// A relay in front of `node`; `seed` drives both directions' draws.
    pub async fn start(
        node: SocketAddr,
        to_node: Impairment,
        to_client: Impairment,
        seed: u64,
    ) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let (to_node, up_sender) = Direction::new(to_node, seed);
        let (to_client, down_sender) = Direction::new(to_client, seed ^ 0x9e37_79b9_7f4a_7c15);
        let flows: Arc<Mutex<HashMap<SocketAddr, Flow>>> = Arc::default();
        let hold_one_rtt: Arc<Mutex<Option<Duration>>> = Arc::default();
        let mut relay = Relay {
            addr,
            seed,
            node,
            front: front.clone(),
            flows: flows.clone(),
            to_node: to_node.clone(),
            to_client: to_client.clone(),
            hold_one_rtt: hold_one_rtt.clone(),
            tasks: vec![up_sender, down_sender],
        };
        let front_reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((len, client)) = front.recv_from(&mut buf).await {
                let (upstream, dead, one_rtt_delay) = {
                    let mut flows = flows.lock().unwrap();
                    let flow = match flows.get(&client) {
                        Some(f) => f,
                        None => {
                            let mut f = open_flow(&front, client, &to_client);
                            if let Some(d) = hold_one_rtt.lock().unwrap().take() {
                                f.one_rtt_delay = d;
                            }
                            flows.entry(client).or_insert(f)
                        }
                    };
                    let d = flow.one_rtt_delay;
                    (flow.upstream.clone(), flow.dead_to_node.clone(), d)
                };
                if dead.load(Relaxed) {
                    to_node.stats.received.fetch_add(1, Relaxed);
                    to_node.stats.blackholed.fetch_add(1, Relaxed);
                    continue;
                }
                // A short header (bit 7 clear): a 1-RTT packet, sent after the handshake.
                let one_rtt = len > 0 && buf[0] & 0x80 == 0;
                let extra = if one_rtt {
                    one_rtt_delay
                } else {
                    Duration::ZERO
                };
                to_node.pass(&upstream, node, &buf[..len], extra);
            }
        });
        relay.tasks.push(front_reader);
        relay
    }

    /// Moves every flow to a new upstream socket (a new source port, as the node sees it).
    /// Datagrams still on their way to the old port are lost, as with a real NAT rebinding.
    pub fn rebind(&self) {
        let mut flows = self.flows.lock().unwrap();
        for (client, flow) in flows.iter_mut() {
            let new = open_flow(&self.front, *client, &self.to_client);
            new.dead_to_node
                .store(flow.dead_to_node.load(Relaxed), Relaxed);
            new.dead_to_client
                .store(flow.dead_to_client.load(Relaxed), Relaxed);
            let old = std::mem::replace(flow, new);
            old.reader.abort();
        }
    }

    /// Drops everything on the current flows from now on, both ways; clients that show up
    /// from a new source address get a new, working flow.
    pub fn kill_flows(&self) {
        for flow in self.flows.lock().unwrap().values() {
            flow.dead_to_node.store(true, Relaxed);
            flow.dead_to_client.store(true, Relaxed);
        }
    }

    /// On the next flow that opens, delays the client's 1-RTT (short header) packets by
    /// `delay` while its handshake passes: the connection is up, but its `Hello` reaches the
    /// node `delay` late.
    pub fn delay_next_hello(&self, delay: Duration) {
        *self.hold_one_rtt.lock().unwrap() = Some(delay);
    }

    /// Drops what the node sends on the current flows from now on, while what their clients
    /// send still arrives: a path that died one way (the client's requests reach the node,
    /// the answers are lost).
    pub fn kill_flows_toward_client(&self) {
        for flow in self.flows.lock().unwrap().values() {
            flow.dead_to_client.store(true, Relaxed);
        }
    }

    /// Datagrams the node sent to the flows' current upstream sockets: after
    /// [`Relay::rebind`], more than zero means the node follows the client to its new
    /// address.
    pub fn node_sent_to_current_ports(&self) -> u64 {
        let flows = self.flows.lock().unwrap();
        flows.values().map(|f| f.from_node.load(Relaxed)).sum()
    }

    /// Every flow so far: the client's source address and how many datagrams the node sent
    /// to the flow's current upstream socket.
    pub fn flows(&self) -> Vec<(SocketAddr, u64)> {
        let flows = self.flows.lock().unwrap();
        flows
            .iter()
            .map(|(client, f)| (*client, f.from_node.load(Relaxed)))
            .collect()
    }

    pub fn to_node(&self) -> Counts {
        self.to_node.stats.counts()
    }

    pub fn to_client(&self) -> Counts {
        self.to_client.stats.counts()
    }
}

/// A new upstream socket for `client`, and the task that relays what the node sends to it.
fn open_flow(front: &Arc<UdpSocket>, client: SocketAddr, to_client: &Arc<Direction>) -> Flow {
    let std = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    std.set_nonblocking(true).unwrap();
    let upstream = Arc::new(UdpSocket::from_std(std).unwrap());
    let dead_to_node = Arc::new(AtomicBool::new(false));
    let dead_to_client = Arc::new(AtomicBool::new(false));
    let from_node = Arc::new(AtomicU64::new(0));
    let reader = {
        let (upstream, dead, from_node) =
            (upstream.clone(), dead_to_client.clone(), from_node.clone());
        let (front, to_client) = (front.clone(), to_client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((len, _)) = upstream.recv_from(&mut buf).await {
                from_node.fetch_add(1, Relaxed);
                if dead.load(Relaxed) {
                    to_client.stats.received.fetch_add(1, Relaxed);
                    to_client.stats.blackholed.fetch_add(1, Relaxed);
                    continue;
                }
                to_client.pass(&front, client, &buf[..len], Duration::ZERO);
            }
        })
    };
    Flow {
        upstream,
        reader,
        dead_to_node,
        dead_to_client,
        from_node,
        one_rtt_delay: Duration::ZERO,
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for flow in self.flows.lock().unwrap().values() {
            flow.reader.abort();
        }
    }
}
