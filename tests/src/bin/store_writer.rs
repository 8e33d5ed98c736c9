//! `store-writer <store path> [marker base]`: hammers an encrypted device store with edits until it
//! is killed, for the crash-safety test.
//!
//! It opens the store (SQLCipher key `[9; 32]`), imports the sample catalogue, then loops (at most
//! [`MAX_ITERATIONS`] times) creating applications, appending unique ` #<n>` markers to the notes of
//! applications it knows, and moving them through legal status transitions. Edits target both the
//! applications it created and applications already in the store when it started.
//!
//! After each call that returned `Ok` it prints one line to stdout and flushes, so a printed line
//! means "committed":
//!
//! - `created <id>`
//! - `noted <id> <n>` (the notes of `<id>` now contain ` #<n>`)
//! - `status <id> <from> <to>`
//!
//! Markers count up from `marker base` (default: random), so a caller that gives each run a
//! disjoint base gets markers unique across runs. Any error goes to stderr with a non-zero exit.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use communesync_core::record::{RecordId, Status};
use communesync_core::sample::SampleData;
use communesync_core::store::{ApplicationQuery, DeviceStore, EncryptionKey, StoreConfig};
use rand::Rng;

/// Upper bound on the edit loop.
const MAX_ITERATIONS: u64 = 1_000_000;
/// The SQLCipher key of the test store.
const KEY: [u8; 32] = [9; 32];
const OFFICER: &str = "crash-test";
const COMMUNE: &str = "xa-muong-phang";
/// Notes longer than this get no more markers (the store refuses notes over 64 KiB).
const NOTES_BUDGET: usize = 60 * 1024;
/// Ids read from the store at start, at most.
const PRELOAD: u32 = 200;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store-writer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let Some(path) = args.next() else {
        bail!("usage: store-writer <store path> [marker base]");
    };
    let mut rng = rand::rng();
    let mut marker: u64 = match args.next() {
        Some(base) => base
            .to_str()
            .and_then(|s| s.parse().ok())
            .context("marker base must be an unsigned integer")?,
        None => rng.random_range(0..u64::MAX / 2),
    };

    let config = StoreConfig::new(&path).encrypted(EncryptionKey::new(KEY));
    let mut store = DeviceStore::open(config).context("opening the store")?;
    store
        .import_catalogue(&SampleData::catalogue())
        .context("importing the catalogue")?;

    let mut ids = existing_ids(&store, &mut rng)?;
    let mut sample = SampleData::new(rng.random());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();

    for _ in 0..MAX_ITERATIONS {
        let roll = rng.random_range(0..20u32);
        let target = if ids.is_empty() || roll < 3 {
            None
        } else {
            Some(ids[rng.random_range(0..ids.len())])
        };
        let Some(id) = target else {
            let app = store
                .create_application(OFFICER, sample.application(COMMUNE, None))
                .context("create_application")?;
            ids.push(app.id);
            writeln!(out, "created {}", app.id)?;
            out.flush()?;
            continue;
        };

        let current = store
            .get_application(id)
            .with_context(|| format!("get_application {id}"))?;
        let withdrawal_allowed = store.procedure(&current.procedure_code)?.withdrawal_allowed;
        let next: Vec<Status> = Status::ALL
            .into_iter()
            .filter(|&to| current.status.can_move_to(to, withdrawal_allowed))
            .collect();
        if roll >= 15 && !next.is_empty() {
            let from = current.status;
            let to = next[rng.random_range(0..next.len())];
            store
                .transition(id, OFFICER, to)
                .with_context(|| format!("transition {id} {from} -> {to}"))?;
            writeln!(out, "status {id} {from} {to}")?;
            out.flush()?;
        } else if current.notes.len() < NOTES_BUDGET {
            let n = marker;
            marker += 1;
            store
                .update_application(id, OFFICER, |app| app.notes.push_str(&format!(" #{n}")))
                .with_context(|| format!("update_application {id} (marker {n})"))?;
            writeln!(out, "noted {id} {n}")?;
            out.flush()?;
        } else {
            // Full notes and a terminal status: leave it alone from now on.
            ids.retain(|&other| other != id);
        }
    }
    Ok(())
}

/// Some application ids already in the store: the newest ones and a page at a random offset.
fn existing_ids(store: &DeviceStore, rng: &mut impl Rng) -> Result<Vec<RecordId>> {
    let newest = store
        .query_applications(&ApplicationQuery {
            descending: true,
            limit: PRELOAD,
            ..ApplicationQuery::default()
        })
        .context("query_applications")?;
    let mut ids: Vec<RecordId> = newest.items.iter().map(|a| a.id).collect();
    if newest.total > u64::from(PRELOAD) {
        let span = u32::try_from(newest.total).unwrap_or(u32::MAX);
        let older = store
            .query_applications(&ApplicationQuery {
                limit: PRELOAD,
                offset: rng.random_range(0..span),
                ..ApplicationQuery::default()
            })
            .context("query_applications")?;
        ids.extend(older.items.iter().map(|a| a.id));
        ids.sort();
        ids.dedup();
    }
    Ok(ids)
}
