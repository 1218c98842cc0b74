//! The `Policy` trait's defaults and the conveniences on the world's types, natively.

use switchboard_plugin::testing::{self, TestHost};
use switchboard_plugin::{
    defaults, host, Delivery, Flag, Lane, Policy, ReceiptAction, ReceiptKind, Shedding, Verdict,
    MAX_REJECT_REASON_BYTES,
};

/// Overrides nothing: every hook is the node's default.
#[derive(Default)]
struct Defaults;
impl Policy for Defaults {}

/// Overrides one hook and falls back to the default in it.
struct OnlyMessages {
    high_from: String,
}
impl Policy for OnlyMessages {
    fn on_message(&self, message: &switchboard_plugin::MessageInfo) -> Verdict {
        if message.sender == self.high_from {
            Verdict::accept_and_notify(Lane::High)
        } else {
            defaults::on_message(message)
        }
    }
}

// Both forms of the export macro compile natively (and only type-check there).
switchboard_plugin::export_policy!(Defaults);
mod with_init {
    use super::*;
    switchboard_plugin::export_policy!(
        OnlyMessages,
        OnlyMessages {
            high_from: host::config("boss").unwrap_or_default(),
        }
    );
}

#[test]
fn every_default_is_the_nodes_default() {
    // The defaults never call the host: no TestHost needed.
    let policy = Defaults;
    assert_eq!(
        policy.on_message(&testing::message("g", "alice", b"hi")),
        Verdict::Accept(Delivery {
            lane: Lane::Normal,
            notify_offline: false
        })
    );
    for kind in [ReceiptKind::Delivered, ReceiptKind::Read] {
        for group_size in [2, 1_000] {
            assert_eq!(
                policy.on_receipt(&testing::receipt("g", "bob", kind, group_size)),
                ReceiptAction::Forward
            );
        }
    }
    assert_eq!(
        policy.evaluate_flags(&testing::flag_context("alice", Some("g"))),
        Vec::<Flag>::new()
    );
}

#[test]
fn the_default_load_ladder_sheds_presence_then_receipts_then_background_delivery() {
    let check = |level: u8, presence: bool, receipts: bool, background_delivery: bool| {
        assert_eq!(
            Defaults.on_load(&testing::load(level)),
            Shedding {
                receipts,
                presence,
                background_delivery
            },
            "level {level}"
        );
    };
    check(0, false, false, false);
    check(1, true, false, false);
    check(2, true, true, false);
    check(3, true, true, true);
    check(u8::MAX, true, true, true);
    assert_eq!(Shedding::ladder(0), Shedding::NONE);
    assert_eq!(Shedding::default(), Shedding::NONE);
}

#[test]
fn an_override_keeps_the_other_defaults() {
    let policy = OnlyMessages {
        high_from: "boss".into(),
    };
    let verdict = policy.on_message(&testing::message("g", "boss", b"now"));
    assert_eq!(
        verdict.delivery(),
        Some(Delivery {
            lane: Lane::High,
            notify_offline: true
        })
    );
    assert_eq!(
        policy.on_message(&testing::message("g", "intern", b"hi")),
        Verdict::accept(Lane::Normal)
    );
    assert_eq!(policy.on_load(&testing::load(2)), Shedding::ladder(2));
}

#[test]
fn verdict_conveniences() {
    let reject = Verdict::reject("no");
    assert!(reject.is_reject() && !reject.is_accept());
    assert_eq!(reject.reject_reason(), Some("no"));
    assert_eq!(reject.delivery(), None);
    assert_eq!(Verdict::accept(Lane::Low).reject_reason(), None);
    assert_eq!(
        Delivery::default(),
        Delivery {
            lane: Lane::Normal,
            notify_offline: false
        }
    );

    // Truncated like the node would, at a character boundary.
    let long = Verdict::reject("é".repeat(MAX_REJECT_REASON_BYTES));
    let reason = long.reject_reason().unwrap();
    assert_eq!(reason.len(), MAX_REJECT_REASON_BYTES);
    let odd = Verdict::reject(format!("x{}", "é".repeat(MAX_REJECT_REASON_BYTES)));
    assert_eq!(
        odd.reject_reason().unwrap().len(),
        MAX_REJECT_REASON_BYTES - 1
    );
}

#[test]
fn the_init_expression_may_use_the_host() {
    let _host = TestHost::builder().config("boss", "ceo").install();
    let policy = OnlyMessages {
        high_from: host::config("boss").unwrap_or_default(),
    };
    assert!(policy
        .on_message(&testing::message("g", "ceo", b"x"))
        .delivery()
        .is_some_and(|d| d.lane == Lane::High));
}
