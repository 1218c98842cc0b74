//! Shard leases in a JetStream KV bucket: who may append to a shard's groups.
//!
//! One key per shard (`shard-NNN`) in the bucket `<prefix>-leases`, whose value is the
//! holder's node id. The bucket's `max_age` is the lease's TTL, so a lease that is not
//! renewed disappears by itself. Taking a lease is a create (refused while the key exists);
//! renewing it is an update that names the revision the holder last wrote, so a holder whose
//! lease expired — and was perhaps taken by another node — cannot renew it: it gets
//! [`ClusterError::LeaseLost`] and must stop appending to the shard. That alone is not
//! enough (a paused holder notices nothing until it runs again); the log's expected-sequence
//! check is what refuses the paused holder's stale appends ([`crate::JetStreamLog`]).
//!
//! Async: [`crate::KeeperTask`] holds and renews leases as [`crate::Keeper`] decides; it
//! does not cross the store seam.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use crate::names::LogNames;
use crate::ClusterError;

/// A held lease: the shard, the revision the holder wrote last, and until when the holder
/// may act on it by its own monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub shard: u16,
    pub revision: u64,
    /// The holder's deadline: when the write that took or renewed the lease was *sent*,
    /// plus nine tenths of the TTL. The server starts the TTL when it stores the write,
    /// which is later, so the holder's deadline passes first; the tenth covers clocks
    /// running at slightly different rates. The monotonic clock keeps running while a
    /// process is stopped, so a paused holder finds its deadline passed when it resumes.
    pub valid_until: Instant,
}

impl Lease {
    /// Whether the holder may still append to the shard at `now` (sans-IO: the caller
    /// passes its clock).
    pub fn is_valid_at(&self, now: Instant) -> bool {
        now < self.valid_until
    }
}

/// The holder's deadline for a write sent at `sent` (see [`Lease::valid_until`]).
fn deadline(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl - ttl / 10
}

/// This node's handle on the lease bucket.
#[derive(Debug)]
pub struct ShardLeases {
    kv: kv::Store,
    node: String,
    ttl: Duration,
}

impl ShardLeases {
    /// Connects and opens (or creates) the lease bucket; leases last `ttl` unless renewed.
    /// Every request waits at most `request_timeout`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        node: &str,
        ttl: Duration,
        replicas: usize,
        request_timeout: Duration,
    ) -> Result<Self, ClusterError> {
        let names = LogNames::new(prefix).map_err(|e| ClusterError::Config(e.to_string()))?;
        if node.is_empty() || ttl.is_zero() {
            return Err(ClusterError::Config(
                "a lease needs a node id and a TTL".into(),
            ));
        }
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(request_timeout)
            .request_timeout(Some(request_timeout))
            .connect(crate::names::server_list(url))
            .await
            .map_err(|e| ClusterError::Connect {
                url: url.to_owned(),
                detail: e.to_string(),
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(request_timeout)
            .build(client);
        let bucket = format!("{}-leases", names.prefix());
        let kv = crate::members::open_ttl_bucket(&js, bucket, ttl, replicas).await?;
        Ok(Self {
            kv,
            node: node.to_owned(),
            ttl,
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// How long a lease lasts after its last write. The holder must stop appending before
    /// that much time has passed since its last successful renewal, by its own clock.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn key(shard: u16) -> String {
        format!("shard-{shard:03}")
    }

    /// Takes the lease of `shard` if nobody holds it (or this node already does, as after a
    /// restart within the TTL); [`ClusterError::LeaseHeld`] names the holder otherwise.
    pub async fn acquire(&self, shard: u16) -> Result<Lease, ClusterError> {
        let key = Self::key(shard);
        let value = Bytes::from(self.node.clone().into_bytes());
        let sent = Instant::now();
        match self.kv.create(&key, value.clone()).await {
            Ok(revision) => {
                return Ok(Lease {
                    shard,
                    revision,
                    valid_until: deadline(sent, self.ttl),
                })
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(lease_error(shard, e)),
        }
        let entry = self
            .kv
            .entry(&key)
            .await
            .map_err(|e| lease_error(shard, e))?;
        match entry {
            Some(entry) if entry.value == value => {
                let sent = Instant::now();
                let revision = self
                    .kv
                    .update(&key, value, entry.revision)
                    .await
                    .map_err(|e| lease_error(shard, e))?;
                Ok(Lease {
                    shard,
                    revision,
                    valid_until: deadline(sent, self.ttl),
                })
            }
            Some(entry) => Err(ClusterError::LeaseHeld {
                shard,
                by: String::from_utf8_lossy(&entry.value).into_owned(),
            }),
            // Expired between the create and the read: the next attempt may take it.
            None => Err(ClusterError::LeaseHeld {
                shard,
                by: String::new(),
            }),
        }
    }

    /// Renews a held lease (the update names the revision the holder wrote last). A lease
    /// that expired, or that another node took, is [`ClusterError::LeaseLost`].
    pub async fn renew(&self, lease: &mut Lease) -> Result<(), ClusterError> {
        let value = Bytes::from(self.node.clone().into_bytes());
        let sent = Instant::now();
        match self
            .kv
            .update(Self::key(lease.shard), value, lease.revision)
            .await
        {
            Ok(revision) => {
                lease.revision = revision;
                lease.valid_until = deadline(sent, self.ttl);
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(ClusterError::LeaseLost { shard: lease.shard })
            }
            Err(e) => Err(lease_error(lease.shard, e)),
        }
    }

    /// Gives a held lease up (a drain), so another node need not wait for the TTL.
    pub async fn release(&self, lease: Lease) -> Result<(), ClusterError> {
        self.kv
            .delete_expect_revision(Self::key(lease.shard), Some(lease.revision))
            .await
            .map_err(|e| lease_error(lease.shard, e))
    }

    /// The holder of `shard`'s lease, if any.
    pub async fn holder(&self, shard: u16) -> Result<Option<String>, ClusterError> {
        let entry = self
            .kv
            .entry(Self::key(shard))
            .await
            .map_err(|e| lease_error(shard, e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| String::from_utf8_lossy(&e.value).into_owned()))
    }
}

fn lease_error(shard: u16, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Lease {
        shard,
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_gives_up_before_the_server_lets_the_lease_go() {
        let sent = Instant::now();
        let ttl = Duration::from_secs(10);
        let lease = Lease {
            shard: 1,
            revision: 1,
            valid_until: deadline(sent, ttl),
        };
        assert!(lease.is_valid_at(sent));
        assert!(lease.is_valid_at(sent + Duration::from_secs(8)));
        // The server's TTL runs from its write, at or after `sent`: the holder's deadline
        // comes a tenth of the TTL earlier.
        assert!(!lease.is_valid_at(sent + Duration::from_secs(9)));
        assert!(!lease.is_valid_at(sent + ttl));
    }
}
