//! How sync bytes reach the server: one HTTP exchange at a time, behind the [`Transport`] trait.
//!
//! Contract: a transport sends one POST and returns the status and the whole body, or a
//! [`TransportError`] when no complete response arrived (no connection, timeout, a connection
//! cut mid-body). It never retries on its own account beyond what is known to be safe at the
//! connection level, never follows redirects, never decompresses (sync bodies are zstd already)
//! and never interprets statuses: the retry and error policy belongs to
//! [`SyncClient`](super::SyncClient). Byte counts include an estimate of the request and status
//! lines and headers, because on a metered 2G link those are money too (TLS and TCP/IP framing
//! are not counted).
//!
//! [`ReqwestTransport`] (feature `http`, on by default) is the production transport: reqwest with
//! rustls, HTTP/1.1 with keep-alive, trusting the servers that [`super::tls`] says (and resuming
//! TLS sessions across syncs). Tests and the poor-link emulator plug in their own.

use std::future::Future;
use std::time::Duration;

/// One POST to the server.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Path below the server's base URL, starting with `/` (`/v1/sync`).
    pub path: String,
    /// Device token sent as `Authorization: Bearer <token>`, if any.
    pub bearer: Option<String>,
    /// `Content-Type` of the body.
    pub content_type: String,
    /// The body.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for HttpRequest {
    // The bearer token is a credential: it never goes into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("path", &self.path)
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .field("content_type", &self.content_type)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A complete response, whatever its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// The whole body.
    pub body: Vec<u8>,
    /// The `Retry-After` header, when it was a number of seconds.
    pub retry_after: Option<Duration>,
    /// Bytes sent: request line, headers and body (estimated where the HTTP stack hides them).
    pub bytes_sent: u64,
    /// Bytes received: status line, headers and body.
    pub bytes_received: u64,
    /// The server store's epoch (`Communesync-Store-Epoch`), when the answer carries a
    /// well-formed one: see [`crate::protocol::STORE_EPOCH_HEADER`].
    pub store_epoch: Option<String>,
}

/// Why no complete response arrived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No connection could be made (no network, DNS, refused, TLS handshake).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The exchange did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The connection broke during the exchange (reset, cut mid-body, truncated response).
    #[error("connection interrupted: {0}")]
    Interrupted(String),
    /// The response body was larger than this transport accepts; retrying would not help.
    #[error("response larger than {limit} bytes")]
    ResponseTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The server's certificate is not trusted (wrong CA, expired, another host name, no
    /// pinned key): the message says which. Retrying would not help.
    #[error("the server is not trusted: {0}")]
    UntrustedServer(String),
    /// The transport is misconfigured (bad base URL, TLS set-up); retrying would not help.
    #[error("invalid transport configuration: {0}")]
    Invalid(String),
    /// Any other failure of the HTTP stack.
    #[error("transport error: {0}")]
    Other(String),
}

impl TransportError {
    /// Whether sending the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            TransportError::ResponseTooLarge { .. }
                | TransportError::Invalid(_)
                | TransportError::UntrustedServer(_)
        )
    }
}

/// Sends one HTTP exchange to the sync server.
///
/// Implementations must be cheap to call repeatedly (keep connections alive) and must return
/// only once the whole response body has arrived.
pub trait Transport: Send + Sync + 'static {
    /// POSTs `req` to the server and waits for the whole response.
    fn send(
        &self,
        req: HttpRequest,
    ) -> impl Future<Output = Result<HttpResponse, TransportError>> + Send;
}

/// Parses a `Retry-After` value given in seconds (the form the sync server uses). HTTP dates
/// are ignored: they depend on a clock that, on a tablet, is often wrong.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Bytes of an HTTP/1.1 request head: request line, the given headers and the blank line.
pub fn request_head_len<'a>(
    path: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> u64 {
    // "POST " + path + " HTTP/1.1\r\n"
    let line = 5 + path.len() + 11;
    let headers: usize = headers
        .into_iter()
        .map(|(name, value)| name.len() + 2 + value.len() + 2)
        .sum();
    u64::try_from(line + headers + 2).unwrap_or(u64::MAX)
}

