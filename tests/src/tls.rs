//! A test certificate authority, made fresh by each test: the province's CA in the HTTPS twins
//! of the end-to-end tests, and the certificates a server must be refused with (expired, for
//! another host, from another CA).

use std::path::{Path, PathBuf};
use std::time::Duration;

use communesync_core::sync::ServerTrust;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use time::OffsetDateTime;

/// A CA that signs server certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM: what a province puts in the tablets' configuration.
    pub cert_pem: String,
}

/// A server certificate and its key, PEM.
#[derive(Clone)]
pub struct ServerCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// Its DER, for pins.
    pub cert_der: Vec<u8>,
}

impl ServerCert {
    /// Writes `name.crt` and `name.key` in `dir` (replacing them) and returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem)?;
        std::fs::write(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

impl TestCa {
    /// A new CA named `name`, valid from yesterday for ten years.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(86_400);
        params.not_after = now + Duration::from_secs(10 * 365 * 86_400);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A server certificate for `hosts` (names or IP addresses) valid from `not_before` to
    /// `not_after`.
    pub fn server_cert_valid(
        &self,
        hosts: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> anyhow::Result<ServerCert> {
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(
            DnType::CommonName,
            hosts.first().copied().unwrap_or("server"),
        );
        params.not_before = not_before;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        })
    }

    /// A server certificate for `hosts`, valid from yesterday for a year.
    pub fn server_cert(&self, hosts: &[&str]) -> anyhow::Result<ServerCert> {
        let now = OffsetDateTime::now_utc();
        self.server_cert_valid(
            hosts,
            now - Duration::from_secs(86_400),
            now + Duration::from_secs(365 * 86_400),
        )
    }

    /// A certificate for `hosts` that expired yesterday.
    pub fn expired_server_cert(&self, hosts: &[&str]) -> anyhow::Result<ServerCert> {
        let now = OffsetDateTime::now_utc();
        self.server_cert_valid(
            hosts,
            now - Duration::from_secs(30 * 86_400),
            now - Duration::from_secs(86_400),
        )
    }

    /// The tablets' trust in this CA alone.
    pub fn trust(&self) -> ServerTrust {
        ServerTrust {
            ca_pem: vec![self.cert_pem.clone()],
            pinned_keys: Vec::new(),
        }
    }
}
