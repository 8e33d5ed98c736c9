//! Hostile clients at the connection level, over real sockets on 127.0.0.1: sockets that never
//! send a request, request heads and bodies trickled in, more connections than the server
//! serves, and a device that sends requests in a loop. The server closes what it must, answers
//! what it should, and an honest tablet still syncs. Timeouts are configured short so that each
//! test takes seconds; every wait is bounded.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use communesync_core::codec::DocCodec;
use communesync_core::protocol::{
    CONTENT_TYPE, PROTOCOL_VERSION, PullRequest, PushDoc, SyncRequest,
};
use communesync_core::record::RecordKind;
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, enroll};
use communesync_server::http::{DeviceRateLimit, MinBodyRate, ServerConfig};
use communesync_server::serve::ServeConfig;
use communesync_server::storage::{self, Scope};
use communesync_tests::process::{ServerProcess, communesync_binary};
use communesync_tests::{TestServer, now_ms, sqlite_url};

const COMMUNE: &str = "DB-MUONGPHANG";
const HEALTH: &str = "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n";

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// Waits up to `limit` for the server to close `stream` (end of stream or reset), discarding
/// whatever it sends; `Some(elapsed)` once closed, `None` if still open at `limit`.
fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        let left = limit.checked_sub(started.elapsed())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
}

/// Reads one response from `stream` (head and `Content-Length` body) within `limit`: its status,
/// or `None` if nothing complete came (closed, or still waiting at `limit`).
fn read_response(stream: &mut TcpStream, limit: Duration) -> Option<u16> {
    let started = Instant::now();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if response.len() >= end + 4 + length {
                return head.get(9..12).and_then(|code| code.parse().ok());
            }
        }
        let left = limit.checked_sub(started.elapsed())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
}

/// A sync request that pushes nothing and pulls the first page.
fn empty_sync_body() -> Vec<u8> {
    SyncRequest {
        protocol: PROTOCOL_VERSION,
        device_time: 0,
        push: Vec::new(),
        pull: Some(PullRequest {
            cursor: 0,
            max_bytes: 1 << 20,
        }),
        catalogue_version: 0,
        pending_docs: 0,
        extensions: Default::default(),
    }
    .encode(&mut DocCodec::new().unwrap())
    .unwrap()
}

/// A tablet enrolled on `server` with its own store; returns the store and its token.
async fn enrolled_tablet(
    server: &TestServer,
    code: &str,
    path: &std::path::Path,
) -> (DeviceStore, String) {
    let mut store = DeviceStore::open(StoreConfig::new(path)).unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    let transport = ReqwestTransport::new(&server.url()).unwrap();
    let token = enroll(&transport, code, store.device_id(), "net")
        .await
        .unwrap()
        .token;
    (store, token)
}

/// A sync request from `store` pushing one new application with a page of notes, as the tablet
/// would send it (over a kilobyte: sent slowly, it spans several windows).
fn push_sync_body(store: &mut DeviceStore) -> Vec<u8> {
    let mut sample = SampleData::new(5);
    let app = store
        .create_application("officer", sample.application(COMMUNE, None))
        .unwrap();
    store
        .update_application(app.id, "officer", |a| {
            for _ in 0..30 {
                a.notes.push_str(&sample.note_line());
                a.notes.push('\n');
            }
        })
        .unwrap();
    SyncRequest {
        protocol: PROTOCOL_VERSION,
        device_time: 0,
        push: vec![PushDoc {
            id: None,
            kind: RecordKind::Application,
            changes: store.changes_since(app.id, &[]).unwrap(),
        }],
        pull: None,
        catalogue_version: 0,
        pending_docs: 0,
        extensions: Default::default(),
    }
    .encode(&mut DocCodec::new().unwrap())
    .unwrap()
}

