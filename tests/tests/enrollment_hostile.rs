//! Enrollment and operator routes attacked over raw HTTP on 127.0.0.1, on SQLite and PostgreSQL:
//! chosen device ids, taking over a known id, re-enrollment codes used with another id, guesses
//! fired concurrently (counted by what the server evaluated, not by time), `X-Forwarded-For`
//! from trusted and untrusted peers, a right code from a throttled address, revocation with a
//! wipe order, operator tokens and refused documents.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use communesync_core::codec::DocCodec;
use communesync_core::protocol::{CONTENT_TYPE, PROTOCOL_VERSION, PullRequest, SyncRequest};
use communesync_core::record::{DeviceId, RecordId};
use communesync_server::http::{self, ServerConfig};
use communesync_server::storage::RefusalRow;
use communesync_tests::{TestServer, now_ms, test_databases};
use serde_json::{Value, json};

const COMMUNE: &str = "DB-MUONGPHANG";

/// A throttle delay no test waits out: an attempt that is throttled never answers in time.
const NEVER: Duration = Duration::from_secs(3600);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn enroll_as(
    http: &reqwest::Client,
    base: &str,
    code: &str,
    device_id: &str,
    forwarded_for: Option<&str>,
) -> (u16, Value) {
    let mut request = http
        .post(format!("{base}/v1/enroll"))
        .json(&json!({"code": code, "device_id": device_id, "label": "t"}));
    if let Some(xff) = forwarded_for {
        request = request.header("x-forwarded-for", xff);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn enroll_new(http: &reqwest::Client, base: &str, code: &str) -> (u16, Value) {
    enroll_as(http, base, code, &DeviceId::new().to_string(), None).await
}

fn pull_body() -> Vec<u8> {
    SyncRequest {
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
    .unwrap()
}

/// Status and error code of a sync with `token`.
async fn sync_as(http: &reqwest::Client, base: &str, token: &str) -> (u16, String) {
    let response = http
        .post(format!("{base}/v1/sync"))
        .bearer_auth(token)
        .header("content-type", CONTENT_TYPE)
        .body(pull_body())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let code = if status == 200 {
        String::new()
    } else {
        let body: Value = response.json().await.unwrap();
        body["error"].as_str().unwrap_or_default().to_owned()
    };
    (status, code)
}

async fn admin(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client()
        .request(method, format!("{}{path}", server.url()))
        .bearer_auth(&server.admin_token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chosen_device_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "chosen_ids").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 2).await.unwrap();
        let http = client();
        let base = server.url();
        for chosen in [
            // All zeros and all `f`: the lowest and highest actor, which lose or win every tie.
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            // Version 1 (time and MAC), 3 (name hash), 8 (free-form): not random.
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
            "6fa459ea-ee8a-3ca4-894e-db77e160355e",
            "ffffffff-ffff-8fff-bfff-ffffffffffff",
            // Version 4 digits with the wrong variant.
            "ffffffff-ffff-4fff-ffff-ffffffffffff",
        ] {
            let (status, body) = enroll_as(&http, &base, &codes[0], chosen, None).await;
            assert_eq!(status, 400, "{url}: {chosen}: {body}");
            assert_eq!(body["error"], "malformed", "{url}: {chosen}");
            assert!(
                body["message"].as_str().unwrap().contains("random UUID"),
                "{url}: {body}"
            );
        }
        assert!(server.storage.list_devices(None).await.unwrap().is_empty());
        // The code was not spent; ids as stores make them (v4, v7) enroll.
        let v7 = uuid::Uuid::now_v7().to_string();
        assert_eq!(enroll_as(&http, &base, &codes[0], &v7, None).await.0, 200);
        assert_eq!(enroll_new(&http, &base, &codes[1]).await.0, 200);
        // Refusals are not guesses: nothing was counted against the address.
        assert_eq!(
            server
                .storage
                .enrollment_attempts("127.0.0.1", now_ms())
                .await
                .unwrap(),
            0,
            "{url}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reenrollment_codes_replace_a_credential_for_that_device_only() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "reenroll").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 3).await.unwrap();
        let http = client();
        let base = server.url();
        let device = DeviceId::new().to_string();
        let (status, first) = enroll_as(&http, &base, &codes[0], &device, None).await;
        assert_eq!(status, 200, "{url}");
        let old_token = first["token"].as_str().unwrap().to_owned();
        let (_, other) = enroll_new(&http, &base, &codes[1]).await;

        // A known id with an ordinary code: refused, clearly, and the code stays usable.
        let (status, body) = enroll_as(&http, &base, &codes[2], &device, None).await;
        assert_eq!(status, 409, "{url}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("re-enrollment code"),
            "{url}: {body}"
        );

        // Revoked by mistake, even with a wipe order; the operator issues a re-enrollment code.
        let (status, _) = admin(
            &server,
            reqwest::Method::POST,
            &format!("/v1/admin/devices/{device}/revoke"),
            Some(json!({"wipe": true})),
        )
        .await;
        assert_eq!(status, 204);
        let (status, issued) = admin(
            &server,
            reqwest::Method::POST,
            &format!("/v1/admin/devices/{device}/reenroll-code"),
            Some(json!({"ttl_hours": 2})),
        )
        .await;
        assert_eq!(status, 200, "{url}: {issued}");
        assert_eq!(issued["device_id"], device.as_str());
        let code = issued["code"].as_str().unwrap().to_owned();
        let expires_at = issued["expires_at"].as_i64().unwrap();
        assert!((expires_at - now_ms() - 2 * 3_600_000).abs() < 60_000);

        // Used with any other id (another device's, or a new one): the answer an unknown code
        // gets, word for word, and the code is not spent.
        let unknown = enroll_new(&http, &base, "ABCD-EFGH-JKMN").await;
        for wrong in [
            other["device_id"].as_str().unwrap().to_owned(),
            DeviceId::new().to_string(),
        ] {
            assert_eq!(
                enroll_as(&http, &base, &code, &wrong, None).await,
                unknown,
                "{url}"
            );
        }
        // With its own id: a new token, the same scope; the old token stops at once.
        let (status, again) = enroll_as(&http, &base, &code, &device, None).await;
        assert_eq!(status, 200, "{url}: {again}");
        assert_eq!(again["device_id"], device.as_str());
        assert_eq!(again["scope"], json!({"commune": COMMUNE}));
        let new_token = again["token"].as_str().unwrap();
        assert_ne!(new_token, old_token);
        assert_eq!(sync_as(&http, &base, &old_token).await.0, 401, "{url}");
        assert_eq!(sync_as(&http, &base, new_token).await.0, 200, "{url}");
        // Single use.
        assert_eq!(enroll_as(&http, &base, &code, &device, None).await.0, 401);
        let devices = server.storage.list_devices(None).await.unwrap();
        assert_eq!(devices.len(), 2, "{url}");
        assert!(devices.iter().all(|d| !d.device.revoked && !d.device.wiped));

        // Operator mistakes.
        let unknown_device = DeviceId::new();
        for (path, body, want) in [
            (
                format!("/v1/admin/devices/{unknown_device}/reenroll-code"),
                None,
                404,
            ),
            (
                "/v1/admin/devices/not-a-uuid/reenroll-code".into(),
                None,
                400,
            ),
            (
                format!("/v1/admin/devices/{device}/reenroll-code"),
                Some(json!({"ttl_hours": 0})),
                400,
            ),
            (
                format!("/v1/admin/devices/{device}/reenroll-code"),
                Some(json!({"ttl_hours": 721})),
                400,
            ),
            (
                format!("/v1/admin/devices/{device}/reenroll-code"),
                Some(json!({"ttl": 5})),
                400,
            ),
        ] {
            let (status, answer) = admin(&server, reqwest::Method::POST, &path, body).await;
            assert_eq!(status, want, "{url}: {path}: {answer}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_with_wipe_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "wipe").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 3).await.unwrap();
        let http = client();
        let base = server.url();
        let mut tablets = Vec::new();
        for code in &codes {
            let (_, body) = enroll_new(&http, &base, code).await;
            tablets.push((
                body["device_id"].as_str().unwrap().to_owned(),
                body["token"].as_str().unwrap().to_owned(),
            ));
        }
        let [
            (wiped, wiped_token),
            (plain, plain_token),
            (typo, typo_token),
        ] = &tablets[..]
        else {
            unreachable!()
        };
        let revoke = |device: &str, body: Option<&str>| {
            let mut request = http
                .post(format!("{base}/v1/admin/devices/{device}/revoke"))
                .bearer_auth(&server.admin_token);
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(body.to_owned());
            }
            request.send()
        };
        assert_eq!(
            revoke(wiped, Some(r#"{"wipe": true}"#))
                .await
                .unwrap()
                .status(),
            204
        );
        // No body, or `{}`, or wipe false: a plain revocation, as before.
        assert_eq!(revoke(plain, None).await.unwrap().status(), 204);
        assert_eq!(revoke(plain, Some("{}")).await.unwrap().status(), 204);
        assert_eq!(
            revoke(plain, Some(r#"{"wipe": false}"#))
                .await
                .unwrap()
                .status(),
            204
        );
        // A misspelt order is refused rather than taken for a plain revocation.
        for bad in [r#"{"wpie": true}"#, r#"{"wipe": "yes"}"#, "wipe"] {
            assert_eq!(
                revoke(typo, Some(bad)).await.unwrap().status(),
                400,
                "{bad}"
            );
        }
        assert_eq!(
            sync_as(&http, &base, wiped_token).await,
            (403, "wiped".into()),
            "{url}"
        );
        assert_eq!(
            sync_as(&http, &base, plain_token).await,
            (403, "revoked".into()),
            "{url}"
        );
        assert_eq!(
            sync_as(&http, &base, typo_token).await,
            (200, String::new())
        );
        // Operators see it.
        let (status, list) = admin(&server, reqwest::Method::GET, "/v1/admin/devices", None).await;
        assert_eq!(status, 200);
        let flags = |id: &str| {
            let d = list
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["id"] == id)
                .unwrap();
            (d["revoked"].as_bool(), d["wiped"].as_bool())
        };
        assert_eq!(flags(wiped), (Some(true), Some(true)));
        assert_eq!(flags(plain), (Some(true), Some(false)));
        assert_eq!(flags(typo), (Some(false), Some(false)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_guesses_get_at_most_the_limit_of_evaluations() {
    const GUESSES: usize = 200;
    const LIMIT: u32 = 10;
    const QUEUE: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "guesses").await.unwrap() {
        let config = ServerConfig {
            enroll_failures_allowed: LIMIT,
            enroll_throttle_delay: NEVER,
            enroll_throttle_queue: QUEUE,
            ..ServerConfig::default()
        };
        let server = TestServer::start_with(&url, config, None).await.unwrap();
        server.commune_with_codes(COMMUNE, 0).await.unwrap();
        let http = client();
        let base = server.url();
        let mut guesses = tokio::task::JoinSet::new();
        for i in 0..GUESSES {
            let (http, base) = (http.clone(), base.clone());
            guesses.spawn(async move {
                let response = http
                    .post(format!("{base}/v1/enroll"))
                    .json(&json!({
                        "code": format!("WRNG-{i:04}-XXXX"),
                        "device_id": DeviceId::new(),
                        "label": "guess"
                    }))
                    .send()
                    .await
                    .unwrap();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                (response.status().as_u16(), retry_after)
            });
        }
        // Every guess but the queued ones answers without waiting: an evaluated guess with 401,
        // one that found the queue full with 429. The queued ones wait for a delay nobody waits.
        let mut evaluated = 0;
        let mut refused = 0;
        for _ in 0..GUESSES - QUEUE {
            let (status, retry_after) = guesses.join_next().await.unwrap().unwrap();
            match status {
                401 => evaluated += 1,
                429 => {
                    refused += 1;
                    assert!(retry_after.unwrap().parse::<u64>().unwrap() >= 1);
                }
                other => panic!("{url}: status {other}"),
            }
        }
        assert_eq!(evaluated, LIMIT, "{url}: guesses evaluated at full speed");
        assert_eq!(refused, GUESSES - QUEUE - LIMIT as usize, "{url}");
        // Every guess was counted before it was evaluated.
        assert_eq!(
            server
                .storage
                .enrollment_attempts("127.0.0.1", now_ms())
                .await
                .unwrap(),
            GUESSES as u32,
            "{url}"
        );
        guesses.abort_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_address_has_its_own_limit() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "proxy").await.unwrap() {
        let config = ServerConfig {
            // The test connects from 127.0.0.1, as a TLS proxy on the same host would.
            trusted_proxies: vec![http::client_addr::parse_trusted_proxy("127.0.0.0/8").unwrap()],
            enroll_failures_allowed: 10,
            enroll_throttle_delay: NEVER,
            ..ServerConfig::default()
        };
        let server = TestServer::start_with(&url, config, None).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 1).await.unwrap();
        let http = client();
        let base = server.url();
        // Ten typos at one commune office. The client's own entries left of what the proxy
        // appended are not believed.
        for i in 0..10 {
            let xff = format!("192.0.2.{i}, 203.0.113.7");
            let (status, _) = enroll_as(
                &http,
                &base,
                "TYPO-TYPO-TYPO",
                &DeviceId::new().to_string(),
                Some(&xff),
            )
            .await;
            assert_eq!(status, 401, "{url}");
        }
        let attempts = |source: &'static str| {
            let storage = server.storage.clone();
            async move { storage.enrollment_attempts(source, now_ms()).await.unwrap() }
        };
        assert_eq!(attempts("203.0.113.7").await, 10, "{url}");
        assert_eq!(attempts("192.0.2.0").await, 0, "{url}");
        assert_eq!(attempts("127.0.0.1").await, 0, "{url}");
        // Another office's tablet, through the same proxy, enrolls at once (a throttled attempt
        // would wait an hour: the client's 60 s timeout would fail the test).
        let (status, body) = enroll_as(
            &http,
            &base,
            &codes[0],
            &DeviceId::new().to_string(),
            Some("198.51.100.9"),
        )
        .await;
        assert_eq!(status, 200, "{url}: {body}");
        assert_eq!(
            attempts("198.51.100.9").await,
            0,
            "{url}: success is refunded"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "untrusted").await.unwrap() {
        for trusted in [
            Vec::new(),
            vec![http::client_addr::parse_trusted_proxy("10.0.0.0/8").unwrap()],
        ] {
            let config = ServerConfig {
                trusted_proxies: trusted,
                enroll_failures_allowed: 50,
                ..ServerConfig::default()
            };
            let server = TestServer::start_with(&url, config, None).await.unwrap();
            server.commune_with_codes(COMMUNE, 0).await.unwrap();
            let http = client();
            let before = server
                .storage
                .enrollment_attempts("127.0.0.1", now_ms())
                .await
                .unwrap();
            // A guesser naming a fresh address in every request.
            for i in 0..5 {
                let xff = format!("198.51.100.{i}");
                let (status, _) = enroll_as(
                    &http,
                    &server.url(),
                    "WRNG-WRNG-WRNG",
                    &DeviceId::new().to_string(),
                    Some(&xff),
                )
                .await;
                assert_eq!(status, 401);
                assert_eq!(
                    server
                        .storage
                        .enrollment_attempts(&xff, now_ms())
                        .await
                        .unwrap(),
                    0,
                    "{url}"
                );
            }
            assert_eq!(
                server
                    .storage
                    .enrollment_attempts("127.0.0.1", now_ms())
                    .await
                    .unwrap(),
                before + 5,
                "{url}: counted under the peer"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_tokens_are_listed_without_secrets_and_revocable() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "tokens").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let http = client();
        let base = server.url();
        let second = http::new_token();
        let second_id = server
            .storage
            .create_admin_token(http::hash_secret(&second), "Sở Nội vụ", now_ms())
            .await
            .unwrap();
        let (status, list) = admin(&server, reqwest::Method::GET, "/v1/admin/tokens", None).await;
        assert_eq!(status, 200);
        let text = list.to_string();
        for secret in [&server.admin_token, &second] {
            assert!(!text.contains(secret.as_str()), "{url}: a token in {text}");
            let hash: String = http::hash_secret(secret)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert!(!text.contains(&hash[..16]), "{url}: a hash in {text}");
        }
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 2);
        let mine = list.iter().find(|t| t["label"] == "tests").unwrap();
        let my_id = mine["id"].as_u64().unwrap();
        assert!(mine["last_used_at"].as_i64().is_some(), "{mine}");
        assert!(mine["revoked_at"].is_null());

        let revoke = |token: String, id: String| {
            http.post(format!("{base}/v1/admin/tokens/{id}/revoke"))
                .bearer_auth(token)
                .send()
        };
        // Not the token making the request, with a message saying what to do.
        let refused = revoke(server.admin_token.clone(), my_id.to_string())
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), 409);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "conflict");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("another operator token")
        );
        for (id, want) in [("abc", 400), ("-1", 400), ("999999", 404)] {
            let answer = revoke(server.admin_token.clone(), id.into()).await.unwrap();
            assert_eq!(answer.status().as_u16(), want, "{url}: {id}");
        }
        // Revoked: refused from the next request on.
        assert_eq!(
            admin(&server, reqwest::Method::GET, "/v1/admin/stats", None)
                .await
                .0,
            200
        );
        let answer = revoke(second.clone(), my_id.to_string()).await.unwrap();
        assert_eq!(answer.status().as_u16(), 204, "{url}");
        assert_eq!(
            admin(&server, reqwest::Method::GET, "/v1/admin/stats", None)
                .await
                .0,
            401,
            "{url}: a revoked operator token still works"
        );
        // The last active token: refused (here it is also the caller's own).
        let answer = revoke(second.clone(), second_id.to_string()).await.unwrap();
        assert_eq!(answer.status().as_u16(), 409);
        let tokens = server.storage.list_admin_tokens().await.unwrap();
        assert_eq!(
            tokens
                .iter()
                .filter(|t| t.revoked_at.is_none())
                .map(|t| t.id)
                .collect::<Vec<_>>(),
            [second_id]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_each_devices_refused_documents() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "refusals").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 1).await.unwrap();
        let http = client();
        let (_, body) = enroll_new(&http, &server.url(), &codes[0]).await;
        let device: uuid::Uuid = body["device_id"].as_str().unwrap().parse().unwrap();
        let doc = RecordId::new();
        server
            .storage
            .record_refusals(
                DeviceId(device),
                &[RefusalRow {
                    doc,
                    code: "forged_actor".into(),
                    message: "a change under another device's actor".into(),
                }],
                now_ms(),
            )
            .await
            .unwrap();
        let (status, list) = admin(
            &server,
            reqwest::Method::GET,
            &format!("/v1/admin/devices/{device}/refusals"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{url}: {list}");
        assert_eq!(list[0]["doc"], doc.to_string());
        assert_eq!(list[0]["code"], "forged_actor");
        assert_eq!(list[0]["count"], 1);
        let (_, devices) = admin(&server, reqwest::Method::GET, "/v1/admin/devices", None).await;
        assert_eq!(devices[0]["refused_docs"], 1);
        let (status, _) = admin(
            &server,
            reqwest::Method::GET,
            &format!("/v1/admin/devices/{}/refusals", DeviceId::new()),
            None,
        )
        .await;
        assert_eq!(status, 404, "{url}");
    }
}
