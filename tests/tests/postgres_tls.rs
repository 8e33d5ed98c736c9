//! The server's connections to PostgreSQL over TLS, against a real cluster started for the test
//! (`scripts/toolchains/postgres.sh` with a certificate from a CA made here): `verify-full`
//! connects encrypted with the right CA and host, and refuses another CA or another host name;
//! `verify-ca` accepts another host name; `require` encrypts without a root; `disable` does not.
//! Runs where PostgreSQL tests run (`COMMUNESYNC_TEST_DATABASE_URL` set; the shared cluster
//! itself is not touched).

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use communesync_server::storage::PostgresStorage;
use communesync_server::storage::pg_tls;
use communesync_tests::tls::TestCa;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/toolchains/postgres.sh")
}

/// A private cluster serving TLS; stopped when dropped.
struct TlsCluster {
    data: PathBuf,
    /// `postgres://user@127.0.0.1:PORT/communesync`.
    url: String,
    _dir: tempfile::TempDir,
}

impl TlsCluster {
    fn start(ca: &TestCa) -> TlsCluster {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // As root the cluster runs as another user, which must reach the data directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (cert, key) = ca
            .server_cert(&["127.0.0.1"])
            .unwrap()
            .write(dir.path(), "pg")
            .unwrap();
        let data = dir.path().join("pg");
        let output = Command::new(script())
            .arg("start")
            .arg(&data)
            .env("COMMUNESYNC_PG_SSL_CERT", &cert)
            .env("COMMUNESYNC_PG_SSL_KEY", &key)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let mut cluster = TlsCluster {
            data,
            url: String::new(),
            _dir: dir,
        };
        assert!(output.status.success(), "postgres.sh start failed");
        cluster.url = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("DATABASE_URL="))
            .unwrap()
            .to_owned();
        cluster
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(&self.data)
            .stdout(Stdio::null())
            .status();
    }
}

/// Connects as the server would and says whether the session is encrypted.
async fn encrypted(url: &str) -> Result<bool, String> {
    let connection = pg_tls::parse(url).map_err(|e| e.to_string())?;
    let (client, driver) = connection
        .config
        .connect(connection.tls)
        .await
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    let driver = tokio::spawn(driver);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    driver.abort();
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_use_tls_as_the_url_asks() {
    if std::env::var_os("COMMUNESYNC_TEST_DATABASE_URL").is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the PostgreSQL tests: set COMMUNESYNC_TEST_DATABASE_URL"
        );
        eprintln!("note: COMMUNESYNC_TEST_DATABASE_URL unset, PostgreSQL TLS skipped");
        return;
    }
    let ca = TestCa::new("database CA").unwrap();
    let cluster = TlsCluster::start(&ca);
    let roots = tempfile::tempdir().unwrap();
    let ca_file = roots.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let other_file = roots.path().join("other.pem");
    std::fs::write(&other_file, TestCa::new("another CA").unwrap().cert_pem).unwrap();
    let url = &cluster.url;
    let ca = ca_file.display();
    let other = other_file.display();

    let full = format!("{url}?sslmode=verify-full&sslrootcert={ca}");
    assert_eq!(encrypted(&full).await, Ok(true));
    // The whole storage over it: migrations, a write and a read.
    let storage = PostgresStorage::connect(&full).await.unwrap();
    drop(storage);

    // Another CA: refused, whatever the host.
    let err = encrypted(&format!("{url}?sslmode=verify-full&sslrootcert={other}"))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(
        PostgresStorage::connect(&format!("{url}?sslmode=verify-ca&sslrootcert={other}"))
            .await
            .is_err()
    );
    // Another host name (the certificate names 127.0.0.1 only): refused by verify-full,
    // accepted by verify-ca.
    let by_name = url.replace("127.0.0.1", "localhost");
    let err = encrypted(&format!("{by_name}?sslmode=verify-full&sslrootcert={ca}"))
        .await
        .unwrap_err();
    assert!(err.contains("NotValidForName"), "{err}");
    assert_eq!(
        encrypted(&format!("{by_name}?sslmode=verify-ca&sslrootcert={ca}")).await,
        Ok(true)
    );
    // require: encrypted, not checked; disable: plaintext; no sslmode: TLS when offered.
    assert_eq!(encrypted(&format!("{url}?sslmode=require")).await, Ok(true));
    assert_eq!(
        encrypted(&format!("{url}?sslmode=disable")).await,
        Ok(false)
    );
    assert_eq!(encrypted(url).await, Ok(true));
}
