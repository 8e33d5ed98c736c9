//! `communesync`: the provincial server and operator CLI.
//!
//! - `communesync serve`: the server, on an embedded SQLite file by default or PostgreSQL.
//! - `communesync admin ...`: communes, enrollment and re-enrollment codes, devices, revocation
//!   (with wipe), refused documents, operator tokens, stats; the read model (records, dashboard,
//!   report, exports, rebuild); console operators.
//! - `communesync demo`: offline intake on tablets, queries, a concurrent edit and its resolution.

mod admin_backup;
mod admin_catalogue;
mod admin_numbers;
mod config_file;
mod console_cli;
mod demo;
mod device;
mod device_catalogue;
mod device_register;
mod device_rekey;
mod read_model_cli;
mod verify_receipt;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use communesync_core::clock::{Clock, SystemClock};
use communesync_core::record::DeviceId;
use communesync_server::http::{self, AppState, DeviceRateLimit, ServerConfig};
use communesync_server::serve::ServeConfig;
use communesync_server::storage::{self, Scope};
use communesync_server::tls::ServerTls;

#[derive(Parser)]
#[command(
    name = "communesync",
    version,
    about = "communesync: offline-first records for commune public administration"
)]
struct Cli {
    /// Log format on stderr: `json` (one object per line, for log collectors; the default of
    /// `serve`) or `text` (the default of the other commands).
    #[arg(long, global = true, env = "COMMUNESYNC_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Run the provincial server.
    Serve(ServeArgs),
    /// Operator tasks on the server's database.
    Admin(AdminArgs),
    /// A tablet's store: enroll, import, sync, list, export.
    Device(device::DeviceArgs),
    /// The server with tablets in two communes syncing over an emulated 2G link.
    Demo(demo::DemoArgs),
    /// Verify a scanned receipt payload (offline with `--store`, online with `--server`).
    VerifyReceipt(verify_receipt::VerifyReceiptArgs),
}

#[derive(Args)]
struct Database {
    /// `sqlite:PATH` (default, embedded), `postgres://user@host:port/db`, or a key=value string
    /// (`host=a,b port=5432,5432 dbname=db target_session_attrs=read-write` follows a failover).
    #[arg(
        long,
        env = "COMMUNESYNC_DATABASE",
        default_value = "sqlite:communesync-server.db"
    )]
    database: String,
}

#[derive(Args)]
struct ServeArgs {
    /// A TOML file of settings (keys named as these flags); flags and `COMMUNESYNC_*`
    /// variables override it.
    #[arg(long, env = "COMMUNESYNC_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the settings in force (as JSON, the database without its password) and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    db: Database,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8480")]
    listen: SocketAddr,
    /// Where to write the operator token created at first start.
    #[arg(long, default_value = "communesync-admin-token")]
    admin_token_file: PathBuf,
    /// A reverse proxy (address or CIDR network) whose `X-Forwarded-For` is believed for
    /// enrollment limits; repeat for several. Without it the header is ignored.
    #[arg(long = "trusted-proxy", value_name = "IP_OR_CIDR", value_parser = http::client_addr::parse_trusted_proxy)]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Connections served at once; more wait in the listen queue (lowered to fit the open-file
    /// limit).
    #[arg(long, default_value_t = ServeConfig::default().max_connections)]
    max_connections: usize,
    /// Seconds a client has to send a whole request head; then its connection is closed.
    #[arg(long, default_value_t = ServeConfig::default().header_timeout.as_secs())]
    header_timeout_secs: u64,
    /// Seconds a kept-alive connection may stay idle between requests.
    #[arg(long, default_value_t = ServeConfig::default().idle_timeout.as_secs())]
    idle_timeout_secs: u64,
    /// Requests a device may send at once; then `--device-rate` per second (beyond: 429).
    #[arg(long, default_value_t = DeviceRateLimit::default().burst)]
    device_burst: u32,
    /// Requests per second a device may send on average.
    #[arg(long, default_value_t = DeviceRateLimit::default().per_second)]
    device_rate: f64,
    /// Serve HTTPS with this PEM certificate chain (the server's certificate first). Reloaded
    /// when the file changes (checked every 5 s) or on SIGHUP; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The province's dossier number format: `{agency}`, `{seq}` or `{seq:N}` (zero-padded to
    /// N digits) once each, optionally `{yymmdd}` or `{yyyymmdd}`, delimited by punctuation.
    #[arg(long, default_value = communesync_core::numbering::DEFAULT_FORMAT)]
    dossier_number_format: String,
    /// One agency code for every commune (one counter for the province); by default each
    /// commune's code is its agency code.
    #[arg(long)]
    dossier_agency_code: Option<String>,
    /// Mark the console's session cookie `Secure` (browsers then send it over HTTPS only). On
    /// by itself when this server serves HTTPS (--tls-cert); give it when a TLS proxy in front
    /// terminates HTTPS and this server speaks plain HTTP behind it.
    #[arg(long)]
    secure_cookies: bool,
}

