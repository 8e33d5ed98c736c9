//! The provincial server SIGKILLed at random moments while tablets of two communes upload, many
//! times over the same database: a SQLite file, and PostgreSQL when
//! `COMMUNESYNC_TEST_DATABASE_URL` names one (required under `CI`).
//!
//! The server is the real `communesync serve` binary, a child process restarted on the same
//! address after each kill. The tablets are encrypted device stores with the reqwest sync client,
//! each a task that edits (new applications, note markers, status steps, sometimes a burst of 20
//! new ones) and syncs, over and over, while the server is killed under them.
//!
//! What is checked:
//! - **nothing acknowledged is lost**: when a sync returns `Ok` with nothing pending, the heads of
//!   every document the tablet edited before it are acknowledged; after every restart, each such
//!   head is among the changes the restarted server holds;
//! - only the failures a dead server explains (`Offline`, `Server`) ever reach a tablet;
//! - **convergence**: after the last restart every tablet syncs until idle; then each tablet holds
//!   exactly its commune's documents on the server, with the same heads, the server's history of
//!   each document has no hole, no change is stored twice, and every note marker any tablet
//!   committed is in the converged record.
//!
//! The seed of the kill schedule and the workloads is printed; `COMMUNESYNC_FAULT_SEED=<n>`
//! replays it (tablet timing still varies with the machine).

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::ChangeHash;
use communesync_core::record::{RecordId, Status};
use communesync_core::sample::SampleData;
use communesync_core::store::{ApplicationQuery, DeviceStore, EncryptionKey, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, SyncError, enroll};
use communesync_server::http;
use communesync_server::storage::{self, Scope, ServerStorage, StorageError};
use communesync_tests::process::{ServerContents, ServerProcess, communesync_binary};
use communesync_tests::{now_ms, test_databases};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// SIGKILLs of the server per database.
const KILLS: usize = 30;
const COMMUNES: [&str; 2] = ["DB-MUONGPHANG", "DB-NATAU"];
const TABLETS_PER_COMMUNE: usize = 3;
const KEY: [u8; 32] = [5; 32];
/// Upper bound on one tablet's edit-and-sync cycles (the kills end the run long before).
const MAX_CYCLES: usize = 100_000;
/// Final syncs per tablet after the last restart (pushes, then pulls of the others' pushes).
const FINAL_ROUNDS: usize = 3;

/// What one tablet knows it committed, and what the server acknowledged.
#[derive(Default)]
struct Ledger {
    /// Acknowledged heads not yet checked against the server.
    unchecked: Vec<(RecordId, Vec<ChangeHash>)>,
    /// Latest acknowledged heads of every document.
    acked: HashMap<RecordId, Vec<ChangeHash>>,
    /// Note markers committed on this tablet, by record.
    markers: HashMap<RecordId, Vec<u64>>,
    created: Vec<RecordId>,
    syncs_ok: u64,
    syncs_failed: u64,
    /// Failures a killed server does not explain.
    unexpected: Vec<String>,
}

struct Tablet {
    name: String,
    commune: &'static str,
    store: Arc<Mutex<DeviceStore>>,
    client: SyncClient<ReqwestTransport>,
    ledger: Mutex<Ledger>,
}

fn config() -> SyncConfig {
    SyncConfig {
        // Small batches: a burst is several requests, so kills land between acknowledgements.
        push_batch_bytes: 16 * 1024,
        pull_batch_bytes: 32 * 1024,
        max_attempts: 3,
        initial_backoff: Duration::from_millis(30),
        max_backoff: Duration::from_millis(300),
        ..SyncConfig::default()
    }
}

/// Creates the communes and returns enrollment codes for each, then closes the database.
async fn prepare(url: &str) -> HashMap<&'static str, Vec<String>> {
    let storage = storage::open(url).await.unwrap();
    let mut codes = HashMap::new();
    for commune in COMMUNES {
        match storage.create_commune(commune, commune).await {
            Ok(()) | Err(StorageError::AlreadyExists) => {}
            Err(err) => panic!("create commune: {err}"),
        }
        let mut list = Vec::new();
        for _ in 0..TABLETS_PER_COMMUNE {
            let (code, _) = http::issue_enrollment_code(
                storage.as_ref(),
                &Scope::Commune(commune.to_owned()),
                Duration::from_secs(3600),
                now_ms(),
            )
            .await
            .unwrap();
            list.push(code);
        }
        codes.insert(commune, list);
    }
    codes
}

