//! The driver: what `host/edge` does around the router on a real node — the committer (one
//! flush per batch, phase 1 and acks in order), the background phase behind its gate, the
//! sessions' push queues and writers, connects and disconnects — with the oracle's checks of
//! each step inline where the step happens.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use switchboard_core::{GroupId, Lane, PresenceState, TenantId, UserId};
use switchboard_router::commit::{self, Outcome};
use switchboard_router::membership::{Change, SubChange};
use switchboard_router::{
    defers_background, Copy, GroupFanout, GroupLog, LogError, PlanItem, PlanStats, Planned,
    SessionPlanner, NUDGE_INTERVAL_MS,
};
use switchboard_store::{Appended, GroupMeta, MemStore, NewMessage, Store};
use switchboard_wire::{self as wire, DecodeLimits, Message, ServerFrame};

use crate::client::{Client, Reader, Tracker};
use crate::config::{gate_bounds, Config, WINDOW_FRAMES};
use crate::invariant::Invariant;
use crate::load::Load;
use crate::membership::{Span, Sub, User};
use crate::{Report, Rng, Sim};

pub(crate) struct Group {
    pub(crate) id: GroupId,
    pub(crate) fanout: GroupFanout<Sub>,
    /// Member users, in the order they joined (the hub's member count).
    pub(crate) members: Vec<usize>,
}

/// A push waiting in a session's queue, with what the oracle needs to know about it.
pub(crate) struct Queued {
    pub(crate) item: PlanItem,
    /// The batch of a live copy.
    pub(crate) batch: Option<u64>,
}

pub(crate) struct Session {
    pub(crate) client: usize,
    pub(crate) presence: Rc<Cell<PresenceState>>,
    pub(crate) planner: SessionPlanner<usize>,
    pub(crate) queues: [VecDeque<Queued>; 4],
    pub(crate) catch_up: bool,
    /// Groups this session is subscribed to (the hub's `Session::groups`).
    pub(crate) groups: BTreeSet<usize>,
    /// Subscription changes not applied to the planner yet, the latest per group (the hub's
    /// `Session::sub_changes`; the writer applies them before planning anything).
    pub(crate) sub_changes: BTreeMap<usize, SubChange>,
    /// The oracle's count of this session's subscription changes; every frame on the wire
    /// carries the count when it was written.
    pub(crate) gen: u64,
    /// The oracle's record of each group's subscriptions on this connection, oldest first.
    pub(crate) spans: BTreeMap<usize, Vec<Span>>,
    /// When a nudge of each group was last written to this connection, and its seq.
    pub(crate) last_nudge: BTreeMap<usize, (u64, u64)>,
    /// The newest seq of each group that a nudge handed to the planner named.
    pub(crate) nudge_asked: BTreeMap<usize, u64>,
}

/// A durable-pending append waiting for the flush.
pub(crate) struct Commit {
    pub(crate) group: usize,
    pub(crate) seq: u64,
    pub(crate) new: Option<Bytes>,
    pub(crate) lane: Lane,
    pub(crate) client: usize,
    /// The connection the send came on: its ack is lost if that connection is gone.
    pub(crate) session: Option<u64>,
    pub(crate) client_msg_id: String,
    /// Successful flushes before the append (the oracle's: an ack needs one more).
    pub(crate) flushes_before: u64,
}

/// A batch whose background phase waits for its foreground copies.
pub(crate) struct Phase2 {
    pub(crate) batch: u64,
    pub(crate) published_ms: u64,
    pub(crate) items: Vec<(usize, u64, Lane, Bytes)>,
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
    fn first_seq(&self, g: &usize) -> Result<u64, LogError> {
        self.store
            .first_seq(self.tenant, &self.groups[*g].id)
            .map_err(|e| LogError::Read(e.to_string()))
    }
}

