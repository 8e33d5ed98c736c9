//! End-to-end tests of the poor-link emulator over real loopback TCP.
//!
//! Timings are behaviour of the emulator on a shared machine, so the windows are loose; the
//! measured values are printed (`--nocapture`) to keep an eye on them.

// Test helpers outside `#[test]` functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use communesync_server::link::{Cut, CutPolicy, LinkProfile, MAX_CHUNK, PoorLink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// No test may hang: every scenario runs under this limit.
const LIMIT: Duration = Duration::from_secs(10);

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Echoes every byte back until the client closes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    addr
}

/// A tiny request/response server: the client sends a decimal length and `\n`, the server
/// answers with that many pattern bytes and closes.
async fn http_ish_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while stream.read_exact(&mut byte).await.is_ok() && byte[0] != b'\n' {
                    request.push(byte[0]);
                }
                let Ok(len) = String::from_utf8_lossy(&request).trim().parse::<usize>() else {
                    return;
                };
                let _ = stream.write_all(&pattern(len)).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// Reads everything the client uploads and reports how many bytes arrived (and whether the
/// stream ended with an error) once the connection ends.
async fn sink_server() -> (SocketAddr, mpsc::UnboundedReceiver<(usize, bool)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (report, reports) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let report = report.clone();
            tokio::spawn(async move {
                let (received, error) = read_to_end(&mut stream).await;
                let _ = report.send((received.len(), error.is_some()));
            });
        }
    });
    (addr, reports)
}

/// Reads until end of stream or error; returns what arrived and the error, if any.
async fn read_to_end(stream: &mut TcpStream) -> (Vec<u8>, Option<io::Error>) {
    let mut received = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return (received, None),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(error) => return (received, Some(error)),
        }
    }
}

