//! Storage conformance suite: one set of test functions, each taking a [`Fixture`] (a fresh
//! storage and the URL to open more handles on it, i.e. more "server replicas"), run by the
//! `conformance!` macro once on SQLite (a temp file) and once on PostgreSQL (a fresh database
//! per test, created from `COMMUNESYNC_TEST_DATABASE_URL` and dropped afterwards).
//!
//! Without `COMMUNESYNC_TEST_DATABASE_URL`, the PostgreSQL tests print a skip note, except when
//! `CI` is set: then they fail, because CI must run them. To run them locally:
//!
//! ```text
//! eval "$(scripts/toolchains/postgres.sh start /tmp/pgtest 55440)"
//! COMMUNESYNC_TEST_DATABASE_URL=$DATABASE_URL cargo test -p communesync-server --test storage_conformance
//! scripts/toolchains/postgres.sh stop /tmp/pgtest
//! ```

// The workspace denies `unwrap` outside tests; clippy only sees `#[test]` functions as tests,
// and the suite's test bodies are plain async functions called by the generated `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use communesync_core::keys::{DeviceSigningKey, PublicKey};
use communesync_core::record::{DeviceId, RecordId, RecordKind};
use communesync_server::storage::attachments::{
    AttachmentLimits, ChunkRefusal, ChunkUpload, ContentState, Referenced,
};
use communesync_server::storage::{
    self, Device, ExternalIdClaim, FeedItem, IncomingChange, IncomingDoc,
    MAX_REFUSAL_MESSAGE_BYTES, MAX_REFUSALS_PER_DEVICE, PushSignatureRow, RefusalRow, Scope,
    ServerStorage, StorageError,
};
use sha2::{Digest, Sha256};

const NOW: i64 = 1_790_000_000_000;
const HOUR: i64 = 3_600_000;
const DB_URL_VAR: &str = "COMMUNESYNC_TEST_DATABASE_URL";

// --- fixtures ---------------------------------------------------------------------------------

/// A fresh, migrated storage and the URL it was opened from.
struct Fixture {
    url: String,
    storage: Arc<dyn ServerStorage>,
    _cleanup: Cleanup,
}

#[allow(dead_code)] // the fields are held for their Drop
enum Cleanup {
    Sqlite(tempfile::TempDir),
    Postgres(PgDatabase),
}

impl Fixture {
    fn s(&self) -> &dyn ServerStorage {
        self.storage.as_ref()
    }

    /// Another handle on the same database, as a second server process would have.
    async fn replica(&self) -> Arc<dyn ServerStorage> {
        storage::open(&self.url).await.expect("open a replica")
    }
}

async fn sqlite_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("server.db").display());
    let storage = storage::open(&url).await.expect("open sqlite");
    Fixture {
        url,
        storage,
        _cleanup: Cleanup::Sqlite(dir),
    }
}

async fn postgres_fixture() -> Option<Fixture> {
    let db = PgDatabase::create().await?;
    let storage = storage::open(&db.url).await.expect("open postgres");
    Some(Fixture {
        url: db.url.clone(),
        storage,
        _cleanup: Cleanup::Postgres(db),
    })
}

/// The server URL for PostgreSQL tests, or `None` (with a note) when they are to be skipped.
fn postgres_base_url() -> Option<String> {
    match std::env::var(DB_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "{DB_URL_VAR} is not set but CI is: the PostgreSQL storage conformance tests \
                     must run in CI. Start a server with \
                     `eval \"$(scripts/toolchains/postgres.sh start DIR)\"` and set \
                     {DB_URL_VAR}=$DATABASE_URL."
                );
            }
            eprintln!(
                "note: skipping a PostgreSQL storage conformance test: {DB_URL_VAR} is not set \
                 (see the header of server/tests/storage_conformance.rs)"
            );
            None
        }
    }
}

/// A database created for one test and dropped (even if the test panics) when this drops.
struct PgDatabase {
    base: String,
    name: String,
    url: String,
}

static PG_DATABASES: AtomicUsize = AtomicUsize::new(0);

impl PgDatabase {
    async fn create() -> Option<PgDatabase> {
        let base = postgres_base_url()?;
        let name = format!(
            "cs_conformance_{}_{}",
            std::process::id(),
            PG_DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        let client = pg_admin(&base).await;
        // Two statements: CREATE DATABASE cannot run inside the implicit transaction of a
        // multi-statement query.
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .expect("drop a stale test database");
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a test database");
        let url = with_database(&base, &name);
        Some(PgDatabase { base, name, url })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // Drop runs inside the test's runtime (or while unwinding): use a runtime of our own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                pg_admin(&base)
                    .await
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("note: could not drop test database {}", self.name);
        }
    }
}

async fn pg_admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {DB_URL_VAR} ({url}): {e}"));
    tokio::spawn(connection);
    client
}

/// `url` with its database name replaced by `name` (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (url, None),
    };
    let scheme_end = main.find("://").map_or(0, |i| i + 3);
    let authority_end = main[scheme_end..]
        .find('/')
        .map_or(main.len(), |i| scheme_end + i);
    let mut out = format!("{}/{}", &main[..authority_end], name);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Runs every listed test function on both backends.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let fixture = super::sqlite_fixture().await;
                    super::$test(&fixture).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let Some(fixture) = super::postgres_fixture().await else { return };
                    super::$test(&fixture).await;
                }
            )*
        }
    };
}

conformance!(
    communes,
    enrollment_is_single_use,
    enrollment_expiry_unknown_and_conflicts,
    concurrent_enrollments_one_wins,
    authentication_and_revocation,
    device_listing,
    admin_tokens,
    admin_token_revocation_keeps_one_active,
    enrollment_attempt_counting,
    reenrollment_replaces_the_credential_and_keeps_the_device,
    reenrollment_codes_are_bound_single_use_and_expire,
    revocation_with_wipe,
    device_status_clamps_to_i64,
    refusals_upsert_clear_and_list,
    refusals_are_bounded_per_device,
    cursor_issued_is_stored_as_given,
    ingest_registers_and_dedupes,
    doc_history_keeps_who_pushed_and_when,
    ingest_missing_deps_skips_only_that_doc,
    out_of_scope_rejects_the_whole_batch,
    kind_mismatch_is_out_of_scope,
    feed_order_and_exclusion,
    feed_cursor_advances_past_excluded_changes,
    feed_byte_and_item_bounds,
    province_scope,
    catalogue_versions,
    store_epoch_is_stable_until_renewed,
    stats,
    reopen_keeps_data,
    concurrent_ingest_feed_never_skips,
    attachments_upload_in_order_resume_and_complete,
    attachments_scope_follows_live_references,
    attachments_whole_hash_is_checked,
    attachments_quotas,
    attachments_sweep_after_grace,
    attachments_are_kept_per_commune,
    number_blocks_never_overlap_across_replicas,
    number_usage_reports_grow_and_stay_with_their_device,
    dossier_numbers_keep_their_first_document,
    device_keys_register_replace_revoke_and_delta,
    push_signatures_are_kept_and_linked_from_each_change,
    external_ids_keep_their_first_record_per_commune,
);

// --- helpers ----------------------------------------------------------------------------------

fn sha(data: impl AsRef<[u8]>) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A fake change: storage never decodes bytes, it trusts hash and deps.
fn change(tag: &str, deps: &[&str]) -> IncomingChange {
    IncomingChange {
        hash: sha(tag),
        deps: deps.iter().map(sha).collect(),
        bytes: tag.as_bytes().to_vec(),
    }
}

fn doc(id: RecordId, commune: &str, changes: Vec<IncomingChange>) -> IncomingDoc {
    IncomingDoc {
        id,
        kind: RecordKind::Application,
        commune: commune.to_owned(),
        changes,
        projection: None,
    }
}

/// A chain of `n` changes `prefix-0 <- prefix-1 <- ...` with `size`-byte bodies.
fn chain(prefix: &str, n: usize, size: usize) -> Vec<IncomingChange> {
    (0..n)
        .map(|i| {
            let tag = format!("{prefix}-{i}");
            let deps: Vec<String> = if i == 0 {
                Vec::new()
            } else {
                vec![format!("{prefix}-{}", i - 1)]
            };
            let mut c = change(&tag, &deps.iter().map(String::as_str).collect::<Vec<_>>());
            c.bytes.resize(size.max(c.bytes.len()), b'.');
            c
        })
        .collect()
}

static TOKENS: AtomicUsize = AtomicUsize::new(0);

/// Enrolls a new device in `scope`; returns it and its token hash.
async fn enroll(s: &dyn ServerStorage, scope: Scope, label: &str) -> (Device, [u8; 32]) {
    let n = TOKENS.fetch_add(1, Ordering::Relaxed);
    let code = sha(format!("code-{n}-{label}"));
    let token = sha(format!("token-{n}-{label}"));
    s.create_enrollment_code(&scope, code, NOW + HOUR)
        .await
        .expect("create code");
    let device = s
        .enroll(code, DeviceId::new(), token, label, NOW)
        .await
        .expect("enroll");
    (device, token)
}

async fn communes_c1_c2(s: &dyn ServerStorage) {
    s.create_commune("c1", "Xã Mường Phăng").await.expect("c1");
    s.create_commune("c2", "Xã Nà Tấu").await.expect("c2");
}

/// Every item of a scope's feed, paging with small pages (bounded).
async fn read_all(
    s: &dyn ServerStorage,
    scope: &Scope,
    exclude: Option<DeviceId>,
) -> Vec<FeedItem> {
    let mut cursor = 0;
    let mut items = Vec::new();
    for _ in 0..10_000 {
        let page = s
            .feed(scope, cursor, exclude, 1 << 20, 3)
            .await
            .expect("feed");
        assert!(page.next_cursor >= cursor, "cursor went back");
        items.extend(page.items);
        cursor = page.next_cursor;
        if !page.more {
            return items;
        }
    }
    panic!("feed did not end");
}

fn bodies(items: &[FeedItem]) -> Vec<String> {
    items
        .iter()
        .map(|i| {
            String::from_utf8_lossy(&i.bytes)
                .trim_end_matches('.')
                .to_owned()
        })
        .collect()
}

fn is_out_of_scope(result: Result<impl std::fmt::Debug, StorageError>, doc: RecordId) -> bool {
    matches!(result, Err(StorageError::OutOfScope { doc: d }) if d == doc)
}

// --- tests ------------------------------------------------------------------------------------

async fn communes(f: &Fixture) {
    let s = f.s();
    assert!(s.list_communes().await.unwrap().is_empty());
    s.create_commune("c2", "Xã Nà Tấu").await.unwrap();
    s.create_commune("c1", "Xã Mường Phăng").await.unwrap();
    assert!(matches!(
        s.create_commune("c1", "again").await,
        Err(StorageError::AlreadyExists)
    ));
    let list = s.list_communes().await.unwrap();
    let codes: Vec<_> = list
        .iter()
        .map(|c| (c.code.as_str(), c.name.as_str()))
        .collect();
    assert_eq!(codes, [("c1", "Xã Mường Phăng"), ("c2", "Xã Nà Tấu")]);
    // A code for a commune that does not exist.
    assert!(matches!(
        s.create_enrollment_code(&Scope::Commune("nope".into()), sha("x"), NOW + HOUR)
            .await,
        Err(StorageError::NotFound)
    ));
}

async fn enrollment_is_single_use(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let scope = Scope::Commune("c1".into());
    s.create_enrollment_code(&scope, sha("code"), NOW + HOUR)
        .await
        .unwrap();
    let id = DeviceId::new();
    let device = s
        .enroll(sha("code"), id, sha("token"), "Tablet 1", NOW)
        .await
        .unwrap();
    assert_eq!(
        device,
        Device {
            id,
            scope: scope.clone(),
            label: "Tablet 1".into(),
            revoked: false,
            wiped: false,
        }
    );
    assert!(matches!(
        s.enroll(
            sha("code"),
            DeviceId::new(),
            sha("token2"),
            "Tablet 2",
            NOW + 1
        )
        .await,
        Err(StorageError::InvalidEnrollmentCode)
    ));
    // Used from another replica too.
    let replica = f.replica().await;
    assert!(matches!(
        replica
            .enroll(
                sha("code"),
                DeviceId::new(),
                sha("token3"),
                "Tablet 3",
                NOW + 2
            )
            .await,
        Err(StorageError::InvalidEnrollmentCode)
    ));
    assert_eq!(s.list_devices(None).await.unwrap().len(), 1);
}

