//! A seeded, deterministic simulation of one node's routing: simulated clients, simulated
//! time, an in-memory store, and faults (failed flushes, slow and dead readers, full queues,
//! disconnects and resumes, presence changes, load shedding, policy swaps that move
//! messages between lanes). The node's routing decisions are the router's own
//! ([`GroupFanout`], [`SessionPlanner`], [`defers_background`]); this harness is the driver,
//! as `host/edge` is on a real node, and an oracle that checks the invariants of
//! ARCHITECTURE.md as it goes. A failure names its seed; `Sim::run(seed, config)` replays it.
//!
//! Used by this crate's tests (`tests/invariants.rs`), its `sim_rate` example (operations per
//! second, for docs/benchmarks.md) and the `routing_sim` fuzz target.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;

use bytes::Bytes;
use switchboard_core::{GroupId, Lane, PresenceState, TenantId, UserId};
use switchboard_router::{
    defers_background, Copy, GroupFanout, GroupLog, LogError, PlanItem, PlanStats, Planned,
    SessionPlanner, Subscriber, NUDGE_INTERVAL_MS,
};
use switchboard_store::{Appended, GroupMeta, MemStore, NewMessage, Store};
use switchboard_wire::{self as wire, order::PushOrder, DecodeLimits, Message, ServerFrame};

/// SplitMix64: small, fast, and the same sequence on every platform and crate version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `p` percent.
    pub fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// The shape of one run.
#[derive(Debug, Clone)]
pub struct Config {
    pub groups: usize,
    pub users: usize,
    /// Client operations before the run settles and is checked.
    pub steps: usize,
    /// Pushes a session's queue holds per stream (a full queue switches it to catch-up).
    pub queue_frames: usize,
    /// Most messages one log read returns (the driver's bounded catch-up batch).
    pub read_batch: usize,
    /// Groups with at least this many members defer their background members (0 = never).
    pub nudge_from_members: u32,
    /// Percent of flushes that fail.
    pub flush_failure_pct: u64,
    /// Fan out in subscription order (the benchmark's naive mode): no active-first phases.
    pub naive: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            groups: 4,
            users: 12,
            steps: 3_000,
            queue_frames: 4,
            read_batch: 5,
            nudge_from_members: 7,
            flush_failure_pct: 5,
            naive: false,
        }
    }
}

/// Longest a batch's background phase waits for its foreground copies (ms).
const FOREGROUND_GATE_MS: u64 = 50;
/// Most operations one fuzz input runs (the rest of a longer input is ignored).
const MAX_FUZZ_STEPS: usize = 4_096;
/// Frames a push stream may have in flight to a client that is not reading (flow control).
const WINDOW_FRAMES: usize = 16;

/// What one run observed.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// The seed that replays this run.
    pub seed: u64,
    /// Client operations performed (sends, reads, presence changes, disconnects, resumes).
    pub ops: u64,
    pub acked: u64,
    pub delivered: u64,
    pub nudges: u64,
    pub failed_flushes: u64,
    pub overflows: u64,
    pub gate_timeouts: u64,
    /// Invariant violations, each with the step it happened at.
    pub violations: Vec<String>,
}

struct Sub {
    session: u64,
    presence: Rc<Cell<PresenceState>>,
}

impl Subscriber for Sub {
    fn session_id(&self) -> u64 {
        self.session
    }
    fn presence(&self) -> PresenceState {
        self.presence.get()
    }
}

struct Group {
    id: GroupId,
    fanout: GroupFanout<Sub>,
    members: Vec<usize>,
}

/// A push waiting in a session's queue, with what the oracle needs to know about it.
struct Queued {
    item: PlanItem,
    /// The batch of a live copy.
    batch: Option<u64>,
}

