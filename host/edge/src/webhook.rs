//! [`WebhookSink`]: push-notification events POSTed as JSON to an HTTP endpoint (the tenant's
//! or the operator's push service), one request per published message with all its offline
//! recipients.
//!
//! Plain `http://` only, HTTP/1.1 with `Connection: close`, written by hand on a std socket:
//! the sink runs on the notification worker thread (never on the message path) and needs
//! nothing more. For `https://`, run a local relay (a sidecar proxy) and point this at it.
//!
//! Bounds: at most [`MAX_NOTICES_PER_REQUEST`] notices per request (a larger group takes
//! several), [`CONNECT_TIMEOUT`] to connect and [`IO_TIMEOUT`] per read or write, so a dead
//! endpoint costs the worker at most a few seconds per message while the notification queue
//! (`notify::NOTIFY_QUEUE`) bounds what waits. A failed request is not retried: the events are
//! counted in `notifications_failed` and the messages stay in the log.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use parking_lot::Mutex;

use crate::notify::{NotifySink, OfflineNotice};

/// Notices in one request body.
pub const MAX_NOTICES_PER_REQUEST: usize = 500;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// POSTs `{"notices": [{"tenant", "group", "seq", "sender", "recipient"}, ...]}` to a URL.
#[derive(Debug)]
pub struct WebhookSink {
    host: String,
    port: u16,
    path: String,
    /// Notices of the message being handled, sent by `flush`.
    pending: Mutex<Vec<OfflineNotice>>,
}

/// Why a webhook URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("webhook URL {url:?}: {reason}")]
pub struct WebhookUrlError {
    pub url: String,
    pub reason: &'static str,
}

impl WebhookSink {
    /// A sink for `http://host[:port][/path]`.
    pub fn new(url: &str) -> Result<Self, WebhookUrlError> {
        let err = |reason| WebhookUrlError {
            url: url.to_owned(),
            reason,
        };
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            err(if url.starts_with("https://") {
                "https is not supported; point this at a local relay that adds TLS"
            } else {
                "must start with http://"
            })
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(err("needs a host (and no user info)"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| err("the port is not a number"))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(err("bad host or path"));
        }
        Ok(WebhookSink {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
            pending: Mutex::new(Vec::new()),
        })
    }

    fn post(&self, body: &[u8]) -> Result<(), String> {
        let addr: SocketAddr = (self.host.trim_matches(['[', ']']), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolve {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("resolve {}: no address", self.host))?;
        let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| e.to_string())?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\nUser-Agent: switchboard\r\n\r\n",
            self.path,
            self.host,
            self.port,
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .map_err(|e| format!("send to {addr}: {e}"))?;
        // The status line is all we need: "HTTP/1.1 204 No Content".
        let mut status = [0u8; 12];
        stream
            .read_exact(&mut status)
            .map_err(|e| format!("read the answer of {addr}: {e}"))?;
        let code = std::str::from_utf8(&status[9..12])
            .ok()
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|_| status.starts_with(b"HTTP/1."))
            .ok_or_else(|| format!("{addr} did not answer HTTP"))?;
        if (200..300).contains(&code) {
            Ok(())
        } else {
            Err(format!("{addr} answered {code}"))
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
        let s = WebhookSink::new("http://push.internal:8080/hooks/sb").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.path.as_str()),
            ("push.internal", 8080, "/hooks/sb")
        );
        let s = WebhookSink::new("http://127.0.0.1").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.path.as_str()),
            ("127.0.0.1", 80, "/")
        );
        let s = WebhookSink::new("http://[::1]:9000/x").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("[::1]", 9000));
        for bad in [
            "https://push.example/x",
            "ftp://x",
            "http://",
            "http://:80/x",
            "http://user@host/x",
            "http://host:port/x",
            "http://host/a b",
        ] {
            assert!(WebhookSink::new(bad).is_err(), "{bad}");
        }
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
