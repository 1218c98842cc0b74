//! Test harness: a real node (sled on disk in a temp dir, QUIC on loopback) with two tenants,
//! and a raw client that speaks frames directly for tests of bad input.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use switchboard_core::token::{self, Claims};
use switchboard_core::{GroupId, Limits, PresenceState, TenantId, UserId};
use switchboard_edge::{EdgeConfig, Node, TlsIdentity};
use switchboard_store::{GroupMeta, SledStore, Store, TenantRecord};
use switchboard_wire::{self as wire, ClientFrame, DecodeLimits, ServerFrame};

pub const ACME_SECRET: &[u8] = b"acme-secret-0123456789abcdef";
pub const GLOBEX_SECRET: &[u8] = b"globex-secret-0123456789abcdef";
/// Generous bound for waits in tests: a hang fails instead of blocking CI.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestNode {
    pub node: Option<Node>,
    pub store: Arc<SledStore>,
    pub dir: PathBuf,
    pub identity: TlsIdentity,
    pub addr: SocketAddr,
    /// The WebTransport endpoint's certificate (DER), if it runs.
    pub web_cert: Option<Vec<u8>>,
    _tmp: Option<tempfile::TempDir>,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Tenants `acme` and `globex`; groups acme/general (open), acme/closed (alice, bob),
/// acme/team (alice, bob, carol), globex/general (open).
pub fn seed(store: &dyn Store) {
    let acme = TenantId::new("acme").unwrap();
    let globex = TenantId::new("globex").unwrap();
    store
        .put_tenant(&TenantRecord {
            id: acme.clone(),
            secret: ACME_SECRET.to_vec(),
        })
        .unwrap();
    store
        .put_tenant(&TenantRecord {
            id: globex.clone(),
            secret: GLOBEX_SECRET.to_vec(),
        })
        .unwrap();
    let open = GroupMeta {
        open: true,
        max_members: 100,
    };
    let closed = GroupMeta {
        open: false,
        max_members: 100,
    };
    let g = |s: &str| GroupId::new(s).unwrap();
    let u = |s: &str| UserId::new(s).unwrap();
    store.create_group(&acme, &g("general"), open).unwrap();
    store.create_group(&acme, &g("closed"), closed).unwrap();
    store.create_group(&acme, &g("team"), closed).unwrap();
    store.create_group(&globex, &g("general"), open).unwrap();
    for m in ["alice", "bob"] {
        store.add_member(&acme, &g("closed"), &u(m)).unwrap();
    }
    for m in ["alice", "bob", "carol"] {
        store.add_member(&acme, &g("team"), &u(m)).unwrap();
    }
    store.flush().unwrap();
}

impl TestNode {
    pub async fn start() -> TestNode {
        Self::start_with(Limits::default()).await
    }

    /// A node with `limits`, except that it never measures its own load: tests that are
    /// not about degradation must not shed presence or receipts because a busy CI machine
    /// made the event loop late (degradation tests force levels, or use `Node` directly).
    pub async fn start_with(limits: Limits) -> TestNode {
        Self::fresh(limits, None).await
    }

