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
use std::sync::{Arc, Weak};

use switchboard_core::{GroupId, ReceiptKind, TenantId, UserId};
use switchboard_policy as policy;
use switchboard_store::{StoreError, StoredReceipt};
use switchboard_wire::{self as wire, ServerFrame};
use tokio::sync::mpsc;
use tracing::warn;

use crate::hub::{now_ms, GroupState, Hub};
use crate::push::{Push, PushStream};

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

/// Starts the worker thread for `hub`; it ends when the hub (and so the queue) is dropped.
pub(crate) fn start(hub: Weak<Hub>) -> mpsc::Sender<ReceiptJob> {
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
                let Some(hub) = hub.upgrade() else { return };
                if let Err(e) = run_batch(&hub, &mut batch) {
                    warn!(error = %e, "receipts not stored");
                    hub.metrics()
                        .receipts_failed
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                batch.clear();
            }
        })
        .expect("spawn the receipt worker");
    tx
}

fn run_batch(hub: &Hub, batch: &mut Vec<ReceiptJob>) -> Result<(), StoreError> {
    let m = hub.metrics();
    // Messages whose aggregate changed in this batch: one summary each, after the batch.
    let mut summaries: BTreeSet<(TenantId, GroupId, u64)> = BTreeSet::new();
    for job in batch.drain(..) {
        let g = &job.group;
        let action = hub.receipt_policy(g, job.seq, &job.reader, job.kind);
        if action == policy::ReceiptAction::Drop {
            m.receipts_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        hub.store().put_receipt(
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
        tell_sender(hub, &g.tenant, &g.id, job.seq, frame)?;
    }
    for (tenant, group, seq) in summaries {
        let receipts = hub.store().receipts(&tenant, &group, seq)?;
        let read = receipts
            .iter()
            .filter(|r| r.kind == ReceiptKind::Read)
            .count() as u32;
        let members = hub
            .group_members(&tenant, &group)
            .unwrap_or(receipts.len() as u32);
        let frame = wire::encode_server(&ServerFrame::ReceiptSummary {
            group: group.to_string(),
            seq,
            // A read message was delivered too.
            delivered: receipts.len() as u32,
            read,
            members,
        });
        if tell_sender(hub, &tenant, &group, seq, frame)? {
            m.receipt_summaries.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Pushes `frame` to the connected sessions of message `seq`'s sender; false if none.
fn tell_sender(
    hub: &Hub,
    tenant: &TenantId,
    group: &GroupId,
    seq: u64,
    frame: bytes::Bytes,
) -> Result<bool, StoreError> {
    let Some(msg) = hub.store().message(tenant, group, seq)? else {
        return Ok(false);
    };
    let targets = hub.sessions_of(tenant, &msg.sender);
    for s in &targets {
        s.push(
            Push::Notice {
                stream: PushStream::Notices,
                frame: frame.clone(),
            },
            hub.metrics(),
        );
    }
    Ok(!targets.is_empty())
}
