//! `switchboard-webtransport`: what a WebTransport session costs the node against a native
//! QUIC session, measured on the node's process alone (issue 19). Run through
//! `cargo xtask bench --webtransport`, which builds the release node and, for the browser
//! part, installs Chromium and builds `sdk/js`.
//!
//! The node is the `switchboard` binary as a child process with both endpoints on
//! (`servers::switchboard_webtransport`), pinned to core 0 like the peer benchmark's servers;
//! its resident memory and CPU time are read from `/proc/<pid>`, so nothing of the clients
//! is counted. The load generator pins itself to core 1 and runs every Rust client on one
//! thread; the browsers it starts inherit core 1. Scenarios, each run on a fresh node
//! `--runs` times (medians, every run listed):
//! - **sessions**: `--sessions` idle sessions of each transport, members of groups of
//!   `--group-size`, opened `--concurrency` at a time after a warm-up: the node's resident
//!   memory per idle session (RSS growth ÷ sessions) and CPU per session setup (handshake,
//!   `Hello`, `Welcome`, subscriptions and presence notices; the node's CPU time over the
//!   setups and one settle second ÷ sessions). The transport that goes first alternates by
//!   run.
//! - **burst**: `--messages` bodies of `--payload` bytes from a native QUIC sender (window
//!   `--window`) to a group of `--receivers` receivers: Chromium pages on the TypeScript SDK
//!   over WebTransport (`bench/browser/receivers.mjs`), in-process WebTransport clients
//!   (wtransport), and in-process QUIC clients (quinn), each group on the same node. Reports
//!   deliveries per second until the last receiver had every message, and the node's CPU per
//!   delivery.

mod clients;
#[path = "../peers/servers.rs"]
#[allow(dead_code)] // the peer benchmark's servers; this binary starts only the node
mod servers;
#[path = "../session.rs"]
#[allow(dead_code)] // its QUIC `hello`: this binary says Hello over both transports itself
mod session;
#[path = "../peers/tls.rs"]
#[allow(dead_code)]
mod tls;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use switchboard_edge::TlsIdentity;

use crate::clients::{Done, Endpoints, Session, Target, Transport};
use crate::servers::{Groups, Server};

#[derive(Parser, Debug)]
struct Args {
    /// Idle sessions of each transport per run.
    #[arg(long, default_value_t = 500)]
    sessions: usize,
    /// Members per group of the idle sessions (each session's user is in one group).
    #[arg(long, default_value_t = 10)]
    group_size: usize,
    /// Session setups in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Fresh nodes per scenario; the tables report medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Receivers of the burst, of each kind.
    #[arg(long, default_value_t = 4)]
    receivers: usize,
    /// Messages in the burst.
    #[arg(long, default_value_t = 5_000)]
    messages: u64,
    /// Body size of the burst's messages, in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Sends of the burst waiting for their `Ack` at once.
    #[arg(long, default_value_t = 64)]
    window: u64,
    /// Leave out the Chromium pages (no browser here, or no sdk/js build).
    #[arg(long)]
    no_browsers: bool,
    /// The node binary (default: `switchboard` next to this one).
    #[arg(long)]
    node: Option<PathBuf>,
    /// A smoke run: 100 sessions, 500 messages, one run.
    #[arg(long)]
    quick: bool,
}

