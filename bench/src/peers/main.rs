//! `switchboard-peers`: Switchboard against NATS and Mosquitto with one load generator and
//! the same client behaviour for all (issue 6). Run through `cargo xtask bench --peers`.
//!
//! Every server is a child process pinned to core 0 (`taskset`), started fresh for each run
//! and killed after it; the load generator pins itself to core 1 and runs every client on
//! one thread. Scenarios ([`load`] has the client behaviour):
//! - **throughput**: fan-out 1→N, windowed publisher (at most `--window` messages not yet
//!   at every subscriber), for each fan-out and payload;
//! - **latency**: fixed rate at `--levels` percent of the median throughput each system
//!   reached in the throughput scenario, p50/p99 from the due time;
//! - **durable**: acknowledged publishes/s with no subscribers, Switchboard (ack after the
//!   flush) against NATS JetStream with file storage;
//! - **storm**: `--storm` clients connecting at once, connect-to-ready latency;
//! - **idle**: `--groups` × `--group-size` subscribers, one group / subject / topic per
//!   group, connected and then idle for `--idle-seconds`: server memory per connection and
//!   CPU while idle, then one message per group to show every connection is live.
//!
//! `switchboard-plugin` is the node again with the reference `priority` plugin bound to the
//! tenant (the plugin-cost scenario): run with `switchboard`, its rows show the
//! plugin's cost against the built-in default policy in the same invocation.
//!
//! Each run is repeated `--runs` times (systems alternating), and the tables report medians.

mod load;
mod mqtt;
mod nats;
mod sb;
mod servers;
#[path = "../session.rs"]
mod session;
mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use tokio::sync::Semaphore;

use crate::load::{percentile, Encode, Tally};
use crate::servers::Server;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum System {
    /// The `switchboard` node over QUIC (TLS 1.3 always), durable: delivered after fsync.
    Switchboard,
    /// The same node with the reference `priority` policy plugin bound to the tenant.
    SwitchboardPlugin,
    /// nats-server, core NATS, plaintext TCP.
    Nats,
    /// nats-server, core NATS, TLS.
    NatsTls,
    /// mosquitto, MQTT 3.1.1 QoS 0, plaintext TCP.
    Mqtt0,
    /// mosquitto, QoS 1 (publisher and subscribers), plaintext TCP.
    Mqtt1,
    /// mosquitto, QoS 0, TLS.
    Mqtt0Tls,
    /// mosquitto, QoS 1, TLS.
    Mqtt1Tls,
    /// nats-server, JetStream with file storage, acked publishes (durable scenario only).
    NatsJs,
}

impl System {
    fn label(self) -> &'static str {
        match self {
            System::Switchboard => "Switchboard (QUIC, TLS 1.3)",
            System::SwitchboardPlugin => "Switchboard + priority plugin",
            System::Nats => "NATS core",
            System::NatsTls => "NATS core, TLS",
            System::Mqtt0 => "Mosquitto QoS 0",
            System::Mqtt1 => "Mosquitto QoS 1",
            System::Mqtt0Tls => "Mosquitto QoS 0, TLS",
            System::Mqtt1Tls => "Mosquitto QoS 1, TLS",
            System::NatsJs => "NATS JetStream, file storage",
        }
    }

    fn guarantee(self) -> &'static str {
        match self {
            System::Switchboard | System::SwitchboardPlugin => {
                "durable (fsync) before ack and delivery; in order, exactly once per connection"
            }
            System::Nats | System::NatsTls => "at most once, in memory",
            System::Mqtt0 | System::Mqtt0Tls => "at most once, in memory",
            System::Mqtt1 | System::Mqtt1Tls => "at least once per hop (PUBACK), in memory",
            System::NatsJs => "in the stream's file before the PubAck, but not fsynced per message: nats-server 2.9 has no `sync_interval` (2.10+), so writes reach the disk with the OS's writeback",
        }
    }

    fn tls(self) -> bool {
        self.is_switchboard()
            || matches!(self, System::NatsTls | System::Mqtt0Tls | System::Mqtt1Tls)
    }

    /// The node, with or without a plugin: QUIC clients.
    fn is_switchboard(self) -> bool {
        matches!(self, System::Switchboard | System::SwitchboardPlugin)
    }

    fn qos(self) -> u8 {
        match self {
            System::Mqtt1 | System::Mqtt1Tls => 1,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Throughput,
    Latency,
    /// Acked publishes/s with no subscribers: Switchboard (ack after fsync) against NATS
    /// JetStream with file storage.
    Durable,
    /// Connection storm: `--storm` clients connect at once (at most `--storm-concurrency`
    /// handshakes in flight) and stay connected; time from connect to ready.
    Storm,
    /// `--groups` × `--group-size` subscribers connected and idle for `--idle-seconds`:
    /// server memory per connection, server CPU while idle, then one message per group.
    Idle,
}

#[derive(Parser, Debug)]
struct Args {
    /// Scenarios to run (latency needs throughput: its rates are shares of it).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![Scenario::Throughput, Scenario::Latency])]
    scenario: Vec<Scenario>,
    /// Systems to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![
        System::Switchboard, System::SwitchboardPlugin, System::Nats, System::NatsTls,
        System::Mqtt0, System::Mqtt1, System::Mqtt0Tls, System::Mqtt1Tls])]
    systems: Vec<System>,
    #[arg(long, value_delimiter = ',', default_values_t = vec![10usize, 100])]
    fanout: Vec<usize>,
    /// Body sizes in bytes (at least 16: send time and index).
    #[arg(long, value_delimiter = ',', default_values_t = vec![64usize, 512])]
    payload: Vec<usize>,
    /// Messages not yet at every subscriber, at most (throughput).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Seconds of publishing per run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Runs per system and scenario; tables show medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Latency: fixed rates as percentages of each system's throughput.
    #[arg(long, value_delimiter = ',', default_values_t = vec![50u32, 90])]
    levels: Vec<u32>,
    /// Cap on messages per run.
    #[arg(long, default_value_t = 2_000_000)]
    max_messages: u64,
    /// The `switchboard` node binary (default: next to this one).
    #[arg(long)]
    node: Option<PathBuf>,
    /// Storm: clients that connect.
    #[arg(long, default_value_t = 1000)]
    storm: usize,
    /// Storm: handshakes in flight at once.
    #[arg(long, default_value_t = 100)]
    storm_concurrency: usize,
    /// Idle: groups (topics, subjects), each with `--group-size` subscribers.
    #[arg(long, default_value_t = 100)]
    groups: usize,
    /// Idle: subscribers per group.
    #[arg(long, default_value_t = 10)]
    group_size: usize,
    /// Idle: seconds the connections stay idle while the server's CPU is measured.
    #[arg(long, default_value_t = 10.0)]
    idle_seconds: f64,
    /// The policy plugin `switchboard-plugin` binds (default: the reference `priority`
    /// plugin as `plugins-artifacts` built it).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// One run of one second per scenario: a smoke test.
    #[arg(long)]
    quick: bool,
}

