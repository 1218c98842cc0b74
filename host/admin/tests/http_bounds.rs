//! The HTTP server's own bounds, over real sockets: slowloris headers and idle keep-alive
//! connections closed at the header timeout, a declared but unsent body answered 408 and
//! closed at the body timeout, `Transfer-Encoding` beside `Content-Length` refused, the
//! connection cap, the TLS listener, and the CA certificates the admin client trusts.
//!
//! Every wait is a read until the server closes, under an outer timeout far above the
//! deadline being checked: the server's close is the signal, never a sleep.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use switchboard_admin::http::{ServeOptions, ServerLimits};

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const BODY_TIMEOUT: Duration = Duration::from_secs(1);
/// How late a close may come after its deadline before the test calls it never: generous,
/// so a loaded CI machine does not fail it.
const SLACK: Duration = Duration::from_secs(10);

fn options(max_connections: usize) -> ServeOptions {
    ServeOptions {
        limits: ServerLimits {
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            max_connections,
        },
        tls: None,
    }
}

/// Reads until the server closes the connection (EOF or reset); panics if it has not
/// after `within`. Returns what was read.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the server did not close the connection within {within:?}; read so far: {:?}",
            String::from_utf8_lossy(&got)
        );
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return got
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Asserts a close came at its deadline: not before it (less a little for timer rounding),
/// and not long after.
#[track_caller]
fn assert_closed_at(elapsed: Duration, deadline: Duration) {
    assert!(
        elapsed + Duration::from_millis(100) >= deadline,
        "closed after {elapsed:?}, before its {deadline:?} deadline"
    );
    assert!(
        elapsed <= deadline + SLACK,
        "closed after {elapsed:?}, long after its {deadline:?} deadline"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_connections_are_closed_at_the_header_timeout() {
    let api = TestApi::start_with(options(256)).await;
    let addr = api.addr().to_owned();
    sync(|| {
        // Twenty connections, each trickling an endless header a byte every 50 ms: the
        // header deadline counts from accept, not from the last byte.
        let started = Instant::now();
        let clients: Vec<_> = (0..20)
            .map(|_| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(&addr).unwrap();
                    let opened = Instant::now();
                    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                        .unwrap();
                    let mut writer = s.try_clone().unwrap();
                    let trickle = std::thread::spawn(move || {
                        while writer.write_all(b"a").is_ok() {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    });
                    let got = read_until_closed(&mut s, HEADER_TIMEOUT + SLACK);
                    let elapsed = opened.elapsed();
                    trickle.join().unwrap();
                    (got, elapsed)
                })
            })
            .collect();
        for c in clients {
            let (got, elapsed) = c.join().unwrap();
            assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
            assert_closed_at(elapsed, HEADER_TIMEOUT);
        }
        eprintln!(
            "20 slowloris connections closed within {:?}",
            started.elapsed()
        );

        // A partial header, then silence.
        let mut s = TcpStream::connect(&addr).unwrap();
        let opened = Instant::now();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost:").unwrap();
        read_until_closed(&mut s, HEADER_TIMEOUT + SLACK);
        assert_closed_at(opened.elapsed(), HEADER_TIMEOUT);

        // A connection that never says anything.
        let mut s = TcpStream::connect(&addr).unwrap();
        let opened = Instant::now();
        read_until_closed(&mut s, HEADER_TIMEOUT + SLACK);
        assert_closed_at(opened.elapsed(), HEADER_TIMEOUT);

        // An idle keep-alive connection: answered, then closed the same time after.
        let mut s = TcpStream::connect(&addr).unwrap();
        // Timed from before the request: the server's timer starts after it, so the close
        // can only look later from here, never earlier.
        let asked = Instant::now();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        s.set_read_timeout(Some(WAIT)).unwrap();
        let n = s.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        read_until_closed(&mut s, HEADER_TIMEOUT + SLACK);
        assert_closed_at(asked.elapsed(), HEADER_TIMEOUT);
    });
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declared_but_unsent_body_gets_408_and_a_close() {
    let api = TestApi::start_with(options(256)).await;
    let key = api.tenant_with_key("acme");
    let addr = api.addr().to_owned();
    sync(|| {
        for (path, token, content_type) in [
            ("/v1/tenants/acme/flags", ADMIN_TOKEN, "application/json"),
            ("/v1/tenants/acme/plugins", key.as_str(), "application/wasm"),
        ] {
            let method = if path.ends_with("flags") {
                "PUT"
            } else {
                "POST"
            };
            let mut s = TcpStream::connect(&addr).unwrap();
            write!(
                s,
                "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: {content_type}\r\nContent-Length: 100\r\n\r\n{{\"a\""
            )
            .unwrap();
            let sent = Instant::now();
            let got = read_until_closed(&mut s, BODY_TIMEOUT + SLACK);
            let elapsed = sent.elapsed();
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
            assert!(text.contains("\"code\":\"request-timeout\""), "{text}");
            assert!(
                text.to_ascii_lowercase().contains("connection: close"),
                "{text}"
            );
            assert_closed_at(elapsed, BODY_TIMEOUT);
        }
    });
    // Nothing was changed by the bodies that never came.
    assert!(sync(|| api.admin().flags("acme")).unwrap().is_empty());
    assert!(sync(|| api.admin().plugins("acme")).unwrap().is_empty());
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn content_length_beside_transfer_encoding_is_refused() {
    let api = TestApi::start().await;
    let addr = api.addr().to_owned();
    // A request smuggling shape: a front end that trusts Content-Length sees 5 bytes, one that
    // trusts Transfer-Encoding sees a tenant being created.
    let body = r#"{"id":"smuggled"}"#;
    for headers in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    ] {
        let got = sync(|| {
            let mut s = TcpStream::connect(&addr).unwrap();
            // One write: the server may answer (and close) as soon as it has the head.
            let request = format!(
                "POST /v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
                 Content-Type: application/json\r\n{headers}\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            );
            s.write_all(request.as_bytes()).unwrap();
            read_until_closed(&mut s, WAIT)
        });
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 400"), "{headers}: {text}");
        assert!(text.contains("\"code\":\"invalid-argument\""), "{text}");
        assert!(text.contains("Transfer-Encoding"), "{text}");
    }
    let tenants = sync(|| api.admin().tenants()).unwrap();
    assert!(tenants.iter().all(|t| t.id != "smuggled"), "{tenants:?}");
    api.stop().await;
}

/// A keep-alive request on `s` that must be answered 200.
fn healthz(s: &mut TcpStream) {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_cap_are_closed_at_once() {
    const CAP: usize = 4;
    let api = TestApi::start_with(ServeOptions {
        limits: ServerLimits {
            // Long enough that the held connections stay for the whole test.
            header_timeout: Duration::from_secs(60),
            max_connections: CAP,
            ..ServerLimits::default()
        },
        tls: None,
    })
    .await;
    let addr = api.addr().to_owned();
    sync(|| {
        // Each answered, so each holds one of the server's connection permits.
        let mut held: Vec<TcpStream> = (0..CAP)
            .map(|_| {
                let mut s = TcpStream::connect(&addr).unwrap();
                healthz(&mut s);
                s
            })
            .collect();
        let mut extra = TcpStream::connect(&addr).unwrap();
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let got = read_until_closed(&mut extra, WAIT);
        assert!(
            got.is_empty(),
            "a connection past the cap was served: {}",
            String::from_utf8_lossy(&got)
        );
        // The held ones still work.
        for s in &mut held {
            healthz(s);
        }
        // One closes; its permit comes back when the server sees the close, and a new
        // connection is served. (Polled: the server's close handling is not observable
        // from here except by trying.)
        drop(held.pop());
        let deadline = Instant::now() + WAIT;
        loop {
            let mut s = TcpStream::connect(&addr).unwrap();
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            s.set_read_timeout(Some(WAIT)).unwrap();
            let mut buf = [0u8; 64];
            match s.read(&mut buf) {
                Ok(n) if n > 0 => {
                    assert!(buf.starts_with(b"HTTP/1.1 200"));
                    break;
                }
                _ => {
                    assert!(
                        Instant::now() < deadline,
                        "the freed permit never came back"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    });
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tls_listener_serves_healthz_to_a_rustls_client() {
    let identity = switchboard_edge::TlsIdentity::self_signed().unwrap();
    let cert = identity.cert_chain[0].clone();
    let tls = switchboard_admin::http::tls_config(identity.cert_chain, identity.key).unwrap();
    let api = TestApi::start_with(ServeOptions {
        limits: ServerLimits::default(),
        tls: Some(tls),
    })
    .await;
    assert!(api.url.starts_with("https://"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(api.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .unwrap()
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"status\":\"ok\""), "{text}");

    // Plain HTTP on the TLS port gets nothing served.
    let got = sync(|| {
        let mut s = TcpStream::connect(api.addr()).unwrap();
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        read_until_closed(&mut s, WAIT)
    });
    assert!(!got.starts_with(b"HTTP/1.1 200"));
    api.stop().await;
}

/// PEM text of DER certificates or keys (`label` e.g. `CERTIFICATE`).
fn pem(label: &str, der: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out.into_bytes()
}

/// `AdminClient::with_ca` takes the node's certificate as DER (a node's `cert.der`) or PEM
/// and then trusts it alone; anything that is not a certificate is refused when given, with
/// a typed error, before any request.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_client_trusts_a_ca_given_as_der_or_pem_and_refuses_anything_else() {
    use switchboard_admin::client::{AdminClient, CaError};

    let identity = switchboard_edge::TlsIdentity::self_signed().unwrap();
    let der = identity.cert_chain[0].to_vec();
    let key_der = identity.key.secret_der().to_vec();
    let tls = switchboard_admin::http::tls_config(identity.cert_chain, identity.key).unwrap();
    let api = TestApi::start_with(ServeOptions {
        limits: ServerLimits::default(),
        tls: Some(tls),
    })
    .await;
    let port = api.addr().rsplit(':').next().unwrap().to_owned();
    // The dev certificate names `localhost`.
    let url = format!("https://localhost:{port}");

    for (form, ca) in [("DER", der.clone()), ("PEM", pem("CERTIFICATE", &der))] {
        let client = AdminClient::with_ca(&url, None, &ca).unwrap();
        let health = sync(|| client.health()).unwrap_or_else(|e| panic!("{form}: {e}"));
        assert_eq!(health.status, "ok", "{form}");
    }
    // A PEM bundle: a key section is skipped, the certificate is used.
    let mut bundle = pem("PRIVATE KEY", &key_der);
    bundle.extend(pem("CERTIFICATE", &der));
    let client = AdminClient::with_ca(&url, None, &bundle).unwrap();
    sync(|| client.health()).unwrap();

    // Trust is exactly what was given: another certificate does not reach this node.
    let other = switchboard_edge::TlsIdentity::self_signed()
        .unwrap()
        .cert_chain[0]
        .to_vec();
    let client = AdminClient::with_ca(&url, None, &other).unwrap();
    match sync(|| client.health()) {
        Err(switchboard_admin::client::ClientError::Transport { .. }) => {}
        other => panic!("an untrusted node answered: {other:?}"),
    }

    let refused = |ca: &[u8]| AdminClient::with_ca(&url, None, ca).unwrap_err();
    assert!(matches!(
        refused(b"this is not a certificate\n"),
        CaError::NotACertificate { .. }
    ));
    assert!(matches!(refused(b""), CaError::NotACertificate { .. }));
    // DER of a key, not of a certificate.
    assert!(matches!(refused(&key_der), CaError::NotACertificate { .. }));
    assert!(matches!(
        refused(&der[..der.len() / 2]),
        CaError::NotACertificate { .. }
    ));
    assert_eq!(
        refused(&pem("PRIVATE KEY", &key_der)),
        CaError::NoCertificate
    );
    assert!(matches!(
        refused(&pem("CERTIFICATE", b"not a certificate at all")),
        CaError::BadPemCertificate { index: 0, .. }
    ));
    let mut second_bad = pem("CERTIFICATE", &der);
    second_bad.extend(pem("CERTIFICATE", &der[..40]));
    assert!(matches!(
        refused(&second_bad),
        CaError::BadPemCertificate { index: 1, .. }
    ));
    assert!(matches!(
        refused(b"-----BEGIN CERTIFICATE-----\n%%%% not base64\n"),
        CaError::Pem(_)
    ));
    let message = refused(b"junk").to_string();
    assert!(
        message.contains("neither PEM nor a DER X.509 certificate"),
        "{message}"
    );
    api.stop().await;
}