fn stream_of(lane: Lane) -> usize {
    match lane {
        Lane::High => 0,
        Lane::Normal => 1,
        Lane::Low => 2,
    }
}
pub(crate) const NOTICES: usize = 3;

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
        let mut users = Vec::new();
        let mut clients = Vec::new();
        for u in 0..cfg.users {
            let id = UserId::new(&format!("u{u}")).expect("valid id");
            let mut mine = BTreeSet::new();
            for (gi, g) in groups.iter_mut().enumerate() {
                // Group 0 starts with everyone (large: defers its background members).
                if gi == 0 || rng.pct(40) {
                    store.add_member(&tenant, &g.id, &id).expect("member");
                    g.members.push(u);
                    mine.insert(gi);
                }
            }
            let devices = if rng.pct(cfg.multi_device_pct) {
                2 + rng.below(2) as usize
            } else {
                1
            };
            let mut mine_clients = Vec::new();
            for _ in 0..devices {
                let reader = match rng.below(10) {
                    0 => Reader::Dead,
                    1..=2 => Reader::Slow,
                    _ => Reader::Fast,
                };
                mine_clients.push(clients.len());
                clients.push(Client {
                    user: u,
                    session: None,
                    reader,
                    inbox: Default::default(),
                    tracker: Tracker::default(),
                    unacked: Vec::new(),
                    next_id: 0,
                });
            }
            users.push(User {
                id,
                groups: mine,
                clients: mine_clients,
            });
        }
        let defer_at = cfg.defer_background_at;
        let n_groups = groups.len();
        let mut sim = Self {
            cfg,
            rng,
            now_ms: 1_000,
            step: 0,
            store,
            tenant,
            groups,
            users,
            sessions: BTreeMap::new(),
            clients,
            commits: Vec::new(),
            phase2: VecDeque::new(),
            unwritten_fg: HashMap::new(),
            last_release: HashMap::new(),
            expired: BTreeSet::new(),
            next_batch: 0,
            next_session: 1,
            policy: 0,
            load: Load::new(defer_at),
            calm_samples: 0,
            flushes_ok: 0,
            appended: vec![0; n_groups],
            durable: vec![0; n_groups],
            visible: vec![0; n_groups],
            acks: BTreeMap::new(),
            orphans: BTreeSet::new(),
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
    pub(crate) fn send(&mut self, c: usize) {
        let u = self.clients[c].user;
        if self.clients[c].session.is_none() || self.users[u].groups.is_empty() {
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
            let groups = &self.users[u].groups;
            let nth = self.rng.below(groups.len() as u64) as usize;
            let g = *groups.iter().nth(nth).expect("within the set");
            client.next_id += 1;
            // Unique per user across its devices: the dedupe key is (group, sender, id).
            let id = format!("d{c}m{}", client.next_id);
            let body = Bytes::from(format!("{}:{id}", self.users[u].id));
            client.unacked.push((g, id.clone(), body.clone()));
            (g, id, body)
        };
        self.submit(c, g, id, body);
    }

    pub(crate) fn submit(&mut self, c: usize, g: usize, id: String, body: Bytes) {
        let u = self.clients[c].user;
        if !self.users[u].groups.contains(&g) {
            // `NotMember`: the user left since; the app is told, the send is dropped. If an
            // earlier attempt was appended (its flush failed), that message stays in the log
            // unrevealed until a later message of the group is published past it.
            self.report.refused_sends += 1;
            let user = &self.users[u].id;
            if let Ok(Some(seq)) = self
                .store
                .find_sent(&self.tenant, &self.groups[g].id, user, &id)
            {
                if seq > self.visible[g] {
                    self.orphans.insert((g, seq));
                    self.report.orphaned_by_leave += 1;
                }
            }
            self.clients[c]
                .unacked
                .retain(|(ug, uid, _)| !(*ug == g && *uid == id));
            return;
        }
        let lane = self.lane_for(&id);
        let user = self.users[u].id.clone();
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
                self.appended[g] = self.appended[g].max(seq);
                (seq, Some(frame))
            }
            Ok(Appended::Duplicate { seq }) => (seq, None),
            Err(e) => {
                return self.violation(Invariant::AckAfterDurable, format!("append failed: {e}"))
            }
        };
        self.commits.push(Commit {
            group: g,
            seq,
            new,
            lane,
            client: c,
            session: self.clients[c].session,
            client_msg_id: id,
            flushes_before: self.flushes_ok,
        });
    }

    /// The committer: one flush for everything queued, then phase 1 and acks in order.
    pub(crate) fn flush(&mut self) {
        if self.commits.is_empty() {
            return;
        }
        if self.rng.pct(self.cfg.flush_failure_pct) {
            self.store.fail_flushes(1);
        }
        let batch = std::mem::take(&mut self.commits);
        let flushed = self.store.flush().is_ok();
        if flushed {
            // The oracle: everything appended so far is durable now.
            self.flushes_ok += 1;
            self.durable.clone_from(&self.appended);
            self.next_batch += 1;
        } else {
            self.report.failed_flushes += 1;
        }
        let b = self.next_batch;
        let mut later = Vec::new();
        // What each send becomes is the router's decision, as in edge's committer.
        for (commit, outcome) in commit::outcomes(flushed, batch, |c| c.new.is_some()) {
            match (outcome, &commit.new) {
                (Outcome::Publish, Some(frame)) => {
                    let v = &mut self.visible[commit.group];
                    *v = (*v).max(commit.seq);
                    if self.publish_active(b, &commit, frame) {
                        later.push((commit.group, commit.seq, commit.lane, frame.clone()));
                    }
                }
                // Not acknowledged: the clients keep their sends and resend them with the
                // same id.
                (Outcome::Publish, None) | (Outcome::Unknown, _) => {}
                (Outcome::Reveal, _) => {
                    let v = &mut self.visible[commit.group];
                    *v = (*v).max(commit.seq);
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
            if outcome.acks() {
                self.ack(&commit);
            }
        }
        if !flushed {
            return;
        }
        for g in 0..self.groups.len() {
            // The router's head is what was published or revealed, all of it durable.
            let (head, visible) = (self.groups[g].fanout.head(), self.visible[g]);
            if head != visible || visible > self.durable[g] {
                let what = format!(
                    "g{g}: head {head}, published {visible}, durable {}",
                    self.durable[g]
                );
                self.violation(Invariant::VisibleAfterDurable, what);
            }
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
        if self.flushes_ok <= commit.flushes_before {
            let what = format!(
                "g{}/{} acked with no successful flush since its append",
                commit.group, commit.seq
            );
            self.violation(Invariant::AckAfterDurable, what);
        }
        let client = &mut self.clients[commit.client];
        if client.session != commit.session {
            return; // its connection is gone; the client resends with the same id
        }
        let key = (
            commit.group,
            self.users[client.user].id.to_string(),
            commit.client_msg_id.clone(),
        );
        client
            .unacked
            .retain(|(g, id, _)| !(*g == commit.group && *id == commit.client_msg_id));
        self.report.acked += 1;
        if let Some(&earlier) = self.acks.get(&key) {
            if earlier != commit.seq {
                let what = format!("{key:?} acked as {earlier} and again as {}", commit.seq);
                self.violation(Invariant::AckAfterDurable, what);
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
            self.violation(Invariant::ActiveFirst, p);
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
        self.last_release.insert(batch, self.now_ms);
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
    pub(crate) fn run_phase2(&mut self) {
        let Some(p) = self.phase2.front() else {
            return;
        };
        let open = !self.unwritten_fg.contains_key(&p.batch);
        // The deadline follows the foreground's progress (`router::gate`).
        let since = |ms: u64| Duration::from_millis(ms.saturating_sub(p.published_ms));
        let last = self.last_release.get(&p.batch).map(|&ms| since(ms));
        let expired = gate_bounds().expired(since(self.now_ms), last);
        if !open && !expired {
            return;
        }
        let Some(p) = self.phase2.pop_front() else {
            return;
        };
        self.last_release.remove(&p.batch);
        if !open {
            self.report.gate_timeouts += 1;
        }
        // Whether the gate expired excuses background copies written before the
        // foreground's (the oracle's check in `write`).
        if expired {
            self.expired.insert(p.batch);
        }
        let shedding = self.load.shedding();
        for (g, seq, lane, frame) in p.items {
            let group = &self.groups[g];
            let members = group.members.len() as u32;
            let defer = defers_background(members, self.cfg.nudge_from_members, shedding);
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
                let what = format!("phase 2 handed foreground session {s} a copy");
                self.violation(Invariant::ActiveFirst, what);
            }
            for (session, copy) in copies {
                match copy {
                    Copy::Nudge => {
                        if !defers_background(members, self.cfg.nudge_from_members, false) {
                            self.report.shed_deferrals += 1;
                        }
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

    /// One writer turn of a session's push stream: the session's subscription changes,
    /// catch-up (normal stream), then up to a few queued pushes, planned and put on the
    /// client's wire — unless the stream's window is full (the client is not reading: QUIC
    /// flow control blocks the writer).
    pub(crate) fn write(&mut self, session: u64, stream: usize) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if self.clients[s.client].inbox[stream].len() >= WINDOW_FRAMES {
            return;
        }
        // As `PushPlanner::apply_sub_changes`: before anything is planned.
        for (g, change) in std::mem::take(&mut s.sub_changes) {
            let id = self.groups[g].id.clone();
            match change {
                SubChange::Subscribe { after } => s.planner.subscribe(id, g, after),
                SubChange::Unsubscribe => s.planner.unsubscribe(&id),
            }
        }
        let log = SimLog {
            store: &self.store,
            tenant: &self.tenant,
            groups: &self.groups,
            presence: s.presence.get(),
            shedding: self.load.shedding(),
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
                Err(e) => errors.push((Invariant::InOrderNoGap, format!("catch-up: {e}"))),
            }
            // Deferral: catch-up brings nothing of a group deferred for this session now.
            for f in &out {
                let frame = wire::decode_server(&f[wire::LEN_PREFIX..], &DecodeLimits::default());
                if let Ok(ServerFrame::Deliver(m)) = frame {
                    let g = self.groups.iter().position(|g| g.id.as_str() == m.group);
                    if g.is_some_and(|g| log.defers(&g)) {
                        let what = format!("catch-up sent {}/{} while deferred", m.group, m.seq);
                        errors.push((Invariant::DeferralNoGap, what));
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
            let nudged = match &q.item {
                PlanItem::Nudge { group, seq } => {
                    let g = self.groups.iter().position(|x| x.id == *group);
                    if let Some(g) = g {
                        let asked = s.nudge_asked.entry(g).or_default();
                        *asked = (*asked).max(*seq);
                    }
                    Some((group.clone(), s.planner.sent(group)))
                }
                _ => None,
            };
            match s
                .planner
                .plan(q.item, self.now_ms, &log, &mut out, &mut stats)
            {
                Ok(Planned::Done) => {}
                Ok(Planned::NeedsCatchUp) => s.catch_up = true,
                Err(e) => errors.push((Invariant::InOrderNoGap, format!("plan: {e}"))),
            }
            if let Some((group, before)) = nudged {
                // A nudge is a hint: the planner's position stays where it was, so what
                // it names still comes, from the log, once the session may have it.
                let after = s.planner.sent(&group);
                if after != before {
                    let what =
                        format!("a nudge of {group} moved the position {before:?} → {after:?}");
                    errors.push((Invariant::DeferralNoGap, what));
                }
            }
        }
        if stream == NOTICES {
            for f in &out {
                let frame = wire::decode_server(&f[wire::LEN_PREFIX..], &DecodeLimits::default());
                if let Ok(ServerFrame::Nudge { group, head_seq }) = frame {
                    let gid = GroupId::new(group.as_str()).expect("valid id");
                    let sent = s.planner.sent(&gid);
                    if sent.is_some_and(|sent| head_seq <= sent) {
                        let what = format!("nudge {group}/{head_seq} for what was sent");
                        errors.push((Invariant::NudgeRate, what));
                    }
                    let Some(g) = self.groups.iter().position(|x| x.id == gid) else {
                        continue;
                    };
                    let last = s.last_nudge.insert(g, (self.now_ms, head_seq));
                    if let Some((last, _)) = last {
                        if self.now_ms < last + NUDGE_INTERVAL_MS {
                            let what = format!("two nudges of {group} within the interval");
                            errors.push((Invariant::NudgeRate, what));
                        }
                    }
                }
            }
        }
        let (client, gen) = (s.client, s.gen);
        self.report.nudges += stats.nudges;
        self.clients[client].inbox[stream].extend(out.into_iter().map(|f| (gen, f)));
        for (inv, e) in errors {
            self.violation(inv, e);
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
                let what = format!("batch {b}: a background copy went before the foreground's");
                self.violation(Invariant::ActiveFirst, what);
            }
            self.copy_done(b, session);
        }
    }

    pub(crate) fn toggle_presence(&mut self, c: usize) {
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
    pub(crate) fn disconnect(&mut self, c: usize) {
        let Some(id) = self.clients[c].session.take() else {
            return;
        };
        self.report.ops += 1;
        if let Some(s) = self.sessions.remove(&id) {
            for &g in &s.groups {
                self.groups[g].fanout.unsubscribe(id);
            }
            for q in s.queues.into_iter().flatten() {
                if let Some(b) = q.batch {
                    self.copy_done(b, id);
                }
            }
        }
        let client = &mut self.clients[c];
        client.inbox = Default::default();
        client.tracker.reconnect();
        self.check_membership_agrees();
    }

    /// A (re)connect with the device's cursors, as a `Hello` does: each of the user's groups
    /// from the device's cursor, or the user's stored one when the device has none.
    pub(crate) fn connect(&mut self, c: usize) {
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
        self.sessions.insert(
            id,
            Session {
                client: c,
                presence: Rc::new(Cell::new(presence)),
                planner: SessionPlanner::new(),
                queues: Default::default(),
                catch_up: true,
                groups: BTreeSet::new(),
                sub_changes: BTreeMap::new(),
                gen: 0,
                spans: BTreeMap::new(),
                last_nudge: BTreeMap::new(),
                nudge_asked: BTreeMap::new(),
            },
        );
        self.clients[c].session = Some(id);
        let u = self.clients[c].user;
        let groups: Vec<usize> = self.users[u].groups.iter().copied().collect();
        for g in groups {
            let after = match self.clients[c].tracker.cursor(g) {
                Some(seen) => seen,
                None => self
                    .store
                    .cursor(&self.tenant, &self.groups[g].id, &self.users[u].id)
                    .unwrap_or(0),
            };
            let expect = after.min(self.visible[g]);
            self.apply_change(id, g, Change::Follow { after }, expect, false);
        }
        self.check_membership_agrees();
    }

    pub(crate) fn revive(&mut self, c: usize) {
        // A dead reader comes back to life (after its next reconnect it reads).
        if self.clients[c].reader == Reader::Dead && self.rng.pct(30) {
            self.clients[c].reader = Reader::Slow;
        }
    }
}