    /// A node that also serves WebTransport on a loopback port of its own, with a fresh
    /// browser-pinnable dev certificate and `origins` as its origin policy.
    pub async fn start_webtransport(limits: Limits, origins: Vec<String>) -> TestNode {
        let web = switchboard_edge::WebTransportConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            identity: TlsIdentity::webtransport_dev().unwrap(),
            allowed_origins: origins,
        };
        Self::fresh(limits, Some(web)).await
    }

    /// A node on a new seeded store in a temp dir (see [`TestNode::start_with`]).
    async fn fresh(limits: Limits, web: Option<switchboard_edge::WebTransportConfig>) -> TestNode {
        let limits = Limits {
            load_sample_ms: 0,
            ..limits
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let store = Arc::new(SledStore::open(&dir.join("store")).unwrap());
        seed(&*store);
        let identity = TlsIdentity::self_signed().unwrap();
        let mut n = Self::boot(store, dir, identity, limits, None, web).await;
        n._tmp = Some(tmp);
        n
    }

    /// The WebTransport endpoint's address (after `start_webtransport`).
    pub fn web_addr(&self) -> SocketAddr {
        self.node.as_ref().unwrap().webtransport_addr().unwrap()
    }

    /// The SHA-256 of the WebTransport certificate (after `start_webtransport`).
    pub fn web_cert_sha256(&self) -> String {
        self.node
            .as_ref()
            .unwrap()
            .webtransport_cert_sha256()
            .unwrap()
            .to_owned()
    }

    async fn boot(
        store: Arc<SledStore>,
        dir: PathBuf,
        identity: TlsIdentity,
        limits: Limits,
        addr: Option<SocketAddr>,
        web: Option<switchboard_edge::WebTransportConfig>,
    ) -> TestNode {
        let listen = addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        // On restart the old endpoint's socket is released asynchronously: retry the bind.
        let deadline = tokio::time::Instant::now() + WAIT;
        let node = loop {
            match Node::start(
                EdgeConfig {
                    listen,
                    limits: limits.clone(),
                    identity: identity.clone(),
                    webtransport: web.clone(),
                },
                store.clone(),
            )
            .await
            {
                Ok(node) => break node,
                Err(switchboard_edge::EdgeError::Bind { .. })
                    if addr.is_some() && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("node start failed: {e}"),
            }
        };
        let addr = node.local_addr();
        TestNode {
            node: Some(node),
            store,
            dir,
            identity,
            addr,
            web_cert: web.map(|w| w.identity.cert_chain[0].to_vec()),
            _tmp: None,
        }
    }

    /// Graceful stop, then a new node on the same data dir, certificate and port.
    pub async fn restart(mut self) -> TestNode {
        let tmp = self._tmp.take();
        self.node.take().unwrap().shutdown().await;
        let TestNode {
            store,
            dir,
            identity,
            addr,
            ..
        } = self;
        drop(store);
        let store = reopen(&dir).await;
        let mut n = Self::boot(store, dir, identity, Limits::default(), Some(addr), None).await;
        n._tmp = tmp;
        n
    }

    /// Starts a control plane (config store reconciliation, automatic rollback) over this
    /// node's store and hub, caching artifacts in the node's data dir.
    pub async fn control(
        &self,
        auto_rollback: switchboard_admin::AutoRollback,
    ) -> Arc<switchboard_admin::Control> {
        self.control_on(policy_engine(), auto_rollback).await
    }

    /// [`TestNode::control`] on another engine (`swap_test_engine`).
    pub async fn control_on(
        &self,
        engine: &switchboard_policy::PolicyEngine,
        auto_rollback: switchboard_admin::AutoRollback,
    ) -> Arc<switchboard_admin::Control> {
        switchboard_admin::Control::start(
            switchboard_admin::ControlConfig {
                admin_token_sha256: None,
                artifact_dir: self.dir.join("artifacts"),
                auto_rollback,
                apply_timeout: WAIT,
                max_group_members: Limits::default().max_group_members,
                tenant_rollout: false,
            },
            self.store.clone(),
            self.store.clone(),
            self.hub().clone(),
            engine.clone(),
        )
        .await
        .unwrap()
    }

    /// Binds a policy plugin (a path from `plugins_artifacts`) to a tenant.
    pub fn bind(&self, tenant: &str, wasm: &str, config: &[(&str, &str)]) {
        self.bind_on(policy_engine(), tenant, wasm, config)
    }

    /// [`TestNode::bind`] with a plugin loaded into `engine` (e.g. [`swap_test_engine`], for
    /// tests of what a plugin decides rather than of its budgets).
    pub fn bind_on(
        &self,
        engine: &switchboard_policy::PolicyEngine,
        tenant: &str,
        wasm: &str,
        config: &[(&str, &str)],
    ) {
        let plugin = engine
            .load(&std::fs::read(wasm).unwrap())
            .unwrap_or_else(|e| panic!("{wasm}: {e}"));
        let config = config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let policy = switchboard_policy::TenantPolicy::new(&plugin, tenant, config);
        self.hub()
            .set_policy(&TenantId::new(tenant).unwrap(), Some(Arc::new(policy)));
    }

    pub fn hub(&self) -> &Arc<switchboard_edge::Hub> {
        self.node.as_ref().unwrap().hub()
    }

    pub fn cert_der(&self) -> Vec<u8> {
        self.identity.cert_chain[0].to_vec()
    }

    pub fn token(&self, tenant: &str, user: &str) -> String {
        let secret = if tenant == "globex" {
            GLOBEX_SECRET
        } else {
            ACME_SECRET
        };
        mint(tenant, user, secret, now_secs() + 3600, 0)
    }

    pub async fn raw(&self) -> RawClient {
        RawClient::connect(self.addr, &self.cert_der(), wire::ALPN)
            .await
            .unwrap()
    }
}

