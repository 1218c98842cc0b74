//! Hostile: `on-message` reads a file with `std::fs`, which makes the component import
//! `wasi:filesystem`. The node must refuse to load it (and, were it loaded, it would find no
//! file: it would reject with what it read). The other hooks are the SDK's defaults.

use switchboard_plugin::{MessageInfo, Policy, Verdict};

/// See the crate docs.
#[derive(Debug, Default)]
pub struct WasiFs;

impl Policy for WasiFs {
    fn on_message(&self, _message: &MessageInfo) -> Verdict {
        match std::fs::read_to_string("/etc/passwd") {
            Ok(contents) => Verdict::reject(format!("read the node's files: {contents}")),
            Err(_) => Verdict::accept(switchboard_plugin::Lane::Normal),
        }
    }
}

switchboard_plugin::export_policy!(WasiFs);
