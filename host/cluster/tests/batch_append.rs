//! Batched appends ([`JetStreamLog::append_batch`]) on a real nats-server: one atomic batch
//! and one acknowledgement per commit batch per shard, all-or-nothing under the fence, the
//! split at the server's batch limit, and the one-by-one fallback for a stream made without
//! atomic publish.

mod support;

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use switchboard_cluster::names::shard_of;
use switchboard_cluster::{BatchItem, ClusterError, JetStreamLog, MAX_BATCH_MESSAGES};
use switchboard_core::Lane;
use switchboard_store::{Appended, LogBackend, NewMessage};

use support::{g, t, u, NatsServer};

/// A generous bound for a message to reach the test's subscriber (2 shared cores).
const WITHIN: Duration = Duration::from_secs(30);

fn item(group: &str, id: &str) -> BatchItem {
    BatchItem {
        tenant: t("acme"),
        group: g(group),
        sender: u("ann"),
        client_msg_id: id.to_owned(),
        lane: Lane::Normal,
        sent_at_ms: 1_000,
        body: Bytes::from(id.to_owned()),
    }
}

/// `count` group names of tenant `acme` in one shard.
fn groups_of_one_shard(count: usize) -> (u16, Vec<String>) {
    let shard = shard_of(&t("acme"), &g("g0"));
    let names = (0..100_000)
        .map(|i| format!("g{i}"))
        .filter(|name| shard_of(&t("acme"), &g(name)) == shard)
        .take(count)
        .collect();
    (shard, names)
}

/// A writer that takes every shard and sends every run as an atomic batch, however short
/// (the default sends runs shorter than 16 one at a time).
fn owner(server: &NatsServer, prefix: &str, node: &str) -> JetStreamLog {
    let config = server.log_config(prefix).min_batch_messages(1);
    support::take_all(JetStreamLog::connect(config).unwrap(), node)
}

fn single(log: &JetStreamLog, group: &str, id: &str) -> Result<Appended, ClusterError> {
    log.append_message(
        &t("acme"),
        &g(group),
        NewMessage {
            sender: &u("ann"),
            lane: Lane::Normal,
            client_msg_id: id,
            sent_at_ms: 1_000,
            body: id.as_bytes(),
        },
    )
}

fn bodies(log: &JetStreamLog, group: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    loop {
        let after = out.last().map_or(0, |(seq, _)| *seq);
        let page = LogBackend::read_after(log, &t("acme"), &g(group), after, 1000).unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(
            page.into_iter()
                .map(|m| (m.seq, String::from_utf8(m.body.to_vec()).unwrap())),
        );
    }
}

/// Watches what reaches one shard's subjects on the server, from its own connection: each
/// message's subject and whether it asked for a reply (an acknowledgement).
struct Wire {
    runtime: tokio::runtime::Runtime,
    subscriber: async_nats::Subscriber,
    js: jetstream::Context,
}

impl Wire {
    fn watch(server: &NatsServer, subjects: String) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (subscriber, js) = runtime.block_on(async {
            let client = async_nats::connect(server.url()).await.unwrap();
            let subscriber = client.subscribe(subjects).await.unwrap();
            // The subscription is in place on the server before anything is published.
            client.flush().await.unwrap();
            (subscriber, jetstream::new(client))
        });
        Self {
            runtime,
            subscriber,
            js,
        }
    }

    /// Every message up to and including the first one whose body is `last`, as
    /// (body, asked for a reply). The log's messages come from one connection, so the
    /// server relays them here in the order it received them.
    fn until(&mut self, last: &str) -> Vec<(String, bool)> {
        self.until_nth(last, 1)
    }

    /// [`Wire::until`] the `nth` message whose body is `last`.
    fn until_nth(&mut self, last: &str, nth: usize) -> Vec<(String, bool)> {
        let subscriber = &mut self.subscriber;
        let mut left = nth;
        self.runtime.block_on(async {
            let mut seen = Vec::new();
            loop {
                let m = tokio::time::timeout(WITHIN, subscriber.next())
                    .await
                    .unwrap_or_else(|_| panic!("{last:?} did not arrive; saw {seen:?}"))
                    .expect("subscription open");
                let body = String::from_utf8(m.payload.to_vec()).unwrap();
                left -= usize::from(body == last);
                seen.push((body, m.reply.is_some()));
                if left == 0 {
                    return seen;
                }
            }
        })
    }

    /// Messages stored in `stream` and its last stream seq.
    fn stream_state(&self, stream: &str) -> (u64, u64) {
        self.runtime.block_on(async {
            let mut s = self.js.get_stream(stream).await.unwrap();
            let state = s.info().await.unwrap().state.clone();
            (state.messages, state.last_sequence)
        })
    }
}

