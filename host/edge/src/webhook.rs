//! [`WebhookSink`]: push-notification events POSTed as JSON to an HTTP endpoint (the tenant's
//! or the operator's push service), one request per published message with all its offline
//! recipients.
//!
//! `http://` or `https://` through `ureq` (a kept blocking client: the sink runs on the
//! notification worker thread, never on the message path). HTTPS verifies the endpoint
//! against the webpki roots, or only against the operator's CA when one is given
//! ([`WebhookSink::with_ca_pem`]: a private push relay).
//!
//! Bounds: at most [`MAX_NOTICES_PER_REQUEST`] notices per request (a larger group takes
//! several); [`RESOLVE_TIMEOUT`] for the DNS lookup, [`CONNECT_TIMEOUT`] to connect (TLS
//! included), [`IO_TIMEOUT`] per read or write and [`REQUEST_TIMEOUT`] for the whole request;
//! no redirects; a response body is not read beyond its status. So a dead endpoint costs the
//! worker at most [`REQUEST_TIMEOUT`] per message while the notification queue
//! (`notify::NOTIFY_QUEUE`) bounds what waits. A failed request is not retried: the events are
//! counted in `notifications_failed` and the messages stay in the log.

use std::time::Duration;

use parking_lot::Mutex;
use ureq::http::Uri;

use crate::notify::{NotifySink, OfflineNotice};

/// Notices in one request body.
pub const MAX_NOTICES_PER_REQUEST: usize = 500;
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// POSTs `{"notices": [{"tenant", "group", "seq", "sender", "recipient"}, ...]}` to a URL.
#[derive(Debug)]
pub struct WebhookSink {
    url: String,
    agent: ureq::Agent,
    /// Notices of the message being handled, sent by `flush`.
    pending: Mutex<Vec<OfflineNotice>>,
}

/// Why a webhook URL (or its CA) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("webhook URL {url:?}: {reason}")]
pub struct WebhookUrlError {
    pub url: String,
    pub reason: String,
}

impl WebhookSink {
    /// A sink for `http[s]://host[:port][/path]`; HTTPS trusts the webpki roots.
    pub fn new(url: &str) -> Result<Self, WebhookUrlError> {
        Self::build(url, ureq::tls::RootCerts::WebPki)
    }

    /// A sink whose HTTPS endpoint must present a certificate issued by one of the CAs in
    /// `ca_pem` (and by no other).
    pub fn with_ca_pem(url: &str, ca_pem: &[u8]) -> Result<Self, WebhookUrlError> {
        let certs = ureq::tls::parse_pem(ca_pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| WebhookUrlError {
                url: url.to_owned(),
                reason: format!("the CA file is not PEM: {e}"),
            })?;
        if certs.is_empty() {
            return Err(WebhookUrlError {
                url: url.to_owned(),
                reason: "the CA file holds no certificate".into(),
            });
        }
        Self::build(url, ureq::tls::RootCerts::new_with_certs(&certs))
    }

    fn build(url: &str, roots: ureq::tls::RootCerts) -> Result<Self, WebhookUrlError> {
        let err = |reason: &str| WebhookUrlError {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| err("not a URL"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(err("must start with http:// or https://")),
        }
        let authority = uri.authority().ok_or_else(|| err("needs a host"))?;
        if authority.host().is_empty() || authority.as_str().contains('@') {
            return Err(err("needs a host (and no user info)"));
        }
        // `http::Uri` accepts any text after the host's colon; the port must be a number.
        let port = match authority.as_str().strip_prefix('[') {
            Some(v6) => v6.split_once("]:").map(|(_, port)| port),
            None => authority.as_str().rsplit_once(':').map(|(_, port)| port),
        };
        if port.is_some_and(|p| p.parse::<u16>().is_err()) {
            return Err(err("the port is not a number"));
        }
        let tls = ureq::tls::TlsConfig::builder().root_certs(roots).build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_resolve(Some(RESOLVE_TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(IO_TIMEOUT))
            .timeout_per_write(Some(IO_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .max_redirects(0)
            .http_status_as_error(false)
            .user_agent("switchboard")
            .build()
            .new_agent();
        Ok(WebhookSink {
            url: url.to_owned(),
            agent,
            pending: Mutex::new(Vec::new()),
        })
    }

    fn post(&self, body: &[u8]) -> Result<(), String> {
        let response = self
            .agent
            .post(&self.url)
            .header("content-type", "application/json")
            .send(body)
            .map_err(|e| format!("POST {}: {e}", self.url))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{} answered {}", self.url, status.as_u16()))
        }
    }
}

fn body(notices: &[OfflineNotice]) -> Vec<u8> {
    let items: Vec<serde_json::Value> = notices
        .iter()
        .map(|n| {
            serde_json::json!({
                "tenant": n.tenant.as_str(),
                "group": n.group.as_str(),
                "seq": n.seq,
                "sender": n.sender.as_str(),
                "recipient": n.recipient.as_str(),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "notices": items })).expect("JSON of strings")
}

impl NotifySink for WebhookSink {
    fn notify(&self, notice: &OfflineNotice) {
        self.pending.lock().push(notice.clone());
    }

    fn flush(&self) -> Result<usize, (usize, String)> {
        let notices = std::mem::take(&mut *self.pending.lock());
        let mut sent = 0;
        for chunk in notices.chunks(MAX_NOTICES_PER_REQUEST) {
            if let Err(e) = self.post(&body(chunk)) {
                return Err((notices.len() - sent, e));
            }
            sent += chunk.len();
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        for good in [
            "http://push.internal:8080/hooks/sb",
            "http://127.0.0.1",
            "http://[::1]:9000/x",
            "http://[::1]/x",
            "https://push.example/x",
        ] {
            assert!(WebhookSink::new(good).is_ok(), "{good}");
        }
        for bad in [
            "ftp://x",
            "http://",
            "http://user@host/x",
            "http://host:port/x",
            "http://host/a b",
            "push.example/x",
        ] {
            assert!(WebhookSink::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let url = "https://push.example/x";
        assert!(WebhookSink::with_ca_pem(url, b"").is_err());
        assert!(WebhookSink::with_ca_pem(url, b"not pem").is_err());
        let cert = rcgen::generate_simple_self_signed(vec!["push.example".into()]).unwrap();
        assert!(WebhookSink::with_ca_pem(url, cert.cert.pem().as_bytes()).is_ok());
    }

    #[test]
    fn the_body_lists_every_notice() {
        let n = |r: &str| OfflineNotice {
            tenant: switchboard_core::TenantId::new("acme").unwrap(),
            group: switchboard_core::GroupId::new("board").unwrap(),
            seq: 7,
            sender: switchboard_core::UserId::new("alice").unwrap(),
            recipient: switchboard_core::UserId::new(r).unwrap(),
        };
        let v: serde_json::Value = serde_json::from_slice(&body(&[n("carol"), n("dave")])).unwrap();
        assert_eq!(v["notices"][1]["recipient"], "dave");
        assert_eq!(v["notices"][0]["seq"], 7);
        assert_eq!(v["notices"].as_array().unwrap().len(), 2);
    }
}
