//! The server's accept loop: HTTP/1.1 over hyper with the limits a public endpoint needs, used by
//! `communesync serve`, the demo and the test harness instead of `axum::serve` (which has none).
//!
//! Contract, for every connection whatever its peer does:
//! - **Header timeout** ([`ServeConfig::header_timeout`], default 10 s): a request head must be
//!   complete within this long of the connection's opening (the first request) or of its first
//!   byte (later ones); otherwise the connection is closed without an answer. A socket that never
//!   sends anything is closed after it.
//! - A request head over 16 KiB is refused (431), so a connection holds at most that much of
//!   its peer's unread bytes.
//! - **Idle timeout** ([`ServeConfig::idle_timeout`], default 60 s): a kept-alive connection with
//!   no request in progress and no byte moving either way for this long is closed; so is one whose
//!   client stops reading a response for this long.
//! - While a handler runs the connection is never cut from here: the request body has its own
//!   bounds (idle timeout and minimum rate, see `http::ServerConfig`) and the handlers theirs.
//! - **Connection limit** ([`ServeConfig::max_connections`], default 4,096, lowered to fit the
//!   open-file limit): at the limit the loop stops accepting, and new connections wait in the
//!   kernel's listen queue ([`bind`] asks for [`LISTEN_BACKLOG`] places, first come first
//!   served) until one closes, which the timeouts above guarantee within `header_timeout` for a
//!   connection that sends nothing. They are not refused; past the queue the kernel drops their
//!   handshake and the client's TCP retries it. Accept errors (`EMFILE` included) are logged and
//!   retried after a short pause: they never end the loop.
//! - At start the process's soft open-file limit is raised to its hard limit, and the connection
//!   limit is kept at most three quarters of it: the rest is for the database (SQLite readers,
//!   PostgreSQL pool), logs and the listener.
//! - **Graceful shutdown**: when `shutdown` resolves the listener closes, idle connections close at
//!   once, busy ones finish their current request; whatever is still open after
//!   [`ServeConfig::shutdown_grace`] is dropped. Dropping the [`serve`] future drops every
//!   connection too.
//! - Handlers see `ConnectInfo<SocketAddr>` (the peer) as with
//!   `into_make_service_with_connect_info`.
//! - **HTTPS** ([`ServeConfig::tls`], see [`crate::tls`]): the TLS handshake must finish within
//!   the header timeout of the connection's opening (else the connection is closed); the first
//!   request head then has its own header timeout, and every limit above applies to the
//!   decrypted stream as to a plain one.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

/// Lets the process's memory allocator keep at most two arenas (glibc keeps one per thread up
/// to eight per core by default). The server decodes requests on a pool of blocking threads:
/// with an arena per thread, memory a request freed on one thread is not reused by the next
/// request on another, and the resident size grows to one peak request per thread (measured:
/// 10 concurrent pushes of 20,000 entries, +165 MB; with two arenas, see `docs/RELIABILITY.md`).
/// Call it first in `main`, before any thread starts. Does nothing outside glibc.
pub fn limit_allocator_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes an allocator setting; called before other threads exist,
        // it races with no allocation. A refusal (return 0) leaves the default, which is safe.
        let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
}

