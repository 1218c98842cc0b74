//! The message path's requests: `Send` (append under the group's lock, then the commit
//! queue), messages appended through another node (cluster mode), `Fetch`, delivery acks
//! (cursors) and read receipts. See the hub's module docs for the path's invariants.

use super::*;

/// Upper bound of a message's encoded size besides its body (three ids of at most 64 bytes,
/// seq, timestamp, flatbuffer tables and offsets).
const MESSAGE_ENVELOPE_BYTES: usize = 512;

impl Hub {
    /// `Send`: validates, appends and queues the commit. The ack is sent by the committer
    /// once the append is durable; `reply` is a reserved slot in the connection's response
    /// queue and `permit` one of its in-flight slots, released with the ack.
    pub async fn send(
        &self,
        session: &Session,
        req: SendRequest,
        reply: mpsc::OwnedPermit<Bytes>,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), RequestError> {
        let SendRequest {
            request_id,
            group,
            client_msg_id,
            body,
        } = req;
        let client_msg_id = client_msg_id.as_str();
        if body.len() > self.limits.max_payload_bytes as usize {
            return Err(RequestError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "body is {} bytes; max_payload_bytes is {}",
                    body.len(),
                    self.limits.max_payload_bytes
                ),
            ));
        }
        if client_msg_id.is_empty() || client_msg_id.len() > switchboard_core::id::MAX_ID_LEN {
            return Err(RequestError::new(
                ErrorCode::InvalidArgument,
                "client_msg_id must be 1..=64 bytes",
            ));
        }
        let gid = group_id(&group)?;
        // Before anything that costs (store, policy): a refused send is not stored, not
        // acked, not judged and not counted anywhere else; a resend later is a new request.
        self.rates.admit_message(
            &self.metrics,
            &session.rates,
            &session.user,
            &session.tenant,
        )?;
        let g = self.group(&session.tenant, &gid)?;
        // A resend of a message the group stored while the sender was a member is acked again
        // (as a duplicate) after the sender left or was removed: its outbox must learn that
        // the message is stored, or it would hold it forever. Nothing new is stored or judged.
        let resend_of_stored = match self.require_member(session, &gid) {
            Ok(()) => false,
            Err(refused) => {
                let stored =
                    self.store
                        .find_sent(&session.tenant, &gid, &session.user, client_msg_id)?;
                if stored.is_none() {
                    return Err(refused);
                }
                true
            }
        };
        if !resend_of_stored && self.disk_low.load(Ordering::Relaxed) {
            self.metrics
                .disk_full_refusals
                .fetch_add(1, Ordering::Relaxed);
            return Err(RequestError {
                code: ErrorCode::StoreUnavailable,
                message: "the node's disk is nearly full; not stored, retry later".into(),
                retry_after_ms: 1_000,
            });
        }

        let facts = MessageFacts {
            tenant: &session.tenant,
            sender: &session.user,
            group: &g.id,
            group_size: g.members.load(Ordering::Relaxed),
            connected_members: g.subscriber_count() as u32,
        };
        let verdict = if resend_of_stored {
            // Unused: the append below finds the duplicate.
            Ok((Lane::Normal, false))
        } else {
            self.policies.message_verdict(facts, &body)
        };
        let (lane, notify) = match verdict {
            Ok(verdict) => verdict,
            // A resend of a message the group already has is acked again whatever the policy
            // says now (it may have been swapped, or the first verdict was a fallback).
            // Rejections are rare, so this lookup costs nothing on the hot path.
            Err(e)
                if e.code == ErrorCode::PolicyRejected
                    && self
                        .store
                        .find_sent(&session.tenant, &gid, &session.user, client_msg_id)?
                        .is_some() =>
            {
                (Lane::Normal, false) // unused: the append below finds the duplicate
            }
            Err(e) => return Err(e),
        };
        let _order = g.append.lock().await;
        let sent_at_ms = now_ms();
        let appended = self.store.append(
            &session.tenant,
            &gid,
            NewMessage {
                sender: &session.user,
                lane,
                client_msg_id,
                sent_at_ms,
                body: &body,
            },
        )?;
        let (seq, deliver, duplicate) = match appended {
            // Past the next seq (cluster mode: another node appended in between and its
            // notice has not come): revealed, so sessions read the gap from the log first.
            Appended::New { seq } if seq > g.queued.load(Ordering::Relaxed) + 1 => {
                g.queued.fetch_max(seq, Ordering::Relaxed);
                (seq, None, false)
            }
            Appended::New { seq } => {
                g.queued.fetch_max(seq, Ordering::Relaxed);
                let frame = wire::encode_server(&ServerFrame::Deliver(Message {
                    group: gid.to_string(),
                    seq,
                    sender: session.user.to_string(),
                    client_msg_id: client_msg_id.to_owned(),
                    sent_at_ms,
                    body,
                    lane,
                }));
                (seq, Some(frame), false)
            }
            Appended::Duplicate { seq } => (seq, None, true),
        };
        let ack = wire::encode_server(&ServerFrame::Ack {
            request_id,
            group: gid.to_string(),
            client_msg_id: client_msg_id.to_owned(),
            seq,
            duplicate,
        });
        let commit = Commit {
            group: g.clone(),
            seq,
            lane,
            notify: (notify && !duplicate).then(|| session.user.clone()),
            request_id,
            deliver,
            ack,
            reply: Some(reply),
            _permit: Some(permit),
        };
        // Still under the append lock: commits of one group enter the queue in seq order.
        self.commit_tx
            .send(commit)
            .await
            .map_err(|_| RequestError::new(ErrorCode::ShuttingDown, "node is shutting down"))?;
        if duplicate {
            self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            self.metrics
                .messages_accepted
                .fetch_add(1, Ordering::Relaxed);
            g.traffic.messages_accepted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A message another node committed to a group (cluster mode: its commit notice).
    /// Delivered to this node's sessions of the group as a local commit is — through the
    /// commit queue, so in seq order with this node's own commits — unless this node has
    /// queued it already. A message past the next seq is revealed instead (sessions read it
    /// and the gap before it from the log). A group not loaded here has no session here:
    /// nothing to do (it loads its head from the store when first used). Waits while the
    /// commit queue is full.
    pub async fn deliver_remote(&self, tenant: &TenantId, group: &GroupId, m: StoredMessage) {
        let (seq, lane) = (m.seq, m.lane);
        self.commit_remote(tenant, group, seq, lane, |queued| {
            (seq == queued + 1)
                .then(|| wire::encode_server(&ServerFrame::Deliver(to_message(group, m))))
        })
        .await
    }

    /// A group's head another node announced (cluster mode: the owner of a quiet group
    /// repeats its head, so a missed notice of its last message is noticed). If this node
    /// has not queued up to `seq`, the gap is revealed: sessions read it from the log.
    pub async fn reveal_remote(&self, tenant: &TenantId, group: &GroupId, seq: u64) {
        self.commit_remote(tenant, group, seq, Lane::Normal, |_| None)
            .await
    }

    /// Queues another node's commit of `seq` unless this node queued it already; `deliver`
    /// makes the live frame from the seq queued before (`None`: reveal).
    pub(super) async fn commit_remote(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
        lane: Lane,
        deliver: impl FnOnce(u64) -> Option<Bytes>,
    ) {
        let Some(g) = self.groups.loaded(tenant, group) else {
            return;
        };
        let _order = g.append.lock().await;
        let queued = g.queued.load(Ordering::Relaxed);
        if seq <= queued {
            return;
        }
        g.queued.store(seq, Ordering::Relaxed);
        let deliver = deliver(queued);
        let commit = Commit {
            group: g.clone(),
            seq,
            lane,
            notify: None,
            request_id: 0,
            deliver,
            ack: Bytes::new(),
            reply: None,
            _permit: None,
        };
        // Closed only when the node shuts down.
        let _ = self.commit_tx.send(commit).await;
    }

    /// `Fetch`: durable messages after `after`, at most `limit` (capped by the node).
    pub fn fetch(
        &self,
        session: &Session,
        group: &str,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<Message>, u64), RequestError> {
        let gid = group_id(group)?;
        let g = self.group(&session.tenant, &gid)?;
        self.require_member(session, &gid)?;
        let head = g.head();
        let limit = limit.min(self.limits.max_fetch_messages) as usize;
        let msgs = if after >= head || limit == 0 {
            Vec::new()
        } else {
            let n = limit.min((head - after) as usize);
            self.store
                .read_after(&session.tenant, &gid, after, n)?
                .into_iter()
                .filter(|m| m.seq <= head)
                .enumerate()
                .scan(0usize, |bytes, (i, m)| {
                    // Keep the FetchResult frame under max_frame_bytes: a short page only
                    // means "fetch again", never a frame the client must refuse. The first
                    // message always goes (any one fits a frame), so paging always advances.
                    *bytes += m.body.len() + MESSAGE_ENVELOPE_BYTES;
                    (i == 0 || *bytes <= self.fetch_budget()).then(|| to_message(&gid, m))
                })
                .collect()
        };
        Ok((msgs, head))
    }

    /// Bytes a FetchResult's messages may take.
    pub(super) fn fetch_budget(&self) -> usize {
        (self.limits.max_frame_bytes - switchboard_core::limits::ENVELOPE_OVERHEAD) as usize
    }

    /// `AckDelivery`: persists the member's cursor (never past the durable head).
    pub fn ack_delivery(
        &self,
        session: &Session,
        group: &str,
        seq: u64,
    ) -> Result<(), RequestError> {
        let gid = group_id(group)?;
        let g = self.group(&session.tenant, &gid)?;
        self.require_member(session, &gid)?;
        let seq = seq.min(g.head());
        self.store
            .advance_cursor(&session.tenant, &gid, &session.user, seq)?;
        Ok(())
    }

    /// `Receipt`: checked here (rate limit, membership, the message exists, load shedding),
    /// then queued for the receipt worker (`receipts.rs`), which stores it and tells the
    /// message's sender. A full queue sheds it (counted), never the message path.
    pub fn receipt(
        &self,
        session: &Session,
        group: &str,
        seq: u64,
        kind: ReceiptKind,
    ) -> Result<(), RequestError> {
        let gid = group_id(group)?;
        self.admit_user(session, Limited::Receipts)?;
        let g = self.group(&session.tenant, &gid)?;
        self.require_member(session, &gid)?;
        if seq == 0 || seq > g.head() {
            return Err(RequestError::new(
                ErrorCode::InvalidArgument,
                format!("no message {seq} in group {gid}"),
            ));
        }
        if self.shedding(&session.tenant).receipts {
            self.metrics.receipts_shed.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let job = crate::receipts::ReceiptJob {
            group: g,
            seq,
            reader: session.user.clone(),
            kind,
        };
        if self.receipts_tx.try_send(job).is_err() {
            self.metrics.receipts_shed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}