/// A socket that never sends a byte, and one that sends a request head a byte at a time, are
/// both closed once the header timeout has passed (and not before); a kept-alive connection is
/// allowed the longer idle timeout between requests, then closed too; a head over 16 KiB is
/// refused. Before `serve.rs` the server had neither timeout (all three stayed open for as long
/// as the clients liked) and buffered heads of up to ~400 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_and_slow_heads_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeConfig {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(3),
        ..ServeConfig::default()
    };
    let server = TestServer::start_serving(
        &sqlite_url(dir.path(), "idle.db"),
        ServerConfig::default(),
        serve,
        None,
    )
    .await
    .unwrap();
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        // Nothing sent at all.
        let mut silent = connect(addr);
        let opened = Instant::now();
        let closed = wait_closed(&mut silent, Duration::from_secs(6));
        assert!(closed.is_some(), "a silent socket was left open");
        assert!(
            opened.elapsed() >= Duration::from_millis(950),
            "closed early"
        );

        // A head trickled in a byte every 100 ms: bytes arriving do not extend the timeout.
        let mut trickle = connect(addr);
        let opened = Instant::now();
        let mut closed = false;
        for byte in HEALTH.as_bytes().iter().cycle().take(60) {
            if trickle.write_all(&[*byte]).is_err()
                || wait_closed(&mut trickle, Duration::from_millis(100)).is_some()
            {
                closed = true;
                break;
            }
        }
        assert!(closed, "a trickled head was still open after 6 s");
        let elapsed = opened.elapsed();
        assert!(
            elapsed >= Duration::from_millis(950) && elapsed < Duration::from_secs(3),
            "trickled head closed after {elapsed:?}"
        );

        // A kept-alive connection: served, then left idle. Still open past the header timeout
        // (the idle timeout applies between requests), closed once the idle timeout passed.
        let mut kept = connect(addr);
        kept.write_all(HEALTH.as_bytes()).unwrap();
        assert_eq!(read_response(&mut kept, Duration::from_secs(5)), Some(200));
        let served = Instant::now();
        assert_eq!(
            wait_closed(&mut kept, Duration::from_millis(1500)),
            None,
            "a kept-alive connection was closed at the header timeout"
        );
        assert!(
            wait_closed(&mut kept, Duration::from_secs(6)).is_some(),
            "an idle kept-alive connection was left open"
        );
        assert!(
            served.elapsed() >= Duration::from_millis(2950),
            "closed early"
        );

        // Heads up to 16 KiB are read; a larger one is refused, not buffered.
        for (junk, allowed) in [
            (8 * 1024, [Some(200), Some(200)]),
            (32 * 1024, [None, Some(431)]),
        ] {
            let mut stream = connect(addr);
            let head = format!(
                "GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n",
                "j".repeat(junk)
            );
            let _ = stream.write_all(head.as_bytes());
            let status = read_response(&mut stream, Duration::from_secs(5));
            assert!(
                allowed.contains(&status),
                "{junk} bytes of header: {status:?}"
            );
        }

        // The server still serves.
        let mut fresh = connect(addr);
        fresh.write_all(HEALTH.as_bytes()).unwrap();
        assert_eq!(read_response(&mut fresh, Duration::from_secs(5)), Some(200));
    })
    .await
    .unwrap();
}