#[test]
fn a_commit_batch_across_groups_of_one_shard_is_one_atomic_batch_with_one_ack() {
    let server = NatsServer::start();
    let (shard, names) = groups_of_one_shard(3);
    let log = owner(&server, "batch", "solo");
    let mut wire = Wire::watch(&server, log.names().stream_subjects(shard));
    // A message before the batch, so its group's predecessor is a real stream seq.
    assert_eq!(
        single(&log, &names[0], "before").unwrap(),
        Appended::New { seq: 1 }
    );
    let (_, last_before) = wire.stream_state(&log.names().stream(shard));

    // 12 sends interleaved over the 3 groups, a resend inside the batch and a resend of
    // the message before it.
    let mut items: Vec<BatchItem> = (0..12)
        .map(|i| item(&names[i % 3], &format!("m{i}")))
        .collect();
    items.push(item(&names[1], "m1"));
    items.push(item(&names[0], "before"));
    let outcomes = log.append_batch(items).unwrap();
    let outcomes: Vec<(Appended, u64)> = outcomes.into_iter().map(Result::unwrap).collect();

    for (i, (appended, stream_seq)) in outcomes[..12].iter().enumerate() {
        // Group seqs continue each group's log; stream seqs are consecutive after the
        // last write, in the batch's order.
        let group_seq = (i / 3) as u64 + 1 + u64::from(i % 3 == 0);
        assert_eq!(*appended, Appended::New { seq: group_seq }, "item {i}");
        assert_eq!(*stream_seq, last_before + 1 + i as u64, "item {i}");
    }
    assert_eq!(outcomes[12], (Appended::Duplicate { seq: 1 }, 0));
    assert_eq!(outcomes[13], (Appended::Duplicate { seq: 1 }, 0));

    // On the wire: 12 messages, and only the last (the commit) asked for an ack. The
    // single append after it is the marker that everything before has been relayed.
    assert_eq!(
        single(&log, &names[2], "after").unwrap(),
        Appended::New { seq: 5 }
    );
    let seen = wire.until("after");
    assert_eq!(seen[0], ("before".to_string(), true));
    let batch = &seen[1..seen.len() - 1];
    assert_eq!(batch.len(), 12, "{seen:?}");
    assert_eq!(
        batch.iter().filter(|(_, reply)| *reply).count(),
        1,
        "{seen:?}"
    );
    assert!(
        batch.last().unwrap().1,
        "the commit is the one that asks: {seen:?}"
    );

    // Stored as planned, read back by a writer that knows nothing of this one's cache.
    let reader = server.log("batch");
    let mut want0 = vec![(1, "before".to_string())];
    want0.extend((0..4).map(|k| (k + 2, format!("m{}", k * 3))));
    assert_eq!(bodies(&reader, &names[0]), want0);
    assert_eq!(
        bodies(&reader, &names[1]),
        (0..4)
            .map(|k| (k + 1, format!("m{}", k * 3 + 1)))
            .collect::<Vec<_>>()
    );
    let mut want2: Vec<_> = (0..4).map(|k| (k + 1, format!("m{}", k * 3 + 2))).collect();
    want2.push((5, "after".into()));
    assert_eq!(bodies(&reader, &names[2]), want2);
    assert_eq!(
        wire.stream_state(&log.names().stream(shard)).1,
        last_before + 13
    );
}

