//! Enrollment codes and credentials, over real HTTP on 127.0.0.1: a code enrolls exactly one
//! device even when raced, expires, and guessing is throttled per source (a right code from a
//! throttled source still enrolls, after the delay); a tablet whose credential was lost or
//! revoked by mistake enrolls again with a re-enrollment code and its unsynced work reaches the
//! server; codes and tokens are stored only as hashes (the SQLite file and every PostgreSQL table
//! are scanned for the plaintext); and no secret appears in the server's log, read from the real
//! `communesync serve` process at its most verbose level. Hostile cases: `enrollment_hostile.rs`.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use communesync_core::codec::DocCodec;
use communesync_core::protocol::{CONTENT_TYPE, PROTOCOL_VERSION, PullRequest, SyncRequest};
use communesync_core::record::DeviceId;
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, SyncError, enroll};
use communesync_server::http::{self, ServerConfig};
use communesync_server::storage::Scope;
use communesync_tests::process::communesync_binary;
use communesync_tests::{TestServer, now_ms, test_databases};

const COMMUNE: &str = "DB-MUONGPHANG";
const HOUR: Duration = Duration::from_secs(3600);

async fn enroll_raw(http: &reqwest::Client, base: &str, code: &str) -> reqwest::Response {
    http.post(format!("{base}/v1/enroll"))
        .json(&serde_json::json!({"code": code, "device_id": DeviceId::new(), "label": "t"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_enrolls_one_device_once_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "codes").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        server.commune_with_codes(COMMUNE, 0).await.unwrap();
        let storage = server.storage.as_ref();
        let scope = Scope::Commune(COMMUNE.into());
        let http = reqwest::Client::new();
        let base = server.url();

        // Raced: eight enrollments with one code at once, exactly one device.
        let (code, _) = http::issue_enrollment_code(storage, &scope, HOUR, now_ms())
            .await
            .unwrap();
        let mut racing = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (http, base, code) = (http.clone(), base.clone(), code.clone());
            racing.spawn(async move { enroll_raw(&http, &base, &code).await.status().as_u16() });
        }
        let mut statuses = Vec::new();
        while let Some(status) = racing.join_next().await {
            statuses.push(status.unwrap());
        }
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 401, 401, 401, 401, 401, 401, 401], "{url}");
        assert_eq!(storage.list_devices(None).await.unwrap().len(), 1, "{url}");

        // Expired an hour ago: refused, as an unknown code is (nothing tells them apart).
        let (expired, _) =
            http::issue_enrollment_code(storage, &scope, HOUR, now_ms() - 2 * 3_600_000)
                .await
                .unwrap();
        let response = enroll_raw(&http, &base, &expired).await;
        assert_eq!(response.status().as_u16(), 401, "{url}");
        let expired_text = response.text().await.unwrap();
        let unknown_text = enroll_raw(&http, &base, "ABCD-EFGH-JKMN")
            .await
            .text()
            .await
            .unwrap();
        assert_eq!(expired_text, unknown_text, "{url}");
        // Issued 59 minutes ago with an hour to live: still good, typed in lower case without
        // dashes.
        let (late, _) = http::issue_enrollment_code(storage, &scope, HOUR, now_ms() - 59 * 60_000)
            .await
            .unwrap();
        let typed = late.replace('-', "").to_lowercase();
        assert_eq!(
            enroll_raw(&http, &base, &typed).await.status().as_u16(),
            200,
            "{url}"
        );
        // A code for a commune that does not exist cannot be issued.
        assert!(
            http::issue_enrollment_code(
                storage,
                &Scope::Commune("DB-NOWHERE".into()),
                HOUR,
                now_ms()
            )
            .await
            .is_err()
        );
        assert_eq!(storage.list_devices(None).await.unwrap().len(), 2, "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_source_still_enrolls_with_the_right_code() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "throttle").await.unwrap() {
        let config = ServerConfig {
            enroll_failures_allowed: 3,
            enroll_throttle_delay: Duration::from_millis(200),
            ..ServerConfig::default()
        };
        let server = TestServer::start_with(&url, config, None).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 1).await.unwrap();
        let http = reqwest::Client::new();
        let base = server.url();
        // Three typos at full speed, a fourth throttled but still evaluated.
        for guess in [
            "AAAA-AAAA-AAAA",
            "BBBB-BBBB-BBBB",
            "CCCC-CCCC-CCCC",
            "DDDD-DDDD-DDDD",
        ] {
            assert_eq!(
                enroll_raw(&http, &base, guess).await.status().as_u16(),
                401,
                "{url}"
            );
        }
        let attempts = server
            .storage
            .enrollment_attempts("127.0.0.1", now_ms())
            .await
            .unwrap();
        assert_eq!(attempts, 4, "{url}");
        // Over the limit: the right code is throttled, not refused.
        let response = enroll_raw(&http, &base, &codes[0]).await;
        assert_eq!(response.status().as_u16(), 200, "{url}");
        assert_eq!(server.storage.list_devices(None).await.unwrap().len(), 1);
        // Its attempt was given back: only the typos count.
        assert_eq!(
            server
                .storage
                .enrollment_attempts("127.0.0.1", now_ms())
                .await
                .unwrap(),
            4,
            "{url}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablet_enrolled_again_keeps_its_id_and_its_unsynced_work_reaches_the_server() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "reenroll_e2e").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 2).await.unwrap();
        let sub = tempfile::tempdir().unwrap();
        let transport = ReqwestTransport::new(&server.url()).unwrap();
        let mut store = DeviceStore::open(StoreConfig::new(sub.path().join("tablet.db"))).unwrap();
        store.import_catalogue(&SampleData::catalogue()).unwrap();
        let device = store.device_id();
        let store = Arc::new(Mutex::new(store));
        let credentials = enroll(&transport, &codes[0], device, "Tablet 2")
            .await
            .unwrap();
        let tablet = SyncClient::new(
            ReqwestTransport::new(&server.url()).unwrap(),
            store.clone(),
            credentials.token.clone(),
            SyncConfig::default(),
        )
        .unwrap();
        let mut sample = SampleData::new(3);
        let mut ids = Vec::new();
        for _ in 0..3 {
            let app = store
                .lock()
                .unwrap()
                .create_application("officer", sample.application(COMMUNE, None))
                .unwrap();
            ids.push(app.id);
        }
        tablet.sync(&|_| {}).await.unwrap();
        // Work done offline, then the credential is revoked by mistake.
        for _ in 0..4 {
            let app = store
                .lock()
                .unwrap()
                .create_application("officer", sample.application(COMMUNE, None))
                .unwrap();
            ids.push(app.id);
        }
        server.storage.revoke_device(device).await.unwrap();
        assert!(matches!(
            tablet.sync(&|_| {}).await,
            Err(SyncError::Revoked)
        ));
        // A plain enrollment code cannot replace it (the id is taken) and spends nothing.
        let refused = enroll(&transport, &codes[1], device, "Tablet 2").await;
        assert!(
            matches!(&refused, Err(SyncError::Rejected { status: 409, .. })),
            "{url}: {refused:?}"
        );
        // The operator issues a re-enrollment code; the same store enrolls again.
        let admin = reqwest::Client::new();
        let issued: serde_json::Value = admin
            .post(format!(
                "{}/v1/admin/devices/{device}/reenroll-code",
                server.url()
            ))
            .bearer_auth(&server.admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let again = enroll(
            &transport,
            issued["code"].as_str().unwrap(),
            device,
            "Tablet 2",
        )
        .await
        .unwrap();
        assert_eq!(again.device_id, device);
        assert_eq!(again.scope, credentials.scope);
        assert_eq!(store.lock().unwrap().device_id(), device);
        let tablet = SyncClient::new(
            ReqwestTransport::new(&server.url()).unwrap(),
            store.clone(),
            again.token,
            SyncConfig::default(),
        )
        .unwrap();
        let report = tablet.sync(&|_| {}).await.unwrap();
        assert_eq!(report.pushed_docs, 4, "{url}: the outbox flowed");
        assert_eq!(report.pending_docs, 0);
        for id in &ids {
            assert!(
                server
                    .storage
                    .doc_registration(*id)
                    .await
                    .unwrap()
                    .is_some(),
                "{url}: {id} never reached the server"
            );
        }
        // One device, active again, under its own id.
        let devices = server.storage.list_devices(None).await.unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].device.id, device);
        assert!(!devices[0].device.revoked);
        // The old credential stays dead.
        let old = SyncClient::new(
            ReqwestTransport::new(&server.url()).unwrap(),
            store.clone(),
            credentials.token,
            SyncConfig::default(),
        )
        .unwrap();
        assert!(matches!(
            old.sync(&|_| {}).await,
            Err(SyncError::Unauthorized)
        ));
    }
}

