//! The policy world's values as plain Rust types, and the built-in defaults.
//!
//! These mirror `wit/policy.wit` (`switchboard:policy/types@0.1.0`) one to one, so callers of
//! this crate never see a wasmtime or bindgen type. Conversions live in `convert.rs`.

/// Delivery lanes and receipt kinds are the node's own (`switchboard-core`), so the hub uses
/// a verdict's lane as is.
pub use switchboard_core::{Lane, ReceiptKind};

/// What the node knows about a message when it asks for a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageInfo {
    pub group: String,
    pub sender: String,
    /// Size of the body in bytes.
    pub body_size: u32,
    /// Up to the first [`BODY_PREFIX_BYTES`] bytes of the body; longer prefixes are cut.
    pub body_prefix: Vec<u8>,
    /// Members of the group.
    pub group_size: u32,
    /// Members connected right now.
    pub connected_members: u32,
}

/// How many bytes of a message body a plugin sees (`message-info.body-prefix`).
pub const BODY_PREFIX_BYTES: usize = 64;

/// How to deliver an accepted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delivery {
    pub lane: Lane,
    /// Emit a push-notification event for members that are offline.
    pub notify_offline: bool,
}

/// The verdict on one message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    Accept(Delivery),
    /// Refuse the message; the sender sees this reason (at most
    /// [`PolicyLimits::max_reject_reason_bytes`](crate::PolicyLimits), cut at a character
    /// boundary).
    Reject(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptInfo {
    pub group: String,
    /// Sequence number of the message the receipt is about.
    pub seq: u64,
    /// Who sent the receipt.
    pub reader: String,
    pub kind: ReceiptKind,
    pub group_size: u32,
}

/// What to do with one receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptAction {
    /// Pass it to the message's sender now.
    Forward,
    /// Count it into the message's aggregate ("read by 37 of 120") instead.
    Aggregate,
    /// Store nothing, tell no one.
    Drop,
}

/// Who a set of feature flags is evaluated for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlagContext {
    pub user: String,
    /// The group, when flags are evaluated for a group context.
    pub group: Option<String>,
}

/// One evaluated flag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Flag {
    pub name: String,
    pub enabled: bool,
}

/// The node's load, as measured by the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadInfo {
    /// 0 = normal, 1 = elevated, 2 = high, 3 = critical.
    pub level: u8,
    /// Messages per second accepted for this tenant recently.
    pub tenant_message_rate: u32,
    /// Connections this tenant has open on the node.
    pub tenant_connections: u32,
}

/// What to shed at the current load. Core messaging is never shed by this hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shedding {
    pub receipts: bool,
    pub presence: bool,
    /// Hold deliveries to background members until they come to the foreground.
    pub background_delivery: bool,
}

/// The built-in policy: what a tenant without a plugin gets, and what replaces any plugin
/// call that fails (trap, budget overrun, invalid output).
///
/// `sdk/plugin`'s defaults for every hook are meant to be the same values.
#[derive(Debug, Clone, Copy, Default)]
pub struct Builtin;

impl Builtin {
    /// Accept on the normal lane, without offline notification.
    pub fn on_message(_message: &MessageInfo) -> Verdict {
        Verdict::Accept(Delivery {
            lane: Lane::Normal,
            notify_offline: false,
        })
    }

    /// Forward every receipt.
    pub fn on_receipt(_receipt: &ReceiptInfo) -> ReceiptAction {
        ReceiptAction::Forward
    }

    /// No flags.
    pub fn evaluate_flags(_context: &FlagContext) -> Vec<Flag> {
        Vec::new()
    }

    /// The degradation ladder: level 1 sheds presence, level 2 also receipts, level 3 also
    /// holds deliveries to background members.
    pub fn on_load(load: &LoadInfo) -> Shedding {
        Shedding {
            presence: load.level >= 1,
            receipts: load.level >= 2,
            background_delivery: load.level >= 3,
        }
    }
}

/// The hooks of the policy world, for statistics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    OnMessage,
    OnReceipt,
    EvaluateFlags,
    OnLoad,
}

impl Hook {
    pub const ALL: [Hook; 4] = [
        Hook::OnMessage,
        Hook::OnReceipt,
        Hook::EvaluateFlags,
        Hook::OnLoad,
    ];

    /// The hook's name in the WIT world.
    pub fn wit_name(self) -> &'static str {
        match self {
            Hook::OnMessage => "on-message",
            Hook::OnReceipt => "on-receipt",
            Hook::EvaluateFlags => "evaluate-flags",
            Hook::OnLoad => "on-load",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The hook's WIT name.
impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wit_name())
    }
}

/// The answer to one hook call, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<T> {
    pub value: T,
    pub source: Source,
}

impl<T> Decision<T> {
    pub fn is_fallback(&self) -> bool {
        matches!(self.source, Source::Fallback(_))
    }

    /// Why the built-in default was used, if it was.
    pub fn fallback_reason(&self) -> Option<&FallbackReason> {
        match &self.source {
            Source::Plugin => None,
            Source::Fallback(reason) => Some(reason),
        }
    }
}

/// Where a [`Decision`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The tenant's plugin answered within its budget.
    Plugin,
    /// The plugin call failed; the value is [`Builtin`]'s.
    Fallback(FallbackReason),
}

/// Why a plugin call was replaced by the built-in default. The instance that failed is
/// discarded; the next call gets a fresh one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FallbackReason {
    /// The plugin trapped (including `unreachable`/panic, stack overflow, the memory cap, or
    /// calling WASI `exit`).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The call used up its fuel (instruction budget).
    #[error("plugin ran out of fuel")]
    OutOfFuel,
    /// The call ran past its wall-clock deadline.
    #[error("plugin ran past its deadline")]
    Deadline,
    /// The plugin returned something outside the contract (too many flags, a name too long,
    /// more data than the host accepts in one transfer, malformed canonical ABI values).
    #[error("plugin returned invalid output: {0}")]
    InvalidOutput(String),
    /// No instance could be made for the call (instance pool exhausted, or instantiation
    /// failed).
    #[error("plugin unavailable: {0}")]
    Unavailable(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_ladder() {
        let at = |level| {
            Builtin::on_load(&LoadInfo {
                level,
                ..LoadInfo::default()
            })
        };
        assert_eq!(at(0), Shedding::default());
        assert_eq!(
            at(1),
            Shedding {
                presence: true,
                receipts: false,
                background_delivery: false
            }
        );
        assert_eq!(
            at(2),
            Shedding {
                presence: true,
                receipts: true,
                background_delivery: false
            }
        );
        for level in [3, 4, 255] {
            assert_eq!(
                at(level),
                Shedding {
                    presence: true,
                    receipts: true,
                    background_delivery: true
                }
            );
        }
    }

    #[test]
    fn builtin_defaults() {
        assert_eq!(
            Builtin::on_message(&MessageInfo::default()),
            Verdict::Accept(Delivery {
                lane: Lane::Normal,
                notify_offline: false
            })
        );
        let receipt = ReceiptInfo {
            group: "g".into(),
            seq: 1,
            reader: "u".into(),
            kind: ReceiptKind::Read,
            group_size: 3,
        };
        assert_eq!(Builtin::on_receipt(&receipt), ReceiptAction::Forward);
        assert!(Builtin::evaluate_flags(&FlagContext::default()).is_empty());
    }
}