/// Warm-up sessions of each transport before anything is measured: the first sessions pay
/// for what a node sets up once (the HTTP/3 driver's first tasks, allocator arenas).
const WARM_UP: usize = 8;
/// After a batch of setups, what the node still does for them (presence notices, their
/// first acks) is counted; then it is idle.
const SETTLE: Duration = Duration::from_secs(1);
/// Longest the browsers may take to start and connect, and a burst to arrive.
const BROWSER_WAIT: Duration = Duration::from_secs(120);

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut args = Args::parse();
    if args.quick {
        args.sessions = args.sessions.min(100);
        args.messages = args.messages.min(500);
        args.runs = 1;
    }
    let pinned = servers::pin_self()?;
    let node = match &args.node {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("switchboard"),
    };
    if !node.exists() {
        bail!(
            "no node binary at {} (cargo build --release -p switchboard, or --node)",
            node.display()
        );
    }
    // The node runs in a temp dir of its own.
    let node = std::path::absolute(&node)?;
    let browsers = if args.no_browsers {
        None
    } else {
        Some(Browsers::from_env()?)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let load_before = loadavg();
    print_setup(&args, &node, pinned, &load_before);

    let mut idle: Vec<IdleRun> = Vec::new();
    for run in 0..args.runs {
        let first = if run % 2 == 0 {
            Transport::Quic
        } else {
            Transport::WebTransport
        };
        let r = rt
            .block_on(idle_run(&node, &args, first))
            .with_context(|| format!("sessions, run {}", run + 1))?;
        eprintln!("  sessions run {}: {r:?}", run + 1);
        idle.push(r);
    }
    print_idle(&args, &idle);

    let mut bursts: Vec<BurstRun> = Vec::new();
    for run in 0..args.runs {
        let r = rt
            .block_on(burst_run(&node, &args, browsers.as_ref()))
            .with_context(|| format!("burst, run {}", run + 1))?;
        eprintln!("  burst run {}: {r:?}", run + 1);
        bursts.push(r);
    }
    print_bursts(&args, &bursts);
    println!(
        "\nLoad average before: {}; after: {}.",
        load_before,
        loadavg()
    );
    Ok(())
}

/// The user ids of `n` sessions of `transport`, and their groups of `size`.
fn users(transport: Transport, n: usize, size: usize) -> (Vec<String>, Groups) {
    let prefix = match transport {
        Transport::Quic => "q",
        Transport::WebTransport => "w",
    };
    let users: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let groups = users
        .chunks(size.max(1))
        .enumerate()
        .map(|(k, members)| (format!("g{prefix}{k}"), members.to_vec()))
        .collect();
    (users, groups)
}

/// The node with both endpoints, on a fresh certificate a browser accepts by hash (ECDSA
/// P-256, valid 13 days: the dev certificate's kind).
fn start_node(node: &Path, groups: &Groups) -> Result<(Server, Target)> {
    let id = TlsIdentity::webtransport_dev()?;
    let cert_der = id.cert_chain[0].to_vec();
    let key_der = id.key.secret_der().to_vec();
    let hex = id.sha256_hex();
    let mut cert_sha256 = [0u8; 32];
    for (i, b) in cert_sha256.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    let (mut server, web) = servers::switchboard_webtransport(node, groups, &cert_der, &key_der)?;
    // A node refusing its config exits at once (its log says why).
    std::thread::sleep(Duration::from_millis(200));
    server.check_alive()?;
    let target = Target {
        quic: server.addr,
        web,
        cert_der,
        cert_sha256,
    };
    Ok((server, target))
}

#[derive(Debug, Default, Clone)]
struct Cost {
    /// Node RSS growth per session, KiB.
    kib_per_session: f64,
    /// Node CPU per session setup, ms.
    cpu_ms_per_session: f64,
    /// Setups per second (wall), `--concurrency` in flight.
    setups_per_sec: f64,
}

#[derive(Debug, Default)]
struct IdleRun {
    quic: Cost,
    web: Cost,
    first: Option<Transport>,
    rss_start_kib: u64,
    rss_end_kib: u64,
    compilers: usize,
}

