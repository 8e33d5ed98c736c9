//! The authorization matrix over real HTTP on 127.0.0.1, on SQLite and PostgreSQL: every route of
//! the router (the list is checked against `server/src/http/mod.rs`) called by every kind of caller
//! (none, a wrong token, a revoked device, a device of another commune, a device of the
//! commune, a province account, an operator) gets exactly the status it should; refused calls
//! change nothing; a pushed record outside the caller's scope, or not made by the caller, is
//! refused alone (`not_yours`, `not_attributed`) while the caller's good records beside it are
//! stored; and no record of another commune reaches a caller through any path: the feed,
//! pushes, refusals, error bodies.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use communesync_core::codec::DocCodec;
use communesync_core::protocol::{
    CONTENT_TYPE, Limits, PROTOCOL_VERSION, PullRequest, PushDoc, SyncRequest, SyncResponse,
};
use communesync_core::record::{DeviceId, RecordDoc, RecordId, RecordKind, Source, decode_changes};
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, enroll};
use communesync_server::http;
use communesync_server::storage::Scope;
use communesync_tests::{TestServer, now_ms, test_databases};

const COMMUNE_A: &str = "DB-MUONGPHANG";
const COMMUNE_B: &str = "DB-NATAU";

/// Every route the router serves, as (method, path). Checked against the source of the router.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/health"),
    ("GET", "/v1/health/live"),
    ("GET", "/v1/health/ready"),
    ("GET", "/metrics"),
    ("POST", "/v1/enroll"),
    ("POST", "/v1/sync"),
    ("POST", "/v1/device/key"),
    ("POST", "/v1/device-keys"),
    ("POST", "/v1/receipts/verify"),
    ("GET", "/v1/admin/communes"),
    ("POST", "/v1/admin/communes"),
    ("POST", "/v1/admin/enrollment-codes"),
    ("GET", "/v1/admin/devices"),
    ("POST", "/v1/admin/devices/{id}/revoke"),
    ("POST", "/v1/admin/devices/{id}/reenroll-code"),
    ("GET", "/v1/admin/devices/{id}/refusals"),
    ("GET", "/v1/admin/tokens"),
    ("POST", "/v1/admin/tokens/{id}/revoke"),
    ("GET", "/v1/admin/records/{id}/history"),
    ("GET", "/v1/admin/records"),
    ("GET", "/v1/admin/number-blocks"),
    ("GET", "/v1/admin/records/search"),
    ("GET", "/v1/admin/records/{id}"),
    ("GET", "/v1/admin/dashboard"),
    ("GET", "/v1/admin/report"),
    ("GET", "/v1/admin/export/records"),
    ("POST", "/v1/admin/read-model/rebuild"),
    ("GET", "/v1/admin/stats"),
    ("PUT", "/v1/admin/catalogue"),
    ("GET", "/v1/attachments/{sha256}"),
    ("GET", "/v1/attachments/{sha256}/chunks/{index}"),
    ("PUT", "/v1/attachments/{sha256}/chunks/{index}"),
];

/// The (method, path) pairs that `router()` in `server/src/http/mod.rs` registers, read from its
/// source: a route added there without a row in the matrix fails the test.
fn routes_in_router_source() -> Vec<(String, String)> {
    let source = include_str!("../../server/src/http/mod.rs");
    let start = source.find("pub fn router(").unwrap();
    let body = &source[start..];
    let body = &body[..body.find("\n}\n").unwrap()];
    let mut found = Vec::new();
    for call in body.split(".route(").skip(1) {
        // The call's text up to its closing parenthesis.
        let mut depth = 1i32;
        let mut end = call.len();
        for (i, c) in call.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let call = &call[..end];
        let path = call.split('"').nth(1).unwrap().to_owned();
        for (method, token) in [
            ("GET", "get("),
            ("POST", "post("),
            ("PUT", "put("),
            ("DELETE", "delete("),
            ("PATCH", "patch("),
        ] {
            if call.contains(token) {
                found.push((method.to_owned(), path.clone()));
            }
        }
    }
    found
}

#[test]
fn the_matrix_lists_every_route_of_the_router() {
    let mut in_router = routes_in_router_source();
    let mut listed: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    in_router.sort();
    listed.sort();
    assert_eq!(in_router, listed, "update ROUTES and the matrix");
}

