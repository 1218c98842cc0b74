//! A real nearly-full disk: the node's store lives on a small tmpfs the test mounts and then
//! fills with a file. Under the node's reserve (`min_free_disk_bytes`) sends are refused with
//! `StoreUnavailable` and a retry-after, nothing is stored or acknowledged, and once space is
//! freed the same send is accepted; everything acknowledged is in the log when the store is
//! reopened. (Without the reserve, sled 0.34 blocks forever on a completely full disk: a
//! first version of this test, filling the disk with messages, hung the node.)
//!
//! Needs to mount a tmpfs (root, as in CI and the dev machines); the test fails, not skips,
//! when it cannot.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use switchboard_core::{ErrorCode, GroupId, Limits, TenantId};
use switchboard_edge::{EdgeConfig, Node, TlsIdentity};
use switchboard_store::{SledStore, Store};
use switchboard_wire::{ClientFrame, ServerFrame};

/// A tmpfs of `size`, unmounted when dropped (also when the test panics).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        match Self::try_mount(at, size) {
            Ok(t) => t,
            Err(e) => panic!(
                "this test mounts a small tmpfs to fill it and needs the right to (run as root): {e}"
            ),
        }
    }

    fn try_mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(at.to_owned()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn send(i: u64) -> ClientFrame {
    ClientFrame::Send {
        request_id: i,
        group: "team".into(),
        client_msg_id: format!("m{i}"),
        body: format!("m{i}:{}", "x".repeat(1000)).into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_refuses_sends_and_loses_nothing_acknowledged() {
    const RESERVE: u64 = 8 * 1024 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("disk"), "32m");
    let store = Arc::new(SledStore::open(&disk.0.join("store")).unwrap());
    seed(&*store);
    let identity = TlsIdentity::self_signed().unwrap();
    let cert = identity.cert_chain[0].to_vec();
    let node = Node::start(
        EdgeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            limits: Limits {
                load_sample_ms: 0,
                min_free_disk_bytes: RESERVE,
                ..Limits::default()
            },
            identity,
            webtransport: None,
        },
        store.clone(),
    )
    .await
    .unwrap();
    let hub = node.hub().clone();
    let mut alice = RawClient::connect(node.local_addr(), &cert, switchboard_wire::ALPN)
        .await
        .unwrap();
    let token = mint("acme", "alice", ACME_SECRET, now_secs() + 600, 0);
    assert!(matches!(
        alice.hello(&token).await,
        ServerFrame::Welcome { .. }
    ));
    for i in 1..=5 {
        alice.send(&send(i)).await;
        assert!(matches!(alice.read().await, Some(ServerFrame::Ack { seq, .. }) if seq == i));
    }

    // Something else fills the disk to within the reserve.
    let free = store.free_bytes().expect("a file system");
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![0u8; (free - RESERVE / 2) as usize]).unwrap();
    assert!(hub.check_disk(), "the node sees the disk under its reserve");
    alice.send(&send(6)).await;
    match alice.read().await.unwrap() {
        ServerFrame::Error(e) => {
            assert_eq!(e.code, ErrorCode::StoreUnavailable.as_u16());
            assert_eq!(e.request_id, 6);
            assert!(e.retry_after_ms > 0);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let (acme, team) = (
        TenantId::new("acme").unwrap(),
        GroupId::new("team").unwrap(),
    );
    assert_eq!(store.head(&acme, &team).unwrap(), 5, "nothing was stored");
    assert_eq!(hub.metrics().snapshot().disk_full_refusals, 1);

    // Space comes back: the same send is accepted, once.
    std::fs::remove_file(&filler).unwrap();
    assert!(!hub.check_disk());
    alice.send(&send(6)).await;
    assert!(matches!(
        alice.read().await,
        Some(ServerFrame::Ack {
            seq: 6,
            duplicate: false,
            ..
        })
    ));

    // Everything acknowledged is durable: reopen a copy elsewhere.
    alice.conn.close(0u32.into(), b"done");
    node.shutdown().await;
    drop(hub);
    drop(store);
    let copy = tmp.path().join("copy");
    copy_dir(&disk.0.join("store"), &copy);
    // The store key lives next to the store, not in it.
    std::fs::copy(disk.0.join("store.key"), tmp.path().join("copy.key")).unwrap();
    drop(disk);
    let reopened = SledStore::open(&copy).expect("the store reopens");
    for seq in 1..=6 {
        let m = reopened.message(&acme, &team, seq).unwrap().unwrap();
        assert_eq!(m.client_msg_id, format!("m{seq}"));
    }
    assert_eq!(reopened.head(&acme, &team).unwrap(), 6);
}

/// Writes zeros to `path` until the file system is full (ENOSPC), in shrinking chunks so
/// that at most a few KiB stay free. Returns the bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let mut written = 0u64;
    let mut chunk = 1 << 20;
    let zeros = vec![0u8; chunk];
    while chunk >= 512 {
        match f.write(&zeros[..chunk]) {
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => chunk /= 2,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = f.sync_all();
    written
}

/// Polls `done` every 10 ms until it holds or `WAIT` passes; returns the time it took.
async fn until(what: &str, mut done: impl FnMut() -> bool) -> std::time::Duration {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// The store hits a real ENOSPC (a write the reserve does not guard, as an admin write is,
/// on a disk something else filled): sled then fails every later write until it is opened
/// again. The node must say so on `/healthz`, refuse sends, and once space is freed reopen
/// the store by itself — no restart — and accept the same send once; nothing acknowledged
/// is lost. Prints how long recovery took after the space came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_real_enospc_the_node_recovers_by_itself_once_space_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = match Tmpfs::try_mount(&tmp.path().join("disk"), "32m") {
        Ok(disk) => disk,
        Err(e) => {
            eprintln!("SKIPPED: mounting a tmpfs is not permitted here ({e}); run as root");
            return;
        }
    };
    let store = Arc::new(SledStore::open(&disk.0.join("store")).unwrap());
    seed(&*store);
    let identity = TlsIdentity::self_signed().unwrap();
    let cert = identity.cert_chain[0].to_vec();
    let node = Node::start(
        EdgeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            limits: Limits {
                load_sample_ms: 0,
                min_free_disk_bytes: switchboard_core::limits::MIN_FREE_DISK_FLOOR,
                ..Limits::default()
            },
            identity,
            webtransport: None,
        },
        store.clone(),
    )
    .await
    .unwrap();
    let hub = node.hub().clone();
    // The control plane and its HTTP API, for /healthz.
    let control = switchboard_admin::Control::start(
        switchboard_admin::ControlConfig {
            admin_token_sha256: None,
            artifact_dir: tmp.path().join("artifacts"),
            auto_rollback: switchboard_admin::AutoRollback::default(),
            apply_timeout: WAIT,
            max_group_members: Limits::default().max_group_members,
            tenant_rollout: false,
        },
        store.clone(),
        store.clone(),
        hub.clone(),
        policy_engine().clone(),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = switchboard_admin::client::AdminClient::new(
        &format!("http://{}", listener.local_addr().unwrap()),
        None,
    );
    tokio::spawn(switchboard_admin::http::serve(
        listener,
        control,
        std::future::pending(),
    ));
    let api = Arc::new(api);
    let healthz = || {
        let api = api.clone();
        async move {
            tokio::task::spawn_blocking(move || api.health())
                .await
                .unwrap()
                .unwrap()
        }
    };
    assert_eq!(healthz().await.store, "ok");

    let mut alice = RawClient::connect(node.local_addr(), &cert, switchboard_wire::ALPN)
        .await
        .unwrap();
    let token = mint("acme", "alice", ACME_SECRET, now_secs() + 600, 0);
    assert!(matches!(
        alice.hello(&token).await,
        ServerFrame::Welcome { .. }
    ));
    for i in 1..=5 {
        alice.send(&send(i)).await;
        assert!(matches!(alice.read().await, Some(ServerFrame::Ack { seq, .. }) if seq == i));
    }

    // Something else fills the disk to the last block; then a write the reserve does not
    // guard meets ENOSPC for real.
    let filler = disk.0.join("filler");
    let filled = fill(&filler);
    let writer = store.clone();
    let failed = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || {
            for i in 0..64u32 {
                writer.put_tenant(&switchboard_store::TenantRecord {
                    id: TenantId::new(&format!("t{i}")).unwrap(),
                    secret: vec![7; 4096],
                })?;
                writer.flush()?;
            }
            Ok::<(), switchboard_store::StoreError>(())
        }),
    )
    .await
    .expect("sled blocked at the full disk instead of failing")
    .unwrap();
    let error = failed.expect_err("a write on a full disk fails");
    eprintln!("filled {filled} bytes; the store's write failed: {error}");
    assert!(matches!(
        store.health(),
        switchboard_store::StoreHealth::Failed { .. }
    ));
    until("the node sees the full disk", || hub.disk_low()).await;
    let health = healthz().await;
    assert_eq!(health.status, "degraded");
    assert_eq!(health.store, "failed", "{health:?}");
    assert!(health.store_reason.is_some());
    alice.send(&send(6)).await;
    match alice.read().await.unwrap() {
        ServerFrame::Error(e) => {
            assert_eq!(e.code, ErrorCode::StoreUnavailable.as_u16(), "{e:?}");
            assert!(e.retry_after_ms > 0);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Space comes back. The node reopens the store by itself; the same send is accepted.
    std::fs::remove_file(&filler).unwrap();
    let freed = std::time::Instant::now();
    let reopened = until("the store is reopened", || {
        store.health() == switchboard_store::StoreHealth::Ok
    })
    .await;
    assert_eq!(store.reopens(), 1);
    let mut attempts = 0;
    let acked = loop {
        attempts += 1;
        alice.send(&send(6)).await;
        match alice.read().await.unwrap() {
            ServerFrame::Ack { seq, duplicate, .. } => break (seq, duplicate),
            ServerFrame::Error(e) if e.code == ErrorCode::StoreUnavailable.as_u16() => {
                assert!(freed.elapsed() < WAIT, "sends still refused after {WAIT:?}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    let recovered = freed.elapsed();
    assert_eq!(
        acked,
        (6, false),
        "stored once, after the last acknowledged"
    );
    let health = healthz().await;
    assert_eq!(
        (health.status.as_str(), health.store.as_str()),
        ("ok", "ok")
    );
    alice.send(&send(7)).await;
    assert!(matches!(
        alice.read().await,
        Some(ServerFrame::Ack { seq: 7, .. })
    ));
    // Writes the reserve does not guard work again too.
    store
        .put_tenant(&switchboard_store::TenantRecord {
            id: TenantId::new("after").unwrap(),
            secret: vec![1; 32],
        })
        .unwrap();
    store.flush().unwrap();
    eprintln!(
        "space freed -> store reopened in {reopened:?}, first send acked after {recovered:?} \
         ({attempts} attempts)"
    );

    // Everything acknowledged is durable: reopen a copy elsewhere.
    alice.conn.close(0u32.into(), b"done");
    node.shutdown().await;
    drop(hub);
    drop(store);
    let copy = tmp.path().join("copy");
    copy_dir(&disk.0.join("store"), &copy);
    std::fs::copy(disk.0.join("store.key"), tmp.path().join("copy.key")).unwrap();
    drop(disk);
    let (acme, team) = (
        TenantId::new("acme").unwrap(),
        GroupId::new("team").unwrap(),
    );
    let copy = SledStore::open(&copy).expect("the store reopens");
    assert_eq!(copy.head(&acme, &team).unwrap(), 7);
    for seq in 1..=7 {
        let m = copy.message(&acme, &team, seq).unwrap().unwrap();
        assert_eq!(m.client_msg_id, format!("m{seq}"));
    }
}

/// Opens the node's store (sled and the segment log) in `dir`.
fn open_segment_store(dir: &Path) -> Arc<switchboard_store::NodeStore> {
    let settings = switchboard::StoreSettings::default();
    switchboard::open_node_store(dir, None, &settings, &Limits::default()).unwrap()
}

/// The segment log meets a real ENOSPC: its write at a flush fails with a typed
/// `StoreError::Io`, the store reports itself failed, sends are refused, and once space
/// is freed the node reopens the log by itself (truncating the torn tail the failed write
/// left) and takes the same send once; every acknowledged message and every message of a
/// flush that succeeded is still there, in order and without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_segment_log_fails_typed_on_enospc_and_recovers_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("disk"), "32m");
    let data = disk.0.join("data");
    let store = open_segment_store(&data);
    assert!(
        store.segment_log().is_some(),
        "messages go to the segment log"
    );
    seed(&*store);
    let identity = TlsIdentity::self_signed().unwrap();
    let cert = identity.cert_chain[0].to_vec();
    let node = Node::start(
        EdgeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            limits: Limits {
                load_sample_ms: 0,
                min_free_disk_bytes: switchboard_core::limits::MIN_FREE_DISK_FLOOR,
                ..Limits::default()
            },
            identity,
            webtransport: None,
        },
        store.clone(),
    )
    .await
    .unwrap();
    let hub = node.hub().clone();
    let mut alice = RawClient::connect(node.local_addr(), &cert, switchboard_wire::ALPN)
        .await
        .unwrap();
    let token = mint("acme", "alice", ACME_SECRET, now_secs() + 600, 0);
    assert!(matches!(
        alice.hello(&token).await,
        ServerFrame::Welcome { .. }
    ));
    for i in 1..=5 {
        alice.send(&send(i)).await;
        assert!(matches!(alice.read().await, Some(ServerFrame::Ack { seq, .. }) if seq == i));
    }

    // Something else fills the disk; then appends to another group, flushed one by one,
    // meet ENOSPC for real.
    let (acme, team, general) = (
        TenantId::new("acme").unwrap(),
        GroupId::new("team").unwrap(),
        GroupId::new("general").unwrap(),
    );
    let filler = disk.0.join("filler");
    let filled = fill(&filler);
    let writer = store.clone();
    let (general_acked, error) = tokio::task::spawn_blocking(move || {
        let bob = switchboard_core::UserId::new("bob").unwrap();
        let body = vec![7u8; 8192];
        // Each flush that returned made its append durable: `i` of them before a failure.
        for i in 0..10_000u32 {
            let id = format!("g{i}");
            let appended = writer.append(
                &TenantId::new("acme").unwrap(),
                &GroupId::new("general").unwrap(),
                switchboard_store::NewMessage {
                    sender: &bob,
                    lane: switchboard_core::Lane::Normal,
                    client_msg_id: &id,
                    sent_at_ms: 0,
                    body: &body,
                },
            );
            if let Err(e) = appended.and_then(|_| writer.flush()) {
                return (u64::from(i), e);
            }
        }
        panic!("10,000 flushes of 8 KiB on a full 32 MiB disk did not fail");
    })
    .await
    .unwrap();
    eprintln!("filled {filled} bytes; {general_acked} flushes succeeded, then: {error}");
    assert!(
        matches!(error, switchboard_store::StoreError::Io(_)),
        "{error:?}"
    );
    assert!(matches!(
        store.health(),
        switchboard_store::StoreHealth::Failed { .. }
    ));
    alice.send(&send(6)).await;
    match alice.read().await.unwrap() {
        ServerFrame::Error(e) => {
            assert_eq!(e.code, ErrorCode::StoreUnavailable.as_u16(), "{e:?}");
            assert!(e.retry_after_ms > 0);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Space comes back: the node reopens the log by itself and the same send is stored once.
    std::fs::remove_file(&filler).unwrap();
    let freed = std::time::Instant::now();
    let reopened = until("the store is reopened", || {
        store.health() == switchboard_store::StoreHealth::Ok
    })
    .await;
    let acked = loop {
        alice.send(&send(6)).await;
        match alice.read().await.unwrap() {
            ServerFrame::Ack { seq, duplicate, .. } => break (seq, duplicate),
            ServerFrame::Error(e) if e.code == ErrorCode::StoreUnavailable.as_u16() => {
                assert!(freed.elapsed() < WAIT, "sends still refused after {WAIT:?}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        acked,
        (6, false),
        "stored once, after the last acknowledged"
    );
    eprintln!("space freed -> segment log reopened in {reopened:?}");
    let general_head = store.head(&acme, &general).unwrap();
    assert!(general_head >= general_acked, "a flushed append was lost");

    // Everything acknowledged is durable: reopen a copy elsewhere.
    alice.conn.close(0u32.into(), b"done");
    node.shutdown().await;
    drop(hub);
    drop(store);
    let copy = tmp.path().join("copy");
    copy_dir(&data, &copy);
    drop(disk);
    let copy = open_segment_store(&copy);
    for seq in 1..=6 {
        let m = copy.message(&acme, &team, seq).unwrap().unwrap();
        assert_eq!(m.client_msg_id, format!("m{seq}"));
    }
    let general: Vec<u64> = copy
        .read_after(&acme, &general, 0, 100_000)
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(general, (1..=general_head).collect::<Vec<_>>());
}