struct Session {
    client: usize,
    presence: Rc<Cell<PresenceState>>,
    planner: SessionPlanner<usize>,
    queues: [VecDeque<Queued>; 4],
    catch_up: bool,
    /// When a nudge of each group was last written to this connection, and its seq.
    last_nudge: HashMap<String, (u64, u64)>,
    /// The newest seq of each group that a nudge handed to the planner named.
    nudge_asked: BTreeMap<String, u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reader {
    Fast,
    Slow,
    /// Reads nothing until it reconnects.
    Dead,
}

struct Client {
    user: UserId,
    groups: Vec<usize>,
    session: Option<u64>,
    reader: Reader,
    /// Frames on the wire, per push stream, not yet read.
    inbox: [VecDeque<Bytes>; 4],
    order: PushOrder,
    /// Highest seq handed to the app per group: its cursor, kept across reconnects.
    delivered: HashMap<usize, u64>,
    /// Sends not acknowledged yet: (group, client_msg_id, body).
    unacked: Vec<(usize, String, Bytes)>,
    next_id: u64,
}

/// A durable-pending append waiting for the flush.
struct Commit {
    group: usize,
    seq: u64,
    new: Option<Bytes>,
    lane: Lane,
    client: usize,
    /// The connection the send came on: its ack is lost if that connection is gone.
    session: Option<u64>,
    client_msg_id: String,
}

/// A batch whose background phase waits for its foreground copies.
struct Phase2 {
    batch: u64,
    published_ms: u64,
    items: Vec<(usize, u64, Lane, Bytes)>,
}

/// The log as one session's planner reads it.
struct SimLog<'a> {
    store: &'a MemStore,
    tenant: &'a TenantId,
    groups: &'a [Group],
    presence: PresenceState,
    shedding: bool,
    nudge_from: u32,
    read_batch: usize,
}

impl GroupLog<usize> for SimLog<'_> {
    fn head(&self, g: &usize) -> u64 {
        self.groups[*g].fanout.head()
    }
    fn defers(&self, g: &usize) -> bool {
        self.presence == PresenceState::Background
            && defers_background(
                self.groups[*g].members.len() as u32,
                self.nudge_from,
                self.shedding,
            )
    }
    fn read(&self, g: &usize, after: u64, upto: u64) -> Result<Vec<Message>, LogError> {
        let group = &self.groups[*g].id;
        let n = ((upto - after) as usize).min(self.read_batch);
        let msgs = self
            .store
            .read_after(self.tenant, group, after, n)
            .map_err(|e| LogError::Read(e.to_string()))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.seq <= upto)
            .map(|m| Message {
                group: group.to_string(),
                seq: m.seq,
                sender: m.sender.to_string(),
                client_msg_id: m.client_msg_id,
                sent_at_ms: m.sent_at_ms,
                body: m.body,
                lane: m.lane,
            })
            .collect())
    }
}

fn stream_of(lane: Lane) -> usize {
    match lane {
        Lane::High => 0,
        Lane::Normal => 1,
        Lane::Low => 2,
    }
}
const NOTICES: usize = 3;

/// One simulated node and its clients.
pub struct Sim {
    cfg: Config,
    rng: Rng,
    now_ms: u64,
    step: u64,
    store: MemStore,
    tenant: TenantId,
    groups: Vec<Group>,
    sessions: HashMap<u64, Session>,
    clients: Vec<Client>,
    commits: Vec<Commit>,
    phase2: VecDeque<Phase2>,
    /// Per batch: sessions that were in the foreground at its phase 1, and how many of their
    /// copies are not written (or dropped) yet.
    unwritten_fg: HashMap<u64, HashMap<u64, u32>>,
    /// Batches whose background phase ran on its deadline, not on its gate.
    expired: HashSet<u64>,
    next_batch: u64,
    next_session: u64,
    /// Policy version: which lanes messages get (a swap moves traffic between streams).
    policy: u64,
    shedding: bool,
    /// (group, sender, client_msg_id) → the seq it was acknowledged with.
    acks: BTreeMap<(usize, String, String), u64>,
    report: Report,
}

impl Sim {
    pub fn new(seed: u64, cfg: Config) -> Self {
        let mut rng = Rng::new(seed);
        let store = MemStore::new();
        let tenant = TenantId::new("t").expect("valid id");
        let mut groups: Vec<Group> = (0..cfg.groups)
            .map(|i| {
                let id = GroupId::new(&format!("g{i}")).expect("valid id");
                let meta = GroupMeta {
                    open: true,
                    max_members: 1_000,
                };
                store.create_group(&tenant, &id, meta).expect("new group");
                Group {
                    id,
                    fanout: GroupFanout::new(0),
                    members: Vec::new(),
                }
            })
            .collect();
        let mut clients = Vec::new();
        for u in 0..cfg.users {
            let user = UserId::new(&format!("u{u}")).expect("valid id");
            let mut mine = Vec::new();
            for (gi, g) in groups.iter_mut().enumerate() {
                // Group 0 holds everyone (large: defers its background members).
                if gi == 0 || rng.pct(40) {
                    store.add_member(&tenant, &g.id, &user).expect("member");
                    g.members.push(u);
                    mine.push(gi);
                }
            }
            let reader = match rng.below(10) {
                0 => Reader::Dead,
                1..=2 => Reader::Slow,
                _ => Reader::Fast,
            };
            clients.push(Client {
                user,
                groups: mine,
                session: None,
                reader,
                inbox: Default::default(),
                order: PushOrder::new(1 << 16),
                delivered: HashMap::new(),
                unacked: Vec::new(),
                next_id: 0,
            });
        }
        let mut sim = Self {
            cfg,
            rng,
            now_ms: 1_000,
            step: 0,
            store,
            tenant,
            groups,
            sessions: HashMap::new(),
            clients,
            commits: Vec::new(),
            phase2: VecDeque::new(),
            unwritten_fg: HashMap::new(),
            expired: HashSet::new(),
            next_batch: 0,
            next_session: 1,
            policy: 0,
            shedding: false,
            acks: BTreeMap::new(),
            report: Report {
                seed,
                ..Report::default()
            },
        };
        for c in 0..sim.clients.len() {
            sim.connect(c);
        }
        sim
    }

