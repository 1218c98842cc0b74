//! A fixed-bucket latency histogram of atomic counters: recording is two relaxed atomic adds
//! and a short scan, with no lock and no allocation, so it can sit on the delivery path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (the last bucket is everything above).
pub const BOUNDS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative), plus one for values above the last bound.
    counts: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A snapshot: cumulative counts per bound (Prometheus `le`), total count and sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub cumulative: Vec<(u64, u64)>,
    pub count: u64,
    pub sum_us: u64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BOUNDS_US.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(BOUNDS_US.len());
        for (i, &bound) in BOUNDS_US.iter().enumerate() {
            running += self.counts[i].load(Ordering::Relaxed);
            cumulative.push((bound, running));
        }
        let count = running + self.counts[BOUNDS_US.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            cumulative,
            count,
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_their_bucket_and_counts_are_cumulative() {
        let h = Histogram::default();
        for us in [0, 100, 101, 999, 5_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.sum_us, 100 + 101 + 999 + 5_000_000);
        assert_eq!(s.cumulative[0], (100, 2)); // 0 and 100
        assert_eq!(s.cumulative[1], (250, 3)); // + 101
        assert_eq!(s.cumulative[3], (1_000, 4)); // + 999
        assert_eq!(
            s.cumulative.last().unwrap().1,
            4,
            "5 s is above every bound"
        );
    }
}
