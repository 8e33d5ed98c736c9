//! The load suite: a province's tablets (45 communes × 8 by default) doing a day's work and
//! syncing concurrently against one server on loopback, on SQLite and on PostgreSQL.
//!
//! - The **server** is the `communesync serve` binary as a child process (as in the sync suite) on
//!   a fresh database; communes and enrollment codes are written to that database before it
//!   starts. Its peak RSS is its `VmHWM` at the end (PostgreSQL's own processes not included).
//! - Each **tablet** is an encrypted [`DeviceStore`] with a [`SyncClient`] over
//!   [`ReqwestTransport`] in this process, enrolled with its own code. Its day: 20–40 new
//!   applications, about as many edits (status steps along the workflow, note lines, some on
//!   colleagues' records it pulled), spread over `--syncs-per-day` syncs; between syncs a random
//!   pause so that tablets do not march in step. At most `--concurrency` syncs run at once (a
//!   sync's latency is measured from when it starts, not from when it queued).
//! - The load phase ends after `--days` or `--seconds`, whichever first (no new round starts
//!   after the deadline); then every tablet syncs twice more to settle.
//!
//! Checks (the suite fails if any is not zero): sync errors (any `Err`, after the client's own
//! retries), lost changes (per commune, changes the tablets made minus changes the server
//! stores), duplicated changes (the reverse, and feed entries beyond distinct changes), records
//! missing on the server, unconverged tablets (a tablet whose records or any record's heads
//! differ from the server's for its commune, or with anything left to push).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use communesync_core::record::{RecordId, Status};
use communesync_core::sample::SampleData;
use communesync_core::store::{ApplicationQuery, DeviceStore, EncryptionKey, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, enroll};
use communesync_server::http;
use communesync_server::storage::{self, Scope};
use communesync_tests::process::ServerContents;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::report::{Report, peak_rss_mb, peak_rss_mb_of, percentile};
use crate::sync::{Backends, Databases, Server, cpu_seconds, load_average};

#[derive(clap::Args)]
pub struct LoadArgs {
    /// Server storage. PostgreSQL comes from `COMMUNESYNC_BENCH_DATABASE_URL`, or a private
    /// cluster started (and stopped) by the bench.
    #[arg(long, value_enum, default_value_t = Backends::Both)]
    database: Backends,
    /// Communes.
    #[arg(long, default_value_t = 45)]
    communes: usize,
    /// Tablets per commune.
    #[arg(long, default_value_t = 8)]
    tablets: usize,
    /// Working days each tablet does.
    #[arg(long, default_value_t = 1)]
    days: usize,
    /// Syncs per tablet per day; the day's work is spread between them.
    #[arg(long, default_value_t = 6)]
    syncs_per_day: usize,
    /// Syncs running at once, at most.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Bound on the load phase in seconds: no tablet starts a new round after it.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Seed of the tablets' work.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The `communesync` server binary (default: next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

/// The settle phase may take at most this long.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(1800);

pub fn run(args: &LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.communes > 0 && args.tablets > 0 && args.days > 0 && args.syncs_per_day > 0,
        "communes, tablets, days and syncs per day must be at least 1"
    );
    let server_bin = server_binary(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut databases = Databases::default();
    let mut failures = Vec::new();
    for backend in args.database.names() {
        let dir = tempfile::tempdir()?;
        let url = databases.url(&runtime, backend, dir.path(), "bench_load")?;
        let failed = runtime.block_on(run_backend(&server_bin, backend, &url, dir.path(), args))?;
        if failed > 0 {
            failures.push(format!(
                "{backend}: {failed} correctness figure(s) not zero"
            ));
        }
    }
    drop(databases);
    if !failures.is_empty() {
        bail!("load: {}", failures.join("; "));
    }
    Ok(())
}

fn server_binary(args: &LoadArgs) -> anyhow::Result<PathBuf> {
    let path = match &args.server_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("executable without a directory"))?
            .join("communesync"),
    };
    if !path.is_file() {
        let profile = if cfg!(debug_assertions) {
            ""
        } else {
            " --release"
        };
        bail!(
            "server binary {} not found: run `cargo build{profile} -p communesync-server` first \
             (or pass --server-bin)",
            path.display()
        );
    }
    Ok(path)
}

