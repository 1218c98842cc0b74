//! A blocking client for the admin and tenant HTTP API: one method per endpoint, typed
//! answers, and refusals as [`ClientError::Problem`] with the server's problem details.
//! `switchboard ctl` and the API's tests use it.
//!
//! HTTP or HTTPS (rustls): an `https://` URL is checked against the web PKI's roots, or only
//! against the CA certificates given to [`AdminClient::with_ca`] (a node's own self-signed
//! certificate, or a private CA; PEM or DER, checked when given: [`CaError`]), so
//! `switchboard ctl` reaches a node serving `[admin.tls]`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::control::types::*;
use crate::http::{MemberAdded, Problem, PROBLEM_CONTENT_TYPE};

/// Why a call did not return what it asked for.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request with problem details.
    #[error("{} ({status}): {}", problem.code, problem.detail)]
    Problem { status: u16, problem: Problem },
    /// An error status without problem details (a proxy in between, most likely).
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    /// The server could not be reached, or the exchange broke off.
    #[error("{url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: ureq::Error,
    },
    /// A success status whose body is not what the endpoint returns.
    #[error("{url}: unexpected response body: {detail}")]
    Decode { url: String, detail: String },
}

impl ClientError {
    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Problem { status, .. } | ClientError::Status { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The problem's `code`, if the server answered with problem details.
    pub fn code(&self) -> Option<&str> {
        self.problem().map(|p| p.code.as_str())
    }

    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ClientError::Problem { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// Why the CA certificates given to [`AdminClient::with_ca`] were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    /// PEM text (it starts with `-----BEGIN`) that does not parse.
    #[error("not valid PEM: {0}")]
    Pem(String),
    /// PEM without a `CERTIFICATE` section (a key file, say).
    #[error("holds no certificate (no CERTIFICATE section in the PEM)")]
    NoCertificate,
    /// A PEM `CERTIFICATE` section (`index` counts from 0) that is not an X.509 certificate.
    #[error("certificate {index} of the PEM is not an X.509 certificate: {detail}")]
    BadPemCertificate { index: usize, detail: String },
    /// Not PEM, and not a DER X.509 certificate either.
    #[error("neither PEM nor a DER X.509 certificate: {detail}")]
    NotACertificate { detail: String },
}

/// The certificates in `ca` (PEM or one DER certificate), each checked to parse as a trust
/// anchor the way rustls will use it.
fn ca_certificates(ca: &[u8]) -> Result<Vec<ureq::tls::Certificate<'static>>, CaError> {
    let check = |der: &[u8]| {
        rustls::RootCertStore::empty()
            .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
            .map_err(|e| e.to_string())
    };
    if !ca.starts_with(b"-----BEGIN") {
        check(ca).map_err(|detail| CaError::NotACertificate { detail })?;
        return Ok(vec![ureq::tls::Certificate::from_der(ca).to_owned()]);
    }
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(ca) {
        if let ureq::tls::PemItem::Certificate(c) = item.map_err(|e| CaError::Pem(e.to_string()))? {
            check(c.der()).map_err(|detail| CaError::BadPemCertificate {
                index: certs.len(),
                detail,
            })?;
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(CaError::NoCertificate);
    }
    Ok(certs)
}

/// A client for one node's API, with one credential (admin token or tenant API key).
#[derive(Debug, Clone)]
pub struct AdminClient {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

/// A path segment, percent-encoded (ids may hold `:` and `@`, which paths allow, but user
/// input may hold anything).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `path?k=v&…`, each value percent-encoded.
fn with_query(path: &str, query: &[(&str, String)]) -> String {
    let pairs: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", seg(v)))
        .collect();
    if pairs.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", pairs.join("&"))
    }
}

enum Body<'a> {
    None,
    Json(serde_json::Value),
    Bytes(&'a [u8], &'a str),
}

impl AdminClient {
    /// `base_url` like `http://127.0.0.1:7780`; `token` is sent as `Authorization: Bearer`.
    pub fn new(base_url: &str, token: Option<String>) -> AdminClient {
        Self::with_timeout(base_url, token, Duration::from_secs(120))
    }

    /// Like [`AdminClient::new`], with a bound on each whole call (activations wait for the
    /// node to apply them; uploads compile).
    pub fn with_timeout(base_url: &str, token: Option<String>, timeout: Duration) -> AdminClient {
        Self::build(base_url, token, timeout, ureq::tls::RootCerts::WebPki)
    }

