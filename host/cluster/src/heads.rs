//! Head announcements: the owner of a group that went quiet tells every node the group's
//! head, so a node that missed the commit notice of a group's last message notices the gap
//! without waiting for the group's next message.
//!
//! Each appending node remembers, per group it appended to, the newest seq and its stream
//! seq ([`Heads::record`], at the same place it publishes the commit notice). Every
//! [`HEAD_EVERY`] it announces, on `<prefix>.heads.<node>`, the groups whose head did not
//! move during the last period, [`HEAD_ROUNDS`] times each, then forgets them; a group
//! that keeps receiving messages is not announced (its notices follow each other, and the
//! gap rule catches a lost one at the next). A receiving node moves its log's view of the
//! group to that head (so reads there reach it) and hands the head to its hub, which
//! reveals a gap to its sessions: they read it from the log, in order.
//!
//! Announcements are core NATS messages, like notices: a lost one is repeated at the next
//! period. Bounds: at most [`MAX_TRACKED_HEADS`] groups remembered per node (past it, new
//! groups are not announced until room frees up: a period later), announcements of at most
//! [`MAX_ANNOUNCEMENT_BYTES`] each (more groups take more messages).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_core::{GroupId, TenantId};

use crate::names::{decode_token, encode_token};

/// How often a node announces its quiet groups' heads.
pub const HEAD_EVERY: Duration = Duration::from_millis(500);

/// How many times a quiet group's head is announced.
pub const HEAD_ROUNDS: u8 = 3;

/// Most groups a node remembers to announce.
pub const MAX_TRACKED_HEADS: usize = 65_536;

/// Largest announcement payload.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 256 * 1024;

/// A group's head as announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub tenant: TenantId,
    pub group: GroupId,
    pub seq: u64,
    pub stream_seq: u64,
}

#[derive(Debug)]
struct Tracked {
    seq: u64,
    stream_seq: u64,
    /// The period in which the head last moved.
    moved_in: u64,
    sent: u8,
}

/// The groups this node appended to and has yet to announce (see the module docs).
#[derive(Debug, Default)]
pub struct Heads {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    period: u64,
    groups: HashMap<(TenantId, GroupId), Tracked>,
}

impl Heads {
    /// A message was appended: `seq` at stream seq `stream_seq`.
    pub fn record(&self, tenant: &TenantId, group: &GroupId, seq: u64, stream_seq: u64) {
        let mut s = self.inner.lock();
        let period = s.period;
        let len = s.groups.len();
        match s.groups.get_mut(&(tenant.clone(), group.clone())) {
            Some(t) if seq > t.seq => {
                *t = Tracked {
                    seq,
                    stream_seq,
                    moved_in: period,
                    sent: 0,
                }
            }
            Some(_) => {}
            None if len < MAX_TRACKED_HEADS => {
                s.groups.insert(
                    (tenant.clone(), group.clone()),
                    Tracked {
                        seq,
                        stream_seq,
                        moved_in: period,
                        sent: 0,
                    },
                );
            }
            None => tracing::debug!(%tenant, %group, "head not tracked: too many groups"),
        }
    }

    /// Ends a period: the heads to announce now (those that did not move in it), each
    /// counted; a head announced [`HEAD_ROUNDS`] times is forgotten.
    pub fn end_period(&self) -> Vec<Head> {
        let mut s = self.inner.lock();
        let period = s.period;
        s.period += 1;
        let mut due = Vec::new();
        s.groups.retain(|(tenant, group), t| {
            if t.moved_in == period {
                return true;
            }
            due.push(Head {
                tenant: tenant.clone(),
                group: group.clone(),
                seq: t.seq,
                stream_seq: t.stream_seq,
            });
            t.sent += 1;
            t.sent < HEAD_ROUNDS
        });
        due
    }

    /// Groups remembered now.
    pub fn tracked(&self) -> usize {
        self.inner.lock().groups.len()
    }
}

/// The announcements for `heads`: one line per head (`tenant group seq stream_seq`, ids
/// encoded as subject tokens), at most [`MAX_ANNOUNCEMENT_BYTES`] per payload.
pub fn encode(heads: &[Head]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut buf = String::new();
    for h in heads {
        let line = format!(
            "{} {} {} {}\n",
            encode_token(h.tenant.as_str()),
            encode_token(h.group.as_str()),
            h.seq,
            h.stream_seq
        );
        if !buf.is_empty() && buf.len() + line.len() > MAX_ANNOUNCEMENT_BYTES {
            out.push(Bytes::from(std::mem::take(&mut buf)));
        }
        buf.push_str(&line);
    }
    if !buf.is_empty() {
        out.push(Bytes::from(buf));
    }
    out
}