    /// Runs `cfg.steps` random operations, then settles and checks the end state.
    pub fn run(seed: u64, cfg: Config) -> Report {
        let mut sim = Sim::new(seed, cfg);
        for _ in 0..sim.cfg.steps {
            sim.random_step();
        }
        sim.settle();
        sim.check_end_state();
        sim.report
    }

    fn violation(&mut self, what: String) {
        if self.report.violations.len() < 20 {
            let at = format!("step {} (t={} ms): {what}", self.step, self.now_ms);
            self.report.violations.push(at);
        }
    }

    /// Runs a run whose shape and operations come from `data` (the `routing_sim` fuzz
    /// target): 4 bytes of shape, 8 of seed, then one operation per byte.
    pub fn run_bytes(data: &[u8]) -> Report {
        let byte = |i: usize| data.get(i).copied().unwrap_or(0) as u64;
        let cfg = Config {
            groups: 1 + (byte(0) % 6) as usize,
            users: 2 + (byte(1) % 15) as usize,
            steps: 0,
            queue_frames: 1 + (byte(2) % 5) as usize,
            read_batch: 1 + (byte(2) / 5 % 6) as usize,
            nudge_from_members: (byte(3) % 8) as u32,
            flush_failure_pct: byte(3) / 8 % 60,
            naive: byte(3) >= 240,
        };
        let seed = (4..12).fold(0u64, |s, i| s << 8 | byte(i));
        let mut sim = Sim::new(seed, cfg);
        for &b in data.iter().skip(12).take(MAX_FUZZ_STEPS) {
            let c = sim.rng.below(sim.clients.len() as u64) as usize;
            sim.step_with(u64::from(b) * 100 / 256, c);
        }
        sim.settle();
        sim.check_end_state();
        sim.report
    }

    fn random_step(&mut self) {
        let choice = self.rng.below(100);
        let c = self.rng.below(self.clients.len() as u64) as usize;
        self.step_with(choice, c);
    }

    /// One operation: `choice` (0..100) picks its kind, `c` the client.
    fn step_with(&mut self, choice: u64, c: usize) {
        self.step += 1;
        self.now_ms += self.rng.below(8);
        match choice {
            0..=29 => self.send(c),
            30..=44 => self.flush(),
            45..=54 => self.run_phase2(),
            55..=74 => {
                let s = self.rng.below(4) as usize;
                if let Some(id) = self.clients[c].session {
                    self.write(id, s);
                }
            }
            75..=89 => self.read(c),
            90..=93 => self.toggle_presence(c),
            94..=95 => {
                if self.clients[c].session.is_some() {
                    self.disconnect(c);
                } else {
                    self.connect(c);
                }
            }
            96 => self.shedding = !self.shedding,
            97 => self.policy += 1,
            _ => {
                // A dead reader comes back to life (after its next reconnect it reads).
                if self.clients[c].reader == Reader::Dead && self.rng.pct(30) {
                    self.clients[c].reader = Reader::Slow;
                }
            }
        }
    }

    fn lane_for(&self, client_msg_id: &str) -> Lane {
        // The "policy": version 0 puts everything on the normal lane; later versions spread
        // messages over the lanes by id, so a swap moves a group's traffic between streams.
        if self.policy == 0 {
            return Lane::Normal;
        }
        let h = client_msg_id.bytes().fold(self.policy, |h, b| {
            h.wrapping_mul(31).wrapping_add(b as u64)
        });
        [Lane::High, Lane::Normal, Lane::Low][(h % 3) as usize]
    }

