//! The JetStream group log's own promises, on a real nats-server: fencing of a second
//! writer, ids with subject syntax, dedupe across a change of writer, typed failures.

mod support;

use std::time::Duration;

use switchboard_cluster::names::shard_of;
use switchboard_cluster::{ClusterError, JetStreamLog};
use switchboard_core::{Lane, UserId};
use switchboard_store::{Appended, LogBackend, NewMessage, StoreError};

use support::{g, t, take_all, u, NatsServer};

fn msg<'a>(sender: &'a UserId, id: &'a str, body: &'a [u8]) -> NewMessage<'a> {
    NewMessage {
        sender,
        lane: Lane::Normal,
        client_msg_id: id,
        sent_at_ms: 1_000,
        body,
    }
}

fn append(
    log: &JetStreamLog,
    tenant: &str,
    group: &str,
    id: &str,
) -> Result<Appended, ClusterError> {
    log.append_message(&t(tenant), &g(group), msg(&u("ann"), id, id.as_bytes()))
}

fn bodies(log: &JetStreamLog, tenant: &str, group: &str) -> Vec<(u64, String)> {
    LogBackend::read_after(log, &t(tenant), &g(group), 0, 1000)
        .unwrap()
        .into_iter()
        .map(|m| (m.seq, String::from_utf8(m.body.to_vec()).unwrap()))
        .collect()
}

#[test]
fn a_second_writer_that_believes_it_owns_the_shard_is_fenced_and_appends_nothing() {
    let server = NatsServer::start();
    let old = server.owner("fence", "old");
    assert_eq!(
        append(&old, "acme", "g", "a1").unwrap(),
        Appended::New { seq: 1 }
    );
    // A new owner takes the group over (it loads the group's head from the stream) and
    // appends; the old one still believes it owns the shard.
    let new = server.owner("fence", "new");
    assert_eq!(
        append(&new, "acme", "g", "b1").unwrap(),
        Appended::New { seq: 2 }
    );

    let err = append(&old, "acme", "g", "a2").unwrap_err();
    let shard = shard_of(&t("acme"), &g("g"));
    assert!(
        // It named a1 (stream seq 2, after its marker at 1) as g's predecessor.
        matches!(&err, ClusterError::Fenced { shard: s, expected: 2, .. } if *s == shard),
        "{err:?}"
    );
    assert!(!err.outcome_unknown());
    assert!(old.is_fenced(shard));
    // Through the store seam it is the store's fencing error, distinct from a failure.
    let err =
        LogBackend::append(&old, &t("acme"), &g("g"), msg(&u("ann"), "a3", b"a3")).unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err:?}");
    // Fenced from the whole shard: another group of the same shard is refused too, even
    // one this writer never touched (its view of the shard is stale).
    let other = (0..10_000)
        .map(|i| format!("o{i}"))
        .find(|name| shard_of(&t("acme"), &g(name)) == shard)
        .unwrap();
    assert!(matches!(
        append(&old, "acme", &other, "a4"),
        Err(ClusterError::Fenced { .. })
    ));
    // Nothing of the old writer's was appended after it lost the shard.
    assert_eq!(
        bodies(&new, "acme", "g"),
        vec![(1, "a1".into()), (2, "b1".into())]
    );
    assert_eq!(LogBackend::head(&new, &t("acme"), &g(&other)).unwrap(), 0);
    // The new owner goes on; taking the shard again reloads the group and continues it.
    assert_eq!(
        append(&new, "acme", "g", "b2").unwrap(),
        Appended::New { seq: 3 }
    );
    old.take_shard(shard, "old", 2).unwrap();
    assert!(!old.is_fenced(shard));
    assert_eq!(
        append(&old, "acme", "g", "a5").unwrap(),
        Appended::New { seq: 4 }
    );
    assert!(matches!(
        append(&new, "acme", "g", "b3"),
        Err(ClusterError::Fenced { expected, .. }) if expected > 0
    ));
}

