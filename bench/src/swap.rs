//! Hot swap under load (issue 4), through the control plane as an operator would use it.
//!
//! A node plus a [`Control`] over its store and hub (on the node's runtime), and two uploaded
//! versions that tell themselves apart by lane: **A** = the priority plugin with
//! `vip_users=u0` (the sender: every message goes to the high lane), **B** = the flags plugin
//! (normal lane). Each delivered message's lane names the version that judged it.
//!
//! 1. Latency: the sender keeps [`LATENCY_WINDOW`] sends in flight to a 1→[`FANOUT`] group
//!    while the control plane activates A and B alternately, one at a time. Per activation:
//!    how long `activate` takes, and the time from just before the call until the first
//!    receiver (and until every receiver) gets a message judged by the new version. One
//!    warm-up activation of each version comes first and is reported apart, as are the cold
//!    paths: a control plane started over an empty artifact cache (the activation compiles)
//!    and over a filled one (it deserializes the artifact).
//! 2. Throughput: window [`THROUGHPUT_WINDOW`], `messages` messages, once with A active and no
//!    swaps and once with a task activating B, A, B, … back to back (or every
//!    `--swap-every-ms`), alternating, `runs` times each; medians.
//!
//! Every run checks that each receiver got every message exactly once and in order, that no
//! policy call fell back to the built-in default and that nothing was rolled back; it fails
//! otherwise.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::{BufMut, BytesMut};
use switchboard_admin::control::types::{Activate, Caller};
use switchboard_admin::{AutoRollback, Control, ControlConfig};
use switchboard_core::{Lane, Limits};
use switchboard_edge::{Hub, MetricsSnapshot};
use switchboard_policy::PolicyEngine;
use switchboard_store::SledStore;
use switchboard_wire::{self as wire, ClientFrame, DecodeLimits, ServerFrame};
use tokio::sync::{mpsc, oneshot};

use super::{client_config, connect, start_node, Conn};

const TENANT: &str = "bench";
const FANOUT: usize = 10;
const PAYLOAD: usize = 64;
/// Sends in flight during the latency part.
pub const LATENCY_WINDOW: usize = 16;
/// Sends in flight during the throughput part.
pub const THROUGHPUT_WINDOW: usize = 128;
/// Pause after every receiver saw a swap, before the next one (lets the stream settle).
const SETTLE: Duration = Duration::from_millis(10);
/// Longest wait for the receivers to see a swap.
const SEE_TIMEOUT: Duration = Duration::from_secs(10);
/// Message index of the last message of a run (its ack and delivery end the run).
const END: u64 = u64::MAX;

#[derive(Debug)]
pub struct SwapArgs {
    pub swaps: usize,
    pub messages: u64,
    pub runs: usize,
    pub swap_every: Duration,
}

/// The two versions, as activations, and the lane each puts the sender's messages in.
#[derive(Clone)]
struct Versions {
    activations: [Activate; 2],
    lanes: [Lane; 2],
}

pub fn run(
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    a: SwapArgs,
) -> Result<()> {
    let engine = PolicyEngine::new(Default::default())?;
    println!(
        "Hot swap: 1→{FANOUT}, {PAYLOAD} B bodies; A = priority (vip_users=u0, high lane), \
         B = flags (normal lane)."
    );
    println!();
    print_load("before");
    latency(server_rt, client_rt, &engine, &a)?;
    println!();
    throughput(server_rt, client_rt, &engine, &a)?;
    print_load("after");
    Ok(())
}

