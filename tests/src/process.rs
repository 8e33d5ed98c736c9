//! The real `communesync` binary as child processes, for the fault tests: the server
//! (`communesync serve`) that they SIGKILL and restart on the same database, and what they need to
//! compare the server's database with tablets afterwards.
//!
//! The binary is built with `cargo build --workspace --all-targets` on first use (a no-op when
//! it is fresh), so a test run always exercises the sources under test. `cargo test` releases the build
//! lock before it runs tests, so this nested build does not wait on its parent.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use communesync_core::record::RecordId;
use communesync_server::storage::{Scope, ServerStorage};

/// How long a started server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Signal number of SIGKILL.
pub const SIGKILL: i32 = 9;

/// The `communesync` binary of this build profile, built first if needed.
pub fn communesync_binary() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| build_binary().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build_binary() -> anyhow::Result<PathBuf> {
    // Test executables live in target/<profile>/deps; binaries in target/<profile>.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test executable path {}", exe.display()))?;
    let binary = profile_dir.join("communesync");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut build = Command::new(cargo);
        build
            // The whole workspace with every target: the feature set of `cargo test
            // --workspace`, so within it this is a no-op (a `-p` build would unify features
            // differently and rebuild much of the dependency tree).
            .args(["build", "-q", "--workspace", "--all-targets"])
            .current_dir(&workspace);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().context("running cargo build")?;
        if !status.success() {
            bail!("cargo build -p communesync-server failed ({status})");
        }
    }
    if !binary.is_file() {
        bail!(
            "{} not found: run `cargo build -p communesync-server` first",
            binary.display()
        );
    }
    Ok(binary)
}

/// `serve` arguments for a per-device request rate high enough never to be met, as
/// [`crate::unlimited_rate_config`]: the fault tests sync in tight loops.
pub const UNLIMITED_RATE: &[&str] = &["--device-burst", "1000000", "--device-rate", "1000000"];

