//! A poor-link emulator: a loopback TCP proxy that makes a fast local connection behave like a
//! tablet's 2G/EDGE link (low bandwidth, long round trips, connections dropped mid-transfer).
//!
//! The kernel here has no `netem`, so the shaping happens in user space: [`PoorLink`] listens on
//! `127.0.0.1:<ephemeral>` and forwards every accepted connection to a target address, passing
//! the bytes of each direction through
//!
//! 1. a **pacer** — data is read from the sender in chunks of at most [`MAX_CHUNK`] bytes, and
//!    the next chunk is not read before the previous one has been "serialised" at the
//!    direction's rate, so sending `N` bytes takes `N / rate` seconds and the sender feels TCP
//!    back-pressure as on a real slow link;
//! 2. a **delay line** — each chunk is stamped with the instant it would arrive at the far end
//!    (`serialised + latency`) and written at that instant. Chunks travel in a pipeline, so the
//!    latency is paid once per burst, not once per chunk (throughput does not collapse to
//!    `chunk / latency`). End of stream (FIN) and resets travel through the same line, in order.
//!
//! A transfer of `N` bytes in one direction therefore takes about `N / rate + latency`, and a
//! request/response exchange about `2 × latency` more than on loopback.
//!
//! Connections can be **cut** abruptly by policy ([`CutPolicy`]), one at a time
//! ([`PoorLink::cut_next`]), all at once ([`PoorLink::cut_active`]), or the whole link can go
//! down ([`PoorLink::set_down`]). A cut drops both sockets with `SO_LINGER = 0`, so both peers
//! see a TCP reset, and any data still in the delay line is lost — like a radio link that
//! vanishes mid-body.
//!
//! ```no_run
//! # async fn demo(server: std::net::SocketAddr) -> std::io::Result<()> {
//! use communesync_server::link::{Cut, LinkProfile, PoorLink};
//!
//! let link = PoorLink::start(server, LinkProfile::edge_2g()).await?;
//! // Tablets talk to `link.addr()` instead of `server`.
//! link.cut_next(Cut::downstream(10_000)); // the next connection dies after 10 000 bytes down
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, sleep_until};

/// Largest chunk the emulator reads, paces and forwards at once (one Ethernet-sized TCP
/// segment): the granularity of the pacing. Cuts are byte-exact regardless.
pub const MAX_CHUNK: usize = 1460;

/// How late the pacer may wake and still send on schedule (see [`pace`]): a burst allowance of
/// `rate × PACING_SLACK` bytes, which also covers the timer's 1 ms resolution.
const PACING_SLACK: Duration = Duration::from_millis(5);

/// Chunks one direction of one connection can hold in its delay line (up to about 1.5 MB). This
/// is the emulated link's window: the throughput of a direction is at most
/// `DELAY_LINE_CHUNKS × MAX_CHUNK / latency`, far above any 2G rate.
pub const DELAY_LINE_CHUNKS: usize = 1024;

/// How the emulated link behaves. Rates are in bytes per second, `0` meaning unlimited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkProfile {
    /// Rate from the server to the client (what the tablet downloads), bytes/s; `0` = unlimited.
    pub down_bytes_per_sec: u64,
    /// Rate from the client to the server (what the tablet uploads), bytes/s; `0` = unlimited.
    pub up_bytes_per_sec: u64,
    /// One-way latency added to every byte in each direction (the round trip is twice this).
    pub latency: Duration,
    /// When connections are cut.
    pub cut: CutPolicy,
}

impl LinkProfile {
    /// No limits at all: a plain proxy (useful as a baseline and for correctness tests).
    pub fn loopback() -> Self {
        LinkProfile {
            down_bytes_per_sec: 0,
            up_bytes_per_sec: 0,
            latency: Duration::ZERO,
            cut: CutPolicy::Never,
        }
    }

