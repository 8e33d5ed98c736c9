//! `communesync device`: a tablet's store from the command line, for operators and tests.
//!
//! The store is encrypted with the key in `COMMUNESYNC_STORE_KEY` (64 hex digits), as a tablet's
//! would be with the platform keystore's key; without it the store is unencrypted (`rekey`
//! rotates it: see `device_rekey`). The device
//! credential is kept next to the store in `<store>.credential.json` (mode 0600). Enrolling a
//! store that already has a credential (with a re-enrollment code from the province) replaces
//! it atomically: the store keeps its device id and its unsynced work, which the next sync
//! pushes.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Subcommand;
use communesync_core::import::parse_import_line;
use communesync_core::record::RecordId;
use communesync_core::store::{ApplicationQuery, DeviceStore, StoreConfig};
use communesync_core::sync::{
    Credentials, ReqwestConfig, ReqwestTransport, ServerTrust, SyncClient, SyncConfig,
    enroll_with_key,
};
use serde::{Deserialize, Serialize};

#[derive(clap::Args)]
pub struct DeviceArgs {
    /// The tablet's store file.
    #[arg(long)]
    store: PathBuf,
    /// Trust only this CA (PEM file) for the server's certificate, not the bundled web roots;
    /// repeat for several (during a CA rotation). Saved with the credential at enrollment and
    /// used by later syncs unless given again.
    #[arg(long = "ca-cert", value_name = "FILE", global = true)]
    ca_certs: Vec<PathBuf>,
    /// Also require one of these server keys (base64 SHA-256 of the SubjectPublicKeyInfo,
    /// optionally `sha256/`-prefixed); repeat for several. Saved like --ca-cert.
    #[arg(long = "pin", value_name = "SHA256_BASE64", global = true)]
    pins: Vec<String>,
    #[command(subcommand)]
    task: DeviceTask,
}

