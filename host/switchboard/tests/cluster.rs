//! Cluster mode, end to end: two nodes started from `[cluster]` config files over one real
//! nats-server, clients over real QUIC. Each node serves its rendezvous share of the
//! shards and appends only to those; a send for a group of the other node's shard is
//! forwarded to it; when a node drains or dies the other serves its groups, and their seqs
//! continue from the log without a gap; a resend is a duplicate whichever node it reaches.
//!
//! Every wait is on a condition (the served-shard and live-node watches), bounded by
//! `PATIENCE`; the lease TTL is 2 s so a death is noticed within seconds.

mod common;
#[path = "../../cluster/tests/support/mod.rs"]
mod nats;

use std::collections::BTreeSet;
use std::time::Duration;

use switchboard::{Config, RunningNode};
use switchboard_cluster::names::{shard_of, SHARDS};
use switchboard_cluster::ownership::preferred_owner;
use switchboard_core::{ErrorCode, GroupId, TenantId};
use switchboard_wire::ServerFrame;
use tokio::sync::watch;

use common::{error_code, mint, next_deliver, now_secs, send, RawClient};
use nats::NatsServer;

const SECRET: &str = "cluster-test-secret-0123456789";
const SECRET_ENV: &str = "SB_CLUSTER_TEST_SECRET";
const TTL_MS: u64 = 2_000;
/// The most any condition is waited for (2 cores shared by several builds).
const PATIENCE: Duration = Duration::from_secs(60);
const NODES: [&str; 2] = ["node-a", "node-b"];

/// Groups `g0`..`g23`; each shard has one of the two nodes as its preferred owner.
fn groups() -> Vec<String> {
    (0..24).map(|i| format!("g{i}")).collect()
}

fn shard(group: &str) -> u16 {
    shard_of(
        &TenantId::new("demo").unwrap(),
        &GroupId::new(group).unwrap(),
    )
}

/// The first group whose shard rendezvous gives to `node` among both.
fn group_of(node: &str) -> String {
    groups()
        .into_iter()
        .find(|g| preferred_owner(shard(g), &NODES) == Some(node))
        .expect("24 groups cover both nodes")
}

fn config(dir: &std::path::Path, node: &str, nats: &NatsServer) -> Config {
    let groups: String = groups()
        .iter()
        .map(|g| format!("[[tenants.groups]]\nid = \"{g}\"\nmembers = [\"ann\", \"bob\"]\n"))
        .collect();
    let text = format!(
        "data_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n\
         store_key_file = \"{key}\"\n\
         [admin]\nenabled = false\n\
         [cluster]\nnats = \"{url}, {url}\"\nnode = \"{node}\"\nprefix = \"ct\"\nreplicas = 1\n\
         lease_ttl_ms = {TTL_MS}\n\
         [[tenants]]\nid = \"demo\"\nsecret_env = \"{SECRET_ENV}\"\n{groups}",
        url = nats.url(),
        // Every node of a cluster holds the same store key (the shared directory's
        // tenant secrets are sealed with it).
        key = nats.store_dir().join("cluster.key").display(),
    );
    let path = dir.join("node.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

struct Started {
    node: RunningNode,
    cfg: Config,
    _dir: tempfile::TempDir,
}

async fn start(node: &str, nats: &NatsServer) -> Started {
    // Every test sets the same value: tests in this file may run at once.
    std::env::set_var(SECRET_ENV, SECRET);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), node, nats);
    let opened = tokio::task::block_in_place(|| switchboard::open_for(&cfg)).unwrap();
    switchboard::seed(&*opened.store, &cfg).unwrap();
    let node = switchboard::start_opened(&cfg, opened).await.unwrap();
    Started {
        node,
        cfg,
        _dir: dir,
    }
}

impl Started {
    fn served(&self) -> watch::Receiver<BTreeSet<u16>> {
        self.node.cluster.as_ref().unwrap().served()
    }

    async fn client(&self, user: &str) -> RawClient {
        self.client_of("demo", user, SECRET).await
    }

    /// A session of `user` of `tenant`, whose tokens `secret` signs.
    async fn client_of(&self, tenant: &str, user: &str, secret: &str) -> RawClient {
        let (identity, _) = switchboard::identity(&self.cfg).unwrap();
        let mut c = RawClient::connect(
            self.node.local_addr(),
            identity.cert_chain[0].as_ref(),
            switchboard_wire::ALPN,
        )
        .await
        .unwrap();
        let now = now_secs();
        let token = mint(tenant, user, secret.as_bytes(), now + 600, now - 5);
        assert!(
            matches!(c.hello(&token).await, ServerFrame::Welcome { .. }),
            "hello refused"
        );
        c
    }
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
        .expect("the keeper stopped");
}

