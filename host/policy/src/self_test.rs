//! The upload self-test: every hook of a loaded plugin called once or twice with sample
//! inputs, on a throwaway instance and tenant, under the normal per-call budgets. `load`
//! proves a plugin is the right shape and can start; this proves each hook can answer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::tenant::{Called, Plugin, Slot, TenantPolicy};
use crate::types::{
    FallbackReason, FlagContext, Hook, LoadInfo, MessageInfo, ReceiptInfo, ReceiptKind,
};

/// The tenant name a self-test's instance runs as (what the plugin's log lines are tagged
/// with). Not a valid tenant id, so it cannot collide with one.
pub(crate) const SELF_TEST_TENANT: &str = "(self-test)";

/// What a passed self-test measured. Every hook answered within its budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfTestReport {
    /// One entry per hook, in [`Hook::ALL`] order.
    pub hooks: Vec<HookReport>,
    /// Fuel each call had ([`PolicyLimits::fuel_per_call`](crate::PolicyLimits)), to put
    /// `fuel_used` in proportion.
    pub fuel_per_call: u64,
    /// Wall-clock deadline each call had.
    pub deadline: Duration,
}

/// One hook's self-test calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookReport {
    pub hook: Hook,
    /// Sample inputs it was called with.
    pub calls: u32,
    /// Wall time of its slowest call, including lowering the input and checking the output
    /// (and, for the first call, making the instance).
    pub elapsed: Duration,
    /// Fuel used by its most expensive call.
    pub fuel_used: u64,
}

impl SelfTestReport {
    pub fn hook(&self, hook: Hook) -> Option<&HookReport> {
        self.hooks.iter().find(|h| h.hook == hook)
    }
}

/// A hook failed its self-test: for this input it would fall back to the built-in default
/// every time. The message is meant for the uploader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("self-test failed: `{hook}` ({case}) {}", explain(reason))]
pub struct SelfTestError {
    pub hook: Hook,
    /// The sample input it failed on, in words (e.g. "with a group").
    pub case: &'static str,
    pub reason: FallbackReason,
}

fn explain(reason: &FallbackReason) -> String {
    match reason {
        FallbackReason::Trap(why) => format!(
            "trapped: {why}. A panic, `unreachable`, an out-of-bounds access, the memory cap or \
             the stack limit traps; run the hook natively with the SDK's TestHost to find it"
        ),
        FallbackReason::OutOfFuel => "ran out of fuel (its instruction budget). A hook must be \
             short, straight-line work on its inputs: look for a loop that does not end, or \
             work that grows with the configuration (parse it once, not per call)"
            .to_string(),
        FallbackReason::Deadline => "ran past its wall-clock deadline. Look for a loop that \
             does not end, or many host calls (log, config-get, counter-add) in one call"
            .to_string(),
        FallbackReason::InvalidOutput(why) => format!(
            "returned output the node does not accept: {why} (see docs/plugins.md, \
             \"Inputs and outputs\")"
        ),
        FallbackReason::Unavailable(why) => format!(
            "could not get an instance to run on: {why}. If the plugin loaded, this is the \
             node's instance pool being exhausted: try again later"
        ),
    }
}

/// The sample inputs: plausible, small, and free of anything a tenant's configuration could
/// treat specially.
fn message() -> MessageInfo {
    let body = b"hello from the upload self-test";
    MessageInfo {
        group: "self-test-group".into(),
        sender: "self-test-user".into(),
        body_size: body.len() as u32,
        body_prefix: body.to_vec(),
        group_size: 3,
        connected_members: 2,
    }
}

fn receipt() -> ReceiptInfo {
    ReceiptInfo {
        group: "self-test-group".into(),
        seq: 1,
        reader: "self-test-reader".into(),
        kind: ReceiptKind::Read,
        group_size: 3,
    }
}

fn flag_context(group: Option<&str>) -> FlagContext {
    FlagContext {
        user: "self-test-user".into(),
        group: group.map(Into::into),
    }
}

fn load_info(level: u8) -> LoadInfo {
    LoadInfo {
        level,
        tenant_message_rate: 10,
        tenant_connections: 2,
    }
}

/// Collects the calls of one self-test, stopping at the first failure.
struct Run {
    policy: TenantPolicy,
    hooks: Vec<HookReport>,
}