/// One tablet of the run.
struct Tablet {
    commune: usize,
    name: String,
    store: Arc<Mutex<DeviceStore>>,
    client: SyncClient<ReqwestTransport>,
    /// Applications this tablet created.
    own: Mutex<Vec<RecordId>>,
    /// Where its applications come from.
    sample: Mutex<SampleData>,
    seed: u64,
}

impl Tablet {
    fn store(&self) -> std::sync::MutexGuard<'_, DeviceStore> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What every tablet did, and what went wrong, shared by the tasks.
#[derive(Default)]
struct Tally {
    /// Sync wall times, ms, load phase only.
    latencies: Mutex<Vec<f64>>,
    syncs: AtomicU64,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl Tally {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::SeqCst);
        let mut first = self
            .first_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if first.len() < 10 {
            first.push(what);
        }
    }
}

/// Per commune: applications created and changes made by its tablets.
struct Made {
    records: Vec<AtomicU64>,
    changes: Vec<AtomicU64>,
}

fn commune_code(i: usize) -> String {
    format!("LD-{i:03}")
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

async fn run_backend(
    bin: &Path,
    backend: &str,
    url: &str,
    dir: &Path,
    args: &LoadArgs,
) -> anyhow::Result<usize> {
    let load_before = load_average();
    let n_tablets = args.communes * args.tablets;
    eprintln!(
        "[{backend}] preparing {} communes and {n_tablets} enrollment codes ...",
        args.communes
    );
    let codes = prepare(url, args).await?;
    let server = Server::start(bin, url, dir)?;
    let server_url = format!("http://{}", server.addr);

    eprintln!("[{backend}] opening and enrolling {n_tablets} tablet stores ...");
    let tablets_dir = dir.join("tablets");
    std::fs::create_dir_all(&tablets_dir)?;
    let mut tablets = Vec::with_capacity(n_tablets);
    for (commune, commune_codes) in codes.iter().enumerate() {
        for (t, code) in commune_codes.iter().enumerate() {
            let name = format!("{}-t{t}", commune_code(commune));
            let path = tablets_dir.join(format!("{name}.db"));
            let store = tokio::task::block_in_place(|| -> anyhow::Result<DeviceStore> {
                let mut store = DeviceStore::open(
                    StoreConfig::new(path).encrypted(EncryptionKey::new([7; 32])),
                )?;
                store.import_catalogue(&SampleData::catalogue())?;
                store.set_holidays(&SampleData::holidays())?;
                Ok(store)
            })?;
            let transport = ReqwestTransport::new(&server_url)?;
            let credentials = enroll(&transport, code, store.device_id(), &name)
                .await
                .with_context(|| format!("enrolling {name}"))?;
            let store = Arc::new(Mutex::new(store));
            let client = SyncClient::new(
                transport,
                store.clone(),
                credentials.token,
                SyncConfig::default(),
            )?;
            let seed = args
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(tablets.len() as u64);
            tablets.push(Arc::new(Tablet {
                commune,
                name,
                store,
                client,
                own: Mutex::new(Vec::new()),
                sample: Mutex::new(SampleData::new(seed)),
                seed,
            }));
        }
    }

    let made = Arc::new(Made {
        records: (0..args.communes).map(|_| AtomicU64::new(0)).collect(),
        changes: (0..args.communes).map(|_| AtomicU64::new(0)).collect(),
    });
    let tally = Arc::new(Tally::default());
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let rounds = args.days * args.syncs_per_day;
    let cpu_before = cpu_seconds(Some(server.pid));
    eprintln!(
        "[{backend}] load: {n_tablets} tablets, {} day(s) of work, {} syncs each, at most {} at \
         once, bounded at {} s ...",
        args.days, rounds, args.concurrency, args.seconds
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::with_capacity(n_tablets);
    for tablet in &tablets {
        tasks.push(tokio::spawn(day(
            tablet.clone(),
            made.clone(),
            tally.clone(),
            permits.clone(),
            args.syncs_per_day,
            rounds,
            deadline,
        )));
    }
    for task in tasks {
        task.await?;
    }
    let load_seconds = started.elapsed().as_secs_f64();
    let server_cpu = cpu_seconds(Some(server.pid)) - cpu_before;
    let syncs = tally.syncs.load(Ordering::SeqCst);
    let mut latencies = std::mem::take(
        &mut *tally
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );

    eprintln!("[{backend}] settling: every tablet syncs twice more ...");
    let settle_started = Instant::now();
    for pass in 0..2 {
        let mut tasks = Vec::with_capacity(n_tablets);
        for tablet in &tablets {
            let (tablet, tally, permits) = (tablet.clone(), tally.clone(), permits.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(_permit) = permits.acquire().await else {
                    return;
                };
                if let Err(err) = tablet.client.sync(&|_| {}).await {
                    tally.error(format!("{} settle pass {pass}: {err}", tablet.name));
                }
            }));
        }
        tokio::time::timeout(SETTLE_TIMEOUT, async {
            for task in tasks {
                task.await?;
            }
            anyhow::Ok(())
        })
        .await
        .map_err(|_| anyhow!("settling took over {SETTLE_TIMEOUT:?}"))??;
    }
    let settle_seconds = settle_started.elapsed().as_secs_f64();
    let server_rss = peak_rss_mb_of(Some(server.pid));

    eprintln!("[{backend}] verifying every tablet against the server ...");
    let verify = verify(url, &tablets, &made, args.communes).await?;
    drop(server);

    let errors = tally.errors.load(Ordering::SeqCst);
    for err in tally
        .first_errors
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        eprintln!("[{backend}] error: {err}");
    }
    let prefix = format!("load.{backend}");
    let mut report = Report::default();
    report.add(&format!("{prefix}.tablets"), n_tablets as f64, "", None);
    report.add(&format!("{prefix}.syncs"), syncs as f64, "", None);
    report.add(&format!("{prefix}.seconds"), load_seconds, "s", None);
    report.add(
        &format!("{prefix}.syncs_per_s"),
        syncs as f64 / load_seconds,
        "1/s",
        None,
    );
    report.add(
        &format!("{prefix}.sync_p50"),
        percentile(&mut latencies, 50.0),
        "ms",
        None,
    );
    report.add(
        &format!("{prefix}.sync_p99"),
        percentile(&mut latencies, 99.0),
        "ms",
        None,
    );
    report.add(
        &format!("{prefix}.sync_max"),
        percentile(&mut latencies, 100.0),
        "ms",
        None,
    );
    report.add(&format!("{prefix}.server_peak_rss"), server_rss, "MB", None);
    report.add(&format!("{prefix}.server_cpu"), server_cpu, "s", None);
    // What the server itself spent per sync: the latencies above also hold the tablets' own work,
    // all in this process on the same cores.
    report.add(
        &format!("{prefix}.server_cpu_per_sync"),
        server_cpu * 1000.0 / syncs.max(1) as f64,
        "ms",
        None,
    );
    report.add(
        &format!("{prefix}.tablets_peak_rss"),
        peak_rss_mb(),
        "MB",
        None,
    );
    report.add(
        &format!("{prefix}.requests"),
        tally.requests.load(Ordering::SeqCst) as f64,
        "",
        None,
    );
    report.add(
        &format!("{prefix}.retries"),
        tally.retries.load(Ordering::SeqCst) as f64,
        "",
        None,
    );
    report.add(
        &format!("{prefix}.bytes_up"),
        tally.bytes_up.load(Ordering::SeqCst) as f64,
        "bytes",
        None,
    );
    report.add(
        &format!("{prefix}.bytes_down"),
        tally.bytes_down.load(Ordering::SeqCst) as f64,
        "bytes",
        None,
    );
    report.add(
        &format!("{prefix}.settle_seconds"),
        settle_seconds,
        "s",
        None,
    );
    report.add(
        &format!("{prefix}.records"),
        verify.records as f64,
        "",
        None,
    );
    report.add(
        &format!("{prefix}.changes"),
        verify.changes as f64,
        "",
        None,
    );
    let zero = Some(("==", 0.0));
    let checks = [
        ("errors", errors),
        ("lost_changes", verify.lost_changes),
        ("duplicate_changes", verify.duplicate_changes),
        ("missing_records", verify.missing_records),
        ("unconverged_tablets", verify.unconverged_tablets),
    ];
    for (name, value) in checks {
        report.add(&format!("{prefix}.{name}"), value as f64, "", zero);
    }
    report.table(&format!(
        "load on {backend}: {} communes x {} tablets, {} day(s), {} syncs/tablet/day, at most {} \
         syncs at once; server = `communesync serve` child process ({}), tablets = encrypted \
         stores + reqwest clients in the bench process, loopback, no link shaping\n  latency = \
         wall time of one SyncClient::sync (push + pull rounds, retries included) once it may \
         start; server peak RSS = VmHWM over the whole run; 2 cores shared with the tablets \
         (and with other jobs: load average before {load_before}, after {})",
        args.communes,
        args.tablets,
        args.days,
        args.syncs_per_day,
        args.concurrency,
        if backend == "postgres" {
            "PostgreSQL's own processes not counted"
        } else {
            "SQLite file in a temp dir"
        },
        load_average(),
    ));
    Ok(checks.iter().filter(|(_, v)| *v != 0).count())
}

