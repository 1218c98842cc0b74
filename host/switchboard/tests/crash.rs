//! Crash durability: the real binary is killed with SIGKILL again and again while two senders
//! keep it busy, and restarted on the same data dir. After every restart the store must
//! reopen and the group's log must hold every acknowledged message at its acknowledged
//! sequence number, in order, with no gaps and no duplicates; what was seen after one restart
//! must still be there after the next; and resending an unacknowledged message must be
//! acknowledged exactly once (as a duplicate if it had landed), so dedupe survives the crash.
//!
//! The node runs on its default store, so messages are in the segment log (checked at the
//! end): a kill between a batch's write and its fdatasync, or in the middle of the write, is
//! among the moments the kills hit.
//!
//! Figures go to stderr (`--nocapture`) and into `docs/reliability.md`.
#![cfg(unix)]

mod common;
#[path = "common/process.rs"]
mod process;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{mint, now_secs, RawClient, WAIT};
use process::NodeProcess;
use rand::rngs::StdRng;
use rand::seq::IteratorRandom;
use rand::{Rng, SeedableRng};
use switchboard_wire::{ClientFrame, GroupCursor, Message, ServerFrame};

/// How many times the node is killed (it is started once more than that).
const KILLS: usize = 50;
/// Acks to wait for before a kill, drawn per round from this range.
const ACKS_BEFORE_KILL: std::ops::Range<u64> = 20..300;
/// Sends each sender keeps in flight, drawn per round from this range.
const WINDOW: std::ops::RangeInclusive<usize> = 1..=48;
/// The whole test must stay under this (it is typically far below).
const BUDGET: Duration = Duration::from_secs(120);

const TENANT: &str = "crash";
const GROUP: &str = "room";
const SENDERS: [&str; 2] = ["alice", "bob"];
const SECRET_ENV: &str = "SWITCHBOARD_CRASH_TEST_SECRET";
const SECRET: &str = "crash-test-secret-0123456789abcdef";

fn config() -> String {
    format!(
        "[admin]\nenabled = false\n\n\
         [[tenants]]\nid = \"{TENANT}\"\nsecret_env = \"{SECRET_ENV}\"\n\n  \
         [[tenants.groups]]\n  id = \"{GROUP}\"\n  open = false\n  \
         members = [\"alice\", \"bob\"]\n"
    )
}

fn token(user: &str) -> String {
    mint(TENANT, user, SECRET.as_bytes(), now_secs() + 3600, 0)
}

/// The body of a message, derived from its sender and id so the log can be checked without
/// keeping every body: mostly up to 256 bytes, one in 32 of 4 KiB (small, so that reading
/// the whole log after every restart stays quick).
fn body_of(sender: &str, id: &str) -> Bytes {
    let h = id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    let pad = if h % 32 == 0 { 4096 } else { h % 256 };
    Bytes::from(format!("{sender}:{id}:{}", "x".repeat(pad as usize)))
}

fn send_frame(request_id: u64, sender: &str, id: &str) -> ClientFrame {
    ClientFrame::Send {
        request_id,
        group: GROUP.into(),
        client_msg_id: id.into(),
        body: body_of(sender, id),
    }
}

/// `(round, index)` of an id `r{round}-{sender}-{index}`: a sender's messages must appear in
/// the log in the order they were sent, which is the order of these keys.
fn order_key(id: &str) -> (u64, u64) {
    let mut parts = id.trim_start_matches('r').split('-');
    let round = parts.next().unwrap().parse().unwrap();
    let index = parts.next_back().unwrap().parse().unwrap();
    (round, index)
}

/// What one sender knows: every acknowledged id with its sequence number, and the sends
/// whose outcome a kill left unknown.
#[derive(Default)]
struct Ledger {
    acked: HashMap<String, u64>,
    /// Sent (or about to be) and not acknowledged yet, by request id (= send order).
    pending: BTreeMap<u64, String>,
    /// Pending when the node was killed, in send order: may or may not be in the log.
    unknown: Vec<String>,
    failure: Option<String>,
}

