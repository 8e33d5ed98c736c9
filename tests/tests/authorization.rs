//! The authorization matrix over real HTTP on 127.0.0.1, on SQLite and PostgreSQL: every route of
//! the router (the list is checked against `server/src/http/mod.rs`) called by every kind of caller
//! (none, a wrong token, a revoked device, a device of another commune, a device of the
//! commune, a province account, an operator) gets exactly the status it should; refused calls
//! change nothing; and no record of another commune reaches a caller through any path: the feed,
//! pushes, error bodies.

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
    ("POST", "/v1/enroll"),
    ("POST", "/v1/sync"),
    ("GET", "/v1/admin/communes"),
    ("POST", "/v1/admin/communes"),
    ("POST", "/v1/admin/enrollment-codes"),
    ("GET", "/v1/admin/devices"),
    ("POST", "/v1/admin/devices/{id}/revoke"),
    ("GET", "/v1/admin/stats"),
    ("PUT", "/v1/admin/catalogue"),
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
    a_ids: Vec<RecordId>,
    b_ids: Vec<RecordId>,
    a_names: Vec<String>,
    b_names: Vec<String>,
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
        a_ids,
        b_ids,
        a_names,
        b_names,
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
        let path = path.replace("{id}", &self.spare_device.to_string());
        let url = format!("{}{path}", self.server.url());
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
            "/v1/admin/communes" if method == "POST" => {
                request.json(&serde_json::json!({"code": "DB-NEW", "name": "Xã Mới"}))
            }
            "/v1/admin/enrollment-codes" => {
                request.json(&serde_json::json!({"scope": {"commune": COMMUNE_A}, "ttl_hours": 1}))
            }
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
        format!(
            "{:?}\n{:?}\n{:?}\n{:?}",
            storage.list_communes().await.unwrap(),
            devices,
            storage.catalogue().await.unwrap(),
            storage.stats().await.unwrap()
        )
    }
}