/// The kinds of caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Nobody,
    WrongToken,
    Revoked,
    OtherCommune,
    OwnCommune,
    Province,
    Operator,
}

const CALLERS: [Caller; 7] = [
    Caller::Nobody,
    Caller::WrongToken,
    Caller::Revoked,
    Caller::OtherCommune,
    Caller::OwnCommune,
    Caller::Province,
    Caller::Operator,
];

struct World {
    server: TestServer,
    http: reqwest::Client,
    tokens: Vec<(Caller, Option<String>)>,
    /// Device ids: own-commune tablet, other-commune tablet, a spare device for the revoke cell.
    own_device: DeviceId,
    spare_device: DeviceId,
    /// An operator token nobody uses, for the token revocation cell.
    spare_token: u64,
    a_ids: Vec<RecordId>,
    b_ids: Vec<RecordId>,
    a_names: Vec<String>,
    b_names: Vec<String>,
    /// The stores of the own-commune, other-commune and province devices: what they push by
    /// hand is made there, so that it is their own (attributed to them).
    own_store: Arc<Mutex<DeviceStore>>,
    other_store: Arc<Mutex<DeviceStore>>,
    province_store: Arc<Mutex<DeviceStore>>,
}

async fn tablet(
    dir: &std::path::Path,
    name: &str,
    server: &TestServer,
    code: &str,
) -> (SyncClient<ReqwestTransport>, String) {
    let mut store = DeviceStore::open(StoreConfig::new(dir.join(format!("{name}.db")))).unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    let transport = ReqwestTransport::new(&server.url()).unwrap();
    let credentials = enroll(&transport, code, store.device_id(), name)
        .await
        .unwrap();
    let config = SyncConfig {
        max_attempts: 1,
        ..SyncConfig::default()
    };
    let token = credentials.token.clone();
    let client = SyncClient::new(
        transport,
        Arc::new(Mutex::new(store)),
        credentials.token,
        config,
    )
    .unwrap();
    (client, token)
}

fn intake(
    client: &SyncClient<ReqwestTransport>,
    sample: &mut SampleData,
    commune: &str,
    n: usize,
) -> (Vec<RecordId>, Vec<String>) {
    let mut store = client.store().lock().unwrap();
    let mut ids = Vec::new();
    let mut names = Vec::new();
    for _ in 0..n {
        let app = store
            .create_application("officer", sample.application(commune, None))
            .unwrap();
        ids.push(app.id);
        names.push(app.applicant.name);
    }
    (ids, names)
}

async fn world(url: &str, dir: &std::path::Path) -> World {
    let server = TestServer::start(url).await.unwrap();
    let a_codes = server.commune_with_codes(COMMUNE_A, 4).await.unwrap();
    let b_codes = server.commune_with_codes(COMMUNE_B, 1).await.unwrap();
    let (province_code, _) = http::issue_enrollment_code(
        server.storage.as_ref(),
        &Scope::Province,
        Duration::from_secs(3600),
        now_ms(),
    )
    .await
    .unwrap();
    let (own, own_token) = tablet(dir, "own", &server, &a_codes[0]).await;
    let (other, other_token) = tablet(dir, "other", &server, &b_codes[0]).await;
    let (revoked, revoked_token) = tablet(dir, "revoked", &server, &a_codes[1]).await;
    let (spare, _) = tablet(dir, "spare", &server, &a_codes[2]).await;
    let (province, province_token) = tablet(dir, "province", &server, &province_code).await;
    let province_store = province.store().clone();
    let mut sample = SampleData::new(11);
    let (a_ids, a_names) = intake(&own, &mut sample, COMMUNE_A, 3);
    let (b_ids, b_names) = intake(&other, &mut sample, COMMUNE_B, 2);
    own.sync(&|_| {}).await.unwrap();
    other.sync(&|_| {}).await.unwrap();
    // The revoked tablet had pushed a record of its own before it was revoked.
    let (mut a_more, mut a_more_names) = intake(&revoked, &mut sample, COMMUNE_A, 1);
    revoked.sync(&|_| {}).await.unwrap();
    let revoked_id = revoked.store().lock().unwrap().device_id();
    server.storage.revoke_device(revoked_id).await.unwrap();
    let mut a_ids = a_ids;
    let mut a_names = a_names;
    a_ids.append(&mut a_more);
    a_names.append(&mut a_more_names);
    let own_device = own.store().lock().unwrap().device_id();
    let spare_device = spare.store().lock().unwrap().device_id();
    drop(province);
    let spare_token = server
        .storage
        .create_admin_token(http::hash_secret(&http::new_token()), "spare", now_ms())
        .await
        .unwrap();
    let tokens = vec![
        (Caller::Nobody, None),
        (Caller::WrongToken, Some("0123456789abcdef".repeat(4))),
        (Caller::Revoked, Some(revoked_token)),
        (Caller::OtherCommune, Some(other_token)),
        (Caller::OwnCommune, Some(own_token)),
        (Caller::Province, Some(province_token)),
        (Caller::Operator, Some(server.admin_token.clone())),
    ];
    World {
        server,
        // One connection per request: a refused request may leave its body unread.
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
        tokens,
        own_device,
        spare_device,
        spare_token,
        a_ids,
        b_ids,
        a_names,
        b_names,
        own_store: own.store().clone(),
        other_store: other.store().clone(),
        province_store,
    }
}

