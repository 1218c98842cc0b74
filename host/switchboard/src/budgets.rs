//! The `[plugins]` section of the node's config: the budgets every plugin runs under
//! (docs/plugins.md §6), each with its default and the bounds the node accepts.

use std::time::Duration;

use serde::Deserialize;
use switchboard_policy::PolicyLimits;

/// Budgets of every tenant's plugin on this node. Unset fields keep the defaults of
/// [`PolicyLimits`]; a value outside its bounds is refused with a [`BudgetError`] naming it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginSettings {
    /// Fuel (roughly: wasm operators executed) per hook call, and for making an instance.
    /// Default 10,000,000; 10,000 to 10,000,000,000.
    pub fuel_per_call: u64,
    /// Wall-clock deadline of one hook call, in milliseconds. Default 10; 1 to 1,000. Heavy
    /// plugins (Python's interpreter) need more on a loaded machine.
    pub deadline_ms: u64,
    /// Linear memory of one instance (all its memories together), in bytes. Default 16 MiB;
    /// 1 MiB to 1 GiB.
    pub max_memory_bytes: u64,
    /// Largest plugin the node accepts, in bytes (a tenant's quota may be lower). Default
    /// 20 MiB; 64 KiB to the API's upload body limit (24 MiB).
    pub max_plugin_bytes: u64,
    /// Counter names (`host.counter-add`) per serving version; each is a `/metrics` series.
    /// Default 64; 1 to 256.
    pub max_counters_per_tenant: u64,
}

impl Default for PluginSettings {
    fn default() -> Self {
        let d = PolicyLimits::default();
        PluginSettings {
            fuel_per_call: d.fuel_per_call,
            deadline_ms: d.deadline.as_millis() as u64,
            max_memory_bytes: d.max_memory_bytes as u64,
            max_plugin_bytes: d.max_plugin_bytes as u64,
            max_counters_per_tenant: d.max_counters_per_tenant as u64,
        }
    }
}

/// A `[plugins]` value outside the bounds the node accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugins.{field} = {value} is out of bounds: {min} to {max}")]
pub struct BudgetError {
    /// The field, as written in the config file.
    pub field: &'static str,
    pub value: u64,
    pub min: u64,
    pub max: u64,
}

impl PluginSettings {
    /// Every field with its value and bounds (inclusive).
    fn fields(&self) -> [(&'static str, u64, u64, u64); 5] {
        let upload_max = switchboard_admin::http::UPLOAD_BODY_LIMIT as u64;
        [
            ("fuel_per_call", self.fuel_per_call, 10_000, 10_000_000_000),
            ("deadline_ms", self.deadline_ms, 1, 1_000),
            ("max_memory_bytes", self.max_memory_bytes, 1 << 20, 1 << 30),
            (
                "max_plugin_bytes",
                self.max_plugin_bytes,
                64 << 10,
                upload_max,
            ),
            (
                "max_counters_per_tenant",
                self.max_counters_per_tenant,
                1,
                256,
            ),
        ]
    }

    /// The first value outside its bounds, if any.
    pub fn validate(&self) -> Result<(), BudgetError> {
        for (field, value, min, max) in self.fields() {
            if !(min..=max).contains(&value) {
                return Err(BudgetError {
                    field,
                    value,
                    min,
                    max,
                });
            }
        }
        Ok(())
    }

    /// `limits` with these budgets.
    pub fn apply(&self, limits: PolicyLimits) -> PolicyLimits {
        // Validated values fit a usize on the 64-bit targets the node runs on.
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        PolicyLimits {
            fuel_per_call: self.fuel_per_call,
            deadline: Duration::from_millis(self.deadline_ms),
            max_memory_bytes: size(self.max_memory_bytes),
            max_plugin_bytes: size(self.max_plugin_bytes),
            max_counters_per_tenant: size(self.max_counters_per_tenant),
            ..limits
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_engines_and_valid() {
        let s = PluginSettings::default();
        s.validate().unwrap();
        assert_eq!(
            s.apply(PolicyLimits::default()),
            PolicyLimits::default(),
            "the defaults change nothing"
        );
    }

    #[test]
    fn values_out_of_bounds_are_refused_naming_the_field() {
        type Case = (fn(&mut PluginSettings), &'static str);
        let cases: [Case; 6] = [
            (|s| s.fuel_per_call = 0, "fuel_per_call"),
            (|s| s.deadline_ms = 0, "deadline_ms"),
            (|s| s.deadline_ms = 1_001, "deadline_ms"),
            (|s| s.max_memory_bytes = 4096, "max_memory_bytes"),
            (|s| s.max_plugin_bytes = 1 << 30, "max_plugin_bytes"),
            (|s| s.max_counters_per_tenant = 0, "max_counters_per_tenant"),
        ];
        for (set, field) in cases {
            let mut s = PluginSettings::default();
            set(&mut s);
            let e = s.validate().unwrap_err();
            assert_eq!(e.field, field);
            assert!(
                e.to_string().starts_with(&format!("plugins.{field} = ")),
                "{e}"
            );
        }
    }

    #[test]
    fn configured_budgets_reach_the_engines_limits() {
        let s = PluginSettings {
            fuel_per_call: 50_000,
            deadline_ms: 250,
            max_memory_bytes: 32 << 20,
            max_plugin_bytes: 1 << 20,
            max_counters_per_tenant: 8,
        };
        s.validate().unwrap();
        let l = s.apply(PolicyLimits::default());
        assert_eq!(l.fuel_per_call, 50_000);
        assert_eq!(l.deadline, Duration::from_millis(250));
        assert_eq!(l.max_memory_bytes, 32 << 20);
        assert_eq!(l.max_plugin_bytes, 1 << 20);
        assert_eq!(l.max_counters_per_tenant, 8);
        assert_eq!(l.epoch_tick, PolicyLimits::default().epoch_tick);
    }
}
