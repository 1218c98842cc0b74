//! Cross-node fan-out: every message a node appends is announced to every node, which
//! delivers it to its own sessions.
//!
//! After JetStream acknowledged an append, the appending node (the shard's owner) publishes
//! a *commit notice* on `<prefix>.new.<tenant>.<group>` (ids encoded): the message (body as
//! payload; seq, stream seq, sender, client message id, lane, sent-at as headers) and
//! `Sb-Accepted-By`, the node whose client sent it (the owner itself, or the node that
//! forwarded the append). Every node listens on `<prefix>.new.>`; for each notice it first
//! tells its log (so reads there reach the message without reloading the group), then,
//! unless it accepted the send itself (its own committer delivers those), hands the message
//! to the node ([`Committed`]), which delivers it exactly as a local commit.
//!
//! Notices are core NATS messages: at most once, and a node that is slow or cut off misses
//! some. A missed notice is never a lost delivery: the node delivers a later message of the
//! group only after bringing its sessions up to it from the log (the hub's gap rule), and
//! clients resume from their cursors. A missed notice of a group's *last* message is
//! caught by the owner's head announcements (`crate::heads`) within about a second.
//!
//! Bounds: the node's queue of committed messages holds [`COMMITTED_QUEUE`]; notices past
//! it are dropped (counted in the log at warn level), which is a missed notice as above.

use std::sync::Arc;

use async_nats::header::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use switchboard_core::{GroupId, Lane, TenantId, UserId};
use switchboard_store::StoredMessage;
use tokio::sync::mpsc;

use crate::heads::Heads;
use crate::names::{decode_token, encode_token};
use crate::news::{Committed, News};
use crate::JetStreamLog;

const H_SEQ: &str = "Sb-Seq";
const H_STREAM_SEQ: &str = "Sb-Stream-Seq";
const H_SENDER: &str = "Sb-Sender";
const H_CLIENT_ID: &str = "Sb-Client-Id";
const H_LANE: &str = "Sb-Lane";
const H_SENT_AT: &str = "Sb-Sent-At";
const H_ACCEPTED_BY: &str = "Sb-Accepted-By";

/// A new message as the appending node announces it.
pub(crate) struct Notice<'a> {
    pub(crate) tenant: &'a TenantId,
    pub(crate) group: &'a GroupId,
    pub(crate) seq: u64,
    pub(crate) stream_seq: u64,
    pub(crate) sender: &'a UserId,
    pub(crate) client_msg_id: &'a str,
    pub(crate) lane: Lane,
    pub(crate) sent_at_ms: u64,
    pub(crate) accepted_by: &'a str,
}

fn lane_name(lane: Lane) -> &'static str {
    match lane {
        Lane::High => "high",
        Lane::Normal => "normal",
        Lane::Low => "low",
    }
}

impl Notice<'_> {
    /// Publishes it (fire and forget: the client queues it; see the module docs), and
    /// remembers the group's head for its head announcements.
    pub(crate) async fn announce(
        &self,
        client: &async_nats::Client,
        prefix: &str,
        body: Bytes,
        heads: &Heads,
    ) {
        heads.record(self.tenant, self.group, self.seq, self.stream_seq);
        let (subject, headers) = (self.subject(prefix), self.headers());
        if let Err(e) = client.publish_with_headers(subject, headers, body).await {
            tracing::debug!(error = %e, "commit notice not sent");
        }
    }

    fn subject(&self, prefix: &str) -> String {
        format!(
            "{prefix}.new.{}.{}",
            encode_token(self.tenant.as_str()),
            encode_token(self.group.as_str())
        )
    }

    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(H_SEQ, self.seq.to_string());
        h.insert(H_STREAM_SEQ, self.stream_seq.to_string());
        h.insert(H_SENDER, encode_token(self.sender.as_str()));
        h.insert(H_CLIENT_ID, encode_token(self.client_msg_id));
        h.insert(H_LANE, lane_name(self.lane));
        h.insert(H_SENT_AT, self.sent_at_ms.to_string());
        h.insert(H_ACCEPTED_BY, self.accepted_by);
        h
    }
}