    /// A typical EDGE link: 100 kbit/s (12 500 bytes/s) both ways, 200 ms one-way latency
    /// (400 ms round trip), no cuts.
    pub fn edge_2g() -> Self {
        LinkProfile {
            down_bytes_per_sec: 12_500,
            up_bytes_per_sec: 12_500,
            latency: Duration::from_millis(200),
            cut: CutPolicy::Never,
        }
    }

    /// The worst link the tablets must live with: 50 kbit/s (6 250 bytes/s) both ways, 500 ms
    /// one-way latency (1 s round trip), no cuts.
    pub fn gprs() -> Self {
        LinkProfile {
            down_bytes_per_sec: 6_250,
            up_bytes_per_sec: 6_250,
            latency: Duration::from_millis(500),
            cut: CutPolicy::Never,
        }
    }

    /// This profile with another cut policy.
    pub fn with_cut(mut self, cut: CutPolicy) -> Self {
        self.cut = cut;
        self
    }

    /// This profile with another one-way latency.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// This profile with other rates (bytes/s, `0` = unlimited).
    pub fn with_rates(mut self, down_bytes_per_sec: u64, up_bytes_per_sec: u64) -> Self {
        self.down_bytes_per_sec = down_bytes_per_sec;
        self.up_bytes_per_sec = up_bytes_per_sec;
        self
    }
}

/// Where one connection gets cut: after the emulated link has carried `upstream` bytes from the
/// client to the server, or `downstream` bytes from the server to the client, whichever comes
/// first.
///
/// The cut fires when the connection would carry byte `N + 1` in that direction: the proxy
/// writes exactly `N` bytes, then resets both sockets and drops whatever else is in flight in
/// either direction. A direction whose stream ends (FIN) at or before `N` bytes is never cut, so
/// a response `L` bytes long is cut by `Cut::downstream(n)` for every `n` in `0..L` and
/// completes for `n >= L`.
///
/// The receiver gets **at most** `N` bytes, and exactly `N` whenever it keeps up with the link
/// (the normal case on a shaped link). On an unshaped direction the proxy can write far ahead of
/// a slow reader; bytes still queued in the proxy's socket when the reset goes out are lost,
/// like data queued in a real network when the radio link drops. Tests that need exact offsets
/// should give the direction a rate (even a fast one, e.g. 2 MB/s).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    /// Bytes client → server after which the connection is cut; `None` = no limit.
    pub upstream: Option<u64>,
    /// Bytes server → client after which the connection is cut; `None` = no limit.
    pub downstream: Option<u64>,
}

impl Cut {
    /// No cut: the connection goes through.
    pub const NONE: Cut = Cut {
        upstream: None,
        downstream: None,
    };

    /// Cut after `bytes` bytes from the client to the server.
    pub fn upstream(bytes: u64) -> Self {
        Cut {
            upstream: Some(bytes),
            downstream: None,
        }
    }

    /// Cut after `bytes` bytes from the server to the client.
    pub fn downstream(bytes: u64) -> Self {
        Cut {
            upstream: None,
            downstream: Some(bytes),
        }
    }

    /// Whether this cut can fire at all.
    pub fn is_none(&self) -> bool {
        self.upstream.is_none() && self.downstream.is_none()
    }
}

/// When the link cuts connections. One-shot cuts queued with [`PoorLink::cut_next`] take
/// precedence over the policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CutPolicy {
    /// Never cut (connections still die with [`PoorLink::cut_active`] or [`PoorLink::set_down`]).
    #[default]
    Never,
    /// Cut every connection after it carried that many bytes in that direction.
    AfterBytes {
        /// Bytes client → server after which each connection is cut.
        upstream: Option<u64>,
        /// Bytes server → client after which each connection is cut.
        downstream: Option<u64>,
    },
    /// The i-th connection accepted after the profile was set gets the i-th cut ([`Cut::NONE`]
    /// lets it through); once the schedule is used up, connections go through.
    Schedule(Vec<Cut>),
}

