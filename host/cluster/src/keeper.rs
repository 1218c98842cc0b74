//! The lease keeper without IO (quinn-proto style): which shard leases this node should
//! hold, when to take, renew and give them up, and when to stop appending. It is handed
//! events and the time (`handle(event, now)`) and answers with actions; it never reads a
//! clock or does IO. [`crate::keeper_task`] drives it over [`crate::ShardLeases`].
//!
//! Per shard: a node goes after the lease of every shard it is the preferred owner of
//! (rendezvous over the live nodes, [`crate::ownership`]), retrying every `retry` while
//! another node holds it; renews every `renew_every` while it holds it; serves a shard only
//! from the grant (after the log took it, [`Action::Take`]) until its own deadline
//! ([`crate::Lease::valid_until`]), and steps down at that deadline without waiting for
//! any answer, when a renewal is refused, when the log fenced it, or when the live nodes
//! change so that another node is preferred (then it releases the lease, so the new
//! owner need not wait for the TTL).

use std::time::{Duration, Instant};

use crate::names::SHARDS;
use crate::ownership::preferred_owner;

/// What happened: the clock ticked, an IO the keeper asked for finished, the live nodes
/// changed, or the log fenced this node out of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Time passed (the driver ticks well inside `renew_every`).
    Tick,
    /// The lease was taken: its revision and the holder's deadline.
    Granted {
        shard: u16,
        revision: u64,
        valid_until: Instant,
    },
    /// Acquiring failed (held by another node, or the bucket could not be reached).
    Refused { shard: u16 },
    /// The lease was renewed.
    Renewed {
        shard: u16,
        revision: u64,
        valid_until: Instant,
    },
    /// A renewal failed: `lost` when the lease expired or was taken (definitive),
    /// otherwise the bucket could not be reached (the deadline still decides).
    RenewFailed { shard: u16, lost: bool },
    /// The log took the shard for the grant of revision `epoch` ([`Action::Take`] done):
    /// from now on (until its deadline) the node serves it.
    Taken { shard: u16, epoch: u64 },
    /// The live nodes are now these (this node included if it is live).
    Nodes(Vec<String>),
    /// The log refused an append or a take: another writer wrote to the shard.
    Fenced { shard: u16 },
    /// The node drains: step down from every shard, release every lease, take no more.
    Drain,
}

/// What the driver must do. Actions of one call come in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Take the shard's lease (answer: `Granted` or `Refused`).
    Acquire { shard: u16 },
    /// Renew it (answer: `Renewed` or `RenewFailed`).
    Renew { shard: u16, revision: u64 },
    /// Give it up (no answer needed; on failure it expires by its TTL).
    Release { shard: u16, revision: u64 },
    /// Take the shard in the log with the lease's revision as the epoch (answer: `Taken`,
    /// or `Fenced` on failure); the shard is served once it is taken.
    Take { shard: u16, epoch: u64 },
    /// Stop appending to the shard, at once.
    StepDown { shard: u16 },
}

/// How the keeper paces itself.
#[derive(Debug, Clone)]
pub struct KeeperConfig {
    /// This node's id.
    pub node: String,
    /// Renew a held lease this long after the last grant or renewal (a third of the TTL:
    /// two renewals may fail before the deadline).
    pub renew_every: Duration,
    /// Ask again this long after an acquire was refused or a renewal failed transiently.
    pub retry: Duration,
    /// An acquire not answered within this is given up on and asked again (the driver's
    /// requests have shorter time-outs; this keeps a lost answer from stalling a shard).
    pub answer_within: Duration,
}