/// A notice as received: the message, its stream seq, and who accepted it.
struct Received {
    tenant: TenantId,
    group: GroupId,
    message: StoredMessage,
    stream_seq: u64,
    accepted_by: String,
}

fn parse(subject: &str, headers: Option<&HeaderMap>, body: Bytes) -> Option<Received> {
    let mut tokens = subject.rsplitn(3, '.');
    let group = GroupId::new(&decode_token(tokens.next()?)?).ok()?;
    let tenant = TenantId::new(&decode_token(tokens.next()?)?).ok()?;
    let h = headers?;
    let get = |name: &str| h.get(name).map(|v| v.as_str().to_owned());
    let number = |name: &str| get(name)?.parse::<u64>().ok();
    let lane = match get(H_LANE)?.as_str() {
        "high" => Lane::High,
        "normal" => Lane::Normal,
        "low" => Lane::Low,
        _ => return None,
    };
    Some(Received {
        tenant,
        group,
        message: StoredMessage {
            seq: number(H_SEQ)?,
            lane,
            sender: UserId::new(&decode_token(&get(H_SENDER)?)?).ok()?,
            client_msg_id: decode_token(&get(H_CLIENT_ID)?)?,
            sent_at_ms: number(H_SENT_AT)?,
            body,
        },
        stream_seq: number(H_STREAM_SEQ)?,
        accepted_by: get(H_ACCEPTED_BY)?,
    })
}

/// Listens to every commit notice of `prefix` until the subscription ends: tells `log`,
/// then queues other nodes' messages on `committed`.
pub(crate) async fn listen(
    client: async_nats::Client,
    prefix: String,
    node: String,
    log: Arc<JetStreamLog>,
    committed: mpsc::Sender<Committed>,
) {
    let subject = format!("{prefix}.new.>");
    let mut notices = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%subject, error = %e, "cannot listen to commit notices");
            return;
        }
    };
    while let Some(n) = notices.next().await {
        let Some(r) = parse(n.subject.as_str(), n.headers.as_ref(), n.payload) else {
            tracing::debug!(subject = %n.subject, "malformed commit notice ignored");
            continue;
        };
        let m = &r.message;
        log.observe(
            r.tenant.clone(),
            r.group.clone(),
            m.seq,
            r.stream_seq,
            &m.sender,
            &m.client_msg_id,
        )
        .await;
        if r.accepted_by == node {
            continue;
        }
        let news = Committed {
            tenant: r.tenant,
            group: r.group,
            news: News::Message(r.message),
        };
        if committed.try_send(news).is_err() {
            tracing::warn!("committed-message queue full or closed; a notice was dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_reads_back_as_the_message_with_hostile_ids_intact() {
        let (tenant, group) = (
            TenantId::new("a.b").unwrap(),
            GroupId::new("g.x:y@z").unwrap(),
        );
        let sender = UserId::new("ann.").unwrap();
        let notice = Notice {
            tenant: &tenant,
            group: &group,
            seq: 7,
            stream_seq: 41,
            sender: &sender,
            client_msg_id: "id.*",
            lane: Lane::High,
            sent_at_ms: 5,
            accepted_by: "node-b",
        };
        let subject = notice.subject("sb");
        assert_eq!(subject.split('.').count(), 4, "{subject}");
        let r = parse(&subject, Some(&notice.headers()), Bytes::from_static(b"hi")).unwrap();
        let m = &r.message;
        assert_eq!((&r.tenant, &r.group), (&tenant, &group));
        assert_eq!((m.seq, m.lane, m.sent_at_ms), (7, Lane::High, 5));
        assert_eq!((&m.sender, m.client_msg_id.as_str()), (&sender, "id.*"));
        assert_eq!(&m.body[..], b"hi");
        assert_eq!((r.stream_seq, r.accepted_by.as_str()), (41, "node-b"));
        // Anything missing is no notice.
        assert!(parse(&subject, Some(&HeaderMap::new()), Bytes::new()).is_none());
        assert!(parse(&subject, None, Bytes::new()).is_none());
    }
}