async fn idle_run(node: &Path, args: &Args, first: Transport) -> Result<IdleRun> {
    let (quic_users, mut groups) = users(Transport::Quic, args.sessions, args.group_size);
    let (web_users, web_groups) = users(Transport::WebTransport, args.sessions, args.group_size);
    groups.extend(web_groups);
    let (mut server, target) = start_node(node, &groups)?;
    let ep = Endpoints::new(&target)?;
    // Warm-up users are in no group.
    let mut keep = Vec::new();
    for t in [Transport::Quic, Transport::WebTransport] {
        for i in 0..WARM_UP {
            keep.push(clients::connect(&ep, &target, t, &format!("warm{}{i}", t.label())).await?);
        }
    }
    tokio::time::sleep(SETTLE).await;
    let mut run = IdleRun {
        first: Some(first),
        rss_start_kib: server.rss_kib()?,
        compilers: servers::compilers_running(),
        ..Default::default()
    };
    let second = match first {
        Transport::Quic => Transport::WebTransport,
        Transport::WebTransport => Transport::Quic,
    };
    for t in [first, second] {
        let users = match t {
            Transport::Quic => &quic_users,
            Transport::WebTransport => &web_users,
        };
        let rss0 = server.rss_kib()?;
        let cpu0 = server.cpu_seconds()?;
        let start = Instant::now();
        keep.extend(open_all(&ep, &target, t, users, args.concurrency).await?);
        let wall = start.elapsed();
        tokio::time::sleep(SETTLE).await;
        server.check_alive()?;
        let n = users.len() as f64;
        let cost = Cost {
            kib_per_session: (server.rss_kib()?.saturating_sub(rss0)) as f64 / n,
            cpu_ms_per_session: (server.cpu_seconds()? - cpu0) * 1e3 / n,
            setups_per_sec: n / wall.as_secs_f64(),
        };
        match t {
            Transport::Quic => run.quic = cost,
            Transport::WebTransport => run.web = cost,
        }
    }
    run.rss_end_kib = server.rss_kib()?;
    drop(keep);
    Ok(run)
}

/// Opens a session for each of `users`, `concurrency` at a time.
async fn open_all(
    ep: &Endpoints,
    target: &Target,
    t: Transport,
    users: &[String],
    concurrency: usize,
) -> Result<Vec<Session>> {
    let mut out = Vec::with_capacity(users.len());
    for chunk in users.chunks(concurrency.max(1)) {
        let mut batch = Vec::with_capacity(chunk.len());
        for u in chunk {
            batch.push(clients::connect(ep, target, t, u));
        }
        for s in join_all(batch).await {
            out.push(s?);
        }
    }
    Ok(out)
}

/// Runs the futures concurrently on this task; their outputs in order.
async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..futs.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Who receives a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Receivers {
    Browsers,
    WebTransport,
    Quic,
}

impl Receivers {
    fn label(self) -> &'static str {
        match self {
            Receivers::Browsers => "Chromium pages, sdk/js over WebTransport",
            Receivers::WebTransport => "in-process WebTransport clients (wtransport)",
            Receivers::Quic => "in-process QUIC clients (quinn)",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Receivers::Browsers => "b",
            Receivers::WebTransport => "rw",
            Receivers::Quic => "rq",
        }
    }
}

#[derive(Debug, Clone)]
struct Burst {
    who: Receivers,
    deliveries_per_sec: f64,
    cpu_us_per_delivery: f64,
    last_delivery: Duration,
}

#[derive(Debug, Default)]
struct BurstRun {
    bursts: Vec<Burst>,
    compilers: usize,
}

