//! Reference policy: which lane a message takes.
//!
//! In order, the first that applies:
//! 1. a body starting with `!spam` is rejected ("spam is not allowed here");
//! 2. a sender listed in config `vip_users` (comma-separated) → high lane, and offline members
//!    are notified;
//! 3. a body starting with `!urgent` → high lane;
//! 4. a body larger than config `large_bytes` (default 16384) → low lane;
//! 5. otherwise the normal lane.
//!
//! Receipts, flags and load use the SDK's defaults.
//!
//! The configuration is read and parsed once per instance, when the policy is created
//! ([`Priority::from_config`]): a tenant's configuration never changes under an instance, and
//! a message then costs no host call and no allocation. (A `large_bytes` that does not parse
//! is logged once per instance, not per message.)

use std::collections::BTreeSet;

use switchboard_plugin::{host, Lane, MessageInfo, Policy, Verdict};

/// `large_bytes` when it is not configured.
pub const DEFAULT_LARGE_BYTES: u32 = 16_384;

/// See the crate docs. [`Default`] is the policy with no configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priority {
    /// Config `vip_users`, parsed.
    vip_users: BTreeSet<String>,
    /// Config `large_bytes`, parsed (or the default).
    large_bytes: u32,
}

impl Default for Priority {
    fn default() -> Self {
        Priority {
            vip_users: BTreeSet::new(),
            large_bytes: DEFAULT_LARGE_BYTES,
        }
    }
}

impl Priority {
    /// The policy for the tenant's configuration (two host calls; an invalid `large_bytes`
    /// is logged and the default used).
    pub fn from_config() -> Self {
        Priority {
            vip_users: host::config_list("vip_users").into_iter().collect(),
            large_bytes: host::config_or("large_bytes", DEFAULT_LARGE_BYTES),
        }
    }
}

impl Policy for Priority {
    fn on_message(&self, message: &MessageInfo) -> Verdict {
        if message.body_prefix.starts_with(b"!spam") {
            host::counter_add("priority_spam_rejected", 1);
            return Verdict::reject("spam is not allowed here");
        }
        if self.vip_users.contains(message.sender.as_str()) {
            return Verdict::accept_and_notify(Lane::High);
        }
        if message.body_prefix.starts_with(b"!urgent") {
            return Verdict::accept(Lane::High);
        }
        if message.body_size > self.large_bytes {
            return Verdict::accept(Lane::Low);
        }
        Verdict::accept(Lane::Normal)
    }
}

switchboard_plugin::export_policy!(Priority, Priority::from_config());

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_plugin::testing::{self, TestHost};
    use switchboard_plugin::{Delivery, LogLevel, ReceiptAction, ReceiptKind, Shedding};

    /// What an instance created now (with the installed host's configuration) answers.
    fn verdict(sender: &str, body: &[u8]) -> Verdict {
        Priority::from_config().on_message(&testing::message("g", sender, body))
    }

    #[test]
    fn vip_senders_go_high_and_notify_offline_members() {
        let _host = TestHost::builder()
            .config("vip_users", "ceo, cto")
            .install();
        assert_eq!(
            verdict("cto", b"hello"),
            Verdict::Accept(Delivery {
                lane: Lane::High,
                notify_offline: true
            })
        );
        assert_eq!(verdict("intern", b"hello"), Verdict::accept(Lane::Normal));
        assert_eq!(
            verdict("ce", b"hello"),
            Verdict::accept(Lane::Normal),
            "whole names only"
        );
    }

    #[test]
    fn urgent_marker_goes_high_without_notification() {
        let _host = TestHost::builder().install();
        assert_eq!(
            verdict("bob", b"!urgent the build is red"),
            Verdict::accept(Lane::High)
        );
        assert_eq!(
            verdict("bob", b"not !urgent"),
            Verdict::accept(Lane::Normal)
        );
    }

    #[test]
    fn large_bodies_go_low() {
        let host = TestHost::builder().install();
        let sized = |size: u32| MessageInfo {
            body_size: size,
            ..testing::message("g", "bob", b"data")
        };
        assert_eq!(
            Priority::from_config().on_message(&sized(DEFAULT_LARGE_BYTES)),
            Verdict::accept(Lane::Normal)
        );
        assert_eq!(
            Priority::from_config().on_message(&sized(DEFAULT_LARGE_BYTES + 1)),
            Verdict::accept(Lane::Low)
        );

        host.set_config("large_bytes", "100");
        assert_eq!(
            Priority::from_config().on_message(&sized(101)),
            Verdict::accept(Lane::Low)
        );
        assert_eq!(
            Priority::from_config().on_message(&sized(100)),
            Verdict::accept(Lane::Normal)
        );

        host.set_config("large_bytes", "lots");
        assert_eq!(
            Priority::from_config().on_message(&sized(101)),
            Verdict::accept(Lane::Normal)
        );
        assert_eq!(
            host.logs()[0].level,
            LogLevel::Warn,
            "a bad value is reported"
        );
    }

    #[test]
    fn spam_is_rejected_before_anything_else_and_counted() {
        let host = TestHost::builder().config("vip_users", "ceo").install();
        assert_eq!(
            verdict("ceo", b"!spam buy now"),
            Verdict::Reject("spam is not allowed here".into())
        );
        assert_eq!(host.counter("priority_spam_rejected"), 1);
    }

    #[test]
    fn configuration_is_read_once_when_the_policy_is_created() {
        let host = TestHost::builder()
            .config("vip_users", " ceo,, cto ")
            .config("large_bytes", "100")
            .install();
        let policy = Priority::from_config();
        assert_eq!(
            policy,
            Priority {
                vip_users: ["ceo".to_string(), "cto".to_string()].into(),
                large_bytes: 100,
            }
        );
        // What the node never does to a live instance: the policy keeps what it read.
        host.set_config("vip_users", "intern");
        host.set_config("large_bytes", "lots");
        let sized = |size: u32| MessageInfo {
            body_size: size,
            ..testing::message("g", "bob", b"data")
        };
        assert_eq!(
            policy.on_message(&testing::message("g", "ceo", b"hi")),
            Verdict::accept_and_notify(Lane::High)
        );
        assert_eq!(policy.on_message(&sized(101)), Verdict::accept(Lane::Low));
        assert!(host.logs().is_empty(), "nothing read per message");

        // A new instance reads the configuration again, and reports a bad value once.
        let policy = Priority::from_config();
        assert_eq!(policy.large_bytes, DEFAULT_LARGE_BYTES);
        assert_eq!(
            policy.on_message(&testing::message("g", "intern", b"hi")),
            Verdict::accept_and_notify(Lane::High)
        );
        for _ in 0..3 {
            policy.on_message(&sized(DEFAULT_LARGE_BYTES + 1));
        }
        assert_eq!(host.logs().len(), 1, "{:?}", host.logs());
        assert_eq!(host.logs()[0].level, LogLevel::Warn);
    }

    #[test]
    fn default_is_the_unconfigured_policy() {
        let _host = TestHost::builder().install();
        assert_eq!(Priority::default(), Priority::from_config());
    }

    #[test]
    fn other_hooks_are_the_defaults() {
        assert_eq!(
            Priority::default().on_receipt(&testing::receipt("g", "bob", ReceiptKind::Read, 500)),
            ReceiptAction::Forward
        );
        assert!(Priority::default()
            .evaluate_flags(&testing::flag_context("bob", None))
            .is_empty());
        assert_eq!(
            Priority::default().on_load(&testing::load(2)),
            Shedding::ladder(2)
        );
    }
}
