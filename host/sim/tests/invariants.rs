//! Routing invariants under the seeded simulation (`switchboard_sim`). Each test runs many
//! seeds; a failure prints the seed, and `Sim::run(seed, config)` replays it.

use switchboard_sim::{Config, Report, Sim};

/// Runs `seeds` seeds of `cfg` and fails with every violation of the first failing seed.
fn check_seeds(seeds: std::ops::Range<u64>, cfg: Config) -> Vec<Report> {
    let mut reports = Vec::new();
    for seed in seeds {
        let r = Sim::run(seed, cfg.clone());
        assert!(
            r.violations.is_empty(),
            "seed {} ({cfg:?}) broke an invariant:\n{}",
            r.seed,
            r.violations.join("\n")
        );
        reports.push(r);
    }
    reports
}

fn total(reports: &[Report], f: impl Fn(&Report) -> u64) -> u64 {
    reports.iter().map(f).sum()
}

/// Exactly once and in order per connection and across reconnects; every acknowledged
/// message is the logged one; active first within every batch; nudges rate-limited; every
/// member ends with everything (deferral never makes a gap).
#[test]
fn every_routing_invariant_holds_under_random_faults() {
    let reports = check_seeds(0..60, Config::default());
    // The faults did happen, or the run proves little.
    assert!(total(&reports, |r| r.failed_flushes) > 0);
    assert!(total(&reports, |r| r.overflows) > 0);
    assert!(total(&reports, |r| r.nudges) > 0);
    assert!(total(&reports, |r| r.delivered) > 10_000);
}

/// Failed flushes refuse the batch; resends with the same id find their message, and the
/// seq acknowledged once is the seq acknowledged again.
#[test]
fn failed_flushes_lose_nothing_and_resends_keep_their_seq() {
    let cfg = Config {
        flush_failure_pct: 40,
        ..Config::default()
    };
    let reports = check_seeds(100..130, cfg);
    assert!(total(&reports, |r| r.failed_flushes) > 100);
}

/// Tiny queues and windows: slow and dead readers overflow constantly, are caught up from the
/// log, and never cost another session a message.
#[test]
fn overflowing_sessions_catch_up_from_the_log_without_gaps() {
    let cfg = Config {
        queue_frames: 1,
        read_batch: 2,
        ..Config::default()
    };
    let reports = check_seeds(200..230, cfg);
    assert!(total(&reports, |r| r.overflows) > 1_000);
}

/// Every group large enough to defer its background members: they get nudges, and what was
/// deferred arrives in order once they come to the foreground.
#[test]
fn deferred_background_members_get_nudges_and_no_gap() {
    let cfg = Config {
        nudge_from_members: 1,
        ..Config::default()
    };
    let reports = check_seeds(300..330, cfg);
    assert!(total(&reports, |r| r.nudges) > 100);
}

/// The benchmark's naive fan-out (no phases) still delivers exactly once, in order.
#[test]
fn naive_fanout_keeps_exactly_once_in_order() {
    let cfg = Config {
        naive: true,
        ..Config::default()
    };
    check_seeds(400..420, cfg);
}

/// Many groups and users: the same invariants at a larger shape.
#[test]
fn invariants_hold_with_many_groups_and_users() {
    let cfg = Config {
        groups: 12,
        users: 60,
        steps: 10_000,
        ..Config::default()
    };
    check_seeds(500..505, cfg);
}

/// A run is a function of its seed: the same seed gives the same run.
#[test]
fn a_run_replays_from_its_seed() {
    let a = Sim::run(7, Config::default());
    let b = Sim::run(7, Config::default());
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    let c = Sim::run(8, Config::default());
    assert_ne!(format!("{a:?}"), format!("{c:?}"), "seeds differ");
}

/// Every flush fails until the run settles: each message becomes durable only when its
/// resend is flushed, so it is revealed without a live copy, and every connected member must
/// still get it (from the log).
#[test]
fn messages_whose_first_flush_failed_reach_every_member_once_revealed() {
    let cfg = Config {
        flush_failure_pct: 100,
        steps: 400,
        ..Config::default()
    };
    let reports = check_seeds(600..640, cfg);
    assert!(total(&reports, |r| r.delivered) > 1_000);
}
