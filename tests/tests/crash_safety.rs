//! Crash safety of the device store under SIGKILL.
//!
//! The `store-writer` binary edits an encrypted store in a loop and prints a line after every call
//! that returned `Ok`. This test kills it with SIGKILL at random instants, many times over the same
//! file, and after each kill opens the store and checks that it is intact and holds every edit the
//! writer reported. Edits the store holds but the writer never reported can only be the call in
//! flight at a kill (committed, killed before it printed): there may be no more of them than kills.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use communesync_core::record::{RecordId, Status};
use communesync_core::store::{ApplicationQuery, DeviceStore, EncryptionKey, StoreConfig};
use rand::Rng;

/// The key `store-writer` uses.
const KEY: [u8; 32] = [9; 32];
/// Writer runs (one SIGKILL each).
const RUNS: u64 = 60;
/// Markers of run `r` start at `r * MARKER_STRIDE`; a run makes far fewer edits than that.
const MARKER_STRIDE: u64 = 10_000_000;
/// How long to wait for a writer's first line before giving up.
const FIRST_LINE_TIMEOUT: Duration = Duration::from_secs(30);
const SIGKILL: i32 = 9;
/// Every this many kills (and after the last), every record is loaded and checked, not only
/// those the last run edited.
const FULL_CHECK_EVERY: u64 = 5;

fn open(path: &Path) -> DeviceStore {
    DeviceStore::open(StoreConfig::new(path).encrypted(EncryptionKey::new(KEY)))
        .expect("the store opens after a kill")
}

/// The ` #<n>` markers in some notes, parsed exactly (` #12` is not ` #123`).
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

/// What the test knows is committed: everything reported, plus what it observed in the store after
/// earlier kills (the unreported in-flight edits).
#[derive(Default)]
struct Ledger {
    /// Every application known to exist.
    apps: HashMap<RecordId, Known>,
    /// Edits reported by the writer (each one checked after the kill that ended its run).
    reported_edits: u64,
    /// Checks done, one per kill.
    checks: u64,
    /// Documents loaded for checks.
    loads: u64,
    /// Edits found in the store that the writer never reported.
    unreported: Vec<String>,
}

#[derive(Default)]
struct Known {
    /// Markers that must be in the notes.
    markers: HashSet<u64>,
    /// Status the record must have (or be one legal step past, for the edit in flight).
    status: Option<Status>,
}

impl Ledger {
    /// Takes in the lines of one writer run. A malformed line or one that contradicts what the test
    /// last saw in the store is an error.
    fn apply(&mut self, lines: &[String]) -> Result<(), String> {
        for line in lines {
            let parts: Vec<&str> = line.split(' ').collect();
            let id = |i: usize| -> Result<RecordId, String> {
                parts
                    .get(i)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad id in line {line:?}"))
            };
            let status = |i: usize| -> Result<Status, String> {
                parts
                    .get(i)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad status in line {line:?}"))
            };
            match parts.first().copied() {
                Some("created") if parts.len() == 2 => {
                    let id = id(1)?;
                    if self.apps.contains_key(&id) {
                        return Err(format!("{id} reported created twice"));
                    }
                    self.apps.insert(
                        id,
                        Known {
                            status: Some(Status::Received),
                            ..Known::default()
                        },
                    );
                }
                Some("noted") if parts.len() == 3 => {
                    let id = id(1)?;
                    let n: u64 = parts[2]
                        .parse()
                        .map_err(|_| format!("bad marker in line {line:?}"))?;
                    let known = self
                        .apps
                        .get_mut(&id)
                        .ok_or_else(|| format!("edit of unknown record: {line:?}"))?;
                    if !known.markers.insert(n) {
                        return Err(format!("marker {n} reported twice"));
                    }
                }
                Some("status") if parts.len() == 4 => {
                    let id = id(1)?;
                    let (from, to) = (status(2)?, status(3)?);
                    let known = self
                        .apps
                        .get_mut(&id)
                        .ok_or_else(|| format!("edit of unknown record: {line:?}"))?;
                    if known.status != Some(from) {
                        return Err(format!(
                            "writer saw {id} in {from}, the test last knew it as {:?}: {line:?}",
                            known.status
                        ));
                    }
                    known.status = Some(to);
                }
                _ => return Err(format!("unexpected writer output {line:?}")),
            }
            self.reported_edits += 1;
        }
        Ok(())
    }

