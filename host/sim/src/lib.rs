//! A seeded, deterministic simulation of one node's routing: simulated clients (several
//! devices per user), simulated time, an in-memory store, and faults (failed flushes, slow
//! and dead readers, full queues, disconnects and resumes, presence changes, load levels
//! moving up and down with background delivery shed, policy swaps that move messages
//! between lanes, and membership changing under traffic: joins, leaves, admin adds and
//! removes of users with live sessions). The node's routing decisions are the router's own
//! ([`GroupFanout`](switchboard_router::GroupFanout),
//! [`SessionPlanner`](switchboard_router::SessionPlanner),
//! [`defers_background`](switchboard_router::defers_background), the load level's
//! [`LevelTracker`](switchboard_router::load::LevelTracker) and
//! [`Levels`](switchboard_router::load::Levels)); this harness is the
//! driver, as `host/edge` is on a real node, and an oracle that checks the invariants of
//! ARCHITECTURE.md as it goes. A failure names its seed and the [`Invariant`] it broke;
//! `Sim::run(seed, config)` replays it.
//!
//! Modules: `node` is the driver (committer, fan-out phases, push writers, sessions),
//! `membership` the store writes and fan-out changes around the router's admit/drop core,
//! `client` the devices and their delivery tracking, `oracle` the end-of-run checks and the
//! invariants' names, `load` the load level, `config` and `rng` the run's shape and
//! randomness. The committer asks the router what each send of a flushed batch becomes
//! ([`commit::outcomes`](switchboard_router::commit::outcomes)), as edge's does.
//!
//! Membership goes through the router's core as in the hub (one admit path for `Join` and
//! an admin's add, one drop path for `Leave` and an admin's removal,
//! [`switchboard_router::membership`]): the store first, then every connected session of the
//! user is subscribed (at the group's durable head) or unsubscribed at once in the group's
//! fan-out, and the change is queued for the session's planner, which applies queued
//! changes before planning anything. The
//! oracle tags every frame a writer puts on the wire with the session's count of
//! subscription changes, so a frame that arrives after a later leave or rejoin is known to
//! belong to the subscription it was written under, and checks:
//! - **a new member starts at the head**: a subscription made by a join (or an admin add)
//!   announces `Resume` at the group's durable head when it was admitted and carries nothing
//!   at or below it; the member gets everything after it, once, in order (a device that
//!   later resumes from an older cursor of its own gets what follows that cursor);
//! - **a leave stops delivery**: nothing is written for a subscription after the leave or
//!   removal that ended it (so nothing committed after it reaches any of the user's
//!   sessions); frames written before it may still arrive, in order and never twice;
//! - **membership and sessions agree**: after every membership change, connect and
//!   disconnect, a group's fan-out holds exactly the connected sessions of its members.
//!
//! Used by this crate's tests (`tests/invariants.rs`), its `sim_rate` example (operations per
//! second, for docs/benchmarks.md) and the `routing_sim` fuzz target.

mod client;
mod config;
mod invariant;
mod load;
mod membership;
mod node;
mod oracle;
mod rng;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use switchboard_core::TenantId;
use switchboard_store::MemStore;

pub use config::Config;
pub use invariant::Invariant;
pub use rng::Rng;

use client::Client;
use load::Load;
use membership::User;
use node::{Commit, Group, Phase2, Session};