/// The heads of an announcement; malformed lines are skipped.
pub fn decode(payload: &[u8]) -> Vec<Head> {
    let Ok(text) = std::str::from_utf8(payload) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let head = Head {
                tenant: TenantId::new(&decode_token(f.next()?)?).ok()?,
                group: GroupId::new(&decode_token(f.next()?)?).ok()?,
                seq: f.next()?.parse().ok()?,
                stream_seq: f.next()?.parse().ok()?,
            };
            f.next().is_none().then_some(head)
        })
        .collect()
}

/// Announces this node's quiet groups every [`HEAD_EVERY`] until the task is aborted.
pub(crate) async fn announce(
    heads: std::sync::Arc<Heads>,
    client: async_nats::Client,
    prefix: String,
    node: String,
) {
    let subject = format!("{prefix}.heads.{node}");
    let mut ticks = tokio::time::interval(HEAD_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for payload in encode(&heads.end_period()) {
            if let Err(e) = client.publish(subject.clone(), payload).await {
                tracing::debug!(error = %e, "head announcement not sent");
            }
        }
    }
}

/// Listens to other nodes' head announcements until the subscription ends: moves `log`'s
/// view of each group to its head, then hands the head to the node.
pub(crate) async fn listen(
    client: async_nats::Client,
    prefix: String,
    node: String,
    log: std::sync::Arc<crate::JetStreamLog>,
    committed: tokio::sync::mpsc::Sender<crate::news::Committed>,
) {
    use futures_util::StreamExt;
    let subject = format!("{prefix}.heads.>");
    let own = format!("{prefix}.heads.{node}");
    let mut announcements = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%subject, error = %e, "cannot listen to head announcements");
            return;
        }
    };
    while let Some(a) = announcements.next().await {
        if a.subject.as_str() == own {
            continue;
        }
        for h in decode(&a.payload) {
            log.observe_head(h.tenant.clone(), h.group.clone(), h.seq, h.stream_seq)
                .await;
            let news = crate::news::Committed {
                tenant: h.tenant,
                group: h.group,
                news: crate::news::News::Head(h.seq),
            };
            if committed.try_send(news).is_err() {
                tracing::warn!("committed-message queue full or closed; a head was dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(t: &str, g: &str) -> (TenantId, GroupId) {
        (TenantId::new(t).unwrap(), GroupId::new(g).unwrap())
    }

    #[test]
    fn a_quiet_groups_head_is_announced_a_few_times_and_a_busy_ones_is_not() {
        let heads = Heads::default();
        let (t, quiet) = ids("acme", "quiet");
        let (_, busy) = ids("acme", "busy");
        heads.record(&t, &quiet, 1, 10);
        heads.record(&t, &quiet, 2, 12);
        heads.record(&t, &busy, 1, 11);
        // Both moved in this period: nothing is due yet.
        assert!(heads.end_period().is_empty());
        let mut announced = Vec::new();
        for busy_seq in 2..7 {
            heads.record(&t, &busy, busy_seq, 20 + busy_seq);
            announced.extend(heads.end_period());
        }
        assert!(announced.iter().all(|h| h.group == quiet), "{announced:?}");
        assert_eq!(announced.len(), usize::from(HEAD_ROUNDS));
        assert!(announced.iter().all(|h| (h.seq, h.stream_seq) == (2, 12)));
        // Forgotten after its rounds; the busy group is still remembered.
        assert_eq!(heads.tracked(), 1);
        // A stale record (an older seq) does not move the head back.
        heads.record(&t, &quiet, 7, 30);
        heads.record(&t, &quiet, 5, 25);
        heads.end_period();
        let next = heads.end_period();
        assert!(next.contains(&Head {
            tenant: t.clone(),
            group: quiet.clone(),
            seq: 7,
            stream_seq: 30
        }));
    }

    #[test]
    fn the_number_of_groups_remembered_is_bounded() {
        let heads = Heads::default();
        let t = TenantId::new("acme").unwrap();
        for i in 0..MAX_TRACKED_HEADS + 10 {
            heads.record(&t, &GroupId::new(&format!("g{i}")).unwrap(), 1, 1);
        }
        assert_eq!(heads.tracked(), MAX_TRACKED_HEADS);
    }

    #[test]
    fn announcements_read_back_with_hostile_ids_and_split_at_the_size_bound() {
        let many: Vec<Head> = (0..20_000)
            .map(|i| Head {
                tenant: TenantId::new("a.b").unwrap(),
                group: GroupId::new(&format!("g.{i}:x@y")).unwrap(),
                seq: i,
                stream_seq: i * 2,
            })
            .collect();
        let payloads = encode(&many);
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() <= MAX_ANNOUNCEMENT_BYTES));
        let back: Vec<Head> = payloads.iter().flat_map(|p| decode(p)).collect();
        assert_eq!(back, many);
        assert!(decode(b"acme g 1\nacme g x 2\n\xff").is_empty());
    }
}