impl Run {
    fn call<R>(
        &mut self,
        hook: Hook,
        case: &'static str,
        invoke: impl FnOnce(&mut Slot) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<(), SelfTestError> {
        let started = Instant::now();
        let result = self.policy.try_call(invoke);
        let elapsed = started.elapsed();
        let Called { fuel_used, .. } =
            result.map_err(|reason| SelfTestError { hook, case, reason })?;
        match self.hooks.iter_mut().find(|h| h.hook == hook) {
            Some(report) => {
                report.calls += 1;
                report.elapsed = report.elapsed.max(elapsed);
                report.fuel_used = report.fuel_used.max(fuel_used);
            }
            None => self.hooks.push(HookReport {
                hook,
                calls: 1,
                elapsed,
                fuel_used,
            }),
        }
        Ok(())
    }
}

impl Plugin {
    /// Calls every hook of the plugin with sample inputs, as an upload check: `on-message`
    /// (a small message), `on-receipt`, `evaluate-flags` without and with a group, `on-load`
    /// at levels 0 and 3, in that order. `config` is what `host.config-get` returns (test
    /// with the configuration the tenant will bind, when known).
    ///
    /// Runs on a fresh instance of its own, for a throwaway tenant `(self-test)` with fresh
    /// counters and statistics, under the engine's normal per-call budgets: no
    /// [`TenantPolicy`]'s statistics or counters change. The instance comes from the
    /// engine's pool and goes back to it. Takes at most a few deadlines; call it off the
    /// async runtime.
    ///
    /// Fails with the first hook call that would fall back (trap, out of fuel, deadline,
    /// invalid output, no instance).
    pub fn self_test(
        &self,
        config: &BTreeMap<String, String>,
    ) -> Result<SelfTestReport, SelfTestError> {
        let policy = TenantPolicy::new(self, SELF_TEST_TENANT, config.clone());
        let limits = &self.engine().limits;
        let mut run = Run {
            policy,
            hooks: Vec::with_capacity(Hook::ALL.len()),
        };
        let m = message();
        run.call(Hook::OnMessage, "a small message", |s| s.on_message(&m))?;
        let r = receipt();
        run.call(Hook::OnReceipt, "a read receipt", |s| s.on_receipt(&r))?;
        let no_group = flag_context(None);
        run.call(Hook::EvaluateFlags, "without a group", |s| {
            s.evaluate_flags(&no_group)
        })?;
        let group = flag_context(Some("self-test-group"));
        run.call(Hook::EvaluateFlags, "with a group", |s| {
            s.evaluate_flags(&group)
        })?;
        for (level, case) in [(0, "load level 0"), (3, "load level 3")] {
            let load = load_info(level);
            run.call(Hook::OnLoad, case, |s| s.on_load(&load))?;
        }
        debug_assert_eq!(
            run.hooks.iter().map(|h| h.hook).collect::<Vec<_>>(),
            Hook::ALL
        );
        Ok(SelfTestReport {
            hooks: run.hooks,
            fuel_per_call: limits.fuel_per_call,
            deadline: limits.deadline,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_hook_the_case_and_what_to_do() {
        let err = SelfTestError {
            hook: Hook::EvaluateFlags,
            case: "with a group",
            reason: FallbackReason::OutOfFuel,
        };
        let text = err.to_string();
        assert!(
            text.starts_with("self-test failed: `evaluate-flags` (with a group) ran out of fuel"),
            "{text}"
        );
        assert!(text.contains("loop"), "{text}");
        let err = SelfTestError {
            hook: Hook::OnMessage,
            case: "a small message",
            reason: FallbackReason::Trap(
                "wasm trap: wasm `unreachable` instruction executed".into(),
            ),
        };
        assert!(err.to_string().contains("trapped: wasm trap"), "{err}");
        let err = SelfTestError {
            hook: Hook::OnLoad,
            case: "load level 3",
            reason: FallbackReason::InvalidOutput("too much data".into()),
        };
        assert!(
            err.to_string().contains("does not accept: too much data"),
            "{err}"
        );
    }

    #[test]
    fn sample_message_fits_what_a_plugin_sees() {
        let m = message();
        assert!(m.body_prefix.len() <= crate::BODY_PREFIX_BYTES);
        assert_eq!(m.body_size as usize, m.body_prefix.len());
    }
}
