//! The real `communesync serve` SIGKILLed in the middle of an attachment chunk, twice, while a
//! tablet uploads a large attachment through the link emulator (a paced loopback link, so the
//! kill lands while a chunk's bytes are on their way); restarted each time on the same database
//! and address. On SQLite, and on PostgreSQL when `COMMUNESYNC_TEST_DATABASE_URL` names one.
//!
//! What is checked, after each kill: the server holds exactly the chunks it answered (or one
//! more, stored before its answer was lost), fewer than it had bytes of (the chunk in flight was
//! not stored); the next upload resumes at that chunk (its first answer is the next chunk); after
//! the last restart the upload sends only what the server lacks, and the content is whole and
//! matches its SHA-256, read back from the database and downloaded by another tablet.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use communesync_core::attachment::{NewAttachment, sha256_hex};
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_core::sync::attachments::{AttachmentPolicy, DEFAULT_CHUNK_SIZE};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, enroll};
use communesync_server::http;
use communesync_server::link::{LinkProfile, PoorLink};
use communesync_server::storage::{self, Scope, StorageError};
use communesync_tests::process::{ServerProcess, communesync_binary};
use communesync_tests::{now_ms, test_databases};

const COMMUNE: &str = "DB-MUONGPHANG";
/// Chunks of the attachment (64 KiB each), the last one short.
const CHUNKS: u64 = 20;
/// The chunk in whose middle each kill lands.
const KILL_AT: [u64; 2] = [6, 14];
/// Upstream pace of the link, bytes/s: a chunk takes about 160 ms, so the kill's timing has
/// room to land mid-chunk.
const UP_RATE: u64 = 400_000;
/// Bytes of one request's head and answer allowed on top of its chunk.
const HEAD: u64 = 2_048;

