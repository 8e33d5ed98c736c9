//! Tablets and the provincial server over real HTTP on 127.0.0.1, on SQLite and PostgreSQL:
//! convergence, conflicts, cuts at many byte offsets, a server restart, credentials, scopes and
//! hostile bodies. Each test runs twice (`twin_tests!`): over plain HTTP and over HTTPS with a
//! certificate from a test CA that the tablets trust alone.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use communesync_core::codec::DocCodec;
use communesync_core::protocol::{
    CONTENT_TYPE, Limits, PROTOCOL_VERSION, PushDoc, SyncRequest, SyncResponse,
};
use communesync_core::record::{ConflictValue, DeviceId, RecordId, RecordKind, Status};
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, EncryptionKey, StoreConfig};
use communesync_core::sync::ServerTrust;
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, SyncError, enroll};
use communesync_server::link::{Cut, LinkProfile, PoorLink};
use communesync_tests::{Scheme, TestServer, test_databases, twin_tests};

twin_tests!(
    tablets_converge_and_conflicts_surface_on_every_backend,
    a_sync_cut_at_many_byte_offsets_resumes_without_loss_or_duplicates,
    a_server_restart_mid_sync_loses_nothing,
    credentials_are_checked_and_revocation_is_immediate,
    a_device_cannot_write_or_read_another_communes_records,
    malformed_truncated_and_oversized_bodies_get_clear_4xx_and_change_nothing,
);

const COMMUNE_A: &str = "DB-MUONGPHANG";
const COMMUNE_B: &str = "DB-NATAU";

struct Tablet {
    client: SyncClient<ReqwestTransport>,
    store: Arc<Mutex<DeviceStore>>,
    device: DeviceId,
    /// Its credential, for requests made by hand.
    token: String,
}

fn fast() -> SyncConfig {
    SyncConfig {
        initial_backoff: std::time::Duration::from_millis(20),
        max_backoff: std::time::Duration::from_millis(200),
        max_attempts: 3,
        ..SyncConfig::default()
    }
}

async fn tablet(
    dir: &std::path::Path,
    name: &str,
    url: &str,
    trust: ServerTrust,
    code: &str,
    config: SyncConfig,
) -> Tablet {
    let mut store = DeviceStore::open(
        StoreConfig::new(dir.join(format!("{name}.db"))).encrypted(EncryptionKey::new([3; 32])),
    )
    .unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    let device = store.device_id();
    let transport = communesync_tests::transport(url, trust);
    let credentials = enroll(&transport, code, device, name).await.unwrap();
    let store = Arc::new(Mutex::new(store));
    let token = credentials.token.clone();
    let client = SyncClient::new(transport, store.clone(), credentials.token, config).unwrap();
    Tablet {
        client,
        store,
        device,
        token,
    }
}

impl Tablet {
    fn with<T>(&self, f: impl FnOnce(&mut DeviceStore) -> T) -> T {
        f(&mut self.store.lock().unwrap())
    }
    async fn sync(&self) -> Result<communesync_core::sync::SyncReport, SyncError> {
        self.client.sync(&|_| {}).await
    }
    fn intake(&self, sample: &mut SampleData, commune: &str, n: usize) -> Vec<RecordId> {
        self.with(|s| {
            (0..n)
                .map(|_| {
                    s.create_application("officer", sample.application(commune, None))
                        .unwrap()
                        .id
                })
                .collect()
        })
    }
    fn count(&self) -> u64 {
        self.with(|s| s.counts_by_status().unwrap().iter().map(|c| c.count).sum())
    }
    /// The whole history of records `ids` of its store, as a push.
    fn whole(&self, ids: &[RecordId]) -> Vec<PushDoc> {
        self.with(|s| {
            ids.iter()
                .map(|&id| PushDoc {
                    id: Some(id),
                    kind: RecordKind::Application,
                    changes: s.changes_since(id, &[]).unwrap(),
                })
                .collect()
        })
    }
    /// Pushes `push` by hand (protocol 3, no pull) and returns the server's answer, which must
    /// be 200.
    async fn push_by_hand(&self, server: &TestServer, push: Vec<PushDoc>) -> SyncResponse {
        let mut codec = DocCodec::new().unwrap();
        let body = SyncRequest {
            protocol: PROTOCOL_VERSION,
            device_time: 0,
            push,
            pull: None,
            catalogue_version: 0,
            pending_docs: 0,
            extensions: Default::default(),
        }
        .encode(&mut codec)
        .unwrap();
        let response = server
            .http_client()
            .post(format!("{}/v1/sync", server.url()))
            .bearer_auth(&self.token)
            .header("content-type", CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        SyncResponse::decode(
            &mut codec,
            &response.bytes().await.unwrap(),
            &Limits::default(),
        )
        .unwrap()
    }
}

/// The (position, code) of each refusal of a response.
fn refusals(response: &SyncResponse) -> Vec<(u32, &str)> {
    response
        .refused
        .iter()
        .map(|r| (r.position, r.code.as_str()))
        .collect()
}

async fn tablets_converge_and_conflicts_surface_on_every_backend(scheme: Scheme) {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "converge").await.unwrap() {
        let server = TestServer::start_scheme(&url, scheme).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE_A, 2).await.unwrap();
        let other = server.commune_with_codes(COMMUNE_B, 1).await.unwrap();
        let sub = tempfile::tempdir().unwrap();
        let lan = tablet(
            sub.path(),
            "lan",
            &server.url(),
            server.trust(),
            &codes[0],
            fast(),
        )
        .await;
        let minh = tablet(
            sub.path(),
            "minh",
            &server.url(),
            server.trust(),
            &codes[1],
            fast(),
        )
        .await;
        let natau = tablet(
            sub.path(),
            "natau",
            &server.url(),
            server.trust(),
            &other[0],
            fast(),
        )
        .await;
        let mut sample = SampleData::new(1);

