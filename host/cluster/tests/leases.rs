//! Shard leases on a real nats-server: one holder at a time, renewal by revision, and a
//! paused holder whose lease expired loses the shard — its renewal is refused and its stale
//! append is refused by the log's expected-sequence check.

mod support;

use std::time::{Duration, Instant};

use switchboard_cluster::names::shard_of;
use switchboard_cluster::{ClusterError, JetStreamLog, ShardLeases};
use switchboard_core::{GroupId, Lane, TenantId, UserId};
use switchboard_store::{Appended, LogBackend, NewMessage};

use support::NatsServer;

/// Short, so expiry comes quickly; nothing asserts how quickly (waits are on conditions).
const TTL: Duration = Duration::from_secs(2);
/// The most any condition is waited for.
const PATIENCE: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn leases(rt: &tokio::runtime::Runtime, server: &NatsServer, node: &str) -> ShardLeases {
    rt.block_on(ShardLeases::connect(
        &server.url(),
        "lease",
        node,
        TTL,
        1,
        Duration::from_secs(5),
    ))
    .unwrap()
}

fn append(log: &JetStreamLog, group: &GroupId, id: &str) -> Result<Appended, ClusterError> {
    let sender = UserId::new("ann").unwrap();
    log.append_message(
        &TenantId::new("acme").unwrap(),
        group,
        NewMessage {
            sender: &sender,
            lane: Lane::Normal,
            client_msg_id: id,
            sent_at_ms: 1,
            body: id.as_bytes(),
        },
    )
}

#[test]
fn one_holder_at_a_time_and_renewal_needs_the_last_revision() {
    let server = NatsServer::start();
    let rt = runtime();
    let (a, b) = (
        leases(&rt, &server, "node-a"),
        leases(&rt, &server, "node-b"),
    );
    let mut lease = rt.block_on(a.acquire(7)).unwrap();
    match rt.block_on(b.acquire(7)) {
        Err(ClusterError::LeaseHeld { shard: 7, by }) => assert_eq!(by, "node-a"),
        other => panic!("{other:?}"),
    }
    let before = lease.revision;
    rt.block_on(a.renew(&mut lease)).unwrap();
    assert!(lease.revision > before);
    // A renewal naming an old revision is refused as lost.
    let mut stale = switchboard_cluster::Lease {
        revision: before,
        ..lease.clone()
    };
    assert!(matches!(
        rt.block_on(a.renew(&mut stale)),
        Err(ClusterError::LeaseLost { shard: 7 })
    ));
    // The holder re-acquiring (a restart within the TTL) keeps it; other shards are free.
    rt.block_on(a.acquire(7)).unwrap();
    rt.block_on(b.acquire(8)).unwrap();
    assert_eq!(rt.block_on(b.holder(7)).unwrap().as_deref(), Some("node-a"));
    // Released, it is free at once.
    let lease = rt.block_on(a.acquire(7)).unwrap();
    rt.block_on(a.release(lease)).unwrap();
    rt.block_on(b.acquire(7)).unwrap();
}

#[test]
fn a_paused_owner_whose_lease_expired_loses_the_shard_and_cannot_append() {
    let server = NatsServer::start();
    let rt = runtime();
    let group = GroupId::new("busy").unwrap();
    let shard = shard_of(&TenantId::new("acme").unwrap(), &group);
    let (leases_a, leases_b) = (
        leases(&rt, &server, "node-a"),
        leases(&rt, &server, "node-b"),
    );
    let (log_a, log_b) = (server.log("paused"), server.log("paused"));

    // Node A owns the shard and appends.
    let mut lease_a = rt.block_on(leases_a.acquire(shard)).unwrap();
    assert!(lease_a.is_valid_at(Instant::now()));
    take(&log_a, &lease_a, "node-a");
    assert_eq!(
        append(&log_a, &group, "a1").unwrap(),
        Appended::New { seq: 1 }
    );
    rt.block_on(leases_a.renew(&mut lease_a)).unwrap();
    assert_eq!(
        append(&log_a, &group, "a2").unwrap(),
        Appended::New { seq: 2 }
    );

    // A pauses (renews nothing). B takes the shard as soon as the lease has expired.
    let lease_b = acquire_when_free(&rt, &leases_b, shard);
    take(&log_b, &lease_b, "node-b");
    assert_eq!(
        append(&log_b, &group, "b1").unwrap(),
        Appended::New { seq: 3 }
    );

    // A wakes up. By its own clock its lease is over (the server let it go only after A's
    // deadline), so a node that checks before appending stops here, with no IO.
    assert!(!lease_a.is_valid_at(Instant::now()));
    // Its renewal is refused, and so is the append it was about to make, even though it
    // never learnt of the renewal's failure.
    assert!(matches!(
        rt.block_on(leases_a.renew(&mut lease_a)),
        Err(ClusterError::LeaseLost { .. })
    ));
    assert!(matches!(
        append(&log_a, &group, "a3"),
        Err(ClusterError::Fenced { .. })
    ));
    let log: Vec<_> =
        LogBackend::read_after(&log_b, &TenantId::new("acme").unwrap(), &group, 0, 10)
            .unwrap()
            .into_iter()
            .map(|m| (m.seq, m.client_msg_id))
            .collect();
    assert_eq!(
        log,
        vec![(1, "a1".into()), (2, "a2".into()), (3, "b1".into())]
    );
}

