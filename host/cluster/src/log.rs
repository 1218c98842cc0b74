//! [`JetStreamLog`]: group messages in NATS JetStream, behind the store's
//! [`LogBackend`] seam.
//!
//! # Layout
//!
//! One stream per virtual shard ([`crate::names`]), created on first use: file storage,
//! `replicas` copies, direct get allowed (reads go to any replica), a duplicate window for
//! `Nats-Msg-Id`. A group is one subject of its shard's stream. A message is the body as the
//! payload, and headers:
//!
//! | header | value |
//! |---|---|
//! | `Sb-Seq` | the group sequence number (decimal) |
//! | `Sb-Sender` | the sender's user id, encoded ([`crate::names::encode_token`]) |
//! | `Sb-Client-Id` | the client message id, encoded |
//! | `Sb-Lane` | the lane (`high`, `normal`, `low`) |
//! | `Sb-Sent-At` | milliseconds since the epoch when it was accepted |
//! | `Nats-Msg-Id` | hash of tenant, group, sender and client id: the server's dedupe |
//! | `Nats-Expected-Last-Subject-Sequence` | the stream seq of the group's previous message |
//! | `Nats-Expected-Last-Sequence` | the stream seq of this writer's previous write to the shard |
//! | `Nats-Expected-Stream` | the shard's stream |
//!
//! # Fencing
//!
//! Shard-wide. [`JetStreamLog::take_shard`] (the lease holder's step) writes a fence marker
//! on the shard's marker subject ([`LogNames::fence_subject`]; headers `Sb-Owner`,
//! `Sb-Epoch`). From then on every append to the shard names two predecessors: the stream
//! seq of this writer's previous write to the shard's stream (its marker first), and the
//! stream seq of the last message this writer knows on the group's subject. Any other
//! writer's write to the stream breaks the first, a stale view of the group the second; the
//! server then refuses with "wrong last sequence" and stores nothing, the log returns
//! [`ClusterError::Fenced`] and refuses every later append to the shard until the shard is
//! taken again. So once a writer took a shard, no other writer appends to any of its groups
//! until it takes it back, and a group's seqs come from one writer at a time, gapless. The
//! price: one append in flight per shard (see ARCHITECTURE.md, "Cluster").
//!
//! # Batches
//!
//! [`JetStreamLog::append_batch`] sends a run of appends to one shard as JetStream atomic
//! batches (ADR-50; streams are made with `allow_atomic`) of at most
//! [`MAX_BATCH_MESSAGES`]: one acknowledgement per batch, the whole batch stored at
//! consecutive stream seqs or nothing. The batch's first message names this writer's
//! previous write to the shard, each group's first message in it the group's predecessor,
//! so the fence above holds for batches too. A batch the server refuses as a batch (no
//! atomic publish on an older stream, a `Nats-Msg-Id` its window holds) is sent again one
//! append at a time. The server pays a fixed cost per atomic batch (a few ms on a
//! file-backed stream), so batches are worth it for long runs per shard only: a run shorter
//! than `min_batch_messages` goes as single appends (docs/benchmarks.md, "Cluster").
//!
//! # Dedupe horizon
//!
//! A resend of `(sender, client_msg_id)` is found (1) in this writer's window of each group's
//! newest `dedupe_window` messages, which a writer that takes a group over rebuilds by
//! reading those messages' headers back from the stream, and (2) by the server's
//! `Nats-Msg-Id` check for `duplicate_window` after the first append, whichever writer
//! appended it. An append found by (2) only is answered with the original's group seq (read
//! back by its stream seq). So across failover a resend is a duplicate if it comes within
//! `duplicate_window` (default 10 minutes) or the group had fewer than `dedupe_window`
//! (default 10,000) messages since; the SDK resends after a reconnect (backoff at most 30 s)
//! or a 5 s time-out, well inside both. [`Store::find_sent`] sees (1) only.
//!
//! [`Store::find_sent`]: switchboard_store::Store::find_sent

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{self, HeaderMap};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind, StorageType};
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use switchboard_core::{GroupId, Lane, TenantId, UserId};
use switchboard_store::{Appended, LogBackend, NewMessage, StoreError, StoredMessage};
use tokio::sync::OwnedMutexGuard;

use crate::bridge::Bridge;
use crate::fence::{Hold, Next, Tail};
use crate::names::{encode_token, shard_of, LogNames, SHARDS};
use crate::ClusterError;

mod batch;
pub use batch::{BatchItem, MAX_BATCH_MESSAGES};
mod headers;

