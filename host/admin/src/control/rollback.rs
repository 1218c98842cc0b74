//! Automatic rollback: a version whose failure rate passes a threshold within a window is
//! taken out of service by the node itself — a canary is ended, an active version replaced by
//! the previous one (or the built-in policy). The change goes through the config store like
//! an operator's, so it survives restarts and shows in status (`last_rollback`).
//!
//! "Failed" counts every event the version was picked for but did not answer: traps, fuel or
//! deadline overruns, invalid output, and events skipped while its circuit breaker was open
//! (a breaker hides the plugin's failures from the call path, not from this monitor).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchboard_core::TenantId;
use switchboard_edge::ServingSnapshot;
use switchboard_store::{BindingRefused, RollbackRecord};

use super::shared::now_ms;
use super::Control;

/// When the node rolls a version back by itself.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoRollback {
    pub enabled: bool,
    /// The sliding window the failure rate is measured over.
    #[serde(with = "millis")]
    pub window: Duration,
    /// Fewest events in the window before the rate is judged (a few failures of a quiet
    /// tenant are not a trend).
    pub min_events: u64,
    /// Failure share (0–1) at or above which the version is rolled back.
    pub max_failure_ratio: f64,
    /// How often the monitor looks.
    #[serde(with = "millis")]
    pub check_every: Duration,
}

impl Default for AutoRollback {
    fn default() -> Self {
        AutoRollback {
            enabled: true,
            window: Duration::from_secs(10),
            min_events: 20,
            max_failure_ratio: 0.5,
            check_every: Duration::from_millis(200),
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Role {
    Active,
    Canary,
}

/// Samples of one serving version's counters, oldest first.
#[derive(Debug, Default)]
struct History {
    samples: VecDeque<(Instant, u64, u64)>,
}

impl History {
    /// Records a sample and returns (events, failures) over the window.
    fn record(&mut self, now: Instant, window: Duration, handled: u64, failed: u64) -> (u64, u64) {
        self.samples.push_back((now, handled, failed));
        while self
            .samples
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > window)
        {
            self.samples.pop_front();
        }
        let (_, h0, f0) = self
            .samples
            .front()
            .copied()
            .unwrap_or((now, handled, failed));
        (handled.saturating_sub(h0), failed.saturating_sub(f0))
    }
}

pub(crate) fn start(c: &Arc<Control>) {
    let rules = c.settings.auto_rollback;
    if !rules.enabled {
        return;
    }
    let weak: Weak<Control> = Arc::downgrade(c);
    tokio::spawn(async move {
        let mut histories: HashMap<(TenantId, Role, String), History> = HashMap::new();
        let mut tick = tokio::time::interval(rules.check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(c) = weak.upgrade() else { break };
            let now = Instant::now();
            let tenants: Vec<TenantId> = c.bound.iter().map(|e| e.key().clone()).collect();
            let mut seen = std::collections::HashSet::new();
            for t in tenants {
                let serving = c.hub.serving(&t);
                for (role, snap) in [
                    (Role::Active, serving.active),
                    (Role::Canary, serving.canary),
                ] {
                    let Some(snap) = snap else { continue };
                    let key = (t.clone(), role, snap.version.clone());
                    seen.insert(key.clone());
                    // A version's counters start at zero when it is bound: that is the baseline.
                    let h = histories.entry(key.clone()).or_insert_with(|| History {
                        samples: VecDeque::from([(now, 0, 0)]),
                    });
                    let (events, failures) = h.record(now, rules.window, snap.handled, snap.failed);
                    if events >= rules.min_events
                        && failures as f64 >= rules.max_failure_ratio * events as f64
                    {
                        histories.remove(&key);
                        trip(&c, &t, role, &snap, events, failures, rules.window).await;
                    }
                }
            }
            histories.retain(|k, _| seen.contains(k));
        }
    });
}

async fn trip(
    c: &Control,
    tenant: &TenantId,
    role: Role,
    snap: &ServingSnapshot,
    events: u64,
    failures: u64,
    window: Duration,
) {
    let f = &snap.stats.fallbacks;
    let reason = format!(
        "{} version {} failed {failures} of {events} events in {} s \
         (traps {}, out of fuel {}, deadline {}, invalid output {}; the rest skipped by its \
         circuit breaker)",
        match role {
            Role::Active => "active",
            Role::Canary => "canary",
        },
        snap.version,
        window.as_secs(),
        f.traps,
        f.out_of_fuel,
        f.deadline,
        f.invalid_output,
    );
    let version = snap.version.clone();
    let now = now_ms();
    // Counted before the write: the watch may apply the rollback before this task resumes,
    // and whoever sees it applied must see it counted. Taken back if nothing was written.
    c.auto_rollbacks.fetch_add(1, Ordering::Relaxed);
    let result = super::shared::off_the_runtime(|| {
        c.config.update_binding(tenant, now, &mut |b| {
            match role {
                Role::Canary => {
                    let Some(canary) = b.canary.take_if(|k| k.version.version == version) else {
                        return Err(BindingRefused("canary changed meanwhile".into()));
                    };
                    b.last_rollback = Some(RollbackRecord {
                        from: canary.version.version,
                        to: b.active.as_ref().map(|a| a.version.clone()),
                        automatic: true,
                        reason: reason.clone(),
                        at_ms: now,
                    });
                }
                Role::Active => {
                    let Some(from) = b.active.take_if(|a| a.version == version) else {
                        return Err(BindingRefused("active version changed meanwhile".into()));
                    };
                    b.active = b.previous.pop();
                    b.last_rollback = Some(RollbackRecord {
                        from: from.version,
                        to: b.active.as_ref().map(|a| a.version.clone()),
                        automatic: true,
                        reason: reason.clone(),
                        at_ms: now,
                    });
                }
            }
            Ok(())
        })
    });
    match result {
        Ok(Ok(written)) => {
            tracing::warn!(%tenant, %reason, revision = written.revision, "automatic rollback");
            if let Err(e) = super::reconcile::apply_binding(c, tenant).await {
                tracing::error!(%tenant, error = %e, "automatic rollback not applied");
            }
        }
        Ok(Err(refused)) => {
            c.auto_rollbacks.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(%tenant, %refused, "automatic rollback skipped");
        }
        Err(e) => {
            c.auto_rollbacks.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(%tenant, error = %e, "automatic rollback could not be stored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_measures_only_the_window() {
        let t0 = Instant::now();
        let mut h = History {
            samples: VecDeque::from([(t0, 0, 0)]),
        };
        let w = Duration::from_secs(10);
        assert_eq!(h.record(t0, w, 100, 90), (100, 90));
        assert_eq!(h.record(t0 + Duration::from_secs(5), w, 150, 95), (150, 95));
        // The first two samples leave the window: only what happened since the third counts.
        assert_eq!(h.record(t0 + Duration::from_secs(12), w, 160, 96), (10, 1));
    }
}
