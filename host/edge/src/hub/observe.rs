//! What an operator reads about the node's sessions and tenants (the admin API's
//! connections and tenant-traffic views). Read-only walks of the session index: call them per
//! request, never per message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use switchboard_core::{PresenceState, TenantId, UserId};

use super::Hub;
use crate::metrics::TenantTrafficSnapshot;
use crate::outbox::PushStream;

/// One session as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: u64,
    pub tenant: TenantId,
    pub user: UserId,
    pub presence: PresenceState,
    /// When it opened (ms since the Unix epoch).
    pub connected_at_ms: u64,
    pub remote: Option<SocketAddr>,
    /// Groups it is subscribed to.
    pub groups: usize,
    /// Pushes queued for it now, over its four push streams.
    pub queued: usize,
    pub queued_bytes: usize,
    /// Its queue overflowed and its writer is catching it up from the log.
    pub catching_up: bool,
    /// Marked for disconnection as a slow consumer (`disconnect_slow_consumers`).
    pub slow: bool,
}

/// A tenant's open sessions on this node, by presence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceCounts {
    pub foreground: u32,
    pub background: u32,
}

impl Hub {
    /// Every open session (of `tenant` only, if given), in no particular order. Walks the
    /// session index: O(sessions) per call.
    pub fn session_infos(&self, tenant: Option<&TenantId>) -> Vec<SessionInfo> {
        let mut out = Vec::new();
        self.sessions.for_each(tenant, |s| {
            out.push(SessionInfo {
                id: s.id,
                tenant: s.tenant.clone(),
                user: s.user.clone(),
                presence: s.presence(),
                connected_at_ms: s.connected_at_ms,
                remote: s.remote,
                groups: s.groups.lock().len(),
                queued: PushStream::ALL.iter().map(|&p| s.outbox.depth(p)).sum(),
                queued_bytes: s.outbox.bytes(),
                catching_up: s.catch_up.load(Ordering::Relaxed),
                slow: s.slow.load(Ordering::Relaxed),
            });
        });
        out
    }

    /// Open sessions per tenant, by presence (tenants without a session are absent).
    pub fn sessions_by_tenant(&self) -> HashMap<TenantId, PresenceCounts> {
        let mut out: HashMap<TenantId, PresenceCounts> = HashMap::new();
        self.sessions.for_each(None, |s| {
            let c = out.entry(s.tenant.clone()).or_default();
            match s.presence() {
                PresenceState::Foreground => c.foreground += 1,
                PresenceState::Background => c.background += 1,
            }
        });
        out
    }

    /// `tenant`'s messages and deliveries on this node since it started.
    pub fn tenant_traffic(&self, tenant: &TenantId) -> TenantTrafficSnapshot {
        self.metrics.tenant_traffic(tenant)
    }
}