async fn burst_run(node: &Path, args: &Args, browsers: Option<&Browsers>) -> Result<BurstRun> {
    let mut kinds = vec![Receivers::WebTransport, Receivers::Quic];
    if browsers.is_some() {
        kinds.insert(0, Receivers::Browsers);
    }
    let groups: Groups = kinds
        .iter()
        .map(|k| {
            let members = std::iter::once("sender".to_owned())
                .chain((0..args.receivers).map(|i| format!("{}{i}", k.prefix())))
                .collect();
            (format!("burst-{}", k.prefix()), members)
        })
        .collect();
    let (mut server, target) = start_node(node, &groups)?;
    let ep = Endpoints::new(&target)?;
    let mut sender = clients::connect(&ep, &target, Transport::Quic, "sender").await?;
    sender.drain_pushes();
    sender.drain_pushes();
    let mut run = BurstRun {
        compilers: servers::compilers_running(),
        ..Default::default()
    };
    let deliveries = args.messages * args.receivers as u64;
    for who in kinds {
        let group = format!("burst-{}", who.prefix());
        let users: Vec<String> = (0..args.receivers)
            .map(|i| format!("{}{i}", who.prefix()))
            .collect();
        let done = Arc::new(Done::default());
        let mut keep = Vec::new();
        let mut pages = None;
        match who {
            Receivers::Browsers => {
                let b = browsers.context("no browsers")?;
                pages = Some(b.start(&target, &users, &group, args.messages)?);
            }
            Receivers::WebTransport | Receivers::Quic => {
                let t = if who == Receivers::Quic {
                    Transport::Quic
                } else {
                    Transport::WebTransport
                };
                for u in &users {
                    let s = clients::connect(&ep, &target, t, u).await?;
                    keep.push(s.count_deliveries(
                        Arc::new(AtomicU64::new(0)),
                        args.messages,
                        done.clone(),
                    ));
                }
            }
        }
        tokio::time::sleep(SETTLE).await;
        let cpu0 = server.cpu_seconds()?;
        let start = Instant::now();
        let start_epoch_ms = epoch_ms();
        clients::burst(
            &mut sender,
            &group,
            args.messages,
            args.payload,
            args.window,
        )
        .await?;
        let last_delivery = match pages.as_mut() {
            Some(p) => {
                let last_ms = p.finish()?;
                Duration::from_millis(last_ms.saturating_sub(start_epoch_ms))
            }
            None => done.all(args.receivers as u64, BROWSER_WAIT).await? - start,
        };
        // The node's CPU until the last delivery and its acks were handled.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cpu = server.cpu_seconds()? - cpu0;
        server.check_alive()?;
        run.bursts.push(Burst {
            who,
            deliveries_per_sec: deliveries as f64 / last_delivery.as_secs_f64().max(1e-3),
            cpu_us_per_delivery: cpu * 1e6 / deliveries as f64,
            last_delivery,
        });
        drop(keep);
    }
    Ok(run)
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the browser part needs, from the environment `cargo xtask bench --webtransport` sets
/// (`xtask/src/browser.rs`): Chromium, playwright-core, and the built sdk/js.
struct Browsers {
    chromium: String,
    node_path: String,
    repo: PathBuf,
}

impl Browsers {
    fn from_env() -> Result<Self> {
        let var = |name: &str| {
            std::env::var(name).with_context(|| {
                format!("{name} is not set: run through `cargo xtask bench --webtransport` (or pass --no-browsers)")
            })
        };
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let sdk = repo.join("sdk/js/dist/index.js");
        if !sdk.exists() {
            bail!(
                "{} is missing: build sdk/js (cargo xtask bench --webtransport does)",
                sdk.display()
            );
        }
        Ok(Self {
            chromium: var("SWITCHBOARD_CHROMIUM")?,
            node_path: var("SWITCHBOARD_BROWSER_NODE_PATH")?,
            repo,
        })
    }

    /// Starts Chromium with one page per user, each on the SDK, connected; returns once every
    /// page had its `Welcome`.
    fn start(&self, target: &Target, users: &[String], group: &str, expect: u64) -> Result<Pages> {
        let tokens = users
            .iter()
            .map(|u| session::token("bench", u, servers::SECRET.as_bytes()))
            .collect::<Result<Vec<_>>>()?;
        let hash: String = target
            .cert_sha256
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut child = Command::new("node")
            .arg(self.repo.join("bench/browser/receivers.mjs"))
            .env("NODE_PATH", &self.node_path)
            .env("SWITCHBOARD_CHROMIUM", &self.chromium)
            .env("REPO", &self.repo)
            .env(
                "WT_URL",
                format!(
                    "https://127.0.0.1:{}{}",
                    target.web.port(),
                    switchboard_edge::webtransport::PATH
                ),
            )
            .env("WT_HASH", hash)
            .env("TOKENS", tokens.join(","))
            .env("GROUP", group)
            .env("EXPECT", expect.to_string())
            .env("WAIT_MS", BROWSER_WAIT.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting node (Node.js) for the browser pages")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut pages = Pages { child, lines };
        pages.expect_line("READY")?;
        Ok(pages)
    }
}

/// The running browser pages of one burst.
struct Pages {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Pages {
    /// Waits for a line starting with `prefix`; returns the rest of it.
    fn expect_line(&mut self, prefix: &str) -> Result<String> {
        let deadline = Instant::now() + BROWSER_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("the browser pages said no {prefix} (see stderr)"))?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
    }

    /// Waits until every page had every message; returns when (Unix ms) the last one had its
    /// last.
    fn finish(&mut self) -> Result<u64> {
        let result: serde_json::Value = serde_json::from_str(&self.expect_line("RESULT")?)?;
        result["last_ms"].as_u64().context("RESULT without last_ms")
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // The script closes the browser after RESULT; a failed run kills it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn git(args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn print_setup(args: &Args, node: &Path, pinned: bool, load: &str) {
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let profile = if node.components().any(|c| c.as_os_str() == "release") {
        "release"
    } else if node.components().any(|c| c.as_os_str() == "debug") {
        "debug"
    } else {
        "unknown"
    };
    println!("# switchboard-webtransport");
    println!();
    println!(
        "- commit {commit}{}; node binary {} ({profile} profile); load average before: {load}",
        if dirty {
            " with uncommitted changes"
        } else {
            ""
        },
        node.display()
    );
    println!(
        "- {} cores; node pinned to core {}, load generator and browsers to core {}: {}",
        servers::cores(),
        servers::SERVER_CORE,
        servers::CLIENT_CORE,
        if pinned { "yes" } else { "no (one core)" }
    );
    println!(
        "- {} runs (medians), each on a fresh node; the node's memory and CPU from /proc/<pid>",
        args.runs
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn list(v: impl Iterator<Item = f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_idle(args: &Args, runs: &[IdleRun]) {
    println!(
        "\n## Idle sessions: {} of each transport, in groups of {}, {} set up at a time\n",
        args.sessions, args.group_size, args.concurrency
    );
    println!("| measure (the node's process) | WebTransport | QUIC | WebTransport ÷ QUIC | runs (WebTransport; QUIC) |");
    println!("|---|---|---|---|---|");
    let row = |what: &str, f: &dyn Fn(&Cost) -> f64, digits: usize| {
        let w = median(runs.iter().map(|r| f(&r.web)).collect());
        let q = median(runs.iter().map(|r| f(&r.quic)).collect());
        println!(
            "| {what} | {w:.digits$} | {q:.digits$} | {:.2} | {}; {} |",
            w / q.max(1e-9),
            list(runs.iter().map(|r| f(&r.web)), digits),
            list(runs.iter().map(|r| f(&r.quic)), digits),
        );
    };
    row(
        "resident memory per idle session, KiB",
        &|c| c.kib_per_session,
        1,
    );
    row("CPU per session setup, ms", &|c| c.cpu_ms_per_session, 2);
    row("session setups per second (wall)", &|c| c.setups_per_sec, 0);
    println!(
        "\nFirst transport per run: {}; node RSS at the start of the measured part: {} KiB; at \
         the end: {} KiB; other builds' `rustc` processes at the start of each run: {}.",
        runs.iter()
            .map(|r| r.first.map_or("-", Transport::label))
            .collect::<Vec<_>>()
            .join(", "),
        list(runs.iter().map(|r| r.rss_start_kib as f64), 0),
        list(runs.iter().map(|r| r.rss_end_kib as f64), 0),
        list(runs.iter().map(|r| r.compilers as f64), 0),
    );
}

fn print_bursts(args: &Args, runs: &[BurstRun]) {
    println!(
        "\n## Burst: {} × {} B from a QUIC sender (window {}) to {} receivers of each kind\n",
        args.messages, args.payload, args.window, args.receivers
    );
    println!("| receivers | deliveries/s | node CPU µs per delivery | last delivery after, ms | runs: deliveries/s |");
    println!("|---|---|---|---|---|");
    let Some(first) = runs.first() else { return };
    for (i, b) in first.bursts.iter().enumerate() {
        let of = |f: &dyn Fn(&Burst) -> f64| -> Vec<f64> {
            runs.iter().filter_map(|r| r.bursts.get(i)).map(f).collect()
        };
        println!(
            "| {} {} | {:.0} | {:.1} | {:.0} | {} |",
            args.receivers,
            b.who.label(),
            median(of(&|b| b.deliveries_per_sec)),
            median(of(&|b| b.cpu_us_per_delivery)),
            median(of(&|b| b.last_delivery.as_secs_f64() * 1e3)),
            list(of(&|b| b.deliveries_per_sec).into_iter(), 0),
        );
    }
    println!(
        "\nOther builds' `rustc` processes at the start of each run: {}.",
        list(runs.iter().map(|r| r.compilers as f64), 0)
    );
}
