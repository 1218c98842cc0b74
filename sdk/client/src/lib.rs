//! The Switchboard client SDK for apps: one QUIC connection to a node, group messaging over
//! `switchboard/1`, and reconnects that lose nothing.
//!
//! ```no_run
//! use switchboard_client::{Client, ClientConfig, Event};
//!
//! # async fn run() -> Result<(), switchboard_client::ClientError> {
//! // A node with a certificate from a public CA, checked against Mozilla's roots. For a dev
//! // node's self-signed certificate: `.with_roots(vec![load_cert("dev-data/cert.der".as_ref())?])`.
//! let cfg = ClientConfig::for_server("chat.example.com:7700", "sb1.…")
//!     .with_outbox("/data/app/switchboard-outbox");
//! let (client, mut events) = Client::connect(cfg).await?;
//! client.join("general").await?;
//! client.send("general", "hello").await?;
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Message(m) => println!("[{} #{}] {}", m.group, m.seq, m.sender),
//!         Event::Closed { error } => eprintln!("closed: {error:?}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # What the client guarantees
//! - **Each message once, in order.** Per group, [`Event::Message`]s arrive in increasing
//!   `seq` and never twice, across reconnects too ([`Events`]).
//! - **Nothing missed across reconnects.** After a lost connection the client reconnects with
//!   exponential backoff and jitter ([`ReconnectPolicy`]) and resumes every group after the
//!   highest `seq` it saw ([`Client::cursors`]).
//! - **Sends are stored once.** A send in flight when the connection drops is re-sent after the
//!   reconnect with the same `client_msg_id`; the node dedupes it ([`Client`]).
//! - **Clear errors.** Node refusals carry their protocol [`ErrorCode`]
//!   ([`ClientError::code`]); a refused session (bad or expired token, unknown tenant) stops
//!   the client instead of retrying forever.
//! - **Sends survive the app.** With an outbox directory ([`ClientConfig::outbox_dir`]) a send
//!   stays on disk until the node acknowledged or refused it, and the next client opening the
//!   directory sends it again with its id ([`Client::queue_send`], [`Event::OutboxSent`]).
//! - **Clear lifecycle.** [`Client::foreground`]/[`Client::background`] (presence),
//!   [`Client::pause`]/[`Client::resume`] (offline without losing cursors),
//!   [`Client::network_changed`] (QUIC migration, else reconnect).
//! - **Bounded.** Requests in flight, queued commands, buffered events and the outbox are all
//!   bounded; a slow app slows the node down instead of growing memory ([`Events`]).
//!
//! # Shape
//! [`Client`] is a cheap handle to one connection task, which owns the QUIC connection and
//! writes every frame; a reader task per receive stream hands pushes to [`Events`]. The
//! decisions — request matching, dedupe and cursors, backoff — are plain data structures
//! without IO, tested on their own.
//!
//! Trust is the web PKI's by default ([`Trust`]), or roots of the app's choosing, with optional
//! certificate pins; TLS 1.3 and the ring provider are configured per client, nothing
//! process-wide. [`tls::client_config`] builds the QUIC config that trusts one node
//! certificate for clients of their own (the benchmarks' and tests' raw clients). Events come
//! as a stream ([`Events::next`], or `futures::Stream`) or as callbacks ([`Events::listen`]).

mod backoff;
mod client;
mod config;
mod driver;
mod error;
mod events;
mod outbox;
mod requests;
mod shared;
pub mod tls;
mod tracker;

pub use client::{Client, FetchResult, SendAck};
pub use config::{cert_sha256, load_cert, ClientConfig, OutboxLimits, ReconnectPolicy, Trust};
pub use error::ClientError;
pub use events::{Event, EventListener, Events};

pub use switchboard_core::{ErrorCode, PresenceState, ReceiptKind};
pub use switchboard_wire::Message;
