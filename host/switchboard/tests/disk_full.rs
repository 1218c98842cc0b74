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

/// A tmpfs of `size`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it and needs the right to (run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_owned())
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
    drop(disk);
    let reopened = SledStore::open(&copy).expect("the store reopens");
    for seq in 1..=6 {
        let m = reopened.message(&acme, &team, seq).unwrap().unwrap();
        assert_eq!(m.client_msg_id, format!("m{seq}"));
    }
    assert_eq!(reopened.head(&acme, &team).unwrap(), 6);
}
