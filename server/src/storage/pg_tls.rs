//! TLS to PostgreSQL, as the database URL asks for it, with libpq's meaning of `sslmode`.
//!
//! Contract: [`parse`] takes the `postgres://` URL (or `key=value` string) the operator gives,
//! removes the TLS settings tokio-postgres does not know (`sslrootcert`, and the `sslmode`
//! values `verify-ca` and `verify-full`), and returns the connection configuration with the
//! rustls connector to use:
//! - `sslmode` absent, `prefer` or `allow`: TLS when the server offers it, plaintext otherwise,
//!   certificate not checked (libpq's default; it protects against a passive listener only);
//! - `disable`: never TLS;
//! - `require`: TLS or no connection; the certificate is checked against `sslrootcert` when one
//!   is given (as libpq does), not checked otherwise;
//! - `verify-ca`: TLS, and the certificate must chain to `sslrootcert`;
//! - `verify-full`: `verify-ca`, and the certificate must name the host connected to. This is
//!   the mode to use across a network.
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the web PKI roots bundled in
//! the binary (the same list the tablets use). `verify-ca` and `verify-full` without it are
//! refused at start, so a typo never turns into an unchecked connection. The crypto provider is
//! ring, as everywhere else.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Result, StorageError};

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Not checked (encryption only).
    None,
    /// Chains to a trusted root; any host name.
    Ca,
    /// Chains to a trusted root and names the host.
    Full,
}

/// A database URL made ready for tokio-postgres.
pub struct PgConnection {
    /// The configuration, `ssl_mode` set.
    pub config: tokio_postgres::Config,
    /// The TLS connector (unused when `ssl_mode` is `Disable`).
    pub tls: MakeRustlsConnect,
    /// How the certificate is checked.
    pub verification: Verification,
}

/// Splits the TLS settings out of `url` and builds the connector they ask for.
pub fn parse(url: &str) -> Result<PgConnection> {
    let (rest, sslmode, rootcert) = take_tls_settings(url);
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| StorageError::backend(format!("postgres: bad url: {e}")))?;
    let (mode, verification) = match sslmode.as_deref() {
        None | Some("prefer") | Some("allow") => (SslMode::Prefer, Verification::None),
        Some("disable") => (SslMode::Disable, Verification::None),
        Some("require") if rootcert.is_some() => (SslMode::Require, Verification::Ca),
        Some("require") => (SslMode::Require, Verification::None),
        Some("verify-ca") => (SslMode::Require, Verification::Ca),
        Some("verify-full") => (SslMode::Require, Verification::Full),
        Some(other) => {
            return Err(StorageError::backend(format!(
                "postgres: sslmode={other} is not one of disable, allow, prefer, require, \
                 verify-ca, verify-full"
            )));
        }
    };
    config.ssl_mode(mode);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        Verification::None => Arc::new(Unchecked(provider.clone())),
        Verification::Ca | Verification::Full => {
            let Some(rootcert) = rootcert.as_deref() else {
                return Err(StorageError::backend(
                    "postgres: sslmode=verify-ca and verify-full need sslrootcert=FILE (or \
                     sslrootcert=system for the bundled web roots)",
                ));
            };
            let chain = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(rootcert)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| StorageError::backend(format!("postgres TLS: {e}")))?;
            if verification == Verification::Full {
                chain
            } else {
                Arc::new(AnyHostName(chain))
            }
        }
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StorageError::backend(format!("postgres TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(PgConnection {
        config,
        tls: MakeRustlsConnect::new(tls),
        verification,
    })
}

/// `url` without `sslmode` and `sslrootcert`, and their values.
fn take_tls_settings(url: &str) -> (String, Option<String>, Option<String>) {
    let mut sslmode = None;
    let mut rootcert = None;
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            sslmode = Some(value.to_owned());
            true
        }
        "sslrootcert" => {
            rootcert = Some(value.to_owned());
            true
        }
        _ => false,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                        !take(key, &percent_decode(value))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_owned(),
        }
    } else {
        url.split_whitespace()
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(key.trim(), value.trim_matches('\''))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, sslmode, rootcert)
}

/// `%XX` escapes of a URL query value (a path may hold `%2F`); anything malformed stays as is.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn roots(rootcert: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    if rootcert == "system" {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    }
    let bad = |reason: String| {
        StorageError::backend(format!("postgres sslrootcert {rootcert}: {reason}"))
    };
    let certs = CertificateDer::pem_file_iter(rootcert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    Ok(roots)
}

/// `verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without `sslrootcert`: encryption, no certificate check (the
/// handshake's signatures are still verified, so the session is with the key's holder).
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_taken_out_of_urls_and_key_value_strings() {
        let (rest, mode, root) = take_tls_settings(
            "postgres://u@db.example.vn:5432/cs?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5",
        );
        assert_eq!(rest, "postgres://u@db.example.vn:5432/cs?connect_timeout=5");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, mode, root) =
            take_tls_settings("host=db user=u sslmode=require sslrootcert='/etc/ca.pem'");
        assert_eq!(rest, "host=db user=u");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, mode, root) = take_tls_settings("postgres://u@h/db");
        assert_eq!(
            (rest.as_str(), mode, root),
            ("postgres://u@h/db", None, None)
        );
    }

    #[test]
    fn modes_map_to_libpq_meanings_and_a_verifying_mode_needs_a_root() {
        let verification =
            |url: &str| parse(url).map(|c| (c.config.get_ssl_mode(), c.verification));
        assert_eq!(
            verification("postgres://u@h/db").ok(),
            Some((SslMode::Prefer, Verification::None))
        );
        assert_eq!(
            verification("postgres://u@h/db?sslmode=disable").ok(),
            Some((SslMode::Disable, Verification::None))
        );
        assert_eq!(
            verification("postgres://u@h/db?sslmode=require").ok(),
            Some((SslMode::Require, Verification::None))
        );
        assert_eq!(
            verification("postgres://u@h/db?sslmode=verify-full&sslrootcert=system").ok(),
            Some((SslMode::Require, Verification::Full))
        );
        assert_eq!(
            verification("postgres://u@h/db?sslmode=require&sslrootcert=system").ok(),
            Some((SslMode::Require, Verification::Ca))
        );
        assert!(verification("postgres://u@h/db?sslmode=verify-full").is_err());
        assert!(verification("postgres://u@h/db?sslmode=verify-ca").is_err());
        assert!(verification("postgres://u@h/db?sslmode=sometimes").is_err());
        assert!(
            verification("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent").is_err()
        );
    }
}
