//! Between the plain types of `types.rs` and the bindgen types of the policy world, with the
//! output checks of the contract (sizes of reasons, flag lists and names).

use crate::bindings::policy::switchboard::policy::types as wit;
use crate::host::truncate_to_boundary;
use crate::limits::PolicyLimits;
use crate::types::{
    Delivery, Flag, FlagContext, Lane, LoadInfo, MessageInfo, ReceiptAction, ReceiptInfo,
    ReceiptKind, Shedding, Verdict, BODY_PREFIX_BYTES,
};

pub(crate) fn message_info(m: &MessageInfo) -> wit::MessageInfo<'_> {
    let prefix = &m.body_prefix[..m.body_prefix.len().min(BODY_PREFIX_BYTES)];
    wit::MessageInfo {
        group: &m.group,
        sender: &m.sender,
        body_size: m.body_size,
        body_prefix: prefix,
        group_size: m.group_size,
        connected_members: m.connected_members,
    }
}

pub(crate) fn receipt_info(r: &ReceiptInfo) -> wit::ReceiptInfo<'_> {
    wit::ReceiptInfo {
        group: &r.group,
        seq: r.seq,
        reader: &r.reader,
        kind: match r.kind {
            ReceiptKind::Delivered => wit::ReceiptKind::Delivered,
            ReceiptKind::Read => wit::ReceiptKind::Read,
        },
        group_size: r.group_size,
    }
}

pub(crate) fn flag_context(c: &FlagContext) -> wit::FlagContext<'_> {
    wit::FlagContext {
        user: &c.user,
        group: c.group.as_deref(),
    }
}

pub(crate) fn load_info(l: &LoadInfo) -> wit::LoadInfo {
    wit::LoadInfo {
        level: l.level,
        tenant_message_rate: l.tenant_message_rate,
        tenant_connections: l.tenant_connections,
    }
}

/// A reject reason longer than the limit is cut (the WIT says "at most 256 bytes are kept"),
/// not treated as invalid.
pub(crate) fn verdict(v: wit::Verdict, limits: &PolicyLimits) -> Result<Verdict, String> {
    Ok(match v {
        wit::Verdict::Accept(d) => Verdict::Accept(Delivery {
            lane: match d.lane {
                wit::Lane::High => Lane::High,
                wit::Lane::Normal => Lane::Normal,
                wit::Lane::Low => Lane::Low,
            },
            notify_offline: d.notify_offline,
        }),
        wit::Verdict::Reject(mut reason) => {
            let keep = truncate_to_boundary(&reason, limits.max_reject_reason_bytes).len();
            reason.truncate(keep);
            Verdict::Reject(reason)
        }
    })
}

pub(crate) fn receipt_action(a: wit::ReceiptAction) -> ReceiptAction {
    match a {
        wit::ReceiptAction::Forward => ReceiptAction::Forward,
        wit::ReceiptAction::Aggregate => ReceiptAction::Aggregate,
        wit::ReceiptAction::Drop => ReceiptAction::Drop,
    }
}

/// More than `max_flags` flags, or an empty or too long name, is invalid output: a cut
/// list would silently change which features users see.
pub(crate) fn flags(flags: Vec<wit::Flag>, limits: &PolicyLimits) -> Result<Vec<Flag>, String> {
    if flags.len() > limits.max_flags {
        return Err(format!(
            "evaluate-flags returned {} flags; at most {} are allowed",
            flags.len(),
            limits.max_flags
        ));
    }
    flags
        .into_iter()
        .map(|f| {
            if f.name.is_empty() || f.name.len() > limits.max_name_bytes {
                return Err(format!(
                    "flag names must be 1 to {} bytes; got one of {} bytes",
                    limits.max_name_bytes,
                    f.name.len()
                ));
            }
            Ok(Flag {
                name: f.name,
                enabled: f.enabled,
            })
        })
        .collect()
}

pub(crate) fn shedding(s: wit::Shedding) -> Shedding {
    Shedding {
        receipts: s.receipts,
        presence: s.presence,
        background_delivery: s.background_delivery,
    }
}