#[test]
fn a_fenced_out_writers_batch_stores_nothing() {
    let server = NatsServer::start();
    let (shard, names) = groups_of_one_shard(2);
    let old = owner(&server, "fenced", "old");
    assert_eq!(
        single(&old, &names[0], "a1").unwrap(),
        Appended::New { seq: 1 }
    );
    // A new owner takes the shard and appends; the old one still believes it owns it.
    let new = owner(&server, "fenced", "new");
    assert_eq!(
        single(&new, &names[0], "b1").unwrap(),
        Appended::New { seq: 2 }
    );
    let mut wire = Wire::watch(&server, old.names().stream_subjects(shard));
    let stream = old.names().stream(shard);
    let before = wire.stream_state(&stream);

    let items: Vec<BatchItem> = (0..6)
        .map(|i| item(&names[i % 2], &format!("x{i}")))
        .collect();
    let outcomes = old.append_batch(items).unwrap();
    assert_eq!(outcomes.len(), 6);
    for outcome in &outcomes {
        let err = outcome.as_ref().unwrap_err();
        assert!(matches!(err, ClusterError::Fenced { .. }), "{err:?}");
        assert!(!err.outcome_unknown());
    }
    assert!(old.is_fenced(shard));
    // Not one message of the batch is in the stream, in any group.
    assert_eq!(wire.stream_state(&stream), before);
    assert_eq!(
        bodies(&new, &names[0]),
        vec![(1, "a1".to_string()), (2, "b1".to_string())]
    );
    assert!(bodies(&new, &names[1]).is_empty());
    // A later batch of the old writer is refused without asking the server; the new owner
    // goes on with a batch of its own.
    assert!(matches!(
        old.append_batch(vec![item(&names[1], "x9")]).unwrap()[0],
        Err(ClusterError::Fenced { expected: 0, .. })
    ));
    let outcomes = new
        .append_batch(vec![item(&names[0], "b2"), item(&names[1], "b3")])
        .unwrap();
    assert_eq!(outcomes[0].as_ref().unwrap().0, Appended::New { seq: 3 });
    assert_eq!(outcomes[1].as_ref().unwrap().0, Appended::New { seq: 1 });
    // The server refused the batch as a whole at its commit (the one message that asked),
    // not message by message: the old writer's marker (empty body) comes after it on the
    // old writer's connection.
    old.take_shard(shard, "old", 2).unwrap();
    let seen: Vec<(String, bool)> = wire
        .until("")
        .into_iter()
        .filter(|(body, _)| body.starts_with('x'))
        .collect();
    let want: Vec<(String, bool)> = (0..6).map(|i| (format!("x{i}"), i == 5)).collect();
    assert_eq!(seen, want);
}

#[test]
fn a_batch_past_the_servers_limit_is_split_and_every_part_stored_in_order() {
    let server = NatsServer::start();
    let (shard, names) = groups_of_one_shard(2);
    let log = owner(&server, "split", "solo");
    let mut wire = Wire::watch(&server, log.names().stream_subjects(shard));
    let n = MAX_BATCH_MESSAGES + MAX_BATCH_MESSAGES / 2;
    let items: Vec<BatchItem> = (0..n)
        .map(|i| item(&names[i % 2], &format!("m{i}")))
        .collect();
    let outcomes = log.append_batch(items).unwrap();
    let stream_seqs: Vec<u64> = outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let (appended, stream_seq) = o.as_ref().unwrap();
            assert_eq!(
                *appended,
                Appended::New {
                    seq: (i / 2) as u64 + 1
                }
            );
            *stream_seq
        })
        .collect();
    assert!(stream_seqs.windows(2).all(|w| w[1] == w[0] + 1));

    // Two batches (the server's limit is 1,000 messages per batch): two commits asked for
    // an ack, at the end of each part.
    assert_eq!(
        single(&log, &names[0], "after").unwrap(),
        Appended::New {
            seq: (n / 2) as u64 + 1
        }
    );
    let seen = wire.until("after");
    assert_eq!(seen.len(), n + 1);
    let asked: Vec<usize> = seen[..n]
        .iter()
        .enumerate()
        .filter(|(_, (_, reply))| *reply)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(asked, vec![MAX_BATCH_MESSAGES - 1, n - 1]);

    let reader = server.log("split");
    for (k, name) in names.iter().enumerate() {
        let got = bodies(&reader, name);
        let want: Vec<(u64, String)> = (0..n / 2)
            .map(|j| (j as u64 + 1, format!("m{}", j * 2 + k)))
            .chain((k == 0).then(|| ((n / 2) as u64 + 1, "after".to_string())))
            .collect();
        assert_eq!(got, want, "group {name}");
    }
}