    /// A client sends: a new message, or a resend of one not acknowledged yet.
    fn send(&mut self, c: usize) {
        if self.clients[c].session.is_none() || self.clients[c].groups.is_empty() {
            return;
        }
        self.report.ops += 1;
        let client = &mut self.clients[c];
        let (g, id, body) = if !client.unacked.is_empty() && self.rng.pct(30) {
            let i = self.rng.below(client.unacked.len() as u64) as usize;
            client.unacked[i].clone()
        } else {
            if client.unacked.len() >= 8 {
                return; // the in-flight bound: the connection stops reading
            }
            let g = client.groups[self.rng.below(client.groups.len() as u64) as usize];
            client.next_id += 1;
            let id = format!("m{}", client.next_id);
            let body = Bytes::from(format!("{}:{id}", client.user));
            client.unacked.push((g, id.clone(), body.clone()));
            (g, id, body)
        };
        self.submit(c, g, id, body);
    }

    fn submit(&mut self, c: usize, g: usize, id: String, body: Bytes) {
        let lane = self.lane_for(&id);
        let user = self.clients[c].user.clone();
        let appended = self.store.append(
            &self.tenant,
            &self.groups[g].id,
            NewMessage {
                sender: &user,
                lane,
                client_msg_id: &id,
                sent_at_ms: self.now_ms,
                body: &body,
            },
        );
        let (seq, new) = match appended {
            Ok(Appended::New { seq }) => {
                let frame = wire::encode_server(&ServerFrame::Deliver(Message {
                    group: self.groups[g].id.to_string(),
                    seq,
                    sender: user.to_string(),
                    client_msg_id: id.clone(),
                    sent_at_ms: self.now_ms,
                    body,
                    lane,
                }));
                (seq, Some(frame))
            }
            Ok(Appended::Duplicate { seq }) => (seq, None),
            Err(e) => return self.violation(format!("append failed: {e}")),
        };
        self.commits.push(Commit {
            group: g,
            seq,
            new,
            lane,
            client: c,
            session: self.clients[c].session,
            client_msg_id: id,
        });
    }

    /// The committer: one flush for everything queued, then phase 1 and acks in order.
    fn flush(&mut self) {
        if self.commits.is_empty() {
            return;
        }
        if self.rng.pct(self.cfg.flush_failure_pct) {
            self.store.fail_flushes(1);
        }
        let batch = std::mem::take(&mut self.commits);
        if self.store.flush().is_err() {
            // Not acknowledged: the clients keep their sends and resend them with the same id.
            self.report.failed_flushes += 1;
            return;
        }
        self.next_batch += 1;
        let b = self.next_batch;
        let mut later = Vec::new();
        for commit in batch {
            match &commit.new {
                Some(frame) => {
                    if self.publish_active(b, &commit, frame) {
                        later.push((commit.group, commit.seq, commit.lane, frame.clone()));
                    }
                }
                None => {
                    let g = &mut self.groups[commit.group];
                    let reveal: Vec<u64> = g
                        .fanout
                        .reveal(commit.seq)
                        .iter()
                        .map(|s| s.session)
                        .collect();
                    for id in reveal {
                        if let Some(s) = self.sessions.get_mut(&id) {
                            s.catch_up = true;
                        }
                    }
                }
            }
            self.ack(&commit);
        }
        if !later.is_empty() {
            self.phase2.push_back(Phase2 {
                batch: b,
                published_ms: self.now_ms,
                items: later,
            });
        }
    }

    fn ack(&mut self, commit: &Commit) {
        let client = &mut self.clients[commit.client];
        if client.session != commit.session {
            return; // its connection is gone; the client resends with the same id
        }
        let key = (
            commit.group,
            client.user.to_string(),
            commit.client_msg_id.clone(),
        );
        client
            .unacked
            .retain(|(g, id, _)| !(*g == commit.group && *id == commit.client_msg_id));
        self.report.acked += 1;
        if let Some(&earlier) = self.acks.get(&key) {
            if earlier != commit.seq {
                let what = format!("{key:?} acked as {earlier} and again as {}", commit.seq);
                self.violation(what);
            }
        }
        self.acks.insert(key, commit.seq);
    }

