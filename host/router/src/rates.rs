//! Rate-limit admission as values: which bucket a request takes from, in which order, what a
//! refusal says (and when to retry), and which users' buckets are parked until they refill.
//! Time is `now_ms`, passed in; the buckets are `switchboard_core::rate`'s lock-free token
//! buckets. The driver (edge's `RateLimiter`) owns the clock, the lock around [`Parked`],
//! the counters and the conversion of a [`Refusal`] into the protocol's error.
//!
//! - **Refused means not done.** A request over a limit is refused with the time until it
//!   would be allowed, before anything else happens to it; when the second of two limits
//!   refuses, the token the first one took is given back.
//! - **Bounded memory.** A user's buckets are shared by all its sessions. With its last
//!   session they are dropped if full; if not, they are *parked* until they have refilled
//!   ([`UserRates::refill_ms`], 10 s with the defaults), so that disconnecting and
//!   reconnecting never resets a partly drained bucket. At most: the connected users, plus
//!   the users who disconnected within the last refill time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use switchboard_core::rate::{Rate, RetryAfterMs, TokenBucket};
use switchboard_core::Limits;

/// A tenant at its `tenant_max_connections` learns to retry after this long: no slot frees
/// at a known time, so this is a hint (clients back off further on their own).
pub const TENANT_FULL_RETRY_MS: u32 = 1_000;

/// What a refused request was, for the message and the driver's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Messages,
    Receipts,
    Joins,
    Presence,
    Connections,
}

impl Limited {
    /// The plural noun in a refusal's message.
    pub fn noun(self) -> &'static str {
        match self {
            Limited::Messages => "messages",
            Limited::Receipts => "receipts",
            Limited::Joins => "joins and leaves",
            Limited::Presence => "presence changes",
            Limited::Connections => "new connections",
        }
    }
}

/// Whose limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whose {
    User,
    Tenant,
}

impl Whose {
    fn noun(self) -> &'static str {
        match self {
            Whose::User => "user",
            Whose::Tenant => "tenant",
        }
    }
}

/// Which limit a refusal hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// A bucket's rate.
    Rate(Rate),
    /// The tenant's `tenant_max_connections` open sessions.
    OpenSessions(u32),
}

/// A refused request: nothing of it was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub kind: Limited,
    pub whose: Whose,
    pub over: Over,
    /// When to retry (ms).
    pub retry_after_ms: u32,
}

impl Refusal {
    /// The refusal's message; `name` is the user's or the tenant's (as `whose` says).
    pub fn message(&self, name: &dyn std::fmt::Display) -> String {
        let whose = self.whose.noun();
        match self.over {
            Over::Rate(rate) => format!(
                "rate limited: {whose} {name}'s {} are over {rate}; retry after {} ms",
                self.kind.noun(),
                self.retry_after_ms
            ),
            Over::OpenSessions(cap) => {
                format!("rate limited: {whose} {name} has {cap} connections open, its limit")
            }
        }
    }
}

/// Takes a token from `bucket`, or the refusal.
pub fn take(
    bucket: &TokenBucket,
    kind: Limited,
    whose: Whose,
    rate: Rate,
    now_ms: u64,
) -> Result<(), Refusal> {
    bucket
        .try_take(now_ms)
        .map_err(|RetryAfterMs(retry_after_ms)| Refusal {
            kind,
            whose,
            over: Over::Rate(rate),
            retry_after_ms,
        })
}

/// One user's buckets, shared by all its sessions.
#[derive(Debug)]
pub struct UserRates {
    pub messages: TokenBucket,
    pub receipts: TokenBucket,
    pub joins: TokenBucket,
    pub presence: TokenBucket,
}

impl UserRates {
    pub fn new(limits: &Limits) -> Self {
        Self {
            messages: TokenBucket::new(limits.user_messages()),
            receipts: TokenBucket::new(limits.user_receipts()),
            joins: TokenBucket::new(limits.user_joins()),
            presence: TokenBucket::new(limits.user_presence()),
        }
    }

