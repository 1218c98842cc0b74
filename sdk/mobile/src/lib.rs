//! Switchboard for Kotlin, Swift and Python apps: [`switchboard_client`] exposed through
//! UniFFI (proc-macro style, no UDL). This crate only translates — options into a
//! [`ClientConfig`], errors into [`SwitchboardError`], events into [`ClientEvent`] — and owns
//! the tokio runtime the client runs on; every behaviour lives in `switchboard-client`.
//!
//! - **Async.** Calls that talk to the node are `async` here and become `suspend` functions
//!   in Kotlin, `async` in Swift and coroutines in Python. They run on this crate's runtime
//!   (two worker threads), whatever the caller's executor is.
//! - **Events.** The app passes an [`EventListener`] to [`connect`]; it is called for each
//!   [`ClientEvent`] in order, from a runtime thread (return quickly; hop to the UI thread
//!   yourself).
//! - **Errors.** Every failure is a [`SwitchboardError`] variant (a Kotlin/Swift/Python
//!   exception subclass per kind), the node's protocol code kept where there is one.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use switchboard_client::{
    Client, ClientConfig, ClientError, ErrorCode, Event, PresenceState, ReconnectPolicy, Trust,
};

uniffi::setup_scaffolding!();

mod convert;

pub use convert::{ClientEvent, Cursor, Flag, GroupHead, GroupMessage, ReceiptKind};

/// How to reach a node and who to be there. Only `server` and `token` are required.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ClientOptions {
    /// `"host:port"`: a DNS name, an IPv4 address or a bracketed IPv6 address.
    pub server: String,
    /// The `sb1.…` token your backend minted for this user.
    pub token: String,
    /// Name checked against the node's certificate; default the host part of `server`.
    #[uniffi(default = None)]
    pub server_name: Option<String>,
    /// Root certificates (DER) to trust instead of the public web PKI: a private CA, or a
    /// development node's self-signed certificate. Empty: Mozilla's roots (webpki-roots).
    #[uniffi(default = [])]
    pub ca_certificates: Vec<Vec<u8>>,
    /// SHA-256 digests (32 bytes each) of certificates to pin: the node's certificate must
    /// also be one of them. Empty: no pinning.
    #[uniffi(default = [])]
    pub pinned_cert_sha256: Vec<Vec<u8>>,
    /// A directory the app owns (e.g. `filesDir/switchboard-outbox`) for the offline outbox:
    /// unacknowledged sends are kept there and sent after a restart. None: memory only.
    #[uniffi(default = None)]
    pub outbox_dir: Option<String>,
    /// Cursors saved from [`SwitchboardClient::cursors`] to resume from after a restart.
    #[uniffi(default = [])]
    pub resume: Vec<Cursor>,
    /// Presence announced on connect.
    #[uniffi(default = true)]
    pub foreground: bool,
    /// Name/version for the node's logs (64 bytes at most).
    #[uniffi(default = None)]
    pub client_name: Option<String>,
    /// Longest a call (join, send, …) may take, including a reconnect. Default 30 s.
    #[uniffi(default = 30000)]
    pub request_timeout_ms: u64,
    /// Longest one connection attempt may take. Default 10 s.
    #[uniffi(default = 10000)]
    pub connect_timeout_ms: u64,
    /// Give up after this many consecutive failed reconnects (`ClientEvent.Closed` follows);
    /// None: keep trying (backoff 250 ms doubling to 30 s, with jitter).
    #[uniffi(default = None)]
    pub max_reconnect_attempts: Option<u32>,
}

