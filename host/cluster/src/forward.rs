//! Forwarding: an append for a group of a shard this node does not serve goes to the node
//! that does, over NATS request/reply, and comes back as that node's answer.
//!
//! It sits behind the store seam ([`crate::ClusterNode::backend`]), so the node's routing
//! code is the same for every group: the receiving node checked the sender, ran the rate
//! limits and the tenant's policy verdict (once, there), then "appends"; the append is done
//! by the shard's owner, which assigns the seq and dedupes, and the receiving node acks
//! the client and delivers to its own sessions exactly as after a local append.
//!
//! Whom to ask: the shard's rendezvous owner among the live nodes. During a handover that
//! node may not serve the shard yet; it then answers `fenced` (nothing stored), as does a
//! node that lost the shard, and the client's resend (same client message id) lands once
//! ownership settled.
//!
//! The request: subject `<prefix>.fwd.<node>`, the body as payload, headers `Sb-Tenant`,
//! `Sb-Group`, `Sb-Sender`, `Sb-Client-Id` (encoded with [`encode_token`]), `Sb-Lane`,
//! `Sb-Sent-At`. The answer: header `Sb-Result` = `new` or `duplicate` (with `Sb-Seq`),
//! `fenced` (not stored), `unknown` (may be stored), `refused` (not stored: bad request,
//! busy, or a store error), with `Sb-Detail`.
//!
//! Bounds: the owner serves at most [`MAX_FORWARDED_IN_FLIGHT`] forwarded appends at once
//! and answers `refused` (busy) past it; a request waits at most the NATS request time-out,
//! after which its outcome is unknown (the owner may have appended: the client resends
//! with the same id and gets a duplicate); a request carries at most the log's
//! `max_message_bytes`.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_nats::header::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use switchboard_core::{GroupId, Lane, TenantId, UserId};
use switchboard_store::{Appended, NewMessage, StoreError};
use tokio::sync::{watch, Semaphore};

use crate::fanout::Notice;
use crate::heads::Heads;
use crate::keeper_task::KeeperHandle;
use crate::names::{decode_token, encode_token, shard_of};
use crate::{ClusterError, JetStreamLog};

/// Forwarded appends one node serves at once.
pub const MAX_FORWARDED_IN_FLIGHT: usize = 256;

const H_TENANT: &str = "Sb-Tenant";
const H_GROUP: &str = "Sb-Group";
const H_SENDER: &str = "Sb-Sender";
const H_CLIENT_ID: &str = "Sb-Client-Id";
const H_LANE: &str = "Sb-Lane";
const H_SENT_AT: &str = "Sb-Sent-At";
const H_ACCEPTED_BY: &str = "Sb-Accepted-By";
const H_RESULT: &str = "Sb-Result";
const H_SEQ: &str = "Sb-Seq";
const H_DETAIL: &str = "Sb-Detail";

/// The subject `node` serves forwarded appends on.
pub(crate) fn subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.fwd.{node}")
}

fn lane_name(lane: Lane) -> &'static str {
    match lane {
        Lane::High => "high",
        Lane::Normal => "normal",
        Lane::Low => "low",
    }
}

fn lane_of(name: &str) -> Option<Lane> {
    Some(match name {
        "high" => Lane::High,
        "normal" => Lane::Normal,
        "low" => Lane::Low,
        _ => return None,
    })
}

/// A forwarded append, owned (it crosses to the log's runtime).
pub(crate) struct Forwarded {
    tenant: TenantId,
    group: GroupId,
    sender: UserId,
    client_msg_id: String,
    lane: Lane,
    sent_at_ms: u64,
    body: Bytes,
    /// The node the client sent it to (it delivers the message to its own sessions).
    accepted_by: String,
}