#[test]
fn a_stream_without_atomic_publish_takes_the_batch_one_by_one() {
    let server = NatsServer::start();
    let (shard, names) = groups_of_one_shard(2);
    let probe = server.log("plain");
    // The shard's stream made beforehand the way an older node made it: no atomic publish.
    let mut wire = Wire::watch(&server, probe.names().stream_subjects(shard));
    wire.runtime.block_on(async {
        wire.js
            .create_stream(jetstream::stream::Config {
                name: probe.names().stream(shard),
                subjects: vec![probe.names().stream_subjects(shard)],
                allow_direct: true,
                ..Default::default()
            })
            .await
            .unwrap();
    });
    drop(probe);
    let log = owner(&server, "plain", "solo");
    let items: Vec<BatchItem> = (0..4)
        .map(|i| item(&names[i % 2], &format!("m{i}")))
        .collect();
    let outcomes = log.append_batch(items).unwrap();
    let seqs: Vec<Appended> = outcomes.into_iter().map(|o| o.unwrap().0).collect();
    assert_eq!(
        seqs,
        vec![
            Appended::New { seq: 1 },
            Appended::New { seq: 1 },
            Appended::New { seq: 2 },
            Appended::New { seq: 2 }
        ]
    );
    assert_eq!(
        bodies(&log, &names[0]),
        vec![(1, "m0".to_string()), (2, "m2".to_string())]
    );
    // The batch (the commit alone asked) was refused whole, then each send went as its own
    // acknowledged append.
    let seen = wire.until_nth("m3", 2);
    let want: Vec<(String, bool)> = std::iter::once(("".to_string(), true))
        .chain((0..4).map(|i| (format!("m{i}"), i == 3)))
        .chain((0..4).map(|i| (format!("m{i}"), true)))
        .collect();
    assert_eq!(seen, want);
}

#[test]
fn a_resend_only_the_servers_window_knows_is_answered_from_a_batch_too() {
    let server = NatsServer::start();
    // A small local window, so only the server's Nats-Msg-Id window knows older sends.
    let config = server
        .log_config("resend")
        .dedupe_window(3)
        .min_batch_messages(1);
    let first = support::take_all(JetStreamLog::connect(config.clone()).unwrap(), "first");
    for i in 0..10 {
        single(&first, "g", &format!("m{i}")).unwrap();
    }
    drop(first);
    let next = support::take_all(JetStreamLog::connect(config).unwrap(), "next");
    // The server refuses a batch holding a duplicate `Nats-Msg-Id` as a whole; the sends then
    // go one by one and each gets its usual answer.
    let outcomes = next
        .append_batch(vec![item("g", "m0"), item("g", "new"), item("g", "m9")])
        .unwrap();
    let got: Vec<Appended> = outcomes.into_iter().map(|o| o.unwrap().0).collect();
    assert_eq!(
        got,
        vec![
            Appended::Duplicate { seq: 1 },
            Appended::New { seq: 11 },
            Appended::Duplicate { seq: 10 }
        ]
    );
    let stored = bodies(&next, "g");
    assert_eq!(stored.len(), 11);
    assert_eq!(stored[10], (11, "new".to_string()));
}

