//! The sync suite: a tablet and the provincial server over HTTP, on SQLite and PostgreSQL.
//!
//! Every process is the real one, and separate, so each side's memory can be measured:
//!
//! - the **server** is the `communesync serve` binary (package `communesync-server`, found next
//!   to this executable), started as a child process on a fresh database; its communes and
//!   enrollment codes come from `communesync admin`;
//! - each **tablet** is a child process of this benchmark (`sync --tablet-process STORE`) that
//!   owns an encrypted [`DeviceStore`] and a [`SyncClient`] over [`ReqwestTransport`], and takes
//!   its orders as JSON lines on stdin (answering on stdout);
//! - this process runs the [`PoorLink`] proxies the tablets talk through: its counters see every
//!   byte of every connection in both directions, HTTP headers included.
//!
//! Peak RSS is Linux `VmHWM`, reset before every phase by writing `5` to
//! `/proc/<pid>/clear_refs`, so each figure is the peak of that phase alone (when the kernel
//! refuses the reset, the figures are cumulative and the table title says so).
//!
//! Scenarios, in order, on one fresh server database per backend:
//! - S1: tablet A creates N applications offline, then syncs to the empty server;
//! - S2: A edits 200 (status change, a note line appended) and creates 50, then syncs;
//! - S3: A syncs again with nothing to do;
//! - S4: a fresh tablet B of the same commune enrolls and pulls everything;
//! - TLS handshake cost on 2G: A syncs with nothing to do through an emulated EDGE link on a new
//!   connection with a new client (a full handshake over HTTPS), then again on a new connection
//!   of the same client (a resumed session): the bytes the link carried beyond the HTTP bytes the
//!   client counted are the TLS cost (handshake and record framing; about 0 over HTTP);
//! - S2 on 2G: A makes another S2-sized round of edits and syncs through an emulated EDGE link.
//!
//! Every scenario runs over plain HTTP and over HTTPS (`--scheme`): the server terminates TLS
//! itself (`--tls-cert`, a certificate from a CA made by the bench, which the tablets alone
//! trust); HTTPS figures are named `sync.<backend>.https.*`.
//!
//! The reference is the same records (B's copy after S4) as JSON lines, gzip default level.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use communesync_core::record::{RecordId, Status};
use communesync_core::sample::SampleData;
use communesync_core::store::{ApplicationQuery, DeviceStore, EncryptionKey, StoreConfig};
use communesync_core::sync::{
    ReqwestConfig, ReqwestTransport, ServerTrust, SyncClient, SyncConfig, enroll,
};
use communesync_server::link::{LinkProfile, PoorLink};
use serde_json::{Value, json};

use crate::report::{Report, peak_rss_mb_of, reset_peak_rss};

#[derive(clap::Args)]
pub struct SyncArgs {
    /// Server storage to run the scenarios on. PostgreSQL comes from
    /// `COMMUNESYNC_BENCH_DATABASE_URL`, or a private cluster started (and stopped) by the bench.
    #[arg(long, value_enum, default_value_t = Backends::Both)]
    database: Backends,
    /// Applications tablet A creates offline before its first sync.
    #[arg(long, default_value_t = 10_000)]
    records: usize,
    /// Applications edited in S2 (and in S2 on 2G).
    #[arg(long, default_value_t = 200)]
    edits: usize,
    /// Applications created in S2 (and in S2 on 2G).
    #[arg(long, default_value_t = 50)]
    creates: usize,
    /// Plain HTTP, HTTPS, or both (HTTP first).
    #[arg(long, value_enum, default_value_t = Schemes::Both)]
    scheme: Schemes,
    /// The `communesync` server binary (default: next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Internal: run as a tablet process on this store, driven over stdin/stdout.
    #[arg(long, hide = true)]
    tablet_process: Option<PathBuf>,
}

/// What the sync suite speaks.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Schemes {
    Http,
    Https,
    Both,
}

impl Schemes {
    /// Whether to run over HTTPS, in order.
    fn tls(self) -> &'static [bool] {
        match self {
            Schemes::Http => &[false],
            Schemes::Https => &[true],
            Schemes::Both => &[false, true],
        }
    }
}

/// The bench's own CA and the server's certificate files.
struct BenchTls {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

impl BenchTls {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        let ca = communesync_tests::tls::TestCa::new("communesync bench CA")?;
        let (cert, key) = ca.server_cert(&["127.0.0.1"])?.write(dir, "server")?;
        Ok(BenchTls {
            ca_pem: ca.cert_pem,
            cert,
            key,
        })
    }
}

