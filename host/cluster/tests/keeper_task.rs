//! The lease keeper's driver on a real nats-server: two nodes split the shards as
//! rendezvous says; when one dies (its task aborted, nothing released) the other takes
//! its shards once their leases expire, takes them in the log, and the dead node's log is
//! fenced from them. Every wait is on a condition, bounded by `PATIENCE`.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_cluster::names::{shard_of, SHARDS};
use switchboard_cluster::ownership::preferred_owner;
use switchboard_cluster::{ClusterError, JetStreamLog, KeeperTask, ShardLeases};
use switchboard_core::{GroupId, Lane, TenantId, UserId};
use switchboard_store::{Appended, NewMessage};
use tokio::sync::watch;

use support::NatsServer;

const TTL: Duration = Duration::from_secs(2);
/// The most any condition is waited for (2 cores shared by several builds).
const PATIENCE: Duration = Duration::from_secs(60);

fn preferred(node: &str, nodes: &[&str]) -> BTreeSet<u16> {
    (0..SHARDS)
        .filter(|&s| preferred_owner(s, nodes) == Some(node))
        .collect()
}

async fn leases(server: &NatsServer, node: &str) -> Arc<ShardLeases> {
    Arc::new(
        ShardLeases::connect(&server.url(), "keep", node, TTL, 1, Duration::from_secs(5))
            .await
            .unwrap(),
    )
}

/// Waits until `served` satisfies `ok`, at most `PATIENCE`.
async fn until(
    served: &mut watch::Receiver<BTreeSet<u16>>,
    what: &str,
    ok: impl FnMut(&BTreeSet<u16>) -> bool,
) {
    tokio::time::timeout(PATIENCE, served.wait_for(ok))
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {PATIENCE:?}"))
        .expect("the keeper task stopped");
}

fn append(log: &JetStreamLog, group: &GroupId, id: &str) -> Result<Appended, ClusterError> {
    log.append_message(
        &TenantId::new("acme").unwrap(),
        group,
        NewMessage {
            sender: &UserId::new("ann").unwrap(),
            lane: Lane::Normal,
            client_msg_id: id,
            sent_at_ms: 1,
            body: id.as_bytes(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_node_dies_the_other_takes_its_shards_and_fences_its_log() {
    let server = NatsServer::start();
    let both = ["node-a", "node-b"];
    let (want_a, want_b) = (preferred("node-a", &both), preferred("node-b", &both));
    let names: Vec<String> = both.iter().map(|s| s.to_string()).collect();
    let (nodes_a, nodes_a_rx) = watch::channel(names.clone());
    let (nodes_b, nodes_b_rx) = watch::channel(names);
    let log_a = Arc::new(server.log("keep"));
    let log_b = Arc::new(server.log("keep"));
    let a = KeeperTask::spawn(
        leases(&server, "node-a").await,
        nodes_a_rx,
        Some(log_a.clone()),
    );
    let b = KeeperTask::spawn(
        leases(&server, "node-b").await,
        nodes_b_rx,
        Some(log_b.clone()),
    );
    let (mut served_a, mut served_b) = (a.served(), b.served());

    // Each serves exactly its rendezvous share.
    until(&mut served_a, "node-a serves its shards", |s| *s == want_a).await;
    until(&mut served_b, "node-b serves its shards", |s| *s == want_b).await;

    // A group in one of a's shards: served means taken in the log, so a appends at once.
    let tenant = TenantId::new("acme").unwrap();
    let group = (0..10_000)
        .map(|i| GroupId::new(&format!("g{i}")).unwrap())
        .find(|g| want_a.contains(&shard_of(&tenant, g)))
        .unwrap();
    let shard = shard_of(&tenant, &group);
    let log = log_a.clone();
    let first = wait_for_append(log, group.clone(), "a1").await;
    assert_eq!(first, Appended::New { seq: 1 });

    // a dies: its task stops, nothing is released, its log stays connected (a paused
    // process). b is told a is gone and takes every shard once a's leases expire.
    a.abort();
    drop(nodes_a);
    nodes_b.send(vec!["node-b".to_owned()]).unwrap();
    let died = Instant::now();
    until(&mut served_b, "node-b serves every shard", |s| {
        s.len() == usize::from(SHARDS)
    })
    .await;
    let took = died.elapsed();
    // Logged, not asserted: the figure (TTL 2 s) for docs, never a pass/fail condition.
    eprintln!("node-b served every shard {took:?} after node-a died");

    // b appends to a's old group at once, continuing its seqs;
    // a's log is fenced from the shard although it never heard of the takeover.
    let second = wait_for_append(log_b.clone(), group.clone(), "b1").await;
    assert_eq!(second, Appended::New { seq: 2 });
    let err = append(&log_a, &group, "a2").unwrap_err();
    assert!(matches!(err, ClusterError::Fenced { .. }), "{err:?}");
    assert!(log_a.is_fenced(shard));
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_hands_its_shards_over_without_the_ttl() {
    let server = NatsServer::start();
    // A TTL far beyond the patience: if the drain did not release, b could not take a's
    // shards before the wait below gives up. (b asks again every tenth of the TTL, 12 s,
    // well inside it.)
    let ttl = 2 * PATIENCE;
    let connect = |node: &'static str| {
        let url = server.url();
        async move {
            Arc::new(
                ShardLeases::connect(&url, "drain", node, ttl, 1, Duration::from_secs(5))
                    .await
                    .unwrap(),
            )
        }
    };
    let both = ["node-a", "node-b"];
    let names: Vec<String> = both.iter().map(|s| s.to_string()).collect();
    let (_nodes_a, nodes_a_rx) = watch::channel(names.clone());
    let (nodes_b, nodes_b_rx) = watch::channel(names);
    let a = KeeperTask::spawn(connect("node-a").await, nodes_a_rx, None);
    let b = KeeperTask::spawn(connect("node-b").await, nodes_b_rx, None);
    let (mut served_a, mut served_b) = (a.served(), b.served());
    let want_a = preferred("node-a", &both);
    until(&mut served_a, "node-a serves its shards", |s| *s == want_a).await;
    until(&mut served_b, "node-b serves its shards", |s| {
        *s == preferred("node-b", &both)
    })
    .await;

    a.drain().await;
    until(&mut served_a, "node-a serves nothing", BTreeSet::is_empty).await;
    nodes_b.send(vec!["node-b".to_owned()]).unwrap();
    until(&mut served_b, "node-b serves every shard", |s| {
        s.len() == usize::from(SHARDS)
    })
    .await;
}

/// Appends on the blocking pool (the log's calls block), expecting success: the keeper
/// serves a shard only once its log took it.
async fn wait_for_append(log: Arc<JetStreamLog>, group: GroupId, id: &'static str) -> Appended {
    tokio::task::spawn_blocking(move || append(&log, &group, id))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{id}: a served shard refused an append: {e:?}"))
}