/// Reopens the store, retrying while the previous instance's file lock is released.
async fn reopen(dir: &Path) -> Arc<SledStore> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match SledStore::open(&dir.join("store")) {
            Ok(s) => return Arc::new(s),
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopen failed: {e}"),
        }
    }
}

/// One wasmtime engine per test binary, as one per node.
pub fn policy_engine() -> &'static switchboard_policy::PolicyEngine {
    static ENGINE: std::sync::OnceLock<switchboard_policy::PolicyEngine> =
        std::sync::OnceLock::new();
    ENGINE.get_or_init(|| {
        switchboard_policy::PolicyEngine::new(switchboard_policy::PolicyLimits::default()).unwrap()
    })
}

/// An engine with the default budgets but a 2 s deadline per call, for tests of which
/// version serves what (the control plane, hot swaps), not of budgets. The deadline is wall
/// time: on a 2-core machine running every test at once, a call can wait past 10 ms for a
/// core, and a Python plugin's first call starts CPython (about 1 ms alone), so a fallback
/// would say nothing about the swap under test. The deadline has its own tests
/// (`host/policy`).
pub fn swap_test_engine() -> &'static switchboard_policy::PolicyEngine {
    static ENGINE: std::sync::OnceLock<switchboard_policy::PolicyEngine> =
        std::sync::OnceLock::new();
    ENGINE.get_or_init(|| {
        switchboard_policy::PolicyEngine::new(switchboard_policy::PolicyLimits {
            deadline: Duration::from_secs(2),
            ..switchboard_policy::PolicyLimits::default()
        })
        .unwrap()
    })
}

pub fn mint(tenant: &str, user: &str, secret: &[u8], exp: u64, nbf: u64) -> String {
    token::mint(
        &Claims {
            tenant: TenantId::new(tenant).unwrap(),
            user: UserId::new(user).unwrap(),
            exp,
            nbf,
        },
        secret,
    )
}

/// The SDK's QUIC client config (pinned `cert_der`, TLS 1.3), offering `alpn`.
pub fn client_crypto(cert_der: &[u8], alpn: &[u8]) -> quinn::ClientConfig {
    switchboard_client::tls::client_config_with_alpn(cert_der, &[alpn])
        .expect("the node's certificate makes a client config")
}

/// A client that writes and reads frames by hand.
pub struct RawClient {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: Option<quinn::SendStream>,
    pub recv: Option<quinn::RecvStream>,
    buf: BytesMut,
    pushes: Option<tokio::sync::mpsc::UnboundedReceiver<ServerFrame>>,
    order: wire::order::PushOrder,
    flags_seen: bool,
    arrivals: Arrivals,
}

