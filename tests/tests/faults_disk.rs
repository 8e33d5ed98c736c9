//! A full disk on either side: a clear error, nothing corrupted or half-applied, and sync goes on
//! once space returns.
//!
//! - Tablet: the store's quota ([`StoreConfig::max_size_bytes`], what a tablet app sets to leave
//!   room for the rest of the device) stands in for a full disk. Local edits fail with
//!   [`Error::StorageFull`]; a pull that does not fit fails the sync with that error, keeping the
//!   batches applied before it; reopened with room, the store is intact and the sync completes.
//! - Server: its SQLite file on a small tmpfs mounted by the test (real `ENOSPC`; needs root or
//!   CAP_SYS_ADMIN, otherwise the test says so and skips that part unless
//!   `COMMUNESYNC_REQUIRE_TMPFS` is set). Pushes that do not fit fail with 507 storage_full after the
//!   client's retries; nothing the tablet counts as acknowledged is missing and no record is
//!   half-stored; after the tmpfs grows, the same tablet's next sync pushes the rest and a second
//!   tablet pulls everything.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use communesync_core::Error;
use communesync_core::record::RecordId;
use communesync_core::sample::SampleData;
use communesync_core::store::{ApplicationQuery, DeviceStore, EncryptionKey, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, SyncError, enroll};
use communesync_tests::TestServer;
use communesync_tests::process::ServerContents;

const COMMUNE: &str = "DB-MUONGPHANG";
const KEY: [u8; 32] = [8; 32];

fn config(path: &Path, quota: Option<u64>) -> StoreConfig {
    let mut config = StoreConfig::new(path).encrypted(EncryptionKey::new(KEY));
    config.max_size_bytes = quota;
    config
}

/// Bytes the store's files take now.
fn store_bytes(path: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .map(|suffix| {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            std::fs::metadata(name).map_or(0, |m| m.len())
        })
        .sum()
}

fn count(store: &DeviceStore) -> u64 {
    store
        .counts_by_status()
        .unwrap()
        .iter()
        .map(|c| c.count)
        .sum()
}

fn all_ids(store: &DeviceStore) -> HashSet<RecordId> {
    let mut ids = HashSet::new();
    let mut offset = 0;
    loop {
        let page = store
            .query_applications(&ApplicationQuery {
                limit: 500,
                offset,
                ..ApplicationQuery::default()
            })
            .unwrap();
        ids.extend(page.items.iter().map(|a| a.id));
        match page.next_offset {
            Some(next) if next > offset => offset = next,
            _ => return ids,
        }
    }
}

#[test]
fn a_full_tablet_store_refuses_edits_clearly_and_keeps_everything_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tablet.db");
    let mut store = DeviceStore::open(config(&path, None)).unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    drop(store);
    let quota = store_bytes(&path) + 200 * 1024;
    let mut store = DeviceStore::open(config(&path, Some(quota))).unwrap();
    let mut sample = SampleData::new(11);
    let mut created = Vec::new();
    let err = loop {
        assert!(created.len() < 10_000, "a {quota}-byte quota never filled");
        match store.create_application("lan", sample.application(COMMUNE, None)) {
            Ok(app) => created.push(app.id),
            Err(err) => break err,
        }
    };
    assert!(matches!(err, Error::StorageFull), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the storage is full; the edit was not saved"
    );
    assert!(created.len() > 10, "only {} fitted", created.len());
    // Edits of existing records fail the same way or succeed; either way the store stays whole.
    let first = created[0];
    let mut noted = false;
    for _ in 0..200 {
        match store.update_application(first, "lan", |a| a.notes.push_str(&"x".repeat(2000))) {
            Ok(_) => noted = true,
            Err(Error::StorageFull) => break,
            Err(other) => panic!("unexpected error on a full store: {other:?}"),
        }
    }
    assert_eq!(store.integrity_check().unwrap(), "ok");
    assert_eq!(count(&store), created.len() as u64);
    let notes_before = store.get_application(first).unwrap().notes;
    drop(store);

    // Space returns (the quota is lifted): everything committed is there, and work goes on.
    let mut store = DeviceStore::open(config(&path, None)).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    assert_eq!(
        all_ids(&store),
        created.iter().copied().collect::<HashSet<_>>()
    );
    assert_eq!(store.get_application(first).unwrap().notes, notes_before);
    for id in &created {
        store.get_application(*id).unwrap();
    }
    store
        .create_application("lan", sample.application(COMMUNE, None))
        .unwrap();
    eprintln!(
        "faults_disk[tablet edits]: {} applications fitted in a {quota}-byte quota, then \
         StorageFull (notes grew before it: {noted}); all intact after lifting it",
        created.len()
    );
}

