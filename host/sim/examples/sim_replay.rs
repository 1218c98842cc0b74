//! Replays one seed and prints its report, for a failure a test named:
//! `cargo run -p switchboard-sim --example sim_replay -- SEED [KEY=VALUE…]` with keys
//! `steps`, `groups`, `users`, `queue_frames`, `read_batch`, `nudge_from_members`,
//! `flush_failure_pct`, `naive`, `extra_membership_per_mille`, `defer_background_at`.

fn main() {
    let mut args = std::env::args().skip(1);
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut cfg = switchboard_sim::Config::default();
    for arg in args {
        let Some((key, value)) = arg.split_once('=') else {
            panic!("not KEY=VALUE: {arg}");
        };
        let n: u64 = match value {
            "true" => 1,
            "false" => 0,
            v => v.parse().expect("a number"),
        };
        match key {
            "steps" => cfg.steps = n as usize,
            "groups" => cfg.groups = n as usize,
            "users" => cfg.users = n as usize,
            "queue_frames" => cfg.queue_frames = n as usize,
            "read_batch" => cfg.read_batch = n as usize,
            "nudge_from_members" => cfg.nudge_from_members = n as u32,
            "flush_failure_pct" => cfg.flush_failure_pct = n,
            "naive" => cfg.naive = n != 0,
            "extra_membership_per_mille" => cfg.extra_membership_per_mille = n,
            "defer_background_at" => cfg.defer_background_at = n as u8,
            other => panic!("unknown key {other}"),
        }
    }
    let r = switchboard_sim::Sim::run(seed, cfg);
    println!("{r:#?}");
}