/// How often `serve` looks at the certificate files for a renewal.
const TLS_RELOAD_POLL: Duration = Duration::from_secs(5);

#[derive(Args)]
struct AdminArgs {
    #[command(flatten)]
    db: Database,
    #[command(subcommand)]
    task: AdminTask,
}

#[derive(Subcommand)]
enum AdminTask {
    /// Create a commune.
    CreateCommune {
        /// Administrative code.
        code: String,
        /// Display name.
        name: String,
    },
    /// Issue a one-time enrollment code for a commune's tablet (or a province account).
    IssueCode {
        /// The commune; omit with --province.
        #[arg(long, required_unless_present = "province")]
        commune: Option<String>,
        /// A province account (reads every commune).
        #[arg(long)]
        province: bool,
        /// Hours the code stays valid.
        #[arg(long, default_value_t = 72)]
        ttl_hours: u64,
    },
    /// List devices with their last sync.
    Devices {
        /// Only this commune's.
        #[arg(long)]
        commune: Option<String>,
    },
    /// Revoke a device: its next request is refused (403 `revoked`, or `wiped` with --wipe).
    Revoke {
        /// Device id.
        device: uuid::Uuid,
        /// Also order the tablet to destroy its store at its next contact.
        #[arg(long)]
        wipe: bool,
    },
    /// Issue a one-time code that gives an existing device a new credential (lost, or revoked
    /// by mistake); the tablet keeps its id and unsynced work.
    ReenrollCode {
        /// Device id.
        device: uuid::Uuid,
        /// Hours the code stays valid.
        #[arg(long, default_value_t = 72)]
        ttl_hours: u64,
    },
    /// Documents the server refused, newest first (JSON lines).
    Refusals {
        /// Only this device's.
        #[arg(long)]
        device: Option<uuid::Uuid>,
    },
    /// A record's history: each change's claims (author, officer, device time, fields) beside
    /// the server's facts (the device that pushed it, when it was stored), as JSON lines.
    History {
        /// Record id.
        record: uuid::Uuid,
    },
    /// The application with this dossier number, as the server holds it now (JSON).
    RecordByNumber {
        /// The dossier number ("01234-261206-000042").
        number: String,
    },
    /// Dossier number blocks granted to devices, with how much of each was used (JSON lines).
    NumberBlocks {
        /// Only this device's.
        #[arg(long)]
        device: Option<uuid::Uuid>,
    },
    /// List operator tokens (id, label, times; never the token).
    Tokens,
    /// Revoke an operator token (not the last active one).
    RevokeToken {
        /// Token id, from `tokens`.
        id: u64,
    },
    /// Records, changes and devices per commune.
    Stats,
    /// Create another operator token (printed once).
    NewAdminToken {
        /// Who it is for.
        #[arg(long, default_value = "operator")]
        label: String,
    },
    /// The procedure catalogue: publish a file (by delta to tablets), export the published one.
    Catalogue {
        #[command(subcommand)]
        task: admin_catalogue::CatalogueAdminTask,
    },
    /// Publish the procedure catalogue (JSON file) to every tablet (same as `catalogue publish`).
    PutCatalogue {
        /// `{"procedures":[...],"holidays":[...]}`.
        file: PathBuf,
    },
    /// Back up the SQLite database to FILE while the server runs (consistent snapshot, mode
    /// 0600, written under a temporary name then renamed). PostgreSQL: explains pg_dump /
    /// pg_basebackup and writes nothing.
    Backup {
        /// Where to write the backup (replaced atomically if it exists).
        file: PathBuf,
    },
    /// Put a backup made by `backup` back as the SQLite database (stop the server first); tablets
    /// then re-send what the server lost since the backup. PostgreSQL: explains the procedure.
    Restore {
        /// The backup file.
        file: PathBuf,
    },
    /// After restoring the database by other means (pg_restore, a copied file): give it a fresh
    /// store epoch so tablets re-send what it may lack and re-read the feed.
    MarkRestored,
    #[command(flatten)]
    ReadModel(read_model_cli::ReadModelTask),
    #[command(flatten)]
    Console(console_cli::ConsoleTask),
}