#[derive(Subcommand)]
enum DeviceTask {
    /// Exchange a one-time code for this device's credential.
    Enroll {
        /// Server base URL.
        #[arg(long)]
        server: String,
        /// The code the province issued.
        #[arg(long)]
        code: String,
        /// A label for operators.
        #[arg(long, default_value = "tablet")]
        label: String,
    },
    /// Import applications, one JSON object per line (a commune's existing register).
    Import {
        /// JSON lines file (`-` for standard input).
        file: PathBuf,
        /// Officer recorded as their creator.
        #[arg(long, default_value = "import")]
        officer: String,
    },
    /// Sync with the server; prints a JSON summary.
    Sync,
    /// List applications (JSON lines).
    List {
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Export every record as JSON lines.
    Export,
    /// List the records set aside (refused by the server, or pulled and not readable), as JSON
    /// lines with their reason; or act on one.
    Quarantine {
        #[command(subcommand)]
        action: Option<QuarantineAction>,
    },
    /// The procedure catalogue: install a file before the first sync, search, sectors.
    Catalogue {
        #[command(subcommand)]
        task: super::device_catalogue::CatalogueTask,
    },
    /// A commune's existing register: import it with each dossier's state (CSV).
    Register {
        #[command(subcommand)]
        task: super::device_register::RegisterTask,
    },
    /// Re-encrypt the store with a new key (the current one from `COMMUNESYNC_STORE_KEY`).
    Rekey(crate::device_rekey::RekeyArgs),
    /// The signed receipt of an application (issued once, the same on every reprint): prints
    /// its QR payload as JSON; `--pdf FILE` also writes the printable A5 page.
    Receipt {
        /// Dossier number (or record id).
        number: String,
        /// Write the A5 PDF here.
        #[arg(long)]
        pdf: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum QuarantineAction {
    /// Put a refused record back in the outbox (the next sync pushes it), or try an unreadable
    /// one again now.
    Retry {
        /// Record id.
        id: RecordId,
    },
    /// Discard a quarantined record: its unsynced local changes go (and the record itself if the
    /// server never had it). Written to the audit log.
    Discard {
        /// Record id.
        id: RecordId,
        /// The officer who decides.
        #[arg(long)]
        officer: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Replace a refused record by a new one with the same content for this device's commune;
    /// the old one is discarded (audit log).
    CopyAsNew {
        /// Record id.
        id: RecordId,
        /// The officer who decides (creator of the copy).
        #[arg(long)]
        officer: String,
    },
    /// The audit log of quarantine decisions, as JSON lines.
    Audit,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct SavedCredential {
    pub(crate) server: String,
    pub(crate) credentials: Credentials,
    /// The trust given at enrollment (PEM texts, pins).
    #[serde(default)]
    ca_pem: Vec<String>,
    #[serde(default)]
    pins: Vec<String>,
}

/// The trust the flags give, or `None` when none was given.
fn trust_from_flags(args: &DeviceArgs) -> anyhow::Result<Option<ServerTrust>> {
    if args.ca_certs.is_empty() && args.pins.is_empty() {
        return Ok(None);
    }
    let ca_pem = args
        .ca_certs
        .iter()
        .map(|path| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(ServerTrust {
        ca_pem,
        pinned_keys: args.pins.clone(),
    }))
}

fn transport(server: &str, trust: ServerTrust) -> anyhow::Result<ReqwestTransport> {
    Ok(ReqwestTransport::with_config(
        server,
        ReqwestConfig {
            trust,
            ..ReqwestConfig::default()
        },
    )?)
}

pub(crate) fn credential_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".credential.json");
    PathBuf::from(name)
}

pub(crate) fn open(path: &Path) -> anyhow::Result<DeviceStore> {
    let config = StoreConfig::new(path);
    let config = match std::env::var("COMMUNESYNC_STORE_KEY") {
        Ok(hex_key) => config.encrypted(
            crate::device_rekey::key_from_hex(&hex_key).context("COMMUNESYNC_STORE_KEY")?,
        ),
        Err(_) => config,
    };
    Ok(DeviceStore::open(config)?)
}

pub async fn run(args: DeviceArgs) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    let flag_trust = trust_from_flags(&args)?;
    match args.task {
        DeviceTask::Enroll {
            server,
            code,
            label,
        } => {
            let mut store = open(&args.store)?;
            let trust = flag_trust.unwrap_or_default();
            let transport = transport(&server, trust.clone())?;
            // Enrolling again (a credential exists): a new key, installed once the server has
            // registered it (the old one may have been revoked, and is replaced).
            let again = credential_path(&args.store).exists();
            let new_key = if again {
                Some(communesync_core::keys::DeviceSigningKey::generate()?)
            } else {
                None
            };
            let public_key = match &new_key {
                Some(key) => key.public_key(),
                None => store.public_key()?,
            };
            let credentials = enroll_with_key(
                &transport,
                &code,
                store.device_id(),
                &label,
                Some(public_key),
            )
            .await?;
            if let Some(key) = &new_key {
                store.install_signing_key(key)?;
            }
            // Records of another commune are refused from now on (and those typed before are
            // set aside in the quarantine).
            store.set_enrolled_commune(credentials.commune())?;
            let saved = SavedCredential {
                server,
                credentials,
                ca_pem: trust.ca_pem,
                pins: trust.pinned_keys,
            };
            let path = credential_path(&args.store);
            write_private(&path, &serde_json::to_vec_pretty(&saved)?)?;
            writeln!(
                stdout,
                "{}",
                serde_json::json!({ "device_id": saved.credentials.device_id, "scope": saved.credentials.scope })
            )?;
        }
        DeviceTask::Catalogue { task } => super::device_catalogue::run(&args.store, task)?,
        DeviceTask::Register { task } => super::device_register::run(&args.store, task)?,
        DeviceTask::Import { file, officer } => {
            let mut store = open(&args.store)?;
            let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(&file)
                        .with_context(|| format!("opening {}", file.display()))?,
                ))
            };
            let (mut imported, mut refused) = (0u64, 0u64);
            for (number, line) in reader.lines().enumerate() {
                let line = line?;
                let result = match parse_import_line(&line) {
                    Ok(None) => continue,
                    Ok(Some(new)) => store.create_application(&officer, new),
                    Err(err) => Err(err),
                };
                match result {
                    Ok(_) => imported += 1,
                    Err(err) => {
                        refused += 1;
                        eprintln!("line {}: {err}", number + 1);
                    }
                }
            }
            writeln!(
                stdout,
                "{}",
                serde_json::json!({ "imported": imported, "refused": refused })
            )?;
        }
        DeviceTask::Sync => {
            let path = credential_path(&args.store);
            let saved: SavedCredential =
                serde_json::from_slice(&std::fs::read(&path).with_context(|| {
                    format!("no credential at {}: enroll first", path.display())
                })?)?;
            let mut store = open(&args.store)?;
            // A store enrolled before the scope was recorded learns it from the credential.
            store.set_enrolled_commune(saved.credentials.commune())?;
            let store = Arc::new(Mutex::new(store));
            let trust = flag_trust.unwrap_or(ServerTrust {
                ca_pem: saved.ca_pem,
                pinned_keys: saved.pins,
            });
            let client = SyncClient::new(
                transport(&saved.server, trust)?,
                store,
                saved.credentials.token,
                SyncConfig::default(),
            )?;
            let report = client.sync(&|_| {}).await?;
            // The province's key list (receipts are verified against it offline); a failure
            // here does not undo the sync, the next one tries again.
            if let Err(err) = client.refresh_device_keys().await {
                eprintln!("device keys not refreshed: {err}");
            }
            writeln!(stdout, "{}", serde_json::to_string(&report)?)?;
        }
        DeviceTask::List { status, limit } => {
            let store = open(&args.store)?;
            let status = status.map(|s| s.parse()).transpose()?;
            let page = store.query_applications(&ApplicationQuery {
                status,
                limit,
                descending: true,
                ..Default::default()
            })?;
            for item in page.items {
                writeln!(stdout, "{}", serde_json::to_string(&item)?)?;
            }
        }
        DeviceTask::Export => {
            let mut store = open(&args.store)?;
            let mut offset = 0;
            loop {
                let page = store.query_applications(&ApplicationQuery {
                    limit: 500,
                    offset,
                    ..Default::default()
                })?;
                for item in &page.items {
                    writeln!(stdout, "{}", serde_json::to_string(&store.get(item.id)?)?)?;
                }
                match page.next_offset {
                    Some(next) => offset = next,
                    None => break,
                }
            }
        }
        DeviceTask::Rekey(rekey) => {
            let mut store = open(&args.store)?;
            crate::device_rekey::run(&mut store, rekey)?;
            writeln!(stdout, "{}", serde_json::json!({ "rekeyed": true }))?;
        }
        DeviceTask::Quarantine { action } => {
            let mut store = open(&args.store)?;
            match action {
                None => {
                    for record in store.quarantined()? {
                        writeln!(stdout, "{}", serde_json::to_string(&record)?)?;
                    }
                }
                Some(QuarantineAction::Retry { id }) => {
                    let left = store.retry_quarantined(id)?;
                    writeln!(
                        stdout,
                        "{}",
                        serde_json::json!({ "record_id": id, "left_quarantine": left })
                    )?;
                }
                Some(QuarantineAction::Discard {
                    id,
                    officer,
                    reason,
                }) => {
                    store.discard_quarantined(id, &officer, &reason)?;
                    writeln!(stdout, "{}", serde_json::json!({ "discarded": id }))?;
                }
                Some(QuarantineAction::CopyAsNew { id, officer }) => {
                    let copy = store.copy_quarantined_as_new(id, &officer)?;
                    writeln!(
                        stdout,
                        "{}",
                        serde_json::json!({ "copied": id, "record": copy })
                    )?;
                }
                Some(QuarantineAction::Audit) => {
                    for entry in store.audit_log()? {
                        writeln!(stdout, "{}", serde_json::to_string(&entry)?)?;
                    }
                }
            }
        }
        DeviceTask::Receipt { number, pdf } => {
            let mut store = open(&args.store)?;
            let id = find_application(&mut store, &number)?;
            let signed = store.issue_receipt(id)?;
            if let Some(path) = &pdf {
                let bytes = communesync_core::receipt::pdf::render(&signed, None)?;
                std::fs::write(path, bytes)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            writeln!(
                stdout,
                "{}",
                serde_json::json!({
                    "dossier_number": signed.receipt.dossier_number,
                    "record_id": id,
                    "payload": signed.payload,
                    "payload_bytes": signed.payload.len(),
                    "pdf": pdf,
                })
            )?;
        }
    }
    Ok(())
}

/// The application with dossier number `number` (or record id `number`): a receipt issued here
/// names it, else the applications are searched (bounded: the store's own pages).
fn find_application(store: &mut DeviceStore, number: &str) -> anyhow::Result<RecordId> {
    if let Some(id) = store.receipt_record(number)? {
        return Ok(id);
    }
    if let Ok(id) = number.parse::<RecordId>() {
        return Ok(id);
    }
    let mut offset = 0;
    loop {
        let page = store.query_applications(&ApplicationQuery {
            limit: 500,
            offset,
            ..Default::default()
        })?;
        for item in &page.items {
            if store.get_application(item.id)?.dossier_number.as_deref() == Some(number) {
                return Ok(item.id);
            }
        }
        match page.next_offset {
            Some(next) => offset = next,
            None => anyhow::bail!("no application with dossier number {number} in this store"),
        }
    }
}

/// Writes `bytes` to `path` (mode 0600) atomically: a crash leaves the old file or the new one,
/// never a credential cut in half.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    // A leftover from a crash may have another mode: `mode` applies only to a new file.
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