    /// Phase 1 of one message; returns whether background subscribers wait for phase 2.
    fn publish_active(&mut self, batch: u64, commit: &Commit, frame: &Bytes) -> bool {
        let g = &mut self.groups[commit.group];
        // The oracle's own view of who is in the foreground now.
        let foreground: Vec<u64> = g
            .fanout
            .subscribers()
            .iter()
            .filter(|s| s.presence.get() == PresenceState::Foreground)
            .map(|s| s.session)
            .collect();
        let mut copies = Vec::new();
        let (_, later) = g
            .fanout
            .publish_active(commit.seq, self.cfg.naive, |s, copy| {
                copies.push((s.session, s.presence.get(), copy));
            });
        let group_id = g.id.clone();
        let mut problems = Vec::new();
        if !self.cfg.naive {
            for (session, presence, copy) in &copies {
                if *presence == PresenceState::Background {
                    problems.push(format!("session {session} (background) got a phase-1 copy"));
                }
                if *copy != (Copy::Deliver { gated: true }) {
                    problems.push(format!("phase-1 copy {copy:?} is not gated"));
                }
            }
            let got: HashSet<u64> = copies.iter().map(|c| c.0).collect();
            for s in &foreground {
                if !got.contains(s) {
                    problems.push(format!("foreground session {s} got no phase-1 copy"));
                }
            }
        }
        for p in problems {
            self.violation(p);
        }
        for (session, _, copy) in copies {
            let gated = matches!(copy, Copy::Deliver { gated: true });
            if gated {
                *self
                    .unwritten_fg
                    .entry(batch)
                    .or_default()
                    .entry(session)
                    .or_default() += 1;
            }
            let item = PlanItem::Deliver {
                group: group_id.clone(),
                seq: commit.seq,
                frame: frame.clone(),
            };
            self.enqueue(session, stream_of(commit.lane), item, Some(batch));
        }
        later
    }

    /// Queues a push for a session without waiting: a full queue drops a delivery and
    /// switches the session to catch-up from the log.
    fn enqueue(&mut self, session: u64, stream: usize, item: PlanItem, batch: Option<u64>) {
        let cap = self.cfg.queue_frames;
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.queues[stream].len() >= cap {
            if matches!(item, PlanItem::Deliver { .. }) {
                self.report.overflows += 1;
                s.catch_up = true;
            }
            if let Some(b) = batch {
                self.copy_done(b, session);
            }
            return;
        }
        s.queues[stream].push_back(Queued { item, batch });
    }

    /// A foreground copy of `batch` to `session` is written or will never be.
    fn copy_done(&mut self, batch: u64, session: u64) {
        let Some(set) = self.unwritten_fg.get_mut(&batch) else {
            return;
        };
        if let Some(n) = set.get_mut(&session) {
            *n -= 1;
            if *n == 0 {
                set.remove(&session);
            }
        }
        if set.is_empty() {
            self.unwritten_fg.remove(&batch);
        }
    }

    /// Phase 2 of the oldest waiting batch, once its gate is open or its deadline passed.
    fn run_phase2(&mut self) {
        let Some(p) = self.phase2.front() else {
            return;
        };
        let open = !self.unwritten_fg.contains_key(&p.batch);
        let expired = self.now_ms >= p.published_ms + FOREGROUND_GATE_MS;
        if !open && !expired {
            return;
        }
        let Some(p) = self.phase2.pop_front() else {
            return;
        };
        if !open {
            self.report.gate_timeouts += 1;
            self.expired.insert(p.batch);
        }
        for (g, seq, lane, frame) in p.items {
            let group = &self.groups[g];
            let defer = defers_background(
                group.members.len() as u32,
                self.cfg.nudge_from_members,
                self.shedding,
            );
            let mut copies = Vec::new();
            let mut foreground = Vec::new();
            group.fanout.publish_background(defer, |s, copy| {
                if s.presence.get() == PresenceState::Foreground {
                    foreground.push(s.session);
                }
                copies.push((s.session, copy));
            });
            let id = group.id.clone();
            for s in foreground {
                self.violation(format!("phase 2 handed foreground session {s} a copy"));
            }
            for (session, copy) in copies {
                match copy {
                    Copy::Nudge => {
                        let item = PlanItem::Nudge {
                            group: id.clone(),
                            seq,
                        };
                        self.enqueue(session, NOTICES, item, None);
                    }
                    Copy::Deliver { .. } => {
                        let item = PlanItem::Deliver {
                            group: id.clone(),
                            seq,
                            frame: frame.clone(),
                        };
                        self.enqueue(session, stream_of(lane), item, Some(p.batch));
                    }
                }
            }
        }
    }

