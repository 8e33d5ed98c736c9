//! Which servers the sync client trusts: TLS settings that work the same on Android, iOS and
//! Linux, with no platform hook.
//!
//! Contract: [`client_config`] turns a [`ServerTrust`] into a rustls `ClientConfig` (ring as the
//! crypto provider, TLS 1.2 and 1.3) whose trust is decided here and nowhere else:
//! - **No CA and no pin configured**: the server's chain must end at one of the web PKI roots
//!   bundled in the app (`webpki-roots`, Mozilla's list at build time), as for a public website.
//! - **Province CAs given** ([`ServerTrust::ca_pem`]): only those CAs are trusted and the bundled
//!   web roots are not: a province's sync server is not a public website, and a certificate
//!   some public CA issued for its name (by mistake or under pressure) must not be accepted.
//!   Several CAs may be given, so that a province rotates its CA without a flag day: add the
//!   new CA to the app's configuration, switch the server's certificate, remove the old CA.
//! - **Pinned keys given** ([`ServerTrust::pinned_keys`]): on top of the chain check above, one
//!   of the certificates the server presents (its own or an intermediate it sends) must carry a
//!   public key whose SHA-256 over the DER `SubjectPublicKeyInfo` is pinned. Pins narrow what is
//!   trusted, they never replace the chain check (expiry and host name still apply). Several
//!   pins may be given, for the same add / switch / remove rotation.
//!
//! Always: the host name of the URL must be in the certificate, and the certificate must be
//! valid at the tablet's clock. A refusal surfaces as an error that [`untrusted_reason`] finds
//! in the transport's error chain and describes (wrong CA, expired or not yet valid, wrong host
//! name, no pinned key), so that the sync reports "the server is not trusted" and not "offline".
//! A bad configuration (a PEM with no certificate, a pin that is not a base64 SHA-256) is an
//! error at construction, never a silently weaker trust.
//!
//! TLS sessions are resumed: one `ClientConfig` (and so one in-memory session cache) serves
//! every connection of the transport built from it, so a tablet on 2G pays a full handshake
//! once, not at each sync.

use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// TLS sessions remembered per transport, for resumption: a tablet talks to one server.
const SESSION_CACHE_SIZE: usize = 32;

/// The trust settings of a province (from the app's configuration). The default trusts the
/// bundled web PKI roots. See the module documentation for the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerTrust {
    /// The province's CA certificates, PEM (each string may hold several certificates). When
    /// any is given, only these CAs are trusted.
    pub ca_pem: Vec<String>,
    /// Pinned public keys: base64 of the SHA-256 of a DER `SubjectPublicKeyInfo`, optionally
    /// prefixed `sha256/` (the form `openssl ... | base64` and Android's pin-set produce).
    pub pinned_keys: Vec<String>,
}

/// A trust configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustConfigError {
    /// A CA entry holds no certificate, or one that does not parse.
    #[error("CA certificate #{index}: {reason}")]
    BadCa {
        /// Position in [`ServerTrust::ca_pem`], from 1.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A pin is not the base64 of 32 bytes.
    #[error("pinned key #{index} {pin:?} is not a base64 SHA-256 (44 characters)")]
    BadPin {
        /// Position in [`ServerTrust::pinned_keys`], from 1.
        index: usize,
        /// The pin as given.
        pin: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// The crypto provider of the client (and of the server, so that both are built and tested
/// with the same primitives): ring.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration for `trust`. Build it once per transport and share it: its
/// session cache is what lets later connections resume.
pub fn client_config(trust: &ServerTrust) -> Result<rustls::ClientConfig, TrustConfigError> {
    let provider = crypto_provider();
    let mut roots = RootCertStore::empty();
    if trust.ca_pem.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        for (i, pem) in trust.ca_pem.iter().enumerate() {
            let index = i + 1;
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TrustConfigError::BadCa {
                    index,
                    reason: format!("not PEM: {e}"),
                })?;
            if certs.is_empty() {
                return Err(TrustConfigError::BadCa {
                    index,
                    reason: "no CERTIFICATE block".into(),
                });
            }
            for cert in certs {
                roots.add(cert).map_err(|e| TrustConfigError::BadCa {
                    index,
                    reason: e.to_string(),
                })?;
            }
        }
    }
    let pins = parse_pins(&trust.pinned_keys)?;
    let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TrustConfigError::Tls(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = if pins.is_empty() {
        chain
    } else {
        Arc::new(PinningVerifier { chain, pins })
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TrustConfigError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = Resumption::in_memory_sessions(SESSION_CACHE_SIZE);
    Ok(config)
}

fn parse_pins(pins: &[String]) -> Result<Vec<[u8; 32]>, TrustConfigError> {
    pins.iter()
        .enumerate()
        .map(|(i, pin)| {
            let bad = || TrustConfigError::BadPin {
                index: i + 1,
                pin: pin.clone(),
            };
            let encoded = pin.trim();
            let encoded = encoded.strip_prefix("sha256/").unwrap_or(encoded);
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| bad())?;
            <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| bad())
        })
        .collect()
}