/// Shared by a round's senders: acks so far, the count that triggers the kill.
struct Progress {
    acks: AtomicU64,
    target: u64,
    reached: tokio::sync::Notify,
    killed: AtomicBool,
}

/// Keeps `window` sends in flight on `client` until aborted, recording every ack.
async fn load(
    mut client: RawClient,
    sender: &'static str,
    round: usize,
    window: usize,
    ledger: Arc<Mutex<Ledger>>,
    progress: Arc<Progress>,
) {
    let mut next_request = 1_000_000u64;
    let mut index = 0u64;
    let mut in_flight = 0usize;
    let fail = |why: String| {
        ledger.lock().unwrap().failure.get_or_insert(why);
        progress.reached.notify_one();
    };
    loop {
        while in_flight < window {
            let id = format!("r{round}-{sender}-{index}");
            index += 1;
            // Recorded before it is written: if the kill comes first, it counts as unknown.
            ledger
                .lock()
                .unwrap()
                .pending
                .insert(next_request, id.clone());
            client.send(&send_frame(next_request, sender, &id)).await;
            next_request += 1;
            in_flight += 1;
        }
        match client.read().await {
            Some(ServerFrame::Ack {
                request_id,
                group,
                client_msg_id,
                seq,
                duplicate,
            }) => {
                let mut l = ledger.lock().unwrap();
                let sent = l.pending.remove(&request_id);
                if sent.as_deref() != Some(&client_msg_id) || group != GROUP || duplicate {
                    drop(l);
                    return fail(format!(
                        "{sender}: ack for request {request_id} ({group}, {client_msg_id}, \
                         duplicate {duplicate}) does not match the send ({sent:?})"
                    ));
                }
                l.acked.insert(client_msg_id, seq);
                drop(l);
                in_flight -= 1;
                if progress.acks.fetch_add(1, Ordering::SeqCst) + 1 == progress.target {
                    progress.reached.notify_one();
                }
            }
            Some(other) => return fail(format!("{sender}: expected an ack, got {other:?}")),
            // A killed node sends no close; only a close before the kill is a failure.
            None if progress.killed.load(Ordering::SeqCst) => return,
            None => return fail(format!("{sender}: connection ended under load")),
        }
    }
}

/// Reads the whole log of the group, page by page.
async fn fetch_all(c: &mut RawClient) -> (Vec<Message>, u64) {
    let mut log: Vec<Message> = Vec::new();
    let mut request_id = 500_000u64;
    loop {
        request_id += 1;
        c.send(&ClientFrame::Fetch {
            request_id,
            group: GROUP.into(),
            after_seq: log.len() as u64,
            limit: 256,
        })
        .await;
        let Some(ServerFrame::FetchResult {
            request_id: got,
            messages,
            head_seq,
            ..
        }) = c.read().await
        else {
            panic!("expected a FetchResult")
        };
        assert_eq!(got, request_id);
        if messages.is_empty() {
            assert_eq!(head_seq, log.len() as u64, "an empty page before the head");
            return (log, head_seq);
        }
        log.extend(messages);
    }
}

