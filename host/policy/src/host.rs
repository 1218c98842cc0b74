//! What an instance's store holds, and the host side of `switchboard:policy/host`: logging
//! to `tracing`, the tenant's own configuration, the clock and tenant-scoped counters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::bindings::policy::switchboard::policy::{host, types as wit};
use crate::limits::PolicyLimits;
use crate::stats::PolicyStats;

/// Tenant-scoped counters (`host.counter-add`), shared by every instance of a tenant's
/// policy. Cheap to clone; hand the same value to the next
/// [`TenantPolicy`](crate::TenantPolicy) of the tenant to keep counting across a swap.
#[derive(Debug, Clone, Default)]
pub struct TenantCounters {
    inner: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl TenantCounters {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current values, by name.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.inner.lock().clone()
    }

    /// Adds `delta` to `name`, saturating. Returns false (and changes nothing) when the name
    /// is too long or would be one name too many.
    fn add(&self, name: &str, delta: u64, max_names: usize, max_name_bytes: usize) -> bool {
        if name.is_empty() || name.len() > max_name_bytes {
            return false;
        }
        let mut map = self.inner.lock();
        if let Some(value) = map.get_mut(name) {
            *value = value.saturating_add(delta);
            return true;
        }
        if map.len() >= max_names {
            return false;
        }
        map.insert(name.to_string(), delta);
        true
    }
}

/// The parts of a tenant's policy every one of its instances shares.
#[derive(Debug)]
pub(crate) struct TenantShared {
    pub tenant: Arc<str>,
    pub config: BTreeMap<String, String>,
    pub counters: TenantCounters,
    pub stats: PolicyStats,
    pub limits: Arc<PolicyLimits>,
    /// Set for a trial run (`trial.rs`): the plugin's log lines are kept here instead of
    /// going to the node's log, and `now-ms` reads `clock_ms` instead of the system clock.
    pub trial: Option<TrialHost>,
}

/// What a trial run's host keeps for the caller instead of the node's log and clock.
#[derive(Debug, Default)]
pub(crate) struct TrialHost {
    pub logs: Mutex<Vec<LogLine>>,
    /// What `now-ms` answers; set per call by the trial.
    pub clock_ms: std::sync::atomic::AtomicU64,
}

/// One line a plugin wrote with `host.log`, as kept by a trial run (already cut to
/// [`PolicyLimits::max_log_line_bytes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// The level of a [`LogLine`] (`switchboard:policy/types.log-level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Caps linear memory and tables per instance, and remembers how far memory grew. The memory
/// cap is on the sum of all the instance's memories (a composed component has several).
#[derive(Debug)]
pub(crate) struct InstanceLimiter {
    pub memory_cap: usize,
    pub table_cap: usize,
    /// The sum of the instance's memories' sizes now.
    pub memory_total: usize,
    /// The largest `memory_total` reached.
    pub memory_peak: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded: the plugin asked for {desired} bytes of linear memory; the cap is {cap} bytes")]
pub(crate) struct MemoryCapExceeded {
    pub desired: usize,
    pub cap: usize,
}

impl wasmtime::ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .memory_total
            .saturating_sub(current)
            .saturating_add(desired);
        if total > self.memory_cap {
            // Trap with a message the tenant can act on, rather than letting the guest's
            // allocator see a failed grow and abort with a bare `unreachable`.
            return Err(MemoryCapExceeded {
                desired: total,
                cap: self.memory_cap,
            }
            .into());
        }
        self.memory_total = total;
        self.memory_peak = self.memory_peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_cap)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        4
    }
}

/// The data of one instance's `Store`.
pub(crate) struct InstanceState {
    pub shared: Arc<TenantShared>,
    pub limiter: InstanceLimiter,
    /// Log lines this call may still write.
    pub log_budget: u32,
    /// The start of what this call wrote to stderr (at most `max_log_line_bytes`), for the
    /// reason of a trap: a Rust panic's message ends up here.
    pub stderr: Vec<u8>,
}

impl InstanceState {
    pub fn new(shared: Arc<TenantShared>) -> Self {
        let limits = &shared.limits;
        InstanceState {
            limiter: InstanceLimiter {
                memory_cap: limits.max_memory_bytes,
                table_cap: limits.max_table_elements,
                memory_total: 0,
                memory_peak: 0,
            },
            log_budget: limits.max_log_lines_per_call,
            stderr: Vec::new(),
            shared,
        }
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary.
pub(crate) fn truncate_to_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl wit::Host for InstanceState {}

impl host::Host for InstanceState {
    fn log(&mut self, level: wit::LogLevel, message: String) {
        if self.log_budget == 0 {
            self.shared.stats.record_log_line_dropped();
            return;
        }
        self.log_budget -= 1;
        let line = truncate_to_boundary(&message, self.shared.limits.max_log_line_bytes);
        if let Some(trial) = &self.shared.trial {
            let level = match level {
                wit::LogLevel::Debug => LogLevel::Debug,
                wit::LogLevel::Info => LogLevel::Info,
                wit::LogLevel::Warn => LogLevel::Warn,
                wit::LogLevel::Error => LogLevel::Error,
            };
            trial.logs.lock().push(LogLine {
                level,
                message: line.to_string(),
            });
            return;
        }
        let tenant = &*self.shared.tenant;
        match level {
            wit::LogLevel::Debug => {
                tracing::debug!(target: "switchboard::plugin", tenant, "{line}")
            }
            wit::LogLevel::Info => tracing::info!(target: "switchboard::plugin", tenant, "{line}"),
            wit::LogLevel::Warn => tracing::warn!(target: "switchboard::plugin", tenant, "{line}"),
            wit::LogLevel::Error => {
                tracing::error!(target: "switchboard::plugin", tenant, "{line}")
            }
        }
    }

    fn config_get(&mut self, key: String) -> Option<String> {
        self.shared.config.get(&key).cloned()
    }

    fn now_ms(&mut self) -> u64 {
        if let Some(trial) = &self.shared.trial {
            return trial.clock_ms.load(std::sync::atomic::Ordering::Relaxed);
        }
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    fn counter_add(&mut self, name: String, delta: u64) {
        let limits = &self.shared.limits;
        if !self.shared.counters.add(
            &name,
            delta,
            limits.max_counters_per_tenant,
            limits.max_name_bytes,
        ) {
            self.shared.stats.record_counter_update_dropped();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_to_boundary("hello", 10), "hello");
        assert_eq!(truncate_to_boundary("hello", 3), "hel");
        // "é" is two bytes: cutting inside it backs off to before it.
        assert_eq!(truncate_to_boundary("aé", 2), "a");
        assert_eq!(truncate_to_boundary("", 0), "");
    }

    #[test]
    fn counters_are_bounded() {
        let counters = TenantCounters::new();
        assert!(counters.add("a", 1, 2, 4));
        assert!(counters.add("a", u64::MAX, 2, 4));
        assert!(counters.add("b", 2, 2, 4));
        assert!(!counters.add("c", 3, 2, 4), "third name is one too many");
        assert!(!counters.add("toolong", 1, 5, 4));
        assert!(!counters.add("", 1, 5, 4));
        let snap = counters.snapshot();
        assert_eq!(snap.get("a"), Some(&u64::MAX));
        assert_eq!(snap.get("b"), Some(&2));
        assert_eq!(snap.len(), 2);
    }
}