use headers::{
    dedupe_key, lane_name, msg_id, parse_meta, stored, Meta, H_CLIENT_ID, H_EPOCH, H_LANE, H_OWNER,
    H_SENDER, H_SENT_AT, H_SEQ,
};

/// How to reach NATS and how to lay the log out.
#[derive(Debug, Clone)]
pub struct JetStreamLogConfig {
    /// NATS server URL(s), comma-separated (`nats://127.0.0.1:4222`).
    pub url: String,
    /// Prefix of every stream and subject ([`LogNames`]).
    pub prefix: String,
    /// Copies of each shard's stream (3 in production, 1 for a single server).
    pub replicas: usize,
    /// The server's `Nats-Msg-Id` dedupe window of each stream.
    pub duplicate_window: Duration,
    /// Newest messages per group whose `(sender, client_msg_id)` this writer keeps (about
    /// 40 bytes each) and rebuilds when it loads a group.
    pub dedupe_window: u32,
    /// Largest message (body and headers) a stream accepts, in bytes.
    pub max_message_bytes: u32,
    /// One NATS request (a publish's ack, a get, a stream look-up) waits at most this.
    pub request_timeout: Duration,
    /// One store call waits at most this for all of its requests (the bridge's bound).
    pub call_timeout: Duration,
    /// Groups whose state (head, predecessor, dedupe window) is cached; past it, idle
    /// groups are dropped and reloaded from the stream when used again.
    pub max_cached_groups: usize,
    /// Worker threads of the log's runtime.
    pub workers: usize,
    /// A shard's run in [`JetStreamLog::append_batch`] shorter than this goes as single
    /// appends: nats-server stages every atomic batch of a file-backed stream in a store of
    /// its own, a fixed cost (~3.5 ms against ~0.25 ms for one append here) that only a
    /// long run repays (docs/benchmarks.md, "Cluster").
    pub min_batch_messages: usize,
}

impl JetStreamLogConfig {
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: prefix.into(),
            replicas: 3,
            duplicate_window: Duration::from_secs(600),
            dedupe_window: 10_000,
            max_message_bytes: 1 << 20,
            request_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            max_cached_groups: 100_000,
            workers: 2,
            min_batch_messages: 16,
        }
    }

    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }
    pub fn dedupe_window(mut self, messages: u32) -> Self {
        self.dedupe_window = messages;
        self
    }
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }
    pub fn max_message_bytes(mut self, bytes: u32) -> Self {
        self.max_message_bytes = bytes;
        self
    }
    pub fn min_batch_messages(mut self, messages: usize) -> Self {
        self.min_batch_messages = messages;
        self
    }
}

/// Group messages in JetStream, written by one owner per shard (see the module docs).
/// Synchronous, like every store: each call runs on the log's runtime and waits at most
/// `call_timeout`. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct JetStreamLog {
    inner: Arc<Inner>,
    bridge: Bridge,
}

#[derive(Debug)]
struct Inner {
    js: jetstream::Context,
    names: LogNames,
    config: JetStreamLogConfig,
    /// Streams looked up or created so far.
    streams: Mutex<HashMap<u16, stream::Stream>>,
    /// This writer's hold on each shard it ever took; one async lock per shard keeps one
    /// append in flight per shard (the chain of stream seqs needs it).
    shards: Mutex<HashMap<u16, SharedShard>>,
    /// Cached state per group; one async lock per group serialises its appends and loads.
    groups: Mutex<HashMap<(TenantId, GroupId), SharedGroup>>,
}

/// A shard's hold behind the async lock that serialises the shard's writes. Taken after a
/// group's lock, never before.
type SharedShard = Arc<tokio::sync::Mutex<ShardState>>;

/// This writer's hold on a shard, and who took it (for a conditional retake).
#[derive(Debug, Default)]
struct ShardState {
    hold: Hold,
    owner: String,
    epoch: u64,
}

/// A group's state behind the async lock that serialises its appends and loads.
type SharedGroup = Arc<tokio::sync::Mutex<GroupState>>;

/// What a writer knows of a group, loaded from the stream on first use.
#[derive(Debug, Default)]
struct GroupState {
    loaded: bool,
    /// The newest group seq and its stream seq (the next append's predecessor).
    tail: Tail,
    /// Oldest retained group seq (head + 1 when empty).
    first: u64,
    /// Known (group seq → stream seq) points: one per `INDEX_EVERY` seqs, and the head.
    index: BTreeMap<u64, u64>,
    dedupe: Dedupe,
}

/// Group seqs between index points the log keeps (a read locates its start between them).
const INDEX_EVERY: u64 = 64;