fn main() -> anyhow::Result<()> {
    communesync_server::serve::limit_allocator_arenas();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let command = config_file::configure(<Cli as clap::CommandFactory>::command(), &args)?;
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&command.get_matches_from(&args))
        .unwrap_or_else(|e| e.exit());
    // The demo prints its own story; the server logs what operators need.
    let default_level = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    let format = cli.log_format.unwrap_or(match cli.command {
        Command::Serve(_) => LogFormat::Json,
        _ => LogFormat::Text,
    });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_level.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Span fields (the request id) are flattened into each line's `span` object.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => logs.init(),
    }
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Admin(args) => runtime.block_on(admin(args)),
        Command::Device(args) => runtime.block_on(device::run(args)),
        Command::Demo(args) => demo::run(&args),
        Command::VerifyReceipt(args) => match runtime.block_on(verify_receipt::run(args)) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(err) => Err(err),
        },
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.print_config {
        println!("{}", effective_settings(&args));
        return Ok(());
    }
    let storage = storage::open(&args.db.database)
        .await
        .with_context(|| format!("opening {}", args.db.database))?;
    // Records stored before the read model existed (or by an older build) are projected now.
    let lag = storage.read_model_lag().await?;
    if lag > 0 {
        tracing::info!(documents = lag, "building the read model");
        let rules =
            communesync_server::catalogue::CatalogueRules::load_deadline_rules(storage.as_ref())
                .await?;
        let rows = storage.rebuild_read_model(rules).await?;
        tracing::info!(rows, "read model built");
    }
    if !args.admin_token_file.exists() {
        let token = http::new_token();
        storage
            .create_admin_token(http::hash_secret(&token), "bootstrap", SystemClock.now_ms())
            .await?;
        write_secret(&args.admin_token_file, &token)?;
        tracing::info!(file = %args.admin_token_file.display(), "operator token written");
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = Arc::new(ServerTls::load(cert, key).context("loading the TLS certificate")?);
            tls.watch(TLS_RELOAD_POLL);
            reload_on_sighup(tls.clone());
            Some(tls)
        }
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let secure_cookies = secure_cookies(&args);
    let serve_config = ServeConfig {
        tls,
        max_connections: args.max_connections.max(1),
        header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs.max(1)),
        ..ServeConfig::default()
    };
    let numbers = communesync_server::numbers::NumberConfig {
        format: communesync_core::numbering::NumberFormat::parse(&args.dossier_number_format)?,
        agency: args.dossier_agency_code,
        ..Default::default()
    };
    let config = ServerConfig {
        numbers,
        trusted_proxies: args.trusted_proxies,
        device_rate: DeviceRateLimit {
            burst: args.device_burst,
            per_second: args.device_rate,
        },
        secure_cookies,
        ..ServerConfig::default()
    };
    // Unreferenced attachment contents go after their grace period; stops with the process.
    let sweeper = tokio::spawn(communesync_server::attachment_sweep::run(storage.clone()));
    let state = AppState::new(storage, config);
    let listener = communesync_server::serve::bind(args.listen)?;
    tracing::info!(addr = %listener.local_addr()?, scheme, database = %redact(&args.db.database), "communesync server listening");
    communesync_server::serve::serve(
        listener,
        http::router(state),
        serve_config,
        shutdown_signal(),
    )
    .await?;
    sweeper.abort();
    Ok(())
}

/// Reloads the TLS certificate at each SIGHUP (what `systemctl reload` and certbot hooks send).
fn reload_on_sighup(tls: Arc<ServerTls>) {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tls.reload_and_log();
                }
            });
        }
        Err(err) => {
            tracing::warn!(%err, "no SIGHUP handler; the certificate reloads on change only")
        }
    }
}

/// Whether the console's session cookie is `Secure`: asked for (a TLS proxy in front), or this
/// server serves HTTPS itself.
fn secure_cookies(args: &ServeArgs) -> bool {
    args.secure_cookies || args.tls_cert.is_some()
}

/// The settings `serve` runs with, as JSON (`--print-config`).
fn effective_settings(args: &ServeArgs) -> serde_json::Value {
    serde_json::json!({
        "config": args.config,
        "database": redact(&args.db.database),
        "listen": args.listen.to_string(),
        "admin-token-file": args.admin_token_file,
        "trusted-proxy": args.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "max-connections": args.max_connections,
        "header-timeout-secs": args.header_timeout_secs,
        "idle-timeout-secs": args.idle_timeout_secs,
        "device-burst": args.device_burst,
        "device-rate": args.device_rate,
        "tls-cert": args.tls_cert,
        "tls-key": args.tls_key,
        // As in force: on with --tls-cert even when not asked for.
        "secure-cookies": secure_cookies(args),
    })
}

/// Ctrl-C or SIGTERM (what service managers send).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