#[test]
fn a_takeover_racing_the_old_writers_appends_leaves_one_gapless_log() {
    let server = NatsServer::start();
    let shard = shard_of(&t("acme"), &g("g"));
    // a holds the shard and appends 50; meanwhile b takes the shard (at whatever point of
    // a's run the threads meet) and appends 50 of its own.
    let a = server.owner("race", "a");
    let b = server.log("race");
    let results: Vec<Vec<Result<Appended, ClusterError>>> = std::thread::scope(|s| {
        let run = |log: &JetStreamLog, who: &'static str| {
            (0..50)
                .map(|i| append(log, "acme", "g", &format!("{who}{i}")))
                .collect::<Vec<_>>()
        };
        let (a, b) = (&a, &b);
        let ha = s.spawn(move || run(a, "a"));
        let hb = s.spawn(move || {
            b.take_shard(shard, "b", 2).unwrap();
            run(b, "b")
        });
        vec![ha.join().unwrap(), hb.join().unwrap()]
    });
    let log = bodies(&server.log("race"), "acme", "g");
    // Seqs are 1..=n with no gap or repeat, and every append that returned New is in the
    // log at its seq; every other one returned Fenced and is not in it.
    assert_eq!(
        log.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=log.len() as u64).collect::<Vec<_>>()
    );
    for (who, results) in ["a", "b"].iter().zip(&results) {
        for (i, r) in results.iter().enumerate() {
            let body = format!("{who}{i}");
            match r {
                Ok(Appended::New { seq }) => {
                    assert_eq!(log[*seq as usize - 1].1, body)
                }
                Err(ClusterError::Fenced { .. }) => {
                    assert!(
                        !log.iter().any(|(_, b)| *b == body),
                        "{body} fenced yet stored"
                    )
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }
    // The new owner was never refused; the old one's appends stopped at the takeover:
    // a prefix of them is stored, the rest fenced, and none of them after any of b's.
    assert!(results[1].iter().all(Result::is_ok), "{:?}", results[1]);
    let stored_a = results[0].iter().take_while(|r| r.is_ok()).count();
    assert!(results[0][stored_a..].iter().all(Result::is_err));
    let first_b = log.iter().position(|(_, body)| body.starts_with('b'));
    let last_a = log.iter().rposition(|(_, body)| body.starts_with('a'));
    if let (Some(first_b), Some(last_a)) = (first_b, last_a) {
        assert!(last_a < first_b, "{log:?}");
    }
    assert_eq!(log.len(), stored_a + 50);
}

#[test]
fn ids_with_subject_syntax_stay_in_their_own_logs() {
    let server = NatsServer::start();
    let log = server.owner("ids", "solo");
    // Valid ids may contain '.', ':' and '@'; none may leak into another group's subject.
    let pairs = [
        ("t.u", "v"),
        ("t", "u.v"),
        ("t", "u"),
        ("t", "u.v.w"),
        ("a@b", "c:d"),
        ("a", "b@c:d"),
    ];
    for (i, (tenant, group)) in pairs.iter().enumerate() {
        for n in 0..=i {
            append(&log, tenant, group, &format!("{tenant}/{group}/{n}")).unwrap();
        }
    }
    for (i, (tenant, group)) in pairs.iter().enumerate() {
        let got = bodies(&log, tenant, group);
        let want: Vec<_> = (0..=i)
            .map(|n| (n as u64 + 1, format!("{tenant}/{group}/{n}")))
            .collect();
        assert_eq!(got, want, "{tenant}/{group}");
    }
    // Client ids and senders travel as encoded headers, whatever they hold.
    let hostile = "a.b *> \r\n\0ü~2E";
    let seq = log
        .append_message(&t("t"), &g("u"), msg(&u("x.y@z"), hostile, b""))
        .unwrap()
        .seq();
    let m = LogBackend::message(&log, &t("t"), &g("u"), seq)
        .unwrap()
        .unwrap();
    assert_eq!(
        (m.sender.as_str(), m.client_msg_id.as_str()),
        ("x.y@z", hostile)
    );
}

#[test]
fn a_resend_after_the_writer_changed_is_a_duplicate_with_its_original_seq() {
    let server = NatsServer::start();
    // A small local window, so the server's Nats-Msg-Id window is what finds older ones.
    let config = server.log_config("dedupe").dedupe_window(3);
    let first = take_all(JetStreamLog::connect(config.clone()).unwrap(), "first");
    for i in 0..10 {
        append(&first, "acme", "g", &format!("m{i}")).unwrap();
    }
    drop(first); // the owner dies
    let next = take_all(JetStreamLog::connect(config).unwrap(), "next");
    // Within the rebuilt local window (newest 3): find_sent knows it, append answers it.
    assert_eq!(
        LogBackend::find_sent(&next, &t("acme"), &g("g"), &u("ann"), "m9").unwrap(),
        Some(10)
    );
    assert_eq!(
        append(&next, "acme", "g", "m8").unwrap(),
        Appended::Duplicate { seq: 9 }
    );
    // Older than the local window but within the server's duplicate window: still a
    // duplicate, with the original's seq read back from the stream.
    assert_eq!(
        LogBackend::find_sent(&next, &t("acme"), &g("g"), &u("ann"), "m0").unwrap(),
        None
    );
    assert_eq!(
        append(&next, "acme", "g", "m0").unwrap(),
        Appended::Duplicate { seq: 1 }
    );
    assert_eq!(
        append(&next, "acme", "g", "m3").unwrap(),
        Appended::Duplicate { seq: 4 }
    );
    // Nothing was appended twice, and the group goes on from its head.
    assert_eq!(
        append(&next, "acme", "g", "new").unwrap(),
        Appended::New { seq: 11 }
    );
    assert_eq!(bodies(&next, "acme", "g").len(), 11);
}

#[test]
fn failures_that_are_not_fencing_are_typed_apart() {
    let server = NatsServer::start();
    let log = take_all(
        JetStreamLog::connect(server.log_config("limits").max_message_bytes(4096)).unwrap(),
        "solo",
    );
    append(&log, "acme", "g", "ok").unwrap();
    let big = vec![7u8; 8192];
    let err = log
        .append_message(&t("acme"), &g("g"), msg(&u("ann"), "big", &big))
        .unwrap_err();
    assert!(matches!(err, ClusterError::Refused { .. }), "{err:?}");
    assert!(!err.outcome_unknown());
    assert!(!log.is_fenced(shard_of(&t("acme"), &g("g"))));
    // Not written, and the group goes on.
    assert_eq!(
        append(&log, "acme", "g", "after").unwrap(),
        Appended::New { seq: 2 }
    );

    // A server that is gone: the append's outcome is unknown or it was refused, never
    // "fenced", and nothing waits longer than the bounds.
    let quick = server.log_config("limits").max_message_bytes(4096);
    let quick = switchboard_cluster::JetStreamLogConfig {
        request_timeout: Duration::from_secs(1),
        call_timeout: Duration::from_secs(10),
        ..quick
    };
    let log = take_all(JetStreamLog::connect(quick).unwrap(), "quick");
    append(&log, "acme", "h", "x").unwrap();
    drop(server);
    let err = append(&log, "acme", "h", "y").unwrap_err();
    assert!(!matches!(err, ClusterError::Fenced { .. }), "{err:?}");
    assert!(matches!(
        StoreError::from(err),
        StoreError::OutcomeUnknown(_) | StoreError::Io(_)
    ));
}

#[test]
fn a_missing_server_fails_to_connect_with_its_address() {
    let config = switchboard_cluster::JetStreamLogConfig {
        request_timeout: Duration::from_millis(500),
        ..switchboard_cluster::JetStreamLogConfig::new("nats://127.0.0.1:1", "none")
    };
    match JetStreamLog::connect(config) {
        Err(ClusterError::Connect { url, .. }) => assert!(url.contains("127.0.0.1:1")),
        other => panic!("{other:?}"),
    }
}