/// The shard-wide fence: after a takeover, a paused ex-owner cannot append to *any* group
/// of the shard — not even one the new owner has not written since it took the shard.
#[test]
fn a_paused_owner_cannot_append_to_a_group_the_new_owner_never_touched() {
    let server = NatsServer::start();
    let rt = runtime();
    let tenant = TenantId::new("acme").unwrap();
    let busy = GroupId::new("busy").unwrap();
    let shard = shard_of(&tenant, &busy);
    let quiet = (0..10_000)
        .map(|i| GroupId::new(&format!("quiet{i}")).unwrap())
        .find(|g| shard_of(&tenant, g) == shard)
        .unwrap();
    let (leases_a, leases_b) = (
        leases(&rt, &server, "node-a"),
        leases(&rt, &server, "node-b"),
    );
    let (log_a, log_b) = (server.log("untouched"), server.log("untouched"));

    // A owns the shard and has written both groups.
    let lease_a = rt.block_on(leases_a.acquire(shard)).unwrap();
    take(&log_a, &lease_a, "node-a");
    assert_eq!(
        append(&log_a, &busy, "a1").unwrap(),
        Appended::New { seq: 1 }
    );
    assert_eq!(
        append(&log_a, &quiet, "q1").unwrap(),
        Appended::New { seq: 1 }
    );

    // A pauses; its lease expires and B takes the shard, writing only to `busy`.
    let lease_b = acquire_when_free(&rt, &leases_b, shard);
    take(&log_b, &lease_b, "node-b");
    assert_eq!(
        append(&log_b, &busy, "b1").unwrap(),
        Appended::New { seq: 2 }
    );

    // A resumes and appends to `quiet`, which nobody wrote since the takeover: fenced.
    let err = append(&log_a, &quiet, "q2").unwrap_err();
    assert!(matches!(err, ClusterError::Fenced { .. }), "{err:?}");
    let quiet_log: Vec<_> = LogBackend::read_after(&log_b, &tenant, &quiet, 0, 10)
        .unwrap()
        .into_iter()
        .map(|m| (m.seq, m.client_msg_id))
        .collect();
    assert_eq!(quiet_log, vec![(1, "q1".into())]);
    // The new owner goes on with both groups, unfenced.
    assert_eq!(
        append(&log_b, &quiet, "b2").unwrap(),
        Appended::New { seq: 2 }
    );
    assert_eq!(
        append(&log_b, &busy, "b3").unwrap(),
        Appended::New { seq: 3 }
    );
}

/// Waits (bounded by `PATIENCE`) until `leases` can take `shard`.
fn acquire_when_free(
    rt: &tokio::runtime::Runtime,
    leases: &ShardLeases,
    shard: u16,
) -> switchboard_cluster::Lease {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match rt.block_on(leases.acquire(shard)) {
            Ok(lease) => return lease,
            Err(ClusterError::LeaseHeld { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => panic!("{} could not take the shard: {other:?}", leases.node()),
        }
    }
}

/// The lease holder's step before appending: take the shard in the log, naming the lease's
/// revision as the epoch.
fn take(log: &JetStreamLog, lease: &switchboard_cluster::Lease, node: &str) {
    log.take_shard(lease.shard, node, lease.revision)
        .expect("take the shard");
}