impl Forwarded {
    pub(crate) fn new(
        tenant: &TenantId,
        group: &GroupId,
        msg: &NewMessage<'_>,
        accepted_by: &str,
    ) -> Self {
        Self {
            accepted_by: accepted_by.to_owned(),
            tenant: tenant.clone(),
            group: group.clone(),
            sender: msg.sender.clone(),
            client_msg_id: msg.client_msg_id.to_owned(),
            lane: msg.lane,
            sent_at_ms: msg.sent_at_ms,
            body: Bytes::copy_from_slice(msg.body),
        }
    }

    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(H_TENANT, encode_token(self.tenant.as_str()).as_str());
        h.insert(H_GROUP, encode_token(self.group.as_str()).as_str());
        h.insert(H_SENDER, encode_token(self.sender.as_str()).as_str());
        h.insert(H_CLIENT_ID, encode_token(&self.client_msg_id).as_str());
        h.insert(H_LANE, lane_name(self.lane));
        h.insert(H_SENT_AT, self.sent_at_ms.to_string().as_str());
        h.insert(H_ACCEPTED_BY, self.accepted_by.as_str());
        h
    }

    fn parse(headers: Option<&HeaderMap>, body: Bytes) -> Result<Self, String> {
        let headers = headers.ok_or("no headers")?;
        let get = |name: &str| {
            headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .ok_or_else(|| format!("no {name}"))
        };
        let token = |name: &str| decode_token(&get(name)?).ok_or_else(|| format!("bad {name}"));
        Ok(Self {
            tenant: TenantId::new(&token(H_TENANT)?).map_err(|e| e.to_string())?,
            group: GroupId::new(&token(H_GROUP)?).map_err(|e| e.to_string())?,
            sender: UserId::new(&token(H_SENDER)?).map_err(|e| e.to_string())?,
            client_msg_id: token(H_CLIENT_ID)?,
            lane: lane_of(&get(H_LANE)?).ok_or("bad lane")?,
            sent_at_ms: get(H_SENT_AT)?.parse().map_err(|_| "bad sent-at")?,
            body,
            accepted_by: get(H_ACCEPTED_BY)?,
        })
    }

    /// Sends it to `node` and waits for the answer (at most the client's request time-out).
    pub(crate) async fn request(
        self,
        client: &async_nats::Client,
        prefix: &str,
        node: &str,
    ) -> Result<Appended, StoreError> {
        let headers = self.headers();
        let answer = client
            .request_with_headers(subject(prefix, node), headers, self.body)
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                use async_nats::client::RequestErrorKind as Kind;
                return Err(match e.kind() {
                    // Nobody listens there (the node died or drained): nothing was appended.
                    Kind::NoResponders => StoreError::Fenced(format!(
                        "group {}'s owner {node} is not reachable; nothing was stored",
                        self.group
                    )),
                    // Never sent.
                    Kind::InvalidSubject | Kind::MaxPayloadExceeded => {
                        StoreError::Io(format!("forwarding to {node}: {e}"))
                    }
                    // Sent; the owner may have appended.
                    Kind::TimedOut | Kind::Other => {
                        StoreError::OutcomeUnknown(format!("forwarding to {node}: {e}"))
                    }
                });
            }
        };
        outcome(answer.headers.as_ref(), node)
    }
}

/// What a forwarded append's answer means for the sender.
fn outcome(headers: Option<&HeaderMap>, node: &str) -> Result<Appended, StoreError> {
    let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let detail = get(H_DETAIL).unwrap_or("").to_owned();
    let seq = get(H_SEQ).and_then(|s| s.parse::<u64>().ok());
    match (get(H_RESULT), seq) {
        (Some("new"), Some(seq)) => Ok(Appended::New { seq }),
        (Some("duplicate"), Some(seq)) => Ok(Appended::Duplicate { seq }),
        (Some("fenced"), _) => Err(StoreError::Fenced(format!("at {node}: {detail}"))),
        (Some("unknown"), _) => Err(StoreError::OutcomeUnknown(format!("at {node}: {detail}"))),
        (Some("refused"), _) => Err(StoreError::Io(format!("at {node}: {detail}"))),
        _ => Err(StoreError::OutcomeUnknown(format!(
            "{node} answered a forwarded append without a result"
        ))),
    }
}

/// What the owner's side of forwarding needs.
#[derive(Clone)]
pub(crate) struct Owner {
    pub(crate) client: async_nats::Client,
    pub(crate) prefix: String,
    pub(crate) log: Arc<JetStreamLog>,
    pub(crate) served: watch::Receiver<BTreeSet<u16>>,
    pub(crate) keeper: KeeperHandle,
    pub(crate) heads: Arc<Heads>,
}

/// Serves forwarded appends for `node` until the subscription ends.
pub(crate) async fn serve(owner: Owner, node: String) {
    let (client, subject) = (owner.client.clone(), subject(&owner.prefix, &node));
    let mut requests = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%subject, error = %e, "cannot serve forwarded appends");
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(MAX_FORWARDED_IN_FLIGHT));
    while let Some(request) = requests.next().await {
        let Some(reply) = request.reply.clone() else {
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let answer = answer("refused", None, "the owner is busy; not stored, retry");
            let _ = client
                .publish_with_headers(reply, answer, Bytes::new())
                .await;
            continue;
        };
        let owner = owner.clone();
        tokio::spawn(async move {
            let answer = match Forwarded::parse(request.headers.as_ref(), request.payload) {
                Err(detail) => answer("refused", None, &format!("bad request: {detail}")),
                Ok(f) => append(f, &owner).await,
            };
            let _ = owner
                .client
                .publish_with_headers(reply, answer, Bytes::new())
                .await;
            drop(permit);
        });
    }
}