        let ids = lan.intake(&mut sample, COMMUNE_A, 40);
        minh.intake(&mut sample, COMMUNE_A, 10);
        natau.intake(&mut sample, COMMUNE_B, 5);
        lan.sync().await.unwrap();
        minh.sync().await.unwrap();
        natau.sync().await.unwrap();
        let report = lan.sync().await.unwrap();
        assert_eq!(report.pulled_docs, 10, "{url}");
        assert_eq!(
            (lan.count(), minh.count(), natau.count()),
            (50, 50, 5),
            "{url}"
        );

        // Nothing to do: one request.
        let idle = lan.sync().await.unwrap();
        assert_eq!(idle.requests, 1, "{url}");
        assert!(idle.bytes_up + idle.bytes_down < 1024, "{url}: {idle:?}");

        // The same application edited on both tablets while offline.
        let id = ids[0];
        lan.with(|s| {
            s.update_application(id, "lan", |a| {
                a.assignee = Some("lan".into());
                a.notes.push_str(" [lan]");
            })
        })
        .unwrap();
        minh.with(|s| {
            s.update_application(id, "minh", |a| {
                a.assignee = Some("minh".into());
                a.notes.insert_str(0, "[minh] ");
            })
        })
        .unwrap();
        lan.sync().await.unwrap();
        let report = minh.sync().await.unwrap();
        assert_eq!(report.conflicts, 1, "{url}");
        lan.sync().await.unwrap();
        for t in [&lan, &minh] {
            let app = t.with(|s| s.get_application(id)).unwrap();
            assert!(
                app.notes.starts_with("[minh] ") && app.notes.ends_with(" [lan]"),
                "{url}: {}",
                app.notes
            );
            let conflicts = t.with(|s| s.conflicts(id)).unwrap();
            assert_eq!(conflicts.len(), 1, "{url}");
            assert_eq!(conflicts[0].field, "assignee");
        }
        minh.with(|s| s.resolve(id, "minh", "assignee", &ConflictValue::Str("lan".into())))
            .unwrap();
        minh.sync().await.unwrap();
        lan.sync().await.unwrap();
        assert!(lan.with(|s| s.conflicts(id)).unwrap().is_empty(), "{url}");
        assert_eq!(
            lan.with(|s| s.get_application(id)).unwrap(),
            minh.with(|s| s.get_application(id)).unwrap()
        );
        let history = lan.with(|s| s.history(id)).unwrap();
        assert_eq!(history.len(), 4, "{url}");
        assert!(
            history
                .iter()
                .any(|h| h.device == Some(minh.device.0) && h.officer == "minh")
        );

        // Nothing of commune A ever reached commune B's tablet.
        assert_eq!(natau.count(), 5, "{url}");
        assert!(!natau.with(|s| s.contains(id)).unwrap());
    }
}