fn pull_body(push: Vec<PushDoc>) -> Vec<u8> {
    SyncRequest {
        protocol: PROTOCOL_VERSION,
        device_time: 0,
        push,
        pull: Some(PullRequest {
            cursor: 0,
            max_bytes: 4 * 1024 * 1024,
        }),
        catalogue_version: 0,
        pending_docs: 0,
        extensions: Default::default(),
    }
    .encode(&mut DocCodec::new().unwrap())
    .unwrap()
}

struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl World {
    fn token(&self, caller: Caller) -> Option<&str> {
        self.tokens
            .iter()
            .find(|(c, _)| *c == caller)
            .and_then(|(_, t)| t.as_deref())
    }

    /// Calls `method path` as `caller` with the request that route expects.
    async fn call(&self, caller: Caller, method: &str, path: &str) -> Answer {
        let path = if path.starts_with("/v1/admin/tokens/") {
            path.replace("{id}", &self.spare_token.to_string())
        } else {
            path.replace("{id}", &self.spare_device.to_string())
        };
        // A content no record names (the body of the upload below).
        let path = path
            .replace("{sha256}", &communesync_core::attachment::sha256_hex(b"x"))
            .replace("{index}", "0");
        // The report needs its range.
        let query = if path == "/v1/admin/report" {
            "?from=2026-01-01&to=2026-12-31"
        } else {
            ""
        };
        let url = format!("{}{path}{query}", self.server.url());
        let mut request = match method {
            "GET" => self.http.get(&url),
            "POST" => self.http.post(&url),
            "PUT" => self.http.put(&url),
            other => panic!("method {other}"),
        };
        request = match path.as_str() {
            "/v1/enroll" => request.json(&serde_json::json!({
                "code": "WRNG-CODE-XXXX", "device_id": DeviceId::new(), "label": "x"
            })),
            "/v1/sync" => request
                .header("content-type", CONTENT_TYPE)
                .body(pull_body(Vec::new())),
            // One usable key for every device of the matrix (registered on first use).
            "/v1/device/key" => request.json(&serde_json::json!({
                "public_key": communesync_core::keys::DeviceSigningKey::from_secret(&[3; 32])
                    .unwrap()
                    .public_key()
                    .to_hex()
            })),
            "/v1/device-keys" => request.json(&serde_json::json!({"since": 0})),
            "/v1/receipts/verify" => request.json(&serde_json::json!({"payload": "NOT A RECEIPT"})),
            "/v1/admin/communes" if method == "POST" => {
                request.json(&serde_json::json!({"code": "DB-NEW", "name": "Xã Mới"}))
            }
            "/v1/admin/enrollment-codes" => {
                request.json(&serde_json::json!({"scope": {"commune": COMMUNE_A}, "ttl_hours": 1}))
            }
            upload if method == "PUT" && upload.starts_with("/v1/attachments/") => request
                .header("x-content-size", "1")
                .header("x-chunk-size", "16384")
                .header("x-chunk-sha256", communesync_core::attachment::sha256_hex(b"x"))
                .body("x"),
            "/v1/admin/catalogue" => request.body(
                r#"{"procedures":[{"code":"1.001193","name":"Đăng ký khai sinh","processing_days":1}]}"#,
            ),
            _ => request,
        };
        if let Some(token) = self.token(caller) {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap().to_vec();
        Answer { status, body }
    }

    /// What the server holds that a refused call must not change.
    async fn state(&self) -> String {
        let storage = &self.server.storage;
        let devices: Vec<_> = storage
            .list_devices(None)
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.device, d.changes_pushed))
            .collect();
        let tokens: Vec<_> = storage
            .list_admin_tokens()
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.id, t.revoked_at))
            .collect();
        format!(
            "{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
            storage.list_communes().await.unwrap(),
            devices,
            storage.catalogue().await.unwrap(),
            storage.stats().await.unwrap(),
            tokens
        )
    }
}