    /// Like [`AdminClient::new`], for an HTTPS node whose certificate is issued by (or is) one
    /// of the certificates in `ca`: PEM text (one or more `CERTIFICATE` sections; other
    /// sections such as keys are skipped) or the bytes of a single DER certificate, as a
    /// node's `cert.pem` or `cert.der`. Only these are trusted, not the web PKI. Every
    /// certificate is parsed here, so a file that is not one is refused with a [`CaError`]
    /// before any request (a certificate that did not parse would otherwise be dropped
    /// silently, and every call fail later as an untrusted peer).
    pub fn with_ca(
        base_url: &str,
        token: Option<String>,
        ca: &[u8],
    ) -> Result<AdminClient, CaError> {
        let certs = ca_certificates(ca)?;
        Ok(Self::build(
            base_url,
            token,
            Duration::from_secs(120),
            ureq::tls::RootCerts::new_with_certs(&certs),
        ))
    }

    fn build(
        base_url: &str,
        token: Option<String>,
        timeout: Duration,
        roots: ureq::tls::RootCerts,
    ) -> AdminClient {
        let config = ureq::Agent::config_builder()
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
            // Error statuses are answers to parse, not transport failures.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(timeout))
            .build();
        AdminClient {
            agent: ureq::Agent::new_with_config(config),
            base: base_url.trim_end_matches('/').to_owned(),
            token,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends a request; on a 2xx returns the status and body bytes.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Body<'_>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let url = format!("{}{path}", self.base);
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        macro_rules! with_auth {
            ($req:expr) => {{
                let req = $req;
                match &auth {
                    Some(a) => req.header("Authorization", a),
                    None => req,
                }
            }};
        }
        let result = match (method, body) {
            ("GET", _) => with_auth!(self.agent.get(&url)).call(),
            ("DELETE", _) => with_auth!(self.agent.delete(&url)).call(),
            (m, body) => {
                let req = match m {
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.post(&url),
                };
                let req = with_auth!(req);
                match body {
                    Body::None => req.send_empty(),
                    Body::Json(v) => req.send_json(&v),
                    // The server may refuse before reading (auth, size, busy): with
                    // 100-continue it says so before the body is sent.
                    Body::Bytes(b, content_type) => req
                        .content_type(content_type)
                        .header("Expect", "100-continue")
                        .send(b),
                }
            }
        };
        let mut resp = result.map_err(transport)?;
        let status = resp.status().as_u16();
        let is_problem = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(PROBLEM_CONTENT_TYPE));
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(transport)?;
        if (200..300).contains(&status) {
            return Ok((status, bytes));
        }
        if is_problem {
            if let Ok(problem) = serde_json::from_slice::<Problem>(&bytes) {
                return Err(ClientError::Problem { status, problem });
            }
        }
        Err(ClientError::Status {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Body<'_>,
    ) -> Result<T, ClientError> {
        let (_, bytes) = self.send(method, path, body)?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: format!("{}{path}", self.base),
            detail: e.to_string(),
        })
    }

    fn body(v: &impl Serialize) -> Body<'static> {
        // Our own request types always serialize.
        Body::Json(serde_json::to_value(v).unwrap_or_default())
    }

    fn tenant_path(tenant: &str, rest: &str) -> String {
        format!("/v1/tenants/{}{rest}", seg(tenant))
    }

    // --- node ---

    pub fn health(&self) -> Result<Health, ClientError> {
        self.json("GET", "/healthz", Body::None)
    }