async fn enrollment_expiry_unknown_and_conflicts(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let c1 = Scope::Commune("c1".into());
    s.create_enrollment_code(&c1, sha("short"), NOW + 10)
        .await
        .unwrap();
    assert!(matches!(
        s.create_enrollment_code(&c1, sha("short"), NOW + 10).await,
        Err(StorageError::AlreadyExists)
    ));
    // Valid strictly before expires_at.
    assert!(matches!(
        s.enroll(sha("short"), DeviceId::new(), sha("t1"), "late", NOW + 10)
            .await,
        Err(StorageError::InvalidEnrollmentCode)
    ));
    assert!(matches!(
        s.enroll(sha("unknown"), DeviceId::new(), sha("t1"), "x", NOW)
            .await,
        Err(StorageError::InvalidEnrollmentCode)
    ));
    // A province code enrolls a province device.
    s.create_enrollment_code(&Scope::Province, sha("prov"), NOW + HOUR)
        .await
        .unwrap();
    let province = s
        .enroll(
            sha("prov"),
            DeviceId::new(),
            sha("t-prov"),
            "Sở Nội vụ",
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(province.scope, Scope::Province);
    // A taken device id or token hash fails and leaves the code usable.
    s.create_enrollment_code(&c1, sha("fresh"), NOW + HOUR)
        .await
        .unwrap();
    assert!(matches!(
        s.enroll(sha("fresh"), province.id, sha("t-other"), "dup id", NOW)
            .await,
        Err(StorageError::AlreadyExists)
    ));
    assert!(matches!(
        s.enroll(
            sha("fresh"),
            DeviceId::new(),
            sha("t-prov"),
            "dup token",
            NOW
        )
        .await,
        Err(StorageError::AlreadyExists)
    ));
    let ok = s
        .enroll(sha("fresh"), DeviceId::new(), sha("t-new"), "ok", NOW)
        .await
        .unwrap();
    assert_eq!(ok.scope, c1);
}

async fn concurrent_enrollments_one_wins(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let replicas = [f.replica().await, f.replica().await, f.replica().await];
    let scope = Scope::Commune("c1".into());
    for round in 0..5 {
        let code = sha(format!("race-{round}"));
        s.create_enrollment_code(&scope, code, NOW + HOUR)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let replica = replicas[i % replicas.len()].clone();
            tasks.push(tokio::spawn(async move {
                replica
                    .enroll(
                        code,
                        DeviceId::new(),
                        sha(format!("race-{round}-{i}")),
                        "t",
                        NOW,
                    )
                    .await
            }));
        }
        let mut won = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => won += 1,
                Err(StorageError::InvalidEnrollmentCode) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(won, 1, "round {round}: exactly one enrollment wins");
    }
    assert_eq!(s.list_devices(None).await.unwrap().len(), 5);
}

async fn authentication_and_revocation(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (device, token) = enroll(s, Scope::Commune("c1".into()), "Tablet").await;
    assert_eq!(s.authenticate(token).await.unwrap(), Some(device.clone()));
    assert_eq!(s.authenticate(sha("nobody")).await.unwrap(), None);

    let d = RecordId::new();
    s.ingest(&device, vec![doc(d, "c1", chain("a", 1, 0))], NOW)
        .await
        .unwrap();

    s.revoke_device(device.id).await.unwrap();
    s.revoke_device(device.id).await.unwrap(); // idempotent
    let seen = s.authenticate(token).await.unwrap().unwrap();
    assert!(seen.revoked);
    assert!(matches!(
        s.revoke_device(DeviceId::new()).await,
        Err(StorageError::NotFound)
    ));
    // A device revoked after authentication stores nothing.
    assert!(matches!(
        s.ingest(&device, vec![doc(d, "c1", chain("a", 2, 0))], NOW + 1)
            .await,
        Err(StorageError::NotFound)
    ));
    assert_eq!(s.doc_changes(d).await.unwrap().len(), 1);
}

async fn device_listing(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (a, _) = enroll(s, Scope::Commune("c1".into()), "a").await;
    let (b, _) = enroll(s, Scope::Commune("c2".into()), "b").await;
    let (p, _) = enroll(s, Scope::Province, "p").await;
    let ids = |list: Vec<storage::DeviceInfo>| -> HashSet<DeviceId> {
        list.into_iter().map(|i| i.device.id).collect()
    };
    assert_eq!(
        ids(s.list_devices(None).await.unwrap()),
        HashSet::from([a.id, b.id, p.id])
    );
    assert_eq!(
        ids(s
            .list_devices(Some(&Scope::Commune("c1".into())))
            .await
            .unwrap()),
        HashSet::from([a.id])
    );
    assert_eq!(
        ids(s.list_devices(Some(&Scope::Province)).await.unwrap()),
        HashSet::from([p.id])
    );

    let info = s
        .list_devices(Some(&Scope::Commune("c1".into())))
        .await
        .unwrap();
    assert_eq!(info[0].enrolled_at, NOW);
    assert_eq!(info[0].last_sync_at, None);
    assert_eq!(info[0].changes_pushed, 0);
    s.ingest(
        &a,
        vec![doc(RecordId::new(), "c1", chain("x", 3, 0))],
        NOW + 5,
    )
    .await
    .unwrap();
    // A sync that stores nothing still counts as a sync.
    s.ingest(&a, vec![], NOW + 7).await.unwrap();
    let info = s
        .list_devices(Some(&Scope::Commune("c1".into())))
        .await
        .unwrap();
    assert_eq!(info[0].last_sync_at, Some(NOW + 7));
    assert_eq!(info[0].changes_pushed, 3);
    assert_eq!((info[0].pending_docs, info[0].last_seen_at), (None, None));
    // What the device reports at each sync is what operators see.
    s.record_device_status(a.id, 12, NOW + 8).await.unwrap();
    s.record_device_status(a.id, 4, NOW + 9).await.unwrap();
    s.record_device_status(DeviceId::new(), 1, NOW + 9)
        .await
        .unwrap();
    let info = s
        .list_devices(Some(&Scope::Commune("c1".into())))
        .await
        .unwrap();
    assert_eq!(
        (info[0].pending_docs, info[0].last_seen_at),
        (Some(4), Some(NOW + 9))
    );
    s.revoke_device(a.id).await.unwrap();
    let info = s
        .list_devices(Some(&Scope::Commune("c1".into())))
        .await
        .unwrap();
    assert!(info[0].device.revoked);
}

async fn admin_tokens(f: &Fixture) {
    let s = f.s();
    assert_eq!(s.authenticate_admin(sha("admin"), NOW).await.unwrap(), None);
    let first = s
        .create_admin_token(sha("admin"), "operator", NOW)
        .await
        .unwrap();
    assert_eq!(
        s.authenticate_admin(sha("admin"), NOW + 5).await.unwrap(),
        Some(first)
    );
    assert_eq!(s.authenticate_admin(sha("other"), NOW).await.unwrap(), None);
    assert!(matches!(
        s.create_admin_token(sha("admin"), "again", NOW).await,
        Err(StorageError::AlreadyExists)
    ));
    let second = s
        .create_admin_token(sha("second"), "Sở Nội vụ", NOW + 1)
        .await
        .unwrap();
    assert_ne!(first, second);
    // A device token is not an admin token.
    s.create_commune("c1", "c1").await.unwrap();
    let (_, token) = enroll(s, Scope::Commune("c1".into()), "t").await;
    assert_eq!(s.authenticate_admin(token, NOW).await.unwrap(), None);

    // Listed with times, never with the token or its hash.
    let list = s.list_admin_tokens().await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(
        (
            list[0].id,
            list[0].label.as_str(),
            list[0].created_at,
            list[0].last_used_at,
            list[0].revoked_at
        ),
        (first, "operator", Some(NOW), Some(NOW + 5), None)
    );
    assert_eq!(
        (list[1].id, list[1].label.as_str(), list[1].last_used_at),
        (second, "Sở Nội vụ", None)
    );

    // Revoked: refused at once, also through another replica; idempotent.
    let replica = f.replica().await;
    replica.revoke_admin_token(first, NOW + 10).await.unwrap();
    assert_eq!(
        s.authenticate_admin(sha("admin"), NOW + 11).await.unwrap(),
        None
    );
    s.revoke_admin_token(first, NOW + 12).await.unwrap();
    let list = s.list_admin_tokens().await.unwrap();
    assert_eq!(list[0].revoked_at, Some(NOW + 10));
    assert_eq!(
        list[0].last_used_at,
        Some(NOW + 5),
        "a refused use is not a use"
    );
    assert!(matches!(
        s.revoke_admin_token(first + second + 100, NOW).await,
        Err(StorageError::NotFound)
    ));
    // The last active one cannot be revoked.
    assert!(matches!(
        s.revoke_admin_token(second, NOW + 13).await,
        Err(StorageError::Conflict(_))
    ));
    assert_eq!(
        s.authenticate_admin(sha("second"), NOW + 14).await.unwrap(),
        Some(second)
    );
}

async fn admin_token_revocation_keeps_one_active(f: &Fixture) {
    let s = f.s();
    let replicas = [f.replica().await, f.replica().await];
    for round in 0..5 {
        // Two active tokens revoked at once through two replicas: exactly one revocation wins.
        let a = s
            .create_admin_token(sha(format!("a-{round}")), "a", NOW)
            .await
            .unwrap();
        let b = s
            .create_admin_token(sha(format!("b-{round}")), "b", NOW)
            .await
            .unwrap();
        if round > 0 {
            // Leave only a and b active.
            for token in s.list_admin_tokens().await.unwrap() {
                if token.revoked_at.is_none() && token.id != a && token.id != b {
                    s.revoke_admin_token(token.id, NOW).await.unwrap();
                }
            }
        }
        let (one, two) = (replicas[0].clone(), replicas[1].clone());
        let (ra, rb) = tokio::join!(
            tokio::spawn(async move { one.revoke_admin_token(a, NOW + 1).await }),
            tokio::spawn(async move { two.revoke_admin_token(b, NOW + 1).await }),
        );
        let results = [ra.unwrap(), rb.unwrap()];
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(StorageError::Conflict(_))))
        );
        let active = s
            .list_admin_tokens()
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.revoked_at.is_none())
            .count();
        assert_eq!(active, 1, "round {round}");
    }
}

async fn enrollment_attempt_counting(f: &Fixture) {
    let s = f.s();
    let replica = f.replica().await;
    let window = 60_000;
    assert_eq!(s.enrollment_attempts("10.0.0.1", NOW).await.unwrap(), 0);
    assert_eq!(
        s.reserve_enrollment_attempt("10.0.0.1", NOW, window)
            .await
            .unwrap(),
        1
    );
    // Replicas share the counter.
    assert_eq!(
        replica
            .reserve_enrollment_attempt("10.0.0.1", NOW + 10, window)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.reserve_enrollment_attempt("10.0.0.1", NOW + 20, window)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        s.reserve_enrollment_attempt("10.0.0.2", NOW + 20, window)
            .await
            .unwrap(),
        1
    );
    // A successful attempt gives its reservation back; never below zero.
    s.refund_enrollment_attempt("10.0.0.1", NOW + 25)
        .await
        .unwrap();
    assert_eq!(
        s.enrollment_attempts("10.0.0.1", NOW + 30).await.unwrap(),
        2
    );
    assert_eq!(
        replica
            .enrollment_attempts("10.0.0.1", NOW + 30)
            .await
            .unwrap(),
        2
    );
    for _ in 0..3 {
        s.refund_enrollment_attempt("10.0.0.2", NOW + 30)
            .await
            .unwrap();
    }
    assert_eq!(
        s.enrollment_attempts("10.0.0.2", NOW + 30).await.unwrap(),
        0
    );
    s.refund_enrollment_attempt("never-seen", NOW)
        .await
        .unwrap();
    assert_eq!(s.enrollment_attempts("never-seen", NOW).await.unwrap(), 0);
    // After the window: forgotten, and a new window starts.
    assert_eq!(
        s.enrollment_attempts("10.0.0.1", NOW + window)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.reserve_enrollment_attempt("10.0.0.1", NOW + window + 1, window)
            .await
            .unwrap(),
        1
    );
    // Concurrent attempts from several replicas each get their own number: 1..=N, so at most
    // `limit` of them see a number within the limit.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let handle = if i % 2 == 0 {
            f.storage.clone()
        } else {
            replica.clone()
        };
        tasks.push(tokio::spawn(async move {
            handle
                .reserve_enrollment_attempt("10.0.0.3", NOW + 100, window)
                .await
                .unwrap()
        }));
    }
    let mut counts = Vec::new();
    for task in tasks {
        counts.push(task.await.unwrap());
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=40).collect::<Vec<u32>>());
}