/// The status a caller must get on a route.
fn expected(caller: Caller, method: &str, path: &str) -> u16 {
    use Caller::*;
    match (method, path) {
        // Health and metrics are open (no secret in them).
        ("GET", "/v1/health" | "/v1/health/live" | "/v1/health/ready" | "/metrics") => 200,
        // Enrollment needs no credential, and a credential does not help: a wrong code is 401
        // whoever sends it.
        ("POST", "/v1/enroll") => 401,
        ("POST", "/v1/sync") => match caller {
            Nobody | WrongToken | Operator => 401,
            Revoked => 403,
            OtherCommune | OwnCommune | Province => 200,
        },
        // A content no record of the caller's scope names: 404, as for one that does not exist;
        // a province account reads but does not upload.
        (_, attachment) if attachment.starts_with("/v1/attachments/") => match caller {
            Nobody | WrongToken | Operator => 401,
            Revoked => 403,
            Province if method == "PUT" => 403,
            OtherCommune | OwnCommune | Province => 404,
        },
        // A device's own key, on first use.
        ("POST", "/v1/device/key") => match caller {
            Nobody | WrongToken | Operator => 401,
            Revoked => 403,
            OtherCommune | OwnCommune | Province => 204,
        },
        // The key list and the receipt verifier: any device or operator.
        ("POST", "/v1/device-keys" | "/v1/receipts/verify") => match caller {
            Nobody | WrongToken => 401,
            Revoked => 403,
            OtherCommune | OwnCommune | Province | Operator => 200,
        },
        (_, admin) if admin.starts_with("/v1/admin/") => match caller {
            Operator => match (method, admin) {
                ("POST", "/v1/admin/communes") => 201,
                ("POST", "/v1/admin/devices/{id}/revoke") => 204,
                ("POST", "/v1/admin/tokens/{id}/revoke") => 204,
                // The matrix names no record: an unknown one.
                ("GET", "/v1/admin/records/{id}/history" | "/v1/admin/records/{id}") => 404,
                // Without `?number=`: a malformed request.
                ("GET", "/v1/admin/records") => 400,
                _ => 200,
            },
            _ => 401,
        },
        other => panic!("no expectation for {other:?}"),
    }
}

/// The record ids in a sync response's feed.
fn feed_ids(body: &[u8]) -> Vec<RecordId> {
    let response =
        SyncResponse::decode(&mut DocCodec::new().unwrap(), body, &Limits::default()).unwrap();
    // A document sent whole goes without id: read it from the record its changes make.
    response
        .feed
        .iter()
        .map(|d| {
            d.id.unwrap_or_else(|| {
                let changes = decode_changes(RecordId::new(), &d.changes).unwrap();
                let (_, record) = RecordDoc::from_decoded(
                    None,
                    d.kind,
                    changes,
                    DeviceId::new(),
                    Source::Untrusted,
                )
                .unwrap();
                record.id()
            })
        })
        .collect()
}