    /// Checks the store after one writer run ended in a kill.
    ///
    /// Always: `integrity_check` is "ok"; every known application is listed with the status the
    /// ledger expects (or one legal step past it); every record in `touched` (those the run
    /// reported edits on) and every record not seen before is loaded and holds every reported
    /// marker, its document agreeing with the list. With `full`, every known record is loaded.
    /// Edits found in the store but never reported (the one in flight at each kill) may not
    /// outnumber the kills. Then the ledger adopts what it saw.
    fn verify(
        &mut self,
        store: &mut DeviceStore,
        touched: &HashSet<RecordId>,
        full: bool,
    ) -> Result<(), String> {
        self.checks += 1;
        let integrity = store.integrity_check().map_err(|e| e.to_string())?;
        if integrity != "ok" {
            return Err(format!("integrity_check: {integrity}"));
        }
        let mut unreported: Vec<String> = Vec::new();

        // The list (projection) of every application, read without loading documents.
        let mut listed: HashMap<RecordId, Status> = HashMap::new();
        let mut offset = 0;
        loop {
            let page = store
                .query_applications(&ApplicationQuery {
                    limit: 500,
                    offset,
                    ..ApplicationQuery::default()
                })
                .map_err(|e| e.to_string())?;
            listed.extend(page.items.iter().map(|a| (a.id, a.status)));
            match page.next_offset {
                Some(next) if next > offset => offset = next,
                _ => break,
            }
        }
        for &id in listed.keys() {
            self.apps.entry(id).or_insert_with(|| {
                // Created by a writer that was killed before it could report it.
                unreported.push(format!("created {id}"));
                Known::default()
            });
        }

        for (&id, known) in &mut self.apps {
            let Some(&status) = listed.get(&id) else {
                return Err(format!(
                    "committed application {id} is gone (contains: {:?})",
                    store.contains(id)
                ));
            };
            if full || known.status.is_none() || touched.contains(&id) {
                let app = store
                    .get_application(id)
                    .map_err(|e| format!("committed application {id} is gone: {e}"))?;
                self.loads += 1;
                if app.status != status {
                    return Err(format!(
                        "application {id}: document says {}, list says {status}",
                        app.status
                    ));
                }
                let found = markers(&app.notes);
                let mut lost: Vec<u64> = known.markers.difference(&found).copied().collect();
                if !lost.is_empty() {
                    lost.sort_unstable();
                    return Err(format!(
                        "application {id} lost committed note markers {lost:?}; notes are {:?}",
                        app.notes
                    ));
                }
                for extra in found.difference(&known.markers) {
                    unreported.push(format!("marker {extra} on {id}"));
                }
                known.markers = found;
            }
            match known.status {
                Some(expected) if expected != status => {
                    let code = known_procedure(store, id)?;
                    let procedure = store.procedure(&code).map_err(|e| e.to_string())?;
                    if !expected.can_move_to(status, procedure.withdrawal_allowed) {
                        return Err(format!(
                            "application {id} is {status} but its committed status is {expected}"
                        ));
                    }
                    unreported.push(format!("status {expected} -> {status} on {id}"));
                }
                _ => {}
            }
            known.status = Some(status);
        }

        self.unreported.extend(unreported);
        if self.unreported.len() as u64 > self.checks {
            return Err(format!(
                "more unreported edits than kills ({}): {:?}",
                self.checks, self.unreported
            ));
        }
        Ok(())
    }
}

fn known_procedure(store: &mut DeviceStore, id: RecordId) -> Result<String, String> {
    store
        .get_application(id)
        .map(|app| app.procedure_code)
        .map_err(|e| e.to_string())
}

/// Records named in writer lines.
fn touched(lines: &[String]) -> HashSet<RecordId> {
    lines
        .iter()
        .filter_map(|line| line.split(' ').nth(1)?.parse().ok())
        .collect()
}

#[test]
fn markers_are_parsed_exactly() {
    let found = markers("Công dân nộp đủ hồ sơ. #12 #123 #x #7");
    assert_eq!(found, HashSet::from([12, 123, 7]));
    assert!(!markers("biên lai số 0012345 #1234").contains(&123));
}

