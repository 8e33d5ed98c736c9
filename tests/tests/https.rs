//! HTTPS between tablets and the server, with certificates from CAs the tests make: a server
//! that is not trusted (another CA, expired, another host name, no pinned key) gives the
//! distinct `UntrustedServer` error that says why, and is not retried; pinned keys; a
//! certificate reload that serves new handshakes without dropping open connections; a TLS
//! handshake that never finishes is bounded.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use communesync_core::record::DeviceId;
use communesync_core::sync::tls::key_pin;
use communesync_core::sync::{ServerTrust, SyncError, TransportError, enroll};
use communesync_server::serve::ServeConfig;
use communesync_server::tls::ServerTls;
use communesync_tests::tls::{ServerCert, TestCa};
use communesync_tests::{TestServer, TestTls, sqlite_url, transport, unlimited_rate_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// An HTTPS server on a fresh SQLite file, serving `cert` (from `ca`).
async fn server_with(dir: &std::path::Path, ca: TestCa, cert: &ServerCert) -> TestServer {
    let files = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = cert.write(files.path(), "server").unwrap();
    let tls = Arc::new(TestTls {
        server: Arc::new(ServerTls::load(&cert_path, &key_path).unwrap()),
        ca,
        dir: files,
    });
    TestServer::start_tls(
        &sqlite_url(dir, "tls.db"),
        unlimited_rate_config(),
        Some(tls),
        None,
    )
    .await
    .unwrap()
}

/// Enrolls with a wrong code through a transport trusting `trust`: the TLS verdict comes first.
async fn enroll_error(server: &TestServer, trust: ServerTrust) -> SyncError {
    enroll(
        &transport(&server.url(), trust),
        "WRONG-CODE-0000",
        DeviceId::new(),
        "t",
    )
    .await
    .unwrap_err()
}

/// A transport that counts the exchanges it is asked for.
struct Counting<T> {
    inner: T,
    sent: std::sync::atomic::AtomicU32,
}

impl<T> Counting<T> {
    fn new(inner: T) -> Self {
        Counting {
            inner,
            sent: std::sync::atomic::AtomicU32::new(0),
        }
    }

    fn sent(&self) -> u32 {
        self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl<T: communesync_core::sync::Transport> communesync_core::sync::Transport for Counting<T> {
    async fn send(
        &self,
        req: communesync_core::sync::HttpRequest,
    ) -> Result<communesync_core::sync::HttpResponse, TransportError> {
        self.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.send(req).await
    }
}

fn untrusted(err: SyncError) -> String {
    match err {
        SyncError::UntrustedServer(message) => message,
        other => panic!("expected UntrustedServer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_trusted_gives_a_distinct_error_saying_why() {
    let dir = tempfile::tempdir().unwrap();

    // The right CA: the request reaches the server (which refuses the code).
    let ca = TestCa::new("province CA").unwrap();
    let good = ca.server_cert(&["127.0.0.1"]).unwrap();
    let trust = ca.trust();
    let server = server_with(dir.path(), ca, &good).await;
    assert!(matches!(
        enroll_error(&server, trust).await,
        SyncError::Unauthorized
    ));

    // Another CA, and the bundled web roots (no configuration): not trusted, not "offline".
    let other = TestCa::new("another CA").unwrap();
    let message = untrusted(enroll_error(&server, other.trust()).await);
    assert!(
        message.contains("not signed by a trusted authority"),
        "{message}"
    );
    let message = untrusted(enroll_error(&server, ServerTrust::default()).await);
    assert!(
        message.contains("not signed by a trusted authority"),
        "{message}"
    );
    // The transport classifies it once, and it is not retryable.
    let err = communesync_core::sync::Transport::send(
        &transport(&server.url(), other.trust()),
        communesync_core::sync::HttpRequest {
            path: "/v1/health".into(),
            bearer: None,
            content_type: "text/plain".into(),
            body: Vec::new(),
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransportError::UntrustedServer(_)), "{err:?}");
    assert!(!err.is_retryable());
    // Not retried: one attempt, where an offline server gets three.
    let counting = Counting::new(transport(&server.url(), other.trust()));
    let err = enroll(&counting, "WRONG-CODE-0000", DeviceId::new(), "t")
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::UntrustedServer(_)), "{err:?}");
    assert_eq!(counting.sent(), 1);
    drop(server);

    // Expired.
    let ca = TestCa::new("province CA").unwrap();
    let expired = ca.expired_server_cert(&["127.0.0.1"]).unwrap();
    let trust = ca.trust();
    let sub = tempfile::tempdir().unwrap();
    let server = server_with(sub.path(), ca, &expired).await;
    let message = untrusted(enroll_error(&server, trust).await);
    assert!(message.contains("expired"), "{message}");
    assert!(message.contains("clock"), "{message}");
    drop(server);

    // Not valid yet (a tablet whose clock is behind sees this).
    let ca = TestCa::new("province CA").unwrap();
    let now = time::OffsetDateTime::now_utc();
    let future = ca
        .server_cert_valid(
            &["127.0.0.1"],
            now + Duration::from_secs(86_400),
            now + Duration::from_secs(30 * 86_400),
        )
        .unwrap();
    let trust = ca.trust();
    let sub = tempfile::tempdir().unwrap();
    let server = server_with(sub.path(), ca, &future).await;
    let message = untrusted(enroll_error(&server, trust).await);
    assert!(message.contains("valid only from"), "{message}");
    drop(server);

    // For another host name.
    let ca = TestCa::new("province CA").unwrap();
    let elsewhere = ca.server_cert(&["sync.example.vn"]).unwrap();
    let trust = ca.trust();
    let sub = tempfile::tempdir().unwrap();
    let server = server_with(sub.path(), ca, &elsewhere).await;
    let message = untrusted(enroll_error(&server, trust).await);
    assert!(
        message.contains("sync.example.vn") && message.contains("127.0.0.1"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_keys_narrow_the_trust_and_any_of_several_pins_will_do() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("province CA").unwrap();
    let cert = ca.server_cert(&["127.0.0.1"]).unwrap();
    let next = ca.server_cert(&["127.0.0.1"]).unwrap();
    let ca_pem = ca.cert_pem.clone();
    let server = server_with(dir.path(), ca, &cert).await;

    // The server's key among the pins (beside the next key, as during a rotation): trusted.
    let pinned = ServerTrust {
        ca_pem: vec![ca_pem.clone()],
        pinned_keys: vec![
            key_pin(&next.cert_der).unwrap(),
            format!("sha256/{}", key_pin(&cert.cert_der).unwrap()),
        ],
    };
    assert!(matches!(
        enroll_error(&server, pinned).await,
        SyncError::Unauthorized
    ));
    // Only another key pinned: refused, though the CA is right.
    let other_key = ServerTrust {
        ca_pem: vec![ca_pem],
        pinned_keys: vec![key_pin(&next.cert_der).unwrap()],
    };
    let message = untrusted(enroll_error(&server, other_key).await);
    assert!(message.contains("pinned"), "{message}");
    // A pin does not replace the chain check: with the web roots the test CA is still unknown.
    let pin_alone = ServerTrust {
        ca_pem: Vec::new(),
        pinned_keys: vec![key_pin(&cert.cert_der).unwrap()],
    };
    let message = untrusted(enroll_error(&server, pin_alone).await);
    assert!(
        message.contains("not signed by a trusted authority"),
        "{message}"
    );
}

/// A raw TLS client trusting `trust`, sharing one config (so one session cache).
fn connector(trust: &ServerTrust) -> TlsConnector {
    TlsConnector::from(Arc::new(
        communesync_core::sync::tls::client_config(trust).unwrap(),
    ))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(connector: &TlsConnector, server: &TestServer) -> Tls {
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// The end-entity certificate the server presented on `conn`.
fn presented(conn: &Tls) -> Vec<u8> {
    conn.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn resumed(conn: &Tls) -> bool {
    conn.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

/// `GET /v1/health` on a kept-alive connection; its answer must be 200 `ok`.
async fn health(conn: &mut Tls) {
    conn.write_all(b"GET /v1/health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // Bounded: the answer is a few dozen bytes.
    for _ in 0..100 {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
        if answer.ends_with(b"\r\n\r\nok") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_serves_new_handshakes_and_open_connections_stay() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_scheme(
        &sqlite_url(dir.path(), "reload.db"),
        communesync_tests::Scheme::Https,
    )
    .await
    .unwrap();
    let tls = server.tls.clone().unwrap();
    // The province switches to a certificate from its new CA: tablets trust both meanwhile.
    let new_ca = TestCa::new("province CA 2027").unwrap();
    let both = ServerTrust {
        ca_pem: vec![tls.ca.cert_pem.clone(), new_ca.cert_pem.clone()],
        pinned_keys: Vec::new(),
    };
    let tablet = connector(&both);
    let mut before = connect(&tablet, &server).await;
    health(&mut before).await;
    let first = presented(&before);

    let renewed = new_ca.server_cert(&["127.0.0.1"]).unwrap();
    renewed.write(tls.dir.path(), "server").unwrap();
    tls.server.reload().unwrap();

    // The connection opened before still works, on its old session.
    health(&mut before).await;
    assert_eq!(presented(&before), first);
    // A new full handshake sees the new certificate.
    let mut after = connect(&connector(&both), &server).await;
    assert!(!resumed(&after));
    assert_eq!(presented(&after), renewed.cert_der);
    health(&mut after).await;
    // A tablet that knew the server resumes its session across the reload (no certificate
    // sent again: what saves bytes on 2G).
    let mut again = connect(&tablet, &server).await;
    assert!(resumed(&again), "the session was not resumed");
    health(&mut again).await;

    // A half-written certificate, then a key from another pair: refused, the current one stays.
    std::fs::write(
        tls.dir.path().join("server.crt"),
        "-----BEGIN CERTIFICATE-----\nAAA",
    )
    .unwrap();
    assert!(tls.server.reload().is_err());
    let stranger = new_ca.server_cert(&["127.0.0.1"]).unwrap();
    std::fs::write(tls.dir.path().join("server.crt"), &stranger.cert_pem).unwrap();
    let err = tls.server.reload().unwrap_err();
    assert!(err.to_string().contains("server.key"), "{err}");
    let mut still = connect(&connector(&both), &server).await;
    assert_eq!(presented(&still), renewed.cert_der);
    health(&mut still).await;

    // The file watch picks up a good pair by itself (polling every 100 ms; bounded wait).
    let watch = tls.server.watch(Duration::from_millis(100));
    let third = new_ca.server_cert(&["127.0.0.1"]).unwrap();
    third.write(tls.dir.path(), "server").unwrap();
    let mut seen = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let conn = connect(&connector(&both), &server).await;
        if presented(&conn) == third.cert_der {
            seen = true;
            break;
        }
    }
    watch.abort();
    assert!(seen, "the watch did not reload the renewed certificate");
    health(&mut before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_finishes_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let tls = Arc::new(TestTls::new().unwrap());
    let serve_config = ServeConfig {
        header_timeout: Duration::from_millis(500),
        tls: Some(tls.server.clone()),
        ..ServeConfig::default()
    };
    let server = TestServer::start_serving(
        &sqlite_url(dir.path(), "slow.db"),
        unlimited_rate_config(),
        serve_config,
        None,
    )
    .await
    .unwrap();
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // The first bytes of a ClientHello record, and then nothing.
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the stalled handshake was not closed: {closed:?}"
    );
}

/// Runs the `communesync` binary; returns (success, stdout, stderr).
fn cli(bin: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_https_reloads_its_certificate_and_the_device_cli_trusts_a_ca() {
    use communesync_tests::process::{ServerProcess, UNLIMITED_RATE, communesync_binary};
    let bin = communesync_binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let db = format!("sqlite:{}", path("province.db"));
    let (ok, _, err) = cli(
        &bin,
        &[
            "admin",
            "--database",
            &db,
            "create-commune",
            "DB-NATAU",
            "Nà Tấu",
        ],
    );
    assert!(ok, "{err}");
    let code = |bin: &std::path::Path| {
        let (ok, out, err) = cli(
            bin,
            &[
                "admin",
                "--database",
                &db,
                "issue-code",
                "--commune",
                "DB-NATAU",
            ],
        );
        assert!(ok, "{err}");
        let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        last["code"].as_str().unwrap().to_owned()
    };
    let (code_a, code_b) = (code(&bin), code(&bin));

    let ca = TestCa::new("province CA").unwrap();
    std::fs::write(path("ca.pem"), &ca.cert_pem).unwrap();
    let first = ca.server_cert(&["127.0.0.1"]).unwrap();
    first.write(dir.path(), "server").unwrap();
    let (cert, key) = (path("server.crt"), path("server.key"));
    let mut args = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    args.extend_from_slice(UNLIMITED_RATE);
    let server = ServerProcess::start_configured(&bin, &db, None, dir.path(), &args, None).unwrap();
    let url = format!("https://{}", server.addr);

    // The device CLI with the province's CA: enrolls, and syncs with the CA it saved.
    let store = path("tablet.db");
    let (ok, _, err) = cli(
        &bin,
        &[
            "device",
            "--store",
            &store,
            "--ca-cert",
            &path("ca.pem"),
            "enroll",
            "--server",
            &url,
            "--code",
            &code_a,
        ],
    );
    assert!(ok, "{err}\n{}", server.log_text());
    let (ok, out, err) = cli(&bin, &["device", "--store", &store, "sync"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"requests\""), "{out}");
    // Without it (the web roots): refused as untrusted, not as offline.
    let (ok, _, err) = cli(
        &bin,
        &[
            "device",
            "--store",
            &path("other.db"),
            "enroll",
            "--server",
            &url,
            "--code",
            &code_b,
        ],
    );
    assert!(!ok);
    assert!(err.contains("not trusted"), "{err}");

    // A renewed certificate in the files, and SIGHUP (the file watch would also see it within
    // 5 s): new handshakes get it, without a restart.
    let renewed = ca.server_cert(&["127.0.0.1"]).unwrap();
    renewed.write(dir.path(), "server").unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let tablet = connector(&ca.trust());
    let mut seen = false;
    for _ in 0..100 {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = tablet.connect(name, tcp).await.unwrap();
        if presented(&conn) == renewed.cert_der {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen,
        "the renewed certificate was not served: {}",
        server.log_text()
    );
    let (ok, _, err) = cli(&bin, &["device", "--store", &store, "sync"]);
    assert!(ok, "{err}");
}
