//! The thin tokio driver of the [`Keeper`]: it feeds the keeper ticks, the live nodes and
//! the answers of [`ShardLeases`], and carries out the keeper's actions — each lease
//! request and each take of the log on a task of its own, its answer coming back as an
//! event. Every decision is the keeper's; this file only does IO.
//!
//! Bounds: at most one request per shard is in flight (the keeper's states allow no more)
//! and at most 8 takes of the log (`MAX_TAKES_IN_FLIGHT`: a take may create a stream),
//! so the answer channel's 512 slots never fill; each request waits at most the lease
//! bucket's `request_timeout`; a lost answer is asked again after `answer_within`.
//!
//! What it publishes ([`KeeperTask::served`]) is the set of shards the keeper serves —
//! granted, taken in the log ([`JetStreamLog::take_shard`], done by this task on every
//! grant) and inside the holder's deadline — read after every event and tick (ticks come
//! at a tenth of the TTL, so a passed deadline shows within one). Appending is guarded
//! twice over: the node checks this set, and the log refuses a shard it has not taken.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::keeper::{Action, Event, Keeper, KeeperConfig};
use crate::names::SHARDS;
use crate::{ClusterError, JetStreamLog, Lease, ShardLeases};

/// A running keeper: the shards it serves, and its task (aborted on drop).
#[derive(Debug)]
pub struct KeeperTask {
    served: watch::Receiver<BTreeSet<u16>>,
    /// Lease releases sent and not yet answered.
    releasing: watch::Receiver<usize>,
    /// The keeper's event channel, for `drain`.
    events: mpsc::Sender<Event>,
    task: JoinHandle<()>,
}

impl KeeperTask {
    /// Starts the keeper of `leases.node()` on the current tokio runtime. `nodes` gives
    /// the live nodes (the keeper goes after the shards rendezvous gives this node among
    /// them); `log`, if given, is taken for every shard granted. Ticks come every tenth
    /// of the lease TTL.
    pub fn spawn(
        leases: Arc<ShardLeases>,
        nodes: watch::Receiver<Vec<String>>,
        log: Option<Arc<JetStreamLog>>,
    ) -> Self {
        let config = KeeperConfig::for_ttl(leases.node(), leases.ttl());
        let tick = leases.ttl() / 10;
        let (served_tx, served) = watch::channel(BTreeSet::new());
        let (events, events_rx) = mpsc::channel::<Event>(ANSWERS);
        let (releasing_tx, releasing) = watch::channel(0usize);
        let task = tokio::spawn(run(
            Keeper::new(config),
            (leases, Arc::new(releasing_tx)),
            nodes,
            log,
            tick,
            served_tx,
            (events.clone(), events_rx),
        ));
        Self {
            served,
            releasing,
            events,
            task,
        }
    }

    /// Drains: the node stops serving every shard at once and releases every lease, so
    /// the other nodes take the shards without waiting for the TTL; it takes none again.
    pub async fn drain(&self) {
        // Fails only if the task is gone, when there is nothing left to drain.
        let _ = self.events.send(Event::Drain).await;
    }

    /// The shards this node serves, updated as they change.
    pub fn served(&self) -> watch::Receiver<BTreeSet<u16>> {
        self.served.clone()
    }

    /// How many lease releases are sent and not yet answered. A drain waits for 0 before
    /// the process exits: a release still in flight when it does is lost, and the other
    /// nodes then wait a TTL for that lease (found by the failure suite's rolling drain).
    /// Each release is counted before the served set shrinks, so once [`Self::served`]
    /// shows the drain, this shows its releases.
    pub fn releasing(&self) -> watch::Receiver<usize> {
        self.releasing.clone()
    }

    /// A handle that reports fences and drains, usable from any thread and task.
    pub fn handle(&self) -> KeeperHandle {
        KeeperHandle(self.events.clone())
    }

    /// Stops at once, as a crash would: nothing is released (other nodes take the shards
    /// when the leases expire).
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// The keeper's event channel, for what happens outside the task: a fence the node's
/// appends saw, a drain.
#[derive(Debug, Clone)]
pub struct KeeperHandle(mpsc::Sender<Event>);

impl KeeperHandle {
    /// See [`KeeperTask::drain`].
    pub async fn drain(&self) {
        let _ = self.0.send(Event::Drain).await;
    }