#[test]
fn a_commit_batch_over_several_shards_is_one_atomic_batch_per_shard() {
    let server = NatsServer::start();
    let log = owner(&server, "shards", "solo");
    // Groups in 4 different shards, 5 sends each, interleaved.
    let mut shards = std::collections::BTreeSet::new();
    let names: Vec<String> = (0..100_000)
        .map(|i| format!("s{i}"))
        .filter(|name| shards.insert(shard_of(&t("acme"), &g(name))))
        .take(4)
        .collect();
    let items: Vec<BatchItem> = (0..20)
        .map(|i| item(&names[i % 4], &format!("m{i}")))
        .collect();
    let outcomes = log.append_batch(items).unwrap();
    for (i, outcome) in outcomes.iter().enumerate() {
        assert_eq!(
            outcome.as_ref().unwrap().0,
            Appended::New {
                seq: (i / 4) as u64 + 1
            },
            "item {i}"
        );
    }
    let reader = server.log("shards");
    for (k, name) in names.iter().enumerate() {
        let want: Vec<(u64, String)> = (0..5)
            .map(|j| (j as u64 + 1, format!("m{}", j * 4 + k)))
            .collect();
        assert_eq!(bodies(&reader, name), want, "group {name}");
        // Each shard's five went as one batch: consecutive stream seqs.
        let seqs: Vec<u64> = outcomes
            .iter()
            .skip(k)
            .step_by(4)
            .map(|o| o.as_ref().unwrap().1)
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    }
}

#[test]
fn a_run_shorter_than_the_minimum_goes_one_at_a_time() {
    let server = NatsServer::start();
    let (shard, names) = groups_of_one_shard(2);
    // The default minimum (16).
    let log = server.owner("short", "solo");
    let mut wire = Wire::watch(&server, log.names().stream_subjects(shard));
    let items: Vec<BatchItem> = (0..15)
        .map(|i| item(&names[i % 2], &format!("m{i}")))
        .collect();
    let outcomes = log.append_batch(items).unwrap();
    for (i, outcome) in outcomes.iter().enumerate() {
        assert_eq!(
            outcome.as_ref().unwrap().0,
            Appended::New {
                seq: (i / 2) as u64 + 1
            }
        );
    }
    // Every one asked for its own acknowledgement.
    let seen = wire.until("m14");
    let want: Vec<(String, bool)> = (0..15).map(|i| (format!("m{i}"), true)).collect();
    assert_eq!(seen, want);
}

#[test]
fn a_batch_whose_ack_is_lost_is_unknown_except_what_was_answered_before() {
    let server = NatsServer::start();
    let config = switchboard_cluster::JetStreamLogConfig {
        request_timeout: Duration::from_secs(1),
        call_timeout: Duration::from_secs(20),
        ..server.log_config("lost").min_batch_messages(1)
    };
    let log = support::take_all(JetStreamLog::connect(config).unwrap(), "solo");
    let (shard, names) = groups_of_one_shard(2);
    assert_eq!(
        single(&log, &names[0], "before").unwrap(),
        Appended::New { seq: 1 }
    );
    // Both groups loaded, so the batch's only IO is its publish.
    assert_eq!(
        LogBackend::head(&log, &t("acme"), &g(&names[1])).unwrap(),
        0
    );
    drop(server);
    let mut items: Vec<BatchItem> = (0..4)
        .map(|i| item(&names[i % 2], &format!("m{i}")))
        .collect();
    items.push(item(&names[0], "before"));
    let outcomes = log.append_batch(items).unwrap();
    for outcome in &outcomes[..4] {
        let err = outcome.as_ref().unwrap_err();
        assert!(!matches!(err, ClusterError::Fenced { .. }), "{err:?}");
        assert!(err.outcome_unknown(), "{err:?}");
    }
    // Answered from the writer's window before anything was sent.
    assert_eq!(
        outcomes[4].as_ref().unwrap(),
        &(Appended::Duplicate { seq: 1 }, 0)
    );
    // The shard is not given up: the next append retakes it (here it fails, the server
    // is gone), it is not refused as fenced.
    assert!(!log.is_fenced(shard));
}
