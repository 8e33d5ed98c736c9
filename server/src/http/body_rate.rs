//! A minimum rate for request bodies: a body that trickles in is dropped with 408.
//!
//! Contract: once a handler starts reading a body, every [`MinBodyRate::bytes`] bytes (or the
//! rest of the body, when less is left) must arrive within [`MinBodyRate::window`] of the
//! previous such step; otherwise reading fails, and the request is answered 408 `body_timeout`
//! with `Connection: close`, whatever the handler made of the failed read. A body that stops for
//! the per-frame idle timeout (`ServerConfig::body_idle_timeout`, tower-http's layer, which
//! runs outside this one) gets the same answer. Time before the handler starts reading does not
//! count against the client. Nothing else about the request changes: bytes pass through as they
//! come.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::ApiError;

/// The slowest body the server waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinBodyRate {
    /// Bytes that must arrive per window (or the rest of the body, if less).
    pub bytes: u64,
    /// The window.
    pub window: Duration,
}

impl Default for MinBodyRate {
    /// 1 KiB per 15 s (68 bytes/s): a 2G link even at a tenth of its worst honest speed
    /// (about 1 KB/s) sends that in under two seconds.
    fn default() -> Self {
        MinBodyRate {
            bytes: 1024,
            window: Duration::from_secs(15),
        }
    }
}

const READING: u8 = 0;
const TOO_SLOW: u8 = 1;
const STALLED: u8 = 2;

/// Middleware: wraps the body, and answers 408 if reading it failed for slowness.
pub(super) async fn enforce(rate: MinBodyRate, request: Request, next: Next) -> Response {
    let verdict = Arc::new(AtomicU8::new(READING));
    // The layers in between do not pass size hints on; the header says how much is to come.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let request = request.map(|body| {
        Body::new(RateBody {
            inner: body,
            rate,
            declared,
            received: 0,
            window: None,
            window_bytes: 0,
            verdict: verdict.clone(),
        })
    });
    let response = next.run(request).await;
    let message = match verdict.load(Ordering::SeqCst) {
        TOO_SLOW => format!(
            "request body slower than {} bytes per {} s",
            rate.bytes,
            rate.window.as_secs()
        ),
        STALLED => "request body stopped arriving".to_owned(),
        _ => return response,
    };
    let mut response =
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", message).into_response();
    // The rest of the body may still be on its way: do not wait for it.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Why reading a body was stopped.
#[derive(Debug)]
struct TooSlow;

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body below the minimum rate")
    }
}

impl std::error::Error for TooSlow {}

struct RateBody {
    inner: Body,
    rate: MinBodyRate,
    /// The declared length, if any.
    declared: Option<u64>,
    /// Bytes received so far.
    received: u64,
    /// End of the current window; started at the first read.
    window: Option<Pin<Box<Sleep>>>,
    /// Bytes received in the current window.
    window_bytes: u64,
    verdict: Arc<AtomicU8>,
}

impl RateBody {
    /// Bytes the current window still needs to count as delivered.
    fn required(&self) -> u64 {
        let left_at_window_start = self.declared.map_or(u64::MAX, |declared| {
            declared.saturating_sub(self.received.saturating_sub(self.window_bytes))
        });
        self.rate.bytes.min(left_at_window_start)
    }

    fn too_slow(&mut self) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.verdict.store(TOO_SLOW, Ordering::SeqCst);
        Poll::Ready(Some(Err(axum::Error::new(TooSlow))))
    }
}

impl http_body::Body for RateBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.verdict.load(Ordering::SeqCst) != READING {
            return self.too_slow();
        }
        let rate = self.rate;
        let this = &mut *self;
        let window = this
            .window
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(rate.window)));
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.received = this.received.saturating_add(n);
                    this.window_bytes = this.window_bytes.saturating_add(n);
                }
                let now = Instant::now();
                if this.window_bytes >= this.required() {
                    this.window_bytes = 0;
                    if let Some(window) = this.window.as_mut() {
                        window.as_mut().reset(now + rate.window);
                    }
                } else if this.window.as_ref().is_some_and(|w| w.deadline() <= now) {
                    return this.too_slow();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                if is_idle_timeout(&err) {
                    this.verdict.store(STALLED, Ordering::SeqCst);
                }
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match window.as_mut().poll(cx) {
                Poll::Ready(()) => this.too_slow(),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a body error is tower-http's per-frame idle timeout (it comes boxed in axum errors).
fn is_idle_timeout(err: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    for _ in 0..8 {
        match cause {
            Some(e) if e.is::<tower_http::timeout::TimeoutError>() => return true,
            Some(e) => cause = e.source(),
            None => return false,
        }
    }
    false
}