async fn reenrollment_replaces_the_credential_and_keeps_the_device(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (device, old_token) = enroll(s, Scope::Commune("c1".into()), "Tablet 2").await;
    let record = RecordId::new();
    s.ingest(&device, vec![doc(record, "c1", chain("r", 2, 0))], NOW)
        .await
        .unwrap();
    s.record_device_status(device.id, 3, NOW + 1).await.unwrap();
    s.set_cursor_issued(device.id, 17).await.unwrap();
    s.record_refusals(
        device.id,
        &[RefusalRow {
            doc: RecordId::new(),
            code: "immutable_field".into(),
            message: "received_at changed".into(),
        }],
        NOW + 1,
    )
    .await
    .unwrap();
    // Revoked by mistake, with a wipe order even.
    s.revoke_and_wipe_device(device.id).await.unwrap();

    s.create_reenrollment_code(device.id, sha("re"), NOW + HOUR)
        .await
        .unwrap();
    let again = s
        .enroll(
            sha("re"),
            device.id,
            sha("new-token"),
            "ignored label",
            NOW + 2,
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        Device {
            id: device.id,
            scope: Scope::Commune("c1".into()),
            label: "Tablet 2".into(),
            revoked: false,
            wiped: false,
        }
    );
    // The old token stops at once, on every replica; the new one works.
    let replica = f.replica().await;
    assert_eq!(replica.authenticate(old_token).await.unwrap(), None);
    assert_eq!(s.authenticate(old_token).await.unwrap(), None);
    assert_eq!(
        replica.authenticate(sha("new-token")).await.unwrap(),
        Some(again.clone())
    );
    // Everything the server holds for it stays.
    let info = s.list_devices(None).await.unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].enrolled_at, NOW);
    assert_eq!(info[0].changes_pushed, 2);
    assert_eq!(info[0].pending_docs, Some(3));
    assert_eq!(info[0].refused_docs, 1);
    assert_eq!(s.cursor_issued(device.id).await.unwrap(), 17);
    assert_eq!(s.doc_changes(record).await.unwrap().len(), 2);
    // And it pushes again.
    let outcome = s
        .ingest(&again, vec![doc(record, "c1", chain("r", 3, 0))], NOW + 3)
        .await
        .unwrap();
    assert_eq!((outcome.stored, outcome.duplicates), (1, 2));
}

async fn reenrollment_codes_are_bound_single_use_and_expire(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (device, _) = enroll(s, Scope::Commune("c1".into()), "t").await;
    let (other, _) = enroll(s, Scope::Commune("c2".into()), "o").await;
    assert!(matches!(
        s.create_reenrollment_code(DeviceId::new(), sha("nobody"), NOW + HOUR)
            .await,
        Err(StorageError::NotFound)
    ));
    s.create_reenrollment_code(device.id, sha("re"), NOW + HOUR)
        .await
        .unwrap();
    assert!(matches!(
        s.create_reenrollment_code(device.id, sha("re"), NOW + HOUR)
            .await,
        Err(StorageError::AlreadyExists)
    ));
    // Another device id, known or new, gets the answer an unknown code gets, and the code stays.
    for wrong in [other.id, DeviceId::new()] {
        assert!(matches!(
            s.enroll(sha("re"), wrong, sha("t-wrong"), "x", NOW).await,
            Err(StorageError::InvalidEnrollmentCode)
        ));
    }
    assert_eq!(s.list_devices(None).await.unwrap().len(), 2);
    // A token hash already taken leaves the code unused too.
    let (_, taken) = enroll(s, Scope::Commune("c1".into()), "third").await;
    assert!(matches!(
        s.enroll(sha("re"), device.id, taken, "x", NOW).await,
        Err(StorageError::AlreadyExists)
    ));
    // Raced through replicas: exactly one wins.
    let replicas = [f.replica().await, f.replica().await];
    let mut tasks = Vec::new();
    for i in 0..6 {
        let replica = replicas[i % 2].clone();
        let id = device.id;
        tasks.push(tokio::spawn(async move {
            replica
                .enroll(sha("re"), id, sha(format!("race-{i}")), "t", NOW + 1)
                .await
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(d) => {
                assert_eq!(d.id, device.id);
                won += 1;
            }
            Err(StorageError::InvalidEnrollmentCode) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(won, 1);
    // Expiry as for enrollment codes: valid strictly before `expires_at`.
    s.create_reenrollment_code(device.id, sha("short"), NOW + 10)
        .await
        .unwrap();
    assert!(matches!(
        s.enroll(sha("short"), device.id, sha("late"), "t", NOW + 10)
            .await,
        Err(StorageError::InvalidEnrollmentCode)
    ));
    // An enrollment code never takes over a known device id.
    s.create_enrollment_code(&Scope::Commune("c1".into()), sha("plain"), NOW + HOUR)
        .await
        .unwrap();
    assert!(matches!(
        s.enroll(sha("plain"), device.id, sha("steal"), "t", NOW)
            .await,
        Err(StorageError::AlreadyExists)
    ));
}

async fn revocation_with_wipe(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (plain, plain_token) = enroll(s, Scope::Commune("c1".into()), "plain").await;
    let (wiped, wiped_token) = enroll(s, Scope::Commune("c1".into()), "wiped").await;
    s.revoke_device(plain.id).await.unwrap();
    s.revoke_and_wipe_device(wiped.id).await.unwrap();
    s.revoke_and_wipe_device(wiped.id).await.unwrap(); // idempotent
    // A later plain revocation does not cancel the wipe order.
    s.revoke_device(wiped.id).await.unwrap();
    let seen = s.authenticate(plain_token).await.unwrap().unwrap();
    assert!(seen.revoked && !seen.wiped);
    let seen = f
        .replica()
        .await
        .authenticate(wiped_token)
        .await
        .unwrap()
        .unwrap();
    assert!(seen.revoked && seen.wiped);
    let listed: HashMap<DeviceId, (bool, bool)> = s
        .list_devices(None)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.device.id, (i.device.revoked, i.device.wiped)))
        .collect();
    assert_eq!(listed[&plain.id], (true, false));
    assert_eq!(listed[&wiped.id], (true, true));
    assert!(matches!(
        s.revoke_and_wipe_device(DeviceId::new()).await,
        Err(StorageError::NotFound)
    ));
    // Nothing more is stored from it.
    assert!(matches!(
        s.ingest(
            &wiped,
            vec![doc(RecordId::new(), "c1", chain("w", 1, 0))],
            NOW
        )
        .await,
        Err(StorageError::NotFound)
    ));
}

async fn device_status_clamps_to_i64(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (device, _) = enroll(s, Scope::Commune("c1".into()), "t").await;
    for (reported, stored) in [
        (u64::MAX, i64::MAX as u64),
        (i64::MAX as u64 + 1, i64::MAX as u64),
        (7, 7),
    ] {
        s.record_device_status(device.id, reported, NOW)
            .await
            .unwrap();
        let info = s.list_devices(None).await.unwrap();
        assert_eq!(info[0].pending_docs, Some(stored), "{reported}");
    }
}

fn refusal(doc: RecordId, code: &str, message: &str) -> RefusalRow {
    RefusalRow {
        doc,
        code: code.into(),
        message: message.into(),
    }
}

async fn refusals_upsert_clear_and_list(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (a, _) = enroll(s, Scope::Commune("c1".into()), "a").await;
    let (b, _) = enroll(s, Scope::Commune("c2".into()), "b").await;
    let (x, y, z) = (RecordId::new(), RecordId::new(), RecordId::new());
    assert!(s.refusals(None).await.unwrap().is_empty());
    s.record_refusals(a.id, &[], NOW).await.unwrap();
    s.record_refusals(
        a.id,
        &[
            refusal(x, "forged_actor", "an actor that is not this device"),
            refusal(y, "immutable_field", "received_at changed"),
            // Named twice in one call: counted once, the last entry wins.
            refusal(y, "immutable_field", "due_at changed"),
        ],
        NOW,
    )
    .await
    .unwrap();
    s.record_refusals(
        a.id,
        &[refusal(x, "bad_transition", "returned -> received")],
        NOW + 5,
    )
    .await
    .unwrap();
    s.record_refusals(
        b.id,
        &[refusal(z, "too_large", "notes over 1 MiB")],
        NOW + 3,
    )
    .await
    .unwrap();
    // Unknown devices are ignored.
    s.record_refusals(DeviceId::new(), &[refusal(z, "x", "y")], NOW)
        .await
        .unwrap();

    let of_a = f.replica().await.refusals(Some(a.id)).await.unwrap();
    assert_eq!(of_a.len(), 2);
    // Newest first: x (NOW + 5), then y (NOW).
    assert_eq!(
        (
            of_a[0].device,
            of_a[0].doc,
            of_a[0].code.as_str(),
            of_a[0].message.as_str(),
            of_a[0].first_at,
            of_a[0].last_at,
            of_a[0].count
        ),
        (
            a.id,
            x,
            "bad_transition",
            "returned -> received",
            NOW,
            NOW + 5,
            2
        )
    );
    assert_eq!(
        (of_a[1].doc, of_a[1].message.as_str(), of_a[1].count),
        (y, "due_at changed", 1)
    );
    let all = s.refusals(None).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.doc).collect::<Vec<_>>(),
        [x, z, y],
        "every device's, newest first"
    );
    let counts: HashMap<DeviceId, u64> = s
        .list_devices(None)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.device.id, i.refused_docs))
        .collect();
    assert_eq!((counts[&a.id], counts[&b.id]), (2, 1));

    // Accepted later: cleared for that device only; unknown pairs are ignored.
    s.clear_refusals(a.id, &[x, z, RecordId::new()])
        .await
        .unwrap();
    s.clear_refusals(a.id, &[]).await.unwrap();
    s.clear_refusals(DeviceId::new(), &[y]).await.unwrap();
    let left: Vec<_> = s
        .refusals(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.device, r.doc))
        .collect();
    assert_eq!(left, [(b.id, z), (a.id, y)]);

    // Long codes and messages are cut at a character boundary.
    let long = "Đ".repeat(MAX_REFUSAL_MESSAGE_BYTES);
    s.record_refusals(a.id, &[refusal(x, &"c".repeat(500), &long)], NOW + 9)
        .await
        .unwrap();
    let cut = s.refusals(Some(a.id)).await.unwrap();
    assert!(cut[0].code.len() <= 64 && !cut[0].code.is_empty());
    assert!(cut[0].message.len() <= MAX_REFUSAL_MESSAGE_BYTES);
    assert!(cut[0].message.len() > MAX_REFUSAL_MESSAGE_BYTES - 4);
    assert!(cut[0].message.chars().all(|c| c == 'Đ'));
}

async fn refusals_are_bounded_per_device(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (a, _) = enroll(s, Scope::Commune("c1".into()), "a").await;
    let (b, _) = enroll(s, Scope::Commune("c1".into()), "b").await;
    let b_doc = RecordId::new();
    s.record_refusals(b.id, &[refusal(b_doc, "x", "kept")], NOW)
        .await
        .unwrap();
    // Three batches, each refusal newer than the previous batch.
    let mut docs = Vec::new();
    for batch in 0..3 {
        let rows: Vec<RefusalRow> = (0..500)
            .map(|_| {
                let doc = RecordId::new();
                docs.push(doc);
                refusal(doc, "x", "y")
            })
            .collect();
        s.record_refusals(a.id, &rows, NOW + 1 + batch)
            .await
            .unwrap();
    }
    let kept = s.refusals(Some(a.id)).await.unwrap();
    assert_eq!(kept.len(), MAX_REFUSALS_PER_DEVICE);
    // The oldest batch went first.
    let kept: HashSet<RecordId> = kept.into_iter().map(|r| r.doc).collect();
    assert!(docs[1000..].iter().all(|d| kept.contains(d)));
    assert!(!kept.contains(&docs[0]));
    // Another device's rows are not touched by this device's bound.
    assert_eq!(s.refusals(Some(b.id)).await.unwrap()[0].doc, b_doc);
    let info: HashMap<DeviceId, u64> = s
        .list_devices(None)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.device.id, i.refused_docs))
        .collect();
    assert_eq!(info[&a.id], MAX_REFUSALS_PER_DEVICE as u64);
    // The operators' list across devices is bounded too.
    assert_eq!(s.refusals(None).await.unwrap().len(), 1_000);
}

async fn cursor_issued_is_stored_as_given(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (device, _) = enroll(s, Scope::Commune("c1".into()), "t").await;
    let (other, _) = enroll(s, Scope::Commune("c1".into()), "o").await;
    assert_eq!(s.cursor_issued(device.id).await.unwrap(), 0);
    assert_eq!(s.cursor_issued(DeviceId::new()).await.unwrap(), 0);
    s.set_cursor_issued(device.id, 120).await.unwrap();
    assert_eq!(
        f.replica().await.cursor_issued(device.id).await.unwrap(),
        120
    );
    // Not a running maximum: a restored store's lower cursor is recorded as given.
    s.set_cursor_issued(device.id, 40).await.unwrap();
    assert_eq!(s.cursor_issued(device.id).await.unwrap(), 40);
    s.set_cursor_issued(device.id, u64::MAX).await.unwrap();
    assert_eq!(s.cursor_issued(device.id).await.unwrap(), i64::MAX as u64);
    assert_eq!(s.cursor_issued(other.id).await.unwrap(), 0);
    // Unknown devices are ignored.
    s.set_cursor_issued(DeviceId::new(), 5).await.unwrap();
}