    /// Tells the keeper that the log fenced this node out of `shard`, so it steps down at
    /// once rather than at its next renewal. Never blocks: if the keeper's channel is full
    /// the report is dropped; the log itself refuses every later append to the shard until
    /// it is taken again, so a lost report costs refused sends, never a second writer.
    pub fn report_fenced(&self, shard: u16) {
        if self.0.try_send(Event::Fenced { shard }).is_err() {
            tracing::warn!(shard, "fence report dropped (keeper busy or gone)");
        }
    }
}

impl Drop for KeeperTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Takes of the log (each may create a shard's stream) in flight at once.
const MAX_TAKES_IN_FLIGHT: usize = 8;

/// Room for every answer that can be in flight (one lease request and one take per
/// shard) and a drain; fence reports use what is left, and are dropped past it.
const ANSWERS: usize = 2 * SHARDS as usize + 1;

async fn run(
    mut keeper: Keeper,
    (leases, releasing): (Arc<ShardLeases>, Arc<watch::Sender<usize>>),
    mut nodes: watch::Receiver<Vec<String>>,
    log: Option<Arc<JetStreamLog>>,
    tick: Duration,
    served: watch::Sender<BTreeSet<u16>>,
    (answers_tx, mut answers): (mpsc::Sender<Event>, mpsc::Receiver<Event>),
) {
    let takes = Arc::new(Semaphore::new(MAX_TAKES_IN_FLIGHT));
    let mut ticks = tokio::time::interval(tick.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let first = nodes.borrow_and_update().clone();
    let mut actions = keeper.handle(Event::Nodes(first), Instant::now());
    loop {
        for action in actions.drain(..) {
            execute(
                action,
                &leases,
                log.as_ref(),
                &answers_tx,
                &takes,
                &releasing,
            );
        }
        let now_served: BTreeSet<u16> = keeper.served(Instant::now()).collect();
        served.send_if_modified(|s| {
            let changed = *s != now_served;
            if changed {
                let lost: Vec<&u16> = s.difference(&now_served).collect();
                tracing::info!(served = now_served.len(), ?lost, "served shards changed");
            }
            *s = now_served;
            changed
        });
        let event = tokio::select! {
            _ = ticks.tick() => Event::Tick,
            changed = nodes.changed() => match changed {
                Ok(()) => Event::Nodes(nodes.borrow_and_update().clone()),
                // Nobody tells this node who is live any more: stop.
                Err(_) => return,
            },
            Some(answer) = answers.recv() => answer,
        };
        actions = keeper.handle(event, Instant::now());
    }
}

/// Carries out one action on a task of its own; its answer comes back on `answers`.
fn execute(
    action: Action,
    leases: &Arc<ShardLeases>,
    log: Option<&Arc<JetStreamLog>>,
    answers: &mpsc::Sender<Event>,
    takes: &Arc<Semaphore>,
    releasing: &Arc<watch::Sender<usize>>,
) {
    let (leases, answers) = (leases.clone(), answers.clone());
    match action {
        Action::Acquire { shard } => {
            tokio::spawn(async move {
                let event = match leases.acquire(shard).await {
                    Ok(lease) => Event::Granted {
                        shard,
                        revision: lease.revision,
                        valid_until: lease.valid_until,
                    },
                    Err(e) => {
                        if !matches!(e, ClusterError::LeaseHeld { .. }) {
                            tracing::debug!(shard, error = %e, "acquire failed");
                        }
                        Event::Refused { shard }
                    }
                };
                let _ = answers.send(event).await;
            });
        }
        Action::Renew { shard, revision } => {
            tokio::spawn(async move {
                let mut lease = held(shard, revision);
                let event = match leases.renew(&mut lease).await {
                    Ok(()) => Event::Renewed {
                        shard,
                        revision: lease.revision,
                        valid_until: lease.valid_until,
                    },
                    Err(ClusterError::LeaseLost { .. }) => Event::RenewFailed { shard, lost: true },
                    Err(e) => {
                        tracing::warn!(shard, error = %e, "renewal failed; retrying");
                        Event::RenewFailed { shard, lost: false }
                    }
                };
                let _ = answers.send(event).await;
            });
        }
        Action::Release { shard, revision } => {
            releasing.send_modify(|n| *n += 1);
            let releasing = releasing.clone();
            tokio::spawn(async move {
                if let Err(e) = leases.release(held(shard, revision)).await {
                    // It expires by its TTL instead.
                    tracing::debug!(shard, error = %e, "release failed");
                }
                releasing.send_modify(|n| *n -= 1);
            });
        }
        Action::Take { shard, epoch } => {
            let log = log.cloned();
            let node = leases.node().to_owned();
            let takes = takes.clone();
            tokio::spawn(async move {
                let event = match log {
                    // No log to take (leases only): served from the grant.
                    None => Event::Taken { shard, epoch },
                    Some(log) => {
                        // A take may create the shard's stream: a node taking all 256 at
                        // start would otherwise swamp JetStream's metadata layer.
                        let _slot = takes.acquire_owned().await;
                        // A take that waited for its slot may come after the lease was
                        // released (the live nodes changed) and another node took the shard;
                        // its marker would fence that node. So take only while the bucket
                        // still names this node (a read error leaves the check to the log).
                        if let Ok(holder) = leases.holder(shard).await {
                            if holder.as_deref() != Some(node.as_str()) {
                                let _ = answers.send(Event::Fenced { shard }).await;
                                return;
                            }
                        }
                        // The log's calls block (they wait on its own runtime): off the
                        // workers.
                        let taken = tokio::task::spawn_blocking(move || {
                            log.take_shard(shard, &node, epoch)
                        })
                        .await;
                        match taken {
                            Ok(Ok(_)) => Event::Taken { shard, epoch },
                            Ok(Err(e)) => {
                                tracing::warn!(shard, error = %e, "could not take the shard in the log");
                                Event::Fenced { shard }
                            }
                            Err(e) => {
                                tracing::warn!(shard, error = %e, "could not take the shard in the log");
                                Event::Fenced { shard }
                            }
                        }
                    }
                };
                let _ = answers.send(event).await;
            });
        }
        // The node reads `served`; nothing to do here.
        Action::StepDown { shard } => tracing::debug!(shard, "stepped down"),
    }
}

/// A lease as the keeper knows it (its deadline is the keeper's business, not the bucket's).
fn held(shard: u16, revision: u64) -> Lease {
    Lease {
        shard,
        revision,
        valid_until: Instant::now(),
    }
}