    /// Takes a token of the user's `kind` bucket (`Joins` is shared by joins and leaves).
    /// `Connections` are the tenant's: use [`admit_session`].
    pub fn take(&self, kind: Limited, limits: &Limits, now_ms: u64) -> Result<(), Refusal> {
        let (bucket, rate) = match kind {
            Limited::Messages => (&self.messages, limits.user_messages()),
            Limited::Receipts => (&self.receipts, limits.user_receipts()),
            Limited::Joins => (&self.joins, limits.user_joins()),
            Limited::Presence => (&self.presence, limits.user_presence()),
            Limited::Connections => unreachable!("connections are limited per tenant"),
        };
        take(bucket, kind, Whose::User, rate, now_ms)
    }

    /// Whether every bucket is full, i.e. forgetting them loses nothing.
    pub fn is_full(&self, now_ms: u64) -> bool {
        self.messages.is_full(now_ms)
            && self.receipts.is_full(now_ms)
            && self.joins.is_full(now_ms)
            && self.presence.is_full(now_ms)
    }

    /// How long any user's buckets take to refill from empty.
    pub fn refill_ms(limits: &Limits) -> u64 {
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
pub struct TenantRates {
    pub messages: TokenBucket,
    /// New sessions.
    connections: TokenBucket,
    /// Sessions open now.
    open: AtomicU32,
}

impl TenantRates {
    pub fn new(limits: &Limits) -> Self {
        Self {
            messages: TokenBucket::new(limits.tenant_messages()),
            connections: TokenBucket::new(limits.tenant_connections()),
            open: AtomicU32::new(0),
        }
    }

    /// Sessions of this tenant open on the node.
    pub fn open_sessions(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    /// A session of this tenant ended (one that [`admit_session`] admitted).
    pub fn session_closed(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A session's view of its limits: its user's and its tenant's buckets.
#[derive(Debug, Clone)]
pub struct SessionRates {
    pub user: Arc<UserRates>,
    pub tenant: Arc<TenantRates>,
}

/// A `Send`: the user's bucket, then the tenant's; a refusal by the tenant gives the user's
/// token back.
pub fn admit_message(rates: &SessionRates, limits: &Limits, now_ms: u64) -> Result<(), Refusal> {
    rates.user.take(Limited::Messages, limits, now_ms)?;
    take(
        &rates.tenant.messages,
        Limited::Messages,
        Whose::Tenant,
        limits.tenant_messages(),
        now_ms,
    )
    .inspect_err(|_| rates.user.messages.give_back())
}

/// A new session of the tenant: under `tenant_max_connections` open ones (0: no cap), and
/// a token of `tenant_connections`. On success the session counts as open until
/// [`TenantRates::session_closed`].
pub fn admit_session(tenant: &TenantRates, limits: &Limits, now_ms: u64) -> Result<(), Refusal> {
    let cap = limits.tenant_max_connections;
    let counted = tenant
        .open
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (cap == 0 || n < cap).then_some(n + 1)
        });
    if counted.is_err() {
        return Err(Refusal {
            kind: Limited::Connections,
            whose: Whose::Tenant,
            over: Over::OpenSessions(cap),
            retry_after_ms: TENANT_FULL_RETRY_MS,
        });
    }
    take(
        &tenant.connections,
        Limited::Connections,
        Whose::Tenant,
        limits.tenant_connections(),
        now_ms,
    )
    .inspect_err(|_| tenant.session_closed())
}

/// Users whose last session closed before their buckets were full, until they are: (when
/// they will be full, the user), oldest first. Expiries only grow along the queue (one
/// refill time for every user).
#[derive(Debug)]
pub struct Parked<K> {
    refill_ms: u64,
    queue: VecDeque<(u64, K)>,
}

impl<K> Parked<K> {
    /// Parks for the time users' buckets take to refill with `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self {
            refill_ms: UserRates::refill_ms(limits),
            queue: VecDeque::new(),
        }
    }

    pub fn refill_ms(&self) -> u64 {
        self.refill_ms
    }

    /// Notes that a user's buckets outlive its last session until `now + refill`.
    pub fn park(&mut self, user: K, now_ms: u64) {
        self.queue
            .push_back((now_ms.saturating_add(self.refill_ms), user));
    }

    /// Parked users whose buckets have refilled by `now`: the driver drops those that are
    /// still without a session.
    pub fn expired(&mut self, now_ms: u64) -> Vec<K> {
        let mut out = Vec::new();
        while self.queue.front().is_some_and(|(at, _)| *at <= now_ms) {
            if let Some((_, user)) = self.queue.pop_front() {
                out.push(user);
            }
        }
        out
    }

    /// Users parked now.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
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
            user: Arc::new(UserRates::new(l)),
            tenant: Arc::new(TenantRates::new(l)),
        }
    }

    #[test]
    fn a_message_refused_by_the_tenant_costs_the_user_nothing() {
        let l = limits();
        let now = 1_000;
        let alice = session_rates(&l);
        let bob = SessionRates {
            user: Arc::new(UserRates::new(&l)),
            tenant: alice.tenant.clone(),
        };
        // Alice uses her burst of 2, Bob takes the tenant's third token.
        for _ in 0..2 {
            admit_message(&alice, &l, now).unwrap();
        }
        admit_message(&bob, &l, now).unwrap();
        // Bob has a token left, the tenant has none: refused by the tenant...
        let e = admit_message(&bob, &l, now).unwrap_err();
        assert_eq!(e.whose, Whose::Tenant);
        assert_eq!(e.kind, Limited::Messages);
        assert!(e.message(&"acme").contains("tenant acme"), "{e:?}");
        assert!((1..=1_000).contains(&e.retry_after_ms), "{e:?}");
        // ... and Bob's own token is still there.
        assert!(bob.user.messages.try_take(now).is_ok());
        let e = admit_message(&alice, &l, now).unwrap_err();
        assert_eq!(e.whose, Whose::User);
        assert!(e.message(&"alice").contains("user alice"), "{e:?}");
    }

    #[test]
    fn a_refusal_says_what_and_when_to_retry() {
        let l = limits();
        let u = UserRates::new(&l);
        u.take(Limited::Messages, &l, 0).unwrap();
        u.take(Limited::Messages, &l, 0).unwrap();
        let e = u.take(Limited::Messages, &l, 0).unwrap_err();
        assert_eq!(e.retry_after_ms, 1_000, "one token per second");
        assert_eq!(
            e.message(&"alice"),
            format!(
                "rate limited: user alice's messages are over {}; retry after 1000 ms",
                l.user_messages()
            )
        );
        // Half way through the refill, half the wait is left; at its end, a token.
        assert_eq!(
            u.take(Limited::Messages, &l, 500)
                .unwrap_err()
                .retry_after_ms,
            500
        );
        assert!(u.take(Limited::Messages, &l, 1_000).is_ok());
    }

    #[test]
    fn sessions_are_capped_and_rate_limited_per_tenant() {
        let l = limits();
        let t = TenantRates::new(&l);
        admit_session(&t, &l, 0).unwrap();
        admit_session(&t, &l, 0).unwrap();
        // The burst of 2 is used: the third is refused by the rate, and not counted open.
        let e = admit_session(&t, &l, 0).unwrap_err();
        assert_eq!(e.kind, Limited::Connections);
        assert!(e.message(&"acme").contains("new connections"), "{e:?}");
        assert_eq!(t.open_sessions(), 2);
        // At the cap, refused whatever the rate says.
        t.open.store(3, Ordering::Relaxed);
        let e = admit_session(&t, &l, 10_000).unwrap_err();
        assert_eq!(e.retry_after_ms, TENANT_FULL_RETRY_MS);
        assert_eq!(
            e.message(&"acme"),
            "rate limited: tenant acme has 3 connections open, its limit"
        );
        assert_eq!(t.open_sessions(), 3);
        // A closed session frees a slot, and the rate has refilled by then.
        t.session_closed();
        admit_session(&t, &l, 10_000).unwrap();
    }

    #[test]
    fn parked_users_expire_in_order_after_the_refill_time() {
        let l = limits();
        let mut p = Parked::new(&l);
        assert_eq!(p.refill_ms(), UserRates::refill_ms(&l));
        p.park("alice", 0);
        p.park("bob", 10);
        assert!(p.expired(p.refill_ms() - 1).is_empty());
        assert_eq!(p.expired(p.refill_ms()), vec!["alice"]);
        assert_eq!(p.len(), 1);
        assert_eq!(p.expired(u64::MAX), vec!["bob"]);
        assert!(p.is_empty());
    }

    #[test]
    fn a_drained_user_is_full_again_after_the_refill_time() {
        let l = limits();
        let u = UserRates::new(&l);
        assert!(u.is_full(0));
        u.take(Limited::Joins, &l, 0).unwrap();
        assert!(!u.is_full(0));
        assert!(u.is_full(UserRates::refill_ms(&l)));
    }
}
