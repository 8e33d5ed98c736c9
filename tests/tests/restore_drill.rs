//! The restore drill, end to end over real HTTP with the real `communesync` binary: a server on
//! SQLite, tablets syncing; `communesync admin backup` while they sync; more work acknowledged
//! after the backup; the server stopped, `admin restore` of the backup, the server started again.
//! The server now lacks what it acknowledged after the backup. Asserted: the restored server
//! sends a new store epoch, the tablets notice it and push again what they authored (the server
//! takes a change only from its author), an edit on top of another tablet's lost change waits
//! (pending, not set aside) until that author has synced, and everything converges: no tablet
//! stuck or pending, every change any tablet holds is on the server, every tablet holds exactly
//! the server's records with the same heads. Also: the backup file is mode 0600 with no temporary
//! file left beside it, and `admin backup` on PostgreSQL writes nothing and explains.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use communesync_core::record::RecordId;
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, EncryptionKey, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, enroll};
use communesync_server::http;
use communesync_server::storage::{self, Scope};
use communesync_tests::now_ms;
use communesync_tests::process::{ServerContents, ServerProcess, communesync_binary, differences};

const COMMUNE: &str = "RESTORE-DRILL";

struct Tablet {
    name: String,
    store: Arc<Mutex<DeviceStore>>,
    client: SyncClient<ReqwestTransport>,
}

impl Tablet {
    async fn sync_until_idle(&self) {
        for _ in 0..5 {
            let report = self.client.sync(&|_| {}).await.unwrap();
            assert_eq!(report.refused, 0, "{}: refused {report:?}", self.name);
            if report.pending_docs == 0 {
                return;
            }
        }
        panic!("{}: still pending after 5 syncs", self.name);
    }

    fn create(&self, sample: &mut SampleData, n: usize) -> Vec<RecordId> {
        let mut store = self.store.lock().unwrap();
        (0..n)
            .map(|_| {
                store
                    .create_application("officer", sample.application(COMMUNE, None))
                    .unwrap()
                    .id
            })
            .collect()
    }

    fn note(&self, id: RecordId, text: &str) {
        self.store
            .lock()
            .unwrap()
            .update_application(id, &self.name, |a| a.notes.push_str(text))
            .unwrap();
    }
}

fn admin(binary: &Path, database: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary)
        .args(["admin", "--database", database])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