/// Checks the log against everything known so far; returns `(sender, id) -> seq` of the log.
fn check_log(
    round: usize,
    log: &[Message],
    head: u64,
    previous: &[(String, String)],
    ledgers: &[Arc<Mutex<Ledger>>],
) -> HashMap<(String, String), u64> {
    let mut at = HashMap::new();
    let mut last_key: HashMap<&str, (u64, u64)> = HashMap::new();
    for (i, m) in log.iter().enumerate() {
        let want = i as u64 + 1;
        assert_eq!(m.seq, want, "round {round}: gap or reorder at seq {want}");
        assert_eq!(m.group, GROUP);
        assert!(
            SENDERS.contains(&m.sender.as_str()),
            "round {round}: unknown sender {}",
            m.sender
        );
        assert_eq!(
            m.body,
            body_of(&m.sender, &m.client_msg_id),
            "round {round}: body of seq {want}"
        );
        let key = order_key(&m.client_msg_id);
        if let Some(before) = last_key.insert(m.sender.as_str(), key) {
            assert!(
                before < key,
                "round {round}: {}'s {} at seq {want} is out of send order",
                m.sender,
                m.client_msg_id
            );
        }
        let dup = at.insert((m.sender.clone(), m.client_msg_id.clone()), m.seq);
        assert_eq!(
            dup, None,
            "round {round}: {}/{} is in the log twice",
            m.sender, m.client_msg_id
        );
    }
    assert_eq!(head, log.len() as u64);
    // The log only grows: what a previous restart showed is still there, unchanged.
    assert!(
        previous.len() <= log.len(),
        "round {round}: the log shrank from {} to {}",
        previous.len(),
        log.len()
    );
    for (i, (sender, id)) in previous.iter().enumerate() {
        let m = &log[i];
        assert_eq!(
            (&m.sender, &m.client_msg_id),
            (sender, id),
            "round {round}: seq {} changed across a restart",
            i + 1
        );
    }
    // Every acknowledged message is there, at its acknowledged number; and nothing is there
    // that was not sent.
    for (sender, ledger) in SENDERS.iter().zip(ledgers) {
        let l = ledger.lock().unwrap();
        for (id, seq) in &l.acked {
            assert_eq!(
                at.get(&(sender.to_string(), id.clone())),
                Some(seq),
                "round {round}: acknowledged {sender}/{id} (seq {seq}) is not at its seq; \
                 head {head}"
            );
        }
    }
    for m in log {
        let i = SENDERS.iter().position(|s| *s == m.sender).unwrap();
        let l = ledgers[i].lock().unwrap();
        assert!(
            l.acked.contains_key(&m.client_msg_id) || l.unknown.contains(&m.client_msg_id),
            "round {round}: {}/{} at seq {} was never sent",
            m.sender,
            m.client_msg_id,
            m.seq
        );
    }
    at
}

/// Resends what the kill left unknown, and a few acknowledged ids: each is acknowledged
/// once, as a duplicate at its logged number if it landed, as a new message otherwise.
/// Returns how many of the unknown ones had landed.
async fn resolve(
    round: usize,
    sender: &str,
    c: &mut RawClient,
    ledger: &Mutex<Ledger>,
    in_log: &HashMap<(String, String), u64>,
    head: u64,
    rng: &mut StdRng,
) -> usize {
    let (unknown, sample): (Vec<String>, Vec<(String, u64)>) = {
        let mut l = ledger.lock().unwrap();
        let count = rng.gen_range(0..=3);
        let sample = l.acked.iter().choose_multiple(rng, count);
        let sample = sample
            .into_iter()
            .map(|(id, seq)| (id.clone(), *seq))
            .collect();
        (std::mem::take(&mut l.unknown), sample)
    };
    let mut expect = HashMap::new();
    let mut landed = 0;
    for (i, id) in unknown.iter().enumerate() {
        let request_id = 2_000_000 + i as u64;
        let logged = in_log.get(&(sender.to_string(), id.clone())).copied();
        landed += usize::from(logged.is_some());
        expect.insert(request_id, (id.clone(), logged));
        c.send(&send_frame(request_id, sender, id)).await;
    }
    for (i, (id, seq)) in sample.into_iter().enumerate() {
        let request_id = 3_000_000 + i as u64;
        expect.insert(request_id, (id.clone(), Some(seq)));
        c.send(&send_frame(request_id, sender, &id)).await;
    }
    while !expect.is_empty() {
        let Some(ServerFrame::Ack {
            request_id,
            client_msg_id,
            seq,
            duplicate,
            ..
        }) = c.read().await
        else {
            panic!("round {round}: {sender}: expected an ack for a resend")
        };
        let (id, logged) = expect
            .remove(&request_id)
            .unwrap_or_else(|| panic!("round {round}: unexpected ack for {request_id}"));
        assert_eq!(client_msg_id, id);
        match logged {
            Some(at) => assert_eq!(
                (seq, duplicate),
                (at, true),
                "round {round}: resent {sender}/{id} is in the log at {at}: a duplicate"
            ),
            None => {
                assert!(
                    !duplicate && seq > head,
                    "round {round}: resent {sender}/{id} was not in the log: new, after \
                     {head}; got seq {seq}, duplicate {duplicate}"
                );
            }
        }
        ledger.lock().unwrap().acked.insert(id, seq);
    }
    landed
}

