//! Appends as JetStream atomic batches (ADR-50): [`JetStreamLog::append_batch`]'s items,
//! grouped by shard, each shard's run sent as batches of at most [`MAX_BATCH_MESSAGES`],
//! each all-or-nothing, with the fence's checks on the first message (see the crate docs).

use super::*;

/// One message of [`JetStreamLog::append_batch`].
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub tenant: TenantId,
    pub group: GroupId,
    pub sender: UserId,
    pub client_msg_id: String,
    pub lane: Lane,
    pub sent_at_ms: u64,
    pub body: Bytes,
}

/// Messages one JetStream atomic batch carries at most: nats-server's own limit (ADR-50,
/// 1,000 per batch in 2.12 to 2.15). A longer run of appends to one shard is sent as
/// several batches, one after the other, each all-or-nothing.
pub const MAX_BATCH_MESSAGES: usize = 1000;

/// Distinct batch ids per process: batch ids only need to be unique among the batches in
/// flight on one stream.
static BATCH_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn batch_id() -> String {
    let n = BATCH_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("sb-{:x}-{started:x}-{n:x}", std::process::id())
}

/// Why a batch was not stored, as its sends see it.
enum BatchFailure {
    /// Every send of the batch gets the error this makes for its subject (a fence, an
    /// unknown outcome, a failed look-up before anything was sent).
    Each(Box<dyn Fn(&str) -> ClusterError + Send>),
    /// The server refused the batch as a batch (atomic publish disabled on the stream, an
    /// unsupported header, a duplicate `Nats-Msg-Id` inside it): nothing was stored, so the
    /// sends go one at a time instead.
    OneByOne(String),
}

