//! Heavy, but within budget: `on-message` spins config `spins` times (default 100,000) and
//! then accepts on the normal lane. A tenant whose plugin uses nearly all of its fuel on
//! every message, without ever failing — so the node neither falls back nor opens the
//! tenant's circuit breaker — is the worst neighbour a well-behaved plugin can be. Used by
//! the multi-tenant isolation test (`docs/reliability.md`, "Plugin isolation").
//!
//! The other hooks are the SDK's defaults.

use std::hint::black_box;

use switchboard_plugin::{host, Lane, MessageInfo, Policy, Verdict};

/// `spins` when it is not configured.
pub const DEFAULT_SPINS: u64 = 100_000;

/// See the crate docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heavy {
    /// Config `spins`, read once per instance.
    spins: u64,
}

impl Heavy {
    pub fn from_config() -> Self {
        Heavy {
            spins: host::config_or("spins", DEFAULT_SPINS),
        }
    }
}

impl Policy for Heavy {
    fn on_message(&self, _message: &MessageInfo) -> Verdict {
        // black_box: the loop must run, not be folded into its result.
        let mut acc = 0u64;
        for i in 0..self.spins {
            acc = black_box(acc.wrapping_add(i));
        }
        black_box(acc);
        Verdict::accept(Lane::Normal)
    }
}

switchboard_plugin::export_policy!(Heavy, Heavy::from_config());

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_plugin::testing::{self, TestHost};

    #[test]
    fn spins_then_accepts() {
        let _host = TestHost::builder().config("spins", "1000").install();
        let heavy = Heavy::from_config();
        assert_eq!(heavy.spins, 1000);
        assert_eq!(
            heavy.on_message(&testing::message("g", "u", b"x")),
            Verdict::accept(Lane::Normal)
        );
    }
}
