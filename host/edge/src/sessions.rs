//! The node's users and their sessions: the index the fan-out of notices, receipts and
//! flags reads, the per-user membership lock, and the user's shared rate limits.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Mutex, MutexGuard};
use switchboard_core::{Limits, PresenceState, TenantId, UserId};
use tokio::sync::Notify;

use crate::outbox::{Outbox, PushStream};
use crate::rates::{RateLimiter, SessionRates, TenantRates, UserRates};
use crate::state::{Session, Told};
use crate::Key;

/// Locks striping users' membership changes (see [`Sessions::membership_lock`]).
const MEMBERSHIP_STRIPES: usize = 64;

/// A user's entry in the index: its sessions, and the rate limits they share. Without
/// sessions it is only kept while its buckets refill (see `rates.rs`).
#[derive(Debug)]
struct UserEntry {
    sessions: Vec<Arc<Session>>,
    rates: Arc<UserRates>,
    told: Arc<Told>,
}

/// Who a new session is, as its hello and connection say.
pub(crate) struct NewSession {
    pub(crate) tenant: TenantId,
    pub(crate) user: UserId,
    pub(crate) presence: PresenceState,
    /// When it opened (ms since the Unix epoch).
    pub(crate) connected_at_ms: u64,
    pub(crate) remote: Option<std::net::SocketAddr>,
}

/// Every user with a session on this node (or with rate limits still refilling).
pub(crate) struct Sessions {
    users: DashMap<Key<UserId>, UserEntry>,
    membership: Box<[Mutex<()>]>,
    next_session: AtomicU64,
}

impl Sessions {
    pub(crate) fn new() -> Self {
        Self {
            users: DashMap::new(),
            membership: (0..MEMBERSHIP_STRIPES).map(|_| Mutex::new(())).collect(),
            next_session: AtomicU64::new(1),
        }
    }

    /// Serialises one user's membership changes with the registration of its sessions
    /// (striped: a fixed set of locks, so nothing grows with the number of users). Taken
    /// before any fanout or session lock, never while holding one.
    pub(crate) fn membership_lock(&self, tenant: &TenantId, user: &UserId) -> MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (tenant, user).hash(&mut h);
        self.membership[(h.finish() as usize) % self.membership.len()].lock()
    }

    /// A new session of `user`, registered in its user's entry (so all the user's sessions
    /// share one set of buckets and one told presence). The caller holds the user's
    /// membership lock.
    pub(crate) fn register(
        &self,
        new: NewSession,
        outbox: Outbox,
        limits: &Limits,
        tenant_rates: Arc<TenantRates>,
    ) -> Arc<Session> {
        let NewSession {
            tenant,
            user,
            presence,
            connected_at_ms,
            remote,
        } = new;
        let mut entry = self
            .users
            .entry((tenant.clone(), user.clone()))
            .or_insert_with(|| UserEntry {
                sessions: Vec::new(),
                rates: Arc::new(UserRates::new(limits)),
                told: Arc::default(),
            });
        let session = Arc::new(Session {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            tenant,
            user,
            connected_at_ms,
            remote,
            outbox,
            catch_up: AtomicBool::new(false),
            sub_changes: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashSet::new()),
            presence: AtomicU8::new(match presence {
                PresenceState::Foreground => 0,
                PresenceState::Background => 1,
            }),
            told: entry.told.clone(),
            closed: AtomicBool::new(false),
            disconnect_when_slow: limits.disconnect_slow_consumers,
            slow: AtomicBool::new(false),
            evict: Notify::new(),
            rates: SessionRates {
                user: entry.rates.clone(),
                tenant: tenant_rates,
            },
        });
        entry.sessions.push(session.clone());
        session
    }

    /// Removes `session` from its user's entry. A user left without sessions is dropped if
    /// its buckets are full, else parked in `rates` until they are. The caller holds the
    /// user's membership lock.
    pub(crate) fn unregister(&self, session: &Session, rates: &RateLimiter, now: u64) {
        let key = (session.tenant.clone(), session.user.clone());
        let mut park = false;
        if let dashmap::Entry::Occupied(mut e) = self.users.entry(key.clone()) {
            e.get_mut().sessions.retain(|s| s.id != session.id);
            if e.get().sessions.is_empty() {
                // Full buckets are the same as new ones; others wait until they are.
                if e.get().rates.is_full(now) {
                    e.remove();
                } else {
                    park = true;
                }
            }
        }
        if park {
            rates.park(key, now); // after the entry's shard lock is released
        }
    }

    /// Drops the entries of users without sessions whose buckets have refilled.
    pub(crate) fn prune(&self, rates: &RateLimiter, now: u64) {
        for key in rates.expired(now) {
            self.users
                .remove_if(&key, |_, e| e.sessions.is_empty() && e.rates.is_full(now));
        }
    }

    pub(crate) fn sessions_of(&self, tenant: &TenantId, user: &UserId) -> Vec<Arc<Session>> {
        self.users
            .get(&(tenant.clone(), user.clone()))
            .map(|e| e.sessions.clone())
            .unwrap_or_default()
    }

    /// Whether `user` has a session on this node now.
    pub(crate) fn is_connected(&self, tenant: &TenantId, user: &UserId) -> bool {
        self.users
            .get(&(tenant.clone(), user.clone()))
            .is_some_and(|e| !e.sessions.is_empty())
    }

    /// Every session of `tenant` (walks the index).
    pub(crate) fn of_tenant(&self, tenant: &TenantId) -> Vec<Arc<Session>> {
        self.users
            .iter()
            .filter(|e| &e.key().0 == tenant)
            .flat_map(|e| e.value().sessions.clone())
            .collect()
    }

    /// Calls `f` for every open session (of `tenant` only, if given). Holds one shard of the
    /// index at a time; `f` must not touch the index.
    pub(crate) fn for_each(&self, tenant: Option<&TenantId>, mut f: impl FnMut(&Arc<Session>)) {
        for e in self.users.iter() {
            if tenant.is_some_and(|t| &e.key().0 != t) {
                continue;
            }
            for s in &e.value().sessions {
                f(s);
            }
        }
    }

    /// Users with an entry: those with a session, and those whose rate limits are still
    /// refilling after their last session closed (bounded: see `rates.rs`).
    pub(crate) fn tracked_users(&self) -> usize {
        self.users.len()
    }

    /// Bytes of frames queued for all sessions now (gauge; walks the sessions).
    pub(crate) fn queued_bytes(&self) -> usize {
        let mut total = 0;
        for e in self.users.iter() {
            for s in &e.value().sessions {
                total += s.outbox.bytes();
            }
        }
        total
    }

    /// Pushes queued right now over every session, per push stream (gauge for metrics;
    /// walks the sessions, so call it per scrape, not per message).
    pub(crate) fn queue_depths(&self) -> [(PushStream, usize); 4] {
        let mut depths = PushStream::ALL.map(|s| (s, 0));
        for e in self.users.iter() {
            for s in &e.value().sessions {
                for (stream, n) in &mut depths {
                    *n += s.outbox.depth(*stream);
                }
            }
        }
        depths
    }
}
