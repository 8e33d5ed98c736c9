//! Tablets SIGKILLed mid-sync, many times: the store opens, the next sync resumes, and in the end
//! tablet and server converge with nothing lost or duplicated.
//!
//! Each tablet is a `communesync device` process (the real CLI: encrypted store, reqwest client,
//! default batch sizes) talking to a real server over HTTP on 127.0.0.1 through a shaped
//! [`PoorLink`], so a sync of a few thousand applications lasts long enough to be killed inside.
//! Tablet A imports applications (bulk, `device import`) and pushes them; tablet B of the same
//! commune pulls them. Each run starts one `device sync` of A or B and SIGKILLs it after a random
//! delay. So that every sync has much to move: when A's last sync ran to its end, A first imports
//! more (an import that may be killed too); when B's did, a freshly enrolled tablet takes B's
//! place and pulls everything from the start. After every kill:
//! the store opens with its key and `PRAGMA integrity_check` is "ok". Progress across kills is
//! counted from the server's stored changes (A's pushes) and B's record count (B's pulls): the
//! acknowledged batches of a killed sync are not redone. At the end one unkilled sync of each
//! tablet, then: A, B and the server hold the same records with the same heads, the server stored
//! no change twice, and a further sync of each is idle.
//!
//! `COMMUNESYNC_FAULT_SEED=<n>` replays the kill delays.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use communesync_core::record::RecordId;
use communesync_core::sample::SampleData;
use communesync_core::store::{ApplicationQuery, DeviceStore, EncryptionKey, StoreConfig};
use communesync_server::link::{LinkProfile, PoorLink};
use communesync_tests::TestServer;
use communesync_tests::process::{SIGKILL, ServerContents, communesync_binary};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// SIGKILLs that must land inside a running `device sync`.
const SYNC_KILLS: usize = 30;
/// Upper bound on runs (syncs that finished before their kill do not count as kills).
const MAX_RUNS: usize = 120;
const COMMUNE: &str = "DB-MUONGPHANG";
const KEY: [u8; 32] = [0x42; 32];
/// Applications A holds before the first run, and imported again every few runs.
const FIRST_IMPORT: usize = 1000;
const MORE_IMPORT: usize = 200;
/// Longest a process may run before the test gives up on it.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(300);

fn key_hex() -> String {
    KEY.iter().map(|b| format!("{b:02x}")).collect()
}