/// One request/response through the link: asks for `len` bytes, returns what arrived.
async fn fetch(addr: SocketAddr, len: usize) -> (Vec<u8>, Option<io::Error>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("{len}\n").as_bytes())
        .await
        .unwrap();
    read_to_end(&mut stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loopback_profile_passes_megabytes_through_unchanged() {
    let server = echo_server().await;
    let link = PoorLink::start(server, LinkProfile::loopback())
        .await
        .unwrap();
    let data = pattern(4 * 1024 * 1024 + 17);
    let started = Instant::now();
    let stream = TcpStream::connect(link.addr()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let upload = {
        let data = data.clone();
        tokio::spawn(async move {
            write.write_all(&data).await.unwrap();
            write.shutdown().await.unwrap();
        })
    };
    let mut echoed = Vec::new();
    timeout(LIMIT, read.read_to_end(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    upload.await.unwrap();
    println!(
        "loopback: {} bytes echoed in {:?}",
        echoed.len(),
        started.elapsed()
    );
    assert!(echoed == data, "echoed bytes differ");
    assert_eq!(link.bytes_up(), data.len() as u64);
    assert_eq!(link.bytes_down(), data.len() as u64);
    assert_eq!(link.connections(), 1);
    assert_eq!(link.cuts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edge_2g_rate_shapes_both_directions() {
    // 12 500 bytes/s each way, 200 ms one-way: 25 000 bytes down take ≈ 2.2 s, and 12 500
    // bytes up take ≈ 1.2 s, on two connections at the same time.
    let server = http_ish_server().await;
    let (sink, mut sink_reports) = sink_server().await;
    let down_link = PoorLink::start(server, LinkProfile::edge_2g())
        .await
        .unwrap();
    let up_link = PoorLink::start(sink, LinkProfile::edge_2g()).await.unwrap();

    let download = tokio::spawn({
        let addr = down_link.addr();
        async move {
            let started = Instant::now();
            let (received, error) = fetch(addr, 25_000).await;
            (started.elapsed(), received, error)
        }
    });
    let upload = tokio::spawn({
        let addr = up_link.addr();
        async move {
            let started = Instant::now();
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&pattern(12_500)).await.unwrap();
            stream.shutdown().await.unwrap();
            // The server closes once it has seen the FIN, which travels behind the data.
            let (_, error) = read_to_end(&mut stream).await;
            assert!(error.is_none(), "{error:?}");
            started.elapsed()
        }
    });
    let (down_elapsed, received, error) = timeout(LIMIT, download).await.unwrap().unwrap();
    let up_elapsed = timeout(LIMIT, upload).await.unwrap().unwrap();
    let (uploaded, upload_error) = sink_reports.recv().await.unwrap();
    println!("edge 2G: 25 000 bytes down in {down_elapsed:?}, 12 500 bytes up in {up_elapsed:?}");

    assert!(error.is_none(), "{error:?}");
    assert_eq!(received, pattern(25_000));
    assert_eq!((uploaded, upload_error), (12_500, false));
    assert!(
        (1.6..4.0).contains(&down_elapsed.as_secs_f64()),
        "25 KB down took {down_elapsed:?}"
    );
    // 12 500 bytes up (1 s) + FIN up (200 ms) + FIN down (200 ms): ≈ 1.4 s.
    assert!(
        (1.0..3.0).contains(&up_elapsed.as_secs_f64()),
        "12.5 KB up took {up_elapsed:?}"
    );
    assert_eq!(down_link.bytes_down(), 25_000);
    assert_eq!(up_link.bytes_up(), 12_500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fast_rates_are_paced_accurately_despite_timer_ticks() {
    // 1 MB/s is under a millisecond per chunk, below the timer's resolution: the pacer must
    // keep to its schedule rather than lose a tick per chunk.
    let server = http_ish_server().await;
    let link = PoorLink::start(
        server,
        LinkProfile::loopback().with_rates(1_000_000, 1_000_000),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let (received, error) = timeout(LIMIT, fetch(link.addr(), 1_000_000)).await.unwrap();
    let elapsed = started.elapsed();
    println!("1 MB/s: 1 MB down in {elapsed:?}");
    assert!(error.is_none(), "{error:?}");
    assert_eq!(received.len(), 1_000_000);
    assert!(
        (0.9..1.5).contains(&elapsed.as_secs_f64()),
        "1 MB at 1 MB/s took {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latency_adds_a_round_trip_without_throttling_throughput() {
    let server = echo_server().await;
    let latency = Duration::from_millis(150);
    let link = PoorLink::start(server, LinkProfile::loopback().with_latency(latency))
        .await
        .unwrap();
    let mut stream = TcpStream::connect(link.addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();

    // A small request/response costs one round trip (2 × 150 ms) each.
    let mut round_trips = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        stream.write_all(b"ping").await.unwrap();
        let mut pong = [0u8; 4];
        timeout(LIMIT, stream.read_exact(&mut pong))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&pong, b"ping");
        round_trips.push(started.elapsed());
    }
    println!("latency 150 ms one-way: round trips {round_trips:?}");
    for rtt in &round_trips {
        assert!(
            (0.28..0.6).contains(&rtt.as_secs_f64()),
            "round trip took {rtt:?}"
        );
    }

    // The delay line is a pipeline: 1 MB (≈ 700 chunks) costs about one round trip, not one
    // latency per chunk (which would be minutes).
    let data = pattern(1024 * 1024);
    let started = Instant::now();
    let (mut read, mut write) = stream.into_split();
    let upload = {
        let data = data.clone();
        tokio::spawn(async move {
            write.write_all(&data).await.unwrap();
            write.shutdown().await.unwrap();
        })
    };
    let mut echoed = Vec::new();
    timeout(LIMIT, read.read_to_end(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    upload.await.unwrap();
    let elapsed = started.elapsed();
    println!("latency 150 ms one-way: 1 MB echoed in {elapsed:?}");
    assert!(echoed == data);
    assert!(elapsed < Duration::from_secs(3), "1 MB took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_after_downstream_bytes_delivers_that_many_then_resets() {
    let server = http_ish_server().await;
    // A fast but shaped link (2 MB/s): the client keeps up, so the cut offset is exact.
    let fast = LinkProfile::loopback().with_rates(2_000_000, 0);
    let link = PoorLink::start(server, fast.clone()).await.unwrap();
    let body = 100_000;
    let offsets = [
        0,
        1,
        MAX_CHUNK - 1,
        MAX_CHUNK,
        MAX_CHUNK + 1,
        30_000,
        body - 1,
    ];
    let mut cuts = 0;
    for &n in &offsets {
        link.set_profile(fast.clone().with_cut(CutPolicy::AfterBytes {
            upstream: None,
            downstream: Some(n as u64),
        }));
        let (received, error) = timeout(LIMIT, fetch(link.addr(), body)).await.unwrap();
        println!(
            "cut after {n} bytes down: received {}, then {error:?}",
            received.len()
        );
        assert!(
            received.len() <= n && received.len() + MAX_CHUNK >= n,
            "cut after {n}: received {}",
            received.len()
        );
        // What arrived is the true beginning of the body, then the connection broke.
        assert_eq!(received, pattern(body)[..received.len()]);
        assert!(error.is_some(), "cut after {n}: clean end of stream");
        cuts += 1;
        assert_eq!(link.cuts(), cuts);
    }
    // The body's length itself is not a cut point: the stream ends first.
    link.set_profile(fast.clone().with_cut(CutPolicy::AfterBytes {
        upstream: None,
        downstream: Some(body as u64),
    }));
    let (received, error) = timeout(LIMIT, fetch(link.addr(), body)).await.unwrap();
    assert!(error.is_none(), "{error:?}");
    assert_eq!(received.len(), body);
    assert_eq!(link.cuts(), cuts);

    // Unshaped, the proxy may run ahead of the client and lose what is queued: at most N.
    let n = 80_000;
    link.set_profile(LinkProfile::loopback().with_cut(CutPolicy::AfterBytes {
        upstream: None,
        downstream: Some(n as u64),
    }));
    let (received, error) = timeout(LIMIT, fetch(link.addr(), 4 * n)).await.unwrap();
    println!(
        "unshaped cut after {n} bytes down: received {}, then {error:?}",
        received.len()
    );
    assert!(received.len() <= n);
    assert_eq!(received, pattern(4 * n)[..received.len()]);
    assert!(error.is_some());
    assert_eq!(link.cuts(), cuts + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_after_upstream_bytes_stops_the_upload() {
    let (sink, mut reports) = sink_server().await;
    let cut = 20_000;
    let link = PoorLink::start(
        sink,
        LinkProfile::loopback().with_cut(CutPolicy::AfterBytes {
            upstream: Some(cut as u64),
            downstream: None,
        }),
    )
    .await
    .unwrap();
    let mut stream = TcpStream::connect(link.addr()).await.unwrap();
    // The upload itself may fail once the reset comes back; either way the client then sees
    // the connection reset or closed.
    let _ = stream.write_all(&pattern(200_000)).await;
    let (_, client_error) = timeout(LIMIT, read_to_end(&mut stream)).await.unwrap();
    let (uploaded, server_error) = timeout(LIMIT, reports.recv()).await.unwrap().unwrap();
    println!(
        "cut after {cut} bytes up: server received {uploaded} (error: {server_error}), \
         client: {client_error:?}"
    );
    assert!(uploaded <= cut, "server received {uploaded}");
    assert!(uploaded + MAX_CHUNK >= cut, "server received {uploaded}");
    assert!(server_error, "the server must see a reset, not a clean end");
    assert_eq!(link.cuts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_next_cuts_one_connection_per_attempt_then_lets_the_sync_through() {
    // The pattern end-to-end tests use: cut a transfer at many offsets, one per attempt, on a
    // 2G-like link, then let it complete.
    let server = http_ish_server().await;
    let link = PoorLink::start(
        server,
        LinkProfile::loopback()
            .with_rates(200_000, 200_000)
            .with_latency(Duration::from_millis(20)),
    )
    .await
    .unwrap();
    let body = 12_000;
    let started = Instant::now();
    for n in (0..body).step_by(997) {
        link.cut_next(Cut::downstream(n as u64));
        assert_eq!(link.pending_cuts(), 1);
        let (received, error) = timeout(LIMIT, fetch(link.addr(), body)).await.unwrap();
        assert!(received.len() < body, "attempt cut at {n} completed");
        assert!(
            received.len() <= n,
            "cut at {n}: received {}",
            received.len()
        );
        assert_eq!(received, pattern(body)[..received.len()]);
        assert_eq!(link.pending_cuts(), 0);
        let _ = error;
    }
    let attempts = link.cuts();
    assert_eq!(attempts, (0..body).step_by(997).count() as u64);
    let (received, error) = timeout(LIMIT, fetch(link.addr(), body)).await.unwrap();
    assert!(error.is_none(), "{error:?}");
    assert_eq!(received, pattern(body));
    // And the link stays healthy afterwards.
    let (received, _) = timeout(LIMIT, fetch(link.addr(), body)).await.unwrap();
    assert_eq!(received.len(), body);
    assert_eq!(link.cuts(), attempts);
    println!(
        "cut_next: {attempts} cut attempts + 2 complete ones in {:?}",
        started.elapsed()
    );

    // An upstream one-shot cut on a request that is longer than the cut point.
    link.cut_next(Cut::upstream(3));
    let (received, _) = timeout(LIMIT, fetch(link.addr(), 500)).await.unwrap();
    assert!(received.is_empty());
    assert_eq!(link.cuts(), attempts + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedule_cuts_the_listed_connections_then_lets_the_rest_through() {
    let server = http_ish_server().await;
    let link = PoorLink::start(
        server,
        LinkProfile::loopback().with_cut(CutPolicy::Schedule(vec![
            Cut::downstream(100),
            Cut::NONE,
            Cut::downstream(2_000),
        ])),
    )
    .await
    .unwrap();
    let mut lengths = Vec::new();
    for _ in 0..5 {
        let (received, _) = timeout(LIMIT, fetch(link.addr(), 5_000)).await.unwrap();
        lengths.push(received.len());
    }
    println!("schedule: received {lengths:?}");
    assert!(lengths[0] <= 100);
    assert_eq!(lengths[1], 5_000);
    assert!(lengths[2] <= 2_000 && lengths[2] + MAX_CHUNK >= 2_000);
    assert_eq!(&lengths[3..], [5_000, 5_000]);
    assert_eq!(link.cuts(), 2);
    assert_eq!(link.connections(), 5);

    // Setting the profile again restarts the schedule.
    link.set_profile(link.profile());
    let (received, _) = timeout(LIMIT, fetch(link.addr(), 5_000)).await.unwrap();
    assert!(received.len() <= 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_down_refuses_connections_and_cuts_open_ones_until_back_up() {
    let server = echo_server().await;
    let link = PoorLink::start(server, LinkProfile::loopback())
        .await
        .unwrap();

    // An open connection, working.
    let mut open = TcpStream::connect(link.addr()).await.unwrap();
    open.write_all(b"hello").await.unwrap();
    let mut hello = [0u8; 5];
    timeout(LIMIT, open.read_exact(&mut hello))
        .await
        .unwrap()
        .unwrap();

    link.set_down(true);
    assert!(link.is_down());
    // The open connection dies.
    let (received, error) = timeout(LIMIT, read_to_end(&mut open)).await.unwrap();
    assert!(received.is_empty());
    println!("link down: open connection ended with {error:?}");

    // New ones are closed before any byte gets through.
    for _ in 0..3 {
        let started = Instant::now();
        match TcpStream::connect(link.addr()).await {
            Err(error) => println!("link down: connect failed: {error}"),
            Ok(mut stream) => {
                let _ = stream.write_all(b"anyone?").await;
                let (received, error) = timeout(LIMIT, read_to_end(&mut stream)).await.unwrap();
                assert!(received.is_empty());
                println!(
                    "link down: connection ended after {:?} with {error:?}",
                    started.elapsed()
                );
            }
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(link.refused(), 3);
    assert_eq!(link.connections(), 1);
    assert_eq!(link.cuts(), 1);

    link.set_down(false);
    let mut stream = TcpStream::connect(link.addr()).await.unwrap();
    stream.write_all(b"back").await.unwrap();
    let mut back = [0u8; 4];
    timeout(LIMIT, stream.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"back");
    assert_eq!(link.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_active_and_drop_end_open_connections() {
    let server = echo_server().await;
    let link = PoorLink::start(server, LinkProfile::edge_2g())
        .await
        .unwrap();
    let mut first = TcpStream::connect(link.addr()).await.unwrap();
    let mut second = TcpStream::connect(link.addr()).await.unwrap();
    // Wait until both connections are established through the link.
    for stream in [&mut first, &mut second] {
        stream.write_all(b"x").await.unwrap();
        let mut x = [0u8; 1];
        timeout(LIMIT, stream.read_exact(&mut x))
            .await
            .unwrap()
            .unwrap();
    }
    // Data in flight when the cut comes is lost.
    first.write_all(&pattern(5_000)).await.unwrap();
    link.cut_active();
    let (received, error) = timeout(LIMIT, read_to_end(&mut first)).await.unwrap();
    println!(
        "cut_active: received {} in-flight bytes, then {error:?}",
        received.len()
    );
    assert!(received.len() < 5_000);
    let (received, _) = timeout(LIMIT, read_to_end(&mut second)).await.unwrap();
    assert!(received.is_empty());
    assert_eq!(link.cuts(), 2);

    // Dropping the link aborts its connections and closes its port.
    let mut third = TcpStream::connect(link.addr()).await.unwrap();
    third.write_all(b"x").await.unwrap();
    let mut x = [0u8; 1];
    timeout(LIMIT, third.read_exact(&mut x))
        .await
        .unwrap()
        .unwrap();
    let addr = link.addr();
    drop(link);
    let (received, error) = timeout(LIMIT, read_to_end(&mut third)).await.unwrap();
    println!("drop: open connection ended with {error:?}");
    assert!(received.is_empty());
    assert!(
        error.is_some(),
        "dropping the link must reset, not close cleanly"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn targets_off_this_machine_are_refused() {
    let error = PoorLink::start("192.0.2.1:80".parse().unwrap(), LinkProfile::loopback())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    // A server bound to all interfaces reports 0.0.0.0: that is this machine.
    let server = echo_server().await;
    let all: SocketAddr = format!("0.0.0.0:{}", server.port()).parse().unwrap();
    let link = PoorLink::start(all, LinkProfile::loopback()).await.unwrap();
    assert_eq!(link.target(), server);
    let mut stream = TcpStream::connect(link.addr()).await.unwrap();
    stream.write_all(b"hi").await.unwrap();
    let mut hi = [0u8; 2];
    timeout(LIMIT, stream.read_exact(&mut hi))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&hi, b"hi");
}
