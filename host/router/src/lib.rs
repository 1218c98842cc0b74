//! Switchboard's routing core without IO.
//!
//! Routing decisions live here as plain values driven by their caller: no tokio, no quinn, no
//! sled, no wasmtime, no clock (callers pass `now`). The node's driver (`host/edge`) owns the
//! sockets, tasks and locks and calls in; the seeded simulation (`host/sim`) drives
//! the same code with simulated clients, time and faults.
//!
//! - [`planner`]: what one session's push streams carry next — exactly once, in order, gaps
//!   filled from the log, `Resume` before a subscription's first delivery, nudges at most once
//!   per interval.
//! - [`fanout`]: a group's durable head and subscribers, and active-first publishing in two
//!   phases (foreground copies first, then background copies or nudges).
//! - [`commit`]: what a commit batch's flush means for each pending send — publish, reveal
//!   or an unknown outcome, and which are acked.
//! - [`gate`]: when a batch's background phase stops waiting for its foreground copies (the
//!   deadline follows the foreground phase's progress, up to a cap).
//! - [`load`]: the node's load level — a sample's pressure, hysteresis, the measured and
//!   forced levels and the one in force, whether a tenant sheds at it.
//! - [`membership`]: the admit/drop core — what a `Join`/`Leave` or an admin's add/remove
//!   does to every connected session of the user.
//! - [`rates`]: rate-limit admission — which buckets a request takes from and in what order,
//!   a refusal and its retry time, the users whose buckets are parked until they refill.
//! - [`log`]: the [`log::GroupLog`] trait through which the planner reads durable messages.

pub mod commit;
pub mod fanout;
pub mod gate;
pub mod load;
pub mod log;
pub mod membership;
pub mod planner;
pub mod rates;

pub use fanout::{defers_background, Copy, GroupFanout, Published, Subscriber};
pub use log::{GroupLog, LogError};
pub use planner::{PlanItem, PlanStats, Planned, SessionPlanner, NUDGE_INTERVAL_MS};

impl<S: Subscriber> Subscriber for std::sync::Arc<S> {
    fn session_id(&self) -> u64 {
        (**self).session_id()
    }
    fn presence(&self) -> switchboard_core::PresenceState {
        (**self).presence()
    }
}