async fn codes(url: &str, count: usize) -> Vec<String> {
    let storage = storage::open(url).await.unwrap();
    match storage.create_commune(COMMUNE, COMMUNE).await {
        Ok(()) | Err(StorageError::AlreadyExists) => {}
        Err(err) => panic!("create commune: {err}"),
    }
    let mut codes = Vec::new();
    for _ in 0..count {
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
}

struct Tablet {
    store: Arc<Mutex<DeviceStore>>,
    token: String,
    url: String,
}

impl Tablet {
    async fn enroll(dir: &std::path::Path, name: &str, url: &str, code: &str) -> Tablet {
        let mut store =
            DeviceStore::open(StoreConfig::new(dir.join(format!("{name}.db")))).unwrap();
        store.import_catalogue(&SampleData::catalogue()).unwrap();
        let transport = ReqwestTransport::new(url).unwrap();
        let credentials = enroll(&transport, code, store.device_id(), name)
            .await
            .unwrap();
        Tablet {
            store: Arc::new(Mutex::new(store)),
            token: credentials.token,
            url: url.to_owned(),
        }
    }

    /// A new client (a connection pool of its own: none survives a kill).
    fn client(&self) -> SyncClient<ReqwestTransport> {
        SyncClient::new(
            ReqwestTransport::new(&self.url).unwrap(),
            self.store.clone(),
            self.token.clone(),
            SyncConfig::default(),
        )
        .unwrap()
    }
}

async fn start(
    binary: &std::path::Path,
    url: &str,
    addr: Option<std::net::SocketAddr>,
    dir: &std::path::Path,
) -> ServerProcess {
    let (binary, url, dir) = (binary.to_owned(), url.to_owned(), dir.to_owned());
    tokio::task::spawn_blocking(move || ServerProcess::start(&binary, &url, addr, &dir))
        .await
        .unwrap()
        .unwrap()
}

/// Chunks the server holds of the content, read from its database.
async fn received(url: &str, hash: [u8; 32]) -> (u32, bool) {
    let storage = storage::open(url).await.unwrap();
    storage
        .attachment_state(COMMUNE, hash)
        .await
        .unwrap()
        .map_or((0, false), |s| (s.received, s.complete))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_chunk_resumes_at_the_last_whole_chunk() {
    let binary = tokio::task::spawn_blocking(communesync_binary)
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "attachment_server_kill")
        .await
        .unwrap()
    {
        let codes = codes(&url, 2).await;
        let run = tempfile::tempdir().unwrap();
        let mut server = start(&binary, &url, None, run.path()).await;
        let addr = server.addr;
        let link = PoorLink::start(addr, LinkProfile::loopback().with_rates(0, UP_RATE))
            .await
            .unwrap();
        let link_url = format!("http://{}", link.addr());
        let uploader = Tablet::enroll(run.path(), "uploader", &link_url, &codes[0]).await;
        let reader = Tablet::enroll(run.path(), "reader", &server.url(), &codes[1]).await;

        let chunk = u64::from(DEFAULT_CHUNK_SIZE);
        let size = (CHUNKS - 1) * chunk + 4_321;
        let data: Vec<u8> = (0..size).map(|i| (i * 37 % 251) as u8 ^ 0x3c).collect();
        let hash_hex = sha256_hex(&data);
        let mut hash = [0u8; 32];
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hash_hex[2 * i..2 * i + 2], 16).unwrap();
        }
        {
            let mut store = uploader.store.lock().unwrap();
            let id = store
                .create_application("uploader", SampleData::new(3).application(COMMUNE, None))
                .unwrap()
                .id;
            let new = NewAttachment {
                mime: "application/pdf".into(),
                caption: "land plot survey".into(),
                ..Default::default()
            };
            store.attach_bytes(id, "uploader", new, &data).unwrap();
        }
        uploader.client().sync(&|_| {}).await.unwrap();
        let policy = AttachmentPolicy {
            metered: false,
            ..Default::default()
        };

        let mut resume_at = 0u64;
        for (kill, kill_at) in KILL_AT.into_iter().enumerate() {
            let start_bytes = link.bytes_up();
            // Half-way through chunk `kill_at` of this attempt (which starts at `resume_at`).
            let target = start_bytes + (kill_at - resume_at) * (chunk + HEAD / 4) + chunk / 2;
            let answered = Arc::new(Mutex::new(Vec::new()));
            let upload = {
                let client = uploader.client();
                let policy = policy.clone();
                let answered = answered.clone();
                tokio::spawn(async move {
                    client
                        .upload_attachments(&policy, &|p| {
                            answered.lock().unwrap().push(p.done_bytes)
                        })
                        .await
                })
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            while link.bytes_up() < target {
                assert!(
                    !upload.is_finished(),
                    "{url}: kill {kill}: the upload ended before the kill"
                );
                assert!(Instant::now() < deadline, "{url}: kill {kill}: no progress");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let log = server.log_text();
            server
                .kill()
                .unwrap_or_else(|e| panic!("{url}: kill {kill}: {e}; log: {log}"));
            let sent = link.bytes_up() - start_bytes;
            let outcome = upload.await.unwrap();
            assert!(outcome.is_err(), "{url}: kill {kill}: {outcome:?}");
            server = start(&binary, &url, Some(addr), run.path()).await;

            let answered = answered.lock().unwrap().clone();
            // The attempt went on from the server's last whole chunk: its first answer is the
            // chunk after it.
            assert_eq!(
                answered.first().copied(),
                Some(((resume_at + 1) * chunk).min(size)),
                "{url}: kill {kill}: {answered:?}"
            );
            let acked = answered.last().copied().unwrap_or(0) / chunk;
            let (held, complete) = received(&url, hash).await;
            let held = u64::from(held);
            eprintln!(
                "{url}: kill {kill}: {sent} bytes up in the attempt, {acked} chunks answered, \
                 {held} held after the restart"
            );
            assert!(!complete, "{url}: kill {kill}");
            // What was answered is kept; at most one chunk more was stored (its answer lost).
            assert!(
                acked <= held && held <= acked + 1,
                "{url}: kill {kill}: {acked} answered, {held} held"
            );
            // The server had bytes of the next chunk when it died, and did not keep them.
            let whole = (held - resume_at) * (chunk + HEAD);
            assert!(
                sent > whole,
                "{url}: kill {kill}: {sent} bytes sent, {whole} for the chunks held: the kill \
                 was not mid-chunk"
            );
            assert!(
                held >= kill_at.saturating_sub(1),
                "{url}: kill {kill}: {held}"
            );
            resume_at = held;
        }

        // After the last restart the upload resumes at the last whole chunk and sends only the
        // rest.
        let start_bytes = link.bytes_up();
        let answered = Mutex::new(Vec::new());
        let report = uploader
            .client()
            .upload_attachments(&policy, &|p| answered.lock().unwrap().push(p.done_bytes))
            .await
            .unwrap();
        assert_eq!(report.completed, vec![hash_hex.clone()], "{url}");
        let answered = answered.into_inner().unwrap();
        assert_eq!(
            answered.first().copied(),
            Some(((resume_at + 1) * chunk).min(size)),
            "{url}: {answered:?}"
        );
        let sent = link.bytes_up() - start_bytes;
        let rest = size - resume_at * chunk;
        assert!(
            sent >= rest && sent <= rest + (CHUNKS - resume_at + 1) * HEAD,
            "{url}: {sent} bytes sent for the {rest} the server lacked"
        );
        assert_eq!(report.chunk_bytes, rest, "{url}");

        // Whole and hash-correct in the database...
        let storage = storage::open(&url).await.unwrap();
        let state = storage
            .attachment_state(COMMUNE, hash)
            .await
            .unwrap()
            .unwrap();
        assert!(state.complete, "{url}");
        let mut whole = Vec::new();
        for index in 0..CHUNKS as u32 {
            let bytes = storage
                .attachment_chunk(COMMUNE, hash, index)
                .await
                .unwrap()
                .unwrap();
            whole.extend_from_slice(&bytes);
        }
        assert_eq!(whole.len() as u64, size, "{url}");
        assert_eq!(
            sha256_hex(&whole),
            hash_hex,
            "{url}: the stored content's hash"
        );
        assert!(whole == data, "{url}: the stored content differs");
        drop(storage);
        // ...and served whole to another tablet of the commune.
        let client = reader.client();
        client.sync(&|_| {}).await.unwrap();
        client
            .download_attachment(&hash_hex, &|_| {})
            .await
            .unwrap();
        let mut opened = Vec::new();
        reader
            .store
            .lock()
            .unwrap()
            .open_attachment(&hash_hex, &mut opened)
            .unwrap();
        assert!(opened == data, "{url}: the downloaded content differs");
        drop(link);
        server.kill().unwrap();
    }
}
