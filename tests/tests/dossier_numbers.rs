//! Dossier numbers over real HTTP on 127.0.0.1, on SQLite and PostgreSQL: two tablets take
//! dossiers offline with numbers, a sync refills a running-low block, a tablet out of numbers
//! falls back, every number is unique and found (on the tablets, by the admin API); and as the
//! attacker: a tablet that takes another's number, reuses one, or alters a number is refused.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use communesync_core::codec::DocCodec;
use communesync_core::numbering::NumberPolicy;
use communesync_core::protocol::{
    CONTENT_TYPE, Limits, PROTOCOL_VERSION, PushDoc, SyncRequest, SyncResponse,
};
use communesync_core::record::{
    Application, DeviceId, Record, RecordDoc, RecordId, RecordKind, Source,
};
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, enroll};
use communesync_server::http::ServerConfig;
use communesync_server::numbers::NumberConfig;
use communesync_tests::{TestServer, test_databases};

const COMMUNE: &str = "DB-MUONGPHANG";
const AGENCY: &str = "DBMUONGPHANG";

struct Tablet {
    client: SyncClient<ReqwestTransport>,
    store: Arc<Mutex<DeviceStore>>,
    device: DeviceId,
    token: String,
}

async fn tablet(dir: &std::path::Path, name: &str, url: &str, code: &str) -> Tablet {
    let mut store = DeviceStore::open(StoreConfig::new(dir.join(format!("{name}.db")))).unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    let device = store.device_id();
    let transport = ReqwestTransport::new(url).unwrap();
    let credentials = enroll(&transport, code, device, name).await.unwrap();
    store.set_enrolled_commune(Some(COMMUNE)).unwrap();
    let store = Arc::new(Mutex::new(store));
    let token = credentials.token.clone();
    let client = SyncClient::new(
        transport,
        store.clone(),
        credentials.token,
        SyncConfig::default(),
    )
    .unwrap();
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

    fn intake(&self, sample: &mut SampleData, n: usize) -> Vec<Application> {
        self.with(|s| {
            (0..n)
                .map(|_| {
                    s.create_application("lan", sample.application(COMMUNE, None))
                        .unwrap()
                })
                .collect()
        })
    }

    async fn sync(&self) {
        let report = self.client.sync(&|_| {}).await.unwrap();
        assert_eq!(report.refused, 0, "{report:?}");
    }

    fn blocks(&self) -> Vec<(u64, u64, u64)> {
        self.with(|s| {
            s.number_blocks()
                .unwrap()
                .into_iter()
                .map(|b| (b.block.id, b.block.first, b.block.last))
                .collect()
        })
    }

    /// Pushes `push` by hand (no pull) and returns the refusal codes by position.
    async fn push_by_hand(&self, server: &TestServer, push: Vec<PushDoc>) -> Vec<(u32, String)> {
        let mut codec = DocCodec::new().unwrap();
        let body = SyncRequest {
            protocol: PROTOCOL_VERSION,
            device_time: 0,
            push,
            pull: None,
            catalogue_version: u64::MAX,
            pending_docs: 0,
            extensions: Default::default(),
        }
        .encode(&mut codec)
        .unwrap();
        let response = reqwest::Client::new()
            .post(format!("{}/v1/sync", server.url()))
            .bearer_auth(&self.token)
            .header("content-type", CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let response = SyncResponse::decode(
            &mut codec,
            &response.bytes().await.unwrap(),
            &Limits::default(),
        )
        .unwrap();
        assert!(response.missing_deps.is_empty());
        response
            .refused
            .into_iter()
            .map(|r| (r.position, r.code))
            .collect()
    }
}

/// A whole new record made by `actor`, as a push.
fn crafted_record(app: &Application, actor: DeviceId) -> PushDoc {
    let mut doc = RecordDoc::create(&Record::Application(app.clone()), actor, "lan", 1).unwrap();
    PushDoc {
        id: Some(app.id),
        kind: RecordKind::Application,
        changes: doc
            .changes_since(&[])
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect(),
    }
}

/// One crafted change of the server's copy of `id`, made by `actor`.
async fn crafted_edit(
    server: &TestServer,
    id: RecordId,
    actor: DeviceId,
    edit: impl FnOnce(&mut Application),
) -> PushDoc {
    let changes = server.storage.doc_changes(id).await.unwrap();
    let (mut doc, _) =
        RecordDoc::from_changes(id, RecordKind::Application, &changes, actor, Source::Server)
            .unwrap();
    let before = doc.application().unwrap();
    let heads = doc.heads();
    let mut after = before.clone();
    edit(&mut after);
    assert!(doc.edit(&before, &after, "lan", 2).unwrap());
    PushDoc {
        id: Some(id),
        kind: RecordKind::Application,
        changes: doc
            .changes_since(&heads)
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect(),
    }
}

async fn admin_lookup(server: &TestServer, number: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        // Numbers are letters, digits and '-' here: nothing to escape.
        .get(format!("{}/v1/admin/records?number={number}", server.url()))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

fn number(app: &Application) -> &str {
    app.dossier_number.as_deref().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_offline_tablets_number_dossiers_refill_and_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "numbers").await.unwrap() {
        // Blocks of 6: a tablet is refilled when it has fewer than 3 numbers left.
        let config = ServerConfig {
            numbers: NumberConfig {
                policy: NumberPolicy {
                    min_block: 6,
                    max_block: 6,
                    days_ahead: 1,
                },
                ..NumberConfig::default()
            },
            ..communesync_tests::unlimited_rate_config()
        };
        let server = TestServer::start_with(&url, config, None).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 2).await.unwrap();
        let sub = tempfile::tempdir().unwrap();
        let a = tablet(sub.path(), "a", &server.url(), &codes[0]).await;
        let b = tablet(sub.path(), "b", &server.url(), &codes[1]).await;
        let mut sample = SampleData::new(16);
        let mut all: Vec<Application> = Vec::new();

        // Enrolled, never synced: a fallback on the device id, flagged.
        let first = a.intake(&mut sample, 1).remove(0);
        assert!(first.dossier_number_fallback);
        assert!(number(&first).contains(&format!("-U{}-0", a.device.0.simple())));
        all.push(first);

        // The first sync grants each tablet a block; the blocks never overlap.
        a.sync().await;
        b.sync().await;
        let (block_a, block_b) = (a.blocks(), b.blocks());
        assert_eq!(block_a.len(), 1);
        assert_eq!(block_b.len(), 1);
        assert!(block_a[0].2 < block_b[0].1 || block_b[0].2 < block_a[0].1);

        // Offline: A takes 4 (2 left, below the threshold), B takes 2.
        let taken_a = a.intake(&mut sample, 4);
        let taken_b = b.intake(&mut sample, 2);
        for (i, app) in taken_a.iter().enumerate() {
            assert!(!app.dossier_number_fallback);
            assert!(
                number(app).starts_with(&format!("{AGENCY}-")),
                "{}",
                number(app)
            );
            assert!(
                number(app).ends_with(&format!("-{:06}", block_a[0].1 + i as u64)),
                "{}",
                number(app)
            );
        }
        all.extend(taken_a.iter().cloned());
        all.extend(taken_b.iter().cloned());

        // A's sync refills it; B (4 left) gets nothing new.
        a.sync().await;
        b.sync().await;
        assert_eq!(a.blocks().len(), 2, "refilled during sync");
        assert_eq!(b.blocks().len(), 1);
        let state = a.with(|s| s.number_state().unwrap());
        assert_eq!(state.remaining, 2 + 6);

        // Offline again, A runs out of both blocks and falls back (intake never stops).
        let more = a.intake(&mut sample, 10);
        let fallbacks: Vec<&Application> =
            more.iter().filter(|a| a.dossier_number_fallback).collect();
        assert_eq!(fallbacks.len(), 2);
        let serial = block_a[0].0;
        assert!(
            number(fallbacks[0]).ends_with(&format!("-D{serial}-1")),
            "{}",
            number(fallbacks[0])
        );
        all.extend(more.iter().cloned());
        all.extend(b.intake(&mut sample, 3));

        // Both sync (twice: the second round reports what the first left).
        for _ in 0..2 {
            a.sync().await;
            b.sync().await;
        }

        // No two dossiers share a number; each is found on both tablets (exact and by text
        // search) and by the admin API, with the right record.
        let numbers: HashSet<&str> = all.iter().map(number).collect();
        assert_eq!(numbers.len(), all.len());
        for app in &all {
            for t in [&a, &b] {
                let found = t.with(|s| s.application_by_number(number(app)).unwrap());
                assert_eq!(found.map(|f| f.id), Some(app.id), "{}", number(app));
            }
            let hits = b.with(|s| s.search(number(app), 5).unwrap());
            assert!(hits.iter().any(|h| h.id == app.id), "{}", number(app));
            let (status, body) = admin_lookup(&server, number(app)).await;
            assert_eq!(status, 200, "{}: {body}", number(app));
            assert_eq!(body["record"], app.id.to_string());
            assert_eq!(body["application"]["dossier_number"], number(app));
        }
        assert_eq!(
            admin_lookup(&server, "DBMUONGPHANG-000000-999999").await.0,
            404
        );

        // The server's accounting matches the tablets': used and unused per block.
        let blocks = server.storage.number_blocks(None).await.unwrap();
        for block in &blocks {
            let holder = if block.device == a.device { &a } else { &b };
            let held = holder.with(|s| s.number_blocks().unwrap());
            let held = held.iter().find(|h| h.block.id == block.id).unwrap();
            assert!(block.acknowledged);
            assert_eq!(held.next, block.next, "block {}", block.id);
        }

        // As the attacker (B, by hand): another tablet's block number, a number another
        // record has, a fallback in another device's name, and an edit that alters a number.
        let mut stolen = taken_b[0].clone();
        stolen.id = RecordId::new();
        stolen.created_by.device = b.device.0;
        let mut theirs = stolen.clone();
        let unused_a = a.with(|s| {
            let held = s.number_blocks().unwrap();
            let last = held.last().unwrap();
            last.block.last
        });
        theirs.dossier_number = Some(format!("{AGENCY}-261206-{unused_a:06}"));
        let mut reused = stolen.clone();
        reused.id = RecordId::new();
        let mut their_fallback = stolen.clone();
        their_fallback.id = RecordId::new();
        their_fallback.dossier_number = Some(number(fallbacks[0]).replace("-1", "-77"));
        their_fallback.dossier_number_fallback = true;
        let alter = crafted_edit(&server, taken_b[1].id, b.device, |app| {
            app.dossier_number = Some(format!("{AGENCY}-261206-000999"));
        })
        .await;
        let refusals = b
            .push_by_hand(
                &server,
                vec![
                    crafted_record(&theirs, b.device),
                    crafted_record(&reused, b.device),
                    crafted_record(&their_fallback, b.device),
                    alter,
                ],
            )
            .await;
        assert_eq!(
            refusals,
            vec![
                (0, "dossier_number".to_owned()),
                (1, "dossier_number".to_owned()),
                (2, "dossier_number".to_owned()),
                (3, "immutable_field".to_owned()),
            ],
            "{url}"
        );
        // Nothing of it reached the server.
        let (_, body) = admin_lookup(&server, theirs.dossier_number.as_deref().unwrap()).await;
        assert_ne!(body["record"], theirs.id.to_string());
        assert_eq!(
            server
                .storage
                .dossier_number(number(&taken_b[1]))
                .await
                .unwrap()
                .map(|(id, _)| id),
            Some(taken_b[1].id)
        );
        server.stop().await;
    }
}
