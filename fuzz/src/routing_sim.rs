//! The `routing_sim` target: the routing core (`host/router`) under the seeded simulation
//! (`host/sim`), with the input choosing the node's shape, the seed and every operation
//! (traffic, faults, membership changes, load levels; `Sim::run_bytes`). Any invariant the
//! simulation's oracle checks (exactly once and in order per device and across reconnects,
//! acknowledged means durable and logged, active first, nudges rate-limited and never
//! moving the position, a new member from the head, nothing after a leave, fan-outs holding
//! exactly the members' sessions, nothing missing once settled) is a crash here.

use std::sync::atomic::{AtomicU64, Ordering};

/// Runs, operations and deliveries so far (the smoke test checks the runs got somewhere).
pub static STATS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

pub fn run(data: &[u8]) {
    let report = switchboard_sim::Sim::run_bytes(data);
    STATS[0].fetch_add(1, Ordering::Relaxed);
    STATS[1].fetch_add(report.ops, Ordering::Relaxed);
    STATS[2].fetch_add(report.delivered, Ordering::Relaxed);
    assert!(
        report.violations.is_empty(),
        "routing invariant broken (seed {}):\n{}",
        report.seed,
        report.violations.join("\n")
    );
}
