//! The node's default for every hook: what the node does without a plugin (or when a
//! plugin's call fails), and what a [`Policy`](crate::Policy) does for the hooks it does not
//! override. Call these from an override to fall back to the default for some events.

use crate::{Flag, FlagContext, Lane, LoadInfo, MessageInfo, ReceiptAction, ReceiptInfo};
use crate::{Shedding, Verdict};

/// Accept on the normal lane, without offline notification.
pub fn on_message(_message: &MessageInfo) -> Verdict {
    Verdict::accept(Lane::Normal)
}

/// Forward the receipt to the message's sender.
pub fn on_receipt(_receipt: &ReceiptInfo) -> ReceiptAction {
    ReceiptAction::Forward
}

/// No flags.
pub fn evaluate_flags(_context: &FlagContext) -> Vec<Flag> {
    Vec::new()
}

/// The built-in ladder, [`Shedding::ladder`] of the load level.
pub fn on_load(load: &LoadInfo) -> Shedding {
    Shedding::ladder(load.level)
}