#[derive(Debug, Clone, Default)]
struct Outcome {
    published: u64,
    delivered: u64,
    losses: u64,
    duplicates: u64,
    out_of_order: u64,
    elapsed: f64,
    p50: u32,
    p99: u32,
    server_cpu: f64,
    client_cpu: f64,
    acks: u64,
    /// Compilers (`rustc`) of other people running on the machine when the run started.
    busy: usize,
    /// Idle scenario: the clients connected; server RSS in KiB before any client, after all
    /// connected (and a settle), after the idle period; seconds to connect them all.
    connections: u64,
    rss_before: u64,
    rss_connected: u64,
    rss_idle_end: u64,
    connect_secs: f64,
}

impl Outcome {
    fn msgs_per_sec(&self) -> f64 {
        self.published as f64 / self.elapsed.max(1e-9)
    }
    fn deliveries_per_sec(&self) -> f64 {
        self.delivered as f64 / self.elapsed.max(1e-9)
    }
    fn server_cpu_per_m(&self) -> f64 {
        self.server_cpu / (self.delivered.max(1) as f64 / 1e6)
    }
    fn client_cpu_per_m(&self) -> f64 {
        self.client_cpu / (self.delivered.max(1) as f64 / 1e6)
    }
    /// Idle: server RSS growth from no client to all connected, per connection.
    fn kib_per_connection(&self) -> f64 {
        if self.connections == 0 {
            return 0.0;
        }
        (self.rss_connected as f64 - self.rss_before as f64) / (self.connections as f64)
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Windowed(usize),
    Fixed(f64),
    /// At most this many publishes not yet acknowledged; no subscribers.
    Acked(usize),
    /// Connections only.
    Storm,
    /// Connections in groups, idle, then one message per group.
    Idle,
}

struct Bench {
    args: Args,
    rt: tokio::runtime::Runtime,
    cert: tls::TestCert,
    node: PathBuf,
    plugin: PathBuf,
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.runs = 1;
        args.seconds = args.seconds.min(1.0);
    }
    if args.scenario.contains(&Scenario::Latency) && !args.scenario.contains(&Scenario::Throughput)
    {
        bail!("--scenario latency needs throughput too (its rates are shares of it)");
    }
    let pinned = servers::pin_self()?;
    let uses = |f: fn(System) -> bool| args.systems.iter().any(|&s| f(s));
    servers::ensure_installed(
        uses(|s| matches!(s, System::Nats | System::NatsTls)),
        uses(|s| {
            matches!(
                s,
                System::Mqtt0 | System::Mqtt1 | System::Mqtt0Tls | System::Mqtt1Tls
            )
        }),
    )?;
    let node = match &args.node {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("switchboard"),
    };
    if args.systems.iter().any(|s| s.is_switchboard()) && !node.exists() {
        bail!(
            "no node binary at {} (cargo build --release -p switchboard, or --node)",
            node.display()
        );
    }
    let plugin = args
        .plugin
        .clone()
        .unwrap_or_else(|| PathBuf::from(plugins_artifacts::PRIORITY));
    if args.systems.contains(&System::SwitchboardPlugin) && !plugin.exists() {
        bail!("no plugin at {} (--plugin)", plugin.display());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bench = Bench {
        cert: tls::self_signed()?,
        rt,
        node,
        plugin,
        args,
    };
    print_setup(&bench.args, pinned);

    let mut saturation: BTreeMap<(usize, usize, System), f64> = BTreeMap::new();
    let scenarios: Vec<(usize, usize)> = bench
        .args
        .fanout
        .iter()
        .flat_map(|&f| {
            bench
                .args
                .payload
                .iter()
                .map(move |&p| (f, p.max(load::HEADER)))
        })
        .collect();
    if bench.args.scenario.contains(&Scenario::Throughput) {
        println!(
            "\n## Throughput: windowed publisher, window {}\n",
            bench.args.window
        );
        for &(fanout, payload) in &scenarios {
            let results = bench.repeat(&bench.args.systems, fanout, payload, |_| {
                Mode::Windowed(bench.args.window)
            })?;
            print_throughput(fanout, payload, &results);
            for (sys, runs) in &results {
                let m = median(runs.iter().map(Outcome::msgs_per_sec));
                saturation.insert((fanout, payload, *sys), m);
            }
        }
    }
    if bench.args.scenario.contains(&Scenario::Latency) {
        println!("\n## Latency at a fixed rate (share of each system's own throughput)\n");
        for &(fanout, payload) in &scenarios {
            for &level in &bench.args.levels {
                let results = bench.repeat(&bench.args.systems, fanout, payload, |sys| {
                    Mode::Fixed(saturation[&(fanout, payload, sys)] * level as f64 / 100.0)
                })?;
                print_latency(fanout, payload, level, &results, &saturation);
            }
        }
    }
    if bench.args.scenario.contains(&Scenario::Storm) {
        println!(
            "\n## Connection storm: {} clients, at most {} handshakes at once\n",
            bench.args.storm, bench.args.storm_concurrency
        );
        let results = bench.repeat(&bench.args.systems, 0, 0, |_| Mode::Storm)?;
        print_storm(&results);
    }
    if bench.args.scenario.contains(&Scenario::Idle) {
        println!(
            "\n## Idle: {} clients in {} groups of {}, idle {} s\n",
            bench.args.groups * bench.args.group_size,
            bench.args.groups,
            bench.args.group_size,
            bench.args.idle_seconds
        );
        let systems: Vec<System> = (bench.args.systems.iter().copied())
            .filter(|&s| s != System::NatsJs)
            .collect();
        let results = bench.repeat(&systems, 0, IDLE_PAYLOAD, |_| Mode::Idle)?;
        print_idle(&bench.args, &results);
    }
    if bench.args.scenario.contains(&Scenario::Durable) {
        println!(
            "\n## Durable: acknowledged publishes, window {}, no subscribers\n",
            bench.args.window
        );
        for &payload in &bench.args.payload {
            let payload = payload.max(load::HEADER);
            let systems = [System::Switchboard, System::NatsJs];
            let results = bench.repeat(&systems, 0, payload, |_| Mode::Acked(bench.args.window))?;
            print_durable(payload, &results);
        }
    }
    Ok(())
}

impl Bench {
    /// Every system `runs` times (alternating), fresh servers each run.
    fn repeat(
        &self,
        systems: &[System],
        fanout: usize,
        payload: usize,
        mode: impl Fn(System) -> Mode,
    ) -> Result<BTreeMap<System, Vec<Outcome>>> {
        let mut out: BTreeMap<System, Vec<Outcome>> = BTreeMap::new();
        for run in 0..self.args.runs {
            for &sys in systems {
                let m = mode(sys);
                let busy = servers::compilers_running();
                let mut o = self
                    .run_once(sys, fanout, payload, m)
                    .with_context(|| format!("{} 1→{fanout} {payload} B", sys.label()))?;
                o.busy = busy;
                if let Mode::Idle = m {
                    eprintln!(
                        "  run {} {:<28} idle: RSS {} → {} → {} KiB ({:.1} KiB/conn), connect {:.1} s, idle srv cpu {:.1} ms/s cli {:.1} ms/s, round {}/{} delivered, lost {} misrouted {} dup {} rustc {}",
                        run + 1,
                        sys.label(),
                        o.rss_before,
                        o.rss_connected,
                        o.rss_idle_end,
                        o.kib_per_connection(),
                        o.connect_secs,
                        o.server_cpu * 1e3 / o.elapsed.max(1e-9),
                        o.client_cpu * 1e3 / o.elapsed.max(1e-9),
                        o.delivered,
                        o.delivered + o.losses,
                        o.losses,
                        o.out_of_order,
                        o.duplicates,
                        o.busy,
                    );
                    out.entry(sys).or_default().push(o);
                    continue;
                }
                eprintln!(
                    "  run {} {:<28} 1→{fanout:<3} {payload:>3} B {:>12}: {:>9.0} msgs/s {:>10.0} deliveries/s p50 {:>7} µs p99 {:>7} µs srv cpu {:.2}s/M cli {:.2}s/M lost {} dup {} ooo {} acks {} rustc {}",
                    run + 1,
                    sys.label(),
                    match m {
                        Mode::Windowed(w) => format!("window {w}"),
                        Mode::Fixed(r) => format!("{r:.0}/s"),
                        Mode::Acked(w) => format!("acked {w}"),
                        Mode::Storm => "storm".to_owned(),
                        Mode::Idle => "idle".to_owned(),
                    },
                    o.msgs_per_sec(),
                    o.deliveries_per_sec(),
                    o.p50,
                    o.p99,
                    o.server_cpu_per_m(),
                    o.client_cpu_per_m(),
                    o.losses,
                    o.duplicates,
                    o.out_of_order,
                    o.acks,
                    o.busy,
                );
                out.entry(sys).or_default().push(o);
            }
        }
        Ok(out)
    }

