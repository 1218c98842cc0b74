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

/// Membership changing under traffic: users join and leave, admins add and remove users
/// with sessions on several devices. A new member starts at the group's durable head and
/// gets everything after it once, in order; after a leave nothing more is written for the
/// subscription it ended; every session of the user follows each change; the fan-out holds
/// exactly the members' sessions.
#[test]
fn membership_changes_under_traffic_keep_every_invariant() {
    let cfg = Config {
        extra_membership_per_mille: 60,
        multi_device_pct: 60,
        ..Config::default()
    };
    let reports = check_seeds(700..760, cfg);
    for (what, n) in [
        ("joins", total(&reports, |r| r.joins)),
        ("leaves", total(&reports, |r| r.leaves)),
        ("admin adds", total(&reports, |r| r.admin_adds)),
        ("admin removes", total(&reports, |r| r.admin_removes)),
        (
            "changes of users with 2+ sessions",
            total(&reports, |r| r.multi_session_changes),
        ),
        ("rejoins on one connection", total(&reports, |r| r.rejoins)),
        (
            "frames of ended subscriptions",
            total(&reports, |r| r.stale_frames),
        ),
    ] {
        assert!(n > 100, "only {n} {what}");
    }
    assert!(total(&reports, |r| r.delivered) > 10_000);
}

/// Joins racing a publish: a send to the group waits for its flush when the user joins (the
/// same batch), or the committer publishes between the hub's read of the head and the
/// subscription. The member starts at the head it was admitted at and gets the racing
/// message (live or from the log), once.
#[test]
fn joins_racing_a_publish_start_at_the_head_and_miss_nothing_after_it() {
    let cfg = Config {
        extra_membership_per_mille: 120,
        flush_failure_pct: 20,
        ..Config::default()
    };
    let reports = check_seeds(800..840, cfg);
    assert!(total(&reports, |r| r.joins_racing_publish) > 200);
    assert!(total(&reports, |r| r.failed_flushes) > 100);
}

/// Leaves while the session's queue is full (one-frame queues, dead and slow readers), and
/// leaves racing a publish (a send to the group in the same batch, or the committer running
/// between the store's removal and the unsubscriptions): what was written before may still
/// arrive, in order and once; nothing is written after, not even by catch-up.
#[test]
fn a_leave_while_the_queue_is_full_stops_delivery_at_once() {
    let cfg = Config {
        queue_frames: 1,
        read_batch: 2,
        extra_membership_per_mille: 80,
        ..Config::default()
    };
    let reports = check_seeds(900..940, cfg);
    assert!(total(&reports, |r| r.leaves_with_full_queue) > 100);
    assert!(total(&reports, |r| r.leaves_racing_publish) > 100);
    assert!(total(&reports, |r| r.overflows) > 1_000);
    assert!(total(&reports, |r| r.stale_frames) > 0);
}

/// Every user on two or three devices: an admin's add or removal moves all of its sessions.
#[test]
fn admin_changes_move_every_session_of_the_user() {
    let cfg = Config {
        multi_device_pct: 100,
        users: 8,
        extra_membership_per_mille: 60,
        ..Config::default()
    };
    let reports = check_seeds(1_000..1_030, cfg);
    assert!(total(&reports, |r| r.admin_adds + r.admin_removes) > 300);
    assert!(total(&reports, |r| r.multi_session_changes) > 300);
}

/// The load level moves up and down mid-stream (up at once, down one step after calm
/// samples, an admin's forced level winning) and from level 1 the tenant sheds background
/// delivery: background members get nudges instead, and nothing is lost when it stops.
#[test]
fn load_levels_moving_up_and_down_shed_background_delivery_without_gaps() {
    let cfg = Config {
        defer_background_at: 1,
        nudge_from_members: 0,
        ..Config::default()
    };
    let reports = check_seeds(1_100..1_140, cfg);
    assert!(total(&reports, |r| r.level_changes) > 200);
    assert!(reports.iter().any(|r| r.max_level == 3));
    assert!(total(&reports, |r| r.shed_deferrals) > 100);
    assert!(total(&reports, |r| r.nudges) > 100);
}
