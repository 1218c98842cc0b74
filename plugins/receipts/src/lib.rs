//! Reference policy: what happens to receipts.
//!
//! - `delivered` receipts in groups of more than 100 members are dropped (no one reads "delivered
//!   to 5000 people" one by one);
//! - other receipts in groups of more than config `aggregate_over` members (default 20) are
//!   aggregated ("read by 37 of 120");
//! - the rest are forwarded to the message's sender.
//!
//! Messages, flags and load use the SDK's defaults.

use switchboard_plugin::{host, Policy, ReceiptAction, ReceiptInfo, ReceiptKind};

/// `aggregate_over` when it is not configured.
pub const DEFAULT_AGGREGATE_OVER: u32 = 20;

/// Groups larger than this drop `delivered` receipts.
pub const DROP_DELIVERED_OVER: u32 = 100;

/// See the crate docs.
#[derive(Debug, Default)]
pub struct Receipts;

impl Policy for Receipts {
    fn on_receipt(&self, receipt: &ReceiptInfo) -> ReceiptAction {
        if receipt.kind == ReceiptKind::Delivered && receipt.group_size > DROP_DELIVERED_OVER {
            return ReceiptAction::Drop;
        }
        if receipt.group_size > host::config_or("aggregate_over", DEFAULT_AGGREGATE_OVER) {
            return ReceiptAction::Aggregate;
        }
        ReceiptAction::Forward
    }
}

switchboard_plugin::export_policy!(Receipts);

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_plugin::testing::{self, TestHost};
    use switchboard_plugin::{Lane, Shedding, Verdict};

    fn action(kind: ReceiptKind, group_size: u32) -> ReceiptAction {
        Receipts.on_receipt(&testing::receipt("g", "bob", kind, group_size))
    }

    #[test]
    fn small_groups_forward_large_groups_aggregate() {
        let _host = TestHost::builder().install();
        for kind in [ReceiptKind::Delivered, ReceiptKind::Read] {
            assert_eq!(action(kind, 2), ReceiptAction::Forward);
            assert_eq!(action(kind, 20), ReceiptAction::Forward);
            assert_eq!(action(kind, 21), ReceiptAction::Aggregate);
            assert_eq!(action(kind, 100), ReceiptAction::Aggregate);
        }
    }

    #[test]
    fn delivered_receipts_in_very_large_groups_are_dropped_read_receipts_aggregated() {
        let _host = TestHost::builder().install();
        assert_eq!(action(ReceiptKind::Delivered, 101), ReceiptAction::Drop);
        assert_eq!(action(ReceiptKind::Read, 101), ReceiptAction::Aggregate);
        assert_eq!(action(ReceiptKind::Read, 100_000), ReceiptAction::Aggregate);
    }

    #[test]
    fn the_threshold_comes_from_config() {
        let host = TestHost::builder().config("aggregate_over", "5").install();
        assert_eq!(action(ReceiptKind::Read, 5), ReceiptAction::Forward);
        assert_eq!(action(ReceiptKind::Read, 6), ReceiptAction::Aggregate);
        host.set_config("aggregate_over", "1000");
        assert_eq!(action(ReceiptKind::Read, 500), ReceiptAction::Forward);
        assert_eq!(
            action(ReceiptKind::Delivered, 500),
            ReceiptAction::Drop,
            "drop still wins"
        );
    }

    #[test]
    fn other_hooks_are_the_defaults() {
        assert_eq!(
            Receipts.on_message(&testing::message("g", "bob", b"!spam")),
            Verdict::accept(Lane::Normal)
        );
        assert_eq!(Receipts.on_load(&testing::load(3)), Shedding::ladder(3));
    }
}
