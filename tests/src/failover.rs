//! The failover drill: a real PostgreSQL primary with a synchronous streaming standby (started by
//! `scripts/toolchains/postgres.sh start` and `standby`), several `communesync serve` replica
//! processes on a multi-host connection string (`target_session_attrs=read-write`), and tablets
//! (encrypted device stores with the reqwest sync client) editing and syncing through the
//! replicas without pause. The primary's whole process group is SIGKILLed (a lost machine), the
//! standby is promoted (`pg_ctl promote`), and the tablets go on.
//!
//! [`run`] measures and reports; it asserts nothing, so the test (`tests/failover.rs`) and the
//! bench (`communesync-bench failover`) share it: the test checks the outcome (nothing lost,
//! every tablet converged, every replica serving again without a restart), the bench prints the
//! figures. What counts as acknowledged: when a sync returns `Ok` with nothing pending, the heads
//! every edited document had before it; each must be among the promoted standby's changes.
//!
//! Bounds: every loop is bounded by a deadline or a count; the clusters live in a directory under
//! `target/` that is removed (both clusters stopped) when the drill ends, whatever happens.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use automerge::ChangeHash;
use communesync_core::record::RecordId;
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, EncryptionKey, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, SyncError, enroll};
use communesync_server::http;
use communesync_server::storage::{self, Scope, StorageError};

use crate::now_ms;
use crate::process::{ServerContents, ServerProcess, differences};

/// The drill's shape.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    /// `communesync serve` processes.
    pub replicas: usize,
    /// Communes; each has `tablets_per_commune` tablets, spread over the replicas.
    pub communes: usize,
    /// Tablets per commune.
    pub tablets_per_commune: usize,
    /// Syncing before the primary is killed.
    pub before_kill: Duration,
    /// Between the kill and the promotion (what an operator or a failover manager takes).
    pub promote_after: Duration,
    /// Syncing after the promotion, before the tablets stop and converge.
    pub after_promotion: Duration,
}

impl Default for FailoverOptions {
    fn default() -> Self {
        FailoverOptions {
            replicas: 3,
            communes: 2,
            tablets_per_commune: 3,
            before_kill: Duration::from_secs(3),
            promote_after: Duration::ZERO,
            after_promotion: Duration::from_secs(4),
        }
    }
}

/// What the drill saw.
#[derive(Debug, Default)]
pub struct FailoverReport {
    /// From the kill to the end of `pg_ctl promote`.
    pub kill_to_promoted: Duration,
    /// Per tablet: from the kill to the end of its first successful sync started after it
    /// (`None`: it never had one before the tablets stopped).
    pub pauses: Vec<(String, Option<Duration>)>,
    /// Acknowledged document heads checked against the promoted standby.
    pub acknowledged_heads: usize,
    /// Acknowledged changes the promoted standby lacks (each described).
    pub lost: Vec<String>,
    /// Tablets whose documents differ from the server's after the final syncs (each described).
    pub unconverged: Vec<String>,
    /// Replica processes that exited during the drill.
    pub replicas_exited: usize,
    /// Replicas through which some tablet synced successfully after the promotion.
    pub replicas_serving_after: usize,
    /// Successful and failed syncs.
    pub syncs_ok: u64,
    /// Failed syncs (expected while the database is away).
    pub syncs_failed: u64,
    /// Sync failures a lost database does not explain.
    pub unexpected: Vec<String>,
}

impl FailoverReport {
    /// The longest pause any tablet saw; `None` if a tablet never synced again.
    pub fn longest_pause(&self) -> Option<Duration> {
        self.pauses
            .iter()
            .map(|(_, pause)| *pause)
            .try_fold(Duration::ZERO, |longest, pause| {
                pause.map(|p| longest.max(p))
            })
    }
}

