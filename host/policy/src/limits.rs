//! Every budget a plugin runs under, with its default.

use std::path::PathBuf;
use std::time::Duration;

use crate::shape::ShapeLimits;

/// Budgets and bounds for policy plugins. One value configures a
/// [`PolicyEngine`](crate::PolicyEngine) and everything loaded into it.
///
/// The defaults are documented per field and in `docs/plugins.md`; the reference priority
/// plugin uses well under 1% of the fuel and deadline (see the crate's tests and bench).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyLimits {
    /// Largest plugin (component binary) accepted by `load`. Default 20 MiB: a Python plugin
    /// carries CPython (the reference one is 17.6 MiB; docs/plugins.md §15). What one tenant
    /// may upload is bounded first by its quota (`max_plugin_bytes`, 4 MiB unless the
    /// operator raises it), so only the tenants an operator chose can upload plugins this
    /// large.
    pub max_plugin_bytes: usize,
    /// Fuel (roughly: wasm operators executed) per hook call, refilled before every call, and
    /// the budget for instantiating a fresh instance. Default 10,000,000: on the order of a
    /// millisecond of straight-line wasm on a current x86 core, ten times under the deadline,
    /// so compute-bound runaways stop deterministically on fuel. The reference priority
    /// plugin uses under 5,000 per call.
    pub fuel_per_call: u64,
    /// Wall-clock deadline per hook call, enforced by epoch interruption: a call is
    /// interrupted between `deadline` and `deadline + epoch_tick` after it starts. It catches
    /// what fuel does not (time spent in host calls). Default 10 ms.
    pub deadline: Duration,
    /// How often the engine's epoch advances (one ticker thread per engine). Default 1 ms.
    pub epoch_tick: Duration,
    /// Linear memory per instance, in bytes; growing past it traps. Default 16 MiB.
    pub max_memory_bytes: usize,
    /// Elements per table per instance. Default 10,000.
    pub max_table_elements: usize,
    /// Wasm stack per call, in bytes; deeper recursion traps. Default 512 KiB.
    pub max_wasm_stack: usize,
    /// Instances that can exist at once across the whole engine (the pooling allocator's
    /// size). Idle instances kept for reuse count too, so size it at least
    /// `tenants * idle_instances_per_tenant + concurrent calls`. A call that finds the pool
    /// exhausted falls back (`Unavailable`). Default 1,000.
    pub max_instances: u32,
    /// Idle instances a tenant keeps for reuse; more are dropped after their call. Default 2.
    pub idle_instances_per_tenant: usize,
    /// Bytes the host accepts from a plugin in one transfer (a hook's result, or the
    /// arguments of one host call). A larger result falls back (`InvalidOutput`); larger
    /// host-call arguments trap. Default 64 KiB.
    pub max_transfer_bytes: usize,
    /// Component-model handles (WASI streams and the like) an instance may hold at once;
    /// creating more traps. Default 64.
    pub max_handles: usize,
    /// Bytes of a `reject` reason kept; longer reasons are cut at a character boundary (the
    /// WIT promises "at most 256 bytes are kept", so this is not an error). Default 256.
    pub max_reject_reason_bytes: usize,
    /// Flags one `evaluate-flags` call may return; more is invalid output. Default 256.
    pub max_flags: usize,
    /// Bytes of a flag name or counter name; a longer flag name is invalid output, a longer
    /// counter name is ignored. Default 64.
    pub max_name_bytes: usize,
    /// Log lines per call; later lines are dropped and counted. Default 16.
    pub max_log_lines_per_call: u32,
    /// Bytes kept of one log line (cut at a character boundary). Default 1 KiB.
    pub max_log_line_bytes: usize,
    /// Distinct counter names per tenant; adds to new names beyond it are ignored and
    /// counted. Default 64.
    pub max_counters_per_tenant: usize,
    /// Bounds on what an upload may contain (functions, exports, nesting…), checked before
    /// compiling. Defaults in [`ShapeLimits`].
    pub shape: ShapeLimits,
    /// Where uploads are compiled: `None` (the default) in this process; `Some` in a child
    /// process under bounds on CPU time, memory and wall time ([`crate::compile`]), which is
    /// what the node does.
    pub compile: Option<ChildCompile>,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        PolicyLimits {
            max_plugin_bytes: 20 << 20,
            fuel_per_call: 10_000_000,
            deadline: Duration::from_millis(10),
            epoch_tick: Duration::from_millis(1),
            max_memory_bytes: 16 << 20,
            max_table_elements: 10_000,
            max_wasm_stack: 512 << 10,
            max_instances: 1_000,
            idle_instances_per_tenant: 2,
            max_transfer_bytes: 64 << 10,
            max_handles: 64,
            max_reject_reason_bytes: 256,
            max_flags: 256,
            max_name_bytes: 64,
            max_log_lines_per_call: 16,
            max_log_line_bytes: 1 << 10,
            max_counters_per_tenant: 64,
            shape: ShapeLimits::default(),
            compile: None,
        }
    }
}

