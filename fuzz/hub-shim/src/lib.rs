//! The routing hub of `switchboard-edge`, compiled on its own so a fuzz target can drive it
//! without sockets.
//!
//! The edge crate opens sessions and reads their outboxes only from its connection code
//! (`Hub::open_session`, `outbox`, `PushPlanner` are `pub(crate)`), so from outside it a
//! session exists only behind a QUIC connection. This crate includes the hub's source files
//! as they are (`#[path]`, no copy) together with [`local`], a socket-free stand-in for
//! `conn.rs`: a session opened from a `Hello`, requests made as `conn::handle` makes them,
//! and its push stream produced by the real `PushPlanner` the way `conn::push_writer` drives
//! it. When the edge crate grows a public local-session API this crate can go.
//!
//! Only `hub.rs` and the modules it names (`rates`, `serving`, `breaker`) are included; if
//! the hub starts using another module of the edge crate, add it below.

#![allow(dead_code, unreachable_pub)]

#[path = "../../../host/edge/src/breaker.rs"]
mod breaker;
#[path = "../../../host/edge/src/hub.rs"]
pub mod hub;
#[path = "../../../host/edge/src/rates.rs"]
mod rates;
#[path = "../../../host/edge/src/serving.rs"]
mod serving;

pub mod local;

pub use hub::{Hub, RequestError};
