//! The attachment channel over real HTTP on 127.0.0.1, on SQLite and PostgreSQL, as the honest
//! tablet and as the attacker: a content uploaded in hash-checked chunks and resumed where it
//! stopped, read by another tablet of the commune, invisible to another commune (the same 404
//! as a content that does not exist), a corrupt chunk refused by its hash.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use communesync_core::attachment::{NewAttachment, STORE_CHUNK, sha256_hex};
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_core::sync::attachments::{AttachmentPolicy, DEFAULT_CHUNK_SIZE};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, enroll};
use communesync_server::link::{Cut, LinkProfile, PoorLink};
use communesync_tests::{TestServer, test_databases};

const COMMUNE_A: &str = "DB-MUONGPHANG";
const COMMUNE_B: &str = "DB-NATAU";
const CHUNK: usize = STORE_CHUNK;

struct Tablet {
    client: SyncClient<ReqwestTransport>,
    store: Arc<Mutex<DeviceStore>>,
    token: String,
    path: std::path::PathBuf,
    url: String,
}

async fn tablet(dir: &std::path::Path, name: &str, url: &str, code: &str) -> Tablet {
    let path = dir.join(format!("{name}.db"));
    let mut store = DeviceStore::open(StoreConfig::new(&path)).unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    let transport = ReqwestTransport::new(url).unwrap();
    let credentials = enroll(&transport, code, store.device_id(), name)
        .await
        .unwrap();
    let store = Arc::new(Mutex::new(store));
    let client = SyncClient::new(
        transport,
        store.clone(),
        credentials.token.clone(),
        SyncConfig::default(),
    )
    .unwrap();
    Tablet {
        client,
        store,
        token: credentials.token,
        path,
        url: url.to_owned(),
    }
}

impl Tablet {
    /// The same tablet after a kill: its store reopened from disk, a new client.
    fn restarted(self) -> Tablet {
        let Tablet {
            client,
            store,
            token,
            path,
            url,
        } = self;
        drop(client);
        drop(store);
        let store = Arc::new(Mutex::new(
            DeviceStore::open(StoreConfig::new(&path)).unwrap(),
        ));
        let client = SyncClient::new(
            ReqwestTransport::new(&url).unwrap(),
            store.clone(),
            token.clone(),
            SyncConfig::default(),
        )
        .unwrap();
        Tablet {
            client,
            store,
            token,
            path,
            url,
        }
    }
}

/// A new client of `tablet` (its own connection pool) to `url`.
fn fresh(tablet: &Tablet, url: &str) -> SyncClient<ReqwestTransport> {
    SyncClient::new(
        ReqwestTransport::new(url).unwrap(),
        tablet.store.clone(),
        tablet.token.clone(),
        SyncConfig::default(),
    )
    .unwrap()
}

struct Http {
    base: String,
    http: reqwest::Client,
}