#[derive(Debug, Default)]
struct Dedupe {
    seqs: HashMap<[u8; 16], u64>,
    order: VecDeque<[u8; 16]>,
}

impl Dedupe {
    fn insert(&mut self, key: [u8; 16], seq: u64, window: u32) {
        if self.seqs.insert(key, seq).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > window as usize {
            if let Some(old) = self.order.pop_front() {
                self.seqs.remove(&old);
            }
        }
    }
}

impl JetStreamLog {
    /// Connects to NATS (waiting at most `request_timeout`); streams are made on first use.
    /// The writer holds no shard until it takes one ([`JetStreamLog::take_shard`]).
    pub fn connect(config: JetStreamLogConfig) -> Result<Self, ClusterError> {
        let names =
            LogNames::new(&config.prefix).map_err(|e| ClusterError::Config(e.to_string()))?;
        if config.replicas == 0 || config.dedupe_window == 0 {
            return Err(ClusterError::Config(
                "replicas and dedupe_window must be at least 1".into(),
            ));
        }
        let bridge = Bridge::new(config.workers, config.call_timeout)?;
        let url = config.url.clone();
        let timeout = config.request_timeout;
        // Built on the runtime: the context spawns its acker task there.
        let js = bridge.run("connect", async move {
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(timeout)
                .request_timeout(Some(timeout))
                .connect(crate::names::server_list(&url))
                .await
                .map_err(|e| ClusterError::Connect {
                    url: url.clone(),
                    detail: e.to_string(),
                })?;
            Ok(jetstream::ContextBuilder::new()
                .timeout(timeout)
                .build(client))
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                js,
                names,
                config,
                streams: Mutex::new(HashMap::new()),
                shards: Mutex::new(HashMap::new()),
                groups: Mutex::new(HashMap::new()),
            }),
            bridge,
        })
    }

    /// The stream and subject names this log uses.
    pub fn names(&self) -> &LogNames {
        &self.inner.names
    }

    /// The log's own runtime, where the node's other cluster tasks (keeper, heartbeats) run
    /// too: one NATS-facing runtime per node.
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        self.bridge.handle()
    }

    /// The log's JetStream context (its connection), shared by the node's other buckets.
    pub(crate) fn jetstream(&self) -> jetstream::Context {
        self.inner.js.clone()
    }

    /// Runs `fut` on the log's runtime and waits for it, at most `call_timeout`.
    pub(crate) fn run<T, F>(&self, op: &'static str, fut: F) -> Result<T, ClusterError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, ClusterError>> + Send + 'static,
    {
        self.bridge.run(op, fut)
    }

    /// Whether appends to `shard` are refused: it was never taken, or this writer was
    /// fenced out of it.
    pub fn is_fenced(&self, shard: u16) -> bool {
        let state = self.inner.shard(shard);
        self.bridge
            .run(
                "is_fenced",
                async move { Ok(!state.lock().await.hold.holds()) },
            )
            .unwrap_or(true)
    }

    /// Takes `shard`: writes a fence marker naming `owner` and `epoch` (the lease's
    /// revision) to the shard's stream, so every other writer's next append to any group of
    /// the shard is refused, and forgets what this writer knew of the shard's groups (each
    /// is reloaded before its next append). Returns the marker's stream seq. Call it only
    /// while holding the shard's lease: the newest marker wins. An append of this writer in
    /// flight meanwhile may be fenced by its own marker.
    pub fn take_shard(&self, shard: u16, owner: &str, epoch: u64) -> Result<u64, ClusterError> {
        let inner = self.inner.clone();
        let owner = owner.to_owned();
        self.bridge.run("take_shard", async move {
            inner.take(shard, owner, epoch).await
        })
    }

    /// Takes several shards at once (at most 32 markers in flight), as a node does at
    /// start; stops at the first failure.
    pub fn take_shards(
        &self,
        shards: impl IntoIterator<Item = u16>,
        owner: &str,
        epoch: u64,
    ) -> Result<(), ClusterError> {
        let inner = self.inner.clone();
        let owner = owner.to_owned();
        let shards: Vec<u16> = shards.into_iter().collect();
        self.bridge.run("take_shards", async move {
            let mut takes = futures_util::stream::iter(shards)
                .map(|shard| {
                    let (inner, owner) = (inner.clone(), owner.clone());
                    async move { inner.take(shard, owner, epoch).await }
                })
                .buffer_unordered(32);
            while let Some(taken) = takes.next().await {
                taken?;
            }
            Ok(())
        })
    }

    /// Appends, typed: [`ClusterError::Fenced`] when another writer owns the shard.
    pub fn append_message(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        msg: NewMessage<'_>,
    ) -> Result<Appended, ClusterError> {
        let append = self.append_owned(
            tenant.clone(),
            group.clone(),
            msg.sender.clone(),
            msg.client_msg_id.to_owned(),
            msg.lane,
            msg.sent_at_ms,
            Bytes::copy_from_slice(msg.body),
        );
        self.bridge.run("append", async move {
            append.await.map(|(appended, _)| appended)
        })
    }

    /// Appends `items` in order, each shard's run of them as JetStream atomic batches
    /// (ADR-50) of at most [`MAX_BATCH_MESSAGES`]: one acknowledgement per batch instead of
    /// one per message, and a batch is stored whole or not at all. A run (or its last part)
    /// shorter than `min_batch_messages` goes as single appends instead. The fence holds as for
    /// [`JetStreamLog::append_message`]: a batch's first message names this writer's
    /// previous write to the shard, and each group's first message in it the group's
    /// predecessor, so a batch of a fenced-out writer stores nothing and each of its sends
    /// gets [`ClusterError::Fenced`]. A batch the server refuses as a batch (e.g. a stream
    /// made without atomic publish) stores nothing either and its sends are appended one by
    /// one. Returns each item's outcome (and a new message's stream seq), in order; `Err`
    /// only when the call as a whole did not finish in `call_timeout`.
    #[allow(clippy::type_complexity)]
    pub fn append_batch(
        &self,
        items: Vec<BatchItem>,
    ) -> Result<Vec<Result<(Appended, u64), ClusterError>>, ClusterError> {
        let inner = self.inner.clone();
        self.bridge.run("append_batch", async move {
            Ok(inner.append_batch(items).await)
        })
    }

    /// [`JetStreamLog::append_message`] as a future that owns its arguments, for callers
    /// already on the log's runtime (forwarded appends), which must not block on it. Also
    /// returns a new message's stream seq (0 for a duplicate), for the commit notice.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append_owned(
        &self,
        tenant: TenantId,
        group: GroupId,
        sender: UserId,
        client_msg_id: String,
        lane: Lane,
        sent_at_ms: u64,
        body: Bytes,
    ) -> impl std::future::Future<Output = Result<(Appended, u64), ClusterError>> + Send + 'static
    {
        let inner = self.inner.clone();
        async move {
            inner
                .append(
                    &tenant,
                    &group,
                    &sender,
                    &client_msg_id,
                    lane,
                    sent_at_ms,
                    body,
                )
                .await
        }
    }

    /// Learns of a message another writer appended (a commit notice, [`crate::fanout`]):
    /// if this log has the group cached and the message is past its head, the head, the
    /// message's stream seq and its dedupe key are recorded, so reads here reach it without
    /// reloading the group. Groups not cached are left alone (they load fresh when used).
    pub(crate) fn observe(
        &self,
        tenant: TenantId,
        group: GroupId,
        seq: u64,
        stream_seq: u64,
        sender: &UserId,
        client_msg_id: &str,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let key = dedupe_key(sender.as_str(), client_msg_id);
        self.advance(tenant, group, seq, stream_seq, Some(key))
    }

    /// A head another node announced (`crate::heads`): a cached group's head and stream
    /// seq move forward to it, so reads here reach it.
    pub(crate) fn observe_head(
        &self,
        tenant: TenantId,
        group: GroupId,
        seq: u64,
        stream_seq: u64,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.advance(tenant, group, seq, stream_seq, None)
    }

    /// Moves a cached group's tail to (`seq`, `stream_seq`) if that is past it, recording
    /// the message's dedupe key when known.
    fn advance(
        &self,
        tenant: TenantId,
        group: GroupId,
        seq: u64,
        stream_seq: u64,
        key: Option<[u8; 16]>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            let cached = inner.groups.lock().get(&(tenant, group)).cloned();
            let Some(state) = cached else { return };
            let mut state = state.lock().await;
            if !state.loaded || seq <= state.tail.head || stream_seq <= state.tail.last_stream_seq {
                return;
            }
            state.tail = Tail {
                head: seq,
                last_stream_seq: stream_seq,
            };
            state.index.insert(seq, stream_seq);
            if let Some(key) = key {
                let window = inner.config.dedupe_window;
                state.dedupe.insert(key, seq, window);
            }
        }
    }

    fn with_group<T, F, Fut>(
        &self,
        op: &'static str,
        tenant: &TenantId,
        group: &GroupId,
        f: F,
    ) -> Result<T, ClusterError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>, TenantId, GroupId) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClusterError>> + Send + 'static,
    {
        let fut = f(self.inner.clone(), tenant.clone(), group.clone());
        self.bridge.run(op, fut)
    }
}

