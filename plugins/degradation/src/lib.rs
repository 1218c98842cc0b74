//! Reference policy: the load ladder, with the level at which each kind of work is shed taken
//! from config.
//!
//! | config key            | sheds                                   | default |
//! |-----------------------|-----------------------------------------|---------|
//! | `shed_presence_at`    | presence updates                        | 1       |
//! | `shed_receipts_at`    | receipts                                | 2       |
//! | `defer_background_at` | deliveries to background members (held) | 3       |
//!
//! Each is a load level (0 = normal ... 3 = critical): at that level and above the work is
//! shed. `never` (or any level above 3) never sheds it; 0 always does. With no config this is
//! the SDK's built-in ladder. Core messaging is never shed by this hook.
//!
//! Messages, receipts and flags use the SDK's defaults.

use switchboard_plugin::{host, LoadInfo, LogLevel, Policy, Shedding};

/// See the crate docs.
#[derive(Debug, Default)]
pub struct Degradation;

/// The level configured at `key`, `default` when missing, `u8::MAX` for `never`.
fn level(key: &str, default: u8) -> u8 {
    match host::config(key) {
        Some(value) if value.trim().eq_ignore_ascii_case("never") => u8::MAX,
        Some(_) => host::config_or(key, default),
        None => default,
    }
}

impl Policy for Degradation {
    fn on_load(&self, load: &LoadInfo) -> Shedding {
        let shedding = Shedding {
            presence: load.level >= level("shed_presence_at", 1),
            receipts: load.level >= level("shed_receipts_at", 2),
            background_delivery: load.level >= level("defer_background_at", 3),
        };
        host::log(
            LogLevel::Info,
            &format!("load level {}: shedding {shedding:?}", load.level),
        );
        shedding
    }
}

switchboard_plugin::export_policy!(Degradation);

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_plugin::testing::{self, TestHost};
    use switchboard_plugin::{Lane, ReceiptAction, ReceiptKind, Verdict};

    fn shed(level: u8) -> Shedding {
        Degradation.on_load(&testing::load(level))
    }

    #[test]
    fn without_config_it_is_the_built_in_ladder() {
        let host = TestHost::builder().install();
        for level in 0..=4 {
            assert_eq!(shed(level), Shedding::ladder(level), "level {level}");
        }
        assert_eq!(host.logs().len(), 5, "each level change is logged");
    }

    #[test]
    fn levels_come_from_config() {
        let _host = TestHost::builder()
            .config("shed_receipts_at", "1")
            .config("shed_presence_at", "never")
            .config("defer_background_at", "2")
            .install();
        assert_eq!(shed(0), Shedding::NONE);
        assert_eq!(
            shed(1),
            Shedding {
                receipts: true,
                presence: false,
                background_delivery: false
            }
        );
        assert_eq!(
            shed(3),
            Shedding {
                receipts: true,
                presence: false,
                background_delivery: true
            }
        );
    }

    #[test]
    fn zero_always_sheds_and_a_bad_value_keeps_the_default() {
        let host = TestHost::builder()
            .config("shed_presence_at", "0")
            .config("shed_receipts_at", "soon")
            .install();
        let normal = shed(0);
        assert!(normal.presence);
        assert!(!normal.receipts);
        assert!(shed(2).receipts);
        assert!(host.logs().iter().any(|log| log.level == LogLevel::Warn));
    }

    #[test]
    fn other_hooks_are_the_defaults() {
        assert_eq!(
            Degradation.on_message(&testing::message("g", "bob", b"hi")),
            Verdict::accept(Lane::Normal)
        );
        assert_eq!(
            Degradation.on_receipt(&testing::receipt("g", "bob", ReceiptKind::Read, 5_000)),
            ReceiptAction::Forward
        );
    }
}