async fn ingest_registers_and_dedupes(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (device, _) = enroll(s, Scope::Commune("c1".into()), "t").await;
    let a = RecordId::new();
    let b = RecordId::new();
    assert_eq!(s.doc_registration(a).await.unwrap(), None);
    assert!(s.doc_changes(a).await.unwrap().is_empty());

    let mut citizen = doc(b, "c1", chain("b", 1, 0));
    citizen.kind = RecordKind::CitizenRequest;
    let out = s
        .ingest(&device, vec![doc(a, "c1", chain("a", 3, 0)), citizen], NOW)
        .await
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (4, 0));
    assert!(out.missing_deps.is_empty());
    assert_eq!(
        s.doc_registration(a).await.unwrap(),
        Some(("c1".into(), RecordKind::Application))
    );
    assert_eq!(
        s.doc_registration(b).await.unwrap(),
        Some(("c1".into(), RecordKind::CitizenRequest))
    );

    // Resending everything plus one new change; one change twice in the batch.
    let mut changes = chain("a", 4, 0);
    changes.push(change("a-3", &["a-2"]));
    let out = s
        .ingest(&device, vec![doc(a, "c1", changes)], NOW + 1)
        .await
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (1, 4));
    let stored: Vec<String> = s
        .doc_changes(a)
        .await
        .unwrap()
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect();
    assert_eq!(stored, ["a-0", "a-1", "a-2", "a-3"]);
    let info = s.list_devices(None).await.unwrap();
    assert_eq!(info[0].changes_pushed, 5);
    assert_eq!(info[0].last_sync_at, Some(NOW + 1));

    // The batched lookup agrees with the one-by-one reads, ignores unknown ids and repeats.
    let unknown = RecordId::new();
    let known = s.known_docs(&[a, unknown, b, a]).await.unwrap();
    assert_eq!(known.len(), 2);
    assert!(!known.contains_key(&unknown));
    for id in [a, b] {
        let (commune, kind) = s.doc_registration(id).await.unwrap().unwrap();
        let entry = &known[&id];
        assert_eq!((&entry.commune, entry.kind), (&commune, kind));
        assert_eq!(entry.changes, s.doc_changes(id).await.unwrap());
    }
    assert!(s.known_docs(&[]).await.unwrap().is_empty());

    // The feed carries the device and the server receive time.
    let items = read_all(s, &Scope::Commune("c1".into()), None).await;
    assert_eq!(items.len(), 5);
    assert!(items.iter().all(|i| i.device == device.id));
    assert_eq!(items[4].received_at, NOW + 1);
    assert_eq!(items[3].kind, RecordKind::CitizenRequest);
}

async fn doc_history_keeps_who_pushed_and_when(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (first, _) = enroll(s, Scope::Commune("c1".into()), "t1").await;
    let (second, _) = enroll(s, Scope::Commune("c1".into()), "t2").await;
    let a = RecordId::new();
    let changes = chain("h", 3, 0);
    s.ingest(&first, vec![doc(a, "c1", changes[..2].to_vec())], NOW)
        .await
        .unwrap();
    s.ingest(&second, vec![doc(a, "c1", changes[2..].to_vec())], NOW + 5)
        .await
        .unwrap();
    // A replay stores nothing and changes no fact.
    s.ingest(&second, vec![doc(a, "c1", changes[..1].to_vec())], NOW + 9)
        .await
        .unwrap();
    let history = s.doc_history(a).await.unwrap();
    let facts: Vec<(Vec<u8>, DeviceId, i64)> = history
        .into_iter()
        .map(|c| (c.bytes, c.pushed_by, c.received_at))
        .collect();
    assert_eq!(
        facts,
        vec![
            (changes[0].bytes.clone(), first.id, NOW),
            (changes[1].bytes.clone(), first.id, NOW),
            (changes[2].bytes.clone(), second.id, NOW + 5),
        ]
    );
    assert!(s.doc_history(RecordId::new()).await.unwrap().is_empty());
}

async fn ingest_missing_deps_skips_only_that_doc(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (device, _) = enroll(s, Scope::Commune("c1".into()), "t").await;
    let (a, b, c) = (RecordId::new(), RecordId::new(), RecordId::new());
    s.ingest(&device, vec![doc(c, "c1", chain("c", 1, 0))], NOW)
        .await
        .unwrap();

    let batch = vec![
        // Deps satisfied earlier in the batch.
        doc(a, "c1", chain("a", 2, 0)),
        // "b-0" is missing: the whole doc is skipped, even its first (fine) change.
        doc(b, "c1", vec![change("b-x", &[]), change("b-1", &["b-0"])]),
        // Dep satisfied by a stored change.
        doc(c, "c1", vec![change("c-1", &["c-0"])]),
    ];
    let out = s.ingest(&device, batch, NOW + 1).await.unwrap();
    assert_eq!(out.stored, 3);
    assert_eq!(out.missing_deps, vec![b]);
    assert_eq!(s.doc_changes(a).await.unwrap().len(), 2);
    assert_eq!(s.doc_changes(c).await.unwrap().len(), 2);
    assert!(s.doc_changes(b).await.unwrap().is_empty());
    assert_eq!(s.doc_registration(b).await.unwrap(), None);

    // The client resends b's full history.
    let out = s
        .ingest(
            &device,
            vec![doc(
                b,
                "c1",
                vec![
                    change("b-0", &[]),
                    change("b-x", &[]),
                    change("b-1", &["b-0"]),
                ],
            )],
            NOW + 2,
        )
        .await
        .unwrap();
    assert_eq!((out.stored, out.missing_deps.len()), (3, 0));
    let info = s.list_devices(None).await.unwrap();
    assert_eq!(info[0].changes_pushed, 7);
}

async fn out_of_scope_rejects_the_whole_batch(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (d1, _) = enroll(s, Scope::Commune("c1".into()), "c1 tablet").await;
    let (d2, _) = enroll(s, Scope::Commune("c2".into()), "c2 tablet").await;
    let (province, _) = enroll(s, Scope::Province, "province").await;
    let x = RecordId::new();
    s.ingest(&d1, vec![doc(x, "c1", chain("x", 1, 0))], NOW)
        .await
        .unwrap();
    let before = read_all(s, &Scope::Province, None).await.len();

    // A c2 tablet pushes a fresh doc and x, claiming x is in c2: x is registered to c1.
    let y = RecordId::new();
    let result = s
        .ingest(
            &d2,
            vec![
                doc(y, "c2", chain("y", 2, 0)),
                doc(x, "c2", chain("x", 2, 0)),
            ],
            NOW + 1,
        )
        .await;
    assert!(is_out_of_scope(result, x));
    // A c2 tablet pushes into c1.
    let result = s
        .ingest(
            &d2,
            vec![
                doc(y, "c2", chain("y", 2, 0)),
                doc(x, "c1", chain("x", 2, 0)),
            ],
            NOW + 1,
        )
        .await;
    assert!(is_out_of_scope(result, x));
    // A commune that does not exist (even for the province).
    let z = RecordId::new();
    let result = s
        .ingest(&province, vec![doc(z, "c9", chain("z", 1, 0))], NOW + 1)
        .await;
    assert!(is_out_of_scope(result, z));
    // One doc twice in a batch with two communes.
    let result = s
        .ingest(
            &province,
            vec![
                doc(z, "c1", chain("z", 1, 0)),
                doc(z, "c2", chain("z", 2, 0)),
            ],
            NOW + 1,
        )
        .await;
    assert!(is_out_of_scope(result, z));

    // Nothing changed.
    assert_eq!(s.doc_registration(y).await.unwrap(), None);
    assert_eq!(s.doc_registration(z).await.unwrap(), None);
    assert_eq!(s.doc_changes(x).await.unwrap().len(), 1);
    assert_eq!(read_all(s, &Scope::Province, None).await.len(), before);
    let d2_info = s
        .list_devices(Some(&Scope::Commune("c2".into())))
        .await
        .unwrap();
    assert_eq!(d2_info[0].last_sync_at, None);
    assert_eq!(d2_info[0].changes_pushed, 0);

    // The province may push into any commune, c2 tablets into c2.
    s.ingest(
        &province,
        vec![
            doc(x, "c1", chain("x", 2, 0)),
            doc(z, "c2", chain("z", 1, 0)),
        ],
        NOW + 2,
    )
    .await
    .unwrap();
    s.ingest(&d2, vec![doc(y, "c2", chain("y", 1, 0))], NOW + 2)
        .await
        .unwrap();
    assert_eq!(s.doc_changes(x).await.unwrap().len(), 2);
}

async fn kind_mismatch_is_out_of_scope(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (device, _) = enroll(s, Scope::Commune("c1".into()), "t").await;
    let x = RecordId::new();
    s.ingest(&device, vec![doc(x, "c1", chain("x", 1, 0))], NOW)
        .await
        .unwrap();
    let fresh = RecordId::new();
    let mut wrong = doc(x, "c1", chain("x", 2, 0));
    wrong.kind = RecordKind::CitizenRequest;
    let result = s
        .ingest(
            &device,
            vec![doc(fresh, "c1", chain("f", 1, 0)), wrong],
            NOW + 1,
        )
        .await;
    assert!(is_out_of_scope(result, x));
    assert_eq!(s.doc_changes(x).await.unwrap().len(), 1);
    assert_eq!(s.doc_registration(fresh).await.unwrap(), None);
    assert_eq!(
        s.doc_registration(x).await.unwrap(),
        Some(("c1".into(), RecordKind::Application))
    );
}

async fn feed_order_and_exclusion(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let c1 = Scope::Commune("c1".into());
    let (d1, _) = enroll(s, c1.clone(), "d1").await;
    let (d2, _) = enroll(s, c1.clone(), "d2").await;
    let (other, _) = enroll(s, Scope::Commune("c2".into()), "other").await;
    let (a, b) = (RecordId::new(), RecordId::new());
    s.ingest(&d1, vec![doc(a, "c1", chain("a", 3, 0))], NOW)
        .await
        .unwrap();
    s.ingest(
        &other,
        vec![doc(RecordId::new(), "c2", chain("o", 2, 0))],
        NOW,
    )
    .await
    .unwrap();
    s.ingest(&d2, vec![doc(b, "c1", chain("b", 2, 0))], NOW + 1)
        .await
        .unwrap();
    s.ingest(&d1, vec![doc(a, "c1", chain("a", 4, 0))], NOW + 2)
        .await
        .unwrap();

    let page = s.feed(&c1, 0, None, 1 << 20, 100).await.unwrap();
    assert_eq!(
        page.items.iter().map(|i| i.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6],
        "a commune's feed numbers are its own, without gaps"
    );
    assert_eq!(
        bodies(&page.items),
        ["a-0", "a-1", "a-2", "b-0", "b-1", "a-3"]
    );
    assert_eq!((page.next_cursor, page.more), (6, false));
    assert_eq!(page.items[3].doc, b);
    assert_eq!(page.items[3].device, d2.id);

    // d2 does not get its own changes back.
    let page = s.feed(&c1, 0, Some(d2.id), 1 << 20, 100).await.unwrap();
    assert_eq!(bodies(&page.items), ["a-0", "a-1", "a-2", "a-3"]);
    assert_eq!((page.next_cursor, page.more), (6, false));
    // From a cursor.
    let page = s.feed(&c1, 3, Some(d1.id), 1 << 20, 100).await.unwrap();
    assert_eq!(bodies(&page.items), ["b-0", "b-1"]);
    assert_eq!((page.next_cursor, page.more), (6, false));
    // After the end: nothing, cursor kept.
    let page = s.feed(&c1, 6, None, 1 << 20, 100).await.unwrap();
    assert!(page.items.is_empty());
    assert_eq!((page.next_cursor, page.more), (6, false));
    // A commune with nothing, and one that does not exist.
    let page = s
        .feed(&Scope::Commune("c9".into()), 0, None, 100, 100)
        .await
        .unwrap();
    assert!(page.items.is_empty());
    assert_eq!((page.next_cursor, page.more), (0, false));
    let c2 = s
        .feed(&Scope::Commune("c2".into()), 0, None, 1 << 20, 100)
        .await
        .unwrap();
    assert_eq!(bodies(&c2.items), ["o-0", "o-1"]);
}