/// The verifier must fail on a store that lost a reported edit, or this test proves nothing.
#[test]
fn verifier_catches_lost_edits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let mut store = open(&path);
    store
        .import_catalogue(&communesync_core::sample::SampleData::catalogue())
        .expect("catalogue");
    let mut sample = communesync_core::sample::SampleData::new(1);
    let app = store
        .create_application("officer", sample.application("xa-test", None))
        .expect("create");
    store
        .update_application(app.id, "officer", |a| a.notes.push_str(" #5"))
        .expect("note");

    let mut honest = Ledger::default();
    honest
        .apply(&[format!("created {}", app.id), format!("noted {} 5", app.id)])
        .expect("apply");
    honest
        .verify(&mut store, &HashSet::new(), true)
        .expect("the honest ledger verifies");

    let mut lost_marker = Ledger::default();
    lost_marker
        .apply(&[
            format!("created {}", app.id),
            format!("noted {} 55", app.id),
        ])
        .expect("apply");
    let err = lost_marker
        .verify(&mut store, &HashSet::new(), true)
        .expect_err("marker 55 was never written");
    assert!(err.contains("lost committed note markers [55]"), "{err}");

    let mut lost_record = Ledger::default();
    lost_record
        .apply(&[format!("created {}", RecordId::new())])
        .expect("apply");
    let err = lost_record
        .verify(&mut store, &HashSet::new(), true)
        .expect_err("record was never created");
    assert!(err.contains("is gone"), "{err}");

    let mut lost_status = Ledger::default();
    lost_status
        .apply(&[
            format!("created {}", app.id),
            format!("noted {} 5", app.id),
            format!("status {} received in_progress", app.id),
            format!("status {} in_progress ready", app.id),
        ])
        .expect("apply");
    let err = lost_status
        .verify(&mut store, &HashSet::new(), true)
        .expect_err("status was never written");
    assert!(err.contains("committed status is ready"), "{err}");
}

#[test]
fn sigkill_never_loses_committed_edits() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("device.db");
    let stderr_path = dir.path().join("writer.stderr");
    let mut rng = rand::rng();
    let mut ledger = Ledger::default();
    let mut kills = 0u64;
    let mut kills_after_output = 0u64;

    for run in 0..RUNS {
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_store-writer"))
            .arg(&path)
            .arg((run * MARKER_STRIDE).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn store-writer");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    // A line cut short by the kill was never fully reported: not committed news.
                    Ok(_) if buf.last() != Some(&b'\n') => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });

        let read_stderr = || {
            let mut text = String::new();
            std::fs::File::open(&stderr_path)
                .and_then(|mut f| f.read_to_string(&mut text))
                .map(|_| text)
                .unwrap_or_default()
        };

        // Odd runs: start the clock once the writer is editing, so the kill lands mid-stream.
        // Even runs: from spawn, so some kills land in open, migration or catalogue import.
        let mut lines = Vec::new();
        if run % 2 == 1 {
            match rx.recv_timeout(FIRST_LINE_TIMEOUT) {
                Ok(line) => lines.push(line),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "run {run}: no output from store-writer ({e}); stderr: {}",
                        read_stderr()
                    );
                }
            }
        }
        let delay = if run % 2 == 1 { 20..250 } else { 1..250 };
        thread::sleep(Duration::from_millis(rng.random_range(delay)));
        if let Err(e) = child.kill() {
            panic!(
                "run {run}: kill failed ({e}), the writer had already exited; stderr: {}",
                read_stderr()
            );
        }
        let status = child.wait().expect("wait for store-writer");
        assert_eq!(
            status.signal(),
            Some(SIGKILL),
            "run {run}: store-writer ended with {status} instead of SIGKILL; stderr: {}",
            read_stderr()
        );
        kills += 1;
        reader.join().expect("stdout reader");
        lines.extend(rx.try_iter());
        if !lines.is_empty() {
            kills_after_output += 1;
        }

        ledger
            .apply(&lines)
            .unwrap_or_else(|e| panic!("run {run}: {e}"));
        let full = run % FULL_CHECK_EVERY == FULL_CHECK_EVERY - 1 || run == RUNS - 1;
        let mut store = open(&path);
        ledger
            .verify(&mut store, &touched(&lines), full)
            .unwrap_or_else(|e| panic!("run {run}, after SIGKILL: {e}"));
    }

    eprintln!(
        "crash_safety: {kills} SIGKILLs ({kills_after_output} after the writer reported edits), \
         {} reported committed edits verified, {} applications, {} document loads, \
         {} committed-but-unreported edits found {:?}, {:.1?}",
        ledger.reported_edits,
        ledger.apps.len(),
        ledger.loads,
        ledger.unreported.len(),
        ledger.unreported,
        started.elapsed()
    );
    assert_eq!(kills, RUNS);
    assert!(
        kills_after_output >= RUNS / 2,
        "too few kills landed while the writer was writing ({kills_after_output})"
    );
    assert!(ledger.reported_edits > 0);
}
