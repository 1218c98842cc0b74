//! Test harness: a real node (sled in a temp dir, QUIC on loopback), its control plane and
//! the HTTP API on a loopback port. The client blocks, so tests run on the multi-thread
//! runtime and call it through [`sync`] (`block_in_place`), which keeps the server's tasks
//! running on the other workers.
#![allow(dead_code)]

pub mod openapi;
pub mod sessions;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use switchboard_admin::client::{AdminClient, ClientError};
use switchboard_admin::control::types::CreateTenant;
use switchboard_admin::{AutoRollback, Control, ControlConfig};
use switchboard_core::Limits;
use switchboard_edge::{EdgeConfig, Node, TlsIdentity};
use switchboard_policy::{PolicyEngine, PolicyLimits};
use switchboard_store::SledStore;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
/// Generous bound for waits in tests: a hang fails instead of blocking CI.
pub const WAIT: Duration = Duration::from_secs(30);

/// One wasmtime engine per test binary, as one per node (each engine reserves its pool).
pub fn engine() -> PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE
        .get_or_init(|| PolicyEngine::new(PolicyLimits::default()).expect("policy engine"))
        .clone()
}

/// Runs a blocking client call without stalling the runtime's other tasks.
pub fn sync<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

pub struct TestApi {
    /// `http://127.0.0.1:<port>`
    pub url: String,
    pub control: Arc<Control>,
    /// The node's store (sled), for tests that seed more than the API does quickly.
    pub store: Arc<SledStore>,
    pub node: Node,
    pub quic_addr: SocketAddr,
    pub cert_der: Vec<u8>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    _tmp: tempfile::TempDir,
}

impl TestApi {
    pub async fn start() -> TestApi {
        TestApi::start_with(switchboard_admin::http::ServeOptions::default()).await
    }

    /// A node whose API serves with these bounds (and TLS, if given).
    pub async fn start_with(options: switchboard_admin::http::ServeOptions) -> TestApi {
        TestApi::start_configured(
            options,
            AutoRollback {
                // Tests drive rollbacks themselves.
                enabled: false,
                ..AutoRollback::default()
            },
        )
        .await
    }

    /// A node whose tenant keys may change which of their plugin versions serve
    /// (`ControlConfig::tenant_rollout`).
    pub async fn start_with_tenant_rollout() -> TestApi {
        TestApi::start_full(
            switchboard_admin::http::ServeOptions::default(),
            AutoRollback {
                enabled: false,
                ..AutoRollback::default()
            },
            true,
        )
        .await
    }

    /// A node with these API bounds and this automatic rollback.
    pub async fn start_configured(
        options: switchboard_admin::http::ServeOptions,
        auto_rollback: AutoRollback,
    ) -> TestApi {
        TestApi::start_full(options, auto_rollback, false).await
    }

    async fn start_full(
        options: switchboard_admin::http::ServeOptions,
        auto_rollback: AutoRollback,
        tenant_rollout: bool,
    ) -> TestApi {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(&tmp.path().join("store")).unwrap());
        let identity = TlsIdentity::self_signed().unwrap();
        let cert_der = identity.cert_chain[0].to_vec();
        let limits = Limits::default();
        let node = Node::start(
            EdgeConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                limits: limits.clone(),
                identity,
                webtransport: None,
            },
            store.clone(),
        )
        .await
        .expect("node starts");
        let control = Control::start(
            ControlConfig {
                admin_token_sha256: Some(Sha256::digest(ADMIN_TOKEN.as_bytes()).into()),
                artifact_dir: tmp.path().join("artifacts"),
                auto_rollback,
                apply_timeout: WAIT,
                max_group_members: limits.max_group_members,
                tenant_rollout,
            },
            store.clone(),
            store.clone(),
            node.hub().clone(),
            engine(),
        )
        .await
        .expect("control starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(switchboard_admin::http::serve_with(
            listener,
            control.clone(),
            options,
            async move {
                let _ = stopped.await;
            },
        ));
        TestApi {
            url,
            control,
            store,
            quic_addr: node.local_addr(),
            node,
            cert_der,
            stop: Some(stop),
            server: Some(server),
            _tmp: tmp,
        }
    }

    pub fn admin(&self) -> AdminClient {
        AdminClient::with_timeout(&self.url, Some(ADMIN_TOKEN.to_owned()), WAIT)
    }

    pub fn client(&self, token: &str) -> AdminClient {
        AdminClient::with_timeout(&self.url, Some(token.to_owned()), WAIT)
    }

    pub fn anonymous(&self) -> AdminClient {
        AdminClient::with_timeout(&self.url, None, WAIT)
    }

    /// Creates a tenant and an API key for it; returns the key.
    pub fn tenant_with_key(&self, tenant: &str) -> String {
        let admin = self.admin();
        sync(|| {
            admin
                .create_tenant(&CreateTenant {
                    id: tenant.to_owned(),
                    ..Default::default()
                })
                .unwrap();
            admin.create_api_key(tenant, "tests").unwrap().key
        })
    }

    /// A raw request, for what the typed client cannot send (bad JSON, odd methods).
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, &[u8])>,
    ) -> Raw {
        raw(&self.url, method, path, token, body)
    }

    /// The API's `host:port`.
    pub fn addr(&self) -> &str {
        self.url.split("://").nth(1).unwrap_or_default()
    }

    /// Stops the API gracefully and waits for it.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let server = self.server.take().unwrap();
        tokio::time::timeout(WAIT, server)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

/// What a raw request got back.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts a problem details answer with this status and code; returns its detail.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) -> String {
        let body = String::from_utf8_lossy(&self.body);
        assert_eq!(
            (self.status, self.content_type.as_str()),
            (status, "application/problem+json"),
            "{body}"
        );
        let p = self.json();
        assert_eq!(p["code"], code, "{body}");
        assert_eq!(p["status"], status, "{body}");
        assert_eq!(
            p["type"],
            format!("https://switchboard.dev/problems/{code}"),
            "{body}"
        );
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
        p["detail"].as_str().unwrap_or_default().to_owned()
    }
}

pub fn raw(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> Raw {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(WAIT))
            .build(),
    );
    let url = format!("{base}{path}");
    let mut req = ureq::http::Request::builder().method(method).uri(&url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let (content_type, bytes) = body.unwrap_or(("", &[]));
    if !content_type.is_empty() {
        req = req.header("Content-Type", content_type);
    }
    let req = req.body(bytes.to_vec()).unwrap();
    let mut resp = sync(|| agent.run(req)).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = sync(|| resp.body_mut().with_config().limit(64 << 20).read_to_vec()).unwrap();
    Raw {
        status: resp.status().as_u16(),
        content_type,
        headers,
        body,
    }
}

/// Asserts a client call was refused with this status and problem code.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    r: Result<T, ClientError>,
    status: u16,
    code: &str,
) -> String {
    match r {
        Err(ClientError::Problem { status: s, problem }) => {
            assert_eq!((s, problem.code.as_str()), (status, code), "{problem:?}");
            problem.detail
        }
        other => panic!("expected a {status} {code} problem, got {other:?}"),
    }
}

pub fn wasm(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