/// Why a call failed. The node's refusals keep its protocol `code` (docs/protocol.md). The
/// text is `detail`, not `message`: Kotlin's exceptions already have a `message`.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum SwitchboardError {
    /// The token was refused: malformed or bad signature, expired, not yet valid, or its
    /// tenant is unknown. Reconnecting will not help: mint a new token.
    #[error("unauthorized ({code}): {detail}")]
    Unauthorized { code: u16, detail: String },
    /// The user is not a member of the group.
    #[error("not a member: {detail}")]
    NotMember { detail: String },
    /// The group does not exist.
    #[error("group not found: {detail}")]
    GroupNotFound { detail: String },
    /// The group is closed or full.
    #[error("join refused ({code}): {detail}")]
    JoinRefused { code: u16, detail: String },
    /// The tenant's policy refused the message.
    #[error("rejected by policy: {detail}")]
    PolicyRejected { detail: String },
    /// Too many requests or the node is overloaded: retry after `retry_after_ms`.
    #[error("rate limited ({code}), retry after {retry_after_ms} ms: {detail}")]
    RateLimited {
        code: u16,
        retry_after_ms: u64,
        detail: String,
    },
    /// The message is larger than the node accepts.
    #[error("message body is {len} bytes; the node accepts at most {max}")]
    PayloadTooLarge { len: u64, max: u32 },
    /// Any other refusal by the node.
    #[error("refused ({code}): {detail}")]
    Refused {
        code: u16,
        retryable: bool,
        detail: String,
    },
    /// The node's certificate was not trusted (or not the pinned one).
    #[error("TLS: {detail}")]
    Tls { detail: String },
    /// The node could not be reached.
    #[error("cannot connect: {detail}")]
    Connect { detail: String },
    /// The call did not finish in time. A send may still have been stored: the outbox (if
    /// configured) sends it again with the same id.
    #[error("timed out")]
    Timeout,
    /// The client is closed.
    #[error("client is closed")]
    Closed,
    /// The outbox is at its bound (1000 sends or 16 MiB).
    #[error("outbox full: {entries} sends, {bytes} bytes pending")]
    OutboxFull { entries: u64, bytes: u64 },
    /// Options that cannot work (e.g. a pin that is not 32 bytes, queue_send without an outbox).
    #[error("invalid options: {detail}")]
    InvalidOptions { detail: String },
    /// The node said something this SDK does not understand.
    #[error("protocol: {detail}")]
    Protocol { detail: String },
    /// A local failure (files, sockets).
    #[error("io: {detail}")]
    Io { detail: String },
}

impl From<ClientError> for SwitchboardError {
    fn from(e: ClientError) -> Self {
        let retryable = e.is_retryable();
        match e {
            ClientError::Server {
                code,
                known,
                message,
                retry_after,
            } => match known {
                Some(
                    ErrorCode::InvalidToken
                    | ErrorCode::TokenExpired
                    | ErrorCode::TokenNotYetValid
                    | ErrorCode::UnknownTenant,
                ) => Self::Unauthorized {
                    code,
                    detail: message,
                },
                Some(ErrorCode::NotMember) => Self::NotMember { detail: message },
                Some(ErrorCode::GroupNotFound) => Self::GroupNotFound { detail: message },
                Some(ErrorCode::JoinRefused | ErrorCode::GroupFull) => Self::JoinRefused {
                    code,
                    detail: message,
                },
                Some(ErrorCode::PolicyRejected) => Self::PolicyRejected { detail: message },
                Some(ErrorCode::RateLimited | ErrorCode::Overloaded) => Self::RateLimited {
                    code,
                    retry_after_ms: retry_after.map_or(0, duration_ms),
                    detail: message,
                },
                _ => Self::Refused {
                    code,
                    retryable,
                    detail: message,
                },
            },
            ClientError::PayloadTooLarge { len, max } => Self::PayloadTooLarge {
                len: len as u64,
                max,
            },
            ClientError::Connect(detail) => Self::Connect { detail },
            ClientError::Tls(detail) => Self::Tls { detail },
            ClientError::Timeout => Self::Timeout,
            ClientError::Closed => Self::Closed,
            ClientError::Protocol(detail) => Self::Protocol { detail },
            ClientError::OutboxFull { entries, bytes } => Self::OutboxFull {
                entries: entries as u64,
                bytes,
            },
            ClientError::Io(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                Self::InvalidOptions {
                    detail: e.to_string(),
                }
            }
            ClientError::Io(e) => Self::Io {
                detail: e.to_string(),
            },
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Receives the client's events. Implement it in Kotlin, Swift or Python.
#[uniffi::export(foreign)]
pub trait EventListener: Send + Sync {
    /// One event, in order; called from an SDK thread. Return quickly.
    fn on_event(&self, event: ClientEvent);
}

/// The runtime every client of the process runs on: two worker threads are plenty for a
/// phone's handful of connections (one per account), and a runtime of its own keeps the SDK
/// independent of whatever executor the app's language uses.
fn runtime() -> Result<&'static tokio::runtime::Runtime, SwitchboardError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("switchboard")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| SwitchboardError::Io {
            detail: format!("starting the SDK runtime: {e}"),
        })
}