/// Bytes of an HTTP/1.1 response head: status line, the given headers and the blank line.
pub fn response_head_len<'a>(
    reason: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> u64 {
    // "HTTP/1.1 200 " + reason + "\r\n"
    let line = 13 + reason.len() + 2;
    let headers: usize = headers
        .into_iter()
        .map(|(name, value)| name.len() + 2 + value.len() + 2)
        .sum();
    u64::try_from(line + headers + 2).unwrap_or(u64::MAX)
}

#[cfg(feature = "http")]
pub use reqwest_transport::{ReqwestConfig, ReqwestTransport};

#[cfg(feature = "http")]
pub(crate) use reqwest_transport::classify;

#[cfg(feature = "http")]
mod reqwest_transport {
    use std::time::Duration;

    use reqwest::header::{
        ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue, USER_AGENT,
    };

    use super::super::tls::{self, ServerTrust};
    use super::{
        HttpRequest, HttpResponse, Transport, TransportError, parse_retry_after, request_head_len,
        response_head_len,
    };

    /// Settings of [`ReqwestTransport`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ReqwestConfig {
        /// Time allowed to open a connection (TCP and TLS), default 20 s: a 2G link has
        /// round trips of up to a second and a TLS handshake takes several.
        pub connect_timeout: Duration,
        /// Time allowed for one whole exchange, default 120 s: 256 KiB up at 2G speed takes
        /// about 20 s, and a link that slows to a trickle should still finish.
        pub request_timeout: Duration,
        /// Largest response body accepted, default 8 MiB (the protocol's compressed limit).
        pub max_response_bytes: u64,
        /// `User-Agent` sent with every request.
        pub user_agent: String,
        /// Which servers are trusted over HTTPS (default: the bundled web PKI roots).
        pub trust: ServerTrust,
    }

    impl Default for ReqwestConfig {
        fn default() -> Self {
            ReqwestConfig {
                connect_timeout: Duration::from_secs(20),
                request_timeout: Duration::from_secs(120),
                max_response_bytes: 8 * 1024 * 1024,
                user_agent: concat!("communesync/", env!("CARGO_PKG_VERSION")).to_owned(),
                trust: ServerTrust::default(),
            }
        }
    }

    /// The production transport: reqwest over rustls, HTTP/1.1 with keep-alive, no redirects,
    /// no transparent decompression.
    ///
    /// Needs a tokio runtime with I/O and timers enabled (the caller's; none is started here).
    #[derive(Debug, Clone)]
    pub struct ReqwestTransport {
        client: reqwest::Client,
        base: String,
        host: String,
        user_agent: String,
        max_response_bytes: u64,
    }

    impl ReqwestTransport {
        /// A transport to the server at `base_url` (`https://sync.example.vn`, or with a path
        /// prefix) with default settings.
        pub fn new(base_url: &str) -> Result<Self, TransportError> {
            Self::with_config(base_url, ReqwestConfig::default())
        }

        /// A transport to the server at `base_url` with `config`.
        pub fn with_config(base_url: &str, config: ReqwestConfig) -> Result<Self, TransportError> {
            let url = reqwest::Url::parse(base_url)
                .map_err(|e| TransportError::Invalid(format!("base URL {base_url:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
                return Err(TransportError::Invalid(format!(
                    "base URL {base_url:?} is not an http(s) URL"
                )));
            }
            let host = match (url.host_str(), url.port()) {
                (Some(host), Some(port)) => format!("{host}:{port}"),
                (Some(host), None) => host.to_owned(),
                (None, _) => {
                    return Err(TransportError::Invalid(format!(
                        "base URL {base_url:?} has no host"
                    )));
                }
            };
            let tls = tls::client_config(&config.trust)
                .map_err(|e| TransportError::Invalid(e.to_string()))?;
            let client = reqwest::Client::builder()
                // Trust decided by `sync::tls`, never the platform's verifier (which needs a JNI
                // initialisation on Android). Clones of this client share its session cache.
                .tls_backend_preconfigured(tls)
                .connect_timeout(config.connect_timeout)
                .timeout(config.request_timeout)
                .http1_only()
                // A redirect would turn the POST into a GET or send the token elsewhere.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(config.user_agent.clone())
                .build()
                .map_err(|e| TransportError::Invalid(e.to_string()))?;
            Ok(ReqwestTransport {
                client,
                base: url.as_str().trim_end_matches('/').to_owned(),
                host,
                user_agent: config.user_agent,
                max_response_bytes: config.max_response_bytes,
            })
        }

        /// The HTTP client (for the attachment channel's own requests).
        pub(crate) fn http_client(&self) -> &reqwest::Client {
            &self.client
        }

        /// The server's base URL, without a trailing slash.
        pub(crate) fn base_url(&self) -> &str {
            &self.base
        }

        async fn exchange(&self, req: HttpRequest) -> Result<HttpResponse, TransportError> {
            let url = format!("{}{}", self.base, req.path);
            let mut builder = self
                .client
                .post(&url)
                .header(CONTENT_TYPE, req.content_type.as_str());
            if let Some(token) = &req.bearer {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| TransportError::Invalid("token is not a header value".into()))?;
                value.set_sensitive(true);
                builder = builder.header(AUTHORIZATION, value);
            }
            let body_len = req.body.len();
            let request = builder.body(req.body).build().map_err(classify)?;

            // The client's default headers are merged in when the request is sent, and Host and
            // Content-Length are added by hyper below reqwest: count them here.
            let content_length = body_len.to_string();
            let extra = [
                (ACCEPT.as_str(), &b"*/*"[..]),
                (USER_AGENT.as_str(), self.user_agent.as_bytes()),
                (HOST.as_str(), self.host.as_bytes()),
                (CONTENT_LENGTH.as_str(), content_length.as_bytes()),
            ];
            let head = request_head_len(
                request.url().path(),
                request
                    .headers()
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_bytes()))
                    .chain(extra),
            );
            let bytes_sent = head + u64::try_from(body_len).unwrap_or(u64::MAX);

            let mut response = self.client.execute(request).await.map_err(classify)?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let store_epoch = response
                .headers()
                .get(crate::protocol::STORE_EPOCH_HEADER)
                .and_then(|v| crate::protocol::parse_store_epoch(v.as_bytes()));
            let head_received = response_head_len(
                status.canonical_reason().unwrap_or(""),
                response
                    .headers()
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_bytes())),
            );
            if response
                .content_length()
                .is_some_and(|len| len > self.max_response_bytes)
            {
                return Err(TransportError::ResponseTooLarge {
                    limit: self.max_response_bytes,
                });
            }
            // Read chunk by chunk so that a lying or endless body cannot exhaust memory.
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(classify)? {
                if u64::try_from(body.len() + chunk.len()).unwrap_or(u64::MAX)
                    > self.max_response_bytes
                {
                    return Err(TransportError::ResponseTooLarge {
                        limit: self.max_response_bytes,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            let bytes_received = head_received + u64::try_from(body.len()).unwrap_or(u64::MAX);
            Ok(HttpResponse {
                status: status.as_u16(),
                body,
                retry_after,
                bytes_sent,
                bytes_received,
                store_epoch,
            })
        }
    }

    impl Transport for ReqwestTransport {
        fn send(
            &self,
            req: HttpRequest,
        ) -> impl Future<Output = Result<HttpResponse, TransportError>> + Send {
            self.exchange(req)
        }
    }

    /// Sorts a reqwest error into what the retry policy needs to know.
    pub(crate) fn classify(err: reqwest::Error) -> TransportError {
        // The error chain carries the useful part ("connection reset by peer").
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(inner) = source {
            message.push_str(": ");
            message.push_str(&inner.to_string());
            source = inner.source();
        }
        if let Some(reason) = tls::untrusted_reason(&err) {
            TransportError::UntrustedServer(reason)
        } else if err.is_timeout() {
            TransportError::Timeout(message)
        } else if err.is_connect() {
            TransportError::Connect(message)
        } else if err.is_body() || err.is_request() || err.is_decode() {
            TransportError::Interrupted(message)
        } else if err.is_builder() {
            TransportError::Invalid(message)
        } else {
            TransportError::Other(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_is_read_and_dates_are_ignored() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after(""), None);
    }

    #[test]
    fn head_sizes_count_lines_headers_and_the_blank_line() {
        // "POST /v1/sync HTTP/1.1\r\n" (24) + "host: a\r\n" (9) + "\r\n" (2)
        assert_eq!(request_head_len("/v1/sync", [("host", &b"a"[..])]), 35);
        // "HTTP/1.1 200 OK\r\n" (17) + "\r\n" (2)
        assert_eq!(response_head_len("OK", []), 19);
    }

    #[test]
    fn requests_do_not_print_their_token() {
        let req = HttpRequest {
            path: "/v1/sync".into(),
            bearer: Some("s3cret".into()),
            content_type: "x".into(),
            body: vec![],
        };
        assert!(!format!("{req:?}").contains("s3cret"));
    }

    /// A one-shot HTTP/1.1 server on loopback: reads one request, answers `response`, closes.
    /// Returns its base URL and a handle that yields the request bytes it read.
    #[cfg(feature = "http")]
    fn serve_once(response: Vec<u8>) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut received = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).unwrap();
                received.extend_from_slice(&buf[..n]);
                let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
                    assert!(n > 0, "connection closed before the request head");
                    continue;
                };
                let head = String::from_utf8_lossy(&received[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if received.len() >= end + 4 + len || n == 0 {
                    break;
                }
            }
            stream.write_all(&response).unwrap();
            received
        });
        (base, handle)
    }

    #[cfg(feature = "http")]
    #[tokio::test]
    async fn reqwest_sends_the_request_and_counts_bytes_exactly() {
        let body = br#"{"error":"rate_limited","message":"slow down"}"#;
        let mut response = format!(
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        let (base, server) = serve_once(response.clone());
        let transport = ReqwestTransport::new(&format!("{base}/prefix/")).unwrap();
        let answer = transport
            .send(HttpRequest {
                path: "/v1/sync".into(),
                bearer: Some("t0k".into()),
                content_type: "application/x-communesync-v2".into(),
                body: vec![7u8; 1000],
            })
            .await
            .unwrap();
        let request = server.join().unwrap();
        let head = String::from_utf8_lossy(&request).to_lowercase();
        assert!(
            head.starts_with("post /prefix/v1/sync http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("authorization: bearer t0k\r\n"));
        assert!(head.contains("content-type: application/x-communesync-v2\r\n"));
        assert!(
            !head.contains("accept-encoding"),
            "no transparent compression"
        );
        assert_eq!(answer.status, 429);
        assert_eq!(answer.body, body);
        assert_eq!(answer.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(answer.bytes_sent, request.len() as u64, "{head}");
        assert_eq!(answer.bytes_received, response.len() as u64);
    }

    #[cfg(feature = "http")]
    #[tokio::test]
    async fn reqwest_failures_are_classified() {
        let request = || HttpRequest {
            path: "/v1/sync".into(),
            bearer: None,
            content_type: "application/x-communesync-v2".into(),
            body: vec![1, 2, 3],
        };
        // Nobody listens.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let transport = ReqwestTransport::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let err = transport.send(request()).await.unwrap_err();
        assert!(matches!(err, TransportError::Connect(_)), "{err}");
        assert!(err.is_retryable());

        // The connection is cut mid-body.
        let (base, server) =
            serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly a little".to_vec());
        let err = ReqwestTransport::new(&base)
            .unwrap()
            .send(request())
            .await
            .unwrap_err();
        server.join().unwrap();
        assert!(matches!(err, TransportError::Interrupted(_)), "{err}");
        assert!(err.is_retryable());

        // A body over the limit.
        let (base, server) = serve_once(
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"
                .iter()
                .chain(&[0u8; 100])
                .copied()
                .collect(),
        );
        let config = ReqwestConfig {
            max_response_bytes: 50,
            ..ReqwestConfig::default()
        };
        let err = ReqwestTransport::with_config(&base, config)
            .unwrap()
            .send(request())
            .await
            .unwrap_err();
        server.join().unwrap();
        assert_eq!(err, TransportError::ResponseTooLarge { limit: 50 });
        assert!(!err.is_retryable());
    }

    #[cfg(feature = "http")]
    #[test]
    fn bad_base_urls_are_refused() {
        assert!(matches!(
            ReqwestTransport::new("not a url"),
            Err(TransportError::Invalid(_))
        ));
        assert!(matches!(
            ReqwestTransport::new("ftp://example.org"),
            Err(TransportError::Invalid(_))
        ));
        assert!(ReqwestTransport::new("http://127.0.0.1:8080/").is_ok());
    }
}