async fn a_sync_cut_at_many_byte_offsets_resumes_without_loss_or_duplicates(scheme: Scheme) {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "cuts").await.unwrap() {
        let server = TestServer::start_scheme(&url, scheme).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE_A, 2).await.unwrap();
        // A fast but shaped link: shaped directions cut at exact offsets.
        let link = PoorLink::start(
            server.addr,
            LinkProfile::loopback().with_rates(4_000_000, 4_000_000),
        )
        .await
        .unwrap();
        let link_url = match scheme {
            Scheme::Http => format!("http://{}", link.addr()),
            Scheme::Https => format!("https://{}", link.addr()),
        };
        let sub = tempfile::tempdir().unwrap();
        let config = SyncConfig {
            push_batch_bytes: 16 * 1024,
            pull_batch_bytes: 16 * 1024,
            max_attempts: 1,
            ..fast()
        };
        let a = tablet(
            sub.path(),
            "a",
            &link_url,
            server.trust(),
            &codes[0],
            config.clone(),
        )
        .await;
        let b = tablet(
            sub.path(),
            "b",
            &link_url,
            server.trust(),
            &codes[1],
            config,
        )
        .await;
        let mut sample = SampleData::new(2);
        let ids = a.intake(&mut sample, COMMUNE_A, 60);
        for (i, id) in ids.iter().enumerate().take(20) {
            a.with(|s| s.transition(*id, "a", Status::InProgress))
                .unwrap();
            if i % 2 == 0 {
                a.with(|s| s.update_application(*id, "a", |x| x.notes.push_str(" Đã xác minh.")))
                    .unwrap();
            }
        }

        // Push: cut the upstream at many offsets; every attempt fails, some after the server
        // stored a batch (the response is lost), then a clean sync finishes the job.
        let mut failures = 0;
        for offset in (0..40_000u64).step_by(1_733) {
            // Pooled keep-alive connections would dodge the cut: drop them first.
            link.cut_active();
            link.cut_next(Cut::upstream(offset));
            if a.sync().await.is_err() {
                failures += 1;
            }
        }
        // Pull on b: cut the downstream at many offsets.
        for offset in (0..40_000u64).step_by(2_111) {
            link.cut_active();
            link.cut_next(Cut::downstream(offset));
            if b.sync().await.is_err() {
                failures += 1;
            }
        }
        // Once a side has everything, later syncs are too small to reach the larger offsets.
        eprintln!("{url}: {failures} syncs cut");
        // How many of the 43 attempts a cut reaches depends on how fast the outbox drains
        // (11-19 seen): what matters is that cuts interrupted syncs, and that nothing is lost.
        assert!(
            failures >= 5,
            "{url}: cuts did not interrupt syncs ({failures})"
        );
        link.clear_pending_cuts();
        a.sync().await.unwrap();
        b.sync().await.unwrap();
        assert_eq!(a.with(|s| s.pending_count()).unwrap(), 0);
        assert_eq!(b.count(), 60, "{url}");
        for id in &ids {
            let (on_a, on_b) = (
                a.with(|s| s.get_application(*id)).unwrap(),
                b.with(|s| s.get_application(*id)).unwrap(),
            );
            assert_eq!(on_a, on_b, "{url}");
            // Applied once: the history on b has exactly a's changes (a also knows it signed
            // them).
            let on_a: Vec<_> = a
                .with(|s| s.history(*id))
                .unwrap()
                .into_iter()
                .map(|mut entry| {
                    assert!(entry.signed_by_this_device);
                    entry.signed_by_this_device = false;
                    entry
                })
                .collect();
            assert_eq!(on_a, b.with(|s| s.history(*id)).unwrap());
        }
        // The server holds each change once: 60 creations, 20 transitions, 10 note edits.
        let stats = server.storage.stats().await.unwrap();
        let commune = stats.iter().find(|s| s.code == COMMUNE_A).unwrap();
        assert_eq!((commune.documents, commune.changes), (60, 90), "{url}");
    }
}