async fn feed_cursor_advances_past_excluded_changes(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let c1 = Scope::Commune("c1".into());
    let (d1, _) = enroll(s, c1.clone(), "d1").await;
    let (d2, _) = enroll(s, c1.clone(), "d2").await;
    s.ingest(&d2, vec![doc(RecordId::new(), "c1", chain("b", 1, 0))], NOW)
        .await
        .unwrap();
    s.ingest(&d1, vec![doc(RecordId::new(), "c1", chain("a", 5, 0))], NOW)
        .await
        .unwrap();
    // d1 reads: one item of d2, then only its own changes, which still move its cursor.
    let page = s.feed(&c1, 0, Some(d1.id), 1 << 20, 1).await.unwrap();
    assert_eq!(bodies(&page.items), ["b-0"]);
    assert_eq!((page.next_cursor, page.more), (6, false));
    let page = s.feed(&c1, 1, Some(d1.id), 1 << 20, 10).await.unwrap();
    assert!(page.items.is_empty());
    assert_eq!((page.next_cursor, page.more), (6, false));
    // With a later change of d2, the page stops right after it.
    s.ingest(&d2, vec![doc(RecordId::new(), "c1", chain("c", 1, 0))], NOW)
        .await
        .unwrap();
    s.ingest(&d1, vec![doc(RecordId::new(), "c1", chain("d", 1, 0))], NOW)
        .await
        .unwrap();
    let page = s.feed(&c1, 6, Some(d1.id), 1 << 20, 1).await.unwrap();
    assert_eq!(bodies(&page.items), ["c-0"]);
    // It may step over d1's seq 8 (excluded) after reaching max_items: those cost nothing.
    assert!(page.next_cursor == 7 || page.next_cursor == 8);
    assert_eq!(page.more, page.next_cursor == 7);
}

async fn feed_byte_and_item_bounds(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let c1 = Scope::Commune("c1".into());
    let (d1, _) = enroll(s, c1.clone(), "d1").await;
    // Ten changes of 100 bytes.
    s.ingest(
        &d1,
        vec![doc(RecordId::new(), "c1", chain("a", 10, 100))],
        NOW,
    )
    .await
    .unwrap();
    let page = s.feed(&c1, 0, None, 250, 100).await.unwrap();
    assert_eq!(page.items.len(), 2);
    assert!(page.items.iter().all(|i| i.bytes.len() == 100));
    assert_eq!((page.next_cursor, page.more), (2, true));
    let page = s.feed(&c1, 0, None, 300, 100).await.unwrap();
    assert_eq!(page.items.len(), 3, "exactly max_bytes fits");
    // Always at least one item, even bigger than max_bytes.
    let page = s.feed(&c1, 2, None, 10, 100).await.unwrap();
    assert_eq!(bodies(&page.items), ["a-2"]);
    assert_eq!((page.next_cursor, page.more), (3, true));
    // Item bound.
    let page = s.feed(&c1, 0, None, 1 << 20, 4).await.unwrap();
    assert_eq!(
        (page.items.len(), page.next_cursor, page.more),
        (4, 4, true)
    );
    // max_items 0 means 1.
    let page = s.feed(&c1, 0, None, 1 << 20, 0).await.unwrap();
    assert_eq!(page.items.len(), 1);
    // The last page says there is no more.
    let page = s.feed(&c1, 7, None, 1 << 20, 3).await.unwrap();
    assert_eq!(
        (page.items.len(), page.next_cursor, page.more),
        (3, 10, false)
    );
    // Paging with a byte bound visits everything once, in order.
    let mut cursor = 0;
    let mut seen = Vec::new();
    for _ in 0..100 {
        let page = s.feed(&c1, cursor, None, 150, 100).await.unwrap();
        seen.extend(page.items.iter().map(|i| i.seq));
        cursor = page.next_cursor;
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, (1..=10).collect::<Vec<u64>>());
}

async fn province_scope(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (d1, _) = enroll(s, Scope::Commune("c1".into()), "d1").await;
    let (d2, _) = enroll(s, Scope::Commune("c2".into()), "d2").await;
    let (province, _) = enroll(s, Scope::Province, "province").await;
    s.ingest(&d1, vec![doc(RecordId::new(), "c1", chain("a", 2, 0))], NOW)
        .await
        .unwrap();
    s.ingest(&d2, vec![doc(RecordId::new(), "c2", chain("b", 3, 0))], NOW)
        .await
        .unwrap();
    s.ingest(
        &province,
        vec![
            doc(RecordId::new(), "c2", chain("p", 1, 0)),
            doc(RecordId::new(), "c1", chain("q", 1, 0)),
        ],
        NOW,
    )
    .await
    .unwrap();
    s.ingest(&d1, vec![doc(RecordId::new(), "c1", chain("c", 1, 0))], NOW)
        .await
        .unwrap();

    // The province feed: every commune, in one order (commit order), its own positions.
    let all = read_all(s, &Scope::Province, None).await;
    assert_eq!(
        bodies(&all),
        ["a-0", "a-1", "b-0", "b-1", "b-2", "p-0", "q-0", "c-0"]
    );
    assert_eq!(
        all.iter().map(|i| i.seq).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<u64>>()
    );
    let page = s
        .feed(&Scope::Province, 0, Some(province.id), 1 << 20, 100)
        .await
        .unwrap();
    assert_eq!(
        bodies(&page.items),
        ["a-0", "a-1", "b-0", "b-1", "b-2", "c-0"]
    );
    assert_eq!((page.next_cursor, page.more), (8, false));
    let page = s.feed(&Scope::Province, 5, None, 1 << 20, 2).await.unwrap();
    assert_eq!(bodies(&page.items), ["p-0", "q-0"]);
    assert_eq!((page.next_cursor, page.more), (7, true));

    // Commune feeds number on their own.
    let c1 = read_all(s, &Scope::Commune("c1".into()), None).await;
    assert_eq!(bodies(&c1), ["a-0", "a-1", "q-0", "c-0"]);
    assert_eq!(c1.iter().map(|i| i.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let c2 = read_all(s, &Scope::Commune("c2".into()), None).await;
    assert_eq!(bodies(&c2), ["b-0", "b-1", "b-2", "p-0"]);
}

async fn catalogue_versions(f: &Fixture) {
    let s = f.s();
    assert_eq!(s.catalogue().await.unwrap(), None);
    assert_eq!(s.catalogue_head().await.unwrap(), None);
    assert_eq!(s.put_catalogue(r#"{"procedures":[]}"#).await.unwrap(), 1);
    let v2 = r#"{"procedures":[{"code":"1.001","name":"Đăng ký khai sinh","processing_days":1},
        {"code":"1.002","name":"Đăng ký kết hôn","processing_days":5}]}"#;
    assert_eq!(s.put_catalogue(v2).await.unwrap(), 2);
    assert_eq!(s.catalogue().await.unwrap(), Some((2, v2.to_owned())));
    let changed: Vec<(u64, String, bool)> = s
        .catalogue_changes(0, "", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.changed, row.code, row.removed))
        .collect();
    assert_eq!(
        changed,
        [(2, "1.001".into(), false), (2, "1.002".into(), false)]
    );
    // A page starts after a position.
    let after = s.catalogue_changes(2, "1.001", 10).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].code, "1.002");

    // Through another connection: one procedure gets a new version, the other is removed, the
    // calendar moves. Only those entries change.
    let replica = f.replica().await;
    let v3 = r#"{"procedures":[{"code":"1.001","name":"Đăng ký khai sinh","processing_days":2,"version":2}],
        "holidays":["2027-09-02"]}"#;
    assert_eq!(replica.put_catalogue(v3).await.unwrap(), 3);
    let since_2 = s.catalogue_changes(2, "", 10).await.unwrap();
    let summary: Vec<(String, u64, bool)> = since_2
        .iter()
        .map(|row| (row.code.clone(), row.version, row.removed))
        .collect();
    assert_eq!(
        summary,
        [("1.001".into(), 2, false), ("1.002".into(), 1, true)]
    );
    let head = s.catalogue_head().await.unwrap().unwrap();
    assert_eq!((head.version, head.calendar_version), (3, 3));
    assert!(head.calendar.contains("2027-09-02"));
    // Every published calendar stays, found by any catalogue position at or after it.
    assert_eq!(s.calendar_at(0).await.unwrap(), None);
    let first = s.calendar_at(2).await.unwrap().unwrap();
    assert_eq!(first, (1, "[]".to_owned()));
    assert_eq!(s.calendar_at(1).await.unwrap(), Some(first));
    for position in [3, 4, u64::MAX] {
        let (version, calendar) = s.calendar_at(position).await.unwrap().unwrap();
        assert_eq!(version, 3);
        assert!(calendar.contains("2027-09-02"));
    }
    // Every version stays, for the dossiers that pinned them.
    let mut versions: Vec<(String, u64)> = s
        .procedure_versions()
        .await
        .unwrap()
        .into_iter()
        .map(|(code, version, _)| (code, version))
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        [
            ("1.001".into(), 1),
            ("1.001".into(), 2),
            ("1.002".into(), 1)
        ]
    );
    // A version changed in place is refused, and nothing changes.
    let in_place =
        r#"{"procedures":[{"code":"1.001","name":"Khai sinh","processing_days":2,"version":2}]}"#;
    assert!(matches!(
        s.put_catalogue(in_place).await,
        Err(StorageError::Conflict(_))
    ));
    assert_eq!(s.catalogue_head().await.unwrap().unwrap().version, 3);
    // A plan made against an older version loses to the publication in between.
    let stale = communesync_server::storage::CataloguePublication {
        base_version: 2,
        json: "{}".into(),
        ..Default::default()
    };
    assert!(matches!(
        s.publish_catalogue(stale).await,
        Err(StorageError::Conflict(_))
    ));
}