struct Tablet {
    client: SyncClient<ReqwestTransport>,
    store: Arc<Mutex<DeviceStore>>,
}

async fn tablet(path: &Path, quota: Option<u64>, url: &str, code: &str) -> (Tablet, String) {
    let mut store = DeviceStore::open(config(path, quota)).unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    let transport = ReqwestTransport::new(url).unwrap();
    let credentials = enroll(&transport, code, store.device_id(), "tablet")
        .await
        .unwrap();
    let token = credentials.token.clone();
    (client(store, url, &token), token)
}

fn client(store: DeviceStore, url: &str, token: &str) -> Tablet {
    let store = Arc::new(Mutex::new(store));
    let config = SyncConfig {
        push_batch_bytes: 32 * 1024,
        pull_batch_bytes: 32 * 1024,
        max_attempts: 2,
        initial_backoff: std::time::Duration::from_millis(20),
        max_backoff: std::time::Duration::from_millis(100),
        ..SyncConfig::default()
    };
    Tablet {
        client: SyncClient::new(
            ReqwestTransport::new(url).unwrap(),
            store.clone(),
            token,
            config,
        )
        .unwrap(),
        store,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_into_a_full_tablet_fails_clearly_and_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&communesync_tests::sqlite_url(dir.path(), "server.db"))
        .await
        .unwrap();
    let codes = server.commune_with_codes(COMMUNE, 2).await.unwrap();
    let (a, _) = tablet(&dir.path().join("a.db"), None, &server.url(), &codes[0]).await;
    let mut sample = SampleData::new(12);
    {
        let mut store = a.store.lock().unwrap();
        for _ in 0..400 {
            store
                .create_application("lan", sample.application(COMMUNE, None))
                .unwrap();
        }
    }
    a.client.sync(&|_| {}).await.unwrap();

    let b_path = dir.path().join("b.db");
    let mut probe = DeviceStore::open(config(&b_path, None)).unwrap();
    probe.import_catalogue(&SampleData::catalogue()).unwrap();
    drop(probe);
    let quota = store_bytes(&b_path) + 150 * 1024;
    let (b, token) = tablet(&b_path, Some(quota), &server.url(), &codes[1]).await;
    let err = b.client.sync(&|_| {}).await.unwrap_err();
    assert!(
        matches!(err, SyncError::Store(Error::StorageFull)),
        "expected the store's StorageFull, got {err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the storage is full; the edit was not saved"
    );
    let (partial, cursor) = {
        let store = b.store.lock().unwrap();
        assert_eq!(store.integrity_check().unwrap(), "ok");
        (count(&store), store.sync_cursor().unwrap())
    };
    assert!(partial < 400, "everything fitted in {quota} bytes");
    drop(b);

    // Space returns: the same store, reopened without the quota, resumes from its cursor.
    let store = DeviceStore::open(config(&b_path, None)).unwrap();
    assert_eq!(count(&store), partial);
    assert_eq!(store.sync_cursor().unwrap(), cursor);
    let b = client(store, &server.url(), &token);
    let report = b.client.sync(&|_| {}).await.unwrap();
    assert_eq!(report.pulled_docs, 400 - partial, "{report:?}");
    let mut b_store = b.store.lock().unwrap();
    let mut a_store = a.store.lock().unwrap();
    assert_eq!(all_ids(&b_store), all_ids(&a_store));
    for id in all_ids(&a_store) {
        assert_eq!(b_store.heads(id).unwrap(), a_store.heads(id).unwrap());
    }
    assert_eq!(b_store.integrity_check().unwrap(), "ok");
    eprintln!(
        "faults_disk[tablet pull]: {partial} of 400 applications pulled into a {quota}-byte \
         quota before StorageFull, the rest after lifting it, identical to the pusher"
    );
}

