//! The hostile suite: what attacks on the provincial server cost it, and what they cost an honest
//! tablet syncing meanwhile.
//!
//! - The **server** is the `communesync serve` binary as a child process on a fresh SQLite file,
//!   with its default limits, its address space capped (`--server-memory-mb`, 4 GiB by default)
//!   so that a server without bounds fails alone instead of taking the machine. Its RSS is read
//!   from `/proc` just before the attack (`VmRSS`), and its peak during it (`VmHWM`, reset first
//!   by writing `5` to `clear_refs`).
//! - **Idle connections** (`--idle`, 2,000): sockets that connect and send nothing, each opened
//!   again as soon as the server closes it.
//! - **Hostile requests**, `--concurrency` (10) of each shape at once, back to back, every one on
//!   a fresh connection. The shapes that need a credential use one enrolled device per worker
//!   (ten stolen tablets, each under its own rate limit), in a commune of their own:
//!   (a) `bomb`: a zstd frame of about a kilobyte that decodes to `--bomb-docs` (11 million)
//!   empty pushed documents; (b) `repeat`: one record with a 200-change history named
//!   `--repeats` (20,000) times in one push; (c) `trickle`: a sync body sent a byte per second;
//!   (d) `bad_token`: syncs with random credentials; (e) `enroll_guess`: enrollments with random
//!   codes; (f) `forged_actor`: well-formed pushes of new records whose Automerge actor is another
//!   device than the one pushing.
//! - The **honest tablet** (an encrypted store and the real `SyncClient`, in another commune)
//!   creates an application and syncs, then pauses `--honest-pause-ms` (a sync every half second
//!   stays within the per-device rate limit), until the attack ends (`--seconds`). A sync that
//!   fails or takes over 30 s is a failure.
//!
//! Figures: server RSS before, peak and increase (target < 64 MB), honest sync p50/p99 (target
//! p99 < 1 s), honest failures (target 0), whether the server died (target 0), and per shape the
//! requests answered and those left without an answer. The run fails if an honest sync failed or
//! the server died.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use communesync_core::codec::DocCodec;
use communesync_core::protocol::{Extensions, PROTOCOL_VERSION, PullRequest, PushDoc, SyncRequest};
use communesync_core::record::{DeviceId, RecordKind};
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, EncryptionKey, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, enroll};
use communesync_server::http;
use communesync_server::storage::{self, Scope};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::report::{Report, peak_rss_mb_of, percentile, reset_peak_rss, rss_mb_of};
use crate::sync::{Server, load_average, server_binary};

#[derive(clap::Args)]
pub struct HostileArgs {
    /// Seconds the attack lasts.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Idle connections held open.
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// Requests of each hostile shape at once.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Shapes to run, by letter: a bomb, b repeat, c trickle, d bad_token, e enroll_guess,
    /// f forged_actor.
    #[arg(long, default_value = "abcdef")]
    shapes: String,
    /// Empty documents the bomb decodes to.
    #[arg(long, default_value_t = 11_000_000)]
    bomb_docs: u64,
    /// Times the repeat push names its record.
    #[arg(long, default_value_t = 20_000)]
    repeats: usize,
    /// Pause between the honest tablet's syncs, ms.
    #[arg(long, default_value_t = 500)]
    honest_pause_ms: u64,
    /// Address-space limit of the server process, MB (0: none).
    #[arg(long, default_value_t = 4096)]
    server_memory_mb: u64,
    /// The `communesync` server binary (default: next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

const HONEST_COMMUNE: &str = "HB-HONEST";
const HOSTILE_COMMUNE: &str = "HB-HOSTILE";
const OFFICER: &str = "can.bo";
/// Bound on one hostile exchange (the trickle has its own, the attack's end).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one honest sync; slower counts as a failure.
const HONEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Changes in the history of the record the repeat shape names.
const REPEAT_HISTORY: usize = 200;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Bomb,
    Repeat,
    Trickle,
    BadToken,
    EnrollGuess,
    ForgedActor,
}