/// The issue's case: a server started with the usual open-file limit of 1,024 (soft and hard),
/// 1,200 sockets held open without a credential or a request (re-opened as soon as the server
/// closes one), and an honest tablet that enrolls, then syncs new records. Before this change
/// the server accepted sockets until it ran out of file descriptors and never closed them, so the
/// tablet's connections were never accepted. Now the connection limit keeps descriptors for the
/// database, the header timeout (1 s here) turns the idle sockets over, and the tablet's
/// connections, queued behind them, are served within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_past_the_open_file_limit_do_not_stop_a_tablet_sync() {
    const IDLE: usize = 1200;
    // This process holds the 1,200 client sockets.
    communesync_server::serve::raise_open_file_limit().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path(), "fds.db");
    let code = {
        let storage = storage::open(&url).await.unwrap();
        storage.create_commune(COMMUNE, COMMUNE).await.unwrap();
        communesync_server::http::issue_enrollment_code(
            storage.as_ref(),
            &Scope::Commune(COMMUNE.into()),
            Duration::from_secs(3600),
            now_ms(),
        )
        .await
        .unwrap()
        .0
    };
    let binary = communesync_binary().unwrap();
    let mut server = ServerProcess::start_configured(
        &binary,
        &url,
        None,
        dir.path(),
        &["--header-timeout-secs", "1"],
        Some(1024),
    )
    .unwrap();
    let addr = server.addr;

    // The attacker: IDLE sockets, each re-opened when the server closes it, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let reopened = Arc::new(AtomicU64::new(0));
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
    let attacker = {
        let (stop, reopened) = (stop.clone(), reopened.clone());
        std::thread::spawn(move || {
            let open = |_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok();
            let mut sockets: Vec<Option<TcpStream>> = (0..IDLE).map(open).collect();
            let _ = opened_tx.send(sockets.iter().flatten().count());
            let deadline = Instant::now() + Duration::from_secs(90);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                for slot in &mut sockets {
                    let closed = match slot {
                        Some(socket) => {
                            socket.set_nonblocking(true).unwrap();
                            !matches!(
                                socket.read(&mut [0u8; 64]),
                                Err(e) if e.kind() == ErrorKind::WouldBlock
                            )
                        }
                        None => true,
                    };
                    if closed {
                        *slot = open(0);
                        reopened.fetch_add(1, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            sockets.iter().flatten().count()
        })
    };
    // The sockets are all open (past the server's limit) before the tablet comes.
    let opened = tokio::time::timeout(Duration::from_secs(60), opened_rx)
        .await
        .unwrap()
        .unwrap();
    assert!(opened > 1024, "only {opened} sockets opened");

    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(45), async {
        let transport = ReqwestTransport::new(&format!("http://{addr}")).unwrap();
        let mut store = DeviceStore::open(StoreConfig::new(dir.path().join("tablet.db"))).unwrap();
        store.import_catalogue(&SampleData::catalogue()).unwrap();
        let credentials = enroll(&transport, &code, store.device_id(), "honest")
            .await
            .unwrap();
        let mut sample = SampleData::new(9);
        for _ in 0..3 {
            store
                .create_application("officer", sample.application(COMMUNE, None))
                .unwrap();
        }
        let store = Arc::new(Mutex::new(store));
        let client =
            SyncClient::new(transport, store, credentials.token, SyncConfig::default()).unwrap();
        client.sync(&|_| {}).await
    })
    .await;
    // The server turns idle sockets over (without a header timeout it never closes one): let the
    // attacker see it (bounded) before it stops.
    let seen = Instant::now() + Duration::from_secs(10);
    while reopened.load(Ordering::SeqCst) == 0 && Instant::now() < seen {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let still_open = attacker.join().unwrap();
    let report = outcome
        .unwrap_or_else(|_| {
            panic!(
                "the tablet did not get through in 45 s; server log:\n{}",
                server.log_text()
            )
        })
        .unwrap();
    assert_eq!(report.pushed_docs, 3);
    assert_eq!(report.pending_docs, 0);
    assert!(server.is_running(), "{}", server.log_text());
    let reopened = reopened.load(Ordering::SeqCst);
    eprintln!(
        "tablet synced in {:?} while {IDLE} idle sockets were held ({reopened} re-opened after \
         the server closed them, {still_open} open at the end)",
        started.elapsed(),
    );
    assert!(reopened > 0, "the server closed none of the idle sockets");
}

/// A body sent a byte every 200 ms (never idle long enough for the 30 s idle timeout) is dropped
/// with 408 once a window passes without the floor's bytes, on the enrollment route (no
/// credential needed) and on sync; a body sent slowly but above the floor completes. Before
/// this change only the per-frame idle timeout existed, and the trickle went on for as long as
/// the client liked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_dropped_while_a_slow_honest_body_completes() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        min_body_rate: MinBodyRate {
            bytes: 200,
            window: Duration::from_secs(1),
        },
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(&sqlite_url(dir.path(), "trickle.db"), config, None)
        .await
        .unwrap();
    let codes = server.commune_with_codes(COMMUNE, 1).await.unwrap();
    let (mut store, token) = enrolled_tablet(&server, &codes[0], &dir.path().join("t.db")).await;
    let body = push_sync_body(&mut store);
    assert!(
        body.len() > 1000,
        "a body of several windows: {}",
        body.len()
    );
    let before = server.storage.stats().await.unwrap();
    let addr = server.addr;

    let sync_head = |length: usize| {
        format!(
            "POST /v1/sync HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: {CONTENT_TYPE}\r\nContent-Length: {length}\r\n\r\n"
        )
    };
    let trickles = [
        "POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n"
            .to_owned(),
        sync_head(body.len()),
    ];
    let (honest_head, honest_body) = (sync_head(body.len()), body.clone());
    tokio::task::spawn_blocking(move || {
        for head in trickles {
            let mut stream = connect(addr);
            stream.write_all(head.as_bytes()).unwrap();
            let started = Instant::now();
            let mut status = None;
            // At most 40 bytes, 8 s: far past the 1 s window, far short of the body.
            for i in 0..40 {
                if stream.write_all(&[b'{' + (i % 2)]).is_err() {
                    break;
                }
                status = read_response(&mut stream, Duration::from_millis(200));
                if status.is_some() {
                    break;
                }
            }
            let line = head.lines().next().unwrap().to_owned();
            assert_eq!(status, Some(408), "{line}: trickle not dropped");
            assert!(started.elapsed() < Duration::from_secs(4), "{line}");
        }

        // 400 bytes per second, twice the floor: slow, but honest.
        let mut stream = connect(addr);
        stream.write_all(honest_head.as_bytes()).unwrap();
        for chunk in honest_body.chunks(100) {
            stream.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(250));
        }
        assert_eq!(
            read_response(&mut stream, Duration::from_secs(10)),
            Some(200)
        );
    })
    .await
    .unwrap();
    let after = server.storage.stats().await.unwrap();
    assert_ne!(after, before, "the honest push was stored");
}