    pub fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.json("GET", "/openapi.json", Body::None)
    }

    /// The Prometheus text exposition (admin).
    pub fn metrics(&self) -> Result<String, ClientError> {
        let (_, bytes) = self.send("GET", "/metrics", Body::None)?;
        String::from_utf8(bytes).map_err(|e| ClientError::Decode {
            url: format!("{}/metrics", self.base),
            detail: e.to_string(),
        })
    }

    pub fn degradation(&self) -> Result<DegradationStatus, ClientError> {
        self.json("GET", "/v1/degradation", Body::None)
    }

    /// Forces the load level, or clears the override with `None`.
    pub fn set_degradation(&self, level: Option<u8>) -> Result<DegradationStatus, ClientError> {
        self.json(
            "PUT",
            "/v1/degradation",
            Self::body(&SetDegradation { level }),
        )
    }

    /// Who this client's credential is.
    pub fn whoami(&self) -> Result<Whoami, ClientError> {
        self.json("GET", "/v1/whoami", Body::None)
    }

    /// Build, uptime, health, load, queues, latency, counters, slow consumers (admin).
    pub fn node_info(&self) -> Result<NodeInfo, ClientError> {
        self.json("GET", "/v1/node", Body::None)
    }

    /// Rotates the node's store key while it runs (admin).
    pub fn rotate_store_key(&self) -> Result<StoreKeyRotation, ClientError> {
        self.json("POST", "/v1/node/store-key/rotation", Body::None)
    }

    /// The retention limits and the message log's size (admin).
    pub fn retention(&self) -> Result<RetentionInfo, ClientError> {
        self.json("GET", "/v1/node/retention", Body::None)
    }

    /// Runs a retention pass now (admin).
    pub fn run_retention(&self) -> Result<RetentionPass, ClientError> {
        self.json("POST", "/v1/node/retention/pass", Body::None)
    }

    /// Drains the node as SIGTERM does (admin); `node` names the cluster node meant.
    pub fn drain(&self, node: Option<&str>) -> Result<Draining, ClientError> {
        let req = DrainRequest {
            node: node.map(str::to_owned),
        };
        self.json("POST", "/v1/node/drain", Self::body(&req))
    }

    /// A page of open sessions: the node's (admin), or `tenant`'s.
    pub fn connections(
        &self,
        tenant: Option<&str>,
        q: &ConnectionQuery,
    ) -> Result<ConnectionPage, ClientError> {
        let mut query = vec![("offset", q.offset.to_string())];
        let opt = [
            ("limit", q.limit.map(|l| l.to_string())),
            ("tenant", q.tenant.clone()),
            ("user", q.user.clone()),
            ("presence", q.presence.clone()),
            ("sort", q.sort.clone()),
        ];
        query.extend(opt.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        let path = match tenant {
            Some(t) => Self::tenant_path(t, "/connections"),
            None => "/v1/connections".to_owned(),
        };
        self.json("GET", &with_query(&path, &query), Body::None)
    }

    /// A page of tenants with their traffic and policy health (admin).
    pub fn traffic(&self, q: &TrafficQuery) -> Result<TrafficPage, ClientError> {
        let mut query = vec![("offset", q.offset.to_string())];
        let opt = [
            ("limit", q.limit.map(|l| l.to_string())),
            ("q", q.q.clone()),
            ("sort", q.sort.clone()),
        ];
        query.extend(opt.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        self.json("GET", &with_query("/v1/traffic", &query), Body::None)
    }

    /// One tenant's traffic and policy health.
    pub fn tenant_traffic(&self, tenant: &str) -> Result<TenantTraffic, ClientError> {
        self.json("GET", &Self::tenant_path(tenant, "/traffic"), Body::None)
    }

    // --- tenants ---

    pub fn create_tenant(&self, req: &CreateTenant) -> Result<TenantSecret, ClientError> {
        self.json("POST", "/v1/tenants", Self::body(req))
    }

    pub fn tenants(&self) -> Result<Vec<TenantInfo>, ClientError> {
        self.json("GET", "/v1/tenants", Body::None)
    }

    pub fn tenant(&self, tenant: &str) -> Result<TenantInfo, ClientError> {
        self.json("GET", &Self::tenant_path(tenant, ""), Body::None)
    }

    pub fn set_quotas(&self, tenant: &str, quotas: &Quotas) -> Result<TenantInfo, ClientError> {
        self.json(
            "PUT",
            &Self::tenant_path(tenant, "/quotas"),
            Self::body(quotas),
        )
    }

    pub fn rotate_secret(&self, tenant: &str) -> Result<TenantSecret, ClientError> {
        self.json("POST", &Self::tenant_path(tenant, "/secret"), Body::None)
    }

    // --- API keys ---

    pub fn create_api_key(&self, tenant: &str, label: &str) -> Result<NewApiKey, ClientError> {
        let req = CreateApiKey {
            label: label.to_owned(),
        };
        self.json(
            "POST",
            &Self::tenant_path(tenant, "/keys"),
            Self::body(&req),
        )
    }

    pub fn api_keys(&self, tenant: &str) -> Result<Vec<ApiKeyInfo>, ClientError> {
        self.json("GET", &Self::tenant_path(tenant, "/keys"), Body::None)
    }

    pub fn delete_api_key(&self, tenant: &str, key_id: &str) -> Result<(), ClientError> {
        let path = Self::tenant_path(tenant, &format!("/keys/{}", seg(key_id)));
        self.send("DELETE", &path, Body::None).map(drop)
    }

    // --- tokens ---

    pub fn mint_token(&self, tenant: &str, req: &MintToken) -> Result<MintedToken, ClientError> {
        self.json(
            "POST",
            &Self::tenant_path(tenant, "/tokens"),
            Self::body(req),
        )
    }

    // --- groups ---

    pub fn create_group(&self, tenant: &str, req: &CreateGroup) -> Result<GroupInfo, ClientError> {
        self.json(
            "POST",
            &Self::tenant_path(tenant, "/groups"),
            Self::body(req),
        )
    }

    pub fn groups(&self, tenant: &str) -> Result<Vec<GroupInfo>, ClientError> {
        self.json("GET", &Self::tenant_path(tenant, "/groups"), Body::None)
    }

    pub fn group(&self, tenant: &str, group: &str) -> Result<GroupInfo, ClientError> {
        let path = Self::tenant_path(tenant, &format!("/groups/{}", seg(group)));
        self.json("GET", &path, Body::None)
    }

    pub fn members(&self, tenant: &str, group: &str) -> Result<Vec<String>, ClientError> {
        let path = Self::tenant_path(tenant, &format!("/groups/{}/members", seg(group)));
        self.json("GET", &path, Body::None)
    }

    /// Adds a member; `added` is false if the user was a member already.
    pub fn add_member(
        &self,
        tenant: &str,
        group: &str,
        user: &str,
    ) -> Result<MemberAdded, ClientError> {
        let path = Self::tenant_path(tenant, &format!("/groups/{}/members", seg(group)));
        let req = AddMember {
            user: user.to_owned(),
        };
        self.json("POST", &path, Self::body(&req))
    }

    pub fn remove_member(&self, tenant: &str, group: &str, user: &str) -> Result<(), ClientError> {
        let path = Self::tenant_path(
            tenant,
            &format!("/groups/{}/members/{}", seg(group), seg(user)),
        );
        self.send("DELETE", &path, Body::None).map(drop)
    }

    // --- plugins ---

    /// Uploads a `tenant-policy` component; `created` is false if these bytes were stored
    /// already.
    pub fn upload_plugin(&self, tenant: &str, wasm: &[u8]) -> Result<Uploaded, ClientError> {
        self.upload_labelled_plugin(tenant, wasm, None)
    }

    /// An upload with a label for the version (`?label=`).
    pub fn upload_labelled_plugin(
        &self,
        tenant: &str,
        wasm: &[u8],
        label: Option<&str>,
    ) -> Result<Uploaded, ClientError> {
        let query: Vec<(&str, String)> =
            label.map(|l| ("label", l.to_owned())).into_iter().collect();
        let path = with_query(&Self::tenant_path(tenant, "/plugins"), &query);
        self.json("POST", &path, Body::Bytes(wasm, "application/wasm"))
    }

    pub fn plugins(&self, tenant: &str) -> Result<Vec<PluginInfo>, ClientError> {
        self.json("GET", &Self::tenant_path(tenant, "/plugins"), Body::None)
    }

    pub fn plugin(&self, tenant: &str, version: &str) -> Result<PluginDetail, ClientError> {
        let path = Self::tenant_path(tenant, &format!("/plugins/{}", seg(version)));
        self.json("GET", &path, Body::None)
    }

    // --- policy ---

    pub fn policy(&self, tenant: &str) -> Result<PolicyStatus, ClientError> {
        self.json("GET", &Self::tenant_path(tenant, "/policy"), Body::None)
    }

    pub fn activate(&self, tenant: &str, req: &Activate) -> Result<PolicyStatus, ClientError> {
        let path = Self::tenant_path(tenant, "/policy/activate");
        self.json("POST", &path, Self::body(req))
    }

    pub fn start_canary(
        &self,
        tenant: &str,
        req: &StartCanary,
    ) -> Result<PolicyStatus, ClientError> {
        let path = Self::tenant_path(tenant, "/policy/canary");
        self.json("POST", &path, Self::body(req))
    }

    pub fn abort_canary(&self, tenant: &str) -> Result<PolicyStatus, ClientError> {
        let path = Self::tenant_path(tenant, "/policy/canary");
        self.json("DELETE", &path, Body::None)
    }

    pub fn promote(&self, tenant: &str) -> Result<PolicyStatus, ClientError> {
        let path = Self::tenant_path(tenant, "/policy/promote");
        self.json("POST", &path, Body::None)
    }

    pub fn rollback(&self, tenant: &str) -> Result<PolicyStatus, ClientError> {
        let path = Self::tenant_path(tenant, "/policy/rollback");
        self.json("POST", &path, Body::None)
    }

    // --- flags ---

    pub fn flags(&self, tenant: &str) -> Result<BTreeMap<String, FlagRuleBody>, ClientError> {
        self.json("GET", &Self::tenant_path(tenant, "/flags"), Body::None)
    }

    /// Replaces the tenant's whole flag set.
    pub fn put_flags(
        &self,
        tenant: &str,
        flags: &BTreeMap<String, FlagRuleBody>,
    ) -> Result<BTreeMap<String, FlagRuleBody>, ClientError> {
        self.json(
            "PUT",
            &Self::tenant_path(tenant, "/flags"),
            Self::body(flags),
        )
    }
}