impl KeeperConfig {
    /// Paced for a lease `ttl`: renew at a third of it, retry at a tenth.
    pub fn for_ttl(node: impl Into<String>, ttl: Duration) -> Self {
        Self {
            node: node.into(),
            renew_every: ttl / 3,
            retry: ttl / 10,
            answer_within: ttl,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Not held; may ask at `retry_at`.
    Idle { retry_at: Option<Instant> },
    /// An acquire is in flight since `asked_at`.
    Acquiring { asked_at: Instant },
    /// Held until `valid_until`; renew at `renew_at`, unless a renewal is in flight.
    /// Served once the log took it for the grant of revision `epoch`.
    Held {
        epoch: u64,
        taken: bool,
        revision: u64,
        valid_until: Instant,
        renew_at: Instant,
        renewing: bool,
    },
}

/// The lease keeper of one node (see the module docs).
#[derive(Debug)]
pub struct Keeper {
    config: KeeperConfig,
    /// Per shard: whether this node is its preferred owner among the live nodes (computed
    /// when they change, not on every event).
    preferred: Vec<bool>,
    slots: Vec<Slot>,
    /// Draining: nothing is acquired any more.
    draining: bool,
}

impl Keeper {
    /// A keeper that knows of no live node but itself and holds nothing.
    pub fn new(config: KeeperConfig) -> Self {
        let mut keeper = Self {
            config,
            preferred: Vec::new(),
            slots: vec![Slot::Idle { retry_at: None }; usize::from(SHARDS)],
            draining: false,
        };
        keeper.set_nodes(&[keeper.config.node.clone()]);
        keeper
    }

    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// Whether this node may append to `shard` at `now`: it holds the lease, the log took
    /// the shard for it, and its own deadline has not passed.
    pub fn serves(&self, shard: u16, now: Instant) -> bool {
        matches!(
            self.slots[usize::from(shard)],
            Slot::Held { taken: true, valid_until, .. } if now < valid_until
        )
    }

    /// Whether this node drains and holds no lease and awaits no grant any more (every
    /// release was asked for; one that fails expires by its TTL).
    pub fn drained(&self) -> bool {
        self.draining && self.slots.iter().all(|s| matches!(s, Slot::Idle { .. }))
    }

    /// The shards this node serves at `now`.
    pub fn served(&self, now: Instant) -> impl Iterator<Item = u16> + '_ {
        (0..SHARDS).filter(move |&s| self.serves(s, now))
    }

    fn set_nodes(&mut self, nodes: &[String]) {
        let me = self.config.node.as_str();
        self.preferred = (0..SHARDS)
            .map(|s| preferred_owner(s, nodes) == Some(me))
            .collect();
    }

    /// Handles one event at `now` and says what to do.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Tick => {}
            Event::Nodes(nodes) if !self.draining => self.set_nodes(&nodes),
            Event::Nodes(_) => {}
            Event::Drain => {
                self.draining = true;
                self.preferred = vec![false; usize::from(SHARDS)];
            }
            Event::Granted {
                shard,
                revision,
                valid_until,
            } => {
                let wanted = self.preferred[usize::from(shard)];
                let slot = &mut self.slots[usize::from(shard)];
                if matches!(slot, Slot::Acquiring { .. }) && now < valid_until && wanted {
                    *slot = Slot::Held {
                        epoch: revision,
                        taken: false,
                        revision,
                        valid_until,
                        renew_at: now + self.config.renew_every,
                        renewing: false,
                    };
                    out.push(Action::Take {
                        shard,
                        epoch: revision,
                    });
                } else {
                    // Not asked for, past its deadline, or no longer wanted (the nodes
                    // changed, or draining): not ours to serve.
                    *slot = Slot::Idle { retry_at: None };
                    out.push(Action::Release { shard, revision });
                }
            }
            Event::Refused { shard } => {
                let slot = &mut self.slots[usize::from(shard)];
                if matches!(slot, Slot::Acquiring { .. }) {
                    *slot = Slot::Idle {
                        retry_at: Some(now + self.config.retry),
                    };
                }
            }
            Event::Taken { shard, epoch } => {
                if let Slot::Held {
                    epoch: held, taken, ..
                } = &mut self.slots[usize::from(shard)]
                {
                    // A take for an earlier grant (stepped down since) does not count.
                    if *held == epoch {
                        *taken = true;
                    }
                }
            }
            Event::Renewed {
                shard,
                revision,
                valid_until,
            } => {
                if let Slot::Held {
                    renewing: true,
                    epoch,
                    taken,
                    ..
                } = self.slots[usize::from(shard)]
                {
                    self.slots[usize::from(shard)] = Slot::Held {
                        epoch,
                        taken,
                        revision,
                        valid_until,
                        renew_at: now + self.config.renew_every,
                        renewing: false,
                    };
                }
                // Otherwise this node stepped down meanwhile (its deadline passed): the
                // renewal came too late to be trusted, and the tick below gives it up.
            }
            Event::RenewFailed { shard, lost } => {
                if let Slot::Held {
                    renewing: true,
                    epoch,
                    taken,
                    revision,
                    valid_until,
                    ..
                } = self.slots[usize::from(shard)]
                {
                    if lost {
                        self.step_down(shard, None, now, &mut out);
                    } else {
                        self.slots[usize::from(shard)] = Slot::Held {
                            epoch,
                            taken,
                            revision,
                            valid_until,
                            renew_at: now + self.config.retry,
                            renewing: false,
                        };
                    }
                }
            }
            Event::Fenced { shard } => {
                if matches!(self.slots[usize::from(shard)], Slot::Held { .. }) {
                    self.step_down(shard, None, now, &mut out);
                }
            }
        }
        self.tick(now, &mut out);
        out
    }

    /// Stops serving `shard`, releasing `release` (a revision) if given.
    fn step_down(&mut self, shard: u16, release: Option<u64>, now: Instant, out: &mut Vec<Action>) {
        self.slots[usize::from(shard)] = Slot::Idle {
            retry_at: Some(now + self.config.retry),
        };
        out.push(Action::StepDown { shard });
        if let Some(revision) = release {
            out.push(Action::Release { shard, revision });
        }
    }

    /// What time and the live nodes ask for, shard by shard.
    fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        for shard in 0..SHARDS {
            let preferred = self.preferred[usize::from(shard)];
            match self.slots[usize::from(shard)] {
                Slot::Idle { retry_at } => {
                    if preferred && retry_at.is_none_or(|at| now >= at) {
                        self.slots[usize::from(shard)] = Slot::Acquiring { asked_at: now };
                        out.push(Action::Acquire { shard });
                    }
                }
                Slot::Acquiring { asked_at } => {
                    if now >= asked_at + self.config.answer_within {
                        // No answer: ask again, or forget it if the shard is not wanted
                        // any more (a grant arriving later is released).
                        self.slots[usize::from(shard)] = if preferred {
                            out.push(Action::Acquire { shard });
                            Slot::Acquiring { asked_at: now }
                        } else {
                            Slot::Idle { retry_at: None }
                        };
                    }
                }
                Slot::Held {
                    revision,
                    valid_until,
                    renew_at,
                    renewing,
                    ..
                } => {
                    if now >= valid_until {
                        // No renewal in time: the server may already have let it go.
                        self.step_down(shard, None, now, out);
                    } else if !preferred {
                        // Hand it over: stop, then release so the new owner need not wait.
                        self.step_down(shard, Some(revision), now, out);
                    } else if !renewing && now >= renew_at {
                        if let Slot::Held { renewing, .. } = &mut self.slots[usize::from(shard)] {
                            *renewing = true;
                        }
                        out.push(Action::Renew { shard, revision });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