impl Http {
    async fn status(&self, token: &str, hash: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}/v1/attachments/{hash}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn put(
        &self,
        token: &str,
        hash: &str,
        size: usize,
        index: usize,
        bytes: &[u8],
        claimed: &str,
    ) -> (u16, String) {
        let response = self
            .http
            .put(format!(
                "{}/v1/attachments/{hash}/chunks/{index}",
                self.base
            ))
            .bearer_auth(token)
            .header("x-content-size", size.to_string())
            .header("x-chunk-size", CHUNK.to_string())
            .header("x-chunk-sha256", claimed)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn get(&self, token: &str, hash: &str, index: usize) -> (u16, Vec<u8>) {
        let response = self
            .http
            .get(format!(
                "{}/v1/attachments/{hash}/chunks/{index}",
                self.base
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap().to_vec())
    }
}

fn chunk(data: &[u8], index: usize) -> &[u8] {
    &data[index * CHUNK..((index + 1) * CHUNK).min(data.len())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_resume_scope_and_download_over_http() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "attachments").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE_A, 2).await.unwrap();
        let other = server.commune_with_codes(COMMUNE_B, 1).await.unwrap();
        let sub = tempfile::tempdir().unwrap();
        let lan = tablet(sub.path(), "lan", &server.url(), &codes[0]).await;
        let minh = tablet(sub.path(), "minh", &server.url(), &codes[1]).await;
        let stranger = tablet(sub.path(), "stranger", &server.url(), &other[0]).await;
        let http = Http {
            base: server.url(),
            http: reqwest::Client::new(),
        };

        // Lan attaches a scan (3 chunks and a bit) to an application and syncs the record.
        let data: Vec<u8> = (0..3 * CHUNK + 777).map(|i| (i * 7 % 253) as u8).collect();
        let hash = sha256_hex(&data);
        let mut sample = SampleData::new(5);
        let reference = {
            let mut store = lan.store.lock().unwrap();
            let id = store
                .create_application("lan", sample.application(COMMUNE_A, None))
                .unwrap()
                .id;
            let new = NewAttachment {
                mime: "image/jpeg".into(),
                caption: "CCCD".into(),
                ..Default::default()
            };
            store.attach_bytes(id, "lan", new, &data).unwrap()
        };
        lan.client.sync(&|_| {}).await.unwrap();
        assert_eq!(
            lan.store
                .lock()
                .unwrap()
                .pending_attachment_uploads(10)
                .unwrap(),
            vec![(hash.clone(), data.len() as u64)]
        );

        // Another commune's device: the same answer as a content that does not exist.
        let absent = sha256_hex(b"nothing like this was ever uploaded");
        let (code_absent, body_absent) = http.status(&stranger.token, &absent).await;
        let (code_foreign, body_foreign) = http.status(&stranger.token, &hash).await;
        assert_eq!((code_foreign, &body_foreign), (code_absent, &body_absent));
        assert_eq!(code_foreign, 404);
        let first = chunk(&data, 0);
        let (code, _) = http
            .put(
                &stranger.token,
                &hash,
                data.len(),
                0,
                first,
                &sha256_hex(first),
            )
            .await;
        assert_eq!(code, 404);

        // A corrupt chunk is refused by its hash and stores nothing.
        let mut corrupt = first.to_vec();
        corrupt[100] ^= 1;
        let (code, body) = http
            .put(
                &lan.token,
                &hash,
                data.len(),
                0,
                &corrupt,
                &sha256_hex(first),
            )
            .await;
        assert_eq!(code, 422, "{body}");
        let (code, body) = http.status(&lan.token, &hash).await;
        assert_eq!(code, 200);
        assert!(body.contains("\"received\":0"), "{body}");

        // Two chunks, then a cut: the status says where to resume.
        for index in 0..2 {
            let piece = chunk(&data, index);
            let (code, body) = http
                .put(
                    &lan.token,
                    &hash,
                    data.len(),
                    index,
                    piece,
                    &sha256_hex(piece),
                )
                .await;
            assert_eq!(code, 200, "{body}");
        }
        let (_, body) = http.status(&lan.token, &hash).await;
        assert!(body.contains("\"received\":2"), "{body}");
        // A chunk sent again (its answer lost) changes nothing; a gap is refused.
        let piece = chunk(&data, 1);
        let (code, _) = http
            .put(&lan.token, &hash, data.len(), 1, piece, &sha256_hex(piece))
            .await;
        assert_eq!(code, 200);
        let piece = chunk(&data, 3);
        let (code, _) = http
            .put(&lan.token, &hash, data.len(), 3, piece, &sha256_hex(piece))
            .await;
        assert_eq!(code, 409);
        // A lie about the size is refused: the record names the size.
        let piece = chunk(&data, 2);
        let (code, _) = http
            .put(
                &lan.token,
                &hash,
                data.len() + CHUNK,
                2,
                piece,
                &sha256_hex(piece),
            )
            .await;
        assert_ne!(code, 200);
        for index in 2..4 {
            let piece = chunk(&data, index);
            let (code, body) = http
                .put(
                    &lan.token,
                    &hash,
                    data.len(),
                    index,
                    piece,
                    &sha256_hex(piece),
                )
                .await;
            assert_eq!(code, 200, "{body}");
        }
        let (_, body) = http.status(&lan.token, &hash).await;
        assert!(body.contains("\"complete\":true"), "{body}");

        // Minh, same commune, receives the reference with the record and downloads the content.
        minh.client.sync(&|_| {}).await.unwrap();
        let missing = minh.store.lock().unwrap().missing_attachments(10).unwrap();
        assert_eq!(missing, vec![(hash.clone(), data.len() as u64)]);
        for index in 0..4 {
            let (code, bytes) = http.get(&minh.token, &hash, index).await;
            assert_eq!(code, 200);
            minh.store
                .lock()
                .unwrap()
                .store_attachment_range(&hash, data.len() as u64, (index * CHUNK) as u64, &bytes)
                .unwrap();
        }
        let mut opened = Vec::new();
        minh.store
            .lock()
            .unwrap()
            .open_attachment(&reference.sha256, &mut opened)
            .unwrap();
        assert_eq!(opened, data);
        // The stranger still reads nothing.
        assert_eq!(http.get(&stranger.token, &hash, 0).await.0, 404);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_downloads_resume_after_cuts_at_many_offsets_and_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "attachment_cuts").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE_A, 2).await.unwrap();
        let link = PoorLink::start(
            server.addr,
            LinkProfile::loopback().with_rates(4_000_000, 4_000_000),
        )
        .await
        .unwrap();
        let link_url = format!("http://{}", link.addr());
        let sub = tempfile::tempdir().unwrap();
        let a = tablet(sub.path(), "a", &link_url, &codes[0]).await;
        let b = tablet(sub.path(), "b", &link_url, &codes[1]).await;
        let chunk = DEFAULT_CHUNK_SIZE as u64;
        let data: Vec<u8> = (0..5 * chunk as usize + 1000)
            .map(|i| (i * 31 % 241) as u8)
            .collect();
        let size = data.len() as u64;
        let mut sample = SampleData::new(8);
        let reference = {
            let mut store = a.store.lock().unwrap();
            let id = store
                .create_application("a", sample.application(COMMUNE_A, None))
                .unwrap()
                .id;
            let new = NewAttachment {
                mime: "application/pdf".into(),
                ..Default::default()
            };
            store.attach_bytes(id, "a", new, &data).unwrap()
        };
        // Records first, on a clean link.
        a.client.sync(&|_| {}).await.unwrap();
        let policy = AttachmentPolicy {
            metered: false,
            ..Default::default()
        };

        // Upload: cut the upstream at many offsets.
        let before = link.bytes_up();
        let mut cuts = 0u64;
        for offset in (0..size + 20_000).step_by(17_389) {
            link.cut_active();
            link.cut_next(Cut::upstream(offset));
            // A client of its own per attempt: a new connection, the one the cut applies to
            // (a pooled connection could be reused before the cut of the active ones lands).
            match fresh(&a, &link_url)
                .upload_attachments(&policy, &|_| {})
                .await
            {
                Ok(report) if !report.completed.is_empty() => break,
                Ok(_) => {}
                Err(_) => cuts += 1,
            }
        }
        link.clear_pending_cuts();
        assert!(cuts >= 3, "{url}: cuts did not interrupt uploads ({cuts})");
        // The tablet is killed mid-upload: its store reopened, the upload continues.
        let a = a.restarted();
        let report = a.client.upload_attachments(&policy, &|_| {}).await.unwrap();
        let pending = a
            .store
            .lock()
            .unwrap()
            .pending_attachment_uploads(10)
            .unwrap();
        assert!(pending.is_empty(), "{url}: {report:?}");
        let sent = link.bytes_up() - before;
        // Each cut costs at most the chunk in flight (plus request heads).
        let allowed = size + cuts * (chunk + 2_048) + 64 * 2_048;
        eprintln!("{url}: {cuts} upload cuts, {sent} bytes up for {size}");
        assert!(
            sent <= allowed,
            "{url}: {sent} bytes sent, allowed {allowed}"
        );

        // Download on b: cut the downstream at many offsets.
        b.client.sync(&|_| {}).await.unwrap();
        let before = link.bytes_down();
        let mut cuts = 0u64;
        let mut done = false;
        for offset in (0..size + 20_000).step_by(19_013) {
            link.cut_active();
            link.cut_next(Cut::downstream(offset));
            match fresh(&b, &link_url)
                .download_attachment(&reference.sha256, &|_| {})
                .await
            {
                Ok(_) => {
                    done = true;
                    break;
                }
                Err(_) => cuts += 1,
            }
        }
        link.clear_pending_cuts();
        if !done {
            b.client
                .download_attachment(&reference.sha256, &|_| {})
                .await
                .unwrap();
        }
        assert!(
            cuts >= 3,
            "{url}: cuts did not interrupt downloads ({cuts})"
        );
        let received = link.bytes_down() - before;
        let allowed = size + cuts * (chunk + 2_048) + 64 * 2_048;
        eprintln!("{url}: {cuts} download cuts, {received} bytes down for {size}");
        assert!(
            received <= allowed,
            "{url}: {received} bytes, allowed {allowed}"
        );
        let mut opened = Vec::new();
        b.store
            .lock()
            .unwrap()
            .open_attachment(&reference.sha256, &mut opened)
            .unwrap();
        assert_eq!(opened, data);
        drop(a);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metered_budget_defers_attachments_and_receipts_go_first() {
    let dir = tempfile::tempdir().unwrap();
    let url = &test_databases(dir.path(), "attachment_budget")
        .await
        .unwrap()[0];
    let server = TestServer::start(url).await.unwrap();
    let codes = server.commune_with_codes(COMMUNE_A, 1).await.unwrap();
    let sub = tempfile::tempdir().unwrap();
    let a = tablet(sub.path(), "a", &server.url(), &codes[0]).await;
    let mut sample = SampleData::new(9);
    let (photo, receipt) = {
        let mut store = a.store.lock().unwrap();
        let id = store
            .create_application("a", sample.application(COMMUNE_A, None))
            .unwrap()
            .id;
        let photo = NewAttachment {
            mime: "image/jpeg".into(),
            category: communesync_core::attachment::AttachmentCategory::Photo,
            ..Default::default()
        };
        let receipt = NewAttachment {
            mime: "image/jpeg".into(),
            category: communesync_core::attachment::AttachmentCategory::Receipt,
            ..Default::default()
        };
        // The photo is attached first; the receipt must still go first.
        let p = store
            .attach_bytes(id, "a", photo, &vec![1u8; 100_000])
            .unwrap();
        let r = store
            .attach_bytes(id, "a", receipt, &vec![2u8; 100_000])
            .unwrap();
        (p, r)
    };
    a.client.sync(&|_| {}).await.unwrap();
    let policy = AttachmentPolicy {
        metered: true,
        metered_budget_bytes: 120_000,
        ..Default::default()
    };
    let report = a.client.upload_attachments(&policy, &|_| {}).await.unwrap();
    assert_eq!(report.completed, vec![receipt.sha256.clone()]);
    assert!(report.chunk_bytes <= 120_000);
    assert_eq!(report.deferred, 1);
    // The next sync (a new budget) sends the photo.
    let report = a.client.upload_attachments(&policy, &|_| {}).await.unwrap();
    assert_eq!(report.completed, vec![photo.sha256.clone()]);
    server.stop().await;
}