fn preferred(node: &str) -> BTreeSet<u16> {
    (0..SHARDS)
        .filter(|&s| preferred_owner(s, &NODES) == Some(node))
        .collect()
}

/// Waits until `c` is delivered `seq` of `group` (earlier deliveries, such as its catch-up
/// at connect, are skipped); a push stream quiet for the harness's `WAIT` fails the test.
async fn delivered(c: &mut RawClient, group: &str, seq: u64) {
    loop {
        let m = next_deliver(c).await;
        if m.group == group && m.seq == seq {
            return;
        }
    }
}

/// Sends `id` to `group` and returns the ack's seq, or the error's code.
async fn try_send(c: &mut RawClient, request_id: u64, group: &str) -> Result<u64, ErrorCode> {
    c.send(&send(
        request_id,
        group,
        format!("m{request_id}").as_bytes(),
    ))
    .await;
    match c.read().await.expect("an answer to the send") {
        ServerFrame::Ack { seq, .. } => Ok(seq),
        other => Err(error_code(&other)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_node_appends_to_its_own_shards_and_takes_over_a_drained_nodes_groups() {
    let nats = NatsServer::start();
    let a = start("node-a", &nats).await;
    let b = start("node-b", &nats).await;
    let (mut served_a, mut served_b) = (a.served(), b.served());
    let (want_a, want_b) = (preferred("node-a"), preferred("node-b"));
    until(&mut served_a, "node-a serves its share", |s| *s == want_a).await;
    until(&mut served_b, "node-b serves its share", |s| *s == want_b).await;

    let (ga, gb) = (group_of("node-a"), group_of("node-b"));
    // Every node's head announcements, as NATS carries them.
    let nats_client = async_nats::connect(nats.url()).await.unwrap();
    let mut heads = nats_client.subscribe("ct.heads.>").await.unwrap();
    let mut ann_a = a.client("ann").await;
    let mut ann_b = b.client("ann").await;
    assert_eq!(try_send(&mut ann_a, 1, &ga).await, Ok(1));
    assert_eq!(try_send(&mut ann_a, 2, &ga).await, Ok(2));
    assert_eq!(try_send(&mut ann_b, 3, &gb).await, Ok(1));
    // Not this node's shard: forwarded to its owner, which assigns the seq.
    assert_eq!(try_send(&mut ann_a, 4, &gb).await, Ok(2));
    assert_eq!(try_send(&mut ann_b, 5, &ga).await, Ok(3));
    // A resend through the other node is the owner's duplicate, with the original seq.
    assert_eq!(try_send(&mut ann_b, 1, &ga).await, Ok(1));
    assert_eq!(try_send(&mut ann_a, 3, &gb).await, Ok(1));

    // Cross-node delivery: bob, on node-b, gets what ann sends through node-a, to node-a's
    // group (appended there) and to node-b's (forwarded there by node-a).
    let mut bob_b = b.client("bob").await;
    assert_eq!(try_send(&mut ann_a, 8, &ga).await, Ok(4));
    delivered(&mut bob_b, &ga, 4).await;
    assert_eq!(try_send(&mut ann_a, 9, &gb).await, Ok(3));
    delivered(&mut bob_b, &gb, 3).await;

    // Once quiet, each group's owner announces its head (4 in ga, by node-a; 3 in gb, by
    // node-b, which appended what node-a forwarded).
    let mut want = BTreeSet::from([
        ("ct.heads.node-a".to_string(), ga.clone(), 4),
        ("ct.heads.node-b".to_string(), gb.clone(), 3),
    ]);
    tokio::time::timeout(PATIENCE, async {
        use futures_util::StreamExt;
        while !want.is_empty() {
            let m = heads.next().await.expect("the heads subscription");
            for h in switchboard_cluster::heads::decode(&m.payload) {
                want.remove(&(m.subject.to_string(), h.group.to_string(), h.seq));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("heads not announced: {want:?}"));

    // A graceful stop hands node-a's shards over without waiting for the TTL.
    drop(ann_a);
    a.node.shutdown().await;
    until(&mut served_b, "node-b serves every shard", |s| {
        s.len() == usize::from(SHARDS)
    })
    .await;
    // node-b appends to node-a's group, after the four messages stored there.
    assert_eq!(try_send(&mut ann_b, 6, &ga).await, Ok(5));
    assert_eq!(try_send(&mut ann_b, 7, &gb).await, Ok(4));
    // Resends across the change of owner are duplicates with their seqs.
    assert_eq!(try_send(&mut ann_b, 6, &ga).await, Ok(5));
    assert_eq!(try_send(&mut ann_b, 2, &ga).await, Ok(2));
    b.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_a_node_dies_the_other_serves_its_groups_after_the_lease_ttl() {
    let nats = NatsServer::start();
    let a = start("node-a", &nats).await;
    let b = start("node-b", &nats).await;
    let (mut served_a, mut served_b) = (a.served(), b.served());
    let (want_a, want_b) = (preferred("node-a"), preferred("node-b"));
    until(&mut served_a, "node-a serves its share", |s| *s == want_a).await;
    until(&mut served_b, "node-b serves its share", |s| *s == want_b).await;
    let ga = group_of("node-a");
    let mut ann_a = a.client("ann").await;
    assert_eq!(try_send(&mut ann_a, 1, &ga).await, Ok(1));

    // As a crash: nothing handed over, no heartbeat any more (the node's tasks and
    // connections go with it).
    drop(ann_a);
    drop(a);
    until(&mut served_b, "node-b serves every shard", |s| {
        s.len() == usize::from(SHARDS)
    })
    .await;
    let mut ann_b = b.client("ann").await;
    assert_eq!(try_send(&mut ann_b, 2, &ga).await, Ok(2));
    b.node.shutdown().await;
}

/// What a shared-directory test measures: from the call returning on one node until the
/// other node serves the change.
fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "{what}: {} changes, p50 {:?}, p99 {:?}, max {:?}",
        times.len(),
        at(0.5),
        at(0.99),
        times[times.len() - 1]
    );
}

/// Waits until `ok` holds, checking every 2 ms, at most `PATIENCE`; returns how long it
/// took. For reads of another node's mirror, which has no signal of its own here.
async fn until_true(what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let start = std::time::Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < PATIENCE,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_groups_members_swaps_and_rollbacks_made_on_one_node_are_served_by_every_node() {
    use switchboard_admin::control::types::{Activate, Caller, CreateGroup, CreateTenant};

    let nats = NatsServer::start();
    let a = start("node-a", &nats).await;
    let b = start("node-b", &nats).await;
    let (ca, cb) = (&a.node.control, &b.node.control);

    // A tenant made on node-a: node-b knows it, and its secret, sealed with the shared
    // store key, signs tokens node-b accepts.
    let secret = ca
        .create_tenant(&CreateTenant {
            id: "acme".into(),
            secret: None,
            quotas: None,
        })
        .unwrap()
        .secret;
    let mut tenant_times =
        vec![until_true("node-b knows acme", || cb.tenant("acme").is_ok()).await];
    // A group made on node-b, a member added on node-a.
    cb.create_group(
        "acme",
        &CreateGroup {
            id: "room".into(),
            open: false,
            max_members: Some(2),
        },
    )
    .unwrap();
    assert!(ca.add_member("acme", "room", "ann").unwrap());
    tenant_times.push(
        until_true("node-b sees ann join", || {
            cb.members("acme", "room").unwrap_or_default() == ["ann"]
        })
        .await,
    );
    // The group's limit holds across nodes: the third member is refused wherever it is
    // added, and the refused key is gone from both mirrors.
    assert!(cb.add_member("acme", "room", "bob").unwrap());
    let third = ca.add_member("acme", "room", "cy");
    assert!(third.is_err(), "a third member of a group of 2: {third:?}");
    let mut both = ca.members("acme", "room").unwrap();
    both.sort();
    assert_eq!(both, ["ann", "bob"]);
    until_true("node-b has ann and bob", || {
        let mut m = cb.members("acme", "room").unwrap_or_default();
        m.sort();
        m == ["ann", "bob"]
    })
    .await;
    // The same group made again on the other node is refused.
    assert!(ca
        .create_group(
            "acme",
            &CreateGroup {
                id: "room".into(),
                open: false,
                max_members: None,
            },
        )
        .is_err());

    // ann, a member added through node-a, sends through node-b with a token signed by the
    // secret node-a made.
    let mut ann = b.client_of("acme", "ann", &secret).await;

    // A plugin uploaded on node-a and activated there is served by node-b; a rollback
    // made on node-b is served by node-a. Each swap is timed until the other node applied
    // the binding revision (its reconcile path compiled or found the version and serves it),
    // from the call to the activation: the time until the last node serves it.
    let wasm = std::fs::read(plugins_artifacts::PRIORITY).unwrap();
    let version = ca
        .upload_plugin(&Caller::Admin, "acme", wasm.into())
        .await
        .unwrap()
        .plugin
        .version;
    let acme = TenantId::new("acme").unwrap();
    let mut swap_times = Vec::new();
    for round in 0..10 {
        let (here, there) = if round % 2 == 0 { (ca, cb) } else { (cb, ca) };
        let start = std::time::Instant::now();
        let status = here
            .activate(
                "acme",
                &Activate {
                    version: version.clone(),
                    config: [("round".to_string(), round.to_string())].into(),
                },
            )
            .await
            .unwrap();
        let mut applied = there.applied_revisions(&acme);
        tokio::time::timeout(PATIENCE, applied.wait_for(|r| *r >= status.revision))
            .await
            .expect("the other node applies the activation")
            .unwrap();
        swap_times.push(start.elapsed());
        let served = there.policy_status("acme").unwrap();
        assert_eq!(served.active.map(|v| v.version), Some(version.clone()));
        assert_eq!(served.applied_revision, status.revision);
    }
    let back = cb.rollback("acme").await.unwrap();
    let mut applied = ca.applied_revisions(&acme);
    tokio::time::timeout(PATIENCE, applied.wait_for(|r| *r >= back.revision))
        .await
        .expect("node-a applies the rollback")
        .unwrap();
    assert_eq!(ca.policy_status("acme").unwrap().revision, back.revision);

    // An automatic rollback decided on one node is served by every node: a version with a
    // latent bug is activated through node-a, its traps happen on node-b (ann sends through
    // node-b, whose policy runs the plugin), node-b's monitor rolls it back, and node-a
    // serves the version before it.
    let good = ca.policy_status("acme").unwrap().active.map(|v| v.version);
    let trap = ca
        .upload_plugin(
            &Caller::Admin,
            "acme",
            std::fs::read(plugins_artifacts::HOSTILE_LATENT_TRAP)
                .unwrap()
                .into(),
        )
        .await
        .unwrap()
        .plugin
        .version;
    let bad = ca
        .activate(
            "acme",
            &Activate {
                version: trap.clone(),
                config: Default::default(),
            },
        )
        .await
        .unwrap();
    let mut applied_b = cb.applied_revisions(&acme);
    tokio::time::timeout(PATIENCE, applied_b.wait_for(|r| *r >= bad.revision))
        .await
        .expect("node-b applies the activation")
        .unwrap();
    for i in 0..40 {
        // Each send traps the plugin; the node falls back to the built-in policy, so the
        // message is still stored (or, once rolled back, handled by the good version).
        ann.send(&send(1_000 + i, "room", b"!boom")).await;
        assert!(matches!(ann.read().await, Some(ServerFrame::Ack { .. })));
    }
    let mut applied_a = ca.applied_revisions(&acme);
    tokio::time::timeout(
        PATIENCE,
        applied_a.wait_for(|_| {
            ca.policy_status("acme").is_ok_and(|s| {
                s.last_rollback
                    .is_some_and(|r| r.automatic && r.from == trap)
            })
        }),
    )
    .await
    .expect("node-a serves node-b's automatic rollback")
    .unwrap();
    let served_a = ca.policy_status("acme").unwrap();
    assert_eq!(served_a.active.map(|v| v.version), good);
    assert_eq!(served_a.applied_revision, served_a.revision);
    // A drain naming the other node is refused here; naming this one, it is requested
    // (what `ctl node drain NODE` sends; the serve loop then drains as on SIGTERM).
    use switchboard_admin::control::types::DrainRequest;
    let name = |n: &str| DrainRequest {
        node: Some(n.to_owned()),
    };
    assert!(ca.request_drain(&name("node-b")).is_err());
    assert!(!*ca.drain_requested().borrow());
    let draining = ca.request_drain(&name("node-a")).unwrap();
    assert_eq!(draining.node.as_deref(), Some("node-a"));
    assert!(*ca.drain_requested().borrow());
    report("tenant/member changes seen on the other node", tenant_times);
    report("plugin swaps served by the other node", swap_times);
    drop(ann);
    a.node.shutdown().await;
    b.node.shutdown().await;
}

/// The hub's side of cross-node delivery, on one node (no NATS needed): messages another
/// node appended to the shared log reach this node's sessions when their notice arrives
/// after a gap (the gap is read from the log first), and when only the group's head is
/// announced (a quiet group whose last notice was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_or_a_later_notice_brings_a_session_the_messages_whose_notices_were_lost() {
    let n = common::TestNode::start().await;
    let mut bob = n.raw().await;
    assert!(matches!(
        bob.hello(&n.token("acme", "bob")).await,
        ServerFrame::Welcome { .. }
    ));
    let (acme, team) = (
        TenantId::new("acme").unwrap(),
        GroupId::new("team").unwrap(),
    );
    // Appended "by another node": straight into the log, no notice reaches this hub.
    let alice = switchboard_core::UserId::new("alice").unwrap();
    let append = |i: u64| {
        use switchboard_store::Store;
        n.store
            .append(
                &acme,
                &team,
                switchboard_store::NewMessage {
                    sender: &alice,
                    lane: switchboard_core::Lane::Normal,
                    client_msg_id: &format!("remote-{i}"),
                    sent_at_ms: 1,
                    body: b"from another node",
                },
            )
            .unwrap()
            .seq()
    };
    assert_eq!((append(1), append(2)), (1, 2));
    // Only the head is announced: bob reads 1 and 2 from the log, in order.
    n.hub().reveal_remote(&acme, &team, 2).await;
    delivered(&mut bob, "team", 1).await;
    delivered(&mut bob, "team", 2).await;
    // A notice after a lost one: 3's notice was lost, 4's arrives; bob gets both, in order.
    assert_eq!((append(3), append(4)), (3, 4));
    let four = {
        use switchboard_store::Store;
        n.store.message(&acme, &team, 4).unwrap().unwrap()
    };
    n.hub().deliver_remote(&acme, &team, four).await;
    delivered(&mut bob, "team", 3).await;
    delivered(&mut bob, "team", 4).await;
}

/// The next `PresenceNotice` about `user` on `c`'s push streams: its state and whether the
/// user is online.
async fn next_presence_of(
    c: &mut RawClient,
    user: &str,
) -> (switchboard_core::PresenceState, bool) {
    loop {
        match c.read_push().await {
            Some(ServerFrame::PresenceNotice {
                user: u,
                state,
                online,
            }) if u == user => return (state, online),
            Some(_) => {}
            None => panic!("push stream ended before a notice about {user}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_connected_to_one_node_is_present_on_every_node() {
    use switchboard_core::{PresenceState, UserId};
    let nats = NatsServer::start();
    let a = start("node-a", &nats).await;
    let b = start("node-b", &nats).await;
    let (demo, ann) = (TenantId::new("demo").unwrap(), UserId::new("ann").unwrap());
    let presence_b = b.node.cluster.as_ref().unwrap().presence();
    // bob on node-b shares every group with ann.
    let mut bob = b.client("bob").await;
    assert!(!presence_b.connected_elsewhere(&demo, &ann));
    use PresenceState::{Background, Foreground};
    // ann connects to node-a: node-b knows she is connected (no push notification for
    // her), and bob hears she is in the foreground.
    let mut ann_a = a.client("ann").await;
    assert_eq!(next_presence_of(&mut bob, "ann").await, (Foreground, true));
    assert!(presence_b.connected_elsewhere(&demo, &ann));
    // She also connects to node-b, and leaves it: she is still online on node-a, so bob
    // hears nothing of it; her next change (to the background, on node-a) is the next
    // notice bob gets, and it says she is online.
    let ann_b = b.client("ann").await;
    assert_eq!(next_presence_of(&mut bob, "ann").await, (Foreground, true));
    drop(ann_b);
    let hub_b = b.node.node.hub().clone();
    until_true("node-b closed ann's session", || {
        !hub_b.is_connected(&demo, &ann)
    })
    .await;
    ann_a
        .send(&switchboard_wire::ClientFrame::Presence { state: Background })
        .await;
    assert_eq!(next_presence_of(&mut bob, "ann").await, (Background, true));
    // She leaves node-a: told offline, and node-b forgets her.
    drop(ann_a);
    assert_eq!(next_presence_of(&mut bob, "ann").await, (Background, false));
    assert!(!presence_b.connected_elsewhere(&demo, &ann));
    // A node that goes away takes its users with it: ann on node-a again, then node-a
    // dropped as a crash would (no drain; whichever comes first, its sessions' end or its
    // heartbeats' TTL, node-b stops counting her).
    let ann_a = a.client("ann").await;
    assert_eq!(next_presence_of(&mut bob, "ann").await, (Foreground, true));
    drop(a);
    assert_eq!(next_presence_of(&mut bob, "ann").await, (Background, false));
    assert!(!presence_b.connected_elsewhere(&demo, &ann));
    drop(ann_a);
    b.node.shutdown().await;
}