/// Connects a member once the node is known to be up.
async fn member(node: &NodeProcess, user: &str) -> RawClient {
    let cert = std::fs::read(node.data_dir.join("cert.der")).unwrap();
    let mut c = RawClient::connect(node.addr, &cert, switchboard_wire::ALPN)
        .await
        .unwrap();
    assert!(matches!(
        c.hello(&token(user)).await,
        ServerFrame::Welcome { .. }
    ));
    c
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_repeated_sigkill() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_secs() ^ u64::from(std::process::id()));
    eprintln!("crash: seed {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir: &Path = tmp.path();
    let ledgers: Vec<Arc<Mutex<Ledger>>> = SENDERS.iter().map(|_| Arc::default()).collect();
    let mut previous: Vec<(String, String)> = Vec::new();
    let (mut ready_times, mut landed_total, mut unknown_total) = (Vec::new(), 0, 0);
    let mut final_head = 0;
    let started = Instant::now();

    for round in 0..=KILLS {
        // Start (or restart) on the same data dir; the store must reopen every time.
        let t = Instant::now();
        let cursors = vec![GroupCursor {
            group: GROUP.into(),
            seq: previous.len() as u64,
        }];
        let secret = [(SECRET_ENV, SECRET)];
        let (mut node, mut alice, _) = NodeProcess::start(
            dir,
            &format!("node-{round}"),
            &config(),
            &secret,
            &token("alice"),
            cursors,
        )
        .await;
        ready_times.push(t.elapsed());
        let mut bob = member(&node, "bob").await;

        // Everything acknowledged so far is there, in order, once.
        let t = Instant::now();
        let (log, head) = fetch_all(&mut alice).await;
        let in_log = check_log(round, &log, head, &previous, &ledgers);
        let mut landed = 0;
        for ((sender, c), ledger) in SENDERS.iter().zip([&mut alice, &mut bob]).zip(&ledgers) {
            unknown_total += ledger.lock().unwrap().unknown.len();
            landed += resolve(round, sender, c, ledger, &in_log, head, &mut rng).await;
        }
        landed_total += landed;
        let verify_time = t.elapsed();
        previous = log
            .into_iter()
            .map(|m| (m.sender, m.client_msg_id))
            .collect();
        if round == KILLS {
            // The resends are in too, and now every logged message is acknowledged.
            let (log, head) = fetch_all(&mut alice).await;
            check_log(round, &log, head, &previous, &ledgers);
            final_head = head;
            break;
        }

        // Load, then SIGKILL once enough acks came back.
        let window = rng.gen_range(WINDOW);
        let progress = Arc::new(Progress {
            acks: AtomicU64::new(0),
            target: rng.gen_range(ACKS_BEFORE_KILL),
            reached: tokio::sync::Notify::new(),
            killed: AtomicBool::new(false),
        });
        let load_started = Instant::now();
        let senders: Vec<_> = SENDERS
            .iter()
            .zip([alice, bob])
            .zip(&ledgers)
            .map(|((sender, c), ledger)| {
                tokio::spawn(load(
                    c,
                    sender,
                    round,
                    window,
                    ledger.clone(),
                    progress.clone(),
                ))
            })
            .collect();
        let reached = tokio::time::timeout(WAIT, progress.reached.notified()).await;
        progress.killed.store(true, Ordering::SeqCst);
        let pid = node.id();
        let status = node.kill();
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: node {pid:?} must die of SIGKILL, ended with {status}"
        );
        let load_time = load_started.elapsed();
        for s in senders {
            s.abort();
            if let Err(e) = s.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
        let mut unknown_now = 0;
        for ledger in &ledgers {
            let mut l = ledger.lock().unwrap();
            if let Some(why) = &l.failure {
                panic!("round {round}: {why}\nnode log:\n{}", node.log_text());
            }
            let pending = std::mem::take(&mut l.pending);
            unknown_now += pending.len();
            l.unknown = pending.into_values().collect();
        }
        let acks = progress.acks.load(Ordering::SeqCst);
        assert!(
            reached.is_ok(),
            "round {round}: only {acks} of {} acks within {WAIT:?}\nnode log:\n{}",
            progress.target,
            node.log_text()
        );
        eprintln!(
            "crash: round {round:2}: ready in {:3} ms, log of {head:5} checked in {:3} ms \
             ({landed:2} of the last kill's unacked had landed), window {window:2}, \
             {acks:3} acks in {:3} ms, killed with {unknown_now:2} unacked",
            ready_times[round].as_millis(),
            verify_time.as_millis(),
            load_time.as_millis(),
        );
        assert!(
            started.elapsed() < BUDGET,
            "over budget: {:?} after {round} rounds",
            started.elapsed()
        );
    }

    let total = started.elapsed();
    let acked: usize = ledgers.iter().map(|l| l.lock().unwrap().acked.len()).sum();
    let mut sorted = ready_times.clone();
    sorted.sort();
    eprintln!(
        "crash: {KILLS} SIGKILLs, {} starts, {acked} messages acknowledged and all present \
         (log head {}), {unknown_total} sends unacknowledged at a kill of which {landed_total} \
         had landed (resends: duplicates), restart-to-ready median {} ms / max {} ms, \
         total {:.1} s",
        KILLS + 1,
        final_head,
        percentile(&sorted, 50).as_millis(),
        sorted.last().unwrap().as_millis(),
        total.as_secs_f64(),
    );
    assert_eq!(
        acked as u64, final_head,
        "every logged message is acknowledged"
    );
    assert!(
        unknown_total > 0,
        "no kill ever caught a send in flight: the test would prove little"
    );
    // The node's default store keeps messages in the segment log: that is what was killed.
    assert!(
        switchboard_store::SegmentLog::has_records(
            &dir.join("data").join(switchboard::MESSAGES_DIR)
        )
        .unwrap(),
        "the messages were in the segment log"
    );
}