/// `communesync serve` as a child process on a database; SIGKILLed when dropped.
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts the server on `database` (with [`UNLIMITED_RATE`]) and waits until it accepts
    /// connections. `addr` reuses an address (a restart); `None` takes a free port. Its log goes
    /// to `dir/server.log` (appended, so a restart keeps the history) and its operator token to
    /// `dir/admin-token`.
    pub fn start(
        binary: &Path,
        database: &str,
        addr: Option<SocketAddr>,
        dir: &Path,
    ) -> anyhow::Result<ServerProcess> {
        Self::start_configured(binary, database, addr, dir, UNLIMITED_RATE, None)
    }

    /// [`ServerProcess::start`] with more `serve` arguments, and with the child's open-file limit
    /// (soft and hard) set to `open_files` before it starts, as a system may start it.
    pub fn start_configured(
        binary: &Path,
        database: &str,
        addr: Option<SocketAddr>,
        dir: &Path,
        args: &[&str],
        open_files: Option<u64>,
    ) -> anyhow::Result<ServerProcess> {
        let addr = match addr {
            Some(addr) => addr,
            // A port the kernel just handed out and released: free unless someone races for it.
            None => std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?,
        };
        let log = dir.join("server.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .args(["--database", database])
            .args(["--listen", &addr.to_string()])
            .arg("--admin-token-file")
            .arg(dir.join("admin-token"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some(limit) = open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the forked child before exec and only calls
            // setrlimit(2), which is async-signal-safe; it allocates only on an error path that
            // cannot be taken on Linux (RLIMIT_NOFILE is supported).
            unsafe {
                command.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, limit, limit));
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server = ServerProcess { child, addr, log };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "the server exited ({status}) before listening on {addr}: {}",
                    server.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!("the server did not listen on {addr} within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILLs the server and reaps it. An error if it had already exited by itself.
    pub fn kill(mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the server had already exited ({status}): {}",
                self.log_text()
            );
        }
        self.child.kill()?;
        let status = self.child.wait()?;
        if status.signal() != Some(SIGKILL) {
            bail!("the server ended with {status}, not SIGKILL");
        }
        Ok(())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The server's log so far (all its runs in this directory).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the server holds for one commune: every document and its changes by hash.
#[derive(Debug, Default)]
pub struct ServerContents {
    /// Document → (change hash → change bytes), read from the commune's feed.
    pub docs: HashMap<RecordId, HashMap<automerge::ChangeHash, Vec<u8>>>,
    /// Feed entries read (more than the distinct changes if a change were stored twice).
    pub feed_entries: u64,
}

impl ServerContents {
    /// Reads a commune's whole feed from storage.
    pub async fn read(storage: &dyn ServerStorage, commune: &str) -> anyhow::Result<Self> {
        let scope = Scope::Commune(commune.to_owned());
        let mut contents = ServerContents::default();
        let mut cursor = 0;
        for _ in 0..100_000 {
            let page = storage
                .feed(&scope, cursor, None, 4 << 20, usize::MAX)
                .await?;
            for item in page.items {
                contents.feed_entries += 1;
                let change = automerge::Change::from_bytes(item.bytes.clone())
                    .map_err(|e| anyhow!("stored change of {} does not decode: {e}", item.doc))?;
                contents
                    .docs
                    .entry(item.doc)
                    .or_default()
                    .insert(change.hash(), item.bytes);
            }
            if !page.more {
                return Ok(contents);
            }
            if page.next_cursor <= cursor {
                bail!("the feed cursor did not move from {cursor}");
            }
            cursor = page.next_cursor;
        }
        bail!("the feed did not end")
    }

    /// Distinct changes held.
    pub fn changes(&self) -> u64 {
        self.docs.values().map(|c| c.len() as u64).sum()
    }

    /// The heads of a document as the server holds it (sorted), or `None` if it has none of it.
    /// An error if a stored change's dependency is missing: history with a hole.
    pub fn heads(&self, id: RecordId) -> anyhow::Result<Option<Vec<automerge::ChangeHash>>> {
        let Some(changes) = self.docs.get(&id) else {
            return Ok(None);
        };
        let mut depended: HashSet<automerge::ChangeHash> = HashSet::new();
        for (hash, bytes) in changes {
            let change = automerge::Change::from_bytes(bytes.clone())
                .map_err(|e| anyhow!("change {hash} of {id}: {e}"))?;
            for dep in change.deps() {
                if !changes.contains_key(dep) {
                    bail!("{id}: change {hash} depends on {dep}, which the server lacks");
                }
                depended.insert(*dep);
            }
        }
        let mut heads: Vec<_> = changes
            .keys()
            .filter(|h| !depended.contains(h))
            .copied()
            .collect();
        heads.sort();
        Ok(Some(heads))
    }
}

/// How a tablet's store differs from its commune on the server (`contents`): pending documents,
/// records one side lacks, different heads. Empty when they converged.
pub fn differences(
    name: &str,
    store: &mut communesync_core::store::DeviceStore,
    contents: &ServerContents,
) -> anyhow::Result<Vec<String>> {
    use communesync_core::store::ApplicationQuery;
    let mut problems = Vec::new();
    let pending = store.pending_count()?;
    if pending > 0 {
        problems.push(format!("{name}: {pending} documents still pending"));
    }
    let quarantined = store.quarantined_count()?;
    if quarantined > 0 {
        problems.push(format!("{name}: {quarantined} documents set aside"));
    }
    let mut ids = HashSet::new();
    let mut offset = 0;
    for _ in 0..10_000 {
        let page = store.query_applications(&ApplicationQuery {
            limit: 500,
            offset,
            ..ApplicationQuery::default()
        })?;
        ids.extend(page.items.iter().map(|a| a.id));
        match page.next_offset {
            Some(next) if next > offset => offset = next,
            _ => break,
        }
    }
    let server_ids: HashSet<RecordId> = contents.docs.keys().copied().collect();
    if ids != server_ids {
        problems.push(format!(
            "{name}: holds {} records, the server {} for its commune ({} only here, {} only there)",
            ids.len(),
            server_ids.len(),
            ids.difference(&server_ids).count(),
            server_ids.difference(&ids).count()
        ));
    }
    for id in ids.intersection(&server_ids) {
        let mut mine = store.heads(*id)?;
        mine.sort();
        if contents.heads(*id)? != Some(mine) {
            problems.push(format!("{name}: {id}: heads differ from the server's"));
        }
    }
    Ok(problems)
}