fn mentions_any(body: &[u8], ids: &[RecordId], names: &[String]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    ids.iter()
        .map(ToString::to_string)
        .chain(names.iter().cloned())
        .find(|needle| text.contains(needle.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_gets_exactly_its_access_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "authz").await.unwrap() {
        let sub = tempfile::tempdir().unwrap();
        let w = world(&url, sub.path()).await;
        let before = w.state().await;
        let mut cells = 0;
        // Everyone but the operator first: none of their calls may change anything.
        for caller in CALLERS.iter().copied().filter(|c| *c != Caller::Operator) {
            for (method, path) in ROUTES {
                let answer = w.call(caller, method, path).await;
                let want = expected(caller, method, path);
                assert_eq!(
                    answer.status,
                    want,
                    "{url}: {caller:?} {method} {path}: {}",
                    String::from_utf8_lossy(&answer.body)
                );
                cells += 1;
                if answer.status >= 400 {
                    // A refusal is the protocol's JSON error, and says nothing about records.
                    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
                    assert!(json["error"].is_string(), "{caller:?} {path}: {json}");
                    let leak = mentions_any(
                        &answer.body,
                        &[w.a_ids.clone(), w.b_ids.clone()].concat(),
                        &[w.a_names.clone(), w.b_names.clone()].concat(),
                    );
                    assert_eq!(leak, None, "{url}: {caller:?} {method} {path}");
                }
                if *path == "/v1/sync" && answer.status == 200 {
                    // The feed carries exactly the caller's scope. These tablets synced before
                    // and now ask from cursor 0, before the cursor they were given: the server
                    // takes them for a store restored from an older backup and sends their own
                    // changes back too (a tablet asking from its cursor gets none of its own:
                    // `recovery.rs`).
                    let mut got = feed_ids(&answer.body);
                    got.sort();
                    let mut want: Vec<RecordId> = match caller {
                        Caller::OwnCommune => w.a_ids.clone(),
                        Caller::OtherCommune => w.b_ids.clone(),
                        Caller::Province => [w.a_ids.clone(), w.b_ids.clone()].concat(),
                        _ => unreachable!(),
                    };
                    want.sort();
                    assert_eq!(got, want, "{url}: feed of {caller:?}");
                    let foreign: &[RecordId] = match caller {
                        Caller::OwnCommune => &w.b_ids,
                        Caller::OtherCommune => &w.a_ids,
                        _ => &[],
                    };
                    assert!(
                        got.iter().all(|id| !foreign.contains(id)),
                        "{url}: {caller:?} read another commune's record"
                    );
                }
            }
        }
        assert_eq!(
            w.state().await,
            before,
            "{url}: a refused or read-only call changed state"
        );
        // The spare device is still active: only the operator may revoke.
        assert!(
            !w.server
                .storage
                .list_devices(None)
                .await
                .unwrap()
                .iter()
                .find(|d| d.device.id == w.spare_device)
                .unwrap()
                .device
                .revoked
        );
        // The operator, on every route.
        for (method, path) in ROUTES {
            let answer = w.call(Caller::Operator, method, path).await;
            assert_eq!(
                answer.status,
                expected(Caller::Operator, method, path),
                "{url}: operator {method} {path}: {}",
                String::from_utf8_lossy(&answer.body)
            );
            cells += 1;
        }
        let devices = w.server.storage.list_devices(None).await.unwrap();
        let spare = devices
            .iter()
            .find(|d| d.device.id == w.spare_device)
            .unwrap();
        assert!(
            spare.device.revoked,
            "{url}: the operator's revoke did nothing"
        );
        let tokens = w.server.storage.list_admin_tokens().await.unwrap();
        assert!(
            tokens
                .iter()
                .any(|t| t.id == w.spare_token && t.revoked_at.is_some()),
            "{url}: the operator's token revocation did nothing"
        );
        assert!(
            devices
                .iter()
                .any(|d| d.device.id == w.own_device && !d.device.revoked)
        );
        assert_eq!(cells, ROUTES.len() * CALLERS.len());
        eprintln!("{url}: {cells} matrix cells");
    }
}

/// The whole history of record `id` of `store`, as a push.
fn whole(store: &mut DeviceStore, id: RecordId) -> PushDoc {
    PushDoc {
        id: Some(id),
        kind: RecordKind::Application,
        changes: store.changes_since(id, &[]).unwrap(),
    }
}

/// A new application of `commune` made in `store`, as a push.
fn created(store: &Mutex<DeviceStore>, sample: &mut SampleData, commune: &str) -> PushDoc {
    let mut store = store.lock().unwrap();
    let app = store
        .create_application("x", sample.application(commune, None))
        .unwrap();
    whole(&mut store, app.id)
}

/// An edit of record `id` (whose changes are `history`) made in `store`, with the whole history.
fn edited(store: &Mutex<DeviceStore>, id: RecordId, history: &[Vec<u8>]) -> PushDoc {
    let mut store = store.lock().unwrap();
    if !store.contains(id).unwrap() {
        store
            .apply_remote_changes(id, RecordKind::Application, history)
            .unwrap();
    }
    store
        .update_application(id, "mallory", |a| a.notes.push_str(" (sửa)"))
        .unwrap();
    whole(&mut store, id)
}

/// The (position, code) of each refusal of a response.
fn refusals(response: &SyncResponse) -> Vec<(u32, &str)> {
    response
        .refused
        .iter()
        .map(|r| (r.position, r.code.as_str()))
        .collect()
}

/// What the server holds of record `id`: its registration and number of changes.
async fn held(w: &World, id: RecordId) -> Option<(String, RecordKind, usize)> {
    let (commune, kind) = w.server.storage.doc_registration(id).await.unwrap()?;
    let changes = w.server.storage.doc_changes(id).await.unwrap().len();
    Some((commune, kind, changes))
}

/// How a scope case must be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The whole request, with this status: nothing of it is stored.
    Request(u16),
    /// The bad document alone, with this code: the good one beside it is stored.
    Document(&'static str),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_confined_to_the_callers_scope_and_errors_leak_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "authz_push").await.unwrap() {
        let sub = tempfile::tempdir().unwrap();
        let w = world(&url, sub.path()).await;
        let mut sample = SampleData::new(12);
        let (own, other, province) = (&w.own_store, &w.other_store, &w.province_store);
        // A store of a device that is none of the callers: what it makes is not theirs to push.
        let stranger = Mutex::new(
            DeviceStore::open(StoreConfig::new(sub.path().join("stranger.db"))).unwrap(),
        );
        stranger
            .lock()
            .unwrap()
            .import_catalogue(&SampleData::catalogue())
            .unwrap();
        let a_history = w.server.storage.doc_changes(w.a_ids[0]).await.unwrap();
        // Each caller's crafted pushes are made by its own device (attributed to it), so that
        // only the scope can refuse them.
        let other_creates_in_a = created(other, &mut sample, COMMUNE_A);
        let other_edits_a = edited(other, w.a_ids[0], &a_history);
        let own_creates_in_b = created(own, &mut sample, COMMUNE_B);
        let own_creates_nowhere = created(own, &mut sample, "DB-NOWHERE");
        // The record as the other kind: its stored history, renamed.
        let wrong_kind = PushDoc {
            kind: RecordKind::CitizenRequest,
            ..whole(&mut own.lock().unwrap(), w.a_ids[0])
        };
        let province_wrong_kind = PushDoc {
            kind: RecordKind::CitizenRequest,
            ..edited(province, w.a_ids[0], &a_history)
        };
        let strangers_record = created(&stranger, &mut sample, COMMUNE_A);
        let strangers_edit = edited(&stranger, w.a_ids[0], &a_history);
        let own_edit = {
            let mut store = own.lock().unwrap();
            store
                .update_application(w.a_ids[0], "lan", |a| a.notes.push_str(" (sửa)"))
                .unwrap();
            whole(&mut store, w.a_ids[0])
        };

        use Caller::*;
        use Verdict::*;
        let cases: Vec<(&str, Caller, PushDoc, Verdict)> = vec![
            (
                "other commune creates in A",
                OtherCommune,
                other_creates_in_a.clone(),
                Document("not_yours"),
            ),
            (
                "other commune edits an A record",
                OtherCommune,
                other_edits_a,
                Document("not_yours"),
            ),
            (
                "other commune pushes another device's edit of an A record",
                OtherCommune,
                strangers_edit.clone(),
                Document("not_yours"),
            ),
            (
                "own commune creates in B",
                OwnCommune,
                own_creates_in_b.clone(),
                Document("not_yours"),
            ),
            (
                "own commune creates in an unknown commune",
                OwnCommune,
                own_creates_nowhere.clone(),
                Document("not_yours"),
            ),
            (
                "own commune changes a record's kind",
                OwnCommune,
                wrong_kind,
                Document("not_yours"),
            ),
            (
                "province changes a record's kind",
                Province,
                province_wrong_kind,
                Document("not_yours"),
            ),
            (
                "own commune pushes a record another device made",
                OwnCommune,
                strangers_record.clone(),
                Document("not_attributed"),
            ),
            (
                "own commune pushes another device's edit of its record",
                OwnCommune,
                strangers_edit.clone(),
                Document("not_attributed"),
            ),
            (
                "province pushes a record another device made",
                Province,
                strangers_record.clone(),
                Document("not_attributed"),
            ),
            (
                "revoked device edits",
                Revoked,
                own_edit.clone(),
                Request(403),
            ),
            ("no credential", Nobody, own_edit.clone(), Request(401)),
            (
                "operator token is not a device",
                Operator,
                own_edit.clone(),
                Request(401),
            ),
        ];
        let a_held: Vec<_> = {
            let mut held_now = Vec::new();
            for id in &w.a_ids {
                held_now.push(held(&w, *id).await);
            }
            held_now
        };
        let mut not_yours_for_stored = Vec::new();
        for (name, caller, bad, verdict) in &cases {
            // Beside the bad document, a good one of the caller's (none for callers that are
            // not devices: a record of the commune's tablet, which they may not push either).
            let good = match caller {
                OtherCommune => created(other, &mut sample, COMMUNE_B),
                Province => created(province, &mut sample, COMMUNE_A),
                _ => created(own, &mut sample, COMMUNE_A),
            };
            let bad_id = bad.id.unwrap();
            let bad_before = held(&w, bad_id).await;
            let state_before = w.state().await;
            let mut request = w
                .http
                .post(format!("{}/v1/sync", w.server.url()))
                .header("content-type", CONTENT_TYPE)
                .body(pull_body(vec![bad.clone(), good.clone()]));
            if let Some(token) = w.token(*caller) {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.bytes().await.unwrap();
            // What the caller may learn names at most the records it sent, and no data of
            // records it may not read.
            let others: Vec<RecordId> = w
                .a_ids
                .iter()
                .chain(&w.b_ids)
                .copied()
                .filter(|id| *id != bad_id)
                .collect();
            let names: Vec<String> = w.a_names.iter().chain(&w.b_names).cloned().collect();
            match *verdict {
                Request(want) => {
                    assert_eq!(
                        status,
                        want,
                        "{url}: {name}: {}",
                        String::from_utf8_lossy(&body)
                    );
                    assert_eq!(
                        mentions_any(&body, &others, &names),
                        None,
                        "{url}: {name}: {}",
                        String::from_utf8_lossy(&body)
                    );
                    assert_eq!(w.state().await, state_before, "{url}: {name}");
                    assert_eq!(held(&w, good.id.unwrap()).await, None, "{url}: {name}");
                }
                Document(code) => {
                    assert_eq!(
                        status,
                        200,
                        "{url}: {name}: {}",
                        String::from_utf8_lossy(&body)
                    );
                    let answer = SyncResponse::decode(
                        &mut DocCodec::new().unwrap(),
                        &body,
                        &Limits::default(),
                    )
                    .unwrap();
                    assert_eq!(
                        refusals(&answer),
                        vec![(0, code)],
                        "{url}: {name}: {:?}",
                        answer.refused
                    );
                    assert!(answer.missing_deps.is_empty(), "{url}: {name}");
                    let message = &answer.refused[0].message;
                    assert_eq!(
                        mentions_any(message.as_bytes(), &others, &names),
                        None,
                        "{url}: {name}: {message}"
                    );
                    if code == "not_yours" && bad_before.is_some() {
                        not_yours_for_stored.push((name, message.clone()));
                    }
                    // Its feed is still its own scope's only.
                    let foreign: &[RecordId] = match caller {
                        OwnCommune => &w.b_ids,
                        OtherCommune => &w.a_ids,
                        _ => &[],
                    };
                    let feed = feed_ids(&body);
                    assert!(
                        feed.iter().all(|id| !foreign.contains(id)),
                        "{url}: {name}: read another commune's record"
                    );
                    // One bad record never blocks another.
                    assert_eq!(
                        held(&w, good.id.unwrap()).await.map(|h| h.2),
                        Some(good.changes.len()),
                        "{url}: {name}: the good record beside it"
                    );
                }
            }
            assert_eq!(held(&w, bad_id).await, bad_before, "{url}: {name}: stored");
        }
        // A record outside the scope gets one answer, whatever the reason (another commune's,
        // another kind): nothing tells which.
        assert!(not_yours_for_stored.len() >= 4, "{url}");
        for (name, message) in &not_yours_for_stored {
            assert_eq!(message, &not_yours_for_stored[0].1, "{url}: {name}");
        }
        // Nothing of what was refused is held: the commune's records are as they were, and the
        // refused new ones absent.
        for (id, before) in w.a_ids.iter().zip(&a_held) {
            assert_eq!(&held(&w, *id).await, before, "{url}");
        }
        for doc in [
            &other_creates_in_a,
            &own_creates_in_b,
            &own_creates_nowhere,
            &strangers_record,
        ] {
            assert_eq!(held(&w, doc.id.unwrap()).await, None, "{url}");
        }

        // Where commune B's tablet is in its feed now (it asks from there below, as a tablet
        // does: from the cursor it was last given).
        let response = w
            .http
            .post(format!("{}/v1/sync", w.server.url()))
            .header("content-type", CONTENT_TYPE)
            .bearer_auth(w.token(OtherCommune).unwrap())
            .body(pull_body(Vec::new()))
            .send()
            .await
            .unwrap();
        let b_cursor = SyncResponse::decode(
            &mut DocCodec::new().unwrap(),
            &response.bytes().await.unwrap(),
            &Limits::default(),
        )
        .unwrap()
        .next_cursor;

        // Allowed writes: the commune's own tablet edits its record and creates one; the
        // province account may write in any commune.
        let new_a = created(own, &mut sample, COMMUNE_A);
        let new_b = created(province, &mut sample, COMMUNE_B);
        for (caller, doc) in [
            (OwnCommune, own_edit.clone()),
            (OwnCommune, new_a.clone()),
            (Province, new_b.clone()),
        ] {
            let response = w
                .http
                .post(format!("{}/v1/sync", w.server.url()))
                .header("content-type", CONTENT_TYPE)
                .bearer_auth(w.token(caller).unwrap())
                .body(pull_body(vec![doc.clone()]))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 200, "{url}: {caller:?}");
            let decoded = SyncResponse::decode(
                &mut DocCodec::new().unwrap(),
                &response.bytes().await.unwrap(),
                &Limits::default(),
            )
            .unwrap();
            // Acknowledged: neither refused nor listed as lacking its base.
            assert!(decoded.refused.is_empty(), "{url}: {caller:?}");
            assert!(decoded.missing_deps.is_empty(), "{url}: {caller:?}");
            assert_eq!(
                held(&w, doc.id.unwrap()).await.map(|h| h.2),
                Some(doc.changes.len()),
                "{url}: {caller:?}"
            );
        }
        // Commune B's tablet now pulls B's new record and nothing of A.
        let mut pull = SyncRequest::decode(
            &mut DocCodec::new().unwrap(),
            &pull_body(Vec::new()),
            &Limits::default(),
        )
        .unwrap();
        pull.pull = Some(PullRequest {
            cursor: b_cursor,
            max_bytes: 4 * 1024 * 1024,
        });
        let response = w
            .http
            .post(format!("{}/v1/sync", w.server.url()))
            .header("content-type", CONTENT_TYPE)
            .bearer_auth(w.token(OtherCommune).unwrap())
            .body(pull.encode(&mut DocCodec::new().unwrap()).unwrap())
            .send()
            .await
            .unwrap();
        let ids = feed_ids(&response.bytes().await.unwrap());
        assert_eq!(ids, vec![new_b.id.unwrap()], "{url}");
    }
}