/// The emulated link: a proxy on `127.0.0.1` forwarding to one target through a [`LinkProfile`].
///
/// It runs as tasks on the tokio runtime it was started on, which must keep running (a
/// multi-threaded runtime, or a current-thread one whose clients are async). Dropping it closes
/// the listening port and aborts every connection task, which resets their sockets.
pub struct PoorLink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

struct Shared {
    target: SocketAddr,
    state: Mutex<State>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    connections: AtomicU64,
    cuts: AtomicU64,
    refused: AtomicU64,
    /// Bumped to cut every open connection.
    kill: watch::Sender<u64>,
}

struct State {
    profile: LinkProfile,
    /// What is left of a [`CutPolicy::Schedule`].
    schedule: VecDeque<Cut>,
    /// Cuts queued with [`PoorLink::cut_next`].
    one_shots: VecDeque<Cut>,
    down: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // The lock is never held across an await or user code; a poisoned state is still valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PoorLink {
    /// Binds `127.0.0.1:0` and forwards every accepted connection to `target` through `profile`.
    ///
    /// The target must be on this machine: a loopback address, or an unspecified one (`0.0.0.0`,
    /// `::`, as a server bound to all interfaces reports), which is taken as loopback. Anything
    /// else is refused with [`io::ErrorKind::InvalidInput`].
    pub async fn start(target: SocketAddr, profile: LinkProfile) -> io::Result<PoorLink> {
        let target = local_target(target)?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (kill, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            target,
            state: Mutex::new(State {
                schedule: schedule_of(&profile.cut),
                profile,
                one_shots: VecDeque::new(),
                down: false,
            }),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            kill,
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        tracing::debug!(%addr, %target, "poor link started");
        Ok(PoorLink {
            addr,
            shared,
            accept_task,
        })
    }

    /// The address clients connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// The current profile.
    pub fn profile(&self) -> LinkProfile {
        self.shared.state().profile.clone()
    }

    /// Replaces the profile for connections accepted from now on (open connections keep the
    /// profile they started with). A [`CutPolicy::Schedule`] starts over from its first entry;
    /// cuts queued with [`cut_next`](Self::cut_next) are kept.
    pub fn set_profile(&self, profile: LinkProfile) {
        let mut state = self.shared.state();
        state.schedule = schedule_of(&profile.cut);
        state.profile = profile;
    }

    /// Queues a one-shot cut: the next connection accepted (after those already queued) gets
    /// `cut` instead of the profile's policy; the following ones go back to the policy.
    ///
    /// To cut a sync at every offset: `cut_next(Cut::downstream(n))`, run the sync (it fails),
    /// repeat for the next `n`, then run it with nothing queued.
    pub fn cut_next(&self, cut: Cut) {
        self.shared.state().one_shots.push_back(cut);
    }

    /// One-shot cuts queued with [`cut_next`](Self::cut_next) that no connection took yet.
    pub fn pending_cuts(&self) -> usize {
        self.shared.state().one_shots.len()
    }

    /// Forgets the one-shot cuts no connection took yet.
    pub fn clear_pending_cuts(&self) {
        self.shared.state().one_shots.clear();
    }

    /// Cuts every open connection now (both sockets reset, in-flight data lost). Counts in
    /// [`cuts`](Self::cuts) once each connection has been torn down.
    pub fn cut_active(&self) {
        self.shared.kill.send_modify(|generation| *generation += 1);
    }

    /// Takes the whole link down (`true`) or back up (`false`). Going down cuts every open
    /// connection; while down, new connections are accepted and reset at once (the client sees
    /// its connection reset or closed before any byte arrives) and counted in
    /// [`refused`](Self::refused), not in [`connections`](Self::connections).
    pub fn set_down(&self, down: bool) {
        self.shared.state().down = down;
        if down {
            self.cut_active();
        }
        tracing::debug!(addr = %self.addr, down, "poor link state");
    }

    /// Whether the link is down.
    pub fn is_down(&self) -> bool {
        self.shared.state().down
    }

    /// Bytes delivered to the target (client → server) over all connections.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::Relaxed)
    }