/// Limits of the accept loop; see the module documentation for what each guarantees.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Time allowed for a whole request head (from the connection's opening for the first
    /// request, from the first byte for later ones). Default 10 s: a head is a few hundred bytes,
    /// under a second even on 2G.
    pub header_timeout: Duration,
    /// A kept-alive connection with nothing in progress and no byte moving for this long is
    /// closed. Default 60 s: long enough for a tablet's next sync round, short enough that idle
    /// sockets do not pile up.
    pub idle_timeout: Duration,
    /// Connections served at once. Default 4,096; lowered at start to three quarters of the
    /// open-file limit when that is smaller.
    pub max_connections: usize,
    /// On shutdown, how long busy connections may take to finish. Default 30 s.
    pub shutdown_grace: Duration,
    /// Serve HTTPS with this certificate (reloadable); `None` serves plain HTTP.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// The open-file limit after [`raise_open_file_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    /// Soft limit before.
    pub before: u64,
    /// Soft limit now (the hard limit, unless raising failed).
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Most a connection buffers of what it reads (hyper's default is about 400 KiB): a request head
/// larger than this is refused (431). A tablet's head is under a kilobyte; 4,096 connections
/// each filling this hold 64 MiB. Bodies stream through it in reads of this size.
const READ_BUFFER_LIMIT: usize = 16 * 1024;

/// Places in the kernel's queue of connections not yet accepted, as [`bind`] asks for them
/// (Linux caps it at `net.core.somaxconn`, 4,096 by default). The standard library's and tokio's
/// 128 would make connections past the limit lose their handshake after a few hundred.
pub const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `addr` with a [`LISTEN_BACKLOG`]-deep accept queue.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std and tokio do: a restarted server can bind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises this process's soft open-file limit (`RLIMIT_NOFILE`) to its hard limit, so that the
/// usual soft limit of 1,024 does not cap the server's connections. Idempotent.
pub fn raise_open_file_limit() -> io::Result<OpenFileLimit> {
    let (before, hard) = rlimit::Resource::NOFILE.get()?;
    let soft = rlimit::increase_nofile_limit(hard)?;
    Ok(OpenFileLimit { before, soft, hard })
}

/// The connection limit for a soft open-file limit of `open_files`: `configured`, or three
/// quarters of `open_files` when that is smaller (at least 1).
pub fn connection_limit(configured: usize, open_files: u64) -> usize {
    let usable = usize::try_from(open_files / 4 * 3).unwrap_or(usize::MAX);
    configured.min(usable).max(1)
}

/// Serves `router` on `listener` until `shutdown` resolves, under the limits of `config`.
/// Returns once every connection has closed or the shutdown grace has passed. Fails only if the
/// open-file limit cannot be read.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let limit = match raise_open_file_limit() {
        Ok(files) => {
            if files.soft > files.before {
                tracing::debug!(
                    from = files.before,
                    to = files.soft,
                    "open-file limit raised"
                );
            }
            let limit = connection_limit(config.max_connections, files.soft);
            if limit < config.max_connections {
                tracing::warn!(
                    open_files = files.soft,
                    connections = limit,
                    "connection limit lowered to fit the open-file limit (raise `ulimit -Hn`)"
                );
            }
            limit
        }
        Err(err) => {
            tracing::warn!(%err, "open-file limit unknown; connection limit as configured");
            config.max_connections.max(1)
        }
    };
    let permits = Arc::new(Semaphore::new(limit));
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        // A slot first, then the connection: at the limit, new ones wait in the listen queue.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    if !is_per_connection(&err) {
                        // Out of file descriptors or memory: pause rather than spin; the
                        // timeouts free descriptors meanwhile.
                        tracing::warn!(%err, "accept failed");
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                    continue;
                }
            },
        };
        // Responses are written whole; Nagle would only delay their last segment.
        let _ = stream.set_nodelay(true);
        connections.spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            config.clone(),
            closing_rx.clone(),
            permit,
        ));
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "connections still busy after the shutdown grace: dropped"
        );
    }
    Ok(())
}

/// Accept errors that concern one connection only (it was reset before being accepted).
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    config: ServeConfig,
    mut closing: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let opened = Instant::now();
    // Nothing of hyper's exists until the peer sends something (its buffers take 16 KiB per
    // connection at once): a socket that never does costs only this task (about 1.5 KB) until
    // the header timeout closes it.
    let mut first = [0u8; 1];
    tokio::select! {
        // A peek, not `readable()`: readiness can be reported before any byte is there.
        peeked = stream.peek(&mut first) => {
            if !matches!(peeked, Ok(n) if n > 0) {
                return;
            }
        }
        () = tokio::time::sleep_until(opened + config.header_timeout) => {
            tracing::debug!(%peer, "connection closed: nothing sent within the header timeout");
            return;
        }
        _ = closing.wait_for(|closing| *closing) => return,
    }
    let Some(tls) = config.tls.clone() else {
        Box::pin(serve_http(stream, peer, router, config, closing, opened)).await;
        return;
    };
    let handshake = tls.acceptor().accept(stream);
    let stream = tokio::select! {
        accepted = handshake => match accepted {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(%peer, %err, "TLS handshake failed");
                return;
            }
        },
        () = tokio::time::sleep_until(opened + config.header_timeout) => {
            tracing::debug!(%peer, "connection closed: TLS handshake not done within the header timeout");
            return;
        }
        _ = closing.wait_for(|closing| *closing) => return,
    };
    Box::pin(serve_http(
        stream,
        peer,
        router,
        config,
        closing,
        Instant::now(),
    ))
    .await;
}