/// When each delivery reached a test client: a number from one counter shared by every
/// client of the test process, taken by the stream reader as it decodes the frame, so
/// "arrived before" can be compared across connections.
pub type Arrivals = Arc<std::sync::Mutex<std::collections::HashMap<(String, u64), u64>>>;
static ARRIVAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Reads every push stream the node opens and forwards their frames, decoded, in arrival
/// order per stream.
async fn read_push_streams(
    conn: quinn::Connection,
    tx: tokio::sync::mpsc::UnboundedSender<ServerFrame>,
    arrivals: Arrivals,
) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let tx = tx.clone();
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            while let Ok(Some(frame)) = wire::read_frame(&mut recv, &mut buf, 1 << 20).await {
                let f = wire::decode_server(&frame, &DecodeLimits::default())
                    .expect("the node sent an undecodable push");
                if let ServerFrame::Deliver(m) = &f {
                    let n = ARRIVAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    arrivals.lock().unwrap().insert((m.group.clone(), m.seq), n);
                }
                if tx.send(f).is_err() {
                    return;
                }
            }
        });
    }
}

impl RawClient {
    pub async fn connect(
        addr: SocketAddr,
        cert_der: &[u8],
        alpn: &[u8],
    ) -> Result<RawClient, quinn::ConnectionError> {
        Self::connect_with(addr, client_crypto(cert_der, alpn)).await
    }

    /// [`RawClient::connect`] with a client config of the test's own (e.g. keep-alives).
    pub async fn connect_with(
        addr: SocketAddr,
        config: quinn::ClientConfig,
    ) -> Result<RawClient, quinn::ConnectionError> {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(config);
        let conn = endpoint.connect(addr, "localhost").unwrap().await?;
        Ok(Self::over(endpoint, conn))
    }

    fn over(endpoint: quinn::Endpoint, conn: quinn::Connection) -> RawClient {
        RawClient {
            endpoint,
            conn,
            send: None,
            recv: None,
            buf: BytesMut::new(),
            pushes: None,
            order: wire::order::PushOrder::new(1 << 20),
            flags_seen: false,
            arrivals: Arrivals::default(),
        }
    }

    /// A client endpoint (one UDP socket, 4 MiB receive buffer where the kernel allows) for
    /// [`RawClient::connect_via`].
    pub fn shared_endpoint(cert_der: &[u8]) -> quinn::Endpoint {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let state = quinn::udp::UdpSocketState::new((&socket).into()).unwrap();
        let _ = state.set_recv_buffer_size((&socket).into(), 4 << 20);
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .unwrap();
        endpoint.set_default_client_config(client_crypto(cert_der, wire::ALPN));
        endpoint
    }

    /// A connection over a shared endpoint: the datagrams of all its connections are read
    /// from one socket, in the order they arrived, so [`Arrivals`] follow the wire exactly.
    pub async fn connect_via(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
    ) -> Result<RawClient, quinn::ConnectionError> {
        let conn = endpoint.connect(addr, "localhost").unwrap().await?;
        Ok(Self::over(endpoint.clone(), conn))
    }