impl Inner {
    /// The shard's stream, created on first use (an existing one is used as it is: changing
    /// replicas or limits is an operator's stream update).
    async fn stream(&self, shard: u16) -> Result<stream::Stream, ClusterError> {
        if let Some(s) = self.streams.lock().get(&shard) {
            return Ok(s.clone());
        }
        let name = self.names.stream(shard);
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![self.names.stream_subjects(shard)],
            storage: StorageType::File,
            num_replicas: self.config.replicas,
            duplicate_window: self.config.duplicate_window,
            allow_direct: true,
            max_message_size: i32::try_from(self.config.max_message_bytes).unwrap_or(i32::MAX),
            deny_delete: true,
            // Commit batches go as one atomic batch ([`JetStreamLog::append_batch`]).
            allow_atomic_publish: true,
            ..Default::default()
        };
        let stream =
            self.js
                .get_or_create_stream(config)
                .await
                .map_err(|e| ClusterError::Stream {
                    stream: name,
                    detail: e.to_string(),
                })?;
        self.streams.lock().insert(shard, stream.clone());
        Ok(stream)
    }

    fn shard(&self, shard: u16) -> SharedShard {
        self.shards.lock().entry(shard).or_default().clone()
    }

    /// Takes `shard` for `owner` (see [`JetStreamLog::take_shard`]).
    async fn take(&self, shard: u16, owner: String, epoch: u64) -> Result<u64, ClusterError> {
        let state = self.shard(shard);
        let mut state = state.lock_owned().await;
        state.hold.fenced();
        self.groups
            .lock()
            .retain(|(tenant, group), _| shard_of(tenant, group) != shard);
        let marker = self.write_marker(shard, &owner, epoch, None).await?;
        state.hold.taken(marker);
        state.owner = owner;
        state.epoch = epoch;
        tracing::debug!(shard, marker, epoch, "took the shard");
        Ok(marker)
    }

    /// Writes a fence marker for `shard`; with `after`, only if the newest marker is still
    /// the one at that stream seq (a retake by the writer that holds the shard).
    async fn write_marker(
        &self,
        shard: u16,
        owner: &str,
        epoch: u64,
        after: Option<u64>,
    ) -> Result<u64, ClusterError> {
        self.stream(shard).await?;
        let subject = self.names.fence_subject(shard);
        let mut headers = HeaderMap::new();
        headers.insert(H_OWNER, encode_token(owner));
        headers.insert(H_EPOCH, epoch.to_string());
        let mut publish = PublishMessage::build()
            .headers(headers)
            .expected_stream(self.names.stream(shard));
        if let Some(marker) = after {
            publish = publish.expected_last_subject_sequence(marker);
        }
        let sent = match self.js.send_publish(subject.clone(), publish).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        sent.map(|ack| ack.sequence).map_err(|e| match e.kind() {
            PublishErrorKind::WrongLastSequence => ClusterError::Fenced {
                shard,
                subject,
                expected: after.unwrap_or(0),
            },
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                ClusterError::Unacknowledged {
                    subject,
                    detail: e.to_string(),
                }
            }
            _ => ClusterError::Refused {
                subject,
                detail: e.to_string(),
            },
        })
    }

    fn group_lock(&self, tenant: &TenantId, group: &GroupId) -> SharedGroup {
        let mut groups = self.groups.lock();
        if groups.len() >= self.config.max_cached_groups {
            // Drop idle groups (nobody holds their lock); they reload from the stream.
            groups.retain(|_, state| Arc::strong_count(state) > 1);
        }
        groups
            .entry((tenant.clone(), group.clone()))
            .or_default()
            .clone()
    }

    /// Loads a group's state from the stream unless it is loaded: head and predecessor from
    /// the subject's last message, the first seq from its first, and the dedupe window from
    /// the headers of its newest `dedupe_window` messages.
    async fn load(
        &self,
        state: &mut GroupState,
        stream: &stream::Stream,
        subject: &str,
    ) -> Result<(), ClusterError> {
        if state.loaded {
            return Ok(());
        }
        *state = GroupState::default();
        let read_err = |e: &dyn std::fmt::Display| ClusterError::Read {
            subject: subject.to_owned(),
            detail: e.to_string(),
        };
        let last = match stream.direct_get_last_for_subject(subject).await {
            Ok(m) => Some(m),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => None,
            Err(e) => return Err(read_err(&e)),
        };
        let Some(last) = last else {
            state.first = 1;
            state.loaded = true;
            return Ok(());
        };
        let head = parse_meta(subject, last.sequence, Some(&last.headers))?.seq;
        let first = stream
            .direct_get_first_for_subject(subject)
            .await
            .map_err(|e| read_err(&e))?;
        state.first = parse_meta(subject, first.sequence, Some(&first.headers))?.seq;
        state.tail = Tail {
            head,
            last_stream_seq: last.sequence,
        };
        state.index.insert(head, last.sequence);
        state.index.insert(state.first, first.sequence);
        // The dedupe window: the newest `dedupe_window` messages' headers.
        let from = head
            .saturating_sub(u64::from(self.config.dedupe_window) - 1)
            .max(state.first);
        let start = self.locate(state, stream, subject, from).await?;
        let count = (head - from + 1) as usize;
        let window = self.config.dedupe_window;
        self.scan(
            stream,
            subject,
            start,
            count,
            true,
            |stream_seq, meta, _| {
                state.dedupe.insert(
                    dedupe_key(meta.sender.as_str(), &meta.client_msg_id),
                    meta.seq,
                    window,
                );
                if meta.seq % INDEX_EVERY == 0 {
                    state.index.insert(meta.seq, stream_seq);
                }
            },
        )
        .await?;
        state.loaded = true;
        Ok(())
    }

    /// The stream seq of group seq `seq` (which must be in `first..=head`): the nearest
    /// known points around it bound a binary search over stream seqs, each probe a direct
    /// get of the subject's next message at or after a stream seq.
    async fn locate(
        &self,
        state: &mut GroupState,
        stream: &stream::Stream,
        subject: &str,
        seq: u64,
    ) -> Result<u64, ClusterError> {
        if let Some(&s) = state.index.get(&seq) {
            return Ok(s);
        }
        // Stream seqs of `seq` lie in (below, above): after the nearest known point under
        // it and before the nearest one over it.
        let mut lo = state
            .index
            .range(..seq)
            .next_back()
            .map_or(1, |(_, &s)| s + 1);
        let mut hi = state
            .index
            .range(seq..)
            .next()
            .map_or(state.tail.last_stream_seq, |(_, &s)| s.saturating_sub(1));
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let m = stream
                .direct_get_next_for_subject(subject, Some(mid))
                .await
                .map_err(|e| ClusterError::Read {
                    subject: subject.to_owned(),
                    detail: format!("locate seq {seq}: {e}"),
                })?;
            let at = parse_meta(subject, m.sequence, Some(&m.headers))?.seq;
            if at == seq {
                return Ok(m.sequence);
            }
            if at < seq {
                lo = m.sequence + 1;
            } else {
                hi = mid - 1;
            }
        }
        Err(ClusterError::Read {
            subject: subject.to_owned(),
            detail: format!("group seq {seq} is not in the stream (a gap in the log?)"),
        })
    }

    /// Reads `count` messages of `subject` from stream seq `start` on (an ordered consumer,
    /// headers only if asked), handing each to `each`. Waits at most `call_timeout` in all;
    /// the caller knows `count` exists, so fewer is an error.
    async fn scan(
        &self,
        stream: &stream::Stream,
        subject: &str,
        start: u64,
        count: usize,
        headers_only: bool,
        mut each: impl FnMut(u64, Meta, Bytes),
    ) -> Result<(), ClusterError> {
        if count == 0 {
            return Ok(());
        }
        let read_err = |detail: String| ClusterError::Read {
            subject: subject.to_owned(),
            detail,
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                headers_only,
                ..Default::default()
            })
            .await
            .map_err(|e| read_err(format!("create a reader: {e}")))?;
        // (An ordered reader that saw a gap recreates itself under a new name, which then
        // expires by itself.)
        let name = consumer.cached_info().name.clone();
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| read_err(format!("start reading: {e}")))?;
        let read = async {
            let mut got = 0;
            while got < count {
                let Some(m) = messages.next().await else {
                    return Err(read_err(format!("ended after {got} of {count}")));
                };
                let m = m.map_err(|e| read_err(e.to_string()))?;
                let stream_seq = m
                    .info()
                    .map_err(|e| read_err(format!("message info: {e}")))?
                    .stream_sequence;
                let meta = parse_meta(subject, stream_seq, m.headers.as_ref())?;
                each(stream_seq, meta, m.payload.clone());
                got += 1;
            }
            Ok(())
        };
        let result = tokio::time::timeout(self.config.call_timeout, read).await;
        // The reader would linger on the server for its inactivity threshold (30 s): delete
        // it now, so reads never pile readers up (best effort; the threshold is the backstop).
        drop(messages);
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::debug!(%subject, error = %e, "could not delete a finished reader");
        }
        result.map_err(|_| {
            read_err(format!(
                "{count} messages not read within {:?}",
                self.config.call_timeout
            ))
        })?
    }

    #[allow(clippy::too_many_arguments)]
    async fn append(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        sender: &UserId,
        client_msg_id: &str,
        lane: Lane,
        sent_at_ms: u64,
        body: Bytes,
    ) -> Result<(Appended, u64), ClusterError> {
        let shard = shard_of(tenant, group);
        let subject = self.names.subject(tenant, group);
        let fenced = || ClusterError::Fenced {
            shard,
            subject: subject.clone(),
            expected: 0,
        };
        let shard_state = self.shard(shard);
        if !shard_state.lock().await.hold.holds() {
            return Err(fenced());
        }
        let (stream, _, mut state) = self.open_group(tenant, group).await?;
        let key = dedupe_key(sender.as_str(), client_msg_id);
        if let Some(&seq) = state.dedupe.seqs.get(&key) {
            return Ok((Appended::Duplicate { seq }, 0));
        }
        // The shard's lock, after the group's: one write in flight per shard.
        let mut hold = shard_state.lock_owned().await;
        let last = match hold.hold.next() {
            Next::Refuse => return Err(fenced()),
            Next::Append { last } => last,
            Next::Retake { marker } => {
                // An earlier append's outcome is unknown: retake the shard if nobody else
                // took it since, then reload the group (after the marker) and go on.
                let (owner, epoch) = (hold.owner.clone(), hold.epoch);
                match self.write_marker(shard, &owner, epoch, Some(marker)).await {
                    Ok(m) => hold.hold.taken(m),
                    Err(e @ ClusterError::Fenced { .. }) => {
                        hold.hold.fenced();
                        tracing::warn!(%subject, "fenced out of shard {shard} on a retake");
                        return Err(e);
                    }
                    Err(e) => {
                        return Err(ClusterError::Refused {
                            subject: subject.clone(),
                            detail: format!("retake the shard after an unknown outcome: {e}"),
                        })
                    }
                }
                state.loaded = false;
                self.load(&mut state, &stream, &subject).await?;
                if let Some(&seq) = state.dedupe.seqs.get(&key) {
                    return Ok((Appended::Duplicate { seq }, 0));
                }
                match hold.hold.next() {
                    Next::Append { last } => last,
                    _ => return Err(fenced()),
                }
            }
        };
        let planned = state.tail.plan();
        let (seq, predecessor) = (planned.seq, planned.predecessor);
        let mut headers = HeaderMap::new();
        headers.insert(H_SEQ, seq.to_string());
        headers.insert(H_SENDER, encode_token(sender.as_str()));
        headers.insert(H_CLIENT_ID, encode_token(client_msg_id));
        headers.insert(H_LANE, lane_name(lane));
        headers.insert(H_SENT_AT, sent_at_ms.to_string());
        let publish = PublishMessage::build()
            .payload(body)
            .headers(headers)
            .message_id(msg_id(tenant, group, &key))
            .expected_last_subject_sequence(predecessor)
            .expected_last_sequence(last)
            .expected_stream(self.names.stream(shard));
        let sent = match self.js.send_publish(subject.clone(), publish).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        let ack = match sent {
            Ok(ack) => ack,
            Err(e) => {
                return Err(match e.kind() {
                    PublishErrorKind::WrongLastSequence => {
                        // Another writer wrote to the shard, or this writer's view of the
                        // group was stale: step down from the whole shard.
                        hold.hold.fenced();
                        state.loaded = false;
                        tracing::warn!(%subject, predecessor, "fenced out of shard {shard}");
                        ClusterError::Fenced {
                            shard,
                            subject,
                            expected: predecessor,
                        }
                    }
                    PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                        // Maybe stored: the chain's end is unknown (the next append
                        // retakes) and so is the group's tail (reload it).
                        hold.hold.unknown();
                        state.loaded = false;
                        ClusterError::Unacknowledged {
                            subject,
                            detail: e.to_string(),
                        }
                    }
                    _ => ClusterError::Refused {
                        subject,
                        detail: e.to_string(),
                    },
                });
            }
        };
        if ack.duplicate {
            // The server's window knew it (appended by an earlier owner, outside ours).
            let original =
                stream
                    .direct_get(ack.sequence)
                    .await
                    .map_err(|e| ClusterError::Read {
                        subject: subject.clone(),
                        detail: format!("the duplicate's original at {}: {e}", ack.sequence),
                    })?;
            let meta = parse_meta(&subject, original.sequence, Some(&original.headers))?;
            state
                .dedupe
                .insert(key, meta.seq, self.config.dedupe_window);
            return Ok((Appended::Duplicate { seq: meta.seq }, 0));
        }
        hold.hold.stored(ack.sequence);
        state.tail.stored(planned, ack.sequence);
        if seq % INDEX_EVERY == 0 {
            state.index.insert(seq, ack.sequence);
        }
        state.dedupe.insert(key, seq, self.config.dedupe_window);
        Ok((Appended::New { seq }, ack.sequence))
    }

    /// The group's stream and subject, and its state locked and loaded.
    async fn open_group(
        &self,
        tenant: &TenantId,
        group: &GroupId,
    ) -> Result<(stream::Stream, String, OwnedMutexGuard<GroupState>), ClusterError> {
        let subject = self.names.subject(tenant, group);
        let stream = self.stream(shard_of(tenant, group)).await?;
        let mut state = self.group_lock(tenant, group).lock_owned().await;
        self.load(&mut state, &stream, &subject).await?;
        Ok((stream, subject, state))
    }

    async fn read_after(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, ClusterError> {
        let (stream, subject, mut state) = self.open_group(tenant, group).await?;
        let (me, stream, subject, state) = (self, &stream, subject.as_str(), &mut *state);
        {
            let from = after.saturating_add(1).max(state.first);
            if limit == 0 || from > state.tail.head {
                return Ok(Vec::new());
            }
            let count = limit.min((state.tail.head - from + 1) as usize);
            let start = me.locate(state, stream, subject, from).await?;
            let mut out = Vec::with_capacity(count);
            me.scan(
                stream,
                subject,
                start,
                count,
                false,
                |stream_seq, meta, body| {
                    if meta.seq % INDEX_EVERY == 0 {
                        state.index.insert(meta.seq, stream_seq);
                    }
                    out.push(stored(meta, body));
                },
            )
            .await?;
            Ok(out)
        }
    }

    async fn message(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
    ) -> Result<Option<StoredMessage>, ClusterError> {
        let (stream, subject, mut state) = self.open_group(tenant, group).await?;
        let (me, stream, subject, state) = (self, &stream, subject.as_str(), &mut *state);
        {
            if seq < state.first || seq > state.tail.head {
                return Ok(None);
            }
            let at = me.locate(state, stream, subject, seq).await?;
            let m = stream
                .direct_get(at)
                .await
                .map_err(|e| ClusterError::Read {
                    subject: subject.to_owned(),
                    detail: format!("stream seq {at}: {e}"),
                })?;
            let meta = parse_meta(subject, m.sequence, Some(&m.headers))?;
            Ok(Some(stored(meta, m.payload)))
        }
    }
}