async fn a_server_restart_mid_sync_loses_nothing(scheme: Scheme) {
    let dir = tempfile::tempdir().unwrap();
    let url = communesync_tests::sqlite_url(dir.path(), "restart.db");
    let server = TestServer::start_scheme(&url, scheme).await.unwrap();
    let codes = server.commune_with_codes(COMMUNE_A, 1).await.unwrap();
    let sub = tempfile::tempdir().unwrap();
    let config = SyncConfig {
        push_batch_bytes: 8 * 1024,
        max_attempts: 1,
        ..fast()
    };
    let a = tablet(
        sub.path(),
        "a",
        &server.url(),
        server.trust(),
        &codes[0],
        config,
    )
    .await;
    let mut sample = SampleData::new(3);
    a.intake(&mut sample, COMMUNE_A, 80);
    let tls = server.tls.clone();
    let (addr, storage) = server.stop().await;
    drop(storage);
    let err = a.sync().await.unwrap_err();
    assert!(matches!(err, SyncError::Offline(_)), "{err}");
    let server = TestServer::start_tls(&url, Default::default(), tls, Some(addr))
        .await
        .unwrap();
    let report = a.sync().await.unwrap();
    assert_eq!(a.with(|s| s.pending_count()).unwrap(), 0);
    assert_eq!(report.pushed_docs, 80);
    let stats = server.storage.stats().await.unwrap();
    assert_eq!(
        stats
            .iter()
            .find(|s| s.code == COMMUNE_A)
            .unwrap()
            .documents,
        80
    );
}