async fn store_epoch_is_stable_until_renewed(f: &Fixture) {
    let s = f.s();
    let first = s.store_epoch().await.unwrap();
    assert_eq!(first.len(), 32, "{first}");
    assert!(first.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
    // Stable across reads and handles (replicas agree; a reopen keeps it).
    assert_eq!(s.store_epoch().await.unwrap(), first);
    let replica = f.replica().await;
    assert_eq!(replica.store_epoch().await.unwrap(), first);
    let renewed = replica.renew_store_epoch().await.unwrap();
    assert_ne!(renewed, first);
    assert_eq!(s.store_epoch().await.unwrap(), renewed);
    assert!(communesync_core::protocol::parse_store_epoch(renewed.as_bytes()).is_some());
}

async fn stats(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    s.create_commune("c3", "Xã Thanh Nưa").await.unwrap();
    let (d1, _) = enroll(s, Scope::Commune("c1".into()), "d1").await;
    let (gone, _) = enroll(s, Scope::Commune("c1".into()), "gone").await;
    enroll(s, Scope::Commune("c2".into()), "d2").await;
    enroll(s, Scope::Province, "province").await;
    s.revoke_device(gone.id).await.unwrap();
    s.ingest(
        &d1,
        vec![
            doc(RecordId::new(), "c1", chain("a", 2, 0)),
            doc(RecordId::new(), "c1", chain("b", 1, 0)),
        ],
        NOW,
    )
    .await
    .unwrap();
    s.ingest(
        &d1,
        vec![doc(RecordId::new(), "c1", chain("c", 1, 0))],
        NOW + 9,
    )
    .await
    .unwrap();
    let stats = s.stats().await.unwrap();
    let by_code: HashMap<&str, _> = stats.iter().map(|st| (st.code.as_str(), st)).collect();
    assert_eq!(
        stats.iter().map(|st| st.code.as_str()).collect::<Vec<_>>(),
        ["c1", "c2", "c3"]
    );
    let c1 = by_code["c1"];
    assert_eq!((c1.documents, c1.changes, c1.devices), (3, 4, 1));
    assert_eq!(c1.last_change_at, Some(NOW + 9));
    let c2 = by_code["c2"];
    assert_eq!(
        (c2.documents, c2.changes, c2.devices, c2.last_change_at),
        (0, 0, 1, None)
    );
    let c3 = by_code["c3"];
    assert_eq!(
        (c3.documents, c3.changes, c3.devices, c3.last_change_at),
        (0, 0, 0, None)
    );
}

async fn reopen_keeps_data(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (device, token) = enroll(s, Scope::Commune("c1".into()), "t").await;
    let a = RecordId::new();
    s.ingest(&device, vec![doc(a, "c1", chain("a", 2, 0))], NOW)
        .await
        .unwrap();
    // Several replicas starting at once on a migrated database.
    let mut opens = Vec::new();
    for _ in 0..4 {
        let url = f.url.clone();
        opens.push(tokio::spawn(async move { storage::open(&url).await }));
    }
    for open in opens {
        let replica = open.await.unwrap().expect("reopen");
        assert_eq!(
            replica.authenticate(token).await.unwrap(),
            Some(device.clone())
        );
        assert_eq!(replica.doc_changes(a).await.unwrap().len(), 2);
        assert_eq!(replica.list_communes().await.unwrap().len(), 2);
    }
}

/// The "never skip a late commit" property, under real concurrency.
///
/// Writers on three replicas (separate connection pools, so separate connections and
/// transactions) push many small batches into one commune while readers page the commune feed
/// and the province feed with their cursors, as tablets do. At the end each reader must have
/// seen every change exactly once, in strictly increasing position order.
///
/// Why this catches a naive implementation: if positions came from a plain SEQUENCE (or
/// `max(seq) + 1` without a lock held to commit), two ingests could take 41 and 42 and commit
/// 42 first. A reader paging in between sees 42, sets its cursor to 42 and never asks for 41
/// again, so 41 is missing from what it saw and the final comparison fails. With dozens of
/// overlapping transactions and readers polling continuously, such an inversion happens within
/// a few batches (verified by swapping the allocation for `nextval` while writing this test).
/// Positions allocated under a row lock held until commit make the inversion impossible.
async fn concurrent_ingest_feed_never_skips(f: &Fixture) {
    const WRITERS: usize = 8;
    const BATCHES: usize = 25;
    const DOCS_PER_BATCH: usize = 3;

    let s = f.s();
    communes_c1_c2(s).await;
    let replicas = [f.replica().await, f.replica().await, f.replica().await];
    let mut devices = Vec::new();
    for w in 0..WRITERS {
        devices.push(
            enroll(s, Scope::Commune("c1".into()), &format!("w{w}"))
                .await
                .0,
        );
    }
    let (noise, _) = enroll(s, Scope::Commune("c2".into()), "noise").await;

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for (i, scope) in [Scope::Commune("c1".into()), Scope::Province]
        .into_iter()
        .enumerate()
    {
        let reader = replicas[i % replicas.len()].clone();
        let done = done.clone();
        readers.push(tokio::spawn(async move {
            let mut cursor = 0;
            let mut seen: Vec<FeedItem> = Vec::new();
            let mut pages = 0usize;
            loop {
                pages += 1;
                assert!(pages < 200_000, "reader did not finish");
                // Read `done` before the page: a page read after all writers finished that says
                // "no more" proves the reader has everything.
                let finished = done.load(Ordering::SeqCst);
                let page = reader
                    .feed(&scope, cursor, None, 64 * 1024, 5)
                    .await
                    .expect("feed");
                assert!(page.next_cursor >= cursor);
                seen.extend(page.items);
                cursor = page.next_cursor;
                if finished && !page.more {
                    return (scope, seen);
                }
                if !page.more {
                    // Caught up: wait a little for the writers (a bare yield spun through the
                    // page cap on a machine with slow fsync).
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        }));
    }

    let mut writers = Vec::new();
    for (w, device) in devices.into_iter().enumerate() {
        let replica = replicas[w % replicas.len()].clone();
        writers.push(tokio::spawn(async move {
            let mut pushed = Vec::new();
            for batch in 0..BATCHES {
                let docs: Vec<IncomingDoc> = (0..DOCS_PER_BATCH)
                    .map(|d| {
                        let changes = chain(&format!("w{w}-b{batch}-d{d}"), 1 + (w + d) % 3, 0);
                        pushed.extend(changes.iter().map(|c| c.bytes.clone()));
                        doc(RecordId::new(), "c1", changes)
                    })
                    .collect();
                let out = replica.ingest(&device, docs, NOW).await.expect("ingest");
                assert!(out.missing_deps.is_empty());
            }
            pushed
        }));
    }
    // Some traffic in another commune, interleaved in the province feed.
    let noise_writer = {
        let replica = replicas[2].clone();
        tokio::spawn(async move {
            let mut pushed = Vec::new();
            for batch in 0..BATCHES {
                let changes = chain(&format!("noise-{batch}"), 2, 0);
                pushed.extend(changes.iter().map(|c| c.bytes.clone()));
                replica
                    .ingest(&noise, vec![doc(RecordId::new(), "c2", changes)], NOW)
                    .await
                    .expect("ingest noise");
            }
            pushed
        })
    };

    let mut c1_pushed = BTreeSet::new();
    for writer in writers {
        for bytes in writer.await.expect("writer") {
            assert!(c1_pushed.insert(bytes), "test bug: duplicate change body");
        }
    }
    let noise_pushed: BTreeSet<Vec<u8>> = noise_writer.await.expect("noise").into_iter().collect();
    done.store(true, Ordering::SeqCst);

    for reader in readers {
        let (scope, seen) = tokio::time::timeout(Duration::from_secs(120), reader)
            .await
            .expect("reader finished in time")
            .expect("reader");
        let expected: BTreeSet<Vec<u8>> = match scope {
            Scope::Commune(_) => c1_pushed.clone(),
            Scope::Province => c1_pushed.union(&noise_pushed).cloned().collect(),
        };
        for pair in seen.windows(2) {
            assert!(
                pair[0].seq < pair[1].seq,
                "{scope:?}: positions out of order: {} then {}",
                pair[0].seq,
                pair[1].seq
            );
        }
        let seen_bodies: BTreeSet<Vec<u8>> = seen.iter().map(|i| i.bytes.clone()).collect();
        assert_eq!(
            seen_bodies.len(),
            seen.len(),
            "{scope:?}: a change was seen twice"
        );
        let missing = expected.difference(&seen_bodies).count();
        assert_eq!(
            missing,
            0,
            "{scope:?}: the reader never saw {missing} of {} changes (skipped by its cursor)",
            expected.len()
        );
        assert_eq!(seen.len(), expected.len(), "{scope:?}: unexpected changes");
    }
}

// --- PostgreSQL only: migrations under several replicas --------------------------------------

/// Replicas starting together on an empty database: the advisory lock makes one migrate and the
/// others wait and find nothing to do (without it, concurrent `CREATE TABLE`s fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_replicas_migrate_concurrently() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { storage::open(&url).await.map(|_| ()) })
        })
        .collect();
    for open in opens {
        open.await.unwrap().expect("concurrent first open");
    }
    let versions: Vec<i64> = pg_admin(&db.url)
        .await
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        versions,
        (1..=storage::postgres::SCHEMA_VERSION).collect::<Vec<_>>()
    );
}

/// A database migrated by a newer build is refused, not damaged.
#[tokio::test]
async fn postgres_refuses_a_newer_schema() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    storage::open(&db.url).await.expect("first open");
    pg_admin(&db.url)
        .await
        .execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&(storage::postgres::SCHEMA_VERSION + 1)],
        )
        .await
        .unwrap();
    match storage::open(&db.url).await {
        Err(StorageError::Backend(message)) => assert!(message.contains("newer"), "{message}"),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

/// A database written by a build at schema version 2 (an operator token, a device, an unused
/// code), upgraded by opening it with this build.
async fn check_upgraded_from_version_2(s: &dyn ServerStorage) {
    // The token keeps working, gets an id, and can be listed and (not being the last) revoked.
    let id = s
        .authenticate_admin(sha("v2-admin"), NOW)
        .await
        .unwrap()
        .expect("the version 2 token still works");
    let tokens = s.list_admin_tokens().await.unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        (tokens[0].id, tokens[0].label.as_str(), tokens[0].created_at),
        (id, "bootstrap", None)
    );
    let new = s
        .create_admin_token(sha("v3-admin"), "new", NOW)
        .await
        .unwrap();
    assert_ne!(new, id);
    s.revoke_admin_token(id, NOW).await.unwrap();
    // The device is neither revoked nor wiped, has no refusals and no cursor.
    let device = s.authenticate(sha("v2-token")).await.unwrap().unwrap();
    assert!(!device.revoked && !device.wiped);
    assert_eq!(s.list_devices(None).await.unwrap()[0].refused_docs, 0);
    assert_eq!(s.cursor_issued(device.id).await.unwrap(), 0);
    // The unused code is an ordinary enrollment code.
    let enrolled = s
        .enroll(sha("v2-code"), DeviceId::new(), sha("t"), "t", NOW)
        .await
        .unwrap();
    assert_eq!(enrolled.scope, Scope::Commune("c1".into()));
}

/// Version 2 rows (SQLite placeholders `?n`, PostgreSQL `$n`).
fn version_2_rows(device: DeviceId, placeholder: char) -> Vec<(String, Vec<Vec<u8>>)> {
    let p = |n: u8| format!("{placeholder}{n}");
    vec![
        (
            "INSERT INTO communes (code, name) VALUES ('c1', 'c1')".into(),
            vec![],
        ),
        (
            format!(
                "INSERT INTO admin_tokens (token_hash, label) VALUES ({}, 'bootstrap')",
                p(1)
            ),
            vec![sha("v2-admin").to_vec()],
        ),
        (
            format!(
                "INSERT INTO devices (id, token_hash, commune, label, enrolled_at)
                 VALUES ({}, {}, 'c1', 'tablet', 1)",
                p(1),
                p(2)
            ),
            vec![device.0.as_bytes().to_vec(), sha("v2-token").to_vec()],
        ),
        (
            format!(
                "INSERT INTO enrollment_codes (code_hash, commune, expires_at)
                 VALUES ({}, 'c1', {NOW} + 3600000)",
                p(1)
            ),
            vec![sha("v2-code").to_vec()],
        ),
    ]
}

#[tokio::test]
async fn sqlite_upgrades_from_version_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(include_str!("../migrations/sqlite/0001_init.sql"))
            .unwrap();
        conn.execute_batch(include_str!("../migrations/sqlite/0002_device_status.sql"))
            .unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        for (sql, params) in version_2_rows(DeviceId::new(), '?') {
            conn.execute(&sql, rusqlite::params_from_iter(params))
                .unwrap();
        }
    }
    let s = storage::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    check_upgraded_from_version_2(s.as_ref()).await;
}

#[tokio::test]
async fn postgres_upgrades_from_version_2() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let client = pg_admin(&db.url).await;
    client
        .batch_execute(
            "CREATE TABLE schema_migrations (
                 version    BIGINT PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await
        .unwrap();
    client
        .batch_execute(include_str!("../migrations/postgres/0001_init.sql"))
        .await
        .unwrap();
    client
        .batch_execute(include_str!(
            "../migrations/postgres/0002_device_status.sql"
        ))
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO schema_migrations (version) VALUES (1), (2)")
        .await
        .unwrap();
    for (sql, params) in version_2_rows(DeviceId::new(), '$') {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        client.execute(&sql, &params).await.unwrap();
    }
    let s = storage::open(&db.url).await.unwrap();
    check_upgraded_from_version_2(s.as_ref()).await;
}

// --- attachments ------------------------------------------------------------------------------

const CHUNK: u32 = 16 * 1024;

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

fn referenced(commune: &str, size: u64) -> Referenced {
    Referenced {
        commune: commune.into(),
        size,
    }
}

fn upload<'a>(data: &'a [u8], index: u32, device: &Device, commune: &'a str) -> ChunkUpload<'a> {
    let start = index as usize * CHUNK as usize;
    let end = (start + CHUNK as usize).min(data.len());
    ChunkUpload {
        sha256: sha(data),
        size: data.len() as u64,
        chunk_size: CHUNK,
        index,
        bytes: &data[start..end],
        device: device.id,
        commune,
    }
}

