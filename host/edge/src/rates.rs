//! Rate limits per user and per tenant (`Limits::user_*`, `Limits::tenant_*`): the driver's
//! half. The decisions — which bucket a request takes from, the order, giving a token back,
//! what a refusal says, which users' buckets are parked — are `switchboard_router::rates`;
//! here are the node's monotonic clock for them, the lock around the parked users, the
//! `rate_limited_*` counters and the protocol error a refusal becomes.
//!
//! - **No lock on the request path.** A session holds `Arc`s of its user's and its tenant's
//!   buckets, so checking a request is one atomic compare-and-swap per bucket: no map lookup,
//!   no lock shared with other users.
//! - **Bounded memory.** A user's buckets are kept in the hub's user index; with its last
//!   session they are dropped if full, else parked until they have refilled (10 s with the
//!   defaults; see the router's module). At most: the connected users, plus the users who
//!   disconnected within the last refill time (and reconnects are themselves limited per
//!   tenant). A tenant's buckets live as long as the node: one small entry per tenant that
//!   has connected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use switchboard_core::{ErrorCode, Limits, UserId};
use switchboard_router::rates::{self as router, Parked, Refusal, Whose};

pub(crate) use switchboard_router::rates::{Limited, SessionRates, TenantRates, UserRates};

use crate::metrics::Metrics;
use crate::RequestError;

fn counter(kind: Limited, m: &Metrics) -> &AtomicU64 {
    match kind {
        Limited::Messages => &m.rate_limited_messages,
        Limited::Receipts => &m.rate_limited_receipts,
        Limited::Joins => &m.rate_limited_joins,
        Limited::Presence => &m.rate_limited_presence,
        Limited::Connections => &m.rate_limited_connections,
    }
}

/// The node's limits, its monotonic clock for them, and the queue of parked user buckets.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limits: Limits,
    started: Instant,
    parked: Mutex<Parked<crate::Key<UserId>>>,
    /// Test hook (feature `test-hooks`): when not `u64::MAX`, the buckets' clock stands still
    /// at this value, so a test can count refusals exactly however slow the machine is.
    #[cfg(feature = "test-hooks")]
    frozen_ms: AtomicU64,
}

impl RateLimiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            limits: limits.clone(),
            started: Instant::now(),
            parked: Mutex::new(Parked::new(limits)),
            #[cfg(feature = "test-hooks")]
            frozen_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Stops the buckets' clock where it is now (feature `test-hooks`).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn freeze(&self) {
        let now = self.now_ms();
        self.frozen_ms.store(now, Ordering::Relaxed);
    }

    /// Milliseconds on the node's monotonic clock (wall-clock steps do not move buckets).
    pub(crate) fn now_ms(&self) -> u64 {
        #[cfg(feature = "test-hooks")]
        {
            let frozen = self.frozen_ms.load(Ordering::Relaxed);
            if frozen != u64::MAX {
                return frozen;
            }
        }
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes a token of one of the user's buckets (`kind`), or the typed refusal (counted).
    pub(crate) fn admit_user(
        &self,
        metrics: &Metrics,
        rates: &UserRates,
        kind: Limited,
        user: &UserId,
    ) -> Result<(), RequestError> {
        rates
            .take(kind, &self.limits, self.now_ms())
            .map_err(|r| refusal(metrics, r, user, user))
    }

    /// A `Send`: the user's bucket, then the tenant's.
    pub(crate) fn admit_message(
        &self,
        metrics: &Metrics,
        rates: &SessionRates,
        user: &dyn std::fmt::Display,
        tenant: &dyn std::fmt::Display,
    ) -> Result<(), RequestError> {
        router::admit_message(rates, &self.limits, self.now_ms())
            .map_err(|r| refusal(metrics, r, user, tenant))
    }

    /// A new session of the tenant: under `tenant_max_connections` open ones, and a token
    /// of `tenant_connections`. On success the session counts as open until
    /// [`TenantRates::session_closed`].
    pub(crate) fn admit_session(
        &self,
        metrics: &Metrics,
        rates: &TenantRates,
        tenant: &dyn std::fmt::Display,
    ) -> Result<(), RequestError> {
        router::admit_session(rates, &self.limits, self.now_ms())
            .map_err(|r| refusal(metrics, r, &"", tenant))
    }

    /// Notes that a user's buckets outlive its last session until `now + refill`.
    pub(crate) fn park(&self, user: crate::Key<UserId>, now_ms: u64) {
        self.parked.lock().park(user, now_ms);
    }

    /// Parked users whose buckets have refilled by `now`: the hub drops those that are
    /// still without a session.
    pub(crate) fn expired(&self, now_ms: u64) -> Vec<crate::Key<UserId>> {
        self.parked.lock().expired(now_ms)
    }

    /// Users parked now.
    #[cfg(test)]
    pub(crate) fn parked_len(&self) -> usize {
        self.parked.lock().len()
    }
}