/// Creates the communes and one enrollment code per tablet.
async fn prepare(url: &str, args: &LoadArgs) -> anyhow::Result<Vec<Vec<String>>> {
    let storage = storage::open(url).await?;
    let now = communesync_tests::now_ms();
    let mut codes = Vec::with_capacity(args.communes);
    for i in 0..args.communes {
        let code = commune_code(i);
        storage.create_commune(&code, &format!("Xã {i}")).await?;
        let mut list = Vec::with_capacity(args.tablets);
        for _ in 0..args.tablets {
            let (enrollment, _) = http::issue_enrollment_code(
                storage.as_ref(),
                &Scope::Commune(code.clone()),
                Duration::from_secs(24 * 3600),
                now,
            )
            .await?;
            list.push(enrollment);
        }
        codes.push(list);
    }
    Ok(codes)
}

/// One tablet's days: work, then sync, `rounds` times (or until `deadline`).
async fn day(
    tablet: Arc<Tablet>,
    made: Arc<Made>,
    tally: Arc<Tally>,
    permits: Arc<tokio::sync::Semaphore>,
    syncs_per_day: usize,
    rounds: usize,
    deadline: Instant,
) {
    let mut rng = StdRng::seed_from_u64(tablet.seed);
    let commune = commune_code(tablet.commune);
    let mut today = (0usize, 0usize);
    for round in 0..rounds {
        if Instant::now() > deadline {
            break;
        }
        if round % syncs_per_day == 0 {
            // A new day: how many applications come in, and how many edits get done.
            let intake = rng.random_range(20..=40);
            today = (intake, rng.random_range(intake * 3 / 4..=intake * 5 / 4));
        }
        let slot = round % syncs_per_day;
        let share =
            |total: usize| total * (slot + 1) / syncs_per_day - total * slot / syncs_per_day;
        let (creates, edits) = (share(today.0), share(today.1));
        let work_seed = rng.random();
        let worked = {
            let (tablet, commune) = (tablet.clone(), commune.clone());
            tokio::task::spawn_blocking(move || work(&tablet, &commune, creates, edits, work_seed))
                .await
                .unwrap_or_else(|err| Err(anyhow!("work task: {err}")))
        };
        match worked {
            Ok((records, changes)) => {
                made.records[tablet.commune].fetch_add(records, Ordering::SeqCst);
                made.changes[tablet.commune].fetch_add(changes, Ordering::SeqCst);
            }
            Err(err) => tally.error(format!("{} work: {err:#}", tablet.name)),
        }

        let Ok(permit) = permits.acquire().await else {
            return;
        };
        let started = Instant::now();
        let result = tablet.client.sync(&|_| {}).await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        drop(permit);
        tally.syncs.fetch_add(1, Ordering::SeqCst);
        tally
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ms);
        match result {
            Ok(report) => {
                tally.requests.fetch_add(report.requests, Ordering::SeqCst);
                tally.retries.fetch_add(report.retries, Ordering::SeqCst);
                tally.bytes_up.fetch_add(report.bytes_up, Ordering::SeqCst);
                tally
                    .bytes_down
                    .fetch_add(report.bytes_down, Ordering::SeqCst);
            }
            Err(err) => tally.error(format!("{} sync {round}: {err}", tablet.name)),
        }
        // Staff do not all press "sync" at the same instant.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
    }
}

