//! The node measures its own load: the monitor's timer and signals, and the level where the
//! node's tasks read it. What the signals mean, the hysteresis and the level in force are
//! `switchboard_router::load` (the decisions, shared with the simulation); this module keeps
//! the clock, the task and the atomics.
//!
//! Every `load_sample_ms` (a node limit, default 250 ms) the monitor reads the three signals
//! (event-loop lag, commit-queue fill, push-queue fill) into a [`Sample`], and a
//! [`LevelTracker`] turns its pressure into the measured level. Every change is logged by the
//! hub and visible as `switchboard_load_level`; an admin's forced level
//! (`Hub::set_load_override`) wins over the measured one.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Weak;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use switchboard_core::TenantId;
use switchboard_policy as policy;
use switchboard_router::load::{LevelTracker, Levels, Sample, THRESHOLDS};

use crate::metrics::Metrics;

/// The node's load level (0 normal .. 3 critical), an admin's forced level, and what each
/// tenant sheds at the level in force. The tenant's policy decides the shedding; the hub
/// asks it on every change (`Hub::set_load_level`) and stores the answer here.
#[derive(Debug)]
pub(crate) struct Load {
    /// The router's [`Levels`] (measured and forced) as bits: one atomic, so readers never
    /// lock and a change is one compare-and-swap.
    levels: AtomicU16,
    shedding: DashMap<TenantId, policy::Shedding>,
}

impl Load {
    pub(crate) fn new() -> Self {
        Self {
            levels: AtomicU16::new(Levels::default().to_bits()),
            shedding: DashMap::new(),
        }
    }

    fn levels(&self) -> Levels {
        Levels::from_bits(self.levels.load(Ordering::Relaxed))
    }

    /// Applies `change` to the levels atomically; returns what it returned.
    fn change(&self, change: impl Fn(&mut Levels) -> Option<u8>) -> Option<u8> {
        let mut told = None;
        let _ = self
            .levels
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                let mut levels = Levels::from_bits(bits);
                told = change(&mut levels);
                Some(levels.to_bits())
            });
        told
    }

    /// The level in force: the forced one if any, else the measured one.
    pub(crate) fn level(&self) -> u8 {
        self.levels().level()
    }

    /// Records a measured level; returns the level in force before, if it changed.
    pub(crate) fn set_measured(&self, level: u8) -> Option<u8> {
        self.change(|l| l.set_measured(level))
    }

    /// Forces a level (or with `None` goes back to the measured one); returns the level in
    /// force before, if it changed.
    pub(crate) fn set_forced(&self, level: Option<u8>) -> Option<u8> {
        self.change(|l| l.set_forced(level))
    }

    /// What `tenant` sheds now: its policy's answer, or the built-in one for the level.
    pub(crate) fn shedding(&self, tenant: &TenantId) -> policy::Shedding {
        match self.shedding.get(tenant) {
            Some(s) => *s,
            None => policy::Builtin::on_load(&policy::LoadInfo {
                level: self.level(),
                ..Default::default()
            }),
        }
    }

    /// Stores the tenant policy's answer for the level in force (`None`: the built-in one).
    pub(crate) fn set_shedding(&self, tenant: &TenantId, shed: Option<policy::Shedding>) {
        match shed {
            Some(s) => {
                self.shedding.insert(tenant.clone(), s);
            }
            None => {
                self.shedding.remove(tenant);
            }
        }
    }
}

/// What the monitor reads and moves (the hub; a trait so this module does not know it).
pub(crate) trait LoadSignals: Send + Sync + 'static {
    /// Sends waiting for the committer, % of the commit queue's bound.
    fn commit_queue_percent(&self) -> u64;
    /// Pushes queued for all sessions, % of their total bound (walks the sessions).
    fn push_queue_percent(&self) -> u64;
    /// A new measured level.
    fn set_load_level(&self, level: u8);
    fn metrics(&self) -> &Metrics;
}

/// Samples the hub's load until the hub is dropped, moving its measured level.
pub(crate) async fn monitor(hub: Weak<dyn LoadSignals>, sample_ms: u64) {
    let period = Duration::from_millis(sample_ms);
    let mut tracker = LevelTracker::default();
    loop {
        let before = Instant::now();
        tokio::time::sleep(period).await;
        let lag_ms = before.elapsed().saturating_sub(period).as_millis() as u64;
        let Some(hub) = hub.upgrade() else { return };
        // The push-queue fill walks every session (~4 ms at 10,000 sessions): off the event
        // loop, where it held up whatever fan-out was running every sample.
        let push_percent = {
            let hub = hub.clone();
            tokio::task::spawn_blocking(move || hub.push_queue_percent())
                .await
                .unwrap_or(0)
        };
        let sample = Sample {
            lag_ms,
            commit_percent: hub.commit_queue_percent(),
            push_percent,
        };
        if let Some(level) = tracker.observe(sample.pressure(&THRESHOLDS)) {
            tracing::info!(?sample, level, "measured load level");
            hub.metrics()
                .load_level_changes
                .fetch_add(1, Ordering::Relaxed);
            hub.set_load_level(level);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_of_the_level_in_force_are_told_once() {
        let load = Load::new();
        assert_eq!(load.set_measured(2), Some(0));
        assert_eq!(load.set_forced(Some(1)), Some(2));
        assert_eq!(load.level(), 1);
        assert_eq!(load.set_measured(3), None, "under the override");
        assert_eq!(load.set_forced(None), Some(1));
        assert_eq!(load.level(), 3);
    }
}