/// Every row of every table of a PostgreSQL database, as text.
async fn postgres_dump(url: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(tables.len() >= 5, "{tables:?}");
    let mut dump = String::new();
    for table in tables {
        for row in client
            .query(
                &format!("SELECT row_to_json(t)::text FROM \"{table}\" t"),
                &[],
            )
            .await
            .unwrap()
        {
            dump.push_str(&row.get::<_, String>(0));
            dump.push('\n');
        }
    }
    driver.abort();
    dump
}

/// The bytes of a SQLite database with its WAL and shared-memory files.
fn sqlite_bytes(path: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        if let Ok(b) = std::fs::read(PathBuf::from(name)) {
            bytes.extend(b);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_and_tokens_are_stored_only_as_hashes() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "hashes").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 2).await.unwrap();
        let http = reqwest::Client::new();
        let response: serde_json::Value = enroll_raw(&http, &server.url(), &codes[0])
            .await
            .json()
            .await
            .unwrap();
        let token = response["token"].as_str().unwrap().to_owned();
        // The second code stays unused: stored, and only as its hash.
        let unused = codes[1].clone();
        let secrets = [
            ("device token", token.clone()),
            ("admin token", server.admin_token.clone()),
            ("used code", codes[0].clone()),
            ("used code, normalized", codes[0].replace('-', "")),
            ("unused code", unused.clone()),
            ("unused code, normalized", unused.replace('-', "")),
        ];
        // What is stored instead: the hashes (the scan must see them, or it sees nothing).
        let token_hash = sha256_hex(&token);
        let code_hash = sha256_hex(&unused.replace('-', ""));
        if let Some(path) = url.strip_prefix("sqlite:") {
            drop(server);
            let bytes = sqlite_bytes(Path::new(path));
            assert!(bytes.len() > 4096);
            for (what, secret) in &secrets {
                assert!(
                    !contains(&bytes, secret.as_bytes()),
                    "{url}: {what} in the file"
                );
                if let Some(raw) = from_hex(secret) {
                    assert!(
                        !contains(&bytes, &raw),
                        "{url}: {what} (raw bytes) in the file"
                    );
                }
            }
            for hash in [&token_hash, &code_hash] {
                assert!(
                    contains(&bytes, &from_hex(hash).unwrap()),
                    "{url}: hash not found"
                );
            }
        } else {
            let dump = postgres_dump(&url).await.to_lowercase();
            for (what, secret) in &secrets {
                assert!(
                    !dump.contains(&secret.to_lowercase()),
                    "{url}: {what} in a table"
                );
            }
            for hash in [&token_hash, &code_hash] {
                assert!(
                    dump.contains(hash.as_str()),
                    "{url}: hash not found in the dump"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_server_log() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let token_file = dir.path().join("admin-token");
    let mut child = Command::new(communesync_binary().unwrap())
        .args([
            "serve",
            "--database",
            &format!("sqlite:{}", dir.path().join("s.db").display()),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ])
        // The most verbose level, every crate: what an operator debugging would turn on.
        .env("RUST_LOG", "trace")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(format!("{base}/v1/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    let created = http
        .post(format!("{base}/v1/admin/communes"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"code": COMMUNE, "name": "Xã Mường Phăng"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let issued: serde_json::Value = http
        .post(format!("{base}/v1/admin/enrollment-codes"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"scope": {"commune": COMMUNE}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let code = issued["code"].as_str().unwrap().to_owned();
    let wrong_guess = "QRST-VWXY-Z234";
    assert_eq!(
        enroll_raw(&http, &base, wrong_guess)
            .await
            .status()
            .as_u16(),
        401
    );
    let enrolled: serde_json::Value = enroll_raw(&http, &base, &code).await.json().await.unwrap();
    let token = enrolled["token"].as_str().unwrap().to_owned();
    let body = SyncRequest {
        protocol: PROTOCOL_VERSION,
        device_time: 0,
        push: Vec::new(),
        pull: Some(PullRequest {
            cursor: 0,
            max_bytes: 1 << 20,
        }),
        catalogue_version: 0,
        pending_docs: 0,
        extensions: Default::default(),
    }
    .encode(&mut DocCodec::new().unwrap())
    .unwrap();
    let synced = http
        .post(format!("{base}/v1/sync"))
        .bearer_auth(&token)
        .header("content-type", CONTENT_TYPE)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(synced.status().as_u16(), 200);
    // A token one character off, and a request with the admin token on the sync route.
    let mut near = token.clone();
    near.replace_range(..1, if near.starts_with('a') { "b" } else { "a" });
    for bad in [&near, &admin] {
        let refused = http
            .post(format!("{base}/v1/sync"))
            .bearer_auth(bad)
            .header("content-type", CONTENT_TYPE)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), 401);
    }
    let device = enrolled["device_id"].as_str().unwrap();
    let revoked = http
        .post(format!("{base}/v1/admin/devices/{device}/revoke"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status().as_u16(), 204);
    child.kill().unwrap();
    child.wait().unwrap();

    let log = std::fs::read_to_string(&log_path).unwrap();
    // The log is there and verbose: the scan below looks at real output.
    assert!(log.contains("device enrolled"), "{log:.2000}");
    assert!(log.contains("failed enrollment attempt"));
    for (what, secret) in [
        ("admin token", admin.clone()),
        ("device token", token.clone()),
        ("near-miss token", near.clone()),
        ("enrollment code", code.clone()),
        ("enrollment code, normalized", code.replace('-', "")),
        ("wrong guess", wrong_guess.to_owned()),
    ] {
        assert!(!log.contains(&secret), "{what} in the server log");
    }
    eprintln!("server log: {} lines scanned", log.lines().count());
}

/// Lowercase hex of SHA-256 of a secret, with the server's own helper.
fn sha256_hex(secret: &str) -> String {
    to_hex(&http::hash_secret(secret))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