/// A tmpfs mounted for the test; unmounted when dropped.
struct Tmpfs {
    dir: std::path::PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, kib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    fn resize(&self, kib: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={kib}k")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success(), "remount failed");
    }

    fn used_kib(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum::<u64>()
            / 1024
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_disk_refuses_pushes_cleanly_and_sync_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), 64 * 1024) else {
        let note = "faults_disk[server]: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)";
        if std::env::var_os("COMMUNESYNC_REQUIRE_TMPFS").is_some() {
            panic!("{note}");
        }
        eprintln!("{note}: skipped");
        return;
    };
    let server = TestServer::start(&format!("sqlite:{}", disk.dir.join("server.db").display()))
        .await
        .unwrap();
    let codes = server.commune_with_codes(COMMUNE, 2).await.unwrap();
    let (a, _) = tablet(&dir.path().join("a.db"), None, &server.url(), &codes[0]).await;
    let mut sample = SampleData::new(13);
    let intake = |n: usize, sample: &mut SampleData| {
        let mut store = a.store.lock().unwrap();
        for _ in 0..n {
            store
                .create_application("lan", sample.application(COMMUNE, None))
                .unwrap();
        }
    };
    intake(30, &mut sample);
    a.client.sync(&|_| {}).await.unwrap();

    // The disk fills: a little room above what the database takes now.
    let used = disk.used_kib();
    disk.resize(used + 96);
    intake(800, &mut sample);
    let err = a.client.sync(&|_| {}).await.unwrap_err();
    // Named as what it is (507 storage_full), not a generic internal error.
    assert!(
        matches!(&err, SyncError::Server(message) if message.starts_with("507 storage_full")),
        "expected 507 storage_full from the server, got {err:?}"
    );
    let pending = a.store.lock().unwrap().pending_count().unwrap();
    assert!(pending > 0, "everything fitted");

    // Nothing half-stored, nothing acknowledged lost: every record on the server has a whole
    // history equal to the tablet's, and every record the tablet no longer has pending is there.
    let contents = ServerContents::read(server.storage.as_ref(), COMMUNE)
        .await
        .unwrap();
    let on_server: HashSet<RecordId> = contents.docs.keys().copied().collect();
    {
        let mut store = a.store.lock().unwrap();
        let all = all_ids(&store);
        assert!(on_server.is_subset(&all));
        assert!(
            on_server.len() as u64 >= all.len() as u64 - pending,
            "{} on the server, {} acknowledged",
            on_server.len(),
            all.len() as u64 - pending
        );
        for id in &on_server {
            let mut heads = store.heads(*id).unwrap();
            heads.sort();
            assert_eq!(contents.heads(*id).unwrap(), Some(heads));
        }
    }
    let stored_while_full = on_server.len();

    // Space returns.
    disk.resize(64 * 1024);
    let report = a.client.sync(&|_| {}).await.unwrap();
    assert_eq!(report.pending_docs, 0);
    let (b, _) = tablet(&dir.path().join("b.db"), None, &server.url(), &codes[1]).await;
    b.client.sync(&|_| {}).await.unwrap();
    let a_ids = all_ids(&a.store.lock().unwrap());
    assert_eq!(a_ids.len(), 830);
    assert_eq!(all_ids(&b.store.lock().unwrap()), a_ids);
    let contents = ServerContents::read(server.storage.as_ref(), COMMUNE)
        .await
        .unwrap();
    assert_eq!(contents.docs.len(), 830);
    assert_eq!(contents.feed_entries, contents.changes());
    eprintln!(
        "faults_disk[server]: tmpfs full at {} KiB; push refused with {err}; {stored_while_full} \
         of 830 records stored before, none half-stored; all 830 after the disk grew",
        used + 96
    );
    drop(server);
    drop(disk);
}
