//! The console's session cookie and HTTPS, with the real `communesync` binary: `serve
//! --tls-cert/--tls-key` marks it `Secure` without being asked; plain HTTP does not, unless
//! `--secure-cookies` says a TLS proxy is in front (or `COMMUNESYNC_SECURE_COOKIES`);
//! `--print-config` says which is in force.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use communesync_tests::process::{ServerProcess, communesync_binary};
use communesync_tests::tls::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "a long enough passphrase";

/// A database with one console operator, `lan`, made with the CLI (password on stdin).
fn database_with_operator(bin: &Path, dir: &Path, name: &str) -> String {
    let db = format!("sqlite:{}", dir.join(name).display());
    let mut child = Command::new(bin)
        .args(["admin", "--database", &db, "create-operator", "lan"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    db
}

fn login_request() -> Vec<u8> {
    let body = format!("username=lan&password={}", PASSWORD.replace(' ', "+"));
    format!(
        "POST /console/login HTTP/1.1\r\nhost: 127.0.0.1\r\n\
         content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The session cookie a login over plain HTTP sets.
fn login_over_http(server: &ServerProcess) -> String {
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(&login_request()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    session_cookie(&answer, server)
}

/// The session cookie a login over HTTPS (trusting `ca`) sets.
async fn login_over_https(server: &ServerProcess, ca: &TestCa) -> String {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        communesync_core::sync::tls::client_config(&ca.trust()).unwrap(),
    ));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = connector.connect(name, tcp).await.unwrap();
    conn.write_all(&login_request()).await.unwrap();
    let mut answer = Vec::new();
    // The server closes after its answer (`connection: close`); a peer that skips TLS's
    // close_notify is an error here, after the whole answer was read.
    let _ = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut answer))
        .await
        .unwrap();
    session_cookie(&answer, server)
}

fn session_cookie(answer: &[u8], server: &ServerProcess) -> String {
    let text = String::from_utf8_lossy(answer);
    assert!(
        text.starts_with("HTTP/1.1 303"),
        "login refused: {text}\n{}",
        server.log_text()
    );
    text.lines()
        .find(|line| line.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {text}"))
        .to_owned()
}

fn is_secure(cookie: &str) -> bool {
    cookie.split(';').any(|part| part.trim() == "Secure")
}

fn print_config(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let output = Command::new(bin)
        .arg("serve")
        .args(args)
        .arg("--print-config")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_secure_over_https_and_when_a_tls_proxy_is_declared() {
    let bin = communesync_binary().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // HTTPS served by the server itself: Secure, without --secure-cookies.
    let ca = TestCa::new("province CA").unwrap();
    let (cert, key) = ca
        .server_cert(&["127.0.0.1"])
        .unwrap()
        .write(dir.path(), "server")
        .unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let tls_args = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    let https_dir = tempfile::tempdir().unwrap();
    let db = database_with_operator(&bin, dir.path(), "https.db");
    let server =
        ServerProcess::start_configured(&bin, &db, None, https_dir.path(), &tls_args, None)
            .unwrap();
    let cookie = login_over_https(&server, &ca).await;
    assert!(is_secure(&cookie), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    drop(server);

    // Plain HTTP: not Secure (a browser would never send it back over http://)...
    let plain_dir = tempfile::tempdir().unwrap();
    let db = database_with_operator(&bin, dir.path(), "plain.db");
    let server =
        ServerProcess::start_configured(&bin, &db, None, plain_dir.path(), &[], None).unwrap();
    let cookie = login_over_http(&server);
    assert!(!is_secure(&cookie), "{cookie}");
    drop(server);

    // ... unless a TLS proxy in front is declared.
    let proxied_dir = tempfile::tempdir().unwrap();
    let db = database_with_operator(&bin, dir.path(), "proxied.db");
    let server = ServerProcess::start_configured(
        &bin,
        &db,
        None,
        proxied_dir.path(),
        &["--secure-cookies"],
        None,
    )
    .unwrap();
    let cookie = login_over_http(&server);
    assert!(is_secure(&cookie), "{cookie}");
    drop(server);

    // What is in force, as --print-config says it: the flag, the environment, or TLS.
    let config = |args: &[&str], env: &[(&str, &str)]| {
        print_config(&bin, args, env)["secure-cookies"].as_bool()
    };
    assert_eq!(config(&[], &[]), Some(false));
    assert_eq!(config(&["--secure-cookies"], &[]), Some(true));
    assert_eq!(
        config(&[], &[("COMMUNESYNC_SECURE_COOKIES", "true")]),
        Some(true)
    );
    assert_eq!(config(&tls_args, &[]), Some(true));
}