/// The machine's load average (Linux), so a table says how busy the machine was.
fn print_load(when: &str) {
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!();
        println!("Load average {when}: {}", l.trim());
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn pct<T: Copy + Ord>(v: &[T], p: f64) -> T {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn start_control(
    artifact_dir: &Path,
    store: &Arc<SledStore>,
    hub: &Arc<Hub>,
    engine: &PolicyEngine,
) -> Result<Arc<Control>> {
    Ok(Control::start(
        ControlConfig {
            admin_token_sha256: None,
            artifact_dir: artifact_dir.to_owned(),
            auto_rollback: AutoRollback::default(),
            apply_timeout: Duration::from_secs(10),
            max_group_members: Limits::default().max_group_members,
            tenant_rollout: false,
        },
        store.clone(),
        store.clone(),
        hub.clone(),
        engine.clone(),
    )
    .await?)
}

/// Uploads A and B; returns them with how long each upload took.
async fn upload_both(c: &Control) -> Result<(Versions, [Duration; 2])> {
    let mut took = [Duration::ZERO; 2];
    let mut versions = Vec::new();
    for (i, path) in [plugins_artifacts::PRIORITY, plugins_artifacts::FLAGS]
        .into_iter()
        .enumerate()
    {
        let wasm = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let t = Instant::now();
        let up = c.upload_plugin(&Caller::Admin, TENANT, wasm.into()).await?;
        took[i] = t.elapsed();
        versions.push(up.plugin.version);
    }
    let versions = Versions {
        activations: [
            Activate {
                version: versions[0].clone(),
                config: [("vip_users".to_string(), "u0".to_string())].into(),
            },
            Activate {
                version: versions[1].clone(),
                config: Default::default(),
            },
        ],
        lanes: [Lane::High, Lane::Normal],
    };
    Ok((versions, took))
}

/// Fails unless the node accepted `messages` (+ the end marker) once each and never fell back
/// to the built-in policy. (That each receiver got each once is checked by the receivers:
/// the node's delivery counters count a message queued live and then sent from the log, after
/// an outbox overflow, twice.)
fn check_metrics(m: &MetricsSnapshot, messages: u64, control: &Control) -> Result<()> {
    let total = messages + 1;
    ensure!(
        m.messages_accepted == total && m.duplicates == 0,
        "accepted {} (duplicates {}), sent {total}",
        m.messages_accepted,
        m.duplicates
    );
    ensure!(
        m.policy_fallbacks == 0 && m.policy_breaker_skips == 0 && m.policy_rejections == 0,
        "policy fallbacks {}, breaker skips {}, rejections {}",
        m.policy_fallbacks,
        m.policy_breaker_skips,
        m.policy_rejections
    );
    no_rollbacks(control)
}

fn no_rollbacks(control: &Control) -> Result<()> {
    ensure!(
        control.auto_rollbacks() == 0,
        "{} automatic rollbacks",
        control.auto_rollbacks()
    );
    Ok(())
}

// --- traffic ---

/// A receiver saw the lane change: the first message judged by another version.
#[derive(Debug, Clone, Copy)]
struct LaneChange {
    lane: Lane,
    /// When it arrived (ns since the run's start instant).
    at_ns: u64,
}

struct Traffic {
    window: usize,
    /// Stop after this many messages (otherwise when `stop` is set).
    limit: Option<u64>,
    stop: Arc<AtomicBool>,
    /// Set when every message was acked (the driver's caller sets it too, once it ends).
    done: Arc<AtomicBool>,
    /// Told when the first message is sent.
    started: oneshot::Sender<()>,
    /// Where receivers report lane changes.
    changes: Option<mpsc::UnboundedSender<LaneChange>>,
}

struct TrafficOut {
    messages: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    /// Lane changes each receiver saw (equal for all receivers).
    lane_changes: u64,
}

struct Received {
    count: u64,
    latencies_us: Vec<u64>,
    lanes: Vec<Lane>,
    /// The connection and its push stream, kept open until the endpoint closes (stopping
    /// the push stream first would end the session with an error).
    _keep: (Conn, crate::push::Pushes),
}

/// One sender (`u0`) and [`FANOUT`] receivers; the sender ends with an end marker whose
/// delivery ends the receivers.
async fn drive(addr: SocketAddr, cert: Vec<u8>, start: Instant, t: Traffic) -> Result<TrafficOut> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(client_config(&cert)?);
    let mut receivers = Vec::new();
    for i in 1..=FANOUT {
        let c = connect(&endpoint, addr, &format!("u{i}")).await?;
        receivers.push(tokio::spawn(receive(c, start, t.changes.clone())));
    }
    drop(t.changes);
    let mut sender = connect(&endpoint, addr, "u0").await?;

    let permits = Arc::new(tokio::sync::Semaphore::new(t.window));
    let acker = {
        let permits = permits.clone();
        let mut recv = sender.recv;
        let mut buf = std::mem::take(&mut sender.buf);
        tokio::spawn(async move {
            let limits = DecodeLimits::default();
            let mut acks = 0u64;
            loop {
                let f = wire::read_frame(&mut recv, &mut buf, 1 << 20)
                    .await?
                    .context("control stream ended")?;
                match wire::decode_server(&f, &limits)? {
                    ServerFrame::Ack {
                        duplicate: true,
                        client_msg_id,
                        ..
                    } => bail!("{client_msg_id} acked as a duplicate"),
                    ServerFrame::Ack { client_msg_id, .. } if client_msg_id == "end" => {
                        return anyhow::Ok(acks)
                    }
                    ServerFrame::Ack { .. } => {
                        acks += 1;
                        permits.add_permits(1);
                    }
                    ServerFrame::Error(e) => bail!("error from the node: {e:?}"),
                    _ => {}
                }
            }
        })
    };
    let filler = vec![b'x'; PAYLOAD - 16];
    let send_one = |i: u64, index: u64, id: String| {
        let mut body = BytesMut::with_capacity(PAYLOAD);
        body.put_u64(start.elapsed().as_nanos() as u64);
        body.put_u64(index);
        body.put_slice(&filler);
        wire::encode_client(&ClientFrame::Send {
            request_id: i + 1,
            group: "g".into(),
            client_msg_id: id,
            body: body.freeze(),
        })
    };
    let t0 = Instant::now();
    let _ = t.started.send(());
    let mut sent = 0u64;
    while t.limit.is_none_or(|l| sent < l) && !t.stop.load(Ordering::Relaxed) {
        permits.acquire().await?.forget();
        sender
            .send
            .write_all(&send_one(sent, sent, format!("m{sent}")))
            .await?;
        sent += 1;
    }
    // Wait for every ack before the end marker, so it is the last message of the group.
    let _ = permits.acquire_many(t.window as u32).await?;
    t.done.store(true, Ordering::Relaxed);
    sender
        .send
        .write_all(&send_one(sent, END, "end".into()))
        .await?;
    let acks = acker.await??;
    ensure!(acks == sent, "{acks} acks for {sent} messages");
    let mut latencies = Vec::with_capacity(sent as usize * FANOUT);
    let mut lanes: Option<Vec<Lane>> = None;
    let mut keep = Vec::with_capacity(FANOUT);
    for r in receivers {
        let r = r.await??;
        ensure!(
            r.count == sent,
            "a receiver got {} of {sent} messages",
            r.count
        );
        latencies.extend(r.latencies_us);
        keep.push(r._keep);
        match &lanes {
            None => lanes = Some(r.lanes),
            Some(l) => ensure!(*l == r.lanes, "receivers saw different lanes"),
        }
    }
    let elapsed = t0.elapsed();
    endpoint.close(0u32.into(), b"done");
    drop(keep);
    let lanes = lanes.unwrap_or_default();
    Ok(TrafficOut {
        messages: sent,
        elapsed,
        latencies_us: latencies,
        lane_changes: lanes.windows(2).filter(|w| w[0] != w[1]).count() as u64,
    })
}

/// Reads deliveries until the end marker: checks the sequence is gapless (so nothing is lost
/// or repeated), records latencies and lanes, and reports lane changes.
async fn receive(
    c: Conn,
    start: Instant,
    changes: Option<mpsc::UnboundedSender<LaneChange>>,
) -> Result<Received> {
    let mut push = crate::push::Pushes::new(&c.conn);
    let mut count = 0;
    let mut latencies_us = Vec::new();
    let mut lanes: Vec<Lane> = Vec::new();
    let mut expect = 1;
    loop {
        let ServerFrame::Deliver(m) = push.next().await? else {
            continue;
        };
        let now = start.elapsed().as_nanos() as u64;
        if m.seq != expect {
            bail!("out of order: got {} expected {expect}", m.seq);
        }
        expect += 1;
        let sent = u64::from_be_bytes(m.body[..8].try_into()?);
        if u64::from_be_bytes(m.body[8..16].try_into()?) == END {
            return Ok(Received {
                count,
                latencies_us,
                lanes,
                _keep: (c, push),
            });
        }
        if lanes.last().is_some_and(|l| *l != m.lane) {
            if let Some(tx) = &changes {
                let _ = tx.send(LaneChange {
                    lane: m.lane,
                    at_ns: now,
                });
            }
        }
        count += 1;
        latencies_us.push(now.saturating_sub(sent) / 1_000);
        lanes.push(m.lane);
    }
}

// --- 1. activation → first message ---

#[derive(Debug, Clone, Copy)]
struct SwapSample {
    /// The `activate` call.
    call: Duration,
    /// From just before the call to the first receiver's first message by the new version.
    first: Duration,
    /// … to the last receiver's.
    all: Duration,
}

/// Activates `to` and waits until every receiver got a message judged by it.
async fn swap(
    c: &Control,
    versions: &Versions,
    to: usize,
    start: Instant,
    changes: &mut mpsc::UnboundedReceiver<LaneChange>,
) -> Result<SwapSample> {
    let t0 = start.elapsed();
    c.activate(TENANT, &versions.activations[to]).await?;
    let applied = start.elapsed();
    let (mut first, mut last) = (u64::MAX, 0);
    for _ in 0..FANOUT {
        let change = tokio::time::timeout(SEE_TIMEOUT, changes.recv())
            .await
            .context("no receiver saw the new version")?
            .context("receivers ended")?;
        ensure!(
            change.lane == versions.lanes[to],
            "lane changed to {:?}, expected {:?}",
            change.lane,
            versions.lanes[to]
        );
        first = first.min(change.at_ns);
        last = last.max(change.at_ns);
    }
    let since = |ns: u64| Duration::from_nanos(ns).saturating_sub(t0);
    tokio::time::sleep(SETTLE).await;
    Ok(SwapSample {
        call: applied - t0,
        first: since(first),
        all: since(last),
    })
}

struct LatencyOut {
    warm: Vec<SwapSample>,
    /// (label, sample) of the warm-up and cold-path activations.
    cold: Vec<(String, SwapSample)>,
    /// (label, duration) of uploads and control-plane starts.
    setup: Vec<(String, Duration)>,
    swaps: u64,
}

fn latency(
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    engine: &PolicyEngine,
    a: &SwapArgs,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, node, cert) = start_node(server_rt, dir.path(), FANOUT)?;
    let hub = node.hub().clone();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = oneshot::channel();
    let (changes_tx, mut changes) = mpsc::unbounded_channel();
    let traffic = Traffic {
        window: LATENCY_WINDOW,
        limit: None,
        stop: stop.clone(),
        done: Arc::new(AtomicBool::new(false)),
        started: started_tx,
        changes: Some(changes_tx),
    };
    let orchestrate = {
        let (engine, hub, stop, swaps) = (engine.clone(), hub.clone(), stop.clone(), a.swaps);
        let dir = dir.path().to_owned();
        server_rt.spawn(async move {
            let result = async {
                let mut setup = Vec::new();
                let mut cold = Vec::new();
                let c = start_control(&dir.join("artifacts"), &store, &hub, &engine).await?;
                let (versions, took) = upload_both(&c).await?;
                setup.push((
                    "upload A (compile + self-test, empty artifact cache)".into(),
                    took[0],
                ));
                setup.push((
                    "upload B (compile + self-test, empty artifact cache)".into(),
                    took[1],
                ));
                started_rx.await.context("traffic did not start")?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                // Warm-up: the first activation of each (compiled at upload: a map lookup,
                // then a new instance pool, prewarmed).
                for (to, label) in [
                    (0, "first activation of A (built-in → A)"),
                    (1, "first activation of B"),
                ] {
                    cold.push((
                        label.into(),
                        swap(&c, &versions, to, start, &mut changes).await?,
                    ));
                }
                let mut current = 1;
                let mut warm = Vec::with_capacity(swaps);
                for _ in 0..swaps {
                    current = 1 - current;
                    warm.push(swap(&c, &versions, current, start, &mut changes).await?);
                }
                check_policy(&c, &versions.activations[current].version)?;
                no_rollbacks(&c)?;
                drop(c);
                // Cold paths: a control plane (a restarted node's) with an empty artifact cache
                // compiles what it activates; one with a filled cache deserializes it.
                let t = Instant::now();
                let c = start_control(&dir.join("artifacts-empty"), &store, &hub, &engine).await?;
                setup.push((
                    format!(
                        "Control::start, empty artifact cache (compiles the active version {})",
                        ["A", "B"][current]
                    ),
                    t.elapsed(),
                ));
                current = 1 - current;
                cold.push((
                    format!(
                        "activate {} with an empty artifact cache (compiles)",
                        ["A", "B"][current]
                    ),
                    swap(&c, &versions, current, start, &mut changes).await?,
                ));
                no_rollbacks(&c)?;
                drop(c);
                let t = Instant::now();
                let c = start_control(&dir.join("artifacts"), &store, &hub, &engine).await?;
                setup.push((
                    format!(
                        "Control::start, filled artifact cache (loads the active version {})",
                        ["A", "B"][current]
                    ),
                    t.elapsed(),
                ));
                current = 1 - current;
                cold.push((
                    format!("activate {} from the artifact cache", ["A", "B"][current]),
                    swap(&c, &versions, current, start, &mut changes).await?,
                ));
                check_policy(&c, &versions.activations[current].version)?;
                let n = warm.len() as u64 + cold.len() as u64;
                anyhow::Ok((
                    LatencyOut {
                        warm,
                        cold,
                        setup,
                        swaps: n,
                    },
                    c,
                ))
            }
            .await;
            // Stop the traffic whatever happened, so the driver ends.
            stop.store(true, Ordering::Relaxed);
            result
        })
    };
    let traffic = client_rt.block_on(drive(node.local_addr(), cert, start, traffic));
    let (out, control) = server_rt.block_on(orchestrate)??;
    let traffic = traffic?;
    check_metrics(&node.hub().metrics().snapshot(), traffic.messages, &control)?;
    ensure!(
        traffic.lane_changes == out.swaps,
        "receivers saw {} lane changes for {} activations",
        traffic.lane_changes,
        out.swaps
    );
    drop(control);
    server_rt.block_on(node.shutdown());

    println!(
        "### Activation → first message (window {LATENCY_WINDOW}, {} timed activations)",
        out.warm.len()
    );
    println!();
    println!(
        "{} messages sent during the swaps, each delivered once to all {FANOUT} receivers; \
         delivery latency over the whole stream p50 {} µs, p99 {} µs.",
        traffic.messages,
        pct(&traffic.latencies_us, 0.5),
        pct(&traffic.latencies_us, 0.99)
    );
    println!();
    println!("| measure | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    let row = |name: &str, v: Vec<Duration>| {
        println!(
            "| {name} | {} | {} | {} |",
            ms(pct(&v, 0.5)),
            ms(pct(&v, 0.99)),
            ms(pct(&v, 1.0))
        );
    };
    row("`activate` call", out.warm.iter().map(|s| s.call).collect());
    row(
        "t0 → first message by the new version (first receiver)",
        out.warm.iter().map(|s| s.first).collect(),
    );
    row(
        "t0 → every receiver has one",
        out.warm.iter().map(|s| s.all).collect(),
    );
    println!();
    println!("| one-off | `activate` call ms | t0 → first message ms | t0 → every receiver ms |");
    println!("|---|---|---|---|");
    for (label, s) in &out.cold {
        println!(
            "| {label} | {} | {} | {} |",
            ms(s.call),
            ms(s.first),
            ms(s.all)
        );
    }
    println!();
    println!("| setup step | ms |");
    println!("|---|---|");
    for (label, d) in &out.setup {
        println!("| {label} | {} |", ms(*d));
    }
    Ok(())
}