/// The pin of a certificate (DER): base64 of the SHA-256 of its `SubjectPublicKeyInfo`, the
/// form [`ServerTrust::pinned_keys`] takes.
pub fn key_pin(cert_der: &[u8]) -> Result<String, TrustConfigError> {
    let der = CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| TrustConfigError::BadCa {
        index: 1,
        reason: format!("{e:?}"),
    })?;
    Ok(base64::engine::general_purpose::STANDARD.encode(spki_sha256(&cert)))
}

fn spki_sha256(cert: &webpki::EndEntityCert<'_>) -> [u8; 32] {
    Sha256::digest(cert.subject_public_key_info().as_ref()).into()
}

/// No presented certificate carries a pinned key.
#[derive(Debug)]
struct PinMismatch;

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("none of the server's certificates carries a pinned key")
    }
}

impl std::error::Error for PinMismatch {}

/// The chain check, then the pins.
#[derive(Debug)]
struct PinningVerifier {
    chain: Arc<WebPkiServerVerifier>,
    pins: Vec<[u8; 32]>,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let pinned = std::iter::once(end_entity)
            .chain(intermediates)
            .filter_map(|der| webpki::EndEntityCert::try_from(der).ok())
            .any(|cert| self.pins.contains(&spki_sha256(&cert)));
        if pinned {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Why the server was not trusted, if `err` (or an error in its source chain) is a refusal of
/// the server's certificate; `None` for every other failure (no network, reset, timeout).
pub fn untrusted_reason(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(err);
    // Bounded: error chains are a handful deep; a cyclic one must not hang the client.
    for _ in 0..32 {
        let e = current?;
        if let Some(rustls::Error::InvalidCertificate(cert)) = e.downcast_ref::<rustls::Error>() {
            return Some(describe(cert));
        }
        // An `io::Error`'s `source()` skips the error it wraps (hyper-rustls wraps rustls's
        // error in one io::Error, hyper-util in another): descend into it explicitly.
        current = match e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

fn describe(err: &CertificateError) -> String {
    match err {
        CertificateError::UnknownIssuer => "the server's certificate is not signed by a trusted \
             authority (the province's CA from the configuration, or a public one when none is \
             configured)"
            .into(),
        CertificateError::Expired => {
            "the server's certificate has expired (or this tablet's clock is wrong)".into()
        }
        CertificateError::ExpiredContext { time, not_after } => format!(
            "the server's certificate expired on {} (this tablet's clock reads {}; if that is \
             wrong, set the clock)",
            date(not_after),
            date(time)
        ),
        CertificateError::NotValidYet => {
            "the server's certificate is not valid yet (or this tablet's clock is wrong)".into()
        }
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "the server's certificate is valid only from {} (this tablet's clock reads {}; if \
             that is wrong, set the clock)",
            date(not_before),
            date(time)
        ),
        CertificateError::NotValidForName => {
            "the server's certificate is for another host name than the server URL's".into()
        }
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "the server's certificate is for {} and not for {:?}, the server URL's host",
            if presented.is_empty() {
                "no host name".to_owned()
            } else {
                presented.join(", ")
            },
            expected.to_str()
        ),
        CertificateError::Revoked => "the server's certificate has been revoked".into(),
        CertificateError::Other(other) => format!("the server's certificate is refused: {other}"),
        other => format!("the server's certificate is refused: {other}"),
    }
}

fn date(at: &UnixTime) -> String {
    i64::try_from(at.as_secs())
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{}s after 1970", at.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_configuration_trusts_the_web_roots() {
        assert!(client_config(&ServerTrust::default()).is_ok());
    }

    #[test]
    fn bad_cas_and_pins_are_refused_not_ignored() {
        let no_cert = ServerTrust {
            ca_pem: vec!["just text".into()],
            ..ServerTrust::default()
        };
        assert!(matches!(
            client_config(&no_cert),
            Err(TrustConfigError::BadCa { index: 1, .. })
        ));
        let garbage = ServerTrust {
            ca_pem: vec!["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into()],
            ..ServerTrust::default()
        };
        assert!(matches!(
            client_config(&garbage),
            Err(TrustConfigError::BadCa { index: 1, .. })
        ));
        for pin in ["", "not base64!", "AAAA", "sha256/AAAA"] {
            let trust = ServerTrust {
                pinned_keys: vec![pin.into()],
                ..ServerTrust::default()
            };
            assert!(
                matches!(
                    client_config(&trust),
                    Err(TrustConfigError::BadPin { index: 1, .. })
                ),
                "{pin:?}"
            );
        }
        let good = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        for pin in [good.clone(), format!("sha256/{good}")] {
            let trust = ServerTrust {
                pinned_keys: vec![pin],
                ..ServerTrust::default()
            };
            assert!(client_config(&trust).is_ok());
        }
    }

    #[test]
    fn only_certificate_refusals_are_untrusted_server_errors() {
        let refused = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let reason = untrusted_reason(&refused).unwrap();
        assert!(
            reason.contains("not signed by a trusted authority"),
            "{reason}"
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(untrusted_reason(&reset), None);
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
        );
        assert_eq!(untrusted_reason(&alert), None);
    }
}
