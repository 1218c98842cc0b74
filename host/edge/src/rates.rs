//! Rate limits per user and per tenant (`Limits::user_*`, `Limits::tenant_*`): the buckets,
//! where they live and for how long. The buckets themselves are `switchboard_core::rate`.
//!
//! - **No lock on the request path.** A session holds `Arc`s of its user's and its tenant's
//!   buckets, so checking a request is one atomic compare-and-swap per bucket: no map lookup,
//!   no lock shared with other users.
//! - **Refused means not done.** A request over a limit is answered `RateLimited` with the
//!   time until it would be allowed, before anything else happens to it; when the second of
//!   two limits refuses, the token the first one took is given back.
//! - **Bounded memory.** A user's buckets are shared by all its sessions and kept in the hub's
//!   user index. With its last session they are dropped if full; if not, they are *parked*
//!   until they have refilled ([`UserRates::refill_ms`], 10 s with the defaults), so that
//!   disconnecting and reconnecting never resets a partly drained bucket. At most: the
//!   connected users, plus the users who disconnected within the last refill time (and
//!   reconnects are themselves limited per tenant). A tenant's buckets live as long as the
//!   node: one small entry per tenant that has connected.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use switchboard_core::rate::{Rate, RetryAfterMs, TokenBucket};
use switchboard_core::{ErrorCode, Limits};

use crate::metrics::Metrics;
use crate::RequestError;

/// What a refused request was, for the message and the `rate_limited_*` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    Messages,
    Receipts,
    Joins,
    Presence,
    Connections,
}

impl Limited {
    fn counter(self, m: &Metrics) -> &AtomicU64 {
        match self {
            Limited::Messages => &m.rate_limited_messages,
            Limited::Receipts => &m.rate_limited_receipts,
            Limited::Joins => &m.rate_limited_joins,
            Limited::Presence => &m.rate_limited_presence,
            Limited::Connections => &m.rate_limited_connections,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Limited::Messages => "messages",
            Limited::Receipts => "receipts",
            Limited::Joins => "joins and leaves",
            Limited::Presence => "presence changes",
            Limited::Connections => "new connections",
        }
    }
}

/// Whose limit refused: `user alice`, `tenant acme`.
#[derive(Clone, Copy)]
pub(crate) struct Whose<'a>(pub &'static str, pub &'a dyn std::fmt::Display);

impl std::fmt::Display for Whose<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

/// A tenant at its `tenant_max_connections` learns to retry after this long: no slot frees
/// at a known time, so this is a hint (clients back off further on their own).
pub(crate) const TENANT_FULL_RETRY_MS: u32 = 1_000;

/// One user's buckets, shared by all its sessions.
#[derive(Debug)]
pub(crate) struct UserRates {
    pub(crate) messages: TokenBucket,
    pub(crate) receipts: TokenBucket,
    pub(crate) joins: TokenBucket,
    pub(crate) presence: TokenBucket,
}

impl UserRates {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            messages: TokenBucket::new(limits.user_messages()),
            receipts: TokenBucket::new(limits.user_receipts()),
            joins: TokenBucket::new(limits.user_joins()),
            presence: TokenBucket::new(limits.user_presence()),
        }
    }

    /// Whether every bucket is full, i.e. forgetting them loses nothing.
    pub(crate) fn is_full(&self, now_ms: u64) -> bool {
        self.messages.is_full(now_ms)
            && self.receipts.is_full(now_ms)
            && self.joins.is_full(now_ms)
            && self.presence.is_full(now_ms)
    }

    /// How long any user's buckets take to refill from empty.
    pub(crate) fn refill_ms(limits: &Limits) -> u64 {
        [
            limits.user_messages(),
            limits.user_receipts(),
            limits.user_joins(),
            limits.user_presence(),
        ]
        .into_iter()
        .map(Rate::refill_ms)
        .max()
        .unwrap_or(0)
    }
}

/// One tenant's buckets and its count of open sessions.
#[derive(Debug)]
pub(crate) struct TenantRates {
    pub(crate) messages: TokenBucket,
    /// New sessions.
    connections: TokenBucket,
    /// Sessions open now.
    open: AtomicU32,
}

