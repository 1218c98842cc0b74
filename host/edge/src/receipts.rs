//! Receipts in their own pipeline: a bounded queue and one worker thread, so storing and
//! forwarding receipts (and the tenant's receipt policy) never runs on a connection's task
//! or the message path, and a flood of receipts can only fill its own queue.
//!
//! A `Receipt` is checked where it arrives (rate limit, membership, message exists, load
//! shedding) and queued; when the queue ([`RECEIPT_QUEUE`]) is full the receipt is shed and
//! counted (`receipts_shed`), like the degradation ladder sheds receipts before anything
//! else. The worker asks the tenant's policy (forward, aggregate, drop), writes the receipt
//! to the store's `receipts` tree, and pushes a `ReceiptNotice` (forward) or, once per
//! message per batch, a `ReceiptSummary` with the message's counts (aggregate) to the
//! sender's connected sessions, on their notices stream.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use switchboard_core::{GroupId, ReceiptKind, TenantId, UserId};
use switchboard_policy as policy;
use switchboard_store::{Store, StoreError, StoredReceipt};
use switchboard_wire::{self as wire, ServerFrame};
use tokio::sync::mpsc;
use tracing::warn;

use crate::clock::now_ms;
use crate::groups::Groups;
use crate::metrics::Metrics;
use crate::outbox::{Push, PushStream};
use crate::serving::Policies;
use crate::sessions::Sessions;
use crate::state::GroupState;

/// Receipts waiting for the worker, node-wide. Beyond this they are shed.
pub const RECEIPT_QUEUE: usize = 16_384;
/// Receipts the worker takes per turn (one summary per message per turn).
const BATCH: usize = 512;

/// One checked receipt, waiting for the worker.
pub(crate) struct ReceiptJob {
    pub(crate) group: Arc<GroupState>,
    pub(crate) seq: u64,
    pub(crate) reader: UserId,
    pub(crate) kind: ReceiptKind,
}

/// What the worker reads and writes: a narrow view of the node.
pub(crate) struct ReceiptDeps {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) policies: Arc<Policies>,
    pub(crate) groups: Arc<Groups>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Starts the worker thread; it ends when the queue's sender (the hub's) is dropped.
pub(crate) fn start(deps: ReceiptDeps) -> mpsc::Sender<ReceiptJob> {
    let (tx, mut rx) = mpsc::channel(RECEIPT_QUEUE);
    std::thread::Builder::new()
        .name("switchboard-receipts".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            while let Some(job) = rx.blocking_recv() {
                batch.push(job);
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                if let Err(e) = run_batch(&deps, &mut batch) {
                    warn!(error = %e, "receipts not stored");
                    deps.metrics
                        .receipts_failed
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                batch.clear();
            }
        })
        .expect("spawn the receipt worker");
    tx
}

fn run_batch(deps: &ReceiptDeps, batch: &mut Vec<ReceiptJob>) -> Result<(), StoreError> {
    let m = &deps.metrics;
    // Messages whose aggregate changed in this batch: one summary each, after the batch.
    let mut summaries: BTreeSet<(TenantId, GroupId, u64)> = BTreeSet::new();
    for job in batch.drain(..) {
        let g = &job.group;
        let action = deps.policies.receipt_action(
            &g.tenant,
            &g.id,
            g.members.load(Ordering::Relaxed),
            job.seq,
            &job.reader,
            job.kind,
        );
        if action == policy::ReceiptAction::Drop {
            m.receipts_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        deps.store.put_receipt(
            &g.tenant,
            &g.id,
            job.seq,
            &StoredReceipt {
                user: job.reader.clone(),
                kind: job.kind,
                at_ms: now_ms(),
            },
        )?;
        if action == policy::ReceiptAction::Aggregate {
            m.receipts_aggregated.fetch_add(1, Ordering::Relaxed);
            summaries.insert((g.tenant.clone(), g.id.clone(), job.seq));
            continue;
        }
        m.receipts_forwarded.fetch_add(1, Ordering::Relaxed);
        let frame = wire::encode_server(&ServerFrame::ReceiptNotice {
            group: g.id.to_string(),
            seq: job.seq,
            user: job.reader.to_string(),
            kind: job.kind,
        });
        tell_sender(deps, &g.tenant, &g.id, job.seq, frame)?;
    }
    for (tenant, group, seq) in summaries {
        let receipts = deps.store.receipts(&tenant, &group, seq)?;
        let read = receipts
            .iter()
            .filter(|r| r.kind == ReceiptKind::Read)
            .count() as u32;
        let members = deps
            .groups
            .loaded_members(&tenant, &group)
            .unwrap_or(receipts.len() as u32);
        let frame = wire::encode_server(&ServerFrame::ReceiptSummary {
            group: group.to_string(),
            seq,
            // A read message was delivered too.
            delivered: receipts.len() as u32,
            read,
            members,
        });
        if tell_sender(deps, &tenant, &group, seq, frame)? {
            m.receipt_summaries.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Pushes `frame` to the connected sessions of message `seq`'s sender; false if none.
fn tell_sender(
    deps: &ReceiptDeps,
    tenant: &TenantId,
    group: &GroupId,
    seq: u64,
    frame: bytes::Bytes,
) -> Result<bool, StoreError> {
    let Some(msg) = deps.store.message(tenant, group, seq)? else {
        return Ok(false);
    };
    let targets = deps.sessions.sessions_of(tenant, &msg.sender);
    for s in &targets {
        s.push(
            Push::Notice {
                stream: PushStream::Notices,
                frame: frame.clone(),
            },
            &deps.metrics,
        );
    }
    Ok(!targets.is_empty())
}