/// A slice of a day's work on one tablet; returns (records created, changes made).
fn work(
    tablet: &Tablet,
    commune: &str,
    creates: usize,
    edits: usize,
    seed: u64,
) -> anyhow::Result<(u64, u64)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut store = tablet.store();
    let mut own = tablet.own.lock().unwrap_or_else(PoisonError::into_inner);
    let mut sample = tablet.sample.lock().unwrap_or_else(PoisonError::into_inner);
    let officer = tablet.name.as_str();
    let (mut records, mut changes) = (0u64, 0u64);
    for _ in 0..creates {
        let app = store.create_application(officer, sample.application(commune, None))?;
        own.push(app.id);
        records += 1;
        changes += 1;
    }
    for _ in 0..edits {
        // Mostly one's own applications; sometimes a colleague's, pulled earlier.
        let colleague = rng.random_bool(0.2);
        let id = if colleague {
            let total = store
                .query_applications(&ApplicationQuery {
                    limit: 1,
                    ..ApplicationQuery::default()
                })?
                .total;
            if total == 0 {
                continue;
            }
            let offset = rng.random_range(0..u32::try_from(total).unwrap_or(u32::MAX));
            match store
                .query_applications(&ApplicationQuery {
                    limit: 1,
                    offset,
                    ..ApplicationQuery::default()
                })?
                .items
                .first()
            {
                Some(item) => item.id,
                None => continue,
            }
        } else {
            if own.is_empty() {
                continue;
            }
            own[rng.random_range(0..own.len())]
        };
        let status = store.get_application(id)?.status;
        match next_status(status) {
            Some(to) if !colleague && rng.random_bool(0.6) => {
                store.transition(id, officer, to)?;
            }
            _ => {
                let line = sample.note_line();
                store.update_application(id, officer, |a| {
                    a.notes.push(' ');
                    a.notes.push_str(&line);
                })?;
            }
        }
        changes += 1;
    }
    Ok((records, changes))
}