/// The status a caller must get on a route.
fn expected(caller: Caller, method: &str, path: &str) -> u16 {
    use Caller::*;
    match (method, path) {
        ("GET", "/v1/health") => 200,
        // Enrollment needs no credential, and a credential does not help: a wrong code is 401
        // whoever sends it.
        ("POST", "/v1/enroll") => 401,
        ("POST", "/v1/sync") => match caller {
            Nobody | WrongToken | Operator => 401,
            Revoked => 403,
            OtherCommune | OwnCommune | Province => 200,
        },
        (_, admin) if admin.starts_with("/v1/admin/") => match caller {
            Operator => match (method, admin) {
                ("POST", "/v1/admin/communes") => 201,
                ("POST", "/v1/admin/devices/{id}/revoke") => 204,
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
                    // The feed carries exactly the caller's scope, minus its own changes.
                    let mut got = feed_ids(&answer.body);
                    got.sort();
                    let mut want: Vec<RecordId> = match caller {
                        // Its own records are its own changes: the feed leaves them out.
                        Caller::OwnCommune => w.a_ids[3..].to_vec(),
                        Caller::OtherCommune => Vec::new(),
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
        assert!(
            devices
                .iter()
                .any(|d| d.device.id == w.own_device && !d.device.revoked)
        );
        assert_eq!(cells, ROUTES.len() * CALLERS.len());
        eprintln!("{url}: {cells} matrix cells");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_confined_to_the_callers_scope_and_errors_leak_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "authz_push").await.unwrap() {
        let sub = tempfile::tempdir().unwrap();
        let w = world(&url, sub.path()).await;
        let mut sample = SampleData::new(12);
        // A scratch store to make valid changes with.
        let mut scratch =
            DeviceStore::open(StoreConfig::new(sub.path().join("scratch.db"))).unwrap();
        scratch.import_catalogue(&SampleData::catalogue()).unwrap();
        let new_a = scratch
            .create_application("x", sample.application(COMMUNE_A, None))
            .unwrap();
        let new_b = scratch
            .create_application("x", sample.application(COMMUNE_B, None))
            .unwrap();
        let new_unknown = scratch
            .create_application("x", sample.application("DB-NOWHERE", None))
            .unwrap();
        let push = |scratch: &mut DeviceStore, id: RecordId| PushDoc {
            id: Some(id),
            kind: RecordKind::Application,
            changes: scratch.changes_since(id, &[]).unwrap(),
        };
        // An edit on top of an existing record of commune A, made from its full history.
        let a_changes = {
            let full = w.server.storage.doc_changes(w.a_ids[0]).await.unwrap();
            scratch
                .apply_remote_changes(w.a_ids[0], RecordKind::Application, &full)
                .unwrap();
            scratch
                .update_application(w.a_ids[0], "mallory", |a| a.notes.push_str(" (sửa)"))
                .unwrap();
            PushDoc {
                id: Some(w.a_ids[0]),
                kind: RecordKind::Application,
                changes: scratch.changes_since(w.a_ids[0], &[]).unwrap(),
            }
        };
        // The same record claimed as the other kind.
        let wrong_kind = PushDoc {
            kind: RecordKind::CitizenRequest,
            ..a_changes.clone()
        };

        use Caller::*;
        let cases: Vec<(&str, Caller, PushDoc, u16)> = vec![
            (
                "other commune creates in A",
                OtherCommune,
                push(&mut scratch, new_a.id),
                403,
            ),
            (
                "other commune edits an A record",
                OtherCommune,
                a_changes.clone(),
                403,
            ),
            (
                "own commune creates in B",
                OwnCommune,
                push(&mut scratch, new_b.id),
                403,
            ),
            (
                "own commune creates in an unknown commune",
                OwnCommune,
                push(&mut scratch, new_unknown.id),
                403,
            ),
            (
                "own commune changes a record's kind",
                OwnCommune,
                wrong_kind.clone(),
                403,
            ),
            ("revoked device edits", Revoked, a_changes.clone(), 403),
            ("no credential", Nobody, a_changes.clone(), 401),
            (
                "operator token is not a device",
                Operator,
                a_changes.clone(),
                401,
            ),
            (
                "province changes a record's kind",
                Province,
                wrong_kind,
                403,
            ),
        ];
        let before = w.state().await;
        for (name, caller, doc, want) in &cases {
            let mut request = w
                .http
                .post(format!("{}/v1/sync", w.server.url()))
                .header("content-type", CONTENT_TYPE)
                .body(pull_body(vec![doc.clone()]));
            if let Some(token) = w.token(*caller) {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.bytes().await.unwrap();
            assert_eq!(
                status,
                *want,
                "{url}: {name}: {}",
                String::from_utf8_lossy(&body)
            );
            // The refusal names at most the record the caller itself sent, and no data of
            // records it may not read.
            let others: Vec<RecordId> = w
                .a_ids
                .iter()
                .chain(&w.b_ids)
                .copied()
                .filter(|id| Some(*id) != doc.id)
                .collect();
            let names: Vec<String> = w.a_names.iter().chain(&w.b_names).cloned().collect();
            assert_eq!(
                mentions_any(&body, &others, &names),
                None,
                "{url}: {name}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        assert_eq!(
            w.state().await,
            before,
            "{url}: a refused push changed state"
        );
        assert!(
            w.server
                .storage
                .doc_registration(new_a.id)
                .await
                .unwrap()
                .is_none()
        );

        // Allowed writes: the commune's own tablet edits its record and creates one; the
        // province account may write in any commune.
        for (caller, doc) in [
            (OwnCommune, a_changes.clone()),
            (OwnCommune, push(&mut scratch, new_a.id)),
            (Province, push(&mut scratch, new_b.id)),
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
            // Acknowledged: not listed as lacking its base.
            assert!(decoded.missing_deps.is_empty(), "{url}: {caller:?}");
        }
        // Commune B's tablet now pulls B's new record and nothing of A.
        let response = w
            .http
            .post(format!("{}/v1/sync", w.server.url()))
            .header("content-type", CONTENT_TYPE)
            .bearer_auth(w.token(OtherCommune).unwrap())
            .body(pull_body(Vec::new()))
            .send()
            .await
            .unwrap();
        let ids = feed_ids(&response.bytes().await.unwrap());
        assert_eq!(ids, vec![new_b.id], "{url}");
    }
}