async fn new_tablet(dir: &Path, name: &str, url: &str, code: &str) -> Tablet {
    let mut store = DeviceStore::open(
        StoreConfig::new(dir.join(format!("{name}.db"))).encrypted(EncryptionKey::new([9; 32])),
    )
    .unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    let transport = ReqwestTransport::new(url).unwrap();
    let credentials = enroll(&transport, code, store.device_id(), name)
        .await
        .unwrap();
    let store = Arc::new(Mutex::new(store));
    let config = SyncConfig {
        // Small batches: the re-push after the restore takes several rounds.
        push_batch_bytes: 8 * 1024,
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..SyncConfig::default()
    };
    let client = SyncClient::new(transport, store.clone(), credentials.token, config).unwrap();
    Tablet {
        name: name.to_owned(),
        store,
        client,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tablets_give_back_what_a_restored_server_lost() {
    let binary = communesync_binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("server.db");
    let database = format!("sqlite:{}", db_path.display());

    // The schema and the enrollment codes, before the server starts.
    let codes: Vec<String> = {
        let storage = storage::open(&database).await.unwrap();
        storage.create_commune(COMMUNE, COMMUNE).await.unwrap();
        let mut codes = Vec::new();
        for _ in 0..3 {
            let (code, _) = http::issue_enrollment_code(
                storage.as_ref(),
                &Scope::Commune(COMMUNE.to_owned()),
                Duration::from_secs(3600),
                now_ms(),
            )
            .await
            .unwrap();
            codes.push(code);
        }
        codes
    };
    let server = ServerProcess::start(&binary, &database, None, dir.path()).unwrap();
    let url = server.url();
    let a = Arc::new(new_tablet(dir.path(), "a", &url, &codes[0]).await);
    let b = Arc::new(new_tablet(dir.path(), "b", &url, &codes[1]).await);
    let c = Arc::new(new_tablet(dir.path(), "c", &url, &codes[2]).await);
    let mut sample = SampleData::new(19);

    // Before the backup: everyone's work, synced everywhere.
    let a_before = a.create(&mut sample, 30);
    let b_before = b.create(&mut sample, 30);
    for tablet in [&a, &b, &c, &a, &b] {
        tablet.sync_until_idle().await;
    }

    // The backup, while a tablet keeps creating and syncing.
    let busy = Arc::new(AtomicBool::new(true));
    let syncing = {
        let (c, busy) = (c.clone(), busy.clone());
        tokio::spawn(async move {
            let mut sample = SampleData::new(7);
            let mut rounds = 0;
            while busy.load(Ordering::SeqCst) && rounds < 1_000 {
                c.create(&mut sample, 2);
                c.sync_until_idle().await;
                rounds += 1;
            }
            rounds
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let backup_file = dir.path().join("backups").join("server-backup.db");
    std::fs::create_dir_all(backup_file.parent().unwrap()).unwrap();
    let backed_up = tokio::task::spawn_blocking({
        let (binary, database, file) = (binary.clone(), database.clone(), backup_file.clone());
        move || admin(&binary, &database, &["backup", file.to_str().unwrap()])
    })
    .await
    .unwrap();
    busy.store(false, Ordering::SeqCst);
    let rounds = syncing.await.unwrap();
    assert!(
        backed_up.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&backed_up.stderr)
    );
    assert!(rounds > 0, "no sync ran during the backup");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "backup mode {mode:o}");
        let beside: Vec<_> = std::fs::read_dir(backup_file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(beside.len(), 1, "files beside the backup: {beside:?}");
    }

    // After the backup: acknowledged work the restored server will lack. A's and B's new records
    // and notes on older ones (B's on A's records too, one of them new); C pulls all of it.
    let a_after = a.create(&mut sample, 12);
    a.note(a_before[0], " after-backup-a");
    b.create(&mut sample, 12);
    b.note(b_before[1], " after-backup-b");
    b.note(a_before[2], " b-on-a");
    for tablet in [&a, &b, &c, &a, &b] {
        tablet.sync_until_idle().await;
    }
    b.note(a_after[0], " b-on-a-after");
    for tablet in [&b, &c, &a] {
        tablet.sync_until_idle().await;
    }

    // The disaster: the server's database replaced by the backup.
    let addr = server.addr;
    let epoch_before = {
        let storage = storage::open(&database).await.unwrap();
        storage.store_epoch().await.unwrap()
    };
    server.kill().unwrap();
    let restored = admin(
        &binary,
        &database,
        &["restore", backup_file.to_str().unwrap()],
    );
    assert!(
        restored.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    {
        let storage = storage::open(&database).await.unwrap();
        assert_ne!(storage.store_epoch().await.unwrap(), epoch_before);
        let held = ServerContents::read(storage.as_ref(), COMMUNE)
            .await
            .unwrap();
        assert!(
            a_after.iter().all(|id| !held.docs.contains_key(id)),
            "the restored server already holds post-backup records: the drill tests nothing"
        );
    }
    let server = ServerProcess::start(&binary, &database, Some(addr), dir.path()).unwrap();

    // B goes on working before its first sync with the restored server, and syncs first: its
    // note on A's lost record waits for A.
    let b_new = b.create(&mut sample, 3);
    b.note(a_before[3], " after-restore-b");
    let first = b.client.sync(&|_| {}).await.unwrap();
    assert_eq!(first.refused, 0, "{first:?}");
    assert_eq!(
        first.pending_docs, 1,
        "B's edit on A's lost record should wait for A: {first:?}"
    );
    for tablet in [&c, &a, &b, &c, &a] {
        tablet.sync_until_idle().await;
    }

    let storage = storage::open(&database).await.unwrap();
    let held = ServerContents::read(storage.as_ref(), COMMUNE)
        .await
        .unwrap();
    for id in a_after.iter().chain(&b_new) {
        assert!(held.docs.contains_key(id), "{id} is not on the server");
    }
    for tablet in [&a, &b, &c] {
        let mut store = tablet.store.lock().unwrap();
        // Same records, same heads (so every change it holds is on the server), nothing pending.
        let problems = differences(&tablet.name, &mut store, &held).unwrap();
        assert!(problems.is_empty(), "not converged: {problems:#?}");
        assert_eq!(
            store.server_store_epochs().unwrap().len(),
            2,
            "{}: the restore was not noticed once",
            tablet.name
        );
        let record = store.get_application(a_before[0]).unwrap();
        assert!(
            record.notes.contains("after-backup-a"),
            "{}: A's note lost",
            tablet.name
        );
        let record = store.get_application(a_after[0]).unwrap();
        assert!(
            record.notes.contains("b-on-a-after"),
            "{}: B's note on A's lost record lost",
            tablet.name
        );
    }
    drop(server);
}

#[tokio::test]
async fn backup_of_a_postgres_database_explains_and_writes_nothing() {
    let binary = communesync_binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("never.db");
    let output = admin(
        &binary,
        "host=127.0.0.1 port=1 dbname=none",
        &["backup", file.to_str().unwrap()],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pg_dump") && stderr.contains("mark-restored"),
        "{stderr}"
    );
    assert!(!file.exists());
}