async fn credentials_are_checked_and_revocation_is_immediate(scheme: Scheme) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_scheme(
        &communesync_tests::sqlite_url(dir.path(), "auth.db"),
        scheme,
    )
    .await
    .unwrap();
    let codes = server.commune_with_codes(COMMUNE_A, 1).await.unwrap();
    let transport = server.transport();
    assert!(matches!(
        enroll(&transport, "WRONG-CODE-0000", DeviceId::new(), "x").await,
        Err(SyncError::Unauthorized)
    ));
    let sub = tempfile::tempdir().unwrap();
    let a = tablet(
        sub.path(),
        "a",
        &server.url(),
        server.trust(),
        &codes[0],
        fast(),
    )
    .await;
    // A code works once.
    assert!(matches!(
        enroll(&transport, &codes[0], DeviceId::new(), "again").await,
        Err(SyncError::Unauthorized)
    ));
    a.sync().await.unwrap();

    // A wrong token.
    let store = Arc::new(Mutex::new(
        DeviceStore::open(StoreConfig::new(sub.path().join("x.db"))).unwrap(),
    ));
    let stranger = SyncClient::new(server.transport(), store, "f".repeat(64), fast()).unwrap();
    assert!(matches!(
        stranger.sync(&|_| {}).await,
        Err(SyncError::Unauthorized)
    ));

    server.storage.revoke_device(a.device).await.unwrap();
    let mut sample = SampleData::new(4);
    a.intake(&mut sample, COMMUNE_A, 1);
    assert!(matches!(a.sync().await, Err(SyncError::Revoked)));
    let stats = server.storage.stats().await.unwrap();
    assert_eq!(
        stats
            .iter()
            .find(|s| s.code == COMMUNE_A)
            .unwrap()
            .documents,
        0
    );

    // Guessing codes is limited per source: past the allowed failures its guesses are
    // evaluated one at a time, and a burst beyond the waiting places is refused with 429.
    for _ in 0..10 {
        assert!(matches!(
            enroll(&transport, "GUES-SGUE-SSSS", DeviceId::new(), "x").await,
            Err(SyncError::Unauthorized)
        ));
    }
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let transport = server.transport();
        burst
            .spawn(async move { enroll(&transport, "GUES-SGUE-SSSS", DeviceId::new(), "x").await });
    }
    let mut limited = false;
    while let Some(result) = burst.join_next().await {
        match result.unwrap() {
            Err(SyncError::Rejected { status: 429, .. }) => {
                limited = true;
                break;
            }
            Err(SyncError::Unauthorized) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    burst.abort_all();
    assert!(
        limited,
        "no rate limit for a burst of guesses past the limit"
    );
}

/// A record outside the device's commune is refused for that record alone (`not_yours`, one
/// message whatever the reason), nothing of it is stored or reaches another commune, and the
/// device's own records beside it flow: its syncs keep completing.
async fn a_device_cannot_write_or_read_another_communes_records(scheme: Scheme) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_scheme(
        &communesync_tests::sqlite_url(dir.path(), "scope.db"),
        scheme,
    )
    .await
    .unwrap();
    let a_codes = server.commune_with_codes(COMMUNE_A, 1).await.unwrap();
    let b_codes = server.commune_with_codes(COMMUNE_B, 1).await.unwrap();
    let sub = tempfile::tempdir().unwrap();
    let a = tablet(
        sub.path(),
        "a",
        &server.url(),
        server.trust(),
        &a_codes[0],
        fast(),
    )
    .await;
    let b = tablet(
        sub.path(),
        "b",
        &server.url(),
        server.trust(),
        &b_codes[0],
        fast(),
    )
    .await;
    let mut sample = SampleData::new(5);
    let a_ids = a.intake(&mut sample, COMMUNE_A, 3);
    a.sync().await.unwrap();
    let documents = |commune: &'static str| {
        let storage = server.storage.clone();
        async move {
            storage
                .stats()
                .await
                .unwrap()
                .iter()
                .find(|s| s.code == commune)
                .map_or(0, |s| s.documents)
        }
    };

    // b creates a record claiming commune A beside one of its own: the first is refused, the
    // second stored.
    let claimed = b.intake(&mut sample, COMMUNE_A, 1);
    let own = b.intake(&mut sample, COMMUNE_B, 1);
    let answer = b
        .push_by_hand(&server, b.whole(&[claimed[0], own[0]]))
        .await;
    assert_eq!(refusals(&answer), vec![(0, "not_yours")]);
    assert!(answer.missing_deps.is_empty());
    assert!(
        server
            .storage
            .doc_registration(claimed[0])
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        server.storage.doc_registration(own[0]).await.unwrap(),
        Some((COMMUNE_B.to_owned(), RecordKind::Application))
    );
    // The honest client's sync completes too (the refused record does not stop it).
    let more = b.intake(&mut sample, COMMUNE_B, 1);
    b.sync().await.unwrap();
    assert!(
        server
            .storage
            .doc_registration(claimed[0])
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        server
            .storage
            .doc_registration(more[0])
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        (documents(COMMUNE_A).await, documents(COMMUNE_B).await),
        (3, 2)
    );

    // b obtains a copy of an A record (a lost tablet's data, say) and pushes an edit to it.
    let changes = a.with(|s| s.changes_since(a_ids[0], &[])).unwrap();
    let stored_before = server.storage.doc_changes(a_ids[0]).await.unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let c = tablet(
        fresh.path(),
        "c",
        &server.url(),
        server.trust(),
        &server.commune_with_codes(COMMUNE_B, 1).await.unwrap()[0],
        fast(),
    )
    .await;
    c.with(|s| {
        s.apply_remote_changes(a_ids[0], RecordKind::Application, &changes)?;
        s.transition(a_ids[0], "c", Status::Rejected).map(|_| ())
    })
    .unwrap();
    let own = c.intake(&mut sample, COMMUNE_B, 1);
    let answer = c.push_by_hand(&server, c.whole(&[own[0], a_ids[0]])).await;
    assert_eq!(refusals(&answer), vec![(1, "not_yours")]);
    // One message for every record outside the scope: it names nothing of the record.
    let message = &answer.refused[0].message;
    assert!(
        !message.contains(&a_ids[0].to_string()) && !message.contains(COMMUNE_A),
        "{message}"
    );
    assert!(
        server
            .storage
            .doc_registration(own[0])
            .await
            .unwrap()
            .is_some()
    );
    c.sync().await.unwrap();
    assert_eq!(
        server.storage.doc_changes(a_ids[0]).await.unwrap(),
        stored_before
    );
    assert_eq!(
        a.with(|s| s.get_application(a_ids[0])).unwrap().status,
        Status::Received
    );
    a.sync().await.unwrap();
    assert_eq!(
        a.with(|s| s.get_application(a_ids[0])).unwrap().status,
        Status::Received
    );
    // A's feed never carried B's records, nor B's feed A's.
    assert!(!b.with(|s| s.contains(a_ids[1])).unwrap());
    assert!(!a.with(|s| s.contains(own[0])).unwrap());
    assert!(!a.with(|s| s.contains(claimed[0])).unwrap());
}