/// What one run observed.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// The seed that replays this run.
    pub seed: u64,
    /// Client operations performed (sends, reads, presence changes, disconnects, resumes,
    /// joins and leaves).
    pub ops: u64,
    pub acked: u64,
    pub delivered: u64,
    pub nudges: u64,
    pub failed_flushes: u64,
    pub overflows: u64,
    pub gate_timeouts: u64,
    /// Membership changes: a user's own `Join`s and `Leave`s, and an admin's adds and removes.
    pub joins: u64,
    pub leaves: u64,
    pub admin_adds: u64,
    pub admin_removes: u64,
    /// Membership changes of a user with two or more sessions connected.
    pub multi_session_changes: u64,
    /// Joins while a send to the group waited for its flush (the same batch), and joins
    /// where the committer published between reading the head and subscribing.
    pub joins_racing_publish: u64,
    /// Leaves while a send to the group waited for its flush, and leaves where the committer
    /// published between the store's removal and the unsubscriptions.
    pub leaves_racing_publish: u64,
    /// Leaves or removals while one of the user's sessions had a full push queue.
    pub leaves_with_full_queue: u64,
    /// A session subscribed again to a group it had left on the same connection.
    pub rejoins: u64,
    /// Frames of an ended subscription that arrived after it ended.
    pub stale_frames: u64,
    /// Sends refused because the user is not a member (any more).
    pub refused_sends: u64,
    /// Refused resends whose first attempt was stored (flush failed): "not a member" for a
    /// message that the group may still see once the head passes it.
    pub orphaned_by_leave: u64,
    /// Load level changes, and the highest level reached.
    pub level_changes: u64,
    pub max_level: u8,
    /// Background copies deferred (nudged) while the tenant shed background delivery.
    pub shed_deferrals: u64,
    /// Invariant violations, each `[invariant] step N (t=… ms): what`.
    pub violations: Vec<String>,
}

impl Report {
    /// Whether a violation of `inv` was found.
    pub fn broke(&self, inv: Invariant) -> bool {
        let tag = format!("[{}]", inv.name());
        self.violations.iter().any(|v| v.starts_with(&tag))
    }
}

/// One simulated node and its clients.
pub struct Sim {
    cfg: Config,
    rng: Rng,
    now_ms: u64,
    step: u64,
    store: MemStore,
    tenant: TenantId,
    groups: Vec<Group>,
    users: Vec<User>,
    sessions: BTreeMap<u64, Session>,
    clients: Vec<Client>,
    commits: Vec<Commit>,
    phase2: VecDeque<Phase2>,
    /// Per batch: sessions that were in the foreground at its phase 1, and how many of their
    /// copies are not written (or dropped) yet.
    unwritten_fg: HashMap<u64, HashMap<u64, u32>>,
    /// Per batch waiting for phase 2: when one of its foreground copies was last written or
    /// dropped (simulated ms); the gate's deadline follows it.
    last_release: HashMap<u64, u64>,
    /// Batches whose background phase ran on its deadline, not on its gate.
    expired: BTreeSet<u64>,
    next_batch: u64,
    next_session: u64,
    /// Policy version: which lanes messages get (a swap moves traffic between streams) and
    /// from which load level background delivery is shed.
    policy: u64,
    load: Load,
    /// The oracle's record of the load samples whose pressure was below the measured level,
    /// since it last changed or a sample met it.
    calm_samples: u32,
    /// The oracle's own records: flushes that succeeded, per group the newest seq appended,
    /// the newest one a successful flush made durable and the newest one published or
    /// revealed (the head clients may see), and what was acknowledged:
    /// (group, sender, client_msg_id) → seq.
    flushes_ok: u64,
    appended: Vec<u64>,
    durable: Vec<u64>,
    visible: Vec<u64>,
    acks: BTreeMap<(usize, String, String), u64>,
    /// Messages stored whose flush failed and whose resend was refused (the user had left
    /// the group): they stay in the log unrevealed until the head passes them.
    orphans: BTreeSet<(usize, u64)>,
    report: Report,
}

impl Sim {
    /// Runs `cfg.steps` random operations, then settles and checks the end state.
    pub fn run(seed: u64, cfg: Config) -> Report {
        let mut sim = Sim::new(seed, cfg);
        for _ in 0..sim.cfg.steps {
            sim.random_step();
        }
        sim.finish()
    }

