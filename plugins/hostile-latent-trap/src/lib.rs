//! Hostile: a latent bug. Every hook behaves — so the upload self-test passes — until a
//! message's body starts with `!boom`, which makes `on-message` panic (a trap). Real traffic
//! that hits the bug must get the default verdict, and a node that sees the version keep
//! failing must roll it back by itself.

use switchboard_plugin::{Lane, MessageInfo, Policy, Verdict};

/// See the crate docs.
#[derive(Debug, Default)]
pub struct LatentTrap;

impl Policy for LatentTrap {
    fn on_message(&self, message: &MessageInfo) -> Verdict {
        if message.body_prefix.starts_with(b"!boom") {
            panic!("hostile-latent-trap: the bug real traffic finds");
        }
        // Low lane: the version's verdicts are visible to tests.
        Verdict::accept(Lane::Low)
    }
}

switchboard_plugin::export_policy!(LatentTrap);

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_plugin::testing::{self, TestHost};

    fn message(body: &[u8]) -> MessageInfo {
        testing::message("g", "u", body)
    }

    #[test]
    fn ordinary_messages_go_to_the_low_lane() {
        let _host = TestHost::builder().install();
        assert_eq!(
            LatentTrap.on_message(&message(b"hello")),
            Verdict::accept(Lane::Low)
        );
    }

    #[test]
    #[should_panic(expected = "real traffic finds")]
    fn boom_traps() {
        let _host = TestHost::builder().install();
        LatentTrap.on_message(&message(b"!boom"));
    }
}
