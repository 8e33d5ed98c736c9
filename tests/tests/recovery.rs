//! Recovery paths of issue 14 over real HTTP on SQLite and PostgreSQL: a tablet whose store is
//! restored from an older backup gets back its own records that it pushed after the backup.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use communesync_core::record::RecordId;
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, enroll};
use communesync_tests::{TestServer, test_databases};

const COMMUNE: &str = "DB-MUONGPHANG";

fn client(url: &str, path: &Path, token: &str) -> SyncClient<ReqwestTransport> {
    let store = DeviceStore::open(StoreConfig::new(path)).unwrap();
    SyncClient::new(
        ReqwestTransport::new(url).unwrap(),
        Arc::new(Mutex::new(store)),
        token.to_owned(),
        SyncConfig::default(),
    )
    .unwrap()
}

fn intake(
    client: &SyncClient<ReqwestTransport>,
    sample: &mut SampleData,
    n: usize,
) -> Vec<RecordId> {
    let mut store = client.store().lock().unwrap();
    (0..n)
        .map(|_| {
            store
                .create_application("lan", sample.application(COMMUNE, None))
                .unwrap()
                .id
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_restored_from_an_older_backup_gets_its_own_records_back() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "restore").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 2).await.unwrap();
        let sub = tempfile::tempdir().unwrap();
        let path = sub.path().join("tablet.db");
        let token = {
            let mut store = DeviceStore::open(StoreConfig::new(&path)).unwrap();
            store.import_catalogue(&SampleData::catalogue()).unwrap();
            let transport = ReqwestTransport::new(&server.url()).unwrap();
            enroll(&transport, &codes[0], store.device_id(), "tablet")
                .await
                .unwrap()
                .token
        };
        let mut sample = SampleData::new(8);
        // Before the backup: records synced.
        let tablet = client(&server.url(), &path, &token);
        let early = intake(&tablet, &mut sample, 5);
        tablet.sync(&|_| {}).await.unwrap();
        // A colleague's records arrive too.
        let colleague_path = sub.path().join("colleague.db");
        let colleague_token = {
            let mut store = DeviceStore::open(StoreConfig::new(&colleague_path)).unwrap();
            store.import_catalogue(&SampleData::catalogue()).unwrap();
            let transport = ReqwestTransport::new(&server.url()).unwrap();
            enroll(&transport, &codes[1], store.device_id(), "colleague")
                .await
                .unwrap()
                .token
        };
        let colleague = client(&server.url(), &colleague_path, &colleague_token);
        let theirs = intake(&colleague, &mut sample, 3);
        colleague.sync(&|_| {}).await.unwrap();
        tablet.sync(&|_| {}).await.unwrap();
        drop(tablet);
        let backup = sub.path().join("backup.db");
        std::fs::copy(&path, &backup).unwrap();

        // After the backup: more records, pushed, and a sync that moves the cursor on.
        let tablet = client(&server.url(), &path, &token);
        let late = intake(&tablet, &mut sample, 7);
        tablet.sync(&|_| {}).await.unwrap();
        let more_of_theirs = intake(&colleague, &mut sample, 2);
        colleague.sync(&|_| {}).await.unwrap();
        // A tablet asking from its own cursor gets only the others' changes.
        let report = tablet.sync(&|_| {}).await.unwrap();
        assert_eq!(report.pulled_changes, 2, "{url}: {report:?}");
        drop(tablet);

        // The tablet is lost; its store comes back from the older backup.
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        std::fs::copy(&backup, &path).unwrap();
        let restored = client(&server.url(), &path, &token);
        assert!(!restored.store().lock().unwrap().contains(late[0]).unwrap());
        restored.sync(&|_| {}).await.unwrap();
        let store = restored.store().lock().unwrap();
        for id in early
            .iter()
            .chain(&late)
            .chain(&theirs)
            .chain(&more_of_theirs)
        {
            assert!(
                store.contains(*id).unwrap(),
                "{url}: {id} missing after restore"
            );
        }
    }
}