impl Shape {
    const ALL: [Shape; 6] = [
        Shape::Bomb,
        Shape::Repeat,
        Shape::Trickle,
        Shape::BadToken,
        Shape::EnrollGuess,
        Shape::ForgedActor,
    ];

    fn letter(self) -> char {
        match self {
            Shape::Bomb => 'a',
            Shape::Repeat => 'b',
            Shape::Trickle => 'c',
            Shape::BadToken => 'd',
            Shape::EnrollGuess => 'e',
            Shape::ForgedActor => 'f',
        }
    }

    fn name(self) -> &'static str {
        match self {
            Shape::Bomb => "bomb",
            Shape::Repeat => "repeat",
            Shape::Trickle => "trickle",
            Shape::BadToken => "bad_token",
            Shape::EnrollGuess => "enroll_guess",
            Shape::ForgedActor => "forged_actor",
        }
    }

    /// Whether its workers each need an enrolled device.
    fn needs_device(self) -> bool {
        matches!(
            self,
            Shape::Bomb | Shape::Repeat | Shape::Trickle | Shape::ForgedActor
        )
    }
}

pub fn run(args: &HostileArgs) -> anyhow::Result<()> {
    let shapes: Vec<Shape> = Shape::ALL
        .into_iter()
        .filter(|s| args.shapes.contains(s.letter()))
        .collect();
    ensure!(
        args.shapes.chars().all(|c| "abcdef".contains(c)),
        "--shapes takes letters a to f"
    );
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    // This process holds the idle connections.
    let files = communesync_server::serve::raise_open_file_limit()?;
    ensure!(
        files.soft > args.idle as u64 + 1024,
        "{} idle connections need more than the open-file limit of {}",
        args.idle,
        files.soft
    );
    let server_bin = server_binary(args.server_bin.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite:{}", dir.path().join("server.db").display());
    let devices = shapes.iter().filter(|s| s.needs_device()).count() * args.concurrency
        + usize::from(shapes.contains(&Shape::Repeat));
    let codes = runtime.block_on(prepare(&url, devices))?;
    let memory = (args.server_memory_mb > 0).then_some(args.server_memory_mb << 20);
    let mut server = Server::start_limited(&server_bin, &url, dir.path(), memory)?;
    let outcome = runtime.block_on(attack(&mut server, dir.path(), codes, &shapes, args))?;
    drop(server);
    let mut problems = Vec::new();
    if outcome.honest_failures > 0 {
        problems.push(format!("{} honest sync(s) failed", outcome.honest_failures));
    }
    if let Some(status) = outcome.server_exit {
        problems.push(format!("the server died ({status})"));
    }
    if !problems.is_empty() {
        bail!("hostile: {}", problems.join("; "));
    }
    Ok(())
}

/// Enrollment codes: the honest tablet's, then one per hostile device.
struct Codes {
    honest: String,
    hostile: Vec<String>,
}

async fn prepare(url: &str, hostile: usize) -> anyhow::Result<Codes> {
    let storage = storage::open(url).await?;
    let now = communesync_tests::now_ms();
    let issue = async |commune: &str| {
        http::issue_enrollment_code(
            storage.as_ref(),
            &Scope::Commune(commune.to_owned()),
            Duration::from_secs(24 * 3600),
            now,
        )
        .await
        .map(|(code, _)| code)
    };
    storage
        .create_commune(HONEST_COMMUNE, "Xã Trung Thực")
        .await?;
    storage
        .create_commune(HOSTILE_COMMUNE, "Xã Bị Đánh Cắp")
        .await?;
    let honest = issue(HONEST_COMMUNE).await?;
    let mut codes = Vec::with_capacity(hostile);
    for _ in 0..hostile {
        codes.push(issue(HOSTILE_COMMUNE).await?);
    }
    Ok(Codes {
        honest,
        hostile: codes,
    })
}

/// What each shape's requests got, and the idle sockets' turnover.
#[derive(Default)]
struct Tally {
    statuses: Mutex<BTreeMap<(&'static str, u16), u64>>,
    unanswered: Mutex<BTreeMap<&'static str, u64>>,
    idle_open: AtomicU64,
    idle_reopened: AtomicU64,
}

impl Tally {
    fn answer(&self, shape: Shape, status: Option<u16>) {
        match status {
            Some(status) => {
                *self
                    .statuses
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry((shape.name(), status))
                    .or_default() += 1;
            }
            None => {
                *self
                    .unanswered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(shape.name())
                    .or_default() += 1;
            }
        }
    }

    fn answered(&self, shape: Shape) -> u64 {
        self.statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|((name, _), _)| *name == shape.name())
            .map(|(_, n)| n)
            .sum()
    }

    fn unanswered(&self, shape: Shape) -> u64 {
        self.unanswered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(shape.name())
            .copied()
            .unwrap_or(0)
    }
}

struct Outcome {
    honest_failures: u64,
    server_exit: Option<std::process::ExitStatus>,
}

/// The honest tablet: its own commune, an encrypted store, the real client.
struct Honest {
    store: Arc<Mutex<DeviceStore>>,
    client: SyncClient<ReqwestTransport>,
    sample: SampleData,
}

impl Honest {
    async fn enroll(dir: &Path, base: &str, code: &str) -> anyhow::Result<Honest> {
        let mut store = DeviceStore::open(
            StoreConfig::new(dir.join("honest.db")).encrypted(EncryptionKey::new([7; 32])),
        )?;
        store.import_catalogue(&SampleData::catalogue())?;
        let transport = ReqwestTransport::new(base)?;
        let credentials = enroll(&transport, code, store.device_id(), "honest").await?;
        let store = Arc::new(Mutex::new(store));
        let client = SyncClient::new(
            transport,
            store.clone(),
            credentials.token,
            SyncConfig::default(),
        )?;
        Ok(Honest {
            store,
            client,
            sample: SampleData::new(3),
        })
    }

    /// A new application, then a sync: its wall time in ms, or why it failed.
    async fn work_and_sync(&mut self) -> Result<f64, String> {
        let new = self.sample.application(HONEST_COMMUNE, None);
        tokio::task::block_in_place(|| {
            self.store
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .create_application(OFFICER, new)
        })
        .map_err(|e| format!("store: {e}"))?;
        let started = Instant::now();
        match tokio::time::timeout(HONEST_TIMEOUT, self.client.sync(&|_| {})).await {
            Ok(Ok(_)) => Ok(started.elapsed().as_secs_f64() * 1000.0),
            Ok(Err(err)) => Err(format!("sync: {err}")),
            Err(_) => Err(format!("sync: no answer within {HONEST_TIMEOUT:?}")),
        }
    }
}

async fn attack(
    server: &mut Server,
    dir: &Path,
    codes: Codes,
    shapes: &[Shape],
    args: &HostileArgs,
) -> anyhow::Result<Outcome> {
    let addr = server.addr;
    let base = format!("http://{addr}");
    eprintln!(
        "[hostile] enrolling the honest tablet and {} hostile devices ...",
        codes.hostile.len()
    );
    let mut honest = Honest::enroll(dir, &base, &codes.honest).await?;
    for _ in 0..5 {
        honest
            .work_and_sync()
            .await
            .map_err(|e| anyhow!("before the attack: {e}"))?;
    }
    let transport = ReqwestTransport::new(&base)?;
    let mut hostile_codes = codes.hostile.into_iter();
    let mut tokens: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for shape in shapes.iter().filter(|s| s.needs_device()) {
        for _ in 0..args.concurrency {
            let code = hostile_codes
                .next()
                .ok_or_else(|| anyhow!("enrollment codes ran out"))?;
            let token = enroll(&transport, &code, DeviceId::new(), "hostile")
                .await?
                .token;
            tokens.entry(shape.name()).or_default().push(token);
        }
    }
    let repeat_body = if shapes.contains(&Shape::Repeat) {
        let code = hostile_codes
            .next()
            .ok_or_else(|| anyhow!("enrollment codes ran out"))?;
        Some(repeat_body(dir, &base, &code, args.repeats).await?)
    } else {
        None
    };
    let bomb_body = if shapes.contains(&Shape::Bomb) {
        eprintln!(
            "[hostile] compressing {} empty documents ...",
            args.bomb_docs
        );
        Some(tokio::task::block_in_place(|| bomb_body(args.bomb_docs))?)
    } else {
        None
    };
    if let Some(body) = &bomb_body {
        eprintln!("[hostile] bomb: {} bytes on the wire", body.len());
    }

    let pid = server.pid;
    let rss_before = rss_mb_of(Some(pid));
    let reset = reset_peak_rss(Some(pid));
    // Sampled, so that a server that dies (its /proc entry gone) still has a figure: the last
    // peak seen before.
    let peak_kb = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak_kb = peak_kb.clone();
        tokio::spawn(async move {
            loop {
                let mb = peak_rss_mb_of(Some(pid));
                if mb.is_finite() {
                    peak_kb.fetch_max((mb * 1024.0) as u64, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = JoinSet::new();
    eprintln!(
        "[hostile] {} idle connections, {} requests of each of {} shape(s) at once, {} s ...",
        args.idle,
        args.concurrency,
        shapes.len(),
        args.seconds
    );
    for _ in 0..args.idle {
        tasks.spawn(hold_idle(addr, tally.clone(), deadline));
    }
    // The idle connections first (bounded wait), then the requests.
    let connecting = Instant::now() + Duration::from_secs(10);
    while tally.idle_open.load(Ordering::SeqCst) < args.idle as u64 && Instant::now() < connecting {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle_connected = tally.idle_open.load(Ordering::SeqCst);
    let bodies = Arc::new(Bodies {
        bomb: bomb_body.unwrap_or_default(),
        repeat: repeat_body.unwrap_or_default(),
        empty: empty_sync_body()?,
    });
    for &shape in shapes {
        for worker in 0..args.concurrency {
            let token = tokens
                .get(shape.name())
                .and_then(|t| t.get(worker))
                .cloned()
                .unwrap_or_default();
            tasks.spawn(hostile_worker(
                shape,
                addr,
                token,
                bodies.clone(),
                dir.join(format!("forger-{worker}.db")),
                tally.clone(),
                deadline,
            ));
        }
    }

    let mut latencies = Vec::new();
    let mut failures = 0u64;
    let mut server_exit = None;
    while Instant::now() < deadline {
        match honest.work_and_sync().await {
            Ok(ms) => latencies.push(ms),
            Err(err) => {
                failures += 1;
                if failures <= 5 {
                    eprintln!("[hostile] honest sync failed: {err}");
                }
            }
        }
        if let Some(status) = server.exited() {
            eprintln!("[hostile] the server exited: {status}");
            server_exit = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(args.honest_pause_ms)).await;
    }
    let last = peak_rss_mb_of(Some(pid));
    if last.is_finite() {
        peak_kb.fetch_max((last * 1024.0) as u64, Ordering::SeqCst);
    }
    sampler.abort();
    let rss_peak = peak_kb.load(Ordering::SeqCst) as f64 / 1024.0;
    server_exit = server_exit.or_else(|| server.exited());
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}

    for ((shape, status), n) in tally
        .statuses
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        eprintln!("[hostile] {shape}: {n} answered {status}");
    }
    let mut report = Report::default();
    report.add("hostile.server_rss_before", rss_before, "MB", None);
    // Of a server that died, the last peak sampled before.
    report.add("hostile.server_rss_peak", rss_peak, "MB", None);
    report.add(
        "hostile.server_rss_increase",
        rss_peak - rss_before,
        "MB",
        Some(("<", 64.0)),
    );
    report.add(
        "hostile.honest_sync_p50",
        percentile(&mut latencies, 50.0),
        "ms",
        None,
    );
    report.add(
        "hostile.honest_sync_p99",
        percentile(&mut latencies, 99.0),
        "ms",
        Some(("<", 1000.0)),
    );
    report.add("hostile.honest_syncs", latencies.len() as f64, "", None);
    report.add(
        "hostile.honest_failures",
        failures as f64,
        "",
        Some(("==", 0.0)),
    );
    report.add(
        "hostile.server_died",
        f64::from(u8::from(server_exit.is_some())),
        "",
        Some(("==", 0.0)),
    );
    report.add("hostile.idle_connected", idle_connected as f64, "", None);
    report.add(
        "hostile.idle_reopened",
        tally.idle_reopened.load(Ordering::SeqCst) as f64,
        "",
        None,
    );
    for &shape in shapes {
        let name = shape.name();
        report.add(
            &format!("hostile.{name}.answered"),
            tally.answered(shape) as f64,
            "",
            None,
        );
        report.add(
            &format!("hostile.{name}.unanswered"),
            tally.unanswered(shape) as f64,
            "",
            None,
        );
    }
    report.table(&format!(
        "hostile: {} s, {} idle connections, {} requests at once of each shape ({}); server = \
         `communesync serve` child process on SQLite, default limits{}; honest tablet = encrypted \
         store + SyncClient in this process, a sync every {} ms; RSS increase = VmHWM during the \
         attack{} - VmRSS before; unanswered = closed or timed out without a status; 2 cores \
         shared with the attackers (load average {})",
        args.seconds,
        args.idle,
        args.concurrency,
        shapes
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        if args.server_memory_mb > 0 {
            format!(", address space capped at {} MB", args.server_memory_mb)
        } else {
            String::new()
        },
        args.honest_pause_ms,
        if reset {
            ""
        } else {
            " (not reset: includes the setup)"
        },
        load_average(),
    ));
    Ok(Outcome {
        honest_failures: failures,
        server_exit,
    })
}

/// The request bodies the workers share.
struct Bodies {
    bomb: Vec<u8>,
    repeat: Vec<u8>,
    empty: Vec<u8>,
}

/// A socket that sends nothing, opened again whenever the server closes it.
async fn hold_idle(addr: SocketAddr, tally: Arc<Tally>, deadline: Instant) {
    let mut first = true;
    while Instant::now() < deadline {
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if first {
            tally.idle_open.fetch_add(1, Ordering::SeqCst);
            first = false;
        }
        let mut buf = [0u8; 256];
        tokio::select! {
            _ = stream.read(&mut buf) => {
                tally.idle_reopened.fetch_add(1, Ordering::SeqCst);
            }
            () = tokio::time::sleep_until(deadline) => return,
        }
    }
}

async fn hostile_worker(
    shape: Shape,
    addr: SocketAddr,
    token: String,
    bodies: Arc<Bodies>,
    forger_path: PathBuf,
    tally: Arc<Tally>,
    deadline: Instant,
) {
    let sync_head = |token: &str, length: usize| {
        format!(
            "POST /v1/sync HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: {}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n",
            communesync_core::protocol::CONTENT_TYPE
        )
    };
    // The forger: a store whose device (the changes' actor) is not the one whose token pushes.
    let forger = match shape {
        Shape::ForgedActor => {
            match DeviceStore::open(StoreConfig::new(&forger_path)).and_then(|mut store| {
                store.import_catalogue(&SampleData::catalogue())?;
                Ok(store)
            }) {
                Ok(store) => Some((store, SampleData::new(11))),
                Err(err) => {
                    eprintln!("[hostile] forger store: {err}");
                    return;
                }
            }
        }
        _ => None,
    };
    let mut forger = forger;
    while Instant::now() < deadline {
        let status = match shape {
            Shape::Bomb => {
                exchange(addr, &sync_head(&token, bodies.bomb.len()), &bodies.bomb).await
            }
            Shape::Repeat => {
                exchange(
                    addr,
                    &sync_head(&token, bodies.repeat.len()),
                    &bodies.repeat,
                )
                .await
            }
            Shape::Trickle => trickle(addr, &sync_head(&token, 100_000), deadline).await,
            Shape::BadToken => {
                let random = communesync_server::http::new_token();
                exchange(addr, &sync_head(&random, bodies.empty.len()), &bodies.empty).await
            }
            Shape::EnrollGuess => {
                let body = serde_json::json!({
                    "code": format!("{:04X}-{:04X}-{:04X}", rand::random::<u16>(),
                        rand::random::<u16>(), rand::random::<u16>()),
                    "device_id": DeviceId::new(),
                    "label": "guess",
                })
                .to_string();
                let head = format!(
                    "POST /v1/enroll HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                exchange(addr, &head, body.as_bytes()).await
            }
            Shape::ForgedActor => {
                let Some((store, sample)) = forger.as_mut() else {
                    return;
                };
                let body = match tokio::task::block_in_place(|| forged_push(store, sample)) {
                    Ok(body) => body,
                    Err(err) => {
                        eprintln!("[hostile] forging: {err:#}");
                        return;
                    }
                };
                exchange(addr, &sync_head(&token, body.len()), &body).await
            }
        };
        if Instant::now() < deadline {
            tally.answer(shape, status);
        }
        if status.is_none() {
            // Refused or cut: do not spin (a dead server refuses at once).
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One request on a fresh connection: the answer's status, or `None` if the connection closed
/// or nothing came within [`REQUEST_TIMEOUT`].
async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> Option<u16> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(head.as_bytes()).await.ok()?;
        // The server may answer (and close) before it has read the whole body.
        let _ = stream.write_all(body).await;
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(status) = status_of(&response) {
                return Some(status);
            }
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 || response.len() > 64 * 1024 {
                return None;
            }
            response.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .ok()
    .flatten()
}

/// The status of a response whose head is complete.
fn status_of(response: &[u8]) -> Option<u16> {
    response.windows(4).position(|w| w == b"\r\n\r\n")?;
    std::str::from_utf8(response.get(9..12)?).ok()?.parse().ok()
}

/// A sync whose body comes a byte per second, until the server answers or closes, or the attack
/// ends.
async fn trickle(addr: SocketAddr, head: &str, deadline: Instant) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if stream.write_all(&[0x28]).await.is_err() {
            return None;
        }
        // Reading is cancel-safe: what came stays in `response`.
        let next = Instant::now() + Duration::from_secs(1);
        while Instant::now() < next {
            match tokio::time::timeout_at(next.min(deadline), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return status_of(&response),
                Ok(Ok(n)) => {
                    response.extend_from_slice(&buf[..n]);
                    if let Some(status) = status_of(&response) {
                        return Some(status);
                    }
                }
                Err(_) => break,
            }
        }
    }
    None
}

/// A request that pushes no changes and pulls nothing.
fn empty_sync_body() -> anyhow::Result<Vec<u8>> {
    Ok(SyncRequest {
        protocol: PROTOCOL_VERSION,
        device_time: 0,
        push: Vec::new(),
        pull: None,
        catalogue_version: 0,
        pending_docs: 0,
        extensions: Default::default(),
    }
    .encode(&mut DocCodec::new()?)?)
}

/// A sync request of `docs` empty pushed documents, written field by field as postcard encodes
/// a [`SyncRequest`] (so that it never exists in memory here), in one zstd frame.
fn bomb_body(docs: u64) -> anyhow::Result<Vec<u8>> {
    let empty = PushDoc {
        id: None,
        kind: RecordKind::Application,
        changes: Vec::new(),
    };
    let message = |docs: u64| -> anyhow::Result<Vec<u8>> {
        let one = postcard::to_stdvec(&empty)?;
        let mut out = postcard::to_stdvec(&PROTOCOL_VERSION)?;
        out.extend(postcard::to_stdvec(&0i64)?);
        out.extend(postcard::to_stdvec(&docs)?);
        let count = usize::try_from(docs)?;
        out.reserve(one.len().saturating_mul(count));
        for _ in 0..count {
            out.extend_from_slice(&one);
        }
        out.extend(postcard::to_stdvec(&None::<PullRequest>)?);
        out.extend(postcard::to_stdvec(&0u64)?);
        out.extend(postcard::to_stdvec(&0u64)?);
        out.extend(postcard::to_stdvec(&Extensions::new())?);
        Ok(out)
    };
    // The layout is the protocol's: checked on two documents.
    let two = SyncRequest {
        protocol: PROTOCOL_VERSION,
        device_time: 0,
        push: vec![empty.clone(), empty.clone()],
        pull: None,
        catalogue_version: 0,
        pending_docs: 0,
        extensions: Default::default(),
    };
    ensure!(
        message(2)? == postcard::to_stdvec(&two)?,
        "the bomb's layout no longer matches SyncRequest"
    );
    Ok(DocCodec::new()?.encode_message(&message(docs)?)?)
}

/// Enrolls a device of the hostile commune, gives one record a long history through the real
/// client, and returns a push naming that record `repeats` times (its last change each time).
async fn repeat_body(
    dir: &Path,
    base: &str,
    code: &str,
    repeats: usize,
) -> anyhow::Result<Vec<u8>> {
    let mut store = DeviceStore::open(StoreConfig::new(dir.join("repeat-owner.db")))?;
    store.import_catalogue(&SampleData::catalogue())?;
    let transport = ReqwestTransport::new(base)?;
    let credentials = enroll(&transport, code, store.device_id(), "owner").await?;
    let mut sample = SampleData::new(17);
    let app = store.create_application(OFFICER, sample.application(HOSTILE_COMMUNE, None))?;
    for _ in 1..REPEAT_HISTORY {
        let line = sample.note_line();
        store.update_application(app.id, OFFICER, |a| {
            a.notes.push(' ');
            a.notes.push_str(&line);
        })?;
    }
    let last = store
        .changes_since(app.id, &[])?
        .pop()
        .ok_or_else(|| anyhow!("a record without changes"))?;
    let store = Arc::new(Mutex::new(store));
    let client = SyncClient::new(transport, store, credentials.token, SyncConfig::default())?;
    client.sync(&|_| {}).await.context("pushing the record")?;
    let doc = PushDoc {
        id: Some(app.id),
        kind: RecordKind::Application,
        changes: vec![last],
    };
    Ok(SyncRequest {
        protocol: PROTOCOL_VERSION,
        device_time: 0,
        push: vec![doc; repeats],
        pull: None,
        catalogue_version: 0,
        pending_docs: 0,
        extensions: Default::default(),
    }
    .encode(&mut DocCodec::new()?)?)
}

/// A push of one new record made by `forger` (whose device is not the pushing one).
fn forged_push(forger: &mut DeviceStore, sample: &mut SampleData) -> anyhow::Result<Vec<u8>> {
    let app = forger.create_application(OFFICER, sample.application(HOSTILE_COMMUNE, None))?;
    let doc = PushDoc {
        id: None,
        kind: RecordKind::Application,
        changes: forger.changes_since(app.id, &[])?,
    };
    Ok(SyncRequest {
        protocol: PROTOCOL_VERSION,
        device_time: 0,
        push: vec![doc],
        pull: None,
        catalogue_version: 0,
        pending_docs: 0,
        extensions: Default::default(),
    }
    .encode(&mut DocCodec::new()?)?)
}