/// Runs `fut` on the SDK runtime and waits for it from any executor.
async fn on_runtime<T: Send + 'static>(
    fut: impl Future<Output = Result<T, SwitchboardError>> + Send + 'static,
) -> Result<T, SwitchboardError> {
    runtime()?
        .spawn(fut)
        .await
        .map_err(|e| SwitchboardError::Io {
            detail: format!("SDK task failed: {e}"),
        })?
}

fn config(o: ClientOptions) -> Result<ClientConfig, SwitchboardError> {
    let mut cfg = ClientConfig::for_server(o.server, o.token);
    if let Some(name) = o.server_name {
        cfg.server_name = name;
    }
    if !o.ca_certificates.is_empty() {
        cfg.trust = Trust::Roots(o.ca_certificates);
    }
    for pin in o.pinned_cert_sha256 {
        let pin: [u8; 32] = pin
            .try_into()
            .map_err(|_| SwitchboardError::InvalidOptions {
                detail: "a certificate pin is a SHA-256 digest: 32 bytes".into(),
            })?;
        cfg.pins.push(pin);
    }
    cfg.outbox_dir = o.outbox_dir.map(Into::into);
    cfg.resume = o.resume.into_iter().map(|c| (c.group, c.seq)).collect();
    cfg.presence = presence(o.foreground);
    if let Some(name) = o.client_name {
        cfg.client_name = name;
    } else {
        cfg.client_name = concat!("switchboard-mobile/", env!("CARGO_PKG_VERSION")).into();
    }
    cfg.request_timeout = Duration::from_millis(o.request_timeout_ms);
    cfg.connect_timeout = Duration::from_millis(o.connect_timeout_ms);
    cfg.reconnect = ReconnectPolicy {
        max_attempts: o.max_reconnect_attempts,
        ..ReconnectPolicy::default()
    };
    Ok(cfg)
}

fn presence(foreground: bool) -> PresenceState {
    if foreground {
        PresenceState::Foreground
    } else {
        PresenceState::Background
    }
}

/// Connects and says hello; the listener then gets `Connected` and every later event.
///
/// The first attempt is not retried: a refused token fails here with
/// `SwitchboardError.Unauthorized`, an untrusted certificate with `Tls`, an unreachable
/// node with `Connect` or `Timeout`. Later connection losses reconnect by themselves.
#[uniffi::export]
pub async fn connect(
    options: ClientOptions,
    listener: Arc<dyn EventListener>,
) -> Result<Arc<SwitchboardClient>, SwitchboardError> {
    let cfg = config(options)?;
    on_runtime(async move {
        let (client, events) = Client::connect(cfg).await?;
        events.listen(move |event: Event| {
            if let Some(event) = convert::event(event) {
                listener.on_event(event);
            }
        });
        Ok(Arc::new(SwitchboardClient { client }))
    })
    .await
}

/// The SHA-256 of a certificate (DER), for `ClientOptions.pinned_cert_sha256`.
#[uniffi::export]
pub fn cert_sha256(der: Vec<u8>) -> Vec<u8> {
    switchboard_client::cert_sha256(&der).to_vec()
}

/// What a send got back: the node stored it durably as `seq`.
#[derive(Debug, Clone, uniffi::Record)]
pub struct SendReceipt {
    pub seq: u64,
    /// The node had this id already (a resend); it was not stored twice.
    pub duplicate: bool,
    pub client_msg_id: String,
}

/// A page of a group's history.
#[derive(Debug, Clone, uniffi::Record)]
pub struct FetchPage {
    pub messages: Vec<GroupMessage>,
    pub head_seq: u64,
}

/// A connected client. Thread-safe; one per account.
#[derive(Debug, uniffi::Object)]
pub struct SwitchboardClient {
    client: Client,
}

#[uniffi::export]
impl SwitchboardClient {
    /// Joins a group (open groups) or confirms membership; returns its newest seq.
    pub async fn join(&self, group: String) -> Result<u64, SwitchboardError> {
        let c = self.client.clone();
        on_runtime(async move { Ok(c.join(&group).await?) }).await
    }