/// Server storage a bench runs on.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Backends {
    Sqlite,
    Postgres,
    Both,
}

impl Backends {
    /// The backends to run, in order.
    pub(crate) fn names(self) -> &'static [&'static str] {
        match self {
            Backends::Sqlite => &["sqlite"],
            Backends::Postgres => &["postgres"],
            Backends::Both => &["sqlite", "postgres"],
        }
    }
}

const COMMUNE: &str = "DB-MUONGPHANG";
const COMMUNE_NAME: &str = "Xã Mường Phăng";
const OFFICER: &str = "can.bo.mot.cua";
/// Environment variable naming a PostgreSQL server to create the bench databases in.
const PG_ENV: &str = "COMMUNESYNC_BENCH_DATABASE_URL";

pub fn run(args: &SyncArgs) -> anyhow::Result<()> {
    if let Some(store) = &args.tablet_process {
        return tablet::main(store);
    }
    let server_bin = server_binary(args.server_bin.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Declared first so that it outlives everything using it, and stops on any exit.
    let mut databases = Databases::default();
    let mut missed = 0;
    for backend in args.database.names() {
        for &tls in args.scheme.tls() {
            let dir = tempfile::tempdir()?;
            let url = databases.url(&runtime, backend, dir.path(), "bench_sync")?;
            let tls = if tls {
                Some(BenchTls::new(dir.path())?)
            } else {
                None
            };
            missed += run_backend(
                &runtime,
                &server_bin,
                backend,
                &url,
                dir.path(),
                tls.as_ref(),
                args,
            )?;
        }
    }
    drop(databases);
    if missed > 0 {
        eprintln!("{missed} target(s) missed");
    }
    Ok(())
}

/// What one phase cost, seen from the link, the tablet and the server.
struct Phase {
    seconds: f64,
    link_up: u64,
    link_down: u64,
    requests: f64,
    report_up: f64,
    report_down: f64,
    client_rss: f64,
    server_rss: f64,
    /// CPU time (user + system) of the tablet process(es) and of the server process.
    client_cpu: f64,
    server_cpu: f64,
    /// The sync report of the phase's sync, as JSON.
    sync: Value,
}

impl Phase {
    fn bytes(&self) -> u64 {
        self.link_up + self.link_down
    }
}

/// Targets of one phase's figures.
#[derive(Default)]
struct Targets {
    seconds: Option<(&'static str, f64)>,
    requests: Option<(&'static str, f64)>,
    bytes: Option<(&'static str, f64)>,
}

fn run_backend(
    runtime: &tokio::runtime::Runtime,
    server_bin: &Path,
    backend: &str,
    url: &str,
    dir: &Path,
    tls: Option<&BenchTls>,
    args: &SyncArgs,
) -> anyhow::Result<usize> {
    let load_before = load_average();
    eprintln!("[{backend}] preparing the server database ...");
    admin(server_bin, url, &["create-commune", COMMUNE, COMMUNE_NAME])?;
    let code_a = issue_code(server_bin, url)?;
    let code_b = issue_code(server_bin, url)?;
    let server = Server::start_with(
        server_bin,
        url,
        dir,
        None,
        tls.map(|tls| (tls.cert.as_path(), tls.key.as_path())),
    )?;
    let (link, slow) = runtime.block_on(async {
        anyhow::Ok((
            PoorLink::start(server.addr, LinkProfile::loopback()).await?,
            PoorLink::start(server.addr, LinkProfile::edge_2g()).await?,
        ))
    })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let link_url = format!("{scheme}://{}", link.addr());
    let slow_url = format!("{scheme}://{}", slow.addr());
    let ca_pem = tls.map(|tls| tls.ca_pem.clone());
    let mut rss_reset_ok = true;
    let mut report = Report::default();
    let prefix = match tls {
        Some(_) => format!("sync.{backend}.https"),
        None => format!("sync.{backend}"),
    };
    let backend = match tls {
        Some(_) => format!("{backend}, https"),
        None => backend.to_owned(),
    };

    let mut a = Tablet::spawn(&dir.join("tablet-a.db"))?;
    a.call(json!({"op": "enroll", "url": link_url, "code": code_a, "label": "tablet A", "ca_pem": ca_pem}))?;
    eprintln!(
        "[{backend}] tablet A: {} applications offline ...",
        args.records
    );
    a.call(json!({"op": "intake", "n": args.records, "seed": 1}))?;

    eprintln!(
        "[{backend}] S1: first sync of {} applications ...",
        args.records
    );
    let s1 = measure(&link, &server, &mut rss_reset_ok, |ops| {
        ops.push(a.call(json!({"op": "sync", "url": link_url, "ca_pem": ca_pem}))?);
        Ok(())
    })?;
    ensure_pushed(&s1, args.records, "S1")?;
    add_phase(
        &mut report,
        &format!("{prefix}.s1"),
        &s1,
        Targets {
            seconds: Some(("<", 3.0)),
            ..Targets::default()
        },
    );

    eprintln!(
        "[{backend}] S2: {} edits and {} new ...",
        args.edits, args.creates
    );
    let edit = json!({"op": "edit", "edits": args.edits, "creates": args.creates});
    a.call(edit.clone())?;
    let s2 = measure(&link, &server, &mut rss_reset_ok, |ops| {
        ops.push(a.call(json!({"op": "sync", "url": link_url, "ca_pem": ca_pem}))?);
        Ok(())
    })?;
    ensure_pushed(&s2, args.edits.min(args.records) + args.creates, "S2")?;
    add_phase(
        &mut report,
        &format!("{prefix}.s2"),
        &s2,
        Targets {
            requests: Some(("<=", 2.0)),
            bytes: Some(("<=", 60_000.0)),
            ..Targets::default()
        },
    );

    eprintln!("[{backend}] S3: nothing to do ...");
    let s3 = measure(&link, &server, &mut rss_reset_ok, |ops| {
        ops.push(a.call(json!({"op": "sync", "url": link_url, "ca_pem": ca_pem}))?);
        Ok(())
    })?;
    add_phase(
        &mut report,
        &format!("{prefix}.s3"),
        &s3,
        Targets {
            requests: Some(("==", 1.0)),
            bytes: Some(("<", 1_000.0)),
            ..Targets::default()
        },
    );

    let total = args.records + args.creates;
    eprintln!("[{backend}] S4: tablet B enrolls and pulls {total} ...");
    let mut b = Tablet::spawn(&dir.join("tablet-b.db"))?;
    let s4 = measure(&link, &server, &mut rss_reset_ok, |ops| {
        ops.push(
            b.call(json!({"op": "enroll", "url": link_url, "code": code_b, "label": "tablet B", "ca_pem": ca_pem}))?,
        );
        ops.push(b.call(json!({"op": "sync", "url": link_url, "ca_pem": ca_pem}))?);
        Ok(())
    })?;
    // `pulled_docs` counts a document once per feed batch it came in (an edited one twice):
    // the distinct count is checked on B's store below.
    let pulled = number(&s4.sync, "pulled_docs");
    anyhow::ensure!(
        pulled >= total as f64,
        "S4 pulled {pulled} documents, expected at least {total}"
    );
    // S4 counts the enrollment: one more request than the sync's own.
    add_phase(
        &mut report,
        &format!("{prefix}.s4"),
        &s4,
        Targets {
            seconds: Some(("<", 3.0)),
            ..Targets::default()
        },
    );

    eprintln!("[{backend}] reference: gzip of the records as JSON lines ...");
    let reference = b.call(json!({"op": "reference"}))?;
    b.quit()?;
    let records = number(&reference, "records");
    anyhow::ensure!(
        records == total as f64,
        "tablet B holds {records} applications, expected {total}"
    );
    let gzip = number(&reference, "gzip_bytes");
    report.add(
        &format!("{prefix}.ref.json_bytes"),
        number(&reference, "json_bytes"),
        "bytes",
        None,
    );
    report.add(&format!("{prefix}.ref.gzip_bytes"), gzip, "bytes", None);
    report.add(
        &format!("{prefix}.s1.bytes_vs_gzip"),
        s1.bytes() as f64 / gzip,
        "x",
        Some(("<=", 1.5)),
    );
    report.add(
        &format!("{prefix}.s4.bytes_vs_gzip"),
        s4.bytes() as f64 / gzip,
        "x",
        Some(("<=", 1.5)),
    );

    eprintln!("[{backend}] TLS cost on 2G: a first and a resumed connection, nothing to do ...");
    // A new client (the first order for this URL) on a new connection: a full handshake.
    let first = measure(&slow, &server, &mut rss_reset_ok, |ops| {
        ops.push(a.call(json!({"op": "sync", "url": slow_url, "ca_pem": ca_pem}))?);
        Ok(())
    })?;
    // The same client on a new connection (the server closed the idle one, as after its idle
    // timeout between two syncs): a resumed session.
    new_connection(&slow, &mut a)?;
    let resumed = measure(&slow, &server, &mut rss_reset_ok, |ops| {
        ops.push(a.call(json!({"op": "sync", "url": slow_url, "ca_pem": ca_pem}))?);
        Ok(())
    })?;
    new_connection(&slow, &mut a)?;
    for (name, phase) in [("first", &first), ("resumed", &resumed)] {
        let http_bytes = phase.report_up + phase.report_down;
        report.add(
            &format!("{prefix}.2g_{name}_connection.tls_bytes"),
            phase.bytes() as f64 - http_bytes,
            "bytes",
            None,
        );
        report.add(
            &format!("{prefix}.2g_{name}_connection.bytes"),
            phase.bytes() as f64,
            "bytes",
            None,
        );
        report.add(
            &format!("{prefix}.2g_{name}_connection.requests"),
            phase.requests,
            "",
            Some(("==", 1.0)),
        );
        report.add(
            &format!("{prefix}.2g_{name}_connection.seconds"),
            phase.seconds,
            "s",
            None,
        );
    }

    eprintln!("[{backend}] S2 again through an emulated 2G link ...");
    a.call(edit)?;
    let s2_2g = measure(&slow, &server, &mut rss_reset_ok, |ops| {
        ops.push(a.call(json!({"op": "sync", "url": slow_url, "ca_pem": ca_pem}))?);
        Ok(())
    })?;
    ensure_pushed(&s2_2g, args.edits.min(total) + args.creates, "S2 on 2G")?;
    a.quit()?;
    add_phase(
        &mut report,
        &format!("{prefix}.s2_2g"),
        &s2_2g,
        Targets {
            seconds: Some(("<", 10.0)),
            ..Targets::default()
        },
    );
    let phases = [&s1, &s2, &s3, &s4, &s2_2g];
    report.add(
        &format!("{prefix}.client_peak_rss"),
        phases.iter().map(|p| p.client_rss).fold(0.0, f64::max),
        "MB",
        Some(("<", 150.0)),
    );
    report.add(
        &format!("{prefix}.server_peak_rss"),
        phases.iter().map(|p| p.server_rss).fold(0.0, f64::max),
        "MB",
        None,
    );
    drop(server);

    let rss = if rss_reset_ok {
        "peak RSS = VmHWM of that phase alone (reset via /proc/PID/clear_refs)"
    } else {
        "peak RSS = CUMULATIVE VmHWM since process start (the kernel refused clear_refs)"
    };
    let backend_note = if backend.starts_with("postgres") {
        "server RSS excludes PostgreSQL's own processes"
    } else {
        "SQLite file in a temp dir"
    };
    let missed = report.table(&format!(
        "sync on {backend}: {n} applications (+{c} new, {e} edited in S2); tablet = child process \
         (SQLCipher store, reqwest), server = `communesync serve` child process ({backend_note}); \
         tablet <-> PoorLink (loopback, or EDGE 12.5 kB/s each way + 200 ms one way for s2_2g) <-> \
         server\n  bytes/bytes_up/bytes_down = link counters, every byte incl. HTTP headers; \
         rep_bytes_* = SyncReport's own counts; s4 = enroll + sync (requests: sync only); \
         {rss}; *_cpu = user+system CPU of that process in the phase; KB = 1000 bytes\n  load average (1/5/15 min) before: {load_before}, after: {}",
        load_average(),
        n = args.records,
        c = args.creates,
        e = args.edits,
    ));
    Ok(missed)
}

/// Cuts the link's open connections and lets the tablet's runtime run a moment (it only runs
/// during an order) to see them closed, so that its next request opens a new connection
/// instead of failing on the dead one and retrying.
fn new_connection(link: &PoorLink, tablet: &mut Tablet) -> anyhow::Result<()> {
    link.cut_active();
    tablet.call(json!({"op": "idle", "ms": 300}))?;
    Ok(())
}

/// Checks that a phase's sync pushed `expected` documents.
fn ensure_pushed(phase: &Phase, expected: usize, what: &str) -> anyhow::Result<()> {
    let pushed = number(&phase.sync, "pushed_docs");
    let pending = number(&phase.sync, "pending_docs");
    anyhow::ensure!(
        pushed == expected as f64 && pending == 0.0,
        "{what}: pushed {pushed} documents ({pending} left), expected {expected}"
    );
    Ok(())
}

fn add_phase(report: &mut Report, prefix: &str, phase: &Phase, targets: Targets) {
    report.add(
        &format!("{prefix}.seconds"),
        phase.seconds,
        "s",
        targets.seconds,
    );
    report.add(
        &format!("{prefix}.requests"),
        phase.requests,
        "",
        targets.requests,
    );
    report.add(
        &format!("{prefix}.bytes"),
        phase.bytes() as f64,
        "bytes",
        targets.bytes,
    );
    report.add(
        &format!("{prefix}.bytes_up"),
        phase.link_up as f64,
        "bytes",
        None,
    );
    report.add(
        &format!("{prefix}.bytes_down"),
        phase.link_down as f64,
        "bytes",
        None,
    );
    report.add(
        &format!("{prefix}.rep_bytes_up"),
        phase.report_up,
        "bytes",
        None,
    );
    report.add(
        &format!("{prefix}.rep_bytes_down"),
        phase.report_down,
        "bytes",
        None,
    );
    report.add(
        &format!("{prefix}.client_rss"),
        phase.client_rss,
        "MB",
        Some(("<", 150.0)),
    );
    report.add(
        &format!("{prefix}.server_rss"),
        phase.server_rss,
        "MB",
        None,
    );
    report.add(&format!("{prefix}.client_cpu"), phase.client_cpu, "s", None);
    report.add(&format!("{prefix}.server_cpu"), phase.server_cpu, "s", None);
}

/// Runs `run` (which sends orders to tablets and collects their answers) and measures it at the
/// link and at the server.
fn measure(
    link: &PoorLink,
    server: &Server,
    rss_reset_ok: &mut bool,
    run: impl FnOnce(&mut Vec<Value>) -> anyhow::Result<()>,
) -> anyhow::Result<Phase> {
    let (up, down) = settled(link);
    *rss_reset_ok &= reset_peak_rss(Some(server.pid));
    let server_cpu = cpu_seconds(Some(server.pid));
    let mut answers = Vec::new();
    run(&mut answers)?;
    let (up_after, down_after) = settled(link);
    let server_cpu = cpu_seconds(Some(server.pid)) - server_cpu;
    let sync = answers
        .iter()
        .rev()
        .find_map(|a| a.get("report").cloned())
        .ok_or_else(|| anyhow!("no sync in this phase"))?;
    *rss_reset_ok &= answers
        .iter()
        .all(|a| a.get("rss_reset").and_then(Value::as_bool) == Some(true));
    Ok(Phase {
        seconds: answers.iter().map(|a| number(a, "seconds")).sum(),
        link_up: up_after - up,
        link_down: down_after - down,
        requests: number(&sync, "requests"),
        report_up: number(&sync, "bytes_up"),
        report_down: number(&sync, "bytes_down"),
        client_rss: answers
            .iter()
            .map(|a| number(a, "peak_rss_mb"))
            .fold(0.0, f64::max),
        server_rss: peak_rss_mb_of(Some(server.pid)),
        client_cpu: answers.iter().map(|a| number(a, "cpu_seconds")).sum(),
        server_cpu,
        sync,
    })
}

/// The link's counters once they stopped moving: the proxy counts a chunk just after writing
/// it, so the tablet may have read its answer a moment before the count.
fn settled(link: &PoorLink) -> (u64, u64) {
    let mut last = (link.bytes_up(), link.bytes_down());
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = (link.bytes_up(), link.bytes_down());
        if now == last {
            return now;
        }
        last = now;
    }
}

/// CPU time (user + system, all threads) of process `pid` (`None`: this one) so far, in
/// seconds, from `/proc/<pid>/stat` (in USER_HZ = 100 ticks per second on Linux).
pub(crate) fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces): state is field 3, utime 14,
            // stime 15.
            let (_, rest) = stat.rsplit_once(')')?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
            Some((ticks(11)? + ticks(12)?) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn number(value: &Value, key: &str) -> f64 {
    value.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ----- the server ---------------------------------------------------------------------------

/// The `communesync` binary: `configured`, else the one next to this executable.
pub(crate) fn server_binary(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match configured {
        Some(path) => path.to_owned(),
        None => {
            let exe = std::env::current_exe()?;
            exe.parent()
                .ok_or_else(|| anyhow!("executable without a directory"))?
                .join("communesync")
        }
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

/// Runs `communesync admin --database URL <task...>` and returns its last line of output.
fn admin(bin: &Path, url: &str, task: &[&str]) -> anyhow::Result<Value> {
    let output = Command::new(bin)
        .args(["admin", "--database", url])
        .args(task)
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !output.status.success() {
        bail!(
            "communesync admin {task:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8(output.stdout)?;
    let line = stdout
        .lines()
        .last()
        .ok_or_else(|| anyhow!("communesync admin {task:?} printed nothing"))?;
    serde_json::from_str(line).with_context(|| format!("communesync admin output {line:?}"))
}

fn issue_code(bin: &Path, url: &str) -> anyhow::Result<String> {
    let answer = admin(bin, url, &["issue-code", "--commune", COMMUNE])?;
    answer
        .get("code")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("issue-code printed no code: {answer}"))
}

/// `communesync serve` as a child process; killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
}

impl Server {
    pub(crate) fn start(bin: &Path, url: &str, dir: &Path) -> anyhow::Result<Server> {
        Self::start_with(bin, url, dir, None, None)
    }

    /// [`Server::start_with`] without TLS.
    pub(crate) fn start_limited(
        bin: &Path,
        url: &str,
        dir: &Path,
        address_space: Option<u64>,
    ) -> anyhow::Result<Server> {
        Self::start_with(bin, url, dir, address_space, None)
    }

    /// [`Server::start`] with the child's address space limited to `address_space` bytes
    /// (`RLIMIT_AS`), so that a server without bounds fails alone instead of taking the machine,
    /// and serving HTTPS with the `(certificate, key)` files of `tls`.
    pub(crate) fn start_with(
        bin: &Path,
        url: &str,
        dir: &Path,
        address_space: Option<u64>,
        tls: Option<(&Path, &Path)>,
    ) -> anyhow::Result<Server> {
        // A port the kernel just handed out and released: free unless someone races for it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log_path = dir.join("server.log");
        let log = std::fs::File::create(&log_path)?;
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .args(["--database", url])
            .args(["--listen", &addr.to_string()])
            .arg("--admin-token-file")
            .arg(dir.join("admin-token"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((cert, key)) = tls {
            command
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
        }
        if let Some(bytes) = address_space {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the forked child before exec and only calls
            // setrlimit(2), which is async-signal-safe; it allocates only on an error path that
            // cannot be taken on Linux (RLIMIT_AS is supported).
            unsafe {
                command.pre_exec(move || rlimit::setrlimit(rlimit::Resource::AS, bytes, bytes));
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let mut server = Server { child, pid, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "the server exited ({status}) before listening: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("the server did not listen on {addr} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Server {
    /// How the server ended, if it has.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a bench's server keeps its data: a SQLite file in the backend's directory, or a fresh
/// PostgreSQL database on the server `COMMUNESYNC_BENCH_DATABASE_URL` names, else on a private
/// cluster started at first use and stopped when this is dropped.
#[derive(Default)]
pub(crate) struct Databases {
    cluster: Option<PgCluster>,
}

impl Databases {
    /// The `--database` URL for `backend` ("sqlite" or "postgres"); `name` is the PostgreSQL
    /// database, created anew.
    pub(crate) fn url(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        backend: &str,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<String> {
        if backend == "sqlite" {
            return Ok(format!("sqlite:{}", dir.join("server.db").display()));
        }
        let base = match (std::env::var(PG_ENV), &self.cluster) {
            (Ok(url), _) => url,
            (Err(_), Some(cluster)) => cluster.url.clone(),
            (Err(_), None) => self.cluster.insert(PgCluster::start()?).url.clone(),
        };
        runtime
            .block_on(communesync_tests::fresh_postgres_database(&base, name))
            .context("creating the bench database")
    }
}

/// A private PostgreSQL cluster started with `scripts/toolchains/postgres.sh`, stopped when
/// dropped.
struct PgCluster {
    _dir: tempfile::TempDir,
    data: PathBuf,
    url: String,
}

impl PgCluster {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/toolchains/postgres.sh")
    }

    fn start() -> anyhow::Result<PgCluster> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        // As root the cluster runs as another user, which must be able to reach the data dir.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let data = dir.path().join("pg");
        eprintln!(
            "{PG_ENV} unset: starting a private PostgreSQL in {}",
            data.display()
        );
        let output = Command::new(Self::script())
            .arg("start")
            .arg(&data)
            .stderr(Stdio::inherit())
            .output()
            .context("running scripts/toolchains/postgres.sh")?;
        // From here on, dropping the value stops whatever was started.
        let mut cluster = PgCluster {
            _dir: dir,
            data,
            url: String::new(),
        };
        if !output.status.success() {
            bail!("postgres.sh start failed ({})", output.status);
        }
        let stdout = String::from_utf8(output.stdout)?;
        cluster.url = stdout
            .lines()
            .find_map(|l| l.strip_prefix("DATABASE_URL="))
            .ok_or_else(|| anyhow!("postgres.sh start printed no DATABASE_URL: {stdout}"))?
            .to_owned();
        Ok(cluster)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let stopped = Command::new(Self::script())
            .arg("stop")
            .arg(&self.data)
            .stdout(Stdio::null())
            .status();
        if !matches!(stopped, Ok(status) if status.success()) {
            eprintln!(
                "warning: could not stop PostgreSQL in {}",
                self.data.display()
            );
        }
    }
}

// ----- tablets ------------------------------------------------------------------------------

/// A tablet child process; killed if dropped without [`Tablet::quit`].
struct Tablet {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Tablet {
    fn spawn(store: &Path) -> anyhow::Result<Tablet> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("sync")
            .arg("--tablet-process")
            .arg(store)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a tablet process")?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("tablet without stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("tablet without stdout"))?;
        Ok(Tablet {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    /// Sends one order and waits for its answer.
    fn call(&mut self, order: Value) -> anyhow::Result<Value> {
        writeln!(self.stdin, "{order}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the tablet process died during {order}");
        }
        let answer: Value = serde_json::from_str(&line)?;
        if let Some(error) = answer.get("error") {
            bail!("tablet: {order}: {error}");
        }
        Ok(answer)
    }

    fn quit(mut self) -> anyhow::Result<()> {
        self.call(json!({"op": "quit"}))?;
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "tablet process ended with {status}");
        Ok(())
    }
}

impl Drop for Tablet {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The tablet side: a device store and its sync clients, one order per line on stdin.
mod tablet {
    use super::*;

    struct State {
        store: Arc<Mutex<DeviceStore>>,
        token: Option<String>,
        /// One client (and connection pool) per server URL.
        clients: HashMap<String, SyncClient<ReqwestTransport>>,
        ids: Vec<RecordId>,
        sample: SampleData,
        edit_rounds: usize,
    }

    pub fn main(path: &Path) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut store =
            DeviceStore::open(StoreConfig::new(path).encrypted(EncryptionKey::new([7; 32])))?;
        store.import_catalogue(&SampleData::catalogue())?;
        store.set_holidays(&SampleData::holidays())?;
        let mut state = State {
            store: Arc::new(Mutex::new(store)),
            token: None,
            clients: HashMap::new(),
            ids: Vec::new(),
            sample: SampleData::new(1),
            edit_rounds: 0,
        };
        let stdin = std::io::stdin();
        let mut stdout = std::io::stdout();
        for line in stdin.lock().lines() {
            let order: Value = serde_json::from_str(&line?)?;
            let op = order.get("op").and_then(Value::as_str).unwrap_or_default();
            if op == "quit" {
                writeln!(stdout, "{}", json!({"ok": true}))?;
                stdout.flush()?;
                break;
            }
            let rss_reset = reset_peak_rss(None);
            let cpu = cpu_seconds(None);
            let started = Instant::now();
            let answer = match runtime.block_on(state.handle(op, &order)) {
                Ok(mut answer) => {
                    answer["seconds"] = json!(started.elapsed().as_secs_f64());
                    answer["peak_rss_mb"] = json!(peak_rss_mb_of(None));
                    answer["rss_reset"] = json!(rss_reset);
                    answer["cpu_seconds"] = json!(cpu_seconds(None) - cpu);
                    answer
                }
                Err(err) => json!({"error": format!("{err:#}")}),
            };
            writeln!(stdout, "{answer}")?;
            stdout.flush()?;
        }
        Ok(())
    }

    fn text<'a>(order: &'a Value, key: &str) -> anyhow::Result<&'a str> {
        order
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("order without {key}"))
    }

    fn count(order: &Value, key: &str) -> anyhow::Result<usize> {
        order
            .get(key)
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .ok_or_else(|| anyhow!("order without {key}"))
    }

    /// A transport to `url` trusting the order's `ca_pem` alone (HTTPS), or the web roots.
    fn transport(url: &str, order: &Value) -> anyhow::Result<ReqwestTransport> {
        let trust = ServerTrust {
            ca_pem: order
                .get("ca_pem")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .into_iter()
                .collect(),
            pinned_keys: Vec::new(),
        };
        Ok(ReqwestTransport::with_config(
            url,
            ReqwestConfig {
                trust,
                ..ReqwestConfig::default()
            },
        )?)
    }

    /// The status an edit moves an application to, along the workflow.
    fn next_status(status: Status) -> Option<Status> {
        match status {
            Status::Received | Status::SupplementRequested => Some(Status::InProgress),
            Status::InProgress => Some(Status::Ready),
            Status::Ready => Some(Status::Returned),
            _ => None,
        }
    }

    impl State {
        fn store(&self) -> std::sync::MutexGuard<'_, DeviceStore> {
            self.store.lock().unwrap_or_else(PoisonError::into_inner)
        }

        fn client(
            &mut self,
            url: &str,
            order: &Value,
        ) -> anyhow::Result<&SyncClient<ReqwestTransport>> {
            if !self.clients.contains_key(url) {
                let token = self
                    .token
                    .clone()
                    .ok_or_else(|| anyhow!("sync before enrollment"))?;
                let client = SyncClient::new(
                    transport(url, order)?,
                    self.store.clone(),
                    token,
                    SyncConfig::default(),
                )?;
                self.clients.insert(url.to_owned(), client);
            }
            self.clients
                .get(url)
                .ok_or_else(|| anyhow!("no client for {url}"))
        }

        async fn handle(&mut self, op: &str, order: &Value) -> anyhow::Result<Value> {
            match op {
                "enroll" => {
                    let url = text(order, "url")?;
                    let transport = transport(url, order)?;
                    let device = self.store().device_id();
                    let credentials = enroll(
                        &transport,
                        text(order, "code")?,
                        device,
                        text(order, "label")?,
                    )
                    .await?;
                    // The sync goes through the same client, hence the same connection.
                    let client = SyncClient::new(
                        transport,
                        self.store.clone(),
                        credentials.token.clone(),
                        SyncConfig::default(),
                    )?;
                    self.token = Some(credentials.token);
                    self.clients.insert(url.to_owned(), client);
                    Ok(json!({"ok": true}))
                }
                "idle" => {
                    let ms = order
                        .get("ms")
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                        .min(5_000);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(json!({"ok": true}))
                }
                "intake" => {
                    let n = count(order, "n")?;
                    self.sample = SampleData::new(order["seed"].as_u64().unwrap_or(1));
                    let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
                    for _ in 0..n {
                        let app = store
                            .create_application(OFFICER, self.sample.application(COMMUNE, None))?;
                        self.ids.push(app.id);
                    }
                    Ok(json!({"created": n}))
                }
                "edit" => {
                    let edits = count(order, "edits")?.min(self.ids.len());
                    let creates = count(order, "creates")?;
                    let start = self.edit_rounds * edits;
                    let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
                    for k in 0..edits {
                        let id = self.ids[(start + k) % self.ids.len()];
                        let status = store.get_application(id)?.status;
                        if let Some(to) = next_status(status) {
                            store.transition(id, OFFICER, to)?;
                        }
                        let line = self.sample.note_line();
                        store.update_application(id, OFFICER, |a| {
                            a.notes.push(' ');
                            a.notes.push_str(&line);
                        })?;
                    }
                    for _ in 0..creates {
                        let app = store
                            .create_application(OFFICER, self.sample.application(COMMUNE, None))?;
                        self.ids.push(app.id);
                    }
                    self.edit_rounds += 1;
                    Ok(json!({"edited": edits, "created": creates}))
                }
                "sync" => {
                    let client = self.client(text(order, "url")?, order)?;
                    let report = client.sync(&|_| {}).await?;
                    Ok(json!({"report": serde_json::to_value(&report)?}))
                }
                "reference" => {
                    use flate2::Compression;
                    use flate2::write::GzEncoder;
                    let mut store = self.store();
                    let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
                    let (mut records, mut json_bytes) = (0u64, 0u64);
                    let mut offset = 0;
                    loop {
                        let page = store.query_applications(&ApplicationQuery {
                            limit: 500,
                            offset,
                            ..Default::default()
                        })?;
                        for row in &page.items {
                            let mut line = serde_json::to_vec(&store.get_application(row.id)?)?;
                            line.push(b'\n');
                            gzip.write_all(&line)?;
                            records += 1;
                            json_bytes += line.len() as u64;
                        }
                        match page.next_offset {
                            Some(next) => offset = next,
                            None => break,
                        }
                    }
                    let gzip_bytes = gzip.finish()?.len();
                    Ok(json!({
                        "records": records,
                        "json_bytes": json_bytes,
                        "gzip_bytes": gzip_bytes,
                    }))
                }
                other => bail!("unknown order {other:?}"),
            }
        }
    }
}