/// The owner's side: the same served check, fence report and commit notice as a local
/// append.
async fn append(f: Forwarded, owner: &Owner) -> HeaderMap {
    let shard = shard_of(&f.tenant, &f.group);
    if !owner.served.borrow().contains(&shard) {
        return answer(
            "fenced",
            None,
            &format!("shard {shard} is not served here (yet); nothing was stored"),
        );
    }
    let appended = owner
        .log
        .append_owned(
            f.tenant.clone(),
            f.group.clone(),
            f.sender.clone(),
            f.client_msg_id.clone(),
            f.lane,
            f.sent_at_ms,
            f.body.clone(),
        )
        .await;
    match appended {
        Ok((Appended::New { seq }, stream_seq)) => {
            Notice {
                tenant: &f.tenant,
                group: &f.group,
                seq,
                stream_seq,
                sender: &f.sender,
                client_msg_id: &f.client_msg_id,
                lane: f.lane,
                sent_at_ms: f.sent_at_ms,
                accepted_by: &f.accepted_by,
            }
            .announce(&owner.client, &owner.prefix, f.body, &owner.heads)
            .await;
            answer("new", Some(seq), "")
        }
        Ok((Appended::Duplicate { seq }, _)) => answer("duplicate", Some(seq), ""),
        Err(e @ ClusterError::Fenced { .. }) => {
            owner.keeper.report_fenced(shard);
            answer("fenced", None, &e.to_string())
        }
        Err(e) if e.outcome_unknown() => answer("unknown", None, &e.to_string()),
        Err(e) => answer("refused", None, &e.to_string()),
    }
}

fn answer(result: &str, seq: Option<u64>, detail: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(H_RESULT, result);
    if let Some(seq) = seq {
        h.insert(H_SEQ, seq.to_string().as_str());
    }
    if !detail.is_empty() {
        // Header values are one line.
        h.insert(H_DETAIL, detail.replace(['\r', '\n'], " ").as_str());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_append_reads_back_intact_and_a_bad_one_is_refused() {
        let (tenant, group) = (
            TenantId::new("t.1").unwrap(),
            GroupId::new("g.1@x").unwrap(),
        );
        let sender = UserId::new("bob").unwrap();
        let f = Forwarded::new(
            &tenant,
            &group,
            &NewMessage {
                sender: &sender,
                lane: Lane::Low,
                client_msg_id: "c 1",
                sent_at_ms: 9,
                body: b"body",
            },
            "node-a",
        );
        let back = Forwarded::parse(Some(&f.headers()), f.body.clone()).unwrap();
        assert_eq!(
            (back.tenant, back.group, back.sender),
            (tenant, group, sender)
        );
        assert_eq!((back.client_msg_id.as_str(), back.lane), ("c 1", Lane::Low));
        assert_eq!((back.sent_at_ms, back.accepted_by.as_str()), (9, "node-a"));
        assert_eq!(&back.body[..], b"body");
        let mut bad = f.headers();
        bad.insert(H_LANE, "urgent");
        assert!(Forwarded::parse(Some(&bad), Bytes::new()).is_err());
        assert!(Forwarded::parse(None, Bytes::new()).is_err());
    }

    #[test]
    fn each_answer_means_what_it_says_and_nothing_unclear_is_taken_for_success() {
        let got = |h: HeaderMap| outcome(Some(&h), "node-b");
        assert!(matches!(
            got(answer("new", Some(4), "")),
            Ok(Appended::New { seq: 4 })
        ));
        assert!(matches!(
            got(answer("duplicate", Some(2), "")),
            Ok(Appended::Duplicate { seq: 2 })
        ));
        assert!(matches!(
            got(answer("fenced", None, "x")),
            Err(StoreError::Fenced(_))
        ));
        assert!(matches!(
            got(answer("refused", None, "x")),
            Err(StoreError::Io(_))
        ));
        assert!(matches!(
            got(answer("unknown", None, "x")),
            Err(StoreError::OutcomeUnknown(_))
        ));
        // A "new" without a seq, or no result at all: the append may have happened.
        assert!(matches!(
            got(answer("new", None, "")),
            Err(StoreError::OutcomeUnknown(_))
        ));
        assert!(matches!(
            outcome(None, "node-b"),
            Err(StoreError::OutcomeUnknown(_))
        ));
        let h = answer("fenced", None, "line one\nline two");
        assert_eq!(
            h.get(H_DETAIL).map(|v| v.as_str()),
            Some("line one line two")
        );
    }
}