    /// Leaves a group.
    pub async fn leave(&self, group: String) -> Result<(), SwitchboardError> {
        let c = self.client.clone();
        on_runtime(async move { Ok(c.leave(&group).await?) }).await
    }

    /// Sends and waits until the node stored the message durably. With an outbox, the send is
    /// kept on disk until then, and sent again after a timeout or an app restart.
    pub async fn send(
        &self,
        group: String,
        body: Vec<u8>,
    ) -> Result<SendReceipt, SwitchboardError> {
        let c = self.client.clone();
        on_runtime(async move {
            let ack = c.send(&group, body).await?;
            Ok(SendReceipt {
                seq: ack.seq,
                duplicate: ack.duplicate,
                client_msg_id: ack.client_msg_id,
            })
        })
        .await
    }

    /// Stores the send in the outbox and returns its client message id at once; it goes out
    /// when connected, even after an app restart (`ClientEvent.OutboxSent` reports it).
    /// Needs `ClientOptions.outbox_dir`.
    pub async fn queue_send(
        &self,
        group: String,
        body: Vec<u8>,
    ) -> Result<String, SwitchboardError> {
        let c = self.client.clone();
        on_runtime(async move { Ok(c.queue_send(&group, body).await?) }).await
    }

    /// Up to `limit` messages of `group` after `after_seq` (history, or what a nudge announced).
    pub async fn fetch(
        &self,
        group: String,
        after_seq: u64,
        limit: u32,
    ) -> Result<FetchPage, SwitchboardError> {
        let c = self.client.clone();
        on_runtime(async move {
            let page = c.fetch(&group, after_seq, limit).await?;
            Ok(FetchPage {
                messages: page.messages.into_iter().map(GroupMessage::from).collect(),
                head_seq: page.head_seq,
            })
        })
        .await
    }

    /// Sends a delivered/read receipt for one message.
    pub async fn receipt(
        &self,
        group: String,
        seq: u64,
        kind: ReceiptKind,
    ) -> Result<(), SwitchboardError> {
        let c = self.client.clone();
        on_runtime(async move { Ok(c.receipt(&group, seq, kind.into()).await?) }).await
    }

    /// The app came to the foreground (Android `onStart`, iOS `didBecomeActive`).
    pub async fn foreground(&self) -> Result<(), SwitchboardError> {
        let c = self.client.clone();
        on_runtime(async move { Ok(c.foreground().await?) }).await
    }

    /// The app went to the background (Android `onStop`, iOS `didEnterBackground`).
    pub async fn background(&self) -> Result<(), SwitchboardError> {
        let c = self.client.clone();
        on_runtime(async move { Ok(c.background().await?) }).await
    }

    /// Disconnects cleanly and stays offline until `resume` (the OS is about to suspend the
    /// app). Cursors, pending calls and the outbox are kept.
    pub fn pause(&self) {
        self.client.pause();
    }

    /// Reconnects after `pause`; what was missed arrives as catch-up, each message once.
    pub fn resume(&self) {
        self.client.resume();
    }

    /// The device's network changed (ConnectivityManager / NWPathMonitor): the connection
    /// migrates to the new path, or reconnects when it cannot.
    pub fn network_changed(&self) {
        self.client.network_changed();
    }

    /// Drops the connection and connects again now.
    pub fn reconnect(&self) {
        self.client.reconnect();
    }

    /// A new token for later reconnects (before the current one expires).
    pub fn set_token(&self, token: String) {
        self.client.set_token(token);
    }

    /// The highest seq seen per group: save it to resume after a restart.
    pub fn cursors(&self) -> Vec<Cursor> {
        self.client
            .cursors()
            .into_iter()
            .map(|(group, seq)| Cursor { group, seq })
            .collect()
    }

    /// Sends waiting in the outbox.
    pub fn outbox_len(&self) -> u64 {
        self.client.outbox_len() as u64
    }

    pub fn is_paused(&self) -> bool {
        self.client.is_paused()
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Closes the connection for good; the listener gets `Closed`. (Not `close`: Kotlin's
    /// generated class is `AutoCloseable`, whose `close()` frees the native handle.)
    pub async fn shutdown(&self) -> Result<(), SwitchboardError> {
        let c = self.client.clone();
        on_runtime(async move {
            c.close().await;
            Ok(())
        })
        .await
    }
}
