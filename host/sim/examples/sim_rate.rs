//! How fast the routing simulation runs: simulated client operations per second of wall
//! time (`cargo run --release -p switchboard-sim --example sim_rate [SEEDS]`). A figure for
//! docs/benchmarks.md, not a test: timing goals live in benchmarks.

use switchboard_sim as sim;

fn main() {
    let seeds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let cfg = sim::Config {
        groups: 12,
        users: 60,
        steps: 20_000,
        ..sim::Config::default()
    };
    let started = std::time::Instant::now();
    let (mut ops, mut delivered, mut violations) = (0u64, 0u64, 0usize);
    for seed in 0..seeds {
        let r = sim::Sim::run(seed, cfg.clone());
        ops += r.ops;
        delivered += r.delivered;
        violations += r.violations.len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{seeds} seeds, {ops} client operations, {delivered} deliveries in {secs:.2} s: \
         {:.0} operations/s, {:.0} deliveries/s, {violations} violations",
        ops as f64 / secs,
        delivered as f64 / secs
    );
    if violations > 0 {
        std::process::exit(1);
    }
}