impl BatchFailure {
    /// A failure before anything was sent, for every send of the batch.
    fn each(e: ClusterError) -> Self {
        let detail = e.to_string();
        BatchFailure::Each(Box::new(move |subject: &str| ClusterError::Refused {
            subject: subject.to_owned(),
            detail: detail.clone(),
        }))
    }
}
impl Inner {
    /// [`JetStreamLog::append_batch`]: the items grouped by shard, each shard's run sent in
    /// atomic batches of at most [`MAX_BATCH_MESSAGES`], in order.
    pub(super) async fn append_batch(
        &self,
        items: Vec<BatchItem>,
    ) -> Vec<Result<(Appended, u64), ClusterError>> {
        let mut by_shard: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            by_shard
                .entry(shard_of(&item.tenant, &item.group))
                .or_default()
                .push(i);
        }
        // Shards in parallel (each stream takes its own batches; at most one batch per
        // shard is in flight, as the shard's lock is held through it, so a node never has
        // more than its shards' count in flight: under the server's 1,000), each shard's
        // batches one after the other, in order.
        let items = &items;
        let shards = by_shard.into_iter().map(|(shard, indices)| async move {
            let mut outcomes = Vec::with_capacity(indices.len());
            for chunk in indices.chunks(MAX_BATCH_MESSAGES) {
                let chunk_outcomes = if chunk.len() < self.config.min_batch_messages {
                    self.one_by_one(items, chunk).await
                } else {
                    self.append_chunk(shard, items, chunk).await
                };
                outcomes.extend(chunk.iter().copied().zip(chunk_outcomes));
            }
            outcomes
        });
        let mut results: Vec<Option<Result<(Appended, u64), ClusterError>>> =
            items.iter().map(|_| None).collect();
        for (i, outcome) in futures_util::future::join_all(shards)
            .await
            .into_iter()
            .flatten()
        {
            results[i] = Some(outcome);
        }
        results
            .into_iter()
            .map(|r| r.expect("every item is in one chunk"))
            .collect()
    }

    /// One chunk of a shard's run (at most [`MAX_BATCH_MESSAGES`]) as one atomic batch, or
    /// one by one if the server refuses it as a batch: an outcome per index of `chunk`.
    async fn append_chunk(
        &self,
        shard: u16,
        items: &[BatchItem],
        chunk: &[usize],
    ) -> Vec<Result<(Appended, u64), ClusterError>> {
        match self.append_shard_batch(shard, items, chunk).await {
            Ok(outcomes) => outcomes,
            Err(BatchFailure::OneByOne(detail)) => {
                // Nothing of the batch was stored: the sends go as single appends, which
                // give each its usual outcome.
                tracing::warn!(shard, %detail, "batch refused as a batch; appending one by one");
                self.one_by_one(items, chunk).await
            }
            Err(BatchFailure::Each(make)) => chunk
                .iter()
                .map(|&i| {
                    let it = &items[i];
                    Err(make(&self.names.subject(&it.tenant, &it.group)))
                })
                .collect(),
        }
    }

    /// `chunk`'s items as single appends, in order.
    async fn one_by_one(
        &self,
        items: &[BatchItem],
        chunk: &[usize],
    ) -> Vec<Result<(Appended, u64), ClusterError>> {
        let mut outcomes = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let it = &items[i];
            let outcome = self
                .append(
                    &it.tenant,
                    &it.group,
                    &it.sender,
                    &it.client_msg_id,
                    it.lane,
                    it.sent_at_ms,
                    it.body.clone(),
                )
                .await;
            outcomes.push(outcome);
        }
        outcomes
    }

    /// One atomic batch of appends to `shard` (`chunk` indexes `items`, at most
    /// [`MAX_BATCH_MESSAGES`]): an outcome per index, or why the batch failed before any
    /// per-send outcome was known.
    async fn append_shard_batch(
        &self,
        shard: u16,
        items: &[BatchItem],
        chunk: &[usize],
    ) -> Result<Vec<Result<(Appended, u64), ClusterError>>, BatchFailure> {
        let fenced = |expected: u64| {
            BatchFailure::Each(Box::new(move |subject: &str| ClusterError::Fenced {
                shard,
                subject: subject.to_owned(),
                expected,
            }))
        };
        let shard_state = self.shard(shard);
        if !shard_state.lock().await.hold.holds() {
            return Err(fenced(0));
        }
        let stream = self.stream(shard).await.map_err(BatchFailure::each)?;
        // Every group of the batch locked, in key order (two batches never wait on each
        // other's groups), then the shard: the same order as a single append.
        let mut keys: Vec<(TenantId, GroupId)> = chunk
            .iter()
            .map(|&i| (items[i].tenant.clone(), items[i].group.clone()))
            .collect();
        keys.sort();
        keys.dedup();
        let mut groups: HashMap<(TenantId, GroupId), OwnedMutexGuard<GroupState>> =
            HashMap::with_capacity(keys.len());
        for key in keys {
            let state = self.group_lock(&key.0, &key.1).lock_owned().await;
            groups.insert(key, state);
        }
        let mut hold = shard_state.lock_owned().await;
        let last = match hold.hold.next() {
            Next::Refuse => return Err(fenced(0)),
            Next::Append { last } => last,
            Next::Retake { marker } => {
                let (owner, epoch) = (hold.owner.clone(), hold.epoch);
                match self.write_marker(shard, &owner, epoch, Some(marker)).await {
                    Ok(m) => hold.hold.taken(m),
                    Err(ClusterError::Fenced { expected, .. }) => {
                        hold.hold.fenced();
                        tracing::warn!("fenced out of shard {shard} on a retake");
                        return Err(fenced(expected));
                    }
                    Err(e) => {
                        let detail = format!("retake the shard after an unknown outcome: {e}");
                        return Err(BatchFailure::Each(Box::new(move |subject: &str| {
                            ClusterError::Refused {
                                subject: subject.to_owned(),
                                detail: detail.clone(),
                            }
                        })));
                    }
                }
                for state in groups.values_mut() {
                    state.loaded = false;
                }
                match hold.hold.next() {
                    Next::Append { last } => last,
                    _ => return Err(fenced(0)),
                }
            }
        };
        for ((tenant, group), state) in groups.iter_mut() {
            let subject = self.names.subject(tenant, group);
            self.load(state, &stream, &subject)
                .await
                .map_err(BatchFailure::each)?;
        }

        // Plan: the batch lands at consecutive stream seqs after `last` (the first message
        // checks that `last` is still the stream's last, and the batch is stored whole), so
        // each message's stream seq, and a group's predecessor inside the batch, are known.
        struct Planned1 {
            pos: usize,
            key: [u8; 16],
            group: (TenantId, GroupId),
            planned: crate::fence::Planned,
            /// The group's first message in the batch: it names the group's predecessor.
            names_predecessor: bool,
            stream_seq: u64,
        }
        let mut outcomes: Vec<Option<Result<(Appended, u64), ClusterError>>> =
            chunk.iter().map(|_| None).collect();
        let mut tails: HashMap<(TenantId, GroupId), Tail> = HashMap::new();
        // A resend inside the batch is a duplicate of its original there (plan index).
        let mut in_batch: HashMap<(TenantId, GroupId, [u8; 16]), usize> = HashMap::new();
        let mut planned_for: Vec<Option<usize>> = vec![None; chunk.len()];
        let mut plan: Vec<Planned1> = Vec::with_capacity(chunk.len());
        for (pos, &i) in chunk.iter().enumerate() {
            let it = &items[i];
            let group = (it.tenant.clone(), it.group.clone());
            let key = dedupe_key(it.sender.as_str(), &it.client_msg_id);
            let state = &groups[&group];
            if let Some(&seq) = state.dedupe.seqs.get(&key) {
                outcomes[pos] = Some(Ok((Appended::Duplicate { seq }, 0)));
                continue;
            }
            if let Some(&k) = in_batch.get(&(group.0.clone(), group.1.clone(), key)) {
                planned_for[pos] = Some(k);
                continue;
            }
            let names_predecessor = !tails.contains_key(&group);
            let tail = tails.entry(group.clone()).or_insert(state.tail);
            let planned = tail.plan();
            let stream_seq = last + 1 + plan.len() as u64;
            tail.stored(planned, stream_seq);
            in_batch.insert((group.0.clone(), group.1.clone(), key), plan.len());
            planned_for[pos] = Some(plan.len());
            plan.push(Planned1 {
                pos,
                key,
                group,
                planned,
                names_predecessor,
                stream_seq,
            });
        }
        if plan.is_empty() {
            return Ok(outcomes.into_iter().map(|o| o.expect("answered")).collect());
        }

        let id = batch_id();
        let n = plan.len();
        let client = self.js.client();
        let mut sent = Ok(None);
        for (j, p) in plan.iter().enumerate() {
            let it = &items[chunk[p.pos]];
            let subject = self.names.subject(&it.tenant, &it.group);
            let mut headers = HeaderMap::new();
            headers.insert(H_SEQ, p.planned.seq.to_string());
            headers.insert(H_SENDER, encode_token(it.sender.as_str()));
            headers.insert(H_CLIENT_ID, encode_token(&it.client_msg_id));
            headers.insert(H_LANE, lane_name(it.lane));
            headers.insert(H_SENT_AT, it.sent_at_ms.to_string());
            headers.insert(
                header::NATS_MESSAGE_ID,
                msg_id(&it.tenant, &it.group, &p.key),
            );
            headers.insert(header::NATS_BATCH_ID, id.as_str());
            headers.insert(header::NATS_BATCH_SEQUENCE, (j + 1).to_string());
            if j == 0 {
                headers.insert(header::NATS_EXPECTED_STREAM, self.names.stream(shard));
                headers.insert(header::NATS_EXPECTED_LAST_SEQUENCE, last.to_string());
            }
            if p.names_predecessor {
                headers.insert(
                    header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    p.planned.predecessor.to_string(),
                );
            }
            if j + 1 < n {
                // No reply: the server answers only the commit (ADR-50).
                if let Err(e) = client
                    .publish_with_headers(subject, headers, it.body.clone())
                    .await
                {
                    sent = Err(format!("send message {} of the batch: {e}", j + 1));
                    break;
                }
            } else {
                headers.insert(header::NATS_BATCH_COMMIT, header::NATS_BATCH_COMMIT_FINAL);
                let publish = PublishMessage::build()
                    .payload(it.body.clone())
                    .headers(headers);
                sent = Ok(Some(match self.js.send_publish(subject, publish).await {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                }));
            }
        }
        // Maybe stored: the chain's end and the groups' tails are unknown, and so is every
        // send of the batch not answered before it was sent.
        let unknown = |hold: &mut OwnedMutexGuard<ShardState>,
                       groups: &mut HashMap<_, OwnedMutexGuard<GroupState>>,
                       outcomes: Vec<Option<Result<(Appended, u64), ClusterError>>>,
                       detail: String| {
            hold.hold.unknown();
            for state in groups.values_mut() {
                state.loaded = false;
            }
            outcomes
                .into_iter()
                .enumerate()
                .map(|(pos, o)| {
                    o.unwrap_or_else(|| {
                        let it = &items[chunk[pos]];
                        Err(ClusterError::Unacknowledged {
                            subject: self.names.subject(&it.tenant, &it.group),
                            detail: detail.clone(),
                        })
                    })
                })
                .collect::<Vec<_>>()
        };
        let ack = match sent {
            Err(detail) => return Ok(unknown(&mut hold, &mut groups, outcomes, detail)),
            Ok(None) => unreachable!("the last message of a non-empty batch is its commit"),
            Ok(Some(Ok(ack))) => ack,
            Ok(Some(Err(e))) => {
                return Err(match e.kind() {
                    PublishErrorKind::WrongLastSequence => {
                        hold.hold.fenced();
                        for state in groups.values_mut() {
                            state.loaded = false;
                        }
                        tracing::warn!(batch = n, "batch fenced out of shard {shard}");
                        return Ok(outcomes
                            .into_iter()
                            .enumerate()
                            .map(|(pos, o)| {
                                o.unwrap_or_else(|| {
                                    let p = &plan[planned_for[pos].expect("planned")];
                                    Err(ClusterError::Fenced {
                                        shard,
                                        subject: self.names.subject(&p.group.0, &p.group.1),
                                        expected: p.planned.predecessor,
                                    })
                                })
                            })
                            .collect());
                    }
                    PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                        return Ok(unknown(&mut hold, &mut groups, outcomes, e.to_string()));
                    }
                    _ => BatchFailure::OneByOne(e.to_string()),
                });
            }
        };
        if ack.duplicate || ack.sequence != last + n as u64 {
            // Not the batch as planned: do not guess where it went.
            let detail = format!(
                "batch of {n} after stream seq {last} acknowledged at {} (duplicate: {})",
                ack.sequence, ack.duplicate
            );
            return Ok(unknown(&mut hold, &mut groups, outcomes, detail));
        }
        hold.hold.stored(ack.sequence);
        let window = self.config.dedupe_window;
        for p in &plan {
            let state = groups.get_mut(&p.group).expect("locked");
            state.tail.stored(p.planned, p.stream_seq);
            if p.planned.seq % INDEX_EVERY == 0 {
                state.index.insert(p.planned.seq, p.stream_seq);
            }
            state.dedupe.insert(p.key, p.planned.seq, window);
            outcomes[p.pos] = Some(Ok((Appended::New { seq: p.planned.seq }, p.stream_seq)));
        }
        for (pos, k) in planned_for.iter().enumerate() {
            if let (None, Some(k)) = (&outcomes[pos], k) {
                outcomes[pos] = Some(Ok((
                    Appended::Duplicate {
                        seq: plan[*k].planned.seq,
                    },
                    0,
                )));
            }
        }
        Ok(outcomes.into_iter().map(|o| o.expect("answered")).collect())
    }
}
