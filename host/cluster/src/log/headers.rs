//! What a log message carries besides its body: the `Sb-*` headers (table in the parent
//! module's docs), parsed back into [`Meta`], and the two dedupe keys (the writer's own
//! window and the server's `Nats-Msg-Id`).

use async_nats::header::HeaderMap;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use switchboard_core::{GroupId, Lane, TenantId, UserId};
use switchboard_store::StoredMessage;

use crate::names::decode_token;
use crate::ClusterError;

/// The dedupe key of a sender's client message id (in a group's own window).
pub(super) fn dedupe_key(sender: &str, client_msg_id: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update((sender.len() as u32).to_be_bytes());
    h.update(sender.as_bytes());
    h.update(client_msg_id.as_bytes());
    let digest = h.finalize();
    let mut key = [0; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// `Nats-Msg-Id`: unique per (tenant, group, sender, client id) within a shard's stream.
pub(super) fn msg_id(tenant: &TenantId, group: &GroupId, key: &[u8; 16]) -> String {
    let mut h = Sha256::new();
    for id in [tenant.as_str(), group.as_str()] {
        h.update([id.len() as u8]);
        h.update(id.as_bytes());
    }
    h.update(key);
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(super) const H_SEQ: &str = "Sb-Seq";
pub(super) const H_SENDER: &str = "Sb-Sender";
pub(super) const H_CLIENT_ID: &str = "Sb-Client-Id";
pub(super) const H_LANE: &str = "Sb-Lane";
pub(super) const H_SENT_AT: &str = "Sb-Sent-At";
pub(super) const H_OWNER: &str = "Sb-Owner";
pub(super) const H_EPOCH: &str = "Sb-Epoch";

pub(super) fn lane_name(lane: Lane) -> &'static str {
    match lane {
        Lane::High => "high",
        Lane::Normal => "normal",
        Lane::Low => "low",
    }
}

/// A message's headers, parsed.
pub(super) struct Meta {
    pub(super) seq: u64,
    pub(super) sender: UserId,
    pub(super) client_msg_id: String,
    pub(super) lane: Lane,
    pub(super) sent_at_ms: u64,
}

pub(super) fn parse_meta(
    subject: &str,
    stream_seq: u64,
    headers: Option<&HeaderMap>,
) -> Result<Meta, ClusterError> {
    let corrupt = |detail: String| ClusterError::Corrupt {
        subject: subject.to_owned(),
        stream_seq,
        detail,
    };
    let headers = headers.ok_or_else(|| corrupt("no headers".into()))?;
    let get = |name: &str| {
        headers
            .get(name)
            .map(|v| v.as_str())
            .ok_or_else(|| corrupt(format!("no {name}")))
    };
    let number = |name: &str| -> Result<u64, ClusterError> {
        get(name)?
            .parse()
            .map_err(|e| corrupt(format!("{name}: {e}")))
    };
    let sender = decode_token(get(H_SENDER)?)
        .and_then(|s| UserId::new(&s).ok())
        .ok_or_else(|| corrupt(format!("bad {H_SENDER}")))?;
    let client_msg_id =
        decode_token(get(H_CLIENT_ID)?).ok_or_else(|| corrupt(format!("bad {H_CLIENT_ID}")))?;
    let lane = match get(H_LANE)? {
        "high" => Lane::High,
        "normal" => Lane::Normal,
        "low" => Lane::Low,
        other => return Err(corrupt(format!("{H_LANE}: {other:?}"))),
    };
    Ok(Meta {
        seq: number(H_SEQ)?,
        sender,
        client_msg_id,
        lane,
        sent_at_ms: number(H_SENT_AT)?,
    })
}

pub(super) fn stored(meta: Meta, body: Bytes) -> StoredMessage {
    StoredMessage {
        seq: meta.seq,
        lane: meta.lane,
        sender: meta.sender,
        client_msg_id: meta.client_msg_id,
        sent_at_ms: meta.sent_at_ms,
        body,
    }
}