    /// One writer turn of a session's push stream: catch-up (normal stream), then up to a
    /// few queued pushes, planned and put on the client's wire — unless the stream's window
    /// is full (the client is not reading: QUIC flow control blocks the writer).
    fn write(&mut self, session: u64, stream: usize) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if self.clients[s.client].inbox[stream].len() >= WINDOW_FRAMES {
            return;
        }
        let log = SimLog {
            store: &self.store,
            tenant: &self.tenant,
            groups: &self.groups,
            presence: s.presence.get(),
            shedding: self.shedding,
            nudge_from: self.cfg.nudge_from_members,
            read_batch: self.cfg.read_batch,
        };
        let mut out = Vec::new();
        let mut stats = PlanStats::default();
        let mut errors = Vec::new();
        if stream == 1 && s.catch_up {
            s.catch_up = false;
            match s.planner.catch_up(&log, &mut out, &mut stats) {
                Ok(more) => s.catch_up |= more,
                Err(e) => errors.push(format!("catch-up: {e}")),
            }
            // Deferral: catch-up brings nothing of a group deferred for this session now.
            for f in &out {
                let frame = wire::decode_server(&f[wire::LEN_PREFIX..], &DecodeLimits::default());
                if let Ok(ServerFrame::Deliver(m)) = frame {
                    let g = self.groups.iter().position(|g| g.id.as_str() == m.group);
                    if g.is_some_and(|g| log.defers(&g)) {
                        errors.push(format!(
                            "catch-up sent {}/{} while deferred",
                            m.group, m.seq
                        ));
                    }
                }
            }
        }
        if stream == NOTICES {
            // The notices writer's timer: held nudges that are due now.
            s.planner.poll_nudges(self.now_ms, &mut out, &mut stats);
        }
        let mut batches = Vec::new();
        for _ in 0..3 {
            let Some(q) = s.queues[stream].pop_front() else {
                break;
            };
            batches.extend(q.batch);
            if let PlanItem::Nudge { group, seq } = &q.item {
                let asked = s.nudge_asked.entry(group.to_string()).or_default();
                *asked = (*asked).max(*seq);
            }
            match s
                .planner
                .plan(q.item, self.now_ms, &log, &mut out, &mut stats)
            {
                Ok(Planned::Done) => {}
                Ok(Planned::NeedsCatchUp) => s.catch_up = true,
                Err(e) => errors.push(format!("plan: {e}")),
            }
        }
        if stream == NOTICES {
            for f in &out {
                let frame = wire::decode_server(&f[wire::LEN_PREFIX..], &DecodeLimits::default());
                if let Ok(ServerFrame::Nudge { group, head_seq }) = frame {
                    let sent = s
                        .planner
                        .sent(&GroupId::new(group.as_str()).expect("valid id"));
                    if sent.is_some_and(|sent| head_seq <= sent) {
                        errors.push(format!("nudge {group}/{head_seq} for what was sent"));
                    }
                    let last = s.last_nudge.insert(group.clone(), (self.now_ms, head_seq));
                    if let Some((last, _)) = last {
                        if self.now_ms < last + NUDGE_INTERVAL_MS {
                            errors.push(format!("two nudges of {group} within the interval"));
                        }
                    }
                }
            }
        }
        let client = s.client;
        self.report.nudges += stats.nudges;
        self.clients[client].inbox[stream].extend(out);
        for e in errors {
            self.violation(e);
        }
        for b in batches {
            // Active first: a copy of a batch written while a foreground copy of the same
            // batch is still unwritten is a background copy overtaking it — unless the
            // batch's gate expired (counted in the report).
            let fg_copy = self
                .unwritten_fg
                .get(&b)
                .is_some_and(|set| set.contains_key(&session));
            let waiting = self.unwritten_fg.get(&b).is_some_and(|set| !set.is_empty());
            if !fg_copy && waiting && !self.expired.contains(&b) {
                self.violation(format!(
                    "batch {b}: a background copy went before the foreground's"
                ));
            }
            self.copy_done(b, session);
        }
    }

    /// A client reads what arrived: a few frames from streams in random order (streams
    /// interleave on the wire; within one, order holds).
    fn read(&mut self, c: usize) {
        let budget = match self.clients[c].reader {
            Reader::Dead => return,
            Reader::Slow => 1,
            Reader::Fast => 16,
        };
        self.report.ops += 1;
        for _ in 0..budget {
            let s = self.rng.below(4) as usize;
            let Some(frame) = self.clients[c].inbox[s].pop_front() else {
                continue;
            };
            self.take_frame(c, &frame);
        }
    }

    fn take_frame(&mut self, c: usize, frame: &Bytes) {
        let decoded = wire::decode_server(&frame[wire::LEN_PREFIX..], &DecodeLimits::default());
        let f = match decoded {
            Ok(f) => f,
            Err(e) => return self.violation(format!("client {c}: undecodable push: {e}")),
        };
        if let ServerFrame::Nudge { .. } = &f {
            return; // a hint; checked where it is written
        }
        if let Err(e) = self.clients[c].order.arrive(f) {
            return self.violation(format!("client {c}: {e}"));
        }
        while let Some(f) = self.clients[c].order.pop() {
            if let ServerFrame::Deliver(m) = f {
                self.app_receives(c, m);
            }
        }
    }

    fn group_index(&self, id: &str) -> usize {
        self.groups
            .iter()
            .position(|g| g.id.as_str() == id)
            .unwrap_or(usize::MAX)
    }

    /// What the app sees: each group's messages exactly once, in order, across reconnects,
    /// and each the one the log holds at that seq.
    fn app_receives(&mut self, c: usize, m: Message) {
        let g = self.group_index(&m.group);
        if !self.clients[c].groups.contains(&g) {
            return self.violation(format!(
                "client {c} got {}/{} of a group it is not in",
                m.group, m.seq
            ));
        }
        let expected = self.clients[c].delivered.get(&g).copied().unwrap_or(0) + 1;
        if m.seq != expected {
            let what = format!(
                "client {c}: {}/{} delivered, expected {expected}",
                m.group, m.seq
            );
            return self.violation(what);
        }
        match self.store.message(&self.tenant, &self.groups[g].id, m.seq) {
            Ok(Some(stored))
                if stored.client_msg_id == m.client_msg_id && stored.body == m.body => {}
            other => {
                let what = format!(
                    "client {c}: {}/{} is not the logged message: {other:?}",
                    m.group, m.seq
                );
                return self.violation(what);
            }
        }
        self.clients[c].delivered.insert(g, m.seq);
        self.report.delivered += 1;
    }

    fn toggle_presence(&mut self, c: usize) {
        let Some(id) = self.clients[c].session else {
            return;
        };
        self.report.ops += 1;
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let next = match s.presence.get() {
            PresenceState::Foreground => PresenceState::Background,
            PresenceState::Background => PresenceState::Foreground,
        };
        s.presence.set(next);
        if next == PresenceState::Foreground {
            // Whatever was deferred while it was in the background comes now, from the log.
            s.catch_up = true;
        }
    }

    /// The connection drops: queued pushes and frames in flight are lost; the client keeps
    /// its cursors and unacknowledged sends.
    fn disconnect(&mut self, c: usize) {
        let Some(id) = self.clients[c].session.take() else {
            return;
        };
        self.report.ops += 1;
        if let Some(s) = self.sessions.remove(&id) {
            for g in &mut self.groups {
                g.fanout.unsubscribe(id);
            }
            for q in s.queues.into_iter().flatten() {
                if let Some(b) = q.batch {
                    self.copy_done(b, id);
                }
            }
        }
        let client = &mut self.clients[c];
        client.inbox = Default::default();
        client.order = PushOrder::new(1 << 16);
    }

    /// A (re)connect with the client's cursors, as a `Hello` does.
    fn connect(&mut self, c: usize) {
        if self.clients[c].session.is_some() {
            return;
        }
        self.report.ops += 1;
        let id = self.next_session;
        self.next_session += 1;
        let presence = if self.rng.pct(60) {
            PresenceState::Foreground
        } else {
            PresenceState::Background
        };
        let presence = Rc::new(Cell::new(presence));
        let mut planner = SessionPlanner::new();
        for &g in &self.clients[c].groups {
            let group = &mut self.groups[g];
            let after = self.clients[c].delivered.get(&g).copied().unwrap_or(0);
            planner.subscribe(group.id.clone(), g, after.min(group.fanout.head()));
            group.fanout.subscribe(Sub {
                session: id,
                presence: presence.clone(),
            });
        }
        self.sessions.insert(
            id,
            Session {
                client: c,
                presence,
                planner,
                queues: Default::default(),
                catch_up: true,
                last_nudge: HashMap::new(),
                nudge_asked: BTreeMap::new(),
            },
        );
        self.clients[c].session = Some(id);
    }

    /// Lets everything in flight land: no new sends or faults; every client reconnects,
    /// comes to the foreground and reads; unacknowledged sends are resent until acked.
    fn settle(&mut self) {
        self.cfg.flush_failure_pct = 0;
        self.check_trailing_nudges();
        for c in 0..self.clients.len() {
            self.clients[c].reader = Reader::Fast;
            if self.clients[c].session.is_none() {
                self.connect(c);
            }
            if let Some(id) = self.clients[c].session {
                if let Some(s) = self.sessions.get_mut(&id) {
                    if s.presence.get() == PresenceState::Background {
                        s.presence.set(PresenceState::Foreground);
                        s.catch_up = true;
                    }
                }
            }
            for (g, id, body) in self.clients[c].unacked.clone() {
                self.submit(c, g, id, body);
            }
        }
        self.shedding = false;
        for _ in 0..10_000 {
            let before = (self.report.delivered, self.report.acked);
            self.now_ms += FOREGROUND_GATE_MS;
            self.flush();
            while !self.phase2.is_empty() {
                self.run_phase2();
            }
            let mut ids: Vec<u64> = self.sessions.keys().copied().collect();
            ids.sort_unstable(); // the same order on every run
            let mut pending = false;
            for id in ids {
                for s in 0..4 {
                    self.write(id, s);
                }
                let s = &self.sessions[&id];
                pending |= s.catch_up || s.queues.iter().any(|q| !q.is_empty());
            }
            for c in 0..self.clients.len() {
                while self.clients[c].inbox.iter().any(|q| !q.is_empty()) {
                    for s in 0..4 {
                        if let Some(f) = self.clients[c].inbox[s].pop_front() {
                            self.take_frame(c, &f);
                        }
                    }
                }
            }
            let moved = before != (self.report.delivered, self.report.acked);
            if !moved && !pending && self.commits.is_empty() {
                return;
            }
        }
        self.violation("the run did not settle".into());
    }

    /// Nudges have a trailing edge: once the interval has passed with no new traffic, every
    /// session whose planner was asked to nudge about a message it has not been sent has been
    /// told the newest such message.
    fn check_trailing_nudges(&mut self) {
        self.now_ms += NUDGE_INTERVAL_MS;
        let mut ids: Vec<u64> = self.sessions.keys().copied().collect();
        ids.sort_unstable();
        for &id in &ids {
            // The notices stream may be blocked by a client that does not read: drain it.
            let c = self.sessions[&id].client;
            self.clients[c].inbox[NOTICES].clear();
            while !self.sessions[&id].queues[NOTICES].is_empty() {
                self.write(id, NOTICES);
                self.clients[c].inbox[NOTICES].clear();
            }
        }
        // No traffic for an interval: every held nudge is due.
        self.now_ms += NUDGE_INTERVAL_MS;
        for &id in &ids {
            self.write(id, NOTICES);
        }
        let mut problems = Vec::new();
        for id in ids {
            let s = &self.sessions[&id];
            for (group, &asked) in &s.nudge_asked {
                let gid = GroupId::new(group.as_str()).expect("valid id");
                let sent = s.planner.sent(&gid).unwrap_or(u64::MAX);
                let told = s.last_nudge.get(group).map_or(0, |&(_, seq)| seq);
                if asked > sent && told < asked {
                    problems.push(format!(
                        "session {id}: nudged up to {told} of {group}, asked {asked}, sent {sent}"
                    ));
                }
            }
        }
        for p in problems {
            self.violation(p);
        }
    }

    /// Every client has every message of each of its groups; every acknowledgement names the
    /// logged message; nothing is left unacknowledged.
    fn check_end_state(&mut self) {
        let mut problems = Vec::new();
        for (c, client) in self.clients.iter().enumerate() {
            if !client.unacked.is_empty() {
                problems.push(format!(
                    "client {c}: {} sends never acked",
                    client.unacked.len()
                ));
            }
            for &g in &client.groups {
                let head = self.groups[g].fanout.head();
                let got = client.delivered.get(&g).copied().unwrap_or(0);
                if got != head {
                    problems.push(format!("client {c}: group g{g} at {got}, head {head}"));
                }
            }
        }
        for ((g, sender, id), seq) in &self.acks {
            let user = UserId::new(sender.as_str()).expect("valid id");
            match self
                .store
                .find_sent(&self.tenant, &self.groups[*g].id, &user, id)
            {
                Ok(Some(s)) if s == *seq => {}
                other => problems.push(format!("ack {g}/{sender}/{id}={seq}, log says {other:?}")),
            }
        }
        for (g, group) in self.groups.iter().enumerate() {
            match self.store.head(&self.tenant, &group.id) {
                Ok(h) if h == group.fanout.head() => {}
                other => problems.push(format!(
                    "g{g}: visible head {} but log {other:?}",
                    group.fanout.head()
                )),
            }
        }
        for p in problems {
            self.violation(p);
        }
    }
}