struct Verified {
    records: u64,
    changes: u64,
    lost_changes: u64,
    duplicate_changes: u64,
    missing_records: u64,
    unconverged_tablets: u64,
}

/// Compares what the tablets made with what the server stores, and every tablet with the
/// server's copy of its commune.
async fn verify(
    url: &str,
    tablets: &[Arc<Tablet>],
    made: &Made,
    communes: usize,
) -> anyhow::Result<Verified> {
    let storage = storage::open(url).await?;
    let mut verified = Verified {
        records: 0,
        changes: 0,
        lost_changes: 0,
        duplicate_changes: 0,
        missing_records: 0,
        unconverged_tablets: 0,
    };
    for commune in 0..communes {
        let code = commune_code(commune);
        let contents = ServerContents::read(storage.as_ref(), &code).await?;
        let stored = contents.changes();
        let expected = made.changes[commune].load(Ordering::SeqCst);
        verified.records += contents.docs.len() as u64;
        verified.changes += stored;
        verified.lost_changes += expected.saturating_sub(stored);
        verified.duplicate_changes +=
            stored.saturating_sub(expected) + contents.feed_entries.saturating_sub(stored);
        let created = made.records[commune].load(Ordering::SeqCst);
        verified.missing_records += created.saturating_sub(contents.docs.len() as u64);
        let mut server_heads = Vec::with_capacity(contents.docs.len());
        for &id in contents.docs.keys() {
            server_heads.push((id, contents.heads(id)?));
        }
        let on_server: HashSet<RecordId> = contents.docs.keys().copied().collect();
        for tablet in tablets.iter().filter(|t| t.commune == commune) {
            let converged = tokio::task::block_in_place(|| -> anyhow::Result<bool> {
                let mut store = tablet.store();
                if store.pending_count()? != 0 || all_ids(&store)? != on_server {
                    return Ok(false);
                }
                for (id, heads) in &server_heads {
                    let mut mine = store.heads(*id)?;
                    mine.sort();
                    if Some(&mine) != heads.as_ref() {
                        return Ok(false);
                    }
                }
                Ok(true)
            })?;
            if !converged {
                eprintln!("unconverged: {}", tablet.name);
                verified.unconverged_tablets += 1;
            }
        }
    }
    Ok(verified)
}

fn all_ids(store: &DeviceStore) -> anyhow::Result<HashSet<RecordId>> {
    let mut ids = HashSet::new();
    let mut offset = 0;
    loop {
        let page = store.query_applications(&ApplicationQuery {
            limit: 500,
            offset,
            ..ApplicationQuery::default()
        })?;
        ids.extend(page.items.iter().map(|a| a.id));
        match page.next_offset {
            Some(next) if next > offset => offset = next,
            _ => return Ok(ids),
        }
    }
}