impl TenantRates {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            messages: TokenBucket::new(limits.tenant_messages()),
            connections: TokenBucket::new(limits.tenant_connections()),
            open: AtomicU32::new(0),
        }
    }

    /// Sessions of this tenant open on the node.
    pub(crate) fn open_sessions(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    /// A session of this tenant ended (one that [`RateLimiter::admit_session`] admitted).
    pub(crate) fn session_closed(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A session's view of its limits: its user's and its tenant's buckets.
#[derive(Debug, Clone)]
pub(crate) struct SessionRates {
    pub(crate) user: std::sync::Arc<UserRates>,
    pub(crate) tenant: std::sync::Arc<TenantRates>,
}

/// The node's limits, its monotonic clock for them, and the queue of parked user buckets.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limits: Limits,
    started: Instant,
    user_refill_ms: u64,
    /// Users whose last session closed before their buckets were full: (when they will be
    /// full, the user). Expiries only grow along the queue (constant refill time).
    parked: Mutex<VecDeque<(u64, crate::Key<switchboard_core::UserId>)>>,
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
            user_refill_ms: UserRates::refill_ms(limits),
            parked: Mutex::new(VecDeque::new()),
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

    /// Takes a token from `bucket`, or the typed refusal (counted).
    pub(crate) fn take(
        &self,
        metrics: &Metrics,
        bucket: &TokenBucket,
        kind: Limited,
        whose: Whose<'_>,
        rate: Rate,
        now_ms: u64,
    ) -> Result<(), RequestError> {
        bucket
            .try_take(now_ms)
            .map_err(|retry| refusal(metrics, kind, whose, rate, retry))
    }

    /// A `Send`: the user's bucket, then the tenant's.
    pub(crate) fn admit_message(
        &self,
        metrics: &Metrics,
        rates: &SessionRates,
        user: &dyn std::fmt::Display,
        tenant: &dyn std::fmt::Display,
    ) -> Result<(), RequestError> {
        let now = self.now_ms();
        let l = &self.limits;
        self.take(
            metrics,
            &rates.user.messages,
            Limited::Messages,
            Whose("user", user),
            l.user_messages(),
            now,
        )?;
        self.take(
            metrics,
            &rates.tenant.messages,
            Limited::Messages,
            Whose("tenant", tenant),
            l.tenant_messages(),
            now,
        )
        .inspect_err(|_| rates.user.messages.give_back())
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
        let cap = self.limits.tenant_max_connections;
        let counted = rates
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (cap == 0 || n < cap).then_some(n + 1)
            });
        if counted.is_err() {
            Limited::Connections
                .counter(metrics)
                .fetch_add(1, Ordering::Relaxed);
            return Err(RequestError::new(
                ErrorCode::RateLimited,
                format!("rate limited: tenant {tenant} has {cap} connections open, its limit"),
            )
            .with_retry_after(TENANT_FULL_RETRY_MS));
        }
        self.take(
            metrics,
            &rates.connections,
            Limited::Connections,
            Whose("tenant", tenant),
            self.limits.tenant_connections(),
            self.now_ms(),
        )
        .inspect_err(|_| rates.session_closed())
    }

    /// Notes that a user's buckets outlive its last session until `now + refill`.
    pub(crate) fn park(&self, user: crate::Key<switchboard_core::UserId>, now_ms: u64) {
        self.parked
            .lock()
            .push_back((now_ms.saturating_add(self.user_refill_ms), user));
    }

    /// Parked users whose buckets have refilled by `now`: the hub drops those that are
    /// still without a session.
    pub(crate) fn expired(&self, now_ms: u64) -> Vec<crate::Key<switchboard_core::UserId>> {
        let mut q = self.parked.lock();
        let mut out = Vec::new();
        while q.front().is_some_and(|(at, _)| *at <= now_ms) {
            if let Some((_, user)) = q.pop_front() {
                out.push(user);
            }
        }
        out
    }

    /// Users parked now.
    #[cfg(test)]
    pub(crate) fn parked_len(&self) -> usize {
        self.parked.lock().len()
    }
}

fn refusal(
    metrics: &Metrics,
    kind: Limited,
    whose: Whose<'_>,
    rate: Rate,
    RetryAfterMs(retry_ms): RetryAfterMs,
) -> RequestError {
    kind.counter(metrics).fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%whose, kind = kind.noun(), retry_ms, "rate limited");
    RequestError::new(
        ErrorCode::RateLimited,
        format!(
            "rate limited: {whose}'s {} are over {rate}; retry after {retry_ms} ms",
            kind.noun()
        ),
    )
    .with_retry_after(retry_ms)
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
    fn sessions_are_capped_and_rate_limited_per_tenant() {
        let l = limits();
        let r = RateLimiter::new(&l);
        let m = Metrics::default();
        let t = TenantRates::new(&l);
        r.admit_session(&m, &t, &"acme").unwrap();
        r.admit_session(&m, &t, &"acme").unwrap();
        // The burst of 2 is used: the third is refused by the rate, and not counted open.
        let e = r.admit_session(&m, &t, &"acme").unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.message.contains("new connections"), "{}", e.message);
        assert_eq!(t.open_sessions(), 2);
        // At the cap, refused whatever the rate says.
        t.open.store(3, Ordering::Relaxed);
        let e = r.admit_session(&m, &t, &"acme").unwrap_err();
        assert_eq!(e.retry_after_ms, TENANT_FULL_RETRY_MS);
        assert_eq!(t.open_sessions(), 3);
        assert_eq!(m.rate_limited_connections.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn parked_users_expire_in_order_after_the_refill_time() {
        let l = limits();
        let r = RateLimiter::new(&l);
        assert_eq!(r.user_refill_ms, UserRates::refill_ms(&l));
        let key = |u: &str| {
            (
                switchboard_core::TenantId::new("acme").unwrap(),
                switchboard_core::UserId::new(u).unwrap(),
            )
        };
        r.park(key("alice"), 0);
        r.park(key("bob"), 10);
        assert!(r.expired(r.user_refill_ms - 1).is_empty());
        assert_eq!(r.expired(r.user_refill_ms), vec![key("alice")]);
        assert_eq!(r.parked_len(), 1);
        assert_eq!(r.expired(u64::MAX), vec![key("bob")]);
    }
}