async fn malformed_truncated_and_oversized_bodies_get_clear_4xx_and_change_nothing(scheme: Scheme) {
    let dir = tempfile::tempdir().unwrap();
    let server =
        TestServer::start_scheme(&communesync_tests::sqlite_url(dir.path(), "bad.db"), scheme)
            .await
            .unwrap();
    let codes = server.commune_with_codes(COMMUNE_A, 1).await.unwrap();
    let transport = server.transport();
    // The changes pushed are the enrolled device's own (the server takes no other).
    let sub = tempfile::tempdir().unwrap();
    let mut store = DeviceStore::open(StoreConfig::new(sub.path().join("s.db"))).unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    let token = enroll(&transport, &codes[0], store.device_id(), "raw")
        .await
        .unwrap()
        .token;
    // A fresh connection per request: the server closes a connection after refusing a body it
    // did not read (413), and a pooled keep-alive connection would race that close.
    let http = server
        .http_client_builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let post = |body: Vec<u8>, content_type: &'static str| {
        http.post(format!("{}/v1/sync", server.url()))
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let mut codec = DocCodec::new().unwrap();
    let mut sample = SampleData::new(6);
    let app = store
        .create_application("x", sample.application(COMMUNE_A, None))
        .unwrap();
    let changes = store.changes_since(app.id, &[]).unwrap();
    let request = |push: Vec<PushDoc>| SyncRequest {
        protocol: PROTOCOL_VERSION,
        device_time: 0,
        push,
        pull: None,
        catalogue_version: 0,
        pending_docs: 0,
        extensions: Default::default(),
    };
    let good = request(vec![PushDoc {
        id: Some(app.id),
        kind: RecordKind::Application,
        changes: changes.clone(),
    }])
    .encode(&mut codec)
    .unwrap();
    let bomb = codec.encode(&vec![0u8; 100 * 1024 * 1024]).unwrap();
    // Refusals of the whole request.
    let cases: Vec<(&str, Vec<u8>, &'static str, u16, &str)> = vec![
        ("garbage", b"hello".to_vec(), CONTENT_TYPE, 400, "malformed"),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            CONTENT_TYPE,
            400,
            "malformed",
        ),
        (
            "wrong content type",
            good.clone(),
            "application/json",
            415,
            "unsupported_media_type",
        ),
        ("decompression bomb", bomb, CONTENT_TYPE, 413, "too_large"),
        (
            "oversized",
            vec![0x28; 9 * 1024 * 1024],
            CONTENT_TYPE,
            413,
            "too_large",
        ),
    ];
    for (name, body, content_type, status, code) in cases {
        let oversized = body.len() > 8 * 1024 * 1024;
        let response = match post(body, content_type).await {
            Ok(response) => response,
            // Over the limit by its declared length: the server answers 413 before reading the
            // body and closes, and the client may still be writing it when the close arrives.
            Err(err) if oversized && err.is_request() => continue,
            Err(err) => panic!("{name}: {err}"),
        };
        assert_eq!(response.status().as_u16(), status, "{name}");
        let text = response.text().await.unwrap();
        assert!(
            text.contains(&format!("\"error\":\"{code}\"")),
            "{name}: {text}"
        );
    }
    let commune_a = || async {
        let stats = server.storage.stats().await.unwrap();
        let a = stats.iter().find(|s| s.code == COMMUNE_A).unwrap();
        (a.documents, a.changes)
    };
    assert_eq!(commune_a().await, (0, 0));

    // A corrupt change refuses its own document only. Changes travel without their checksum:
    // a corrupt one is one whose data is cut short of the length its header declares.
    let mut corrupt_change = changes[0].clone();
    corrupt_change.truncate(corrupt_change.len() / 2);
    let beside = store
        .create_application("x", sample.application(COMMUNE_A, None))
        .unwrap();
    let corrupt = request(vec![
        PushDoc {
            id: Some(app.id),
            kind: RecordKind::Application,
            changes: vec![corrupt_change],
        },
        PushDoc {
            id: Some(beside.id),
            kind: RecordKind::Application,
            changes: store.changes_since(beside.id, &[]).unwrap(),
        },
    ])
    .encode(&mut codec)
    .unwrap();
    let response = post(corrupt, CONTENT_TYPE).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer = SyncResponse::decode(
        &mut codec,
        &response.bytes().await.unwrap(),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(refusals(&answer), vec![(0, "malformed")]);
    assert!(answer.missing_deps.is_empty());
    assert!(
        server
            .storage
            .doc_registration(app.id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        server
            .storage
            .doc_registration(beside.id)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(commune_a().await, (1, 1));

    // The good body still goes through, and replaying it changes nothing more.
    for _ in 0..2 {
        assert_eq!(
            post(good.clone(), CONTENT_TYPE)
                .await
                .unwrap()
                .status()
                .as_u16(),
            200
        );
    }
    assert_eq!(commune_a().await, (2, 2));
}