/// A refusal as the protocol's `RateLimited` error, counted and logged; `user` and `tenant`
/// name whoever's limit refused.
fn refusal(
    metrics: &Metrics,
    refusal: Refusal,
    user: &dyn std::fmt::Display,
    tenant: &dyn std::fmt::Display,
) -> RequestError {
    counter(refusal.kind, metrics).fetch_add(1, Ordering::Relaxed);
    let name = match refusal.whose {
        Whose::User => user,
        Whose::Tenant => tenant,
    };
    tracing::debug!(
        whose = ?refusal.whose,
        %name,
        kind = refusal.kind.noun(),
        retry_ms = refusal.retry_after_ms,
        "rate limited"
    );
    RequestError::new(ErrorCode::RateLimited, refusal.message(name))
        .with_retry_after(refusal.retry_after_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            user_messages_per_sec: 1,
            user_messages_burst: 2,
            tenant_messages_per_sec: 1,
            tenant_messages_burst: 3,
            tenant_connections_per_sec: 1,
            tenant_connections_burst: 2,
            tenant_max_connections: 3,
            ..Limits::default()
        }
    }

    fn session_rates(l: &Limits) -> SessionRates {
        SessionRates {
            user: std::sync::Arc::new(UserRates::new(l)),
            tenant: std::sync::Arc::new(TenantRates::new(l)),
        }
    }

    #[test]
    fn a_message_refused_by_the_tenant_costs_the_user_nothing() {
        let l = limits();
        let r = RateLimiter::new(&l);
        let m = Metrics::default();
        let alice = session_rates(&l);
        let bob = SessionRates {
            user: std::sync::Arc::new(UserRates::new(&l)),
            tenant: alice.tenant.clone(),
        };
        // Alice uses her burst of 2, Bob takes the tenant's third token.
        for _ in 0..2 {
            r.admit_message(&m, &alice, &"alice", &"acme").unwrap();
        }
        r.admit_message(&m, &bob, &"bob", &"acme").unwrap();
        // Bob has a token left, the tenant has none: refused by the tenant...
        let e = r.admit_message(&m, &bob, &"bob", &"acme").unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.message.contains("tenant acme"), "{}", e.message);
        assert!(
            (1..=1_000).contains(&e.retry_after_ms),
            "{}",
            e.retry_after_ms
        );
        // ... and Bob's own token is still there.
        assert!(bob.user.messages.try_take(r.now_ms()).is_ok());
        let e = r.admit_message(&m, &alice, &"alice", &"acme").unwrap_err();
        assert!(e.message.contains("user alice"), "{}", e.message);
        assert_eq!(m.rate_limited_messages.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn session_refusals_are_counted_with_their_retry_time() {
        let l = Limits {
            tenant_max_connections: 2,
            tenant_connections_burst: 3,
            ..limits()
        };
        let r = RateLimiter::new(&l);
        let m = Metrics::default();
        let t = TenantRates::new(&l);
        r.admit_session(&m, &t, &"acme").unwrap();
        r.admit_session(&m, &t, &"acme").unwrap();
        // At the cap (the rate's burst of 3 is not used up).
        let e = r.admit_session(&m, &t, &"acme").unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert_eq!(e.retry_after_ms, router::TENANT_FULL_RETRY_MS);
        assert!(e.message.contains("tenant acme has 2"), "{}", e.message);
        assert_eq!(t.open_sessions(), 2);
        t.session_closed();
        // The third token, then the rate refuses: not counted open.
        r.admit_session(&m, &t, &"acme").unwrap();
        t.session_closed();
        let e = r.admit_session(&m, &t, &"acme").unwrap_err();
        assert!(e.message.contains("new connections"), "{}", e.message);
        assert_eq!(t.open_sessions(), 1);
        assert_eq!(m.rate_limited_connections.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn parked_users_expire_after_the_refill_time() {
        let l = limits();
        let r = RateLimiter::new(&l);
        let refill = UserRates::refill_ms(&l);
        let key = |u: &str| {
            (
                switchboard_core::TenantId::new("acme").unwrap(),
                switchboard_core::UserId::new(u).unwrap(),
            )
        };
        r.park(key("alice"), 0);
        r.park(key("bob"), 10);
        assert!(r.expired(refill - 1).is_empty());
        assert_eq!(r.expired(refill), vec![key("alice")]);
        assert_eq!(r.parked_len(), 1);
        assert_eq!(r.expired(u64::MAX), vec![key("bob")]);
    }
}
