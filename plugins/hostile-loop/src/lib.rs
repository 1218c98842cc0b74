//! Hostile: `on-message` never returns. The node must interrupt it (fuel or epoch deadline),
//! count it, and use its default verdict. The other hooks are the SDK's defaults.

use std::hint::black_box;

use switchboard_plugin::{MessageInfo, Policy, Verdict};

/// See the crate docs.
#[derive(Debug, Default)]
pub struct Loop;

impl Policy for Loop {
    fn on_message(&self, _message: &MessageInfo) -> Verdict {
        // black_box: a loop that visibly does something, so it is neither removed nor turned
        // into a trap by the optimiser.
        let mut spins = 0u64;
        loop {
            spins = black_box(spins.wrapping_add(1));
        }
    }
}

switchboard_plugin::export_policy!(Loop);