async fn attachments_upload_in_order_resume_and_complete(f: &Fixture) {
    communes_c1_c2(f.s()).await;
    let (device, _) = enroll(f.s(), Scope::Commune("c1".into()), "t1").await;
    let data = content(3 * CHUNK as usize + 100, 1);
    let hash = sha(&data);
    let limits = AttachmentLimits::default();
    assert_eq!(f.s().attachment_state("c1", hash).await.unwrap(), None);
    let put = |i: u32| {
        f.s()
            .put_attachment_chunk(upload(&data, i, &device, "c1"), &limits, NOW)
    };
    let state = put(0).await.unwrap().unwrap();
    assert_eq!((state.received, state.complete), (1, false));
    // A chunk sent again (its answer was lost in a cut) is a no-op.
    assert_eq!(put(0).await.unwrap().unwrap().received, 1);
    // A gap is refused and stores nothing.
    assert!(matches!(
        put(2).await.unwrap(),
        Err(ChunkRefusal::Mismatch(_))
    ));
    // Another chunk size for the same content is refused.
    let mut odd = upload(&data, 1, &device, "c1");
    odd.chunk_size = 2 * CHUNK;
    odd.bytes = &data[..2 * CHUNK as usize];
    assert!(matches!(
        f.s().put_attachment_chunk(odd, &limits, NOW).await.unwrap(),
        Err(ChunkRefusal::Mismatch(_))
    ));
    put(1).await.unwrap().unwrap();
    // A stale partial upload under another size never blocks the content: an upload of
    // another size restarts it from chunk 0, and the honest one restarts it back.
    let mut stale = upload(&data[..CHUNK as usize + 1], 0, &device, "c1");
    stale.sha256 = hash;
    let restarted = f
        .s()
        .put_attachment_chunk(stale, &limits, NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((restarted.size, restarted.received), (CHUNK as u64 + 1, 1));
    assert_eq!(put(0).await.unwrap().unwrap().received, 1);
    put(1).await.unwrap().unwrap();
    // Not complete yet: nothing is served.
    assert_eq!(f.s().attachment_chunk("c1", hash, 0).await.unwrap(), None);
    // Another replica resumes where the first stopped.
    let replica = f.replica().await;
    assert_eq!(
        replica
            .attachment_state("c1", hash)
            .await
            .unwrap()
            .unwrap()
            .received,
        2
    );
    replica
        .put_attachment_chunk(upload(&data, 2, &device, "c1"), &limits, NOW)
        .await
        .unwrap()
        .unwrap();
    let done = replica
        .put_attachment_chunk(upload(&data, 3, &device, "c1"), &limits, NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        done,
        ContentState {
            size: data.len() as u64,
            chunk_size: CHUNK,
            received: 4,
            complete: true
        }
    );
    let mut back = Vec::new();
    for i in 0..4 {
        back.extend(
            f.s()
                .attachment_chunk("c1", hash, i)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(back, data);
    assert_eq!(f.s().attachment_chunk("c1", hash, 4).await.unwrap(), None);
    // Complete: any chunk again is a no-op.
    assert!(put(0).await.unwrap().unwrap().complete);
}

async fn attachments_scope_follows_live_references(f: &Fixture) {
    communes_c1_c2(f.s()).await;
    let hash = sha("the C1 identity card");
    let doc = RecordId::new();
    let c1 = Scope::Commune("c1".into());
    let c2 = Scope::Commune("c2".into());
    assert_eq!(f.s().attachment_referenced(hash, &c1).await.unwrap(), None);
    f.s()
        .reference_attachment(hash, "c1", doc, 1234, true, NOW)
        .await
        .unwrap();
    assert_eq!(
        f.s().attachment_referenced(hash, &c1).await.unwrap(),
        Some(referenced("c1", 1234))
    );
    assert_eq!(f.s().attachment_referenced(hash, &c2).await.unwrap(), None);
    assert_eq!(
        f.s()
            .attachment_referenced(hash, &Scope::Province)
            .await
            .unwrap(),
        Some(referenced("c1", 1234))
    );
    // A tombstone ends the reference, and is never made live again.
    f.s()
        .reference_attachment(hash, "c1", doc, 1234, false, NOW + 1)
        .await
        .unwrap();
    f.s()
        .reference_attachment(hash, "c1", doc, 1234, true, NOW + 2)
        .await
        .unwrap();
    assert_eq!(f.s().attachment_referenced(hash, &c1).await.unwrap(), None);
}

async fn attachments_whole_hash_is_checked(f: &Fixture) {
    communes_c1_c2(f.s()).await;
    let (device, _) = enroll(f.s(), Scope::Commune("c1".into()), "t1").await;
    let data = content(2 * CHUNK as usize, 2);
    let mut forged = data.clone();
    forged[CHUNK as usize + 5] ^= 0xff;
    let limits = AttachmentLimits::default();
    // Chunks of other bytes under the hash of `data`.
    let mut first = upload(&forged, 0, &device, "c1");
    first.sha256 = sha(&data);
    f.s()
        .put_attachment_chunk(first, &limits, NOW)
        .await
        .unwrap()
        .unwrap();
    let mut second = upload(&forged, 1, &device, "c1");
    second.sha256 = sha(&data);
    assert_eq!(
        f.s()
            .put_attachment_chunk(second, &limits, NOW)
            .await
            .unwrap(),
        Err(ChunkRefusal::HashMismatch)
    );
    let state = f
        .s()
        .attachment_state("c1", sha(&data))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((state.received, state.complete), (0, false));
    assert_eq!(
        f.s().attachment_chunk("c1", sha(&data), 0).await.unwrap(),
        None
    );
    // The honest bytes then complete it.
    for i in 0..2 {
        f.s()
            .put_attachment_chunk(upload(&data, i, &device, "c1"), &limits, NOW)
            .await
            .unwrap()
            .unwrap();
    }
    assert!(
        f.s()
            .attachment_state("c1", sha(&data))
            .await
            .unwrap()
            .unwrap()
            .complete
    );
}

async fn attachments_quotas(f: &Fixture) {
    communes_c1_c2(f.s()).await;
    let (t1, _) = enroll(f.s(), Scope::Commune("c1".into()), "t1").await;
    let (t2, _) = enroll(f.s(), Scope::Commune("c1".into()), "t2").await;
    let limits = AttachmentLimits {
        device_quota: 3 * CHUNK as u64,
        commune_quota: 5 * CHUNK as u64,
    };
    let a = content(2 * CHUNK as usize, 3);
    let b = content(2 * CHUNK as usize, 4);
    let c = content(2 * CHUNK as usize, 5);
    f.s()
        .put_attachment_chunk(upload(&a, 0, &t1, "c1"), &limits, NOW)
        .await
        .unwrap()
        .unwrap();
    // t1 would pass its own quota.
    assert!(matches!(
        f.s()
            .put_attachment_chunk(upload(&b, 0, &t1, "c1"), &limits, NOW)
            .await
            .unwrap(),
        Err(ChunkRefusal::Quota(_))
    ));
    assert_eq!(f.s().attachment_state("c1", sha(&b)).await.unwrap(), None);
    f.s()
        .put_attachment_chunk(upload(&b, 0, &t2, "c1"), &limits, NOW)
        .await
        .unwrap()
        .unwrap();
    // The commune would pass its quota, whoever uploads.
    assert!(matches!(
        f.s()
            .put_attachment_chunk(upload(&c, 0, &t2, "c1"), &limits, NOW)
            .await
            .unwrap(),
        Err(ChunkRefusal::Quota(_))
    ));
}

async fn attachments_sweep_after_grace(f: &Fixture) {
    communes_c1_c2(f.s()).await;
    let (device, _) = enroll(f.s(), Scope::Commune("c1".into()), "t1").await;
    let limits = AttachmentLimits::default();
    let kept = content(100, 6);
    let removed = content(100, 7);
    let orphan = content(100, 8);
    for data in [&kept, &removed, &orphan] {
        f.s()
            .put_attachment_chunk(upload(data, 0, &device, "c1"), &limits, NOW)
            .await
            .unwrap()
            .unwrap();
    }
    let doc = RecordId::new();
    f.s()
        .reference_attachment(sha(&kept), "c1", doc, 100, true, NOW)
        .await
        .unwrap();
    f.s()
        .reference_attachment(sha(&removed), "c1", doc, 100, true, NOW)
        .await
        .unwrap();
    f.s()
        .reference_attachment(sha(&removed), "c1", doc, 100, false, NOW + HOUR)
        .await
        .unwrap();
    let grace = 24 * HOUR;
    // Within the grace period nothing goes (the orphan was created at NOW).
    assert_eq!(
        f.s()
            .sweep_attachments(NOW + grace - 1, grace)
            .await
            .unwrap(),
        0
    );
    // The orphan's grace ended; the removed one's started an hour later.
    assert_eq!(
        f.s()
            .sweep_attachments(NOW + grace + 1, grace)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        f.s().attachment_state("c1", sha(&orphan)).await.unwrap(),
        None
    );
    assert_eq!(
        f.s()
            .sweep_attachments(NOW + HOUR + grace + 1, grace)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        f.s().attachment_state("c1", sha(&removed)).await.unwrap(),
        None
    );
    // A live reference keeps its content for ever.
    assert_eq!(
        f.s()
            .sweep_attachments(NOW + 1000 * grace, grace)
            .await
            .unwrap(),
        0
    );
    assert!(
        f.s()
            .attachment_state("c1", sha(&kept))
            .await
            .unwrap()
            .unwrap()
            .complete
    );
}
/// Contents are kept per commune: a commune whose record names another commune's hash (and
/// size) reaches only its own, empty content of that hash; only the matching bytes complete it,
/// and then it is stored apart. Quotas and the sweep count each commune's own contents.
async fn attachments_are_kept_per_commune(f: &Fixture) {
    communes_c1_c2(f.s()).await;
    let (hostile, _) = enroll(f.s(), Scope::Commune("c1".into()), "t1").await;
    let (owner, _) = enroll(f.s(), Scope::Commune("c2".into()), "t2").await;
    let data = content(2 * CHUNK as usize + 10, 9);
    let hash = sha(&data);
    let size = data.len() as u64;
    // Each commune's quota holds exactly this one content.
    let limits = AttachmentLimits {
        device_quota: size,
        commune_quota: size,
    };
    f.s()
        .reference_attachment(hash, "c2", RecordId::new(), size, true, NOW)
        .await
        .unwrap();
    for i in 0..3 {
        f.s()
            .put_attachment_chunk(upload(&data, i, &owner, "c2"), &limits, NOW)
            .await
            .unwrap()
            .unwrap();
    }
    assert!(
        f.s()
            .attachment_state("c2", hash)
            .await
            .unwrap()
            .unwrap()
            .complete
    );

    // c1's record names the hash and size it learnt.
    let hostile_doc = RecordId::new();
    f.s()
        .reference_attachment(hash, "c1", hostile_doc, size, true, NOW)
        .await
        .unwrap();
    let c1 = Scope::Commune("c1".into());
    assert_eq!(
        f.s().attachment_referenced(hash, &c1).await.unwrap(),
        Some(referenced("c1", size))
    );
    assert_eq!(f.s().attachment_state("c1", hash).await.unwrap(), None);
    for i in 0..3 {
        assert_eq!(f.s().attachment_chunk("c1", hash, i).await.unwrap(), None);
    }
    // The province reads the commune that holds it whole.
    assert_eq!(
        f.s()
            .attachment_referenced(hash, &Scope::Province)
            .await
            .unwrap(),
        Some(referenced("c2", size))
    );

    // Other bytes under that hash: stored from chunk 0 in c1 (never answered from c2's content),
    // refused at the last chunk by the whole hash.
    let mut forged = data.clone();
    forged[7] ^= 0x55;
    let forge = |i: u32| {
        let mut chunk = upload(&forged, i, &hostile, "c1");
        chunk.sha256 = hash;
        chunk
    };
    let first = f
        .s()
        .put_attachment_chunk(forge(0), &limits, NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.received, first.complete), (1, false));
    f.s()
        .put_attachment_chunk(forge(1), &limits, NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        f.s()
            .put_attachment_chunk(forge(2), &limits, NOW)
            .await
            .unwrap(),
        Err(ChunkRefusal::HashMismatch)
    );
    assert_eq!(f.s().attachment_chunk("c1", hash, 0).await.unwrap(), None);
    // c2's content is untouched.
    let mut back = Vec::new();
    for i in 0..3 {
        back.extend(
            f.s()
                .attachment_chunk("c2", hash, i)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(back, data);

    // c1 uploading the very bytes stores its own copy, within its own quota (c2's copy does
    // not count against c1).
    for i in 0..3 {
        let state = f
            .s()
            .put_attachment_chunk(upload(&data, i, &hostile, "c1"), &limits, NOW)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state.received, i + 1);
    }
    assert!(
        f.s()
            .attachment_state("c1", hash)
            .await
            .unwrap()
            .unwrap()
            .complete
    );
    // Within c1 the content is stored once: sending it again finds it whole.
    assert!(
        f.s()
            .put_attachment_chunk(upload(&data, 0, &hostile, "c1"), &limits, NOW)
            .await
            .unwrap()
            .unwrap()
            .complete
    );
    // c1's quota is now full; c2's is its own.
    let other = content(100, 10);
    assert!(matches!(
        f.s()
            .put_attachment_chunk(upload(&other, 0, &hostile, "c1"), &limits, NOW)
            .await
            .unwrap(),
        Err(ChunkRefusal::Quota(_))
    ));

    // c1's record drops the reference: the sweep deletes c1's copy only.
    f.s()
        .reference_attachment(hash, "c1", hostile_doc, size, false, NOW + HOUR)
        .await
        .unwrap();
    let grace = 24 * HOUR;
    assert_eq!(
        f.s()
            .sweep_attachments(NOW + HOUR + grace + 1, grace)
            .await
            .unwrap(),
        1
    );
    assert_eq!(f.s().attachment_state("c1", hash).await.unwrap(), None);
    assert_eq!(f.s().attachment_referenced(hash, &c1).await.unwrap(), None);
    assert!(
        f.s()
            .attachment_state("c2", hash)
            .await
            .unwrap()
            .unwrap()
            .complete
    );
    assert_eq!(
        f.s()
            .attachment_chunk("c2", hash, 2)
            .await
            .unwrap()
            .unwrap(),
        &data[2 * CHUNK as usize..]
    );
}
// --- dossier numbers --------------------------------------------------------------------------

const FORMAT: &str = "{agency}-{yymmdd}-{seq:6}";

async fn number_blocks_never_overlap_across_replicas(f: &Fixture) {
    communes_c1_c2(f.s()).await;
    let (a, _) = enroll(f.s(), Scope::Commune("c1".into()), "a").await;
    let (b, _) = enroll(f.s(), Scope::Commune("c1".into()), "b").await;
    let replica = f.replica().await;
    // Sixteen allocations at once, half through another handle (another server replica).
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let s = if i % 2 == 0 {
            f.storage.clone()
        } else {
            replica.clone()
        };
        let device = if i % 3 == 0 { a.id } else { b.id };
        tasks.push(tokio::spawn(async move {
            s.allocate_number_block(device, "c1", FORMAT, 10 + i, NOW)
                .await
        }));
    }
    let mut granted = Vec::new();
    for task in tasks {
        granted.push(task.await.unwrap().unwrap());
    }
    let mut ranges: Vec<(u64, u64)> = granted.iter().map(|b| (b.first, b.last)).collect();
    ranges.sort_unstable();
    assert_eq!(ranges[0].0, 1, "the counter starts at 1");
    for pair in ranges.windows(2) {
        assert_eq!(pair[0].1 + 1, pair[1].0, "contiguous, disjoint: {ranges:?}");
    }
    let ids: BTreeSet<u64> = granted.iter().map(|b| b.id).collect();
    assert_eq!(ids.len(), 16);
    // Another agency has its own counter; sizes are clamped.
    let other = f
        .s()
        .allocate_number_block(a.id, "c2", FORMAT, 0, NOW)
        .await
        .unwrap();
    assert_eq!((other.first, other.last), (1, 1));
    let big = f
        .s()
        .allocate_number_block(a.id, "c2", FORMAT, u64::MAX, NOW)
        .await
        .unwrap();
    assert_eq!(big.last - big.first + 1, storage::MAX_NUMBER_BLOCK);
    // Listing: per device and all, by id, as granted.
    let of_a = f.s().number_blocks(Some(a.id)).await.unwrap();
    assert!(of_a.iter().all(|b| b.device == a.id));
    assert_eq!(
        of_a.len(),
        granted.iter().filter(|b| b.device == a.id).count() + 2
    );
    let all = f.s().number_blocks(None).await.unwrap();
    assert_eq!(all.len(), 18);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    let listed = all.iter().find(|b| b.id == granted[0].id).unwrap();
    assert_eq!(listed, &granted[0]);
    assert!(!listed.acknowledged);
    assert_eq!(listed.next, listed.first);
    // An unknown device gets nothing, and the counter does not move.
    let err = f
        .s()
        .allocate_number_block(DeviceId::new(), "c2", FORMAT, 5, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::NotFound), "{err:?}");
    let next = f
        .s()
        .allocate_number_block(a.id, "c2", FORMAT, 1, NOW)
        .await
        .unwrap();
    assert_eq!(next.first, big.last + 1);
}

async fn number_usage_reports_grow_and_stay_with_their_device(f: &Fixture) {
    communes_c1_c2(f.s()).await;
    let (a, _) = enroll(f.s(), Scope::Commune("c1".into()), "a").await;
    let (b, _) = enroll(f.s(), Scope::Commune("c1".into()), "b").await;
    let block = f
        .s()
        .allocate_number_block(a.id, "c1", FORMAT, 10, NOW)
        .await
        .unwrap();
    let read = |s: Arc<dyn ServerStorage>, id: u64| async move {
        s.number_blocks(None)
            .await
            .unwrap()
            .into_iter()
            .find(|b| b.id == id)
            .unwrap()
    };
    // Another device's report about it changes nothing.
    f.s()
        .report_number_usage(b.id, &[(block.id, block.first + 5)], NOW)
        .await
        .unwrap();
    let seen = read(f.storage.clone(), block.id).await;
    assert!(!seen.acknowledged);
    assert_eq!(seen.next, block.first);
    // Its own: acknowledged, grows, never shrinks, clamped to the block; unknown ids ignored.
    f.s()
        .report_number_usage(a.id, &[(block.id, block.first + 3), (999_999, 5)], NOW)
        .await
        .unwrap();
    let seen = read(f.storage.clone(), block.id).await;
    assert!(seen.acknowledged);
    assert_eq!(seen.next, block.first + 3);
    f.s()
        .report_number_usage(a.id, &[(block.id, block.first + 1)], NOW)
        .await
        .unwrap();
    assert_eq!(
        read(f.storage.clone(), block.id).await.next,
        block.first + 3
    );
    f.s()
        .report_number_usage(a.id, &[(block.id, u64::MAX)], NOW)
        .await
        .unwrap();
    assert_eq!(read(f.replica().await, block.id).await.next, block.last + 1);
}

async fn dossier_numbers_keep_their_first_document(f: &Fixture) {
    communes_c1_c2(f.s()).await;
    let (a, _) = enroll(f.s(), Scope::Commune("c1".into()), "a").await;
    let (b, _) = enroll(f.s(), Scope::Commune("c1".into()), "b").await;
    let (first, second) = (RecordId::new(), RecordId::new());
    assert_eq!(
        f.s().dossier_number("c1-261206-000001").await.unwrap(),
        None
    );
    f.s()
        .record_dossier_numbers(
            a.id,
            &[
                ("c1-261206-000001".into(), first),
                ("c1-261206-000002".into(), second),
            ],
            NOW,
        )
        .await
        .unwrap();
    f.s()
        .record_dossier_numbers(b.id, &[("c1-261206-000001".into(), RecordId::new())], NOW)
        .await
        .unwrap();
    f.s().record_dossier_numbers(b.id, &[], NOW).await.unwrap();
    assert_eq!(
        f.s().dossier_number("c1-261206-000001").await.unwrap(),
        Some((first, a.id))
    );
    assert_eq!(
        f.replica()
            .await
            .dossier_number("c1-261206-000002")
            .await
            .unwrap(),
        Some((second, a.id))
    );
}

fn new_key() -> PublicKey {
    DeviceSigningKey::generate().unwrap().public_key()
}

async fn device_keys_register_replace_revoke_and_delta(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    assert_eq!(s.device_keys_since(0, 100).await.unwrap(), (vec![], 0));
    let (a, _) = enroll(s, Scope::Commune("c1".into()), "a").await;
    let (b, _) = enroll(s, Scope::Province, "b").await;
    let (k1, k2, k3) = (new_key(), new_key(), new_key());
    // Unknown device.
    assert!(matches!(
        s.register_device_key(DeviceId::new(), k1, NOW, false).await,
        Err(StorageError::NotFound)
    ));
    assert!(s.register_device_key(a.id, k1, NOW, false).await.unwrap());
    // Registering the current key again changes nothing.
    assert!(
        s.register_device_key(a.id, k1, NOW + 1, false)
            .await
            .unwrap()
    );
    let (entries, v1) = s.device_keys_since(0, 100).await.unwrap();
    assert_eq!(v1, 1);
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].device, entries[0].public_key), (a.id, k1));
    assert_eq!(entries[0].commune, "c1");
    assert_eq!((entries[0].valid_from, entries[0].valid_until), (NOW, None));
    // Trust on first use: only while the device has no key.
    assert!(
        !s.register_device_key(a.id, k2, NOW + 5, true)
            .await
            .unwrap()
    );
    assert!(
        s.register_device_key(b.id, k3, NOW + 5, true)
            .await
            .unwrap()
    );
    // Re-enrollment replaces A's key: the old one stays listed, closed.
    assert!(
        s.register_device_key(a.id, k2, NOW + 10, false)
            .await
            .unwrap()
    );
    let (delta, v) = s.device_keys_since(v1, 100).await.unwrap();
    assert_eq!(v, 4);
    let old = delta.iter().find(|e| e.public_key == k1).unwrap();
    assert_eq!(old.valid_until, Some(NOW + 10));
    let new = delta.iter().find(|e| e.public_key == k2).unwrap();
    assert_eq!((new.valid_from, new.valid_until), (NOW + 10, None));
    assert_eq!(new.commune, "c1");
    assert!(
        delta
            .iter()
            .any(|e| e.device == b.id && e.commune.is_empty())
    );
    // Revocation marks every open key of the device, at one new version.
    s.revoke_device_keys(a.id, NOW + 20).await.unwrap();
    s.revoke_device_keys(a.id, NOW + 30).await.unwrap();
    let (delta, v5) = s.device_keys_since(v, 100).await.unwrap();
    assert_eq!(v5, 5);
    assert_eq!(delta.len(), 2);
    assert!(delta.iter().all(|e| e.revoked_at == Some(NOW + 20)));
    // A revoked key is not registered again.
    assert!(matches!(
        s.register_device_key(a.id, k2, NOW + 40, false).await,
        Err(StorageError::Conflict(_))
    ));
    // The delta is bounded and ordered by version.
    let (first, _) = s.device_keys_since(0, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].device, b.id);
    let (all, _) = s.device_keys_since(0, 100).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].version <= w[1].version));
}