    /// Bytes delivered to clients (server → client) over all connections.
    pub fn bytes_down(&self) -> u64 {
        self.shared.bytes_down.load(Ordering::Relaxed)
    }

    /// Connections accepted and forwarded (not counting those refused while down).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Connections cut (by policy, one-shot cut, [`cut_active`](Self::cut_active) or going down).
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::Relaxed)
    }

    /// Connections refused because the link was down.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }
}

impl Drop for PoorLink {
    fn drop(&mut self) {
        // The accept task owns the connection tasks' JoinSet, which aborts them when dropped.
        self.accept_task.abort();
    }
}

impl std::fmt::Debug for PoorLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoorLink")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .field("connections", &self.connections())
            .field("cuts", &self.cuts())
            .finish_non_exhaustive()
    }
}

fn local_target(mut target: SocketAddr) -> io::Result<SocketAddr> {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => target.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => target.set_ip(Ipv6Addr::LOCALHOST.into()),
        ip if ip.is_loopback() => {}
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("poor link target {target} is not on this machine"),
            ));
        }
    }
    Ok(target)
}

fn schedule_of(cut: &CutPolicy) -> VecDeque<Cut> {
    match cut {
        CutPolicy::Schedule(cuts) => cuts.iter().copied().collect(),
        CutPolicy::Never | CutPolicy::AfterBytes { .. } => VecDeque::new(),
    }
}

/// What one new connection gets: its shaping and its cut.
struct Plan {
    down_rate: u64,
    up_rate: u64,
    latency: Duration,
    cut: Cut,
}

