//! Hostile: `on-message` panics, which traps (plugins are built with `panic = "abort"`). The
//! node must count it and use its default verdict. The other hooks are the SDK's defaults.

use switchboard_plugin::{MessageInfo, Policy, Verdict};

/// See the crate docs.
#[derive(Debug, Default)]
pub struct Trap;

impl Policy for Trap {
    fn on_message(&self, message: &MessageInfo) -> Verdict {
        panic!(
            "hostile-trap: panicking on a message from {}",
            message.sender
        )
    }
}

switchboard_plugin::export_policy!(Trap);

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_plugin::testing;

    #[test]
    #[should_panic(expected = "hostile-trap")]
    fn on_message_panics() {
        Trap.on_message(&testing::message("g", "mallory", b"hi"));
    }

    #[test]
    fn on_load_is_the_default() {
        assert_eq!(
            Trap.on_load(&testing::load(2)),
            switchboard_plugin::Shedding::ladder(2)
        );
    }
}