    /// Writes raw bytes on the control stream (opened on first use).
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        if self.send.is_none() {
            let (s, r) = self.conn.open_bi().await.unwrap();
            self.send = Some(s);
            self.recv = Some(r);
        }
        // The server may already have closed; tests check what it said.
        let _ = self.send.as_mut().unwrap().write_all(bytes).await;
    }

    pub async fn send(&mut self, f: &ClientFrame) {
        self.write_raw(&wire::encode_client(f)).await;
    }

    pub async fn hello(&mut self, token: &str) -> ServerFrame {
        self.send(&ClientFrame::Hello(wire::Hello {
            token: token.into(),
            presence: PresenceState::Foreground,
            cursors: vec![],
            client: "raw-test".into(),
        }))
        .await;
        self.read().await.expect("an answer to hello")
    }

    /// Next frame on the control stream; None if the stream or connection ended.
    pub async fn read(&mut self) -> Option<ServerFrame> {
        let recv = self.recv.as_mut()?;
        let frame = tokio::time::timeout(WAIT, wire::read_frame(recv, &mut self.buf, 1 << 20))
            .await
            .expect("timed out reading control stream")
            .ok()??;
        Some(wire::decode_server(&frame, &DecodeLimits::default()).unwrap())
    }

    /// Next push, in order (see [`wire::order::PushOrder`]), skipping the session's first `Flags` set
    /// (every session gets one, protocol §7); tests about flags use
    /// [`RawClient::read_push_raw`].
    pub async fn read_push(&mut self) -> Option<ServerFrame> {
        loop {
            let skip_flags = !self.flags_seen;
            match self.read_push_raw().await? {
                ServerFrame::Flags { .. } if skip_flags => {}
                other => return Some(other),
            }
        }
    }

    /// Next push from any push stream, deliveries in per-group order; `Resume` frames are
    /// consumed (see [`RawClient::push_order`]).
    pub async fn read_push_raw(&mut self) -> Option<ServerFrame> {
        self.listen();
        loop {
            if let Some(f) = self.order.pop() {
                if matches!(f, ServerFrame::Flags { .. }) {
                    self.flags_seen = true;
                }
                return Some(f);
            }
            let f = tokio::time::timeout(WAIT, self.pushes.as_mut().unwrap().recv())
                .await
                .expect("timed out reading push streams")?;
            self.order
                .arrive(f)
                .expect("the node broke its delivery promise");
        }
    }

    /// Starts reading the push streams now (otherwise the first `read_push` does), so
    /// arrival numbers are taken as frames come in.
    pub fn listen(&mut self) {
        if self.pushes.is_none() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(read_push_streams(
                self.conn.clone(),
                tx,
                self.arrivals.clone(),
            ));
            self.pushes = Some(rx);
        }
    }

    /// The arrival number of delivery `group`/`seq` (see [`Arrivals`]), once it arrived.
    pub fn arrival(&self, group: &str, seq: u64) -> Option<u64> {
        self.arrivals
            .lock()
            .unwrap()
            .get(&(group.to_string(), seq))
            .copied()
    }

    /// Sends a `Ping` and reads the control stream up to its `Pong`: everything sent before
    /// has been handled by the node. Returns the other frames read on the way.
    pub async fn sync(&mut self) -> Vec<ServerFrame> {
        self.send(&ClientFrame::Ping { request_id: 0xfeed }).await;
        let mut other = Vec::new();
        loop {
            match self.read().await.expect("control stream ended") {
                ServerFrame::Pong { request_id: 0xfeed } => return other,
                f => other.push(f),
            }
        }
    }

    /// What the ordering of this connection's pushes has seen so far.
    pub fn push_order(&self) -> &wire::order::PushOrder {
        &self.order
    }

    /// Waits for the connection to close and returns the application error code, if any.
    pub async fn closed_code(&self) -> Option<u64> {
        let e = tokio::time::timeout(WAIT, self.conn.closed())
            .await
            .expect("connection did not close");
        match e {
            quinn::ConnectionError::ApplicationClosed(a) => Some(a.error_code.into_inner()),
            _ => None,
        }
    }
}

/// The code of an Error frame, panicking on anything else.
pub fn error_code(f: &ServerFrame) -> switchboard_core::ErrorCode {
    match f {
        ServerFrame::Error(e) => e.error_code().expect("known code"),
        other => panic!("expected Error, got {other:?}"),
    }
}

pub fn body(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A `Send` of `body` to `group` whose client message id is `m<request_id>`.
pub fn send(request_id: u64, group: &str, body: &[u8]) -> ClientFrame {
    ClientFrame::Send {
        request_id,
        group: group.into(),
        client_msg_id: format!("m{request_id}"),
        body: Bytes::copy_from_slice(body),
    }
}

/// The next `Deliver` on the push stream, skipping other pushes.
pub async fn next_deliver(c: &mut RawClient) -> switchboard_wire::Message {
    loop {
        match c.read_push().await {
            Some(ServerFrame::Deliver(m)) => return m,
            Some(_) => {}
            None => panic!("push stream ended"),
        }
    }
}