    /// Runs a run whose shape and operations come from `data` (the `routing_sim` fuzz
    /// target): 4 bytes of shape, 8 of seed, then one operation per byte (see
    /// [`Sim::step_with`]'s table: the byte's share of 256 is the operation's of 1,000).
    pub fn run_bytes(data: &[u8]) -> Report {
        let byte = |i: usize| data.get(i).copied().unwrap_or(0) as u64;
        let cfg = Config {
            groups: 1 + (byte(0) % 6) as usize,
            users: 2 + (byte(1) % 15) as usize,
            multi_device_pct: byte(1) / 16 * 7 % 100,
            steps: 0,
            queue_frames: 1 + (byte(2) % 5) as usize,
            read_batch: 1 + (byte(2) / 5 % 6) as usize,
            nudge_from_members: (byte(3) % 8) as u32,
            flush_failure_pct: byte(3) / 8 % 60,
            naive: byte(3) >= 240,
            extra_membership_per_mille: 0,
            defer_background_at: 1 + (byte(0) / 6 % 4) as u8,
        };
        let seed = (4..12).fold(0u64, |s, i| s << 8 | byte(i));
        let mut sim = Sim::new(seed, cfg);
        for &b in data.iter().skip(12).take(config::MAX_FUZZ_STEPS) {
            let c = sim.rng.below(sim.clients.len() as u64) as usize;
            sim.step_with(u64::from(b) * 1_000 / 256, c);
        }
        sim.finish()
    }

    fn finish(mut self) -> Report {
        self.settle();
        self.check_end_state();
        self.report
    }

    fn random_step(&mut self) {
        let extra = self.cfg.extra_membership_per_mille;
        let choice = if extra > 0 && self.rng.below(1_000) < extra {
            900 + self.rng.below(60)
        } else {
            self.rng.below(1_000)
        };
        let c = self.rng.below(self.clients.len() as u64) as usize;
        self.step_with(choice, c);
    }

    /// One operation: `choice` (0..1000) picks its kind, `c` the client (device).
    ///
    /// | per mille | operation |
    /// |---|---|
    /// | 0–279 | send (or resend an unacknowledged message) |
    /// | 280–419 | the committer flushes and publishes phase 1 |
    /// | 420–509 | a batch's background phase, once its gate opened or expired |
    /// | 510–699 | a writer turn of one of the client's push streams |
    /// | 700–839 | the client reads |
    /// | 840–879 | presence change |
    /// | 880–899 | disconnect, or (re)connect with the device's cursors |
    /// | 900–914 / 915–929 | the user joins / leaves a group (on this connection) |
    /// | 930–944 / 945–959 | an admin adds / removes the user |
    /// | 960–984 | a load sample (the level moves up at once, down slowly) |
    /// | 985–989 | an admin forces a load level, or lifts the override |
    /// | 990–994 | a policy swap (lanes, and the level that sheds background delivery) |
    /// | 995–999 | a dead reader comes back to life |
    fn step_with(&mut self, choice: u64, c: usize) {
        self.step += 1;
        self.now_ms += self.rng.below(8);
        match choice {
            0..=279 => self.send(c),
            280..=419 => self.flush(),
            420..=509 => self.run_phase2(),
            510..=699 => {
                let s = self.rng.below(4) as usize;
                if let Some(id) = self.clients[c].session {
                    self.write(id, s);
                }
            }
            700..=839 => self.read(c),
            840..=879 => self.toggle_presence(c),
            880..=899 => {
                if self.clients[c].session.is_some() {
                    self.disconnect(c);
                } else {
                    self.connect(c);
                }
            }
            900..=914 => self.join(c),
            915..=929 => self.leave(c),
            930..=944 => self.admin_change(self.clients[c].user, true),
            945..=959 => self.admin_change(self.clients[c].user, false),
            960..=984 => {
                // Mostly calm, sometimes a spike: the level climbs and comes back down.
                let pressure = match self.rng.below(100) {
                    0..=59 => 0,
                    60..=79 => 1,
                    80..=91 => 2,
                    _ => 3,
                };
                let before = self.load.measured();
                let changed = self.load.observe(pressure);
                self.check_load_sample(before, pressure);
                self.load_changed(changed);
            }
            985..=989 => {
                let forced = match self.rng.below(3) {
                    0 => None,
                    _ => Some(self.rng.below(4) as u8),
                };
                let changed = self.load.force(forced);
                self.load_changed(changed);
            }
            990..=994 => {
                self.policy += 1;
                self.load.defer_at = 1 + self.rng.below(4) as u8;
            }
            _ => self.revive(c),
        }
    }

    fn load_changed(&mut self, changed: bool) {
        if changed {
            self.report.level_changes += 1;
            self.report.max_level = self.report.max_level.max(self.load.level());
        }
    }
}
