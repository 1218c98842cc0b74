//! Hostile: returns far more than the node keeps. `on-message` rejects with a 10 MiB reason
//! (the node keeps 256 bytes); `evaluate-flags` returns 100 000 flags. The node must bound what
//! it copies out of the instance (or treat the call as failed) and stay responsive. Receipts
//! and load are the SDK's defaults.

use switchboard_plugin::{Flag, FlagContext, MessageInfo, Policy, Verdict};

/// The reject reason's size: 10 MiB.
pub const REASON_BYTES: usize = 10 << 20;

/// How many flags `evaluate-flags` returns.
pub const FLAGS: usize = 100_000;

/// See the crate docs.
#[derive(Debug, Default)]
pub struct HugeOutput;

impl Policy for HugeOutput {
    fn on_message(&self, _message: &MessageInfo) -> Verdict {
        // Not Verdict::reject, which truncates as the node would.
        Verdict::Reject("x".repeat(REASON_BYTES))
    }

    fn evaluate_flags(&self, _context: &FlagContext) -> Vec<Flag> {
        (0..FLAGS)
            .map(|i| Flag::new(format!("flag-{i:06}"), i % 2 == 0))
            .collect()
    }
}

switchboard_plugin::export_policy!(HugeOutput);

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_plugin::testing;

    #[test]
    fn outputs_are_huge() {
        let verdict = HugeOutput.on_message(&testing::message("g", "mallory", b"hi"));
        assert_eq!(verdict.reject_reason().map(str::len), Some(REASON_BYTES));
        let flags = HugeOutput.evaluate_flags(&testing::flag_context("mallory", None));
        assert_eq!(flags.len(), FLAGS);
    }
}
