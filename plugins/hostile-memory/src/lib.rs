//! Hostile: `on-message` allocates (and keeps) memory without bound. The node must cap the
//! instance's memory; the allocation failure then traps, and the node uses its default
//! verdict. The other hooks are the SDK's defaults.

use std::hint::black_box;

use switchboard_plugin::{MessageInfo, Policy, Verdict};

/// Allocated per step: 1 MiB.
pub const CHUNK_BYTES: usize = 1 << 20;

/// See the crate docs.
#[derive(Debug, Default)]
pub struct Memory;

impl Policy for Memory {
    fn on_message(&self, _message: &MessageInfo) -> Verdict {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; CHUNK_BYTES];
            // Touch every page so the memory is really used, not only reserved.
            for page in chunk.chunks_mut(4096) {
                page[0] = 1;
            }
            hoard.push(black_box(chunk));
        }
    }
}

switchboard_plugin::export_policy!(Memory);
