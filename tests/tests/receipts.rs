//! Signed receipts end to end over real HTTP, on every server backend: two tablets enroll with
//! their keys, take dossiers offline and print receipts; each verifies the other's receipt
//! offline with the province's key list, the server verifies both online; forged, altered and
//! revoked-key receipts are refused with their reason. And the key endpoints as the attacker
//! sees them.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use communesync_core::keys::DeviceSigningKey;
use communesync_core::receipt::{self, Receipt};
use communesync_core::record::{DeviceId, RecordId};
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_core::sync::{
    Credentials, ReqwestTransport, SyncClient, SyncConfig, enroll, enroll_with_key,
};
use communesync_tests::{TestServer, test_databases};

const COMMUNE: &str = "DB-MUONGPHANG";

struct Tablet {
    store: Arc<Mutex<DeviceStore>>,
    client: SyncClient<ReqwestTransport>,
    credentials: Credentials,
}

async fn tablet(dir: &std::path::Path, name: &str, base: &str, code: &str) -> Tablet {
    let mut store = DeviceStore::open(StoreConfig::new(dir.join(format!("{name}.db")))).unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    let transport = ReqwestTransport::new(base).unwrap();
    let credentials = enroll_with_key(
        &transport,
        code,
        store.device_id(),
        name,
        Some(store.public_key().unwrap()),
    )
    .await
    .unwrap();
    store.set_enrolled_commune(credentials.commune()).unwrap();
    let store = Arc::new(Mutex::new(store));
    let client = SyncClient::new(
        transport,
        store.clone(),
        credentials.token.clone(),
        SyncConfig::default(),
    )
    .unwrap();
    Tablet {
        store,
        client,
        credentials,
    }
}

/// An intake with its dossier number (given at intake, offline) and its receipt.
fn intake(tablet: &Tablet, seed: u64) -> (RecordId, receipt::SignedReceipt) {
    let mut store = tablet.store.lock().unwrap();
    let mut sample = SampleData::new(seed);
    let app = store
        .create_application("can.bo.mot", sample.application(COMMUNE, None))
        .unwrap();
    assert!(app.dossier_number.is_some());
    let signed = store.issue_receipt(app.id).unwrap();
    assert_eq!(
        Some(&signed.receipt.dossier_number),
        app.dossier_number.as_ref()
    );
    (app.id, signed)
}

async fn verify_online(base: &str, token: &str, payload: &str) -> serde_json::Value {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/receipts/verify"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "payload": payload }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tablets_verify_each_others_receipts_offline_and_the_server_online() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "receipts").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 2).await.unwrap();
        let base = server.url();
        let sub = tempfile::tempdir_in(dir.path()).unwrap();
        let a = tablet(sub.path(), "a", &base, &codes[0]).await;
        let b = tablet(sub.path(), "b", &base, &codes[1]).await;

        // Offline intakes on both tablets.
        let (id_a, receipt_a) = intake(&a, 1);
        let (_, receipt_b) = intake(&b, 2);
        assert!(receipt_a.payload.len() <= receipt::MAX_PAYLOAD_BYTES);
        assert_ne!(
            receipt_a.receipt.dossier_number,
            receipt_b.receipt.dossier_number
        );
        // B does not know A's key yet: refused with that reason, not as a forgery.
        let before = b
            .store
            .lock()
            .unwrap()
            .verify_receipt(&receipt_a.payload)
            .unwrap();
        assert_eq!(before.unwrap_err().code(), "unknown_device");

        // Back online: the key list reaches both tablets with the sync (protocol 4's tag 4).
        for t in [&a, &b] {
            t.client.sync(&|_| {}).await.unwrap();
            assert!(t.store.lock().unwrap().device_keys_version().unwrap() >= 2);
            let refresh = t.client.refresh_device_keys().await.unwrap();
            assert!(!refresh.registered_own_key, "enrollment registered the key");
        }
        let on_b = b
            .store
            .lock()
            .unwrap()
            .verify_receipt(&receipt_a.payload)
            .unwrap()
            .unwrap();
        assert_eq!(on_b.record_id, id_a);
        assert_eq!(on_b.device, a.credentials.device_id);
        let on_a = a
            .store
            .lock()
            .unwrap()
            .verify_receipt(&receipt_b.payload)
            .unwrap()
            .unwrap();
        assert_eq!(on_a.dossier_number, receipt_b.receipt.dossier_number);

        // The server verifies both online, and knows the records (synced).
        for (t, r) in [(&a, &receipt_b), (&b, &receipt_a)] {
            let verdict = verify_online(&base, &t.credentials.token, &r.payload).await;
            assert_eq!(verdict["valid"], true, "{verdict}");
            assert_eq!(verdict["record_known"], true, "{verdict}");
            assert_eq!(
                verdict["receipt"]["dossier_number"],
                r.receipt.dossier_number.as_str()
            );
        }

        // Altered: the due date moved a month later and re-encoded with the old signature.
        let mut altered_receipt: Receipt = receipt_a.receipt.clone();
        altered_receipt.due_julian_day += 30;
        let altered = reencode_with_signature_of(&receipt_a.payload, &altered_receipt);
        // Forged: signed with a key the province does not have for this device.
        let forged = receipt::sign(&altered_receipt, &DeviceSigningKey::generate().unwrap())
            .unwrap()
            .payload;
        for (payload, code) in [
            (altered.as_str(), "bad_signature"),
            (forged.as_str(), "bad_signature"),
            ("NOT A RECEIPT", "malformed"),
        ] {
            let offline = b
                .store
                .lock()
                .unwrap()
                .verify_receipt(payload)
                .unwrap()
                .unwrap_err();
            assert_eq!(offline.code(), code);
            let verdict = verify_online(&base, &b.credentials.token, payload).await;
            assert_eq!(verdict["valid"], false);
            assert_eq!(verdict["code"], code, "{verdict}");
        }

        // A is lost and revoked: receipts it signed before stay valid, one it claims to sign
        // after the revocation is refused.
        server
            .storage
            .revoke_device_keys(a.credentials.device_id, communesync_tests::now_ms())
            .await
            .unwrap();
        let key_a = a.store.lock().unwrap().signing_key().unwrap();
        let mut late = receipt_a.receipt.clone();
        late.signed_at = communesync_tests::now_ms() + 60_000;
        let late = receipt::sign(&late, &key_a).unwrap().payload;
        b.client.refresh_device_keys().await.unwrap();
        let store_b = b.store.clone();
        let verdict_late = store_b
            .lock()
            .unwrap()
            .verify_receipt(&late)
            .unwrap()
            .unwrap_err();
        assert_eq!(verdict_late.code(), "key_revoked");
        assert!(
            store_b
                .lock()
                .unwrap()
                .verify_receipt(&receipt_a.payload)
                .unwrap()
                .is_ok()
        );
        let verdict = verify_online(&base, &b.credentials.token, &late).await;
        assert_eq!(verdict["code"], "key_revoked", "{verdict}");
        server.stop().await;
    }
}