async fn new_tablet(
    dir: &std::path::Path,
    name: String,
    commune: &'static str,
    url: &str,
    code: &str,
) -> Tablet {
    let mut store = DeviceStore::open(
        StoreConfig::new(dir.join(format!("{name}.db"))).encrypted(EncryptionKey::new(KEY)),
    )
    .unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    let transport = ReqwestTransport::new(url).unwrap();
    let credentials = enroll(&transport, code, store.device_id(), &name)
        .await
        .unwrap();
    let store = Arc::new(Mutex::new(store));
    let client = SyncClient::new(transport, store.clone(), credentials.token, config()).unwrap();
    Tablet {
        name,
        commune,
        store,
        client,
        ledger: Mutex::new(Ledger::default()),
    }
}

/// The status a workflow step moves an application to.
fn next_status(status: Status) -> Option<Status> {
    match status {
        Status::Received | Status::SupplementRequested => Some(Status::InProgress),
        Status::InProgress => Some(Status::Ready),
        Status::Ready => Some(Status::Returned),
        _ => None,
    }
}

/// The ` #<n>` markers in some notes.
fn markers(notes: &str) -> HashSet<u64> {
    notes
        .split(" #")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// Edits and syncs until `stop`. Documents edited since the last complete sync are `dirty`; a
/// sync that returns `Ok` with nothing pending acknowledges their heads as taken before it.
async fn work(
    tablet: Arc<Tablet>,
    pool: Arc<Mutex<Vec<RecordId>>>,
    stop: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
    seed: u64,
    marker_base: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sample = SampleData::new(seed);
    let mut dirty: HashSet<RecordId> = HashSet::new();
    let mut own: Vec<RecordId> = Vec::new();
    let mut marker = marker_base;
    for _ in 0..MAX_CYCLES {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let snapshot: Vec<(RecordId, Vec<ChangeHash>)> = {
            let mut store = tablet.store.lock().unwrap();
            let mut ledger = tablet.ledger.lock().unwrap();
            let edits = if rng.random_bool(0.1) {
                20
            } else {
                rng.random_range(1..4)
            };
            for _ in 0..edits {
                let roll = rng.random_range(0..100);
                if own.is_empty() || roll < 35 || edits == 20 {
                    let app = store
                        .create_application("officer", sample.application(tablet.commune, None))
                        .unwrap();
                    own.push(app.id);
                    ledger.created.push(app.id);
                    dirty.insert(app.id);
                } else if roll < 80 {
                    // A note on one of its own or on a commune record it may have pulled.
                    let shared = {
                        let pool = pool.lock().unwrap();
                        (!pool.is_empty() && rng.random_bool(0.5))
                            .then(|| pool[rng.random_range(0..pool.len())])
                    };
                    let id = shared.unwrap_or_else(|| own[rng.random_range(0..own.len())]);
                    if !store.contains(id).unwrap() {
                        continue;
                    }
                    let n = marker;
                    marker += 1;
                    store
                        .update_application(id, &tablet.name, |a| {
                            a.notes.push_str(&format!(" #{n}"));
                        })
                        .unwrap();
                    ledger.markers.entry(id).or_default().push(n);
                    dirty.insert(id);
                } else {
                    let id = own[rng.random_range(0..own.len())];
                    let status = store.get_application(id).unwrap().status;
                    if let Some(to) = next_status(status) {
                        store.transition(id, &tablet.name, to).unwrap();
                        dirty.insert(id);
                    }
                }
            }
            dirty
                .iter()
                .map(|&id| (id, store.heads(id).unwrap()))
                .collect()
        };

        in_flight.fetch_add(1, Ordering::SeqCst);
        let result = tablet.client.sync(&|_| {}).await;
        in_flight.fetch_sub(1, Ordering::SeqCst);
        {
            let mut ledger = tablet.ledger.lock().unwrap();
            match result {
                Ok(report) => {
                    ledger.syncs_ok += 1;
                    if report.pending_docs == 0 {
                        for (id, heads) in snapshot {
                            ledger.acked.insert(id, heads.clone());
                            ledger.unchecked.push((id, heads));
                        }
                        pool.lock()
                            .unwrap()
                            .extend(own.iter().filter(|id| dirty.contains(id)));
                        dirty.clear();
                    }
                }
                Err(SyncError::Offline(_) | SyncError::Server(_)) => ledger.syncs_failed += 1,
                Err(other) => ledger.unexpected.push(format!("{}: {other}", tablet.name)),
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
    }
}

/// Checks that the server holds every acknowledged head not checked yet; returns how many.
async fn check_acknowledged(
    storage: &dyn ServerStorage,
    tablets: &[Arc<Tablet>],
    all: bool,
) -> Result<usize, String> {
    // The acknowledgements first, then the server's contents: an acknowledgement taken after
    // the read could be of a commit the read did not see.
    let mut acknowledged = Vec::new();
    for tablet in tablets {
        let pending: Vec<(RecordId, Vec<ChangeHash>)> = {
            let mut ledger = tablet.ledger.lock().unwrap();
            if all {
                ledger.unchecked.clear();
                ledger
                    .acked
                    .iter()
                    .map(|(id, h)| (*id, h.clone()))
                    .collect()
            } else {
                std::mem::take(&mut ledger.unchecked)
            }
        };
        acknowledged.push((tablet, pending));
    }
    // Both communes' feeds in a few large reads: thousands of per-record reads would slow each
    // check down as the run grows.
    let mut held = HashMap::new();
    for commune in COMMUNES {
        let contents = ServerContents::read(storage, commune)
            .await
            .map_err(|e| e.to_string())?;
        held.extend(contents.docs);
    }
    let mut checked = 0;
    for (tablet, pending) in acknowledged {
        for (id, heads) in pending {
            let empty = HashMap::new();
            let held = held.get(&id).unwrap_or(&empty);
            let lost: Vec<&ChangeHash> = heads.iter().filter(|h| !held.contains_key(h)).collect();
            if !lost.is_empty() {
                return Err(format!(
                    "{}: record {id}: acknowledged changes {lost:?} are not on the server \
                     (it holds {} changes of it)",
                    tablet.name,
                    held.len()
                ));
            }
            checked += 1;
        }
    }
    Ok(checked)
}

/// Every application id in a store.
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
fn markers_are_parsed_exactly() {
    assert_eq!(
        markers("Hồ sơ đủ. #12 #123 #x #7"),
        HashSet::from([12, 123, 7])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sigkills_during_uploads_lose_no_acknowledged_change() {
    let seed: u64 = std::env::var("COMMUNESYNC_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("faults_server: seed {seed} (COMMUNESYNC_FAULT_SEED={seed} to replay)");
    let binary = tokio::task::spawn_blocking(communesync_binary)
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "faults_server").await.unwrap() {
        let started = Instant::now();
        let backend = if url.starts_with("sqlite") {
            "sqlite"
        } else {
            "postgres"
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let codes = prepare(&url).await;
        let run_dir = tempfile::tempdir().unwrap();
        let server_dir = run_dir.path().to_path_buf();
        let mut server = {
            let (binary, url, dir) = (binary.clone(), url.clone(), server_dir.clone());
            tokio::task::spawn_blocking(move || ServerProcess::start(&binary, &url, None, &dir))
                .await
                .unwrap()
                .unwrap()
        };
        let addr = server.addr;

        let mut tablets = Vec::new();
        let mut pools = HashMap::new();
        for commune in COMMUNES {
            pools.insert(commune, Arc::new(Mutex::new(Vec::new())));
            for (i, code) in codes[commune].iter().enumerate() {
                let name = format!("{commune}-{i}");
                tablets.push(Arc::new(
                    new_tablet(run_dir.path(), name, commune, &server.url(), code).await,
                ));
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (i, tablet) in tablets.iter().enumerate() {
            tasks.push(tokio::spawn(work(
                tablet.clone(),
                pools[tablet.commune].clone(),
                stop.clone(),
                in_flight.clone(),
                seed.wrapping_add(i as u64 + 1),
                (i as u64 + 1) * 1_000_000_000,
            )));
        }

        let pg_checker = if backend == "postgres" {
            Some(storage::open(&url).await.unwrap())
        } else {
            None
        };
        let (mut kills, mut kills_mid_sync, mut verified) = (0usize, 0usize, 0usize);
        for kill in 0..KILLS {
            tokio::time::sleep(Duration::from_millis(rng.random_range(150..900))).await;
            if in_flight.load(Ordering::SeqCst) > 0 {
                kills_mid_sync += 1;
            }
            let log = server.log_text();
            server
                .kill()
                .unwrap_or_else(|e| panic!("{backend} kill {kill}: {e}; log: {log}"));
            kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
            server = {
                let (binary, url, dir) = (binary.clone(), url.clone(), server_dir.clone());
                tokio::task::spawn_blocking(move || {
                    ServerProcess::start(&binary, &url, Some(addr), &dir)
                })
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{backend}: restart after kill {kill}: {e}"))
            };
            let restarted = started.elapsed();
            // SQLite: a fresh connection after each restart, as an operator's would be (none is
            // open across the kill). PostgreSQL: one pool for the run.
            let checker = match &pg_checker {
                Some(storage) => storage.clone(),
                None => storage::open(&url).await.unwrap(),
            };
            verified += check_acknowledged(checker.as_ref(), &tablets, false)
                .await
                .unwrap_or_else(|e| panic!("{backend}, seed {seed}, after kill {kill}: {e}"));
            drop(checker);
            eprintln!(
                "faults_server[{backend}]: kill {kill}: {verified} verified, restarted at \
                 {restarted:.1?}, checked at {:.1?}",
                started.elapsed()
            );
        }
        stop.store(true, Ordering::SeqCst);
        for task in tasks {
            task.await.unwrap();
        }
        for tablet in &tablets {
            let ledger = tablet.ledger.lock().unwrap();
            assert!(
                ledger.unexpected.is_empty(),
                "{backend}, seed {seed}: {:?}",
                ledger.unexpected
            );
        }

        // Convergence: everyone syncs to the last server until idle.
        for _ in 0..FINAL_ROUNDS {
            for tablet in &tablets {
                let report =
                    tablet.client.sync(&|_| {}).await.unwrap_or_else(|e| {
                        panic!("{backend}: final sync of {}: {e}", tablet.name)
                    });
                assert_eq!(report.pending_docs, 0, "{backend}: {}", tablet.name);
            }
        }
        for tablet in &tablets {
            let report = tablet.client.sync(&|_| {}).await.unwrap();
            assert_eq!(
                (report.requests, report.pushed_docs, report.pulled_docs),
                (1, 0, 0),
                "{backend}: {} is not idle after the final rounds",
                tablet.name
            );
        }
        let checker = storage::open(&url).await.unwrap();
        verified += check_acknowledged(checker.as_ref(), &tablets, true)
            .await
            .unwrap_or_else(|e| panic!("{backend}, seed {seed}, at the end: {e}"));

        let storage = checker;
        let (mut records, mut changes, mut marker_count) = (0usize, 0u64, 0usize);
        for commune in COMMUNES {
            let contents = ServerContents::read(storage.as_ref(), commune)
                .await
                .unwrap();
            assert_eq!(
                contents.feed_entries,
                contents.changes(),
                "{backend}: {commune}: a change is stored twice"
            );
            records += contents.docs.len();
            changes += contents.changes();
            let on_server: HashSet<RecordId> = contents.docs.keys().copied().collect();
            for tablet in tablets.iter().filter(|t| t.commune == commune) {
                let mut store = tablet.store.lock().unwrap();
                let ledger = tablet.ledger.lock().unwrap();
                assert_eq!(
                    all_ids(&store),
                    on_server,
                    "{backend}: {} and the server hold different records",
                    tablet.name
                );
                for id in &ledger.created {
                    assert!(
                        on_server.contains(id),
                        "{backend}: {id} never reached the server"
                    );
                }
                for &id in &on_server {
                    let mut heads = store.heads(id).unwrap();
                    heads.sort();
                    assert_eq!(
                        Some(heads),
                        contents.heads(id).unwrap(),
                        "{backend}: {} and the server differ on {id}",
                        tablet.name
                    );
                }
                for (&id, written) in &ledger.markers {
                    let found = markers(&store.get_application(id).unwrap().notes);
                    let lost: Vec<&u64> = written.iter().filter(|m| !found.contains(m)).collect();
                    assert!(
                        lost.is_empty(),
                        "{backend}: {id} lost note markers {lost:?}"
                    );
                    marker_count += written.len();
                }
                assert_eq!(store.integrity_check().unwrap(), "ok");
            }
        }
        drop(storage);
        let (ok, failed) = tablets.iter().fold((0, 0), |(ok, failed), t| {
            let l = t.ledger.lock().unwrap();
            (ok + l.syncs_ok, failed + l.syncs_failed)
        });
        eprintln!(
            "faults_server[{backend}]: {kills} SIGKILLs ({kills_mid_sync} with syncs in flight), \
             {verified} acknowledged document heads verified on the restarted server, \
             {ok} syncs ok and {failed} failed by the kills across {} tablets, converged on \
             {records} records / {changes} changes, {marker_count} note markers all present, \
             {:.1?}",
            tablets.len(),
            started.elapsed()
        );
        assert_eq!(kills, KILLS);
        assert!(
            kills_mid_sync >= KILLS / 2,
            "{backend}: only {kills_mid_sync} kills landed during a sync"
        );
        assert!(failed > 0, "{backend}: no sync was ever interrupted");
        assert!(verified > 0);
        drop(server);
    }
}