    fn run_once(&self, sys: System, fanout: usize, payload: usize, mode: Mode) -> Result<Outcome> {
        let tls_cert = sys.tls().then_some(&self.cert);
        let mut server = match sys {
            System::Switchboard | System::SwitchboardPlugin => {
                let groups = match mode {
                    Mode::Idle => servers::idle_groups(self.args.groups, self.args.group_size),
                    _ => servers::fanout_group(fanout),
                };
                let plugin = (sys == System::SwitchboardPlugin).then_some(self.plugin.as_path());
                servers::switchboard(&self.node, &groups, plugin)?
            }
            System::Nats | System::NatsTls => servers::nats(tls_cert, false)?,
            System::NatsJs => servers::nats(None, true)?,
            _ => servers::mosquitto(tls_cert)?,
        };
        let outcome = match mode {
            Mode::Acked(window) => self
                .rt
                .block_on(drive_acked(sys, &server, payload, window, &self.args)),
            Mode::Storm => self.rt.block_on(drive_storm(sys, &server, &self.args)),
            Mode::Idle => self
                .rt
                .block_on(drive_idle(sys, &server, payload, &self.args)),
            _ => self
                .rt
                .block_on(drive(sys, &server, fanout, payload, mode, &self.args)),
        };
        server.check_alive()?;
        outcome
    }
}

async fn drive(
    sys: System,
    server: &Server,
    fanout: usize,
    payload: usize,
    mode: Mode,
    args: &Args,
) -> Result<Outcome> {
    let duration = Duration::from_secs_f64(args.seconds);
    let start = std::time::Instant::now();
    let (window, max, warmup) = match mode {
        Mode::Windowed(w) => (Some(Arc::new(Semaphore::new(w))), args.max_messages, 0),
        // Latency from the first 10% of a fixed-rate run (connections warming up) is left out.
        Mode::Fixed(rate) => {
            let total = (rate * args.seconds) as u64;
            (None, total + 1, total / 10)
        }
        Mode::Acked(_) | Mode::Storm | Mode::Idle => bail!("not a publishing mode"),
    };
    let tally = Tally::new(start, fanout, max as usize, window.clone(), warmup);
    let addr = server.addr;
    let connector = if sys.tls() && !sys.is_switchboard() {
        Some(tls::connector(&server.cert_der)?)
    } else {
        None
    };
    let tls = connector.as_ref();

    // Subscribers first, each confirmed; then the publisher.
    let mut endpoint = None;
    let mut acks_counter = None;
    let mut writer: Box<dyn tokio::io::AsyncWrite + Unpin + Send>;
    let mut encoder: Box<dyn Encode>;
    let mut sb_publisher = None;
    match sys {
        System::Switchboard | System::SwitchboardPlugin => {
            if sys == System::SwitchboardPlugin {
                sb::wait_for_plugin(&server.cert_der, addr, "g").await?;
            }
            // One UDP socket per connection, as each TCP client has its own: 101 QUIC
            // connections on one socket overflowed its receive buffer (212 KiB by default)
            // and the losses throttled QUIC's congestion control.
            let mut eps = Vec::with_capacity(fanout + 1);
            for i in 0..fanout {
                let ep = sb::endpoint(&server.cert_der)?;
                sb::subscribe(&ep, addr, i, tally.clone()).await?;
                eps.push(ep);
            }
            let ep = sb::endpoint(&server.cert_der)?;
            let p = sb::publisher(&ep, addr, None).await?;
            eps.push(ep);
            acks_counter = Some(p.acks.clone());
            writer = Box::new(p.send);
            sb_publisher = Some((p.errors, p.acks));
            endpoint = Some(eps);
            encoder = Box::new(sb::Encoder);
        }
        System::Nats | System::NatsTls => {
            for i in 0..fanout {
                nats::subscribe(addr, tls, nats::SUBJECT, i, tally.clone()).await?;
            }
            writer = nats::publisher(addr, tls).await?;
            encoder = Box::new(nats::Encoder);
        }
        _ => {
            for i in 0..fanout {
                mqtt::subscribe(addr, tls, mqtt::TOPIC, sys.qos(), i, tally.clone()).await?;
            }
            let (w, acks) = mqtt::publisher(addr, tls).await?;
            writer = w;
            acks_counter = Some(acks);
            encoder = Box::new(mqtt::Encoder::new(sys.qos()));
        }
    }
    // Let the connections settle (Switchboard: catch-up of an empty log, Flags pushes).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let server_cpu0 = server.cpu_seconds()?;
    let client_cpu0 = servers::cpu_seconds("/proc/self/stat")?;
    let t0 = tally.now_ns();
    let published = match mode {
        Mode::Windowed(_) => {
            let w = window.as_ref().expect("window");
            load::publish_windowed(
                &mut writer,
                &mut *encoder,
                &tally,
                w,
                payload,
                duration,
                max,
            )
            .await?
        }
        Mode::Fixed(rate) => {
            load::publish_fixed(&mut writer, &mut *encoder, &tally, payload, rate, duration).await?
        }
        Mode::Acked(_) | Mode::Storm | Mode::Idle => unreachable!("checked above"),
    };
    let losses = tally.drain(published, Duration::from_secs(3)).await;
    let server_cpu = server.cpu_seconds()? - server_cpu0;
    let client_cpu = servers::cpu_seconds("/proc/self/stat")? - client_cpu0;
    let elapsed = tally.last_delivery().as_secs_f64() - Duration::from_nanos(t0).as_secs_f64();
    let (lat, duplicates, out_of_order) = tally.collect();
    // Acks (Switchboard, QoS 1) may trail the last delivery slightly.
    if let Some(a) = &acks_counter {
        for _ in 0..200 {
            if a.load(std::sync::atomic::Ordering::Relaxed) >= published {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let acks = acks_counter.map_or(0, |a| a.load(std::sync::atomic::Ordering::Relaxed));
    if let Some((errors, _)) = &sb_publisher {
        let e = errors.load(std::sync::atomic::Ordering::Relaxed);
        if e > 0 {
            bail!("{e} error answers to sends");
        }
    }
    for ep in endpoint.into_iter().flatten() {
        ep.close(0u32.into(), b"done");
    }
    drop(writer);
    Ok(Outcome {
        published,
        delivered: tally.delivered(),
        losses,
        duplicates,
        out_of_order,
        elapsed,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        server_cpu,
        client_cpu,
        acks,
        ..Default::default()
    })
}

/// Acked publishing with no subscribers: "delivered" counts acknowledged publishes, and the
/// latencies are send → ack.
async fn drive_acked(
    sys: System,
    server: &Server,
    payload: usize,
    window: usize,
    args: &Args,
) -> Result<Outcome> {
    let start = std::time::Instant::now();
    let acks = load::AckTally::new(start, args.max_messages as usize, window);
    // Only for its clock: nobody subscribes.
    let tally = Tally::new(start, 0, 0, None, 0);
    let mut endpoint = None;
    let (mut writer, mut encoder): (load::Writer, Box<dyn Encode>) = match sys {
        System::Switchboard | System::SwitchboardPlugin => {
            let ep = sb::endpoint(&server.cert_der)?;
            let p = sb::publisher(&ep, server.addr, Some(acks.clone())).await?;
            endpoint = Some(ep);
            (
                Box::new(p.send),
                Box::new(load::Recording {
                    inner: sb::Encoder,
                    tally: acks.clone(),
                }),
            )
        }
        System::NatsJs => (
            nats::jetstream_publisher(server.addr, acks.clone()).await?,
            Box::new(load::Recording {
                inner: nats::JsEncoder,
                tally: acks.clone(),
            }),
        ),
        other => bail!("{} has no durable mode here", other.label()),
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server_cpu0 = server.cpu_seconds()?;
    let client_cpu0 = servers::cpu_seconds("/proc/self/stat")?;
    let t0 = tally.now_ns();
    let published = load::publish_windowed(
        &mut writer,
        &mut *encoder,
        &tally,
        &acks.window,
        payload,
        Duration::from_secs_f64(args.seconds),
        args.max_messages,
    )
    .await?;
    let losses = acks.drain(published, Duration::from_secs(3)).await;
    let server_cpu = server.cpu_seconds()? - server_cpu0;
    let client_cpu = servers::cpu_seconds("/proc/self/stat")? - client_cpu0;
    if acks.errors() > 0 {
        bail!("{} publishes refused", acks.errors());
    }
    if let Some(ep) = endpoint {
        ep.close(0u32.into(), b"done");
    }
    let lat = acks.latencies();
    Ok(Outcome {
        published,
        delivered: acks.acked(),
        losses,
        duplicates: 0,
        out_of_order: 0,
        elapsed: acks.last_ack().as_secs_f64() - Duration::from_nanos(t0).as_secs_f64(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        server_cpu,
        client_cpu,
        acks: acks.acked(),
        ..Default::default()
    })
}

/// Connection storm: "delivered" counts clients ready, latencies are connect → ready
/// (Switchboard: `Welcome`; NATS: `PONG` after `CONNECT`; MQTT: `CONNACK`).
async fn drive_storm(sys: System, server: &Server, args: &Args) -> Result<Outcome> {
    let addr = server.addr;
    let connector = if sys.tls() && !sys.is_switchboard() {
        Some(tls::connector(&server.cert_der)?)
    } else {
        None
    };
    // Switchboard: one UDP socket per client, like the TCP clients (see `drive`).
    let endpoint = sys
        .is_switchboard()
        .then(|| Arc::new(server.cert_der.clone()));
    let permits = Arc::new(Semaphore::new(args.storm_concurrency.max(1)));
    let start = std::time::Instant::now();
    let server_cpu0 = server.cpu_seconds()?;
    let client_cpu0 = servers::cpu_seconds("/proc/self/stat")?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.storm {
        let (permits, connector, endpoint) = (permits.clone(), connector.clone(), endpoint.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let t = std::time::Instant::now();
            // Each client stays connected until every one is (what a storm holds open).
            let keep: Box<dyn std::any::Any + Send> = match sys {
                System::Switchboard | System::SwitchboardPlugin => {
                    let ep = sb::endpoint(&endpoint.expect("cert"))?;
                    let session = sb::connect(&ep, addr, &format!("c{i}")).await?;
                    Box::new((ep, session))
                }
                System::Nats | System::NatsTls | System::NatsJs => {
                    let (mut r, mut w, mut buf) =
                        nats::connect(addr, connector.as_ref(), &format!("c{i}")).await?;
                    nats::round_trip(&mut r, &mut w, &mut buf).await?;
                    Box::new((r, w))
                }
                _ => Box::new(mqtt::connect(addr, connector.as_ref(), &format!("c{i}")).await?),
            };
            let done = start.elapsed();
            anyhow::Ok((t.elapsed(), done, keep))
        });
    }
    let mut lat = Vec::with_capacity(args.storm);
    let mut held = Vec::with_capacity(args.storm);
    let (mut failed, mut last) = (0u64, Duration::ZERO);
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok((l, done, keep)) => {
                lat.push(l.as_micros().min(u32::MAX as u128) as u32);
                last = last.max(done);
                held.push(keep);
            }
            Err(e) => {
                if failed == 0 {
                    eprintln!("  storm: {e:#}");
                }
                failed += 1;
            }
        }
    }
    let server_cpu = server.cpu_seconds()? - server_cpu0;
    let client_cpu = servers::cpu_seconds("/proc/self/stat")? - client_cpu0;
    drop(held);
    lat.sort_unstable();
    Ok(Outcome {
        published: args.storm as u64,
        delivered: lat.len() as u64,
        losses: failed,
        elapsed: last.as_secs_f64(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        server_cpu,
        client_cpu,
        ..Default::default()
    })
}

fn print_storm(results: &BTreeMap<System, Vec<Outcome>>) {
    let sb = results
        .get(&System::Switchboard)
        .map(|r| median(r.iter().map(Outcome::deliveries_per_sec)));
    println!("| system | connections/s (median) | runs | connect → ready p50 ms | p99 ms | server CPU ms per connection | load gen CPU ms per connection | failed | Switchboard ÷ this |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (sys, runs) in results {
        let cps = median(runs.iter().map(Outcome::deliveries_per_sec));
        println!(
            "| {} | {:.0} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {} | {} |",
            sys.label(),
            cps,
            runs_column(runs, |o| format!("{:.0}", o.deliveries_per_sec())),
            median_u32(runs.iter().map(|o| o.p50)) as f64 / 1e3,
            median_u32(runs.iter().map(|o| o.p99)) as f64 / 1e3,
            median(runs.iter().map(|o| o.server_cpu_per_m() / 1e3)),
            median(runs.iter().map(|o| o.client_cpu_per_m() / 1e3)),
            runs.iter().map(|o| o.losses).sum::<u64>(),
            match sb {
                Some(s) if !sys.is_switchboard() => format!("{:.2}", s / cps),
                _ => "—".to_owned(),
            },
        );
    }
    println!();
}

fn print_durable(payload: usize, results: &BTreeMap<System, Vec<Outcome>>) {
    let sb = results
        .get(&System::Switchboard)
        .map(|r| median(r.iter().map(Outcome::deliveries_per_sec)));
    println!("### {payload} B\n");
    println!("| system | acked publishes/s (median) | runs | ack p50 µs | ack p99 µs | server CPU s / M acks | unacked | Switchboard ÷ this |");
    println!("|---|---|---|---|---|---|---|---|");
    for (sys, runs) in results {
        let aps = median(runs.iter().map(Outcome::deliveries_per_sec));
        println!(
            "| {} | {:.0} | {} | {} | {} | {:.2} | {} | {} |",
            sys.label(),
            aps,
            runs_column(runs, |o| format!("{:.0}", o.deliveries_per_sec())),
            median_u32(runs.iter().map(|o| o.p50)),
            median_u32(runs.iter().map(|o| o.p99)),
            median(runs.iter().map(Outcome::server_cpu_per_m)),
            runs.iter().map(|o| o.losses).sum::<u64>(),
            match sb {
                Some(s) if !sys.is_switchboard() => format!("{:.2}", s / aps),
                _ => "—".to_owned(),
            },
        );
    }
    println!();
}

/// Each run's value; a run that started while other people's compilers were running is
/// marked with how many (`²` = two).
fn runs_column(runs: &[Outcome], f: impl Fn(&Outcome) -> String) -> String {
    const MARK: [&str; 4] = ["", "¹", "²", "³"];
    runs.iter()
        .map(|o| format!("{}{}", f(o), MARK[o.busy.min(3)]))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

fn median_u32(v: impl Iterator<Item = u32>) -> u32 {
    median(v.map(f64::from)) as u32
}

fn print_setup(args: &Args, pinned: bool) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("# switchboard-peers");
    println!();
    println!(
        "- machine: {} cores ({cpu}); load average before: {}",
        servers::cores(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "- servers pinned to core {}, load generator to core {}: {}",
        servers::SERVER_CORE,
        servers::CLIENT_CORE,
        if pinned { "yes" } else { "no (one core)" }
    );
    println!(
        "- peers: {}; {}",
        servers::version("nats"),
        servers::version("mosquitto")
    );
    println!(
        "- {} s of publishing per run, {} runs (medians), window {}, fixed-rate levels {:?}%",
        args.seconds, args.runs, args.window, args.levels
    );
    println!("\n| system | delivery guarantee in these runs |\n|---|---|");
    let durable = args
        .scenario
        .contains(&Scenario::Durable)
        .then_some(System::NatsJs);
    for s in args.systems.iter().copied().chain(durable) {
        println!("| {} | {} |", s.label(), s.guarantee());
    }
}

fn print_throughput(fanout: usize, payload: usize, results: &BTreeMap<System, Vec<Outcome>>) {
    let sb = results.get(&System::Switchboard);
    let sb_dps = sb.map(|r| median(r.iter().map(Outcome::deliveries_per_sec)));
    let sb_cpu = sb.map(|r| median(r.iter().map(Outcome::server_cpu_per_m)));
    println!("### Fan-out 1→{fanout}, {payload} B\n");
    println!("| system | deliveries/s (median) | runs | msgs/s | p50 µs | p99 µs | server CPU s / M deliveries | load gen CPU s / M | lost | dup | Switchboard ÷ this: deliveries/s | Switchboard ÷ this: CPU / delivery |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (sys, runs) in results {
        let dps = median(runs.iter().map(Outcome::deliveries_per_sec));
        let cpu = median(runs.iter().map(Outcome::server_cpu_per_m));
        let ratio = |a: Option<f64>, b: f64| match a {
            Some(a) if !sys.is_switchboard() => format!("{:.2}", a / b),
            _ => "—".to_owned(),
        };
        println!(
            "| {} | {:.0} | {} | {:.0} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {} |",
            sys.label(),
            dps,
            runs_column(runs, |o| format!("{:.0}", o.deliveries_per_sec())),
            median(runs.iter().map(Outcome::msgs_per_sec)),
            median_u32(runs.iter().map(|o| o.p50)),
            median_u32(runs.iter().map(|o| o.p99)),
            cpu,
            median(runs.iter().map(Outcome::client_cpu_per_m)),
            runs.iter().map(|o| o.losses).sum::<u64>(),
            runs.iter().map(|o| o.duplicates).sum::<u64>(),
            ratio(sb_dps, dps),
            ratio(sb_cpu, cpu),
        );
    }
    println!();
    if let (Some(builtin), Some(plugin)) = (sb, results.get(&System::SwitchboardPlugin)) {
        let m = |r: &Vec<Outcome>, f: fn(&Outcome) -> f64| median(r.iter().map(f));
        println!(
            "Policy plugin cost: {} ÷ {}: deliveries/s {:.2} (target ≥ 0.9), server CPU per delivery {:.2}\n",
            System::SwitchboardPlugin.label(),
            System::Switchboard.label(),
            m(plugin, Outcome::deliveries_per_sec) / m(builtin, Outcome::deliveries_per_sec),
            m(plugin, Outcome::server_cpu_per_m) / m(builtin, Outcome::server_cpu_per_m),
        );
    }
}

fn print_latency(
    fanout: usize,
    payload: usize,
    level: u32,
    results: &BTreeMap<System, Vec<Outcome>>,
    saturation: &BTreeMap<(usize, usize, System), f64>,
) {
    let p = |r: &Vec<Outcome>, f: fn(&Outcome) -> u32| median_u32(r.iter().map(f));
    let sb = results.get(&System::Switchboard);
    println!("### Fan-out 1→{fanout}, {payload} B, {level}% of each system's throughput\n");
    println!("| system | rate msgs/s | deliveries/s | p50 µs | p99 µs | p99 µs (runs) | server CPU s / M deliveries | lost | dup | Switchboard ÷ this: p50 | Switchboard ÷ this: p99 |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (sys, runs) in results {
        let (p50, p99) = (p(runs, |o| o.p50), p(runs, |o| o.p99));
        let ratio = |f: fn(&Outcome) -> u32, v: u32| match sb {
            Some(s) if !sys.is_switchboard() => {
                format!("{:.2}", p(s, f) as f64 / v.max(1) as f64)
            }
            _ => "—".to_owned(),
        };
        println!(
            "| {} | {:.0} | {:.0} | {} | {} | {} | {:.2} | {} | {} | {} | {} |",
            sys.label(),
            saturation[&(fanout, payload, *sys)] * level as f64 / 100.0,
            median(runs.iter().map(Outcome::deliveries_per_sec)),
            p50,
            p99,
            runs_column(runs, |o| o.p99.to_string()),
            median(runs.iter().map(Outcome::server_cpu_per_m)),
            runs.iter().map(|o| o.losses).sum::<u64>(),
            runs.iter().map(|o| o.duplicates).sum::<u64>(),
            ratio(|o| o.p50, p50),
            ratio(|o| o.p99, p99),
        );
    }
    println!();
}

/// Idle: the body of the one message per group after the idle period.
const IDLE_PAYLOAD: usize = 64;
/// Idle: time between the last client connecting and the "connected" memory sample (the
/// node's catch-up and `Flags` pushes, the peers' subscription bookkeeping).
const IDLE_SETTLE: Duration = Duration::from_secs(2);
/// Idle: connections being set up at once (each waits for its subscription to be confirmed).
const IDLE_CONNECT_CONCURRENCY: usize = 32;
/// Idle: the QUIC keep-alive of Switchboard's idle clients, half the 30 s idle timeout (the
/// node's default `idle_timeout_ms`, and quinn's), as a long-lived client must send. NATS's
/// server pings every `ping_interval` (10 min here, 2 min by default) and MQTT's
/// keep-alive is off, so an idle period of 15 s or less sees no keep-alive traffic at all.
const SB_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Idle: `groups × group_size` subscribers (subscriber `i` in group `i / group_size`), all
/// connected and confirmed, then a settle, then `idle_seconds` without traffic. "published"
/// counts the groups (one message each after the idle period), "delivered" the deliveries of
/// that round, "out_of_order" the subscribers that got another group's message; "elapsed"
/// and the CPU figures are the idle period's.
async fn drive_idle(sys: System, server: &Server, payload: usize, args: &Args) -> Result<Outcome> {
    let clients = args.groups * args.group_size;
    let addr = server.addr;
    let connector = if sys.tls() && !sys.is_switchboard() {
        Some(tls::connector(&server.cert_der)?)
    } else {
        None
    };
    // The probe needs a group (`--groups 0` runs the server alone).
    if sys == System::SwitchboardPlugin && args.groups > 0 {
        sb::wait_for_plugin(&server.cert_der, addr, "g0").await?;
    }
    // The server has started (listening, the node's certificate written): its memory with no
    // client. A fresh server per run, so the allocator has nothing to reuse yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = server.rss_kib()?;

    let start = std::time::Instant::now();
    let tally = Tally::new(start, clients, args.groups, None, 0);
    let permits = Arc::new(Semaphore::new(IDLE_CONNECT_CONCURRENCY));
    let cert = Arc::new(server.cert_der.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let group = i / args.group_size;
        let (permits, connector, cert, tally) = (
            permits.clone(),
            connector.clone(),
            cert.clone(),
            tally.clone(),
        );
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let endpoint = match sys {
                System::Switchboard | System::SwitchboardPlugin => {
                    // One UDP socket per client, like the TCP clients (see `drive`).
                    let ep = sb::endpoint_with_keep_alive(&cert, Some(SB_KEEP_ALIVE))?;
                    sb::subscribe(&ep, addr, i, tally).await?;
                    Some(ep)
                }
                System::Nats | System::NatsTls => {
                    let subject = format!("bench.g{group}");
                    nats::subscribe(addr, connector.as_ref(), &subject, i, tally).await?;
                    None
                }
                System::NatsJs => bail!("no idle scenario for JetStream"),
                _ => {
                    let topic = format!("bench/g{group}");
                    mqtt::subscribe(addr, connector.as_ref(), &topic, sys.qos(), i, tally).await?;
                    None
                }
            };
            anyhow::Ok(endpoint)
        });
    }
    let mut endpoints = Vec::new();
    while let Some(r) = tasks.join_next().await {
        endpoints.extend(r??);
    }
    let connect_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(IDLE_SETTLE).await;
    let rss_connected = server.rss_kib()?;

    let server_cpu0 = server.cpu_seconds()?;
    let client_cpu0 = servers::cpu_seconds("/proc/self/stat")?;
    let idle_start = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.idle_seconds)).await;
    let server_cpu = server.cpu_seconds()? - server_cpu0;
    let client_cpu = servers::cpu_seconds("/proc/self/stat")? - client_cpu0;
    let elapsed = idle_start.elapsed().as_secs_f64();
    let rss_idle_end = server.rss_kib()?;

    // One message per group, from a publisher that connects now (not part of the figures).
    let mut buf = bytes::BytesMut::new();
    let mut body = Vec::with_capacity(payload);
    let mut sb_publisher = None;
    let mut writer: load::Writer = match sys {
        System::Switchboard | System::SwitchboardPlugin => {
            let ep = sb::endpoint(&server.cert_der)?;
            let p = sb::publisher(&ep, addr, None).await?;
            endpoints.push(ep);
            for k in 0..args.groups as u64 {
                load::body(&mut body, payload, tally.now_ns(), k);
                sb::encode_send(&mut buf, &format!("g{k}"), k, &body);
            }
            sb_publisher = Some((p.errors, p.acks));
            Box::new(p.send)
        }
        System::Nats | System::NatsTls => {
            let w = nats::publisher(addr, connector.as_ref()).await?;
            for k in 0..args.groups as u64 {
                load::body(&mut body, payload, tally.now_ns(), k);
                nats::encode_pub(&mut buf, &format!("bench.g{k}"), &body);
            }
            w
        }
        System::NatsJs => unreachable!("refused above"),
        _ => {
            let (w, _acks) = mqtt::publisher(addr, connector.as_ref()).await?;
            let mut enc = mqtt::Encoder::new(sys.qos());
            for k in 0..args.groups as u64 {
                load::body(&mut body, payload, tally.now_ns(), k);
                enc.publish(&mut buf, &format!("bench/g{k}"), &body);
            }
            w
        }
    };
    {
        use tokio::io::AsyncWriteExt;
        writer.write_all(&buf).await?;
        writer.flush().await?;
    }
    let losses = tally
        .drain_deliveries(clients as u64, Duration::from_secs(3))
        .await;
    let misrouted = (0..clients)
        .filter(|&i| {
            let (n, last) = tally.received(i);
            n > 0 && (n, last) != (1, Some((i / args.group_size) as u64))
        })
        .count() as u64;
    let (lat, duplicates, _) = tally.collect();
    if let Some((errors, acks)) = &sb_publisher {
        use std::sync::atomic::Ordering::Relaxed;
        for _ in 0..200 {
            if acks.load(Relaxed) + errors.load(Relaxed) >= args.groups as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if errors.load(Relaxed) > 0 {
            bail!("{} error answers to sends", errors.load(Relaxed));
        }
    }
    for ep in endpoints {
        ep.close(0u32.into(), b"done");
    }
    drop(writer);
    Ok(Outcome {
        published: args.groups as u64,
        delivered: tally.delivered(),
        losses,
        duplicates,
        out_of_order: misrouted,
        elapsed,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        server_cpu,
        client_cpu,
        connections: clients as u64,
        rss_before,
        rss_connected,
        rss_idle_end,
        connect_secs,
        ..Default::default()
    })
}

fn print_idle(args: &Args, results: &BTreeMap<System, Vec<Outcome>>) {
    let clients = args.groups * args.group_size;
    let per_k = 1000.0 / clients.max(1) as f64;
    let cpu_ms_per_s = |o: &Outcome| o.server_cpu * 1e3 / o.elapsed.max(1e-9);
    let sb = results.get(&System::Switchboard);
    let sb_kib = sb.map(|r| median(r.iter().map(Outcome::kib_per_connection)));
    let sb_cpu = sb.map(|r| median(r.iter().map(cpu_ms_per_s)));
    println!("| system | server RSS before MiB | RSS connected MiB | RSS after idle MiB | KiB per connection (median) | runs | idle server CPU ms/s | per 1,000 connections | runs | load gen CPU ms/s | connect s | round: delivered | lost | misrouted | dup | round p50 / p99 ms | Switchboard ÷ this: KiB/conn | Switchboard ÷ this: idle CPU |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (sys, runs) in results {
        let kib = median(runs.iter().map(Outcome::kib_per_connection));
        let cpu = median(runs.iter().map(cpu_ms_per_s));
        let mib = |f: fn(&Outcome) -> u64| median(runs.iter().map(|o| f(o) as f64)) / 1024.0;
        let ratio = |a: Option<f64>, b: f64| match a {
            Some(a) if !sys.is_switchboard() && b > 0.0 => format!("{:.2}", a / b),
            _ => "—".to_owned(),
        };
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {} | {} | {:.1} | {:.1} | {} of {} | {} | {} | {} | {:.1} / {:.1} | {} | {} |",
            sys.label(),
            mib(|o| o.rss_before),
            mib(|o| o.rss_connected),
            mib(|o| o.rss_idle_end),
            kib,
            runs_column(runs, |o| format!("{:.1}", o.kib_per_connection())),
            cpu,
            if clients == 0 {
                "—".to_owned()
            } else {
                format!("{:.1}", cpu * per_k)
            },
            runs_column(runs, |o| format!("{:.1}", cpu_ms_per_s(o))),
            median(runs.iter().map(|o| o.client_cpu * 1e3 / o.elapsed.max(1e-9))),
            median(runs.iter().map(|o| o.connect_secs)),
            runs.iter().map(|o| o.delivered).sum::<u64>(),
            runs.iter().map(|o| o.delivered + o.losses).sum::<u64>(),
            runs.iter().map(|o| o.losses).sum::<u64>(),
            runs.iter().map(|o| o.out_of_order).sum::<u64>(),
            runs.iter().map(|o| o.duplicates).sum::<u64>(),
            median_u32(runs.iter().map(|o| o.p50)) as f64 / 1e3,
            median_u32(runs.iter().map(|o| o.p99)) as f64 / 1e3,
            ratio(sb_kib, kib),
            ratio(sb_cpu, cpu),
        );
    }
    println!();
}