/// `payload`'s signature attached to `receipt`'s bytes (an altered receipt).
fn reencode_with_signature_of(payload: &str, receipt: &Receipt) -> String {
    let bytes = receipt::base45::decode(payload).unwrap();
    let signature = &bytes[bytes.len() - 64..];
    let mut altered = vec![bytes[0]];
    altered.extend(postcard::to_stdvec(receipt).unwrap());
    altered.extend_from_slice(signature);
    receipt::base45::encode(&altered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_endpoints_as_the_attacker_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = communesync_tests::sqlite_url(dir.path(), "attacker");
    let server = TestServer::start(&url).await.unwrap();
    let codes = server.commune_with_codes(COMMUNE, 3).await.unwrap();
    let base = server.url();
    let http = reqwest::Client::new();

    // A small-order key at enrollment is refused before anything is enrolled.
    let response = http
        .post(format!("{base}/v1/enroll"))
        .json(&serde_json::json!({
            "code": codes[0], "device_id": DeviceId::new(), "label": "x",
            "public_key": "00".repeat(32)
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Not hex.
    let response = http
        .post(format!("{base}/v1/enroll"))
        .json(&serde_json::json!({
            "code": codes[0], "device_id": DeviceId::new(), "label": "x", "public_key": "zz"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // An old client enrolls without a key, then registers one on first use, once.
    let transport = ReqwestTransport::new(&base).unwrap();
    let old = enroll(&transport, &codes[0], DeviceId::new(), "old")
        .await
        .unwrap();
    let first = DeviceSigningKey::generate().unwrap().public_key();
    let register = |key: String, token: Option<String>| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let mut request = http
                .post(format!("{base}/v1/device/key"))
                .json(&serde_json::json!({ "public_key": key }));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(register(first.to_hex(), None).await, 401);
    assert_eq!(register(first.to_hex(), Some("wrong".into())).await, 401);
    assert_eq!(register(first.to_hex(), Some(old.token.clone())).await, 204);
    // A stolen token cannot swap the key.
    let thief = DeviceSigningKey::generate().unwrap().public_key();
    assert_eq!(register(thief.to_hex(), Some(old.token.clone())).await, 409);
    let (entries, _) = server.storage.device_keys_since(0, 100).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].public_key, first);

    // The key list and the verifier need a credential.
    for path in ["/v1/device-keys", "/v1/receipts/verify"] {
        let response = http
            .post(format!("{base}{path}"))
            .json(&serde_json::json!({ "payload": "x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    // A huge payload is refused as malformed, not worked on.
    let verdict = verify_online(&base, &old.token, &"0".repeat(100_000)).await;
    assert_eq!(verdict["code"], "malformed");
    server.stop().await;
}
