//! Several server replicas over one PostgreSQL behave as one server; the operator HTTP API.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use communesync_core::record::Status;
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, enroll};
use communesync_tests::{TestServer, fresh_postgres_database};

async fn client(
    dir: &std::path::Path,
    name: &str,
    url: &str,
    code: &str,
) -> SyncClient<ReqwestTransport> {
    let mut store = DeviceStore::open(StoreConfig::new(dir.join(format!("{name}.db")))).unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    let transport = ReqwestTransport::new(url).unwrap();
    let credentials = enroll(&transport, code, store.device_id(), name)
        .await
        .unwrap();
    let config = SyncConfig {
        push_batch_bytes: 8 * 1024,
        ..SyncConfig::default()
    };
    SyncClient::new(
        transport,
        Arc::new(Mutex::new(store)),
        credentials.token,
        config,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_over_one_postgres_act_as_one_server() {
    let Ok(base) = std::env::var("COMMUNESYNC_TEST_DATABASE_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the PostgreSQL tests"
        );
        eprintln!("note: COMMUNESYNC_TEST_DATABASE_URL unset, skipped");
        return;
    };
    let url = fresh_postgres_database(&base, "replicas").await.unwrap();
    let one = TestServer::start(&url).await.unwrap();
    let two = TestServer::start(&url).await.unwrap();
    let three = TestServer::start(&url).await.unwrap();
    // A code issued through one replica enrolls through another.
    let codes = one.commune_with_codes("DB-MUONGPHANG", 4).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let writers = [
        client(dir.path(), "w1", &two.url(), &codes[0]).await,
        client(dir.path(), "w2", &three.url(), &codes[1]).await,
        client(dir.path(), "w3", &one.url(), &codes[2]).await,
    ];
    let reader = client(dir.path(), "reader", &two.url(), &codes[3]).await;
    let mut sample = SampleData::new(9);
    for (i, w) in writers.iter().enumerate() {
        let mut store = w.store().lock().unwrap();
        for n in 0..40 {
            let app = store
                .create_application("w", sample.application("DB-MUONGPHANG", None))
                .unwrap();
            if (n + i) % 4 == 0 {
                store.transition(app.id, "w", Status::InProgress).unwrap();
            }
        }
    }
    // Writers push concurrently through three replicas while the reader pulls repeatedly.
    let reader_task = async {
        for _ in 0..30 {
            reader.sync(&|_| {}).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let writes = futures_join(&writers);
    let ((), results) = tokio::join!(reader_task, writes);
    for r in results {
        r.unwrap();
    }
    reader.sync(&|_| {}).await.unwrap();
    let reader_total: u64 = reader
        .store()
        .lock()
        .unwrap()
        .counts_by_status()
        .unwrap()
        .iter()
        .map(|c| c.count)
        .sum();
    assert_eq!(
        reader_total, 120,
        "the feed skipped changes committed concurrently on other replicas"
    );
    // Every replica reports the same state: nothing that matters lives in one replica's memory.
    for server in [&one, &two, &three] {
        let stats = server.storage.stats().await.unwrap();
        assert_eq!(stats[0].documents, 120);
    }
    // Revocation through one replica is immediate on the others.
    let device = writers[0].store().lock().unwrap().device_id();
    three.storage.revoke_device(device).await.unwrap();
    writers[0]
        .store()
        .lock()
        .unwrap()
        .create_application("w", sample.application("DB-MUONGPHANG", None))
        .unwrap();
    assert!(matches!(
        writers[0].sync(&|_| {}).await,
        Err(communesync_core::sync::SyncError::Revoked)
    ));
}

async fn futures_join(
    writers: &[SyncClient<ReqwestTransport>],
) -> Vec<Result<communesync_core::sync::SyncReport, communesync_core::sync::SyncError>> {
    let (a, b, c) = tokio::join!(
        writers[0].sync(&|_| {}),
        writers[1].sync(&|_| {}),
        writers[2].sync(&|_| {})
    );
    vec![a, b, c]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_api_needs_the_operator_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&communesync_tests::sqlite_url(dir.path(), "admin.db"))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.url());

    // No token, a wrong token, a device token: all refused, nothing created.
    for token in [None, Some("0".repeat(64))] {
        let mut request = http
            .post(url("/v1/admin/communes"))
            .json(&serde_json::json!({"code": "X", "name": "X"}));
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        assert_eq!(request.send().await.unwrap().status().as_u16(), 401);
    }
    let admin = |request: reqwest::RequestBuilder| request.bearer_auth(&server.admin_token).send();
    let created = admin(
        http.post(url("/v1/admin/communes"))
            .json(&serde_json::json!({"code": "DB-MUONGPHANG", "name": "Xã Mường Phăng"})),
    )
    .await
    .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let again = admin(
        http.post(url("/v1/admin/communes"))
            .json(&serde_json::json!({"code": "DB-MUONGPHANG", "name": "x"})),
    )
    .await
    .unwrap();
    assert_eq!(again.status().as_u16(), 409);
    let bad = admin(
        http.post(url("/v1/admin/communes"))
            .json(&serde_json::json!({"code": "bad code!", "name": "x"})),
    )
    .await
    .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    let issued: serde_json::Value = admin(
        http.post(url("/v1/admin/enrollment-codes"))
            .json(&serde_json::json!({"scope": {"commune": "DB-MUONGPHANG"}, "ttl_hours": 2})),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let code = issued["code"].as_str().unwrap();
    let device_token = {
        let transport = ReqwestTransport::new(&server.url()).unwrap();
        enroll(
            &transport,
            &code.to_lowercase(),
            communesync_core::record::DeviceId::new(),
            "t1",
        )
        .await
        .unwrap()
    };
    // A device token is not an operator token.
    let as_device = http
        .get(url("/v1/admin/devices"))
        .bearer_auth(&device_token.token)
        .send()
        .await
        .unwrap();
    assert_eq!(as_device.status().as_u16(), 401);

    let devices: Vec<serde_json::Value> =
        admin(http.get(url("/v1/admin/devices?commune=DB-MUONGPHANG")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["label"], "t1");
    let id = devices[0]["id"].as_str().unwrap();
    assert_eq!(
        admin(http.post(url(&format!("/v1/admin/devices/{id}/revoke"))))
            .await
            .unwrap()
            .status()
            .as_u16(),
        204
    );
    let devices: Vec<serde_json::Value> = admin(http.get(url("/v1/admin/devices")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(devices[0]["revoked"], true);

    let bad_catalogue = admin(
        http.put(url("/v1/admin/catalogue"))
            .body("{\"procedures\": 3}"),
    )
    .await
    .unwrap();
    assert_eq!(bad_catalogue.status().as_u16(), 400);
    let version: serde_json::Value = admin(http.put(url("/v1/admin/catalogue")).body(
        r#"{"procedures":[{"code":"1.001193","name":"Đăng ký khai sinh","processing_days":1}]}"#,
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(version["version"], 1);
    let stats: Vec<serde_json::Value> = admin(http.get(url("/v1/admin/stats")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats[0]["code"], "DB-MUONGPHANG");
}
