//! Signed pushes as the attacker sees them (ADR 0008), over real HTTP on every backend: an
//! unsigned push from a device with a key, a forged signature, a signature by another device's
//! key and a signed message replayed with other changes are each refused with their reason and
//! nothing of them is stored; an honest signed push is stored and its history says "verified";
//! the tablet sets a refused push aside with the reason.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use communesync_core::codec::DocCodec;
use communesync_core::keys::push::{PushSignature, change_hash, sign_push};
use communesync_core::keys::wire::DeviceKeysRequest;
use communesync_core::keys::{DeviceSigningKey, Signature};
use communesync_core::protocol::{
    CONTENT_TYPE, Extensions, Limits, PROTOCOL_VERSION, PushDoc, SyncRequest, SyncResponse,
};
use communesync_core::record::{RecordId, RecordKind};
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_core::sync::{
    Credentials, ReqwestTransport, SyncClient, SyncConfig, enroll_with_key,
};
use communesync_server::http::hash_secret;
use communesync_tests::{TestServer, now_ms, test_databases};

const COMMUNE: &str = "DB-MUONGPHANG";

struct Tablet {
    store: DeviceStore,
    credentials: Credentials,
}

async fn tablet(dir: &std::path::Path, name: &str, base: &str, code: &str) -> Tablet {
    let mut store = DeviceStore::open(StoreConfig::new(dir.join(format!("{name}.db")))).unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    let credentials = enroll_with_key(
        &ReqwestTransport::new(base).unwrap(),
        code,
        store.device_id(),
        name,
        Some(store.public_key().unwrap()),
    )
    .await
    .unwrap();
    store.set_enrolled_commune(credentials.commune()).unwrap();
    Tablet { store, credentials }
}

/// A new record on `tablet` and its whole history (the changes a first push carries).
fn new_record(tablet: &mut Tablet, seed: u64) -> (RecordId, Vec<Vec<u8>>) {
    let app = tablet
        .store
        .create_application("can.bo", SampleData::new(seed).application(COMMUNE, None))
        .unwrap();
    (app.id, tablet.store.changes_since(app.id, &[]).unwrap())
}

fn hashes(changes: &[Vec<u8>]) -> Vec<[u8; 32]> {
    changes.iter().map(|c| change_hash(c).unwrap()).collect()
}

