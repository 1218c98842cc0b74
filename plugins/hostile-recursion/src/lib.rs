//! Hostile: `on-message` recurses without bound. The node must contain the stack overflow (a
//! trap, from wasm's call stack limit or the shadow stack running out), and use its default
//! verdict. The other hooks are the SDK's defaults.

use std::hint::black_box;

use switchboard_plugin::{MessageInfo, Policy, Verdict};

/// See the crate docs.
#[derive(Debug, Default)]
pub struct Recursion;

/// One frame: a little shadow-stack data, and work after the call so it cannot become a loop.
#[inline(never)]
fn descend(depth: u64) -> u64 {
    let frame = black_box([depth; 8]);
    if black_box(true) {
        descend(depth + 1).wrapping_add(frame[(depth % 8) as usize])
    } else {
        depth
    }
}

impl Policy for Recursion {
    fn on_message(&self, message: &MessageInfo) -> Verdict {
        let depth = descend(u64::from(message.body_size));
        Verdict::reject(format!("returned from depth {depth}"))
    }
}

switchboard_plugin::export_policy!(Recursion);
