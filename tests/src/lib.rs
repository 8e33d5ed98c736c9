//! Support for the end-to-end tests: a real provincial server on 127.0.0.1 (in-process, the
//! server's own accept loop `communesync_server::serve` over real storage, SQLite by default or
//! the PostgreSQL named by `COMMUNESYNC_TEST_DATABASE_URL`), with helpers to create communes and
//! enrollment codes.

pub mod catalogue_gen;
pub mod failover;
pub mod hostile;
pub mod process;
pub mod tablet;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use communesync_core::sync::{ReqwestConfig, ReqwestTransport, ServerTrust};
use communesync_server::http::{self, AppState, ServerConfig};
use communesync_server::serve::{self, ServeConfig};
use communesync_server::storage::{self, Scope, ServerStorage};
use tokio::task::JoinHandle;

/// What a test server speaks: the end-to-end tests run over both (`twin_tests!`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS with a certificate for 127.0.0.1 from a CA made by the test.
    Https,
}

/// The HTTPS side of a test server.
pub struct TestTls {
    /// The CA that signed the server's certificate (the tablets trust it alone).
    pub ca: tls::TestCa,
    /// The server's reloadable certificate.
    pub server: Arc<communesync_server::tls::ServerTls>,
    /// Where the certificate and key files are (`server.crt`, `server.key`).
    pub dir: tempfile::TempDir,
}

impl TestTls {
    /// A new CA and a certificate for 127.0.0.1 and localhost, in files.
    pub fn new() -> anyhow::Result<Self> {
        let ca = tls::TestCa::new("communesync test province CA")?;
        let dir = tempfile::tempdir()?;
        let (cert, key) = ca
            .server_cert(&["127.0.0.1", "localhost"])?
            .write(dir.path(), "server")?;
        let server = Arc::new(communesync_server::tls::ServerTls::load(&cert, &key)?);
        Ok(TestTls { ca, server, dir })
    }
}

/// Generates a test per scheme from `async fn NAME(scheme: Scheme)`: `NAME_over_http` and
/// `NAME_over_https` (multi-threaded runtime, two workers).
#[macro_export]
macro_rules! twin_tests {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn over_http() {
                    super::$name($crate::Scheme::Http).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn over_https() {
                    super::$name($crate::Scheme::Https).await
                }
            }
        )+
    };
}

/// A running server.
pub struct TestServer {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    /// Its storage, for assertions and operator tasks.
    pub storage: Arc<dyn ServerStorage>,
    /// An operator token.
    pub admin_token: String,
    /// Its certificate and CA when it serves HTTPS.
    pub tls: Option<Arc<TestTls>>,
    task: JoinHandle<()>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    /// Starts a server on `database` (`sqlite:PATH` or `postgres://...`) with
    /// [`unlimited_rate_config`].
    pub async fn start(database: &str) -> anyhow::Result<Self> {
        Self::start_with(database, unlimited_rate_config(), None).await
    }

    /// Starts a server with a configuration, on a given address (to restart on the same port).
    pub async fn start_with(
        database: &str,
        config: ServerConfig,
        addr: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        Self::start_serving(database, config, ServeConfig::default(), addr).await
    }

    /// [`TestServer::start`] over `scheme` (HTTPS: a new test CA and certificate).
    pub async fn start_scheme(database: &str, scheme: Scheme) -> anyhow::Result<Self> {
        let tls = match scheme {
            Scheme::Http => None,
            Scheme::Https => Some(Arc::new(TestTls::new()?)),
        };
        Self::start_tls(database, unlimited_rate_config(), tls, None).await
    }

    /// A server with `config`, serving HTTPS with `tls` when given, on `addr` when given (a
    /// restart keeps its certificate by passing the previous server's `tls`).
    pub async fn start_tls(
        database: &str,
        config: ServerConfig,
        tls: Option<Arc<TestTls>>,
        addr: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let serve_config = ServeConfig {
            tls: tls.as_ref().map(|tls| tls.server.clone()),
            ..ServeConfig::default()
        };
        let mut server = Self::start_serving(database, config, serve_config, addr).await?;
        server.tls = tls;
        Ok(server)
    }