/// Decides the fate of a new connection: `None` if the link is down.
fn plan_connection(shared: &Shared) -> Option<Plan> {
    let mut state = shared.state();
    if state.down {
        return None;
    }
    let cut = match state.one_shots.pop_front() {
        Some(cut) => cut,
        None => match &state.profile.cut {
            CutPolicy::Never => Cut::NONE,
            CutPolicy::AfterBytes {
                upstream,
                downstream,
            } => Cut {
                upstream: *upstream,
                downstream: *downstream,
            },
            CutPolicy::Schedule(_) => state.schedule.pop_front().unwrap_or(Cut::NONE),
        },
    };
    Some(Plan {
        down_rate: state.profile.down_bytes_per_sec,
        up_rate: state.profile.up_bytes_per_sec,
        latency: state.profile.latency,
        cut,
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => match plan_connection(&shared) {
                    Some(plan) => {
                        shared.connections.fetch_add(1, Ordering::Relaxed);
                        connections.spawn(serve(client, plan, Arc::clone(&shared)));
                    }
                    None => {
                        shared.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "poor link down: connection refused");
                        reset(&client);
                    }
                },
                Err(error) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "poor link: accept failed");
                    sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Makes closing a socket send a TCP reset instead of an orderly FIN (`SO_LINGER = 0`).
///
/// Connection sockets are armed like this from the start, so whatever drops them — a cut, a
/// broken peer, the link being dropped and its tasks aborted — resets them, as a vanished link
/// would; only a connection whose both directions ended cleanly is [disarmed](disarm) first.
fn reset(stream: &TcpStream) {
    if let Err(error) = stream.set_zero_linger() {
        tracing::debug!(%error, "poor link: cannot set SO_LINGER");
    }
}

/// Restores the orderly close of a socket armed by [`reset`].
// `set_linger` is deprecated because a *non-zero* linger blocks on close; clearing it restores
// the harmless default.
#[allow(deprecated)]
fn disarm(stream: &TcpStream) {
    if let Err(error) = stream.set_linger(None) {
        tracing::debug!(%error, "poor link: cannot clear SO_LINGER");
    }
}

/// How one connection ended.
#[derive(Debug)]
enum Ending {
    /// Both directions ended with FIN.
    Clean,
    /// Cut by policy or on demand.
    Cut,
    /// A peer reset or an I/O error.
    Broken(io::Error),
}

async fn serve(mut client: TcpStream, plan: Plan, shared: Arc<Shared>) {
    reset(&client);
    let mut kill = shared.kill.subscribe();
    let connected = tokio::select! {
        connected = TcpStream::connect(shared.target) => connected,
        _ = kill.changed() => {
            shared.cuts.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut server = match connected {
        Ok(server) => server,
        Err(error) => {
            tracing::debug!(%error, target = %shared.target, "poor link: target unreachable");
            return;
        }
    };
    reset(&server);
    for stream in [&client, &server] {
        // The emulator paces small chunks itself; Nagle would only add delays.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "poor link: cannot set TCP_NODELAY");
        }
    }

    let ending = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = pipe(
            client_read,
            server_write,
            plan.up_rate,
            plan.latency,
            plan.cut.upstream,
            &shared.bytes_up,
        );
        let down = pipe(
            server_read,
            client_write,
            plan.down_rate,
            plan.latency,
            plan.cut.downstream,
            &shared.bytes_down,
        );
        drive(up, down, &mut kill).await
    };
    match ending {
        Ending::Clean => {
            disarm(&client);
            disarm(&server);
        }
        Ending::Cut => {
            shared.cuts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(cut = ?plan.cut, "poor link: connection cut");
        }
        Ending::Broken(error) => {
            tracing::debug!(%error, "poor link: connection broken");
        }
    }
    // Dropping the streams closes both sockets: a reset unless the connection ended cleanly.
}

/// Runs both directions of a connection until both end cleanly, one is cut or breaks, or the
/// link cuts every connection.
async fn drive(
    up: impl Future<Output = io::Result<PipeEnd>>,
    down: impl Future<Output = io::Result<PipeEnd>>,
    kill: &mut watch::Receiver<u64>,
) -> Ending {
    tokio::pin!(up, down);
    let mut up_done = false;
    let mut down_done = false;
    // Each iteration completes one direction or returns: at most three iterations.
    while !(up_done && down_done) {
        tokio::select! {
            ended = &mut up, if !up_done => match ended {
                Ok(PipeEnd::Fin) => up_done = true,
                Ok(PipeEnd::Cut) => return Ending::Cut,
                Err(error) => return Ending::Broken(error),
            },
            ended = &mut down, if !down_done => match ended {
                Ok(PipeEnd::Fin) => down_done = true,
                Ok(PipeEnd::Cut) => return Ending::Cut,
                Err(error) => return Ending::Broken(error),
            },
            // A change, or the link itself going away: either way, cut.
            _ = kill.changed() => return Ending::Cut,
        }
    }
    Ending::Clean
}

/// How one direction ended.
#[derive(Debug)]
enum PipeEnd {
    /// The sender closed its side and the FIN was passed on.
    Fin,
    /// The cut point was reached.
    Cut,
}

/// What travels through a direction's delay line, each stamped with its arrival instant.
enum Packet {
    /// Bytes to write; `cut` marks the last bytes before the cut point.
    Data {
        bytes: Vec<u8>,
        at: Instant,
        cut: bool,
    },
    /// The sender closed its side.
    Fin { at: Instant },
    /// The sender's side broke.
    Reset { at: Instant, error: io::Error },
}

/// One direction of a connection: a paced reader feeding a delay line drained by a writer.
async fn pipe<R, W>(
    src: R,
    dst: W,
    rate: u64,
    latency: Duration,
    budget: Option<u64>,
    delivered: &AtomicU64,
) -> io::Result<PipeEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (line_in, line_out) = mpsc::channel(DELAY_LINE_CHUNKS);
    let reader = pace(src, line_in, rate, latency, budget);
    let writer = deliver(dst, line_out, delivered);
    tokio::pin!(reader, writer);
    // The writer decides how the direction ends; once the reader has handed over its last
    // packet, only the writer is left.
    tokio::select! {
        ended = &mut writer => ended,
        () = &mut reader => writer.await,
    }
}