impl LogBackend for JetStreamLog {
    fn append(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        msg: NewMessage<'_>,
    ) -> Result<Appended, StoreError> {
        Ok(self.append_message(tenant, group, msg)?)
    }

    fn find_sent(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        sender: &UserId,
        client_msg_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        let key = dedupe_key(sender.as_str(), client_msg_id);
        Ok(
            self.with_group("find_sent", tenant, group, |inner, t, g| async move {
                let (_, _, state) = inner.open_group(&t, &g).await?;
                Ok(state.dedupe.seqs.get(&key).copied())
            })?,
        )
    }

    fn head(&self, tenant: &TenantId, group: &GroupId) -> Result<u64, StoreError> {
        Ok(
            self.with_group("head", tenant, group, |inner, t, g| async move {
                Ok(inner.open_group(&t, &g).await?.2.tail.head)
            })?,
        )
    }

    fn first_seq(&self, tenant: &TenantId, group: &GroupId) -> Result<u64, StoreError> {
        Ok(
            self.with_group("first_seq", tenant, group, |inner, t, g| async move {
                Ok(inner.open_group(&t, &g).await?.2.first)
            })?,
        )
    }

    fn read_after(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        Ok(
            self.with_group("read_after", tenant, group, |inner, t, g| async move {
                inner.read_after(&t, &g, after, limit).await
            })?,
        )
    }

    fn message(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        Ok(
            self.with_group("message", tenant, group, |inner, t, g| async move {
                inner.message(&t, &g, seq).await
            })?,
        )
    }

    /// Nothing to do: an append returns only after JetStream acknowledged it (see the
    /// crate docs for what that acknowledgement promises).
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Every shard number, for callers that take all shards at once.
pub fn all_shards() -> impl Iterator<Item = u16> {
    0..SHARDS
}