/// The background sync as the policy runs it: the records always go, then the attachments
/// within the byte budget of a metered link (receipt first), each sync continuing where the
/// budget stopped the last; another tablet that asks for prefetch receives the contents with
/// its sync, within its cache bound, and progress reaches the caller per attachment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_sync_sends_records_then_attachments_within_the_budget_and_prefetches() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "attachment_background")
        .await
        .unwrap()
    {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE_A, 2).await.unwrap();
        let sub = tempfile::tempdir().unwrap();
        let a = tablet(sub.path(), "a", &server.url(), &codes[0]).await;
        let b = tablet(sub.path(), "b", &server.url(), &codes[1]).await;
        let mut sample = SampleData::new(11);
        let photo_bytes: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
        let receipt_bytes = vec![2u8; 90_000];
        let (id, photo, receipt) = {
            let mut store = a.store.lock().unwrap();
            let id = store
                .create_application("a", sample.application(COMMUNE_A, None))
                .unwrap()
                .id;
            let new = |category| NewAttachment {
                mime: "image/jpeg".into(),
                category,
                ..Default::default()
            };
            use communesync_core::attachment::AttachmentCategory::{Photo, Receipt};
            let photo = store
                .attach_bytes(id, "a", new(Photo), &photo_bytes)
                .unwrap();
            let receipt = store
                .attach_bytes(id, "a", new(Receipt), &receipt_bytes)
                .unwrap();
            (id, photo, receipt)
        };
        // Metered, 100 KB per sync: the receipt fits, the photo waits.
        let metered = AttachmentPolicy {
            metered: true,
            metered_budget_bytes: 100_000,
            ..Default::default()
        };
        let seen = Mutex::new(Vec::new());
        let full = a
            .client
            .sync_with_attachments(&metered, &|_| {}, &|p| seen.lock().unwrap().push(p))
            .await
            .unwrap();
        assert_eq!(full.records.pushed_docs, 1, "{url}: the record always goes");
        let channel = full.attachments.unwrap();
        assert_eq!(channel.completed, vec![receipt.sha256.clone()], "{url}");
        assert_eq!(channel.deferred, 1, "{url}");
        assert!(channel.chunk_bytes <= 100_000, "{url}");
        let last = seen.lock().unwrap().last().cloned().unwrap();
        assert!(last.upload && last.sha256 == receipt.sha256, "{url}");
        assert_eq!(
            (last.done_bytes, last.total_bytes),
            (90_000, 90_000),
            "{url}"
        );
        // A zero budget on a metered link: records still go, no attachment byte does.
        let none = AttachmentPolicy {
            metered_budget_bytes: 0,
            ..metered.clone()
        };
        let full = a
            .client
            .sync_with_attachments(&none, &|_| {}, &|_| {})
            .await
            .unwrap();
        let channel = full.attachments.unwrap();
        assert_eq!((channel.chunk_bytes, channel.deferred), (0, 1), "{url}");
        // Unmetered: no budget, the photo goes.
        let unmetered = AttachmentPolicy {
            metered: false,
            ..metered.clone()
        };
        let channel = a
            .client
            .sync_with_attachments(&unmetered, &|_| {}, &|_| {})
            .await
            .unwrap()
            .attachments
            .unwrap();
        assert_eq!(channel.completed, vec![photo.sha256.clone()], "{url}");
        // Tablet B prefetches with its sync: both contents, identical bytes.
        let prefetch = AttachmentPolicy {
            prefetch: true,
            ..unmetered.clone()
        };
        let downloads = Mutex::new(0u32);
        let full = b
            .client
            .sync_with_attachments(&prefetch, &|_| {}, &|p| {
                assert!(!p.upload);
                *downloads.lock().unwrap() += 1;
            })
            .await
            .unwrap();
        assert!(full.records.pulled_docs >= 1, "{url}");
        let mut fetched = full.attachments.unwrap().completed;
        fetched.sort();
        let mut expected = vec![photo.sha256.clone(), receipt.sha256.clone()];
        expected.sort();
        assert_eq!(fetched, expected, "{url}");
        assert!(*downloads.lock().unwrap() >= 2, "{url}");
        {
            let mut store = b.store.lock().unwrap();
            assert_eq!(store.attachments(id).unwrap().len(), 2, "{url}");
            let mut opened = Vec::new();
            store.open_attachment(&photo.sha256, &mut opened).unwrap();
            assert_eq!(opened, photo_bytes, "{url}");
        }
        // A cache bound smaller than both: the prefetch keeps within it.
        let c = tablet(sub.path(), "c", &server.url(), &{
            server.commune_with_codes(COMMUNE_A, 1).await.unwrap()[0].clone()
        })
        .await;
        let small = AttachmentPolicy {
            cache_bytes: 100_000,
            ..prefetch.clone()
        };
        let channel = c
            .client
            .sync_with_attachments(&small, &|_| {}, &|_| {})
            .await
            .unwrap()
            .attachments
            .unwrap();
        assert_eq!(channel.completed, vec![receipt.sha256.clone()], "{url}");
        assert!(channel.chunk_bytes <= 100_000, "{url}");
        // A new tablet D attaches the receipt's bytes to a dossier of its own: the server holds them
        // already, nothing is sent, and the progress still ends at the content's size.
        let d = tablet(sub.path(), "d", &server.url(), &{
            server.commune_with_codes(COMMUNE_A, 1).await.unwrap()[0].clone()
        })
        .await;
        {
            let mut store = d.store.lock().unwrap();
            let own = store
                .create_application("d", sample.application(COMMUNE_A, None))
                .unwrap()
                .id;
            let new = NewAttachment {
                mime: "image/jpeg".into(),
                ..Default::default()
            };
            store.attach_bytes(own, "d", new, &receipt_bytes).unwrap();
        }
        let seen = Mutex::new(Vec::new());
        let channel = d
            .client
            .sync_with_attachments(&metered, &|_| {}, &|p| seen.lock().unwrap().push(p))
            .await
            .unwrap()
            .attachments
            .unwrap();
        assert_eq!(channel.completed, vec![receipt.sha256.clone()], "{url}");
        assert_eq!(channel.chunk_bytes, 0, "{url}: the server held it");
        let seen = seen.into_inner().unwrap();
        assert!(
            seen.iter()
                .any(|p| p.upload && p.done_bytes == 90_000 && p.total_bytes == 90_000),
            "{url}: {seen:?}"
        );
        drop((a, b, c, d));
        server.stop().await;
    }
}