    /// [`TestServer::start_with`] with the accept loop's limits too.
    pub async fn start_serving(
        database: &str,
        config: ServerConfig,
        serve_config: ServeConfig,
        addr: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let storage = storage::open(database).await?;
        let admin_token = http::new_token();
        storage
            .create_admin_token(http::hash_secret(&admin_token), "tests", now_ms())
            .await?;
        let listener = match addr {
            Some(addr) => bind_retrying(addr).await?,
            None => serve::bind(([127, 0, 0, 1], 0).into())?,
        };
        let addr = listener.local_addr()?;
        let app = http::router(AppState::new(storage.clone(), config));
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = serve::serve(listener, app, serve_config, async {
                let _ = stopped.await;
            })
            .await;
        });
        Ok(TestServer {
            addr,
            storage,
            admin_token,
            tls: None,
            task,
            shutdown: Some(shutdown),
        })
    }

    /// Base URL (`https://` when it serves HTTPS).
    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    /// What a tablet must trust to talk to it: its test CA alone (default for HTTP).
    pub fn trust(&self) -> ServerTrust {
        self.tls
            .as_ref()
            .map_or_else(ServerTrust::default, |tls| tls.ca.trust())
    }

    /// A production transport to it, trusting its CA.
    pub fn transport(&self) -> ReqwestTransport {
        transport(&self.url(), self.trust())
    }

    /// A plain reqwest client builder that trusts its CA, for requests made by hand.
    pub fn http_client_builder(&self) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder();
        match (
            &self.tls,
            communesync_core::sync::tls::client_config(&self.trust()),
        ) {
            (Some(_), Ok(config)) => builder.tls_backend_preconfigured(config),
            _ => builder,
        }
    }

    /// A plain reqwest client that trusts its CA, for requests made by hand.
    pub fn http_client(&self) -> reqwest::Client {
        self.http_client_builder().build().unwrap_or_default()
    }

    /// Creates a commune and returns `n` fresh enrollment codes for it.
    pub async fn commune_with_codes(&self, code: &str, n: usize) -> anyhow::Result<Vec<String>> {
        match self.storage.create_commune(code, code).await {
            Ok(()) | Err(storage::StorageError::AlreadyExists) => {}
            Err(err) => return Err(err.into()),
        }
        let mut codes = Vec::with_capacity(n);
        for _ in 0..n {
            let (code, _) = http::issue_enrollment_code(
                self.storage.as_ref(),
                &Scope::Commune(code.to_owned()),
                Duration::from_secs(3600),
                now_ms(),
            )
            .await?;
            codes.push(code);
        }
        Ok(codes)
    }

    /// Stops serving: the listener closes and so does every connection (a kept-alive idle one
    /// at once), so that clients find nobody at the address until a restart. A connection
    /// still busy after 10 s is dropped.
    pub async fn stop(mut self) -> (SocketAddr, Arc<dyn ServerStorage>) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
        self.task.abort();
        (self.addr, self.storage.clone())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A production transport to `url` trusting `trust`. Panics on a bad configuration (tests).
pub fn transport(url: &str, trust: ServerTrust) -> ReqwestTransport {
    #[allow(clippy::expect_used)]
    ReqwestTransport::with_config(
        url,
        ReqwestConfig {
            trust,
            ..ReqwestConfig::default()
        },
    )
    .expect("a valid transport configuration")
}

/// The server's default configuration but for the per-device request rate, high enough never to
/// be met: many tests send requests with one device in a tight loop, which the default limit
/// (a burst of 20, then 5 per second) would answer with 429. `hostile_net.rs` tests the limit.
pub fn unlimited_rate_config() -> ServerConfig {
    ServerConfig {
        device_rate: http::DeviceRateLimit {
            burst: 1_000_000,
            per_second: 1_000_000.0,
        },
        ..ServerConfig::default()
    }
}

async fn bind_retrying(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let mut last = None;
    for _ in 0..50 {
        match serve::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(err) => {
                last = Some(err);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("bind failed"), Into::into))
}

/// Server clock now, ms.
pub fn now_ms() -> i64 {
    use communesync_core::clock::Clock;
    communesync_core::clock::SystemClock.now_ms()
}

/// A SQLite database URL for a file in `dir`.
pub fn sqlite_url(dir: &std::path::Path, name: &str) -> String {
    format!("sqlite:{}", dir.join(name).display())
}

/// The databases every server test runs on: a SQLite file in `dir`, and a fresh PostgreSQL
/// database when `COMMUNESYNC_TEST_DATABASE_URL` names a server (the test command starts one).
/// Under CI, a missing PostgreSQL is an error, not a skip.
pub async fn test_databases(dir: &std::path::Path, name: &str) -> anyhow::Result<Vec<String>> {
    let mut urls = vec![sqlite_url(dir, &format!("{name}.db"))];
    match std::env::var("COMMUNESYNC_TEST_DATABASE_URL") {
        Ok(base) => urls.push(fresh_postgres_database(&base, name).await?),
        Err(_) if std::env::var_os("CI").is_some() => {
            anyhow::bail!("CI must run the PostgreSQL tests: set COMMUNESYNC_TEST_DATABASE_URL")
        }
        Err(_) => eprintln!("note: COMMUNESYNC_TEST_DATABASE_URL unset, PostgreSQL skipped"),
    }
    Ok(urls)
}

/// Creates an empty database next to the one `base` names and returns its URL.
pub async fn fresh_postgres_database(base: &str, name: &str) -> anyhow::Result<String> {
    let (client, connection) = tokio_postgres::connect(base, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let suffix: u32 = rand::random();
    let db = format!(
        "e2e_{}_{suffix:08x}",
        name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await?;
    drop(client);
    driver.abort();
    let (prefix, _) = base
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("database URL without a database name"))?;
    Ok(format!("{prefix}/{db}"))
}