/// `switchboard ctl node drain` stops a running node as SIGTERM does (a graceful exit, the
/// log saying it shut down); a drain naming a cluster node is refused by a node that is not
/// one, and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_node_drain_stops_the_node_as_sigterm_does() {
    const ADMIN_TOKEN: &str = "drain-test-admin-token-0123456789";
    let tmp = tempfile::tempdir().unwrap();
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let config = config().replace(
        "[admin]\nenabled = false\n",
        &format!("[admin]\nlisten = \"{admin}\"\ntoken_env = \"SB_DRAIN_TEST_ADMIN\"\n"),
    );
    let (mut node, _alice, _) = NodeProcess::start(
        tmp.path(),
        "drain",
        &config,
        &[(SECRET_ENV, SECRET), ("SB_DRAIN_TEST_ADMIN", ADMIN_TOKEN)],
        &token("alice"),
        Vec::new(),
    )
    .await;
    let ctl = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("ctl")
            .arg("--url")
            .arg(format!("http://{admin}"))
            .args(args)
            .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap()
    };
    let refused = ctl(&["node", "drain", "edge-9"]);
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not in a cluster"),
        "{refused:?}"
    );
    assert!(node.running(), "a refused drain stopped the node");
    let drained = ctl(&["node", "drain"]);
    assert!(drained.status.success(), "{drained:?}");
    assert!(String::from_utf8_lossy(&drained.stdout).contains("draining"));
    let status = node.wait_exit("ctl node drain");
    assert!(
        status.success(),
        "{status}\n{}",
        std::fs::read_to_string(&node.log).unwrap()
    );
    assert!(std::fs::read_to_string(&node.log)
        .unwrap()
        .contains("shutting down"));
}