/// Time to serialise `bytes` at `rate` bytes per second (`0` = instantly).
fn transmit_time(bytes: usize, rate: u64) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    let nanos = (bytes as u128 * 1_000_000_000).div_ceil(u128::from(rate));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Sleeps until `at`, without touching the timer when `at` has passed (a timer entry costs up
/// to a timer tick, which would cap an unshaped link at one chunk per millisecond).
async fn wait_until(at: Instant) {
    if at > Instant::now() {
        sleep_until(at).await;
    }
}

/// Reads the sender's bytes chunk by chunk at `rate` and puts them in the delay line, stamped
/// with their arrival time. Stops after the end of stream, an error, or the cut point.
async fn pace<R>(
    mut src: R,
    line: mpsc::Sender<Packet>,
    rate: u64,
    latency: Duration,
    budget: Option<u64>,
) where
    R: AsyncRead + Unpin,
{
    let mut buf = vec![0; MAX_CHUNK];
    let mut carried: u64 = 0;
    // When the link finishes serialising what it has been given so far.
    let mut free_at = Instant::now();
    // Bounded by the sender: each iteration consumes at least one byte, or ends the loop.
    loop {
        let read = src.read(&mut buf).await;
        // The chunk goes on the wire when the link is free. If the link has been idle, that is
        // now; if the pacer merely woke up a little late (timer ticks are 1 ms, a chunk at
        // 2 MB/s takes 0.7 ms), it keeps to its schedule so the lateness does not add up.
        let now = Instant::now();
        let start = if now.saturating_duration_since(free_at) <= PACING_SLACK {
            free_at
        } else {
            now
        };
        let packet = match read {
            Ok(0) => Packet::Fin {
                at: start + latency,
            },
            Err(error) => Packet::Reset {
                at: start + latency,
                error,
            },
            Ok(read) => {
                let (take, cut) = match budget {
                    Some(budget) if carried + read as u64 > budget => {
                        // Only the bytes before the cut point get through.
                        let left = usize::try_from(budget - carried).unwrap_or(read);
                        (left.min(read), true)
                    }
                    _ => (read, false),
                };
                carried += take as u64;
                free_at = start + transmit_time(take, rate);
                Packet::Data {
                    bytes: buf[..take].to_vec(),
                    at: free_at + latency,
                    cut,
                }
            }
        };
        let last = !matches!(packet, Packet::Data { cut: false, .. });
        if line.send(packet).await.is_err() || last {
            return;
        }
        // Back-pressure: the next chunk is not taken before this one is on the wire.
        wait_until(free_at).await;
    }
}

/// Writes what comes out of the delay line at its arrival time.
async fn deliver<W>(
    mut dst: W,
    mut line: mpsc::Receiver<Packet>,
    delivered: &AtomicU64,
) -> io::Result<PipeEnd>
where
    W: AsyncWrite + Unpin,
{
    // Bounded by the reader, which stops after a Fin, a Reset or a cut.
    while let Some(packet) = line.recv().await {
        match packet {
            Packet::Data { bytes, at, cut } => {
                wait_until(at).await;
                dst.write_all(&bytes).await?;
                delivered.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                if cut {
                    return Ok(PipeEnd::Cut);
                }
            }
            Packet::Fin { at } => {
                wait_until(at).await;
                dst.shutdown().await?;
                return Ok(PipeEnd::Fin);
            }
            Packet::Reset { at, error } => {
                wait_until(at).await;
                return Err(error);
            }
        }
    }
    // The reader went away without a last packet (cannot happen); treat it as an end of stream.
    dst.shutdown().await?;
    Ok(PipeEnd::Fin)
}