/// Posts a push of `changes` (one new record) with `signature` and returns the response.
async fn push(
    base: &str,
    token: &str,
    changes: Vec<Vec<u8>>,
    signature: Option<PushSignature>,
) -> SyncResponse {
    let mut codec = DocCodec::new().unwrap();
    let request = SyncRequest {
        protocol: PROTOCOL_VERSION,
        device_time: now_ms(),
        push: vec![PushDoc {
            id: None,
            kind: RecordKind::Application,
            changes,
        }],
        pull: None,
        catalogue_version: 0,
        pending_docs: 0,
        extensions: match signature {
            None => Extensions::new(),
            Some(signature) => Extensions::new()
                .with(&DeviceKeysRequest {
                    keys_version: 0,
                    push: Some(signature),
                })
                .unwrap(),
        },
    };
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/sync"))
        .bearer_auth(token)
        .header("content-type", CONTENT_TYPE)
        .body(request.encode(&mut codec).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    SyncResponse::decode(&mut codec, &body, &Limits::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_replayed_and_unsigned_pushes_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "signed").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 2).await.unwrap();
        let base = server.url();
        let sub = tempfile::tempdir_in(dir.path()).unwrap();
        let mut a = tablet(sub.path(), "a", &base, &codes[0]).await;
        let mut b = tablet(sub.path(), "b", &base, &codes[1]).await;
        let device_a = a.credentials.device_id;
        let token = a.credentials.token.clone();
        let key_a = a.store.signing_key().unwrap();
        let key_b = DeviceSigningKey::from_secret(&[0; 32]).unwrap();
        let (id1, changes1) = new_record(&mut a, 1);
        let (id2, changes2) = new_record(&mut a, 2);

        let attacks: Vec<(&str, Option<PushSignature>, &str)> = vec![
            ("unsigned", None, "unsigned_push"),
            (
                "forged",
                Some(PushSignature {
                    counter: 1,
                    signature: Signature([0x5a; 64]),
                }),
                "bad_signature",
            ),
            (
                "another device's key",
                Some(sign_push(
                    &b.store.signing_key().unwrap(),
                    device_a,
                    2,
                    &hashes(&changes1),
                )),
                "bad_signature",
            ),
            (
                "a key nobody registered",
                Some(sign_push(&key_b, device_a, 3, &hashes(&changes1))),
                "bad_signature",
            ),
            (
                "replayed with swapped changes",
                Some(sign_push(&key_a, device_a, 4, &hashes(&changes2))),
                "bad_signature",
            ),
        ];
        for (what, signature, code) in attacks {
            let response = push(&base, &token, changes1.clone(), signature).await;
            assert_eq!(response.refused.len(), 1, "{what}");
            assert_eq!(response.refused[0].code, code, "{what}");
            assert!(
                response.refused[0].message.contains("nothing of"),
                "{what}: {}",
                response.refused[0].message
            );
            assert!(
                server
                    .storage
                    .doc_registration(id1)
                    .await
                    .unwrap()
                    .is_none(),
                "{what}: stored"
            );
        }
        // The honest push of the same changes is stored, and history verifies its signature.
        let honest = sign_push(&key_a, device_a, 5, &hashes(&changes1));
        let response = push(&base, &token, changes1.clone(), Some(honest)).await;
        assert!(response.refused.is_empty(), "{:?}", response.refused);
        assert!(
            server
                .storage
                .doc_registration(id1)
                .await
                .unwrap()
                .is_some()
        );
        let history = communesync_server::http::record_history(server.storage.as_ref(), id1)
            .await
            .unwrap();
        assert!(!history.is_empty());
        assert!(
            history.iter().all(|c| c.signature == "verified"),
            "{history:?}"
        );
        // The same signed request replayed: the same changes, already stored (idempotent).
        let replay = push(&base, &token, changes1.clone(), Some(honest)).await;
        assert!(replay.refused.is_empty());
        // ... but it cannot carry other changes.
        let swapped = push(&base, &token, changes2.clone(), Some(honest)).await;
        assert_eq!(swapped.refused[0].code, "bad_signature");
        assert!(
            server
                .storage
                .doc_registration(id2)
                .await
                .unwrap()
                .is_none()
        );

        // The same history through the operator API.
        let operator = "operator-token-signed-pushes";
        server
            .storage
            .create_admin_token(hash_secret(operator), "t", now_ms())
            .await
            .unwrap();
        let over_http: serde_json::Value = reqwest::Client::new()
            .get(format!("{base}/v1/admin/records/{id1}/history"))
            .bearer_auth(operator)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(over_http[0]["signature"], "verified", "{over_http}");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tablet_signs_its_pushes_learns_the_keys_and_sets_aside_a_refused_push() {
    let dir = tempfile::tempdir().unwrap();
    let url = communesync_tests::sqlite_url(dir.path(), "tablet");
    let server = TestServer::start(&url).await.unwrap();
    let codes = server.commune_with_codes(COMMUNE, 2).await.unwrap();
    let base = server.url();
    let mut a = tablet(dir.path(), "a", &base, &codes[0]).await;
    let b = tablet(dir.path(), "b", &base, &codes[1]).await;
    let (id, _) = new_record(&mut a, 3);
    let device_a = a.credentials.device_id;
    let store = Arc::new(Mutex::new(a.store));
    let client = SyncClient::new(
        ReqwestTransport::new(&base).unwrap(),
        store.clone(),
        a.credentials.token.clone(),
        SyncConfig::default(),
    )
    .unwrap();
    client.sync(&|_| {}).await.unwrap();
    // Stored with a verified signature; the key list came with the sync response.
    let history = communesync_server::http::record_history(server.storage.as_ref(), id)
        .await
        .unwrap();
    assert!(history.iter().all(|c| c.signature == "verified"));
    {
        let mut store = store.lock().unwrap();
        assert!(store.device_keys_version().unwrap() >= 2);
        let keys = store.key_list().unwrap();
        assert_eq!(keys.keys_of(b.credentials.device_id).len(), 1);
        let own = store.history(id).unwrap();
        assert!(own.iter().all(|e| e.signed_by_this_device));
    }
    // The province replaces A's key behind its back (as a re-enrollment elsewhere would): A's
    // next push is refused, set aside with the reason, and nothing is stored.
    server
        .storage
        .register_device_key(
            device_a,
            DeviceSigningKey::generate().unwrap().public_key(),
            now_ms(),
            false,
        )
        .await
        .unwrap();
    let id2 = store
        .lock()
        .unwrap()
        .create_application("can.bo", SampleData::new(4).application(COMMUNE, None))
        .unwrap()
        .id;
    client.sync(&|_| {}).await.unwrap();
    let quarantined = store.lock().unwrap().quarantined().unwrap();
    let entry = quarantined.iter().find(|q| q.record_id == id2).unwrap();
    assert_eq!(entry.code, "bad_signature");
    assert!(
        server
            .storage
            .doc_registration(id2)
            .await
            .unwrap()
            .is_none()
    );
    // Operators see it too.
    let refusals = server.storage.refusals(Some(device_a)).await.unwrap();
    assert!(refusals.iter().any(|r| r.code == "bad_signature"));
    server.stop().await;
}
