//! What other nodes committed, as the node's hub receives it: a message from a commit
//! notice ([`crate::fanout`]) or only a group's head ([`crate::heads`]).

use switchboard_core::{GroupId, TenantId};
use switchboard_store::StoredMessage;

/// Committed messages from other nodes waiting for the node to deliver them.
pub const COMMITTED_QUEUE: usize = 4096;

/// What another node committed to a group, for this node's sessions.
#[derive(Debug, Clone)]
pub struct Committed {
    pub tenant: TenantId,
    pub group: GroupId,
    pub news: News,
}

/// A committed message (a commit notice), or only the group's head (a head announcement,
/// `crate::heads`): the sessions read up to it from the log.
#[derive(Debug, Clone)]
pub enum News {
    Message(StoredMessage),
    Head(u64),
}
