//! Presence on other nodes (cluster mode). The hub tells the node's cluster part what its
//! own sessions of a user add up to whenever that changes, and asks it whether a user is
//! connected to another node before a push notification goes out; the cluster part hands
//! other nodes' changes back through [`crate::Hub::remote_presence`]. On one node nothing
//! is installed and presence is this node's sessions only.

use std::sync::Arc;

use switchboard_core::{PresenceState, TenantId, UserId};

/// The node's view of presence on the other nodes of its cluster.
pub trait Elsewhere: Send + Sync + 'static {
    /// This node's sessions of `user` now add up to `state` (`None`: it has none left).
    /// Called under the user's membership lock: must not block.
    fn local_presence(&self, tenant: &TenantId, user: &UserId, state: Option<PresenceState>);
    /// What `user`'s sessions on the other live nodes add up to (`None`: it has none).
    fn presence_elsewhere(&self, tenant: &TenantId, user: &UserId) -> Option<PresenceState>;
}

/// The view in use, installed once the cluster part runs (`Hub::set_elsewhere`).
pub(crate) type SharedElsewhere = Arc<parking_lot::RwLock<Option<Arc<dyn Elsewhere>>>>;

/// What `user`'s sessions on other nodes add up to, as far as `shared` knows (`None` on
/// one node).
pub(crate) fn presence_elsewhere(
    shared: &SharedElsewhere,
    tenant: &TenantId,
    user: &UserId,
) -> Option<PresenceState> {
    shared
        .read()
        .as_ref()
        .and_then(|e| e.presence_elsewhere(tenant, user))
}

/// A user's presence over all nodes: foreground if it is anywhere.
pub(crate) fn combined(
    here: Option<PresenceState>,
    elsewhere: Option<PresenceState>,
) -> Option<PresenceState> {
    match (here, elsewhere) {
        (None, None) => None,
        (Some(PresenceState::Foreground), _) | (_, Some(PresenceState::Foreground)) => {
            Some(PresenceState::Foreground)
        }
        _ => Some(PresenceState::Background),
    }
}