/// HTTP on a connection whose peer has sent something (or closed).
async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    config: ServeConfig,
    mut closing: watch::Receiver<bool>,
    opened: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(opened));
    let io = TokioIo::new(WatchedIo {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let handler = HandlerGuard::start(activity.clone());
            let router = router.clone();
            async move {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                let response = router.oneshot(request).await;
                let responding = handler.responding();
                response.map(|r| {
                    r.map(|body| {
                        Body::new(GuardedBody {
                            body,
                            _responding: responding,
                        })
                    })
                })
            }
        })
    };
    let mut conn = pin!(
        hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .max_buf_size(READ_BUFFER_LIMIT)
            .serve_connection(io, service)
    );
    let mut shutting_down = *closing.borrow();
    if shutting_down {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        let deadline = activity.deadline(&config);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, %err, "connection ended with an error");
                }
                return;
            }
            () = sleep_until(deadline) => {
                if let Some(reason) = activity.expired(&config) {
                    tracing::debug!(%peer, reason, "connection closed");
                    return;
                }
            }
            () = activity.changed.notified() => {}
            changed = closing.changed(), if !shutting_down => {
                shutting_down = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

// ----- what a connection is doing ----------------------------------------------------------------

/// A connection's state as its timeouts see it, shared by the socket wrapper, the service and
/// the connection's task.
struct Activity {
    state: Mutex<ActivityState>,
    /// Woken when the state changes in a way that may bring a deadline forward.
    changed: Notify,
}

struct ActivityState {
    /// Handlers running (an HTTP/1.1 connection has at most one, pipelining aside).
    handlers: usize,
    /// Responses whose body has not yet been handed over entirely.
    responses: usize,
    /// Nothing in progress, and a request head has begun (or the connection is new) since.
    awaiting_head: bool,
    /// When the current phase began: the connection opened, a head began, the last response
    /// ended.
    since: Instant,
    /// Last byte read or written.
    last_io: Instant,
}

impl Activity {
    /// A connection opened at `now`, waiting for its first request head.
    fn new(now: Instant) -> Self {
        Activity {
            state: Mutex::new(ActivityState {
                handlers: 0,
                responses: 0,
                awaiting_head: true,
                since: now,
                last_io: now,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes moved; reading some on an idle connection begins a request head.
    fn io(&self, read: bool) {
        let now = Instant::now();
        let mut state = self.lock();
        state.last_io = now;
        if read && state.handlers == 0 && state.responses == 0 && !state.awaiting_head {
            state.awaiting_head = true;
            state.since = now;
            drop(state);
            self.changed.notify_one();
        }
    }

    /// When the current phase runs out, unless something happens before (`None`: a handler
    /// runs, nothing to watch).
    fn deadline(&self, config: &ServeConfig) -> Option<Instant> {
        let state = self.lock();
        if state.handlers > 0 {
            None
        } else if state.responses > 0 {
            Some(state.last_io + config.idle_timeout)
        } else if state.awaiting_head {
            Some(state.since + config.header_timeout)
        } else {
            Some(state.since.max(state.last_io) + config.idle_timeout)
        }
    }

    /// Why the connection must close now, if it must.
    fn expired(&self, config: &ServeConfig) -> Option<&'static str> {
        let deadline = self.deadline(config)?;
        if Instant::now() < deadline {
            return None;
        }
        let state = self.lock();
        Some(if state.responses > 0 {
            "response not read within the idle timeout"
        } else if state.awaiting_head {
            "no complete request head within the header timeout"
        } else {
            "idle timeout"
        })
    }
}

/// A handler in progress: counted from hyper's call to its response.
struct HandlerGuard {
    activity: Arc<Activity>,
}

impl HandlerGuard {
    fn start(activity: Arc<Activity>) -> Self {
        {
            let mut state = activity.lock();
            state.handlers += 1;
            state.awaiting_head = false;
        }
        activity.changed.notify_one();
        HandlerGuard { activity }
    }

    /// The handler answered: from now on its response body is what is in progress.
    fn responding(self) -> ResponseGuard {
        self.activity.lock().responses += 1;
        ResponseGuard {
            activity: self.activity.clone(),
        }
        // `self` drops here: the handler count goes down after the response count went up.
    }
}

impl Drop for HandlerGuard {
    fn drop(&mut self) {
        finish(&self.activity, |state| {
            state.handlers = state.handlers.saturating_sub(1);
        });
    }
}

/// A response body not yet handed over entirely.
struct ResponseGuard {
    activity: Arc<Activity>,
}

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        finish(&self.activity, |state| {
            state.responses = state.responses.saturating_sub(1);
        });
    }
}

/// Applies `update`; when nothing is left in progress the connection becomes idle from now.
fn finish(activity: &Activity, update: impl FnOnce(&mut ActivityState)) {
    {
        let mut state = activity.lock();
        update(&mut state);
        if state.handlers == 0 && state.responses == 0 {
            state.awaiting_head = false;
            state.since = Instant::now();
        }
    }
    activity.changed.notify_one();
}

/// A response body that tells the connection's [`Activity`] when it is done (dropped).
struct GuardedBody {
    body: Body,
    _responding: ResponseGuard,
}

impl http_body::Body for GuardedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket (or the TLS stream over it), noting every byte that moves.
struct WatchedIo<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.io(true);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.io(false);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.io(false);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_leaves_a_quarter_of_the_open_files() {
        assert_eq!(connection_limit(4096, 1024), 768);
        assert_eq!(connection_limit(4096, 20_000), 4096);
        assert_eq!(connection_limit(4096, 0), 1);
        assert_eq!(connection_limit(10, u64::MAX), 10);
    }
}