/// Fails unless the control plane serves `version`, applied, with no fallbacks.
fn check_policy(c: &Control, version: &str) -> Result<()> {
    let status = c.policy_status(TENANT)?;
    ensure!(
        status.applied_revision == status.revision,
        "revision {} stored, {} applied",
        status.revision,
        status.applied_revision
    );
    let active = status.active.context("no active version")?;
    ensure!(active.version == version, "serving {}", active.version);
    ensure!(
        active.failed == 0,
        "{} events fell back ({active:?})",
        active.failed
    );
    Ok(())
}

// --- 2. throughput with and without swaps ---

struct ThroughputRun {
    swapping: bool,
    messages: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    swaps: u64,
    lane_changes: u64,
}

fn throughput(
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    engine: &PolicyEngine,
    a: &SwapArgs,
) -> Result<()> {
    // Shared by every run: each compiles nothing.
    let artifacts = tempfile::tempdir()?;
    let mut runs = Vec::new();
    for _ in 0..a.runs {
        for swapping in [false, true] {
            runs.push(throughput_run(
                server_rt,
                client_rt,
                engine,
                artifacts.path(),
                a,
                swapping,
            )?);
        }
    }
    let how = if a.swap_every.is_zero() {
        "back to back".to_string()
    } else {
        format!("every {} ms", a.swap_every.as_millis())
    };
    println!(
        "### Throughput with continuous swaps vs none (window {THROUGHPUT_WINDOW}, {} messages, \
         swaps {how})",
        a.messages
    );
    println!();
    println!(
        "| swaps | run | msgs/s (acked) | deliveries/s | p50 µs | p99 µs | activations | lane changes seen |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut medians = [0.0f64; 2];
    for swapping in [false, true] {
        let of: Vec<&ThroughputRun> = runs.iter().filter(|r| r.swapping == swapping).collect();
        let label = if swapping { how.as_str() } else { "none" };
        let mut rates = Vec::new();
        for (i, r) in of.iter().enumerate() {
            let rate = r.messages as f64 / r.elapsed.as_secs_f64();
            rates.push(rate);
            println!(
                "| {label} | {} | {rate:.0} | {:.0} | {} | {} | {} | {} |",
                i + 1,
                rate * FANOUT as f64,
                pct(&r.latencies_us, 0.5),
                pct(&r.latencies_us, 0.99),
                r.swaps,
                r.lane_changes
            );
        }
        let m = median(&rates);
        medians[swapping as usize] = m;
        let med_u = |f: &dyn Fn(&ThroughputRun) -> u64| {
            let mut v: Vec<u64> = of.iter().map(|r| f(r)).collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        println!(
            "| **{label}** | **median** | **{m:.0}** | **{:.0}** | **{}** | **{}** | {} | {} |",
            m * FANOUT as f64,
            med_u(&|r| pct(&r.latencies_us, 0.5)),
            med_u(&|r| pct(&r.latencies_us, 0.99)),
            med_u(&|r| r.swaps),
            med_u(&|r| r.lane_changes),
        );
    }
    println!();
    println!(
        "Ratio of medians (swaps / none): {:.2}",
        medians[1] / medians[0]
    );
    Ok(())
}

fn throughput_run(
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    engine: &PolicyEngine,
    artifacts: &Path,
    a: &SwapArgs,
    swapping: bool,
) -> Result<ThroughputRun> {
    let dir = tempfile::tempdir()?;
    let (store, node, cert) = start_node(server_rt, dir.path(), FANOUT)?;
    let (control, versions) = server_rt.block_on(async {
        let c = start_control(artifacts, &store, node.hub(), engine).await?;
        let (versions, _) = upload_both(&c).await?;
        c.activate(TENANT, &versions.activations[0]).await?;
        anyhow::Ok((c, versions))
    })?;
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = oneshot::channel();
    let traffic = Traffic {
        window: THROUGHPUT_WINDOW,
        limit: Some(a.messages),
        stop: Arc::new(AtomicBool::new(false)),
        done: done.clone(),
        started: started_tx,
        changes: None,
    };
    let swapper = {
        let (c, versions, every, done) = (
            control.clone(),
            versions.clone(),
            a.swap_every,
            done.clone(),
        );
        server_rt.spawn(async move {
            let _ = started_rx.await;
            let mut swaps = 0u64;
            let mut current = 0;
            while swapping && !done.load(Ordering::Relaxed) {
                current = 1 - current;
                c.activate(TENANT, &versions.activations[current]).await?;
                swaps += 1;
                if every.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(every).await;
                }
            }
            anyhow::Ok((swaps, current))
        })
    };
    let traffic = client_rt.block_on(drive(node.local_addr(), cert, start, traffic));
    done.store(true, Ordering::Relaxed);
    let (swaps, current) = server_rt.block_on(swapper)??;
    let traffic = traffic?;
    check_metrics(&node.hub().metrics().snapshot(), traffic.messages, &control)?;
    check_policy(&control, &versions.activations[current].version)?;
    ensure!(
        traffic.lane_changes <= swaps,
        "{} lane changes for {swaps} activations",
        traffic.lane_changes
    );
    drop(control);
    server_rt.block_on(node.shutdown());
    Ok(ThroughputRun {
        swapping,
        messages: traffic.messages,
        elapsed: traffic.elapsed,
        latencies_us: traffic.latencies_us,
        swaps,
        lane_changes: traffic.lane_changes,
    })
}