/// The attacker of the scope: commune A's tablet learnt the hash and size of a file commune B
/// uploaded, and pushes a record naming them. Contents are kept per commune, so everything it
/// gets is exactly what it gets for a content nobody uploaded (a reference of the same size to
/// bytes no tablet sent): a resume point at chunk 0, 404 for the chunks, and an upload of other
/// bytes under that hash accepted chunk by chunk into A's own content, then refused by the
/// whole hash. B's content is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_of_another_communes_file_reveals_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "attachment_scope_leak")
        .await
        .unwrap()
    {
        let server = TestServer::start(&url).await.unwrap();
        let hostile_code = server.commune_with_codes(COMMUNE_A, 1).await.unwrap();
        let owner_code = server.commune_with_codes(COMMUNE_B, 1).await.unwrap();
        let sub = tempfile::tempdir().unwrap();
        let owner = tablet(sub.path(), "owner", &server.url(), &owner_code[0]).await;
        let hostile = tablet(sub.path(), "hostile", &server.url(), &hostile_code[0]).await;
        let http = Http {
            base: server.url(),
            http: reqwest::Client::new(),
        };
        let mut sample = SampleData::new(21);

        // Commune B's tablet uploads its file.
        let data: Vec<u8> = (0..3 * CHUNK + 500).map(|i| (i * 13 % 251) as u8).collect();
        let hash = sha256_hex(&data);
        {
            let mut store = owner.store.lock().unwrap();
            let id = store
                .create_application("owner", sample.application(COMMUNE_B, None))
                .unwrap()
                .id;
            let new = NewAttachment {
                mime: "image/jpeg".into(),
                ..Default::default()
            };
            store.attach_bytes(id, "owner", new, &data).unwrap();
        }
        owner.client.sync(&|_| {}).await.unwrap();
        let unmetered = AttachmentPolicy {
            metered: false,
            ..Default::default()
        };
        let report = owner
            .client
            .upload_attachments(&unmetered, &|_| {})
            .await
            .unwrap();
        assert_eq!(report.completed, vec![hash.clone()], "{url}");

        // Commune A's tablet pushes a record naming B's hash and size, and one naming a content
        // of the same size that nobody uploads (the control). The record is what a tablet that
        // only learnt the hash and size would push; the server cannot tell the difference.
        let control: Vec<u8> = (0..data.len()).map(|i| (i * 17 % 239) as u8).collect();
        let control_hash = sha256_hex(&control);
        {
            let mut store = hostile.store.lock().unwrap();
            let id = store
                .create_application("hostile", sample.application(COMMUNE_A, None))
                .unwrap()
                .id;
            for bytes in [&data, &control] {
                let new = NewAttachment {
                    mime: "image/jpeg".into(),
                    ..Default::default()
                };
                store.attach_bytes(id, "hostile", new, bytes).unwrap();
            }
        }
        hostile.client.sync(&|_| {}).await.unwrap();

        // The resume point: chunk 0, not "already whole"; the same body as the control's.
        let leaked = http.status(&hostile.token, &hash).await;
        let nobody = http.status(&hostile.token, &control_hash).await;
        assert_eq!(leaked, nobody, "{url}");
        assert_eq!(leaked.0, 200, "{url}");
        assert!(leaked.1.contains("\"received\":0"), "{url}: {}", leaked.1);
        assert!(
            leaked.1.contains("\"complete\":false"),
            "{url}: {}",
            leaked.1
        );
        // The chunks: 404, as for the control.
        for index in 0..4 {
            let leaked = http.get(&hostile.token, &hash, index).await;
            let nobody = http.get(&hostile.token, &control_hash, index).await;
            assert_eq!(leaked, nobody, "{url}: chunk {index}");
            assert_eq!(leaked.0, 404, "{url}: chunk {index}");
        }

        // Its own upload of other bytes under each hash: the same answers, chunk by chunk, and
        // the whole hash refuses both at the last chunk.
        let forged: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
        for index in 0..4 {
            let piece = chunk(&forged, index);
            let leaked = http
                .put(
                    &hostile.token,
                    &hash,
                    data.len(),
                    index,
                    piece,
                    &sha256_hex(piece),
                )
                .await;
            let nobody = http
                .put(
                    &hostile.token,
                    &control_hash,
                    data.len(),
                    index,
                    piece,
                    &sha256_hex(piece),
                )
                .await;
            assert_eq!(leaked, nobody, "{url}: chunk {index}");
            if index < 3 {
                assert_eq!(leaked.0, 200, "{url}: {}", leaked.1);
                assert!(
                    leaked.1.contains(&format!("\"received\":{}", index + 1)),
                    "{url}: {}",
                    leaked.1
                );
            } else {
                assert_eq!(leaked.0, 422, "{url}: {}", leaked.1);
                assert!(leaked.1.contains("content_hash_mismatch"), "{url}");
            }
        }
        assert_eq!(
            http.status(&hostile.token, &hash).await,
            http.status(&hostile.token, &control_hash).await,
            "{url}"
        );
        assert_eq!(http.get(&hostile.token, &hash, 0).await.0, 404, "{url}");

        // B still reads its own file whole.
        let (code, status) = http.status(&owner.token, &hash).await;
        assert_eq!(code, 200, "{url}");
        assert!(status.contains("\"complete\":true"), "{url}: {status}");
        let (code, bytes) = http.get(&owner.token, &hash, 0).await;
        assert_eq!(code, 200, "{url}");
        assert_eq!(
            bytes,
            &data[..bytes.len().min(data.len())],
            "{url}: B's first chunk"
        );
        assert_eq!(bytes.len(), data.len(), "{url}: one 64 KiB chunk");
        drop((owner, hostile));
        server.stop().await;
    }
}
