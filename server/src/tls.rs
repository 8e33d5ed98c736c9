//! HTTPS terminated by the server itself (`communesync serve --tls-cert FILE --tls-key FILE`),
//! with the certificate reloaded from its files while tablets stay connected.
//!
//! Contract:
//! - [`ServerTls::load`] reads a PEM certificate chain (the server's certificate first, then its
//!   intermediates) and a PEM private key (PKCS#8, PKCS#1 or SEC1), and refuses to start when they
//!   do not parse or do not belong together.
//! - [`ServerTls::reload`] reads the files again; when they are good the new certificate serves
//!   every handshake from then on, and connections already open are not touched (they keep the
//!   session they negotiated). When they are bad (unreadable, half written, key and certificate
//!   from different pairs) the current certificate stays and the reason is returned (and logged
//!   by [`ServerTls::watch`]). A renewal that writes the certificate and the key one after the
//!   other is therefore picked up once both are written.
//! - [`ServerTls::watch`] polls the files' modification time and size every few seconds and
//!   reloads when either changed; `communesync serve` also reloads on SIGHUP.
//! - TLS 1.2 and 1.3 with ring (the tablets' provider), HTTP/1.1 by ALPN. Session resumption is
//!   on (stateless tickets, whose key rotates every 6 hours, and a bounded session cache), and
//!   survives a certificate reload, so a tablet on 2G pays a full handshake rarely.
//! - The accept loop (`serve`) bounds the handshake: it must finish within the header timeout.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// Sessions the server remembers for resumption without tickets (TLS 1.2 clients that do not
/// take tickets); bounded, oldest evicted.
const SESSION_CACHE_SIZE: usize = 4096;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TlsFileError {
    /// The file at fault (or the certificate's, when the pair does not match).
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

/// The server's TLS: an acceptor whose certificate can be replaced while it serves.
pub struct ServerTls {
    cert_path: PathBuf,
    key_path: PathBuf,
    resolver: Arc<ReloadingCert>,
    acceptor: TlsAcceptor,
    /// Modification stamps of the files last read (successfully or not), for [`Self::watch`].
    seen: Mutex<Option<(FileStamp, FileStamp)>>,
}

/// What changes when a file is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificate chain at `cert` and the private key at `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsFileError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let stamps = stamp(cert).zip(stamp(key));
        let certified = read_pair(cert, key, &provider)?;
        let resolver = Arc::new(ReloadingCert {
            current: RwLock::new(Arc::new(certified)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsFileError {
                path: cert.to_owned(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsFileError {
            path: cert.to_owned(),
            reason: format!("session tickets: {e}"),
        })?;
        // One ticket per handshake (rustls sends two by default): a tablet opens one connection
        // at a time and each connection brings the ticket for the next; the second would be
        // ~250 bytes of 2G traffic at every handshake for nothing.
        config.send_tls13_tickets = 1;
        Ok(ServerTls {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            seen: Mutex::new(stamps),
        })
    }

    /// The acceptor for new connections (always the current certificate).
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again and, if they are good, serves the new certificate to new
    /// handshakes. On error the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsFileError> {
        let provider = rustls::crypto::ring::default_provider();
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) =
            stamp(&self.cert_path).zip(stamp(&self.key_path));
        let certified = read_pair(&self.cert_path, &self.key_path, &provider)?;
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(certified);
        Ok(())
    }

    /// Reloads and logs the outcome (what SIGHUP and the file watch do).
    pub fn reload_and_log(&self) {
        match self.reload() {
            Ok(()) => tracing::info!(
                cert = %self.cert_path.display(),
                "TLS certificate reloaded; new connections use it"
            ),
            Err(err) => tracing::warn!(
                %err,
                "TLS certificate not reloaded; the previous one stays in use"
            ),
        }
    }

    /// Whether the files changed since they were last read.
    fn changed(&self) -> bool {
        let now = stamp(&self.cert_path).zip(stamp(&self.key_path));
        // A file missing for a moment (replaced by rename) is not a change yet.
        now.is_some() && *self.seen.lock().unwrap_or_else(PoisonError::into_inner) != now
    }

    /// Polls the files every `every` and reloads when they changed, until the task is aborted.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if tls.changed() {
                    tls.reload_and_log();
                }
            }
        })
    }
}

/// Reads and checks a certificate chain and its key.
fn read_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsFileError> {
    let cert_error = |reason: String| TlsFileError {
        path: cert.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| cert_error(format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE block".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsFileError {
        path: key.to_owned(),
        reason: format!("not a PEM private key: {e}"),
    })?;
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsFileError {
        path: key.to_owned(),
        reason: format!("unusable with the certificate {}: {e}", cert.display()),
    })?;
    Ok(certified)
}

/// The certificate served to each new handshake, replaceable.
#[derive(Debug)]
struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}
