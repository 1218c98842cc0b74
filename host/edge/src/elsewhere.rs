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
    /// Whether `user` has a session on another live node.
    fn connected_elsewhere(&self, tenant: &TenantId, user: &UserId) -> bool;
}

/// The view in use, installed once the cluster part runs (`Hub::set_elsewhere`).
pub(crate) type SharedElsewhere = Arc<parking_lot::RwLock<Option<Arc<dyn Elsewhere>>>>;

/// Whether `user` is connected to another node, as far as `shared` knows.
pub(crate) fn connected_elsewhere(
    shared: &SharedElsewhere,
    tenant: &TenantId,
    user: &UserId,
) -> bool {
    shared
        .read()
        .as_ref()
        .is_some_and(|e| e.connected_elsewhere(tenant, user))
}