/// A database URL or key=value string without its password, for logs.
fn redact(url: &str) -> String {
    if storage::postgres::is_key_value_string(url) {
        return url
            .split_whitespace()
            .map(|word| match word.split_once('=') {
                Some(("password", _)) => "password=***".to_owned(),
                _ => word.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

fn write_secret(path: &PathBuf, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{secret}")?;
    Ok(())
}

async fn admin(args: AdminArgs) -> anyhow::Result<()> {
    // Backups copy files: the database is not opened (nor migrated) as storage for them.
    match &args.task {
        AdminTask::Backup { file } => return admin_backup::backup(&args.db.database, file),
        AdminTask::Restore { file } => return admin_backup::restore(&args.db.database, file),
        _ => {}
    }
    let storage = storage::open(&args.db.database)
        .await
        .with_context(|| format!("opening {}", args.db.database))?;
    let now = SystemClock.now_ms();
    match args.task {
        AdminTask::CreateCommune { code, name } => {
            storage.create_commune(&code, &name).await?;
            println!("{}", serde_json::json!({ "created": code }));
        }
        AdminTask::IssueCode {
            commune,
            province,
            ttl_hours,
        } => {
            let scope = match (province, commune) {
                (true, _) => Scope::Province,
                (false, Some(code)) => Scope::Commune(code),
                (false, None) => anyhow::bail!("give --commune CODE or --province"),
            };
            let ttl = Duration::from_secs(ttl_hours.clamp(1, 24 * 30) * 3600);
            let (code, expires_at) =
                http::issue_enrollment_code(storage.as_ref(), &scope, ttl, now).await?;
            println!(
                "{}",
                serde_json::json!({ "code": code, "expires_at": expires_at })
            );
        }
        AdminTask::Devices { commune } => {
            for device in http::list_devices(storage.as_ref(), commune).await? {
                println!("{}", serde_json::to_string(&device)?);
            }
        }
        AdminTask::Revoke { device, wipe } => {
            let id = DeviceId(device);
            if wipe {
                storage.revoke_and_wipe_device(id).await?;
            } else {
                storage.revoke_device(id).await?;
            }
            storage.revoke_device_keys(id, now).await?;
            println!("{}", serde_json::json!({ "revoked": device, "wipe": wipe }));
        }
        AdminTask::ReenrollCode { device, ttl_hours } => {
            let ttl = Duration::from_secs(ttl_hours.clamp(1, 24 * 30) * 3600);
            let (code, expires_at) =
                http::issue_reenrollment_code(storage.as_ref(), DeviceId(device), ttl, now).await?;
            println!(
                "{}",
                serde_json::json!({ "device_id": device, "code": code, "expires_at": expires_at })
            );
        }
        AdminTask::Refusals { device } => {
            for refusal in http::refusals(storage.as_ref(), device.map(DeviceId)).await? {
                println!("{}", serde_json::to_string(&refusal)?);
            }
        }
        AdminTask::History { record } => {
            let id = communesync_core::record::RecordId(record);
            for change in http::record_history(storage.as_ref(), id).await? {
                println!("{}", serde_json::to_string(&change)?);
            }
        }
        AdminTask::RecordByNumber { number } => {
            admin_numbers::record_by_number(&storage, &number).await?;
        }
        AdminTask::NumberBlocks { device } => {
            admin_numbers::number_blocks(&storage, device).await?;
        }
        AdminTask::Tokens => {
            for token in http::list_admin_tokens(storage.as_ref()).await? {
                println!("{}", serde_json::to_string(&token)?);
            }
        }
        AdminTask::RevokeToken { id } => {
            storage.revoke_admin_token(id, now).await?;
            println!("{}", serde_json::json!({ "revoked_token": id }));
        }
        AdminTask::Stats => {
            for line in http::stats(storage.as_ref()).await? {
                println!("{}", serde_json::to_string(&line)?);
            }
        }
        AdminTask::NewAdminToken { label } => {
            let token = http::new_token();
            storage
                .create_admin_token(http::hash_secret(&token), &label, now)
                .await?;
            println!("{token}");
        }
        AdminTask::Catalogue { task } => admin_catalogue::run(storage.as_ref(), task).await?,
        AdminTask::PutCatalogue { file } => {
            let version = admin_catalogue::publish_file(storage.as_ref(), &file).await?;
            println!("{}", serde_json::json!({ "catalogue_version": version }));
        }
        AdminTask::ReadModel(task) => read_model_cli::run(storage.as_ref(), task, now).await?,
        AdminTask::Console(task) => console_cli::run(storage.as_ref(), task, now).await?,
        AdminTask::MarkRestored => {
            let epoch = communesync_server::backup::mark_restored(storage.as_ref()).await?;
            println!("{}", serde_json::json!({ "store_epoch": epoch }));
        }
        AdminTask::Backup { .. } | AdminTask::Restore { .. } => {}
    }
    Ok(())
}