/// A body that stops arriving is answered 408 `body_timeout` once the per-frame idle timeout
/// passes (tower-http's layer, whose error used to reach the handlers as a 400 `malformed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_answered_408() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        body_idle_timeout: Duration::from_secs(1),
        min_body_rate: MinBodyRate {
            bytes: 1,
            window: Duration::from_secs(60),
        },
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(&sqlite_url(dir.path(), "stall.db"), config, None)
        .await
        .unwrap();
    let codes = server.commune_with_codes(COMMUNE, 1).await.unwrap();
    let (_, token) = enrolled_tablet(&server, &codes[0], &dir.path().join("t.db")).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let mut stream = connect(addr);
        let head = format!(
            "POST /v1/sync HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: {CONTENT_TYPE}\r\nContent-Length: 1000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&[0x28, 0xb5, 0x2f, 0xfd]).unwrap();
        assert_eq!(
            read_response(&mut stream, Duration::from_secs(5)),
            Some(408)
        );
    })
    .await
    .unwrap();
}

/// With a limit of 8 connections: 8 kept-alive connections hold every slot, and a 9th is not
/// served while they stay open (it waits in the listen queue), though the 8 are still served;
/// when one closes, the 9th is answered; when all close, the server serves as before. Before
/// this change there was no limit: the 9th was answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_holds_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeConfig {
        max_connections: 8,
        ..ServeConfig::default()
    };
    let server = TestServer::start_serving(
        &sqlite_url(dir.path(), "limit.db"),
        ServerConfig::default(),
        serve,
        None,
    )
    .await
    .unwrap();
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let mut held: Vec<TcpStream> = (0..8)
            .map(|_| {
                let mut stream = connect(addr);
                stream.write_all(HEALTH.as_bytes()).unwrap();
                assert_eq!(
                    read_response(&mut stream, Duration::from_secs(5)),
                    Some(200)
                );
                stream
            })
            .collect();

        let mut waiting = connect(addr);
        waiting.write_all(HEALTH.as_bytes()).unwrap();
        assert_eq!(
            read_response(&mut waiting, Duration::from_millis(1500)),
            None,
            "a connection past the limit was served"
        );
        // The connections holding the slots are still served meanwhile.
        for stream in &mut held[..3] {
            stream.write_all(HEALTH.as_bytes()).unwrap();
            assert_eq!(read_response(stream, Duration::from_secs(5)), Some(200));
        }
        drop(held.pop());
        assert_eq!(
            read_response(&mut waiting, Duration::from_secs(5)),
            Some(200),
            "the waiting connection was not served once a slot freed"
        );
        drop(held);
        drop(waiting);
        for _ in 0..20 {
            let mut stream = connect(addr);
            stream.write_all(HEALTH.as_bytes()).unwrap();
            assert_eq!(
                read_response(&mut stream, Duration::from_secs(5)),
                Some(200)
            );
        }
    })
    .await
    .unwrap();
}

/// A device over its rate (burst 5, one request per 2 s here) gets 429 `rate_limited` with a
/// `Retry-After`; another device of the same commune is served meanwhile; after waiting as told
/// the first is served again, and the sync client, which honours `Retry-After`, completes. Before
/// this change there was no limit: every request was served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_rate_gets_429_and_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        device_rate: DeviceRateLimit {
            burst: 5,
            per_second: 0.5,
        },
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(&sqlite_url(dir.path(), "rate.db"), config, None)
        .await
        .unwrap();
    let codes = server.commune_with_codes(COMMUNE, 2).await.unwrap();
    let (store, greedy) = enrolled_tablet(&server, &codes[0], &dir.path().join("g.db")).await;
    let (_, other) = enrolled_tablet(&server, &codes[1], &dir.path().join("o.db")).await;
    let http = reqwest::Client::new();
    let sync = |token: &str| {
        http.post(format!("{}/v1/sync", server.url()))
            .bearer_auth(token)
            .header("content-type", CONTENT_TYPE)
            .body(empty_sync_body())
            .send()
    };

    for i in 0..5 {
        assert_eq!(sync(&greedy).await.unwrap().status(), 200, "request {i}");
    }
    let refused = sync(&greedy).await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    assert!(refused.text().await.unwrap().contains("\"rate_limited\""));
    for i in 0..5 {
        assert_eq!(
            sync(&other).await.unwrap().status(),
            200,
            "other device {i}"
        );
    }
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(sync(&greedy).await.unwrap().status(), 200);

    // Out of tokens again: the sync client waits as told and gets through.
    assert_eq!(sync(&greedy).await.unwrap().status(), 429);
    let client = SyncClient::new(
        ReqwestTransport::new(&server.url()).unwrap(),
        Arc::new(Mutex::new(store)),
        greedy,
        SyncConfig::default(),
    )
    .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(20), client.sync(&|_| {}))
        .await
        .unwrap()
        .unwrap();
    assert!(report.retries >= 1, "{report:?}");
}