async fn push_signatures_are_kept_and_linked_from_each_change(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let (a, _) = enroll(s, Scope::Commune("c1".into()), "a").await;
    let key = new_key();
    s.register_device_key(a.id, key, NOW, false).await.unwrap();
    assert_eq!(s.device_keys_of(a.id).await.unwrap()[0].public_key, key);
    assert!(s.device_keys_of(DeviceId::new()).await.unwrap().is_empty());
    let first = PushSignatureRow {
        device: a.id,
        counter: 7,
        hashes: vec![sha("x"), sha("y")],
        signature: [9; 64],
        received_at: NOW,
    };
    s.record_push_signature(&first).await.unwrap();
    // A later push carrying y again (a retry) keeps y's first link; z is linked to it.
    let second = PushSignatureRow {
        counter: 8,
        hashes: vec![sha("y"), sha("z")],
        signature: [8; 64],
        received_at: NOW + 1,
        ..first.clone()
    };
    s.record_push_signature(&second).await.unwrap();
    let found = s
        .change_signatures(&[sha("x"), sha("y"), sha("z"), sha("unsigned")])
        .await
        .unwrap();
    assert_eq!(found.len(), 3);
    assert_eq!(*found[&sha("x")], first);
    assert_eq!(*found[&sha("y")], first);
    assert_eq!(*found[&sha("z")], second);
}

#[path = "storage_conformance/read_model.rs"]
mod read_model;

async fn external_ids_keep_their_first_record_per_commune(f: &Fixture) {
    communes_c1_c2(f.s()).await;
    let (a, _) = enroll(f.s(), Scope::Commune("c1".into()), "a").await;
    let (b, _) = enroll(f.s(), Scope::Commune("c1".into()), "b").await;
    let claim = |commune: &str, key: &str, doc: RecordId| ExternalIdClaim {
        commune: commune.into(),
        external_id: key.into(),
        doc,
    };
    let (first, second, other) = (RecordId::new(), RecordId::new(), RecordId::new());
    assert_eq!(f.s().external_id("c1", "SK-1").await.unwrap(), None);
    let lost = f
        .s()
        .claim_external_ids(
            a.id,
            &[claim("c1", "SK-1", first), claim("c1", "SK-2", second)],
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(lost, []);
    // Claimed again by the same records (a retried push): theirs still.
    let again = f
        .s()
        .claim_external_ids(a.id, &[claim("c1", "SK-1", first)], NOW)
        .await
        .unwrap();
    assert_eq!(again, []);
    // Another record of the commune loses; the same key in another commune is another key.
    let intruder = RecordId::new();
    let lost = f
        .s()
        .claim_external_ids(
            b.id,
            &[claim("c1", "SK-2", intruder), claim("c2", "SK-2", other)],
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(lost, [intruder]);
    f.s().claim_external_ids(b.id, &[], NOW).await.unwrap();
    assert_eq!(
        f.s().external_id("c1", "SK-2").await.unwrap(),
        Some((second, a.id))
    );
    assert_eq!(
        f.replica().await.external_id("c2", "SK-2").await.unwrap(),
        Some((other, b.id))
    );
}
