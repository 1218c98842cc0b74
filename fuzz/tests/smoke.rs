//! The fuzz targets on stable, without libFuzzer: each replays its checked-in corpus
//! (`corpus/<target>/`, which includes every crash reproducer ever found), then runs
//! inputs from a seeded generator for a bounded time. CI runs this (`cargo xtask fuzz
//! --smoke`); a failure prints the target, the input's seed or file, and the panic.
//!
//! `FUZZ_SMOKE_SECS` (default 3) bounds the generated inputs per target; `FUZZ_SMOKE_SEED`
//! fixes the seed (default: a fixed one, so CI is repeatable).

use std::path::PathBuf;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: switchboard_fuzz::alloc::Tracking = switchboard_fuzz::alloc::Tracking;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// splitmix64: tiny and deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Random bytes, or a corpus entry with a few bytes changed (so generated inputs start
    /// from the interesting shapes too).
    fn input(&mut self, seeds: &[(PathBuf, Vec<u8>)], max_len: usize) -> Vec<u8> {
        if !seeds.is_empty() && self.next().is_multiple_of(2) {
            let mut v = seeds[(self.next() % seeds.len() as u64) as usize].1.clone();
            for _ in 0..1 + self.next() % 8 {
                if v.is_empty() {
                    break;
                }
                let i = (self.next() % v.len() as u64) as usize;
                v[i] = self.next() as u8;
            }
            return v;
        }
        let len = (self.next() % max_len as u64) as usize;
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn budget() -> Duration {
    let secs = std::env::var("FUZZ_SMOKE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

fn smoke(target: &str, max_len: usize) {
    let run = switchboard_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .unwrap()
        .1;
    let seeds = corpus(target);
    let started = Instant::now();
    for (path, bytes) in &seeds {
        if let Err(panic) = std::panic::catch_unwind(|| run(bytes)) {
            eprintln!("{target}: corpus input {} failed", path.display());
            std::panic::resume_unwind(panic);
        }
    }
    let replayed = started.elapsed();
    let seed: u64 = std::env::var("FUZZ_SMOKE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5b1_f022);
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < budget() {
        let input = rng.input(&seeds, max_len);
        n += 1;
        let result = std::panic::catch_unwind(|| run(&input));
        if let Err(panic) = result {
            let dir = std::env::temp_dir().join(format!("fuzz-smoke-{target}-{seed}-{n}"));
            let _ = std::fs::write(&dir, &input);
            eprintln!(
                "{target}: input #{n} of seed {seed} failed; saved to {}",
                dir.display()
            );
            std::panic::resume_unwind(panic);
        }
    }
    eprintln!(
        "{target}: replayed {} corpus inputs in {replayed:.2?}, then {n} generated inputs in {:.2?}",
        seeds.len(),
        started.elapsed()
    );
}

#[test]
fn frame() {
    smoke("frame", 512);
    let worst =
        switchboard_fuzz::frame::WORST_RATIO_PERMILLE.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "frame: worst decode allocation {:.1}x the frame size",
        worst as f64 / 1000.0
    );
    assert!(worst > 0, "the tracking allocator is not installed");
}

#[test]
fn token() {
    smoke("token", 256);
}

fn stats(s: &[std::sync::atomic::AtomicU64]) -> Vec<u64> {
    s.iter()
        .map(|a| a.load(std::sync::atomic::Ordering::Relaxed))
        .collect()
}

#[test]
fn plugin_upload() {
    smoke("plugin_upload", 4096);
    let s = stats(&switchboard_fuzz::plugin::STATS);
    eprintln!(
        "plugin_upload: {} uploads, {} loaded, {} passed the self-test",
        s[0], s[1], s[2]
    );
    assert!(s[1] > 0, "nothing loaded: the corpus lost its valid plugin");
}

#[test]
fn routing() {
    smoke("routing", 512);
    let s = stats(&switchboard_fuzz::routing::STATS);
    eprintln!(
        "routing: {} operations, {} acks, {} deliveries",
        s[0], s[1], s[2]
    );
    assert!(s[1] > 0 && s[2] > 0, "scenarios never got to a delivery");
}

#[test]
fn routing_sim() {
    smoke("routing_sim", 2048);
    let s = stats(&switchboard_fuzz::routing_sim::STATS);
    eprintln!(
        "routing_sim: {} runs, {} client operations, {} deliveries",
        s[0], s[1], s[2]
    );
    assert!(s[2] > 0, "simulated runs never got to a delivery");
}