/// Whether PostgreSQL's server binaries (with `pg_basebackup`) are installed, as
/// `scripts/toolchains/postgres.sh` installs them.
pub fn postgres_installed() -> bool {
    std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|versions| {
        versions
            .flatten()
            .any(|v| v.path().join("bin/pg_basebackup").is_file())
    })
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `scripts/toolchains/postgres.sh ARGS` and returns its stdout.
fn postgres_script(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("bash")
        .arg(workspace().join("scripts/toolchains/postgres.sh"))
        .args(args)
        .output()
        .context("running scripts/toolchains/postgres.sh")?;
    if !output.status.success() {
        bail!(
            "postgres.sh {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn database_url(stdout: &str) -> anyhow::Result<String> {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("DATABASE_URL="))
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("postgres.sh printed no DATABASE_URL: {stdout}"))
}

/// A port the kernel just handed out and released.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The primary and its standby, in a directory of their own; stopped and removed when dropped.
pub struct ReplicatedClusters {
    dir: PathBuf,
    /// The primary's data directory.
    pub primary: PathBuf,
    /// The standby's data directory.
    pub standby: PathBuf,
    /// The primary's URL (one host).
    pub primary_url: String,
    /// The standby's URL (one host).
    pub standby_url: String,
    /// Both hosts, the primary first, for the replicas: `target_session_attrs=read-write`.
    pub failover_url: String,
}

impl ReplicatedClusters {
    /// Starts a primary and a synchronous standby on free ports, under `target/`.
    pub fn start() -> anyhow::Result<ReplicatedClusters> {
        // Short (a unix socket path is limited) and traversable by the cluster's user when the
        // tests run as root.
        let dir = workspace().join("target").join(format!(
            "fo-{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        ));
        std::fs::create_dir_all(&dir)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        }
        let mut clusters = ReplicatedClusters {
            primary: dir.join("primary"),
            standby: dir.join("standby"),
            dir,
            primary_url: String::new(),
            standby_url: String::new(),
            failover_url: String::new(),
        };
        let primary_port = free_port()?;
        let standby_port = free_port()?;
        clusters.primary_url = database_url(&postgres_script(&[
            "start",
            &path_str(&clusters.primary)?,
            &primary_port.to_string(),
        ])?)?;
        clusters.standby_url = database_url(&postgres_script(&[
            "standby",
            &path_str(&clusters.standby)?,
            &path_str(&clusters.primary)?,
            &standby_port.to_string(),
        ])?)?;
        let user = clusters
            .primary_url
            .strip_prefix("postgres://")
            .and_then(|rest| rest.split('@').next())
            .ok_or_else(|| anyhow!("unexpected URL {}", clusters.primary_url))?;
        clusters.failover_url = format!(
            "host=127.0.0.1,127.0.0.1 port={primary_port},{standby_port} user={user} \
             dbname=communesync target_session_attrs=read-write"
        );
        Ok(clusters)
    }

    /// SIGKILLs every process of the primary (the postmaster leads their process group, as
    /// `pg_ctl` starts it), as when its machine is lost, and waits until they are gone.
    pub fn kill_primary(&self) -> anyhow::Result<()> {
        let pid_file = std::fs::read_to_string(self.primary.join("postmaster.pid"))?;
        let pid: i32 = pid_file
            .lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .filter(|&pid| pid > 1)
            .ok_or_else(|| anyhow!("no pid in postmaster.pid"))?;
        let status = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status()?;
        if !status.success() {
            bail!("kill -KILL -{pid} failed ({status})");
        }
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        // A killed postmaster stays a zombie until its parent (init) reaps it: gone or zombie.
        while proc_dir.exists()
            && !std::fs::read_to_string(proc_dir.join("stat")).is_ok_and(|stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z'))
            })
        {
            if Instant::now() > deadline {
                bail!("the primary's postmaster {pid} survived SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Promotes the standby and waits until it accepts writes.
    pub fn promote_standby(&self) -> anyhow::Result<()> {
        postgres_script(&["promote", &path_str(&self.standby)?]).map(drop)
    }
}

impl Drop for ReplicatedClusters {
    fn drop(&mut self) {
        for dir in [&self.standby, &self.primary] {
            if let Ok(dir) = path_str(dir) {
                let _ = postgres_script(&["stop", &dir]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", path.display()))
}

/// One sync a tablet made.
#[derive(Debug, Clone, Copy)]
struct SyncAttempt {
    started: Instant,
    finished: Instant,
    ok: bool,
}

#[derive(Default)]
struct Ledger {
    /// Latest acknowledged heads of every document.
    acked: HashMap<RecordId, Vec<ChangeHash>>,
    attempts: Vec<SyncAttempt>,
    unexpected: Vec<String>,
}

struct Tablet {
    name: String,
    commune: String,
    replica: usize,
    store: Arc<Mutex<DeviceStore>>,
    client: SyncClient<ReqwestTransport>,
    ledger: Mutex<Ledger>,
}

/// Upper bound on one tablet's edit-and-sync cycles (the clock ends the run long before).
const MAX_CYCLES: usize = 100_000;
/// Syncs per tablet at the end, all tablets in turn (pushes, then pulls of the others' pushes).
const FINAL_ROUNDS: usize = 3;

fn sync_config() -> SyncConfig {
    SyncConfig {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..SyncConfig::default()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the drill with the `communesync` binary `binary` (see the module doc). Needs a
/// multi-threaded tokio runtime.
pub async fn run(binary: &Path, options: &FailoverOptions) -> anyhow::Result<FailoverReport> {
    let replicas_wanted = options.replicas.max(1);
    let clusters = tokio::task::spawn_blocking(ReplicatedClusters::start).await??;
    let work_dir = clusters.dir.join("work");
    std::fs::create_dir_all(&work_dir)?;

    // Communes and enrollment codes, through the failover string (it reaches the primary).
    let communes: Vec<String> = (0..options.communes.max(1))
        .map(|i| format!("FO-COMMUNE-{i}"))
        .collect();
    let mut codes: Vec<(String, String)> = Vec::new();
    {
        let storage = storage::open(&clusters.failover_url).await?;
        for commune in &communes {
            match storage.create_commune(commune, commune).await {
                Ok(()) | Err(StorageError::AlreadyExists) => {}
                Err(err) => return Err(err.into()),
            }
            for _ in 0..options.tablets_per_commune.max(1) {
                let (code, _) = http::issue_enrollment_code(
                    storage.as_ref(),
                    &Scope::Commune(commune.clone()),
                    Duration::from_secs(3600),
                    now_ms(),
                )
                .await?;
                codes.push((commune.clone(), code));
            }
        }
    }

    let mut replicas = Vec::new();
    for i in 0..replicas_wanted {
        let dir = work_dir.join(format!("replica-{i}"));
        std::fs::create_dir_all(&dir)?;
        replicas.push(ServerProcess::start(
            binary,
            &clusters.failover_url,
            None,
            &dir,
        )?);
    }
    let pids: Vec<u32> = replicas.iter().map(ServerProcess::pid).collect();

    // Tablets of one commune on different replicas: convergence crosses replicas.
    let mut tablets = Vec::new();
    for (i, (commune, code)) in codes.iter().enumerate() {
        let replica = i % replicas.len();
        let name = format!("tablet-{i}");
        let mut store = DeviceStore::open(
            StoreConfig::new(work_dir.join(format!("{name}.db")))
                .encrypted(EncryptionKey::new([7; 32])),
        )?;
        store.import_catalogue(&SampleData::catalogue())?;
        let transport = ReqwestTransport::new(&replicas[replica].url())?;
        let credentials = enroll(&transport, code, store.device_id(), &name).await?;
        let store = Arc::new(Mutex::new(store));
        let client = SyncClient::new(transport, store.clone(), credentials.token, sync_config())?;
        tablets.push(Arc::new(Tablet {
            name,
            commune: commune.clone(),
            replica,
            store,
            client,
            ledger: Mutex::new(Ledger::default()),
        }));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = tablets
        .iter()
        .enumerate()
        .map(|(i, tablet)| tokio::spawn(work(tablet.clone(), stop.clone(), i as u64)))
        .collect();

    tokio::time::sleep(options.before_kill).await;
    let killed_at = Instant::now();
    // Blocking, briefly (the runtime must be multi-threaded): the tablets go on meanwhile.
    tokio::task::block_in_place(|| clusters.kill_primary())?;
    tokio::time::sleep(options.promote_after).await;
    tokio::task::block_in_place(|| clusters.promote_standby())?;
    let promoted_at = Instant::now();
    tokio::time::sleep(options.after_promotion).await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await?;
    }

    let mut report = FailoverReport {
        kill_to_promoted: promoted_at - killed_at,
        ..FailoverReport::default()
    };
    for (replica, pid) in replicas.iter_mut().zip(&pids) {
        if !replica.is_running() || replica.pid() != *pid {
            report.replicas_exited += 1;
        }
    }

    // Final syncs, every tablet in turn, so each pulls what the others pushed last.
    for _ in 0..FINAL_ROUNDS {
        for tablet in &tablets {
            sync_once(tablet, &[]).await;
        }
    }

    let mut serving = HashSet::new();
    for tablet in &tablets {
        let ledger = lock(&tablet.ledger);
        report.syncs_ok += ledger.attempts.iter().filter(|a| a.ok).count() as u64;
        report.syncs_failed += ledger.attempts.iter().filter(|a| !a.ok).count() as u64;
        report.unexpected.extend(ledger.unexpected.iter().cloned());
        let first_after_kill = ledger
            .attempts
            .iter()
            .find(|a| a.ok && a.started >= killed_at)
            .map(|a| a.finished - killed_at);
        report.pauses.push((tablet.name.clone(), first_after_kill));
        if ledger
            .attempts
            .iter()
            .any(|a| a.ok && a.started >= promoted_at)
        {
            serving.insert(tablet.replica);
        }
    }
    report.replicas_serving_after = serving.len();

    // The promoted standby against what tablets were acknowledged for and what they hold.
    let promoted = storage::open(&clusters.standby_url).await?;
    let mut held = HashMap::new();
    for commune in &communes {
        held.insert(
            commune.clone(),
            ServerContents::read(promoted.as_ref(), commune).await?,
        );
    }
    for tablet in &tablets {
        let contents = held
            .get(&tablet.commune)
            .ok_or_else(|| anyhow!("no contents for {}", tablet.commune))?;
        let acked: Vec<(RecordId, Vec<ChangeHash>)> = lock(&tablet.ledger)
            .acked
            .iter()
            .map(|(id, heads)| (*id, heads.clone()))
            .collect();
        for (id, heads) in acked {
            report.acknowledged_heads += 1;
            let changes = contents.docs.get(&id);
            for head in heads {
                if !changes.is_some_and(|c| c.contains_key(&head)) {
                    report
                        .lost
                        .push(format!("{}: {id}: acknowledged change {head}", tablet.name));
                }
            }
        }
        report.unconverged.extend(differences(
            &tablet.name,
            &mut lock(&tablet.store),
            contents,
        )?);
    }
    drop(replicas);
    drop(clusters);
    Ok(report)
}

/// One sync; acknowledges `snapshot` when it returns `Ok` with nothing pending.
async fn sync_once(tablet: &Tablet, snapshot: &[(RecordId, Vec<ChangeHash>)]) -> bool {
    let started = Instant::now();
    let result = tablet.client.sync(&|_| {}).await;
    let finished = Instant::now();
    let mut ledger = lock(&tablet.ledger);
    let ok = match result {
        Ok(report) => {
            if report.pending_docs == 0 {
                for (id, heads) in snapshot {
                    ledger.acked.insert(*id, heads.clone());
                }
            }
            report.pending_docs == 0
        }
        Err(SyncError::Offline(_) | SyncError::Server(_)) => false,
        Err(other) => {
            ledger.unexpected.push(format!("{}: {other}", tablet.name));
            false
        }
    };
    ledger.attempts.push(SyncAttempt {
        started,
        finished,
        ok,
    });
    ok
}

/// Edits (a new application, or a note on one of its own) and syncs until `stop`.
async fn work(tablet: Arc<Tablet>, stop: Arc<AtomicBool>, seed: u64) {
    let mut sample = SampleData::new(seed);
    let mut own: Vec<RecordId> = Vec::new();
    let mut dirty: HashSet<RecordId> = HashSet::new();
    for cycle in 0..MAX_CYCLES {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let snapshot = {
            let mut store = lock(&tablet.store);
            let edited = if own.is_empty() || cycle % 3 == 0 {
                store
                    .create_application("officer", sample.application(&tablet.commune, None))
                    .map(|app| {
                        own.push(app.id);
                        app.id
                    })
            } else {
                let id = own[cycle % own.len()];
                store
                    .update_application(id, &tablet.name, |a| {
                        a.notes.push_str(&format!(" #{cycle}"));
                    })
                    .map(|_| id)
            };
            match edited {
                Ok(id) => {
                    dirty.insert(id);
                }
                Err(err) => lock(&tablet.ledger)
                    .unexpected
                    .push(format!("{}: edit: {err}", tablet.name)),
            }
            dirty
                .iter()
                .filter_map(|&id| store.heads(id).ok().map(|heads| (id, heads)))
                .collect::<Vec<_>>()
        };
        if sync_once(&tablet, &snapshot).await {
            dirty.clear();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