fn device(binary: &Path, store: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("device")
        .arg("--store")
        .arg(store)
        .env("COMMUNESYNC_STORE_KEY", key_hex())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

/// Runs a device command to completion; its stdout.
fn run_to_end(mut command: Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "device command failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn jsonl(sample: &mut SampleData, n: usize) -> String {
    (0..n)
        .map(|_| serde_json::to_string(&sample.application(COMMUNE, None)).unwrap() + "\n")
        .collect()
}

fn write_import(dir: &Path, sample: &mut SampleData, n: usize) -> PathBuf {
    let path = dir.join("import.jsonl");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(jsonl(sample, n).as_bytes())
        .unwrap();
    path
}

/// How a killed-or-not run ended.
enum Ended {
    Killed,
    Finished(String),
}

/// Changes the server has stored, all communes.
async fn stored_changes(server: &TestServer) -> u64 {
    let stats = server.storage.stats().await.unwrap();
    stats.iter().map(|s| s.changes).sum()
}

/// Starts `command` and SIGKILLs it after `delay` if it still runs, or as soon as `server`
/// holds more than `stored_before` changes when that is given (a kill just after the server
/// committed a batch of this sync, so that partial progress is seen whatever the machine's
/// speed).
async fn run_and_kill(
    mut command: Command,
    delay: Duration,
    after_a_commit: Option<(&TestServer, u64)>,
) -> Ended {
    let mut child: Child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        if let Some((server, before)) = after_a_commit
            && stored_changes(server).await > before
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if child.try_wait().unwrap().is_none() {
        // The process may still end on its own between `try_wait` and the signal (a zombie
        // ignores SIGKILL): then it counts as finished, like one that ended before the delay.
        child.kill().unwrap();
    }
    let output = child.wait_with_output().unwrap();
    if output.status.signal() == Some(SIGKILL) {
        return Ended::Killed;
    }
    assert!(
        output.status.success(),
        "device command failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ended::Finished(String::from_utf8(output.stdout).unwrap())
}

/// Waits for a child to finish with a bound; its stdout.
async fn finish(mut command: Command) -> String {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(
        PROCESS_TIMEOUT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("device process timed out")
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "device command failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn open(path: &Path) -> DeviceStore {
    DeviceStore::open(StoreConfig::new(path).encrypted(EncryptionKey::new(KEY)))
        .unwrap_or_else(|e| panic!("{} does not open after a kill: {e}", path.display()))
}

/// Opens a store after a kill: intact, and how many applications and pending documents it has.
fn check_store(path: &Path) -> (HashSet<RecordId>, u64) {
    let store = open(path);
    assert_eq!(
        store.integrity_check().unwrap(),
        "ok",
        "{} after a kill",
        path.display()
    );
    (all_ids(&store), store.pending_count().unwrap())
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

fn report_field(json: &str, field: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tablet_sigkills_mid_sync_resume_and_converge() {
    let seed: u64 = std::env::var("COMMUNESYNC_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("faults_tablet: seed {seed} (COMMUNESYNC_FAULT_SEED={seed} to replay)");
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sample = SampleData::new(seed);
    let binary = tokio::task::spawn_blocking(communesync_binary)
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&communesync_tests::sqlite_url(dir.path(), "server.db"))
        .await
        .unwrap();
    let codes = server.commune_with_codes(COMMUNE, 2).await.unwrap();
    // About 2 Mbit/s each way and 20 ms one way: a sync of a few thousand records takes seconds.
    let link = PoorLink::start(
        server.addr,
        LinkProfile::loopback()
            .with_rates(250_000, 250_000)
            .with_latency(Duration::from_millis(20)),
    )
    .await
    .unwrap();
    let url = format!("http://{}", link.addr());
    let a = dir.path().join("tablet-a.db");
    let b = dir.path().join("tablet-b0.db");
    for (store, code, label) in [(&a, &codes[0], "A"), (&b, &codes[1], "B")] {
        let mut enroll = device(&binary, store);
        enroll.args(["enroll", "--server", &url, "--code", code, "--label", label]);
        run_to_end(enroll);
    }
    // The province's catalogue reaches the tablets at their first sync; imports need it.
    let catalogue = serde_json::json!({
        "procedures": SampleData::catalogue(),
        "holidays": SampleData::holidays(),
    });
    server
        .storage
        .put_catalogue(&catalogue.to_string())
        .await
        .unwrap();
    for store in [&a, &b] {
        let mut sync = device(&binary, store);
        sync.arg("sync");
        finish(sync).await;
    }
    let first = write_import(dir.path(), &mut sample, FIRST_IMPORT);
    let mut import = device(&binary, &a);
    import.arg("import").arg(&first);
    let imported = report_field(&run_to_end(import), "imported");
    assert_eq!(imported, FIRST_IMPORT as u64);

    let (mut sync_kills, mut import_kills, mut finished) = (0usize, 0usize, 0usize);
    // Kills after which the sync had made progress that the next one did not redo.
    let (mut push_progress_kills, mut pull_progress_kills) = (0usize, 0usize);
    let mut server_changes = 0u64;
    let mut b_count = 0usize;
    // Whether the last sync of A (of B) ran to its end: then A gets more intake, and B is
    // replaced by a fresh tablet, so that every sync has a lot to move and most kills land in one.
    let (mut a_done, mut b_done) = (false, false);
    let mut b = b;
    let mut fresh_tablets = 0usize;
    for run in 0..MAX_RUNS {
        if sync_kills >= SYNC_KILLS {
            break;
        }
        let is_a = run % 2 == 0;
        if is_a && a_done {
            // More intake on A, perhaps killed half-way.
            let more = write_import(dir.path(), &mut sample, MORE_IMPORT);
            let mut import = device(&binary, &a);
            import.arg("import").arg(&more);
            let delay = Duration::from_millis(rng.random_range(50..2000));
            if let Ended::Killed = run_and_kill(import, delay, None).await {
                import_kills += 1;
            }
            check_store(&a);
        }
        if !is_a && b_done {
            fresh_tablets += 1;
            b = dir.path().join(format!("tablet-b{fresh_tablets}.db"));
            let code = server.commune_with_codes(COMMUNE, 1).await.unwrap();
            let mut enroll = device(&binary, &b);
            enroll.args(["enroll", "--server", &url, "--code", &code[0]]);
            run_to_end(enroll);
            b_count = 0;
        }
        let store = if is_a { &a } else { &b };
        let mut sync = device(&binary, store);
        sync.arg("sync");
        let delay = Duration::from_millis(rng.random_range(100..2500));
        // Every other sync of A is killed right after the server commits one of its batches
        // (or at its delay, whichever comes first); the others at a random delay only.
        let after_a_commit = (run % 4 == 0).then_some((&server, server_changes));
        let killed = match run_and_kill(sync, delay, after_a_commit).await {
            Ended::Killed => {
                sync_kills += 1;
                true
            }
            Ended::Finished(report) => {
                finished += 1;
                // A finished sync has nothing left to push (no edits happen during it).
                assert_eq!(report_field(&report, "pending_docs"), 0, "{report}");
                false
            }
        };
        if is_a {
            a_done = !killed;
        } else {
            b_done = !killed;
        }
        let (ids, _) = check_store(store);
        let changes = stored_changes(&server).await;
        assert!(changes >= server_changes, "the server lost changes");
        if is_a {
            if killed && changes > server_changes {
                push_progress_kills += 1;
            }
        } else {
            assert!(ids.len() >= b_count, "tablet B lost pulled records");
            if killed && ids.len() > b_count {
                pull_progress_kills += 1;
            }
            b_count = ids.len();
        }
        server_changes = changes;
    }
    assert!(
        sync_kills >= SYNC_KILLS,
        "only {sync_kills} of {MAX_RUNS} runs were killed mid-sync ({finished} finished first)"
    );

    // Unkilled syncs: A pushes what is left, B pulls everything, then both are idle.
    for store in [&a, &b, &a, &b] {
        let mut sync = device(&binary, store);
        sync.arg("sync");
        let report = finish(sync).await;
        assert_eq!(report_field(&report, "pending_docs"), 0, "{report}");
    }
    for store in [&a, &b] {
        let mut sync = device(&binary, store);
        sync.arg("sync");
        let report = finish(sync).await;
        assert_eq!(
            (
                report_field(&report, "requests"),
                report_field(&report, "pushed_docs"),
                report_field(&report, "pulled_docs")
            ),
            (1, 0, 0),
            "not idle: {report}"
        );
    }

    let contents = ServerContents::read(server.storage.as_ref(), COMMUNE)
        .await
        .unwrap();
    assert_eq!(
        contents.feed_entries,
        contents.changes(),
        "a change is stored twice"
    );
    let on_server: HashSet<RecordId> = contents.docs.keys().copied().collect();
    let mut a_store = open(&a);
    let mut b_store = open(&b);
    let a_ids = all_ids(&a_store);
    assert_eq!(a_ids, on_server, "tablet A and the server differ");
    assert_eq!(
        all_ids(&b_store),
        on_server,
        "tablet B and the server differ"
    );
    assert!(a_ids.len() >= FIRST_IMPORT);
    for &id in &on_server {
        let mut heads_a = a_store.heads(id).unwrap();
        let mut heads_b = b_store.heads(id).unwrap();
        heads_a.sort();
        heads_b.sort();
        let on_server = contents.heads(id).unwrap();
        assert_eq!(
            Some(&heads_a),
            on_server.as_ref(),
            "A and server differ on {id}"
        );
        assert_eq!(heads_a, heads_b, "A and B differ on {id}");
    }
    assert_eq!(a_store.pending_count().unwrap(), 0);
    eprintln!(
        "faults_tablet: {sync_kills} SIGKILLs mid-sync ({push_progress_kills} after pushing \
         part, {pull_progress_kills} after pulling part), {import_kills} kills mid-import, \
         {finished} syncs finished before their kill, {fresh_tablets} fresh pulling tablets; \
         every store opened with integrity ok; \
         converged on {} records / {} changes, none stored twice, {:.1?}",
        on_server.len(),
        contents.changes(),
        started.elapsed()
    );
    assert!(
        push_progress_kills > 0 && pull_progress_kills > 0,
        "no killed sync had made partial progress: the kills did not land mid-transfer"
    );
}