impl PolicyLimits {
    /// Epoch ticks to allow a call: enough that the deadline is never shorter than asked,
    /// whatever the phase of the ticker when the call starts.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        let tick = self.epoch_tick.as_nanos().max(1);
        let ticks = self.deadline.as_nanos().div_ceil(tick);
        u64::try_from(ticks).unwrap_or(u64::MAX - 1).max(1) + 1
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.epoch_tick.is_zero() {
            return Err("epoch_tick must be greater than zero".into());
        }
        if self.max_instances == 0 {
            return Err("max_instances must be at least 1".into());
        }
        if self.max_memory_bytes < 64 << 10 {
            return Err("max_memory_bytes must be at least one wasm page (64 KiB)".into());
        }
        if self.fuel_per_call == 0 {
            return Err("fuel_per_call must be greater than zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_ticks_round_up_and_add_one() {
        let mut limits = PolicyLimits::default();
        assert_eq!(limits.deadline_ticks(), 11);
        limits.deadline = Duration::from_micros(10_500);
        assert_eq!(limits.deadline_ticks(), 12);
        limits.deadline = Duration::ZERO;
        assert_eq!(limits.deadline_ticks(), 2);
    }

    #[test]
    fn defaults_are_valid() {
        PolicyLimits::default().validate().unwrap();
    }
}

/// Where and under which bounds uploads are compiled: a child process running
/// `compile::serve_child`. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildCompile {
    /// The program that runs `compile::serve_child` (the node: its own binary).
    pub program: PathBuf,
    /// Arguments before the ones this crate adds (the node: `__compile-plugin`).
    pub args: Vec<String>,
    /// CPU seconds one compile may use (`RLIMIT_CPU`, all its threads). Default 120: the
    /// reference Python plugin (CPython, 17.6 MiB), the costliest real plugin, takes 21–23 s
    /// (docs/plugins.md §6).
    pub cpu_secs: u64,
    /// Bytes of heap and other private memory one compile may use (`RLIMIT_DATA`).
    /// Default 2 GiB (the Python plugin: 378 MiB at most, and it compiles within 1 GiB).
    pub memory_bytes: u64,
    /// Wall-clock time one compile may take, waiting for a CPU included; the child is killed
    /// after it. Default 300 s (the Python plugin: 43–46 s on 2 cores at load 7).
    pub wall: Duration,
    /// Largest compiled artifact accepted. Default 256 MiB.
    pub max_artifact_bytes: u64,
}

impl ChildCompile {
    /// `program args…` with the default bounds.
    pub fn new(program: impl Into<PathBuf>, args: Vec<String>) -> Self {
        ChildCompile {
            program: program.into(),
            args,
            cpu_secs: 120,
            memory_bytes: 2 << 30,
            wall: Duration::from_secs(300),
            max_artifact_bytes: 256 << 20,
        }
    }

    /// The arguments after `args`: what `compile::ChildParams::from_args` reads back.
    pub(crate) fn child_args(&self, limits: &PolicyLimits) -> Vec<String> {
        vec![
            format!("--cpu-secs={}", self.cpu_secs),
            format!("--memory-bytes={}", self.memory_bytes),
            format!("--max-plugin-bytes={}", limits.max_plugin_bytes),
            format!("--max-wasm-stack={}", limits.max_wasm_stack),
            format!("--max-memory-bytes={}", limits.max_memory_bytes),
        ]
    }
}
