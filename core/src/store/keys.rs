//! The device's signing key, the province's key list and the receipts issued here.
//!
//! The key pair is made on first use from the operating system's random source and kept in the
//! store (encrypted with the store's key, which the platform keystore protects); nothing reads
//! the secret out of this module. The key list is what the server sends with the reference data
//! (a delta after the version held), and this device's own key always counts as known, so a
//! receipt it printed verifies here before any sync. A receipt is issued once per record and
//! kept: a reprint gives the citizen the same signed payload.

use rusqlite::{OptionalExtension, params};

use super::DeviceStore;
use crate::keys::push::{self, PushSignature};
use crate::keys::{DeviceKeyEntry, DeviceSigningKey, KeyList, PublicKey, SignatureRefusal};
use crate::receipt::{self, Receipt, SignedReceipt};
use crate::record::{DeviceId, RecordId};
use crate::{Error, Result};

const META_DEVICE_KEYS_VERSION: &str = "device_keys_version";
const META_PUSH_COUNTER: &str = "push_counter";

impl DeviceStore {
    /// This device's signing key, made (and kept) on first use.
    pub fn signing_key(&mut self) -> Result<DeviceSigningKey> {
        let stored: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT secret FROM device_key WHERE id = 1", [], |row| {
                row.get(0)
            })
            .optional()?;
        if let Some(secret) = stored {
            let secret = zeroize::Zeroizing::new(secret);
            return DeviceSigningKey::from_secret(&secret);
        }
        let key = DeviceSigningKey::generate()?;
        let secret = key.secret_bytes();
        self.conn.execute(
            "INSERT INTO device_key (id, secret, public_key, created_at) VALUES (1, ?1, ?2, ?3)",
            params![
                secret.as_slice(),
                key.public_key().0.as_slice(),
                self.now_ms()
            ],
        )?;
        Ok(key)
    }

    /// Installs `key` as this device's signing key, replacing the previous one: at
    /// re-enrollment, once the server has registered it (a key that was revoked is never
    /// registered again, so a tablet enrolled again after a revocation needs a new one).
    pub fn install_signing_key(&mut self, key: &DeviceSigningKey) -> Result<()> {
        let secret = key.secret_bytes();
        self.conn.execute(
            "INSERT OR REPLACE INTO device_key (id, secret, public_key, created_at)
             VALUES (1, ?1, ?2, ?3)",
            params![
                secret.as_slice(),
                key.public_key().0.as_slice(),
                self.now_ms()
            ],
        )?;
        Ok(())
    }

    /// This device's public key (what enrollment registers).
    pub fn public_key(&mut self) -> Result<PublicKey> {
        Ok(self.signing_key()?.public_key())
    }

    /// The version of the province's key list this device holds (0: none yet).
    pub fn device_keys_version(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [META_DEVICE_KEYS_VERSION],
                |row| row.get::<_, i64>(0),
            )
            .optional()?
            .map_or(0, |v| u64::try_from(v).unwrap_or(0)))
    }

    /// Applies what changed in the province's key list after [`Self::device_keys_version`]
    /// (each entry replaces the one of the same device and key), up to `version`.
    pub fn apply_device_keys(&mut self, entries: &[DeviceKeyEntry], version: u64) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT OR REPLACE INTO province_keys
                     (device, public_key, commune, valid_from, valid_until, revoked_at, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for e in entries {
                upsert.execute(params![
                    e.device.0.as_bytes().as_slice(),
                    e.public_key.0.as_slice(),
                    e.commune,
                    e.valid_from,
                    e.valid_until,
                    e.revoked_at,
                    i64::try_from(e.version).unwrap_or(i64::MAX),
                ])?;
            }
            let held: i64 = tx
                .query_row(
                    "SELECT value FROM meta WHERE key = ?1",
                    [META_DEVICE_KEYS_VERSION],
                    |row| row.get(0),
                )
                .optional()?
                .unwrap_or(0);
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![
                    META_DEVICE_KEYS_VERSION,
                    held.max(i64::try_from(version).unwrap_or(i64::MAX))
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The province's key list as this device holds it, with this device's own key added when
    /// the list does not have it yet (a receipt printed here verifies here before any sync).
    pub fn key_list(&mut self) -> Result<KeyList> {
        let own = self.public_key()?;
        let device = self.device_id();
        let mut stmt = self.conn.prepare_cached(
            "SELECT device, public_key, commune, valid_from, valid_until, revoked_at, version
             FROM province_keys",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, Vec<u8>>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, Option<i64>>(4)?,
                row.get::<_, Option<i64>>(5)?,
                row.get::<_, i64>(6)?,
            ))
        })?;
        let mut entries = Vec::new();
        for row in rows {
            let (dev, key, commune, valid_from, valid_until, revoked_at, version) = row?;
            let (Ok(dev), Some(public_key)) =
                (uuid::Uuid::from_slice(&dev), PublicKey::from_slice(&key))
            else {
                continue;
            };
            entries.push(DeviceKeyEntry {
                device: DeviceId(dev),
                commune,
                public_key,
                valid_from,
                valid_until,
                revoked_at,
                version: u64::try_from(version).unwrap_or(0),
            });
        }
        drop(stmt);
        if !entries
            .iter()
            .any(|e| e.device == device && e.public_key == own)
        {
            entries.push(DeviceKeyEntry {
                device,
                commune: self.enrolled_commune().unwrap_or_default().to_owned(),
                public_key: own,
                valid_from: 0,
                valid_until: None,
                revoked_at: None,
                version: 0,
            });
        }
        Ok(KeyList::new(entries, self.device_keys_version()?))
    }

    /// The signed receipt of application `id`: issued (built from the application, signed by
    /// this device, kept) on the first call, the same one on every later call.
    pub fn issue_receipt(&mut self, id: RecordId) -> Result<SignedReceipt> {
        if let Some(payload) = self.stored_receipt(id)? {
            let keys = self.key_list()?;
            // Our own receipt: it verifies unless the store was tampered with.
            let receipt = receipt::verify_payload(&payload, &keys)
                .map_err(|e| Error::invalid("stored receipt", e.to_string()))?;
            return Ok(SignedReceipt { receipt, payload });
        }
        let application = self.get_application(id)?;
        let version = self.catalogue_version()?;
        let key = self.signing_key()?;
        let receipt =
            Receipt::of_application(&application, self.device_id(), version, self.now_ms());
        let signed = receipt::sign(&receipt, &key)?;
        self.conn.execute(
            "INSERT INTO receipts (record_id, dossier_number, payload, issued_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                id.as_bytes().as_slice(),
                signed.receipt.dossier_number,
                signed.payload,
                signed.receipt.signed_at
            ],
        )?;
        Ok(signed)
    }

    /// The record whose receipt carries `dossier_number`, if a receipt was issued here.
    pub fn receipt_record(&self, dossier_number: &str) -> Result<Option<RecordId>> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT record_id FROM receipts WHERE dossier_number = ?1 LIMIT 1",
                [dossier_number],
                |row| row.get(0),
            )
            .optional()?;
        Ok(bytes.and_then(|b| RecordId::from_slice(&b)))
    }

    /// The receipt of application `id` as an A5 PDF (issuing it first if needed).
    pub fn receipt_pdf(&mut self, id: RecordId) -> Result<Vec<u8>> {
        let signed = self.issue_receipt(id)?;
        receipt::pdf::render(&signed, None)
    }

    /// Verifies a scanned receipt payload offline against the key list this device holds.
    pub fn verify_receipt(
        &mut self,
        payload: &str,
    ) -> Result<std::result::Result<Receipt, SignatureRefusal>> {
        let keys = self.key_list()?;
        Ok(receipt::verify_payload(payload, &keys))
    }

    /// Signs a push of changes with `hashes` (request order): takes the next counter (the
    /// larger of the previous one plus one and the clock, so that a store restored from a backup
    /// still moves forward) and remembers the hashes as signed by this device, in one
    /// transaction.
    pub fn sign_push(&mut self, hashes: &[[u8; 32]]) -> Result<PushSignature> {
        let key = self.signing_key()?;
        let device = self.device_id();
        let now = self.now_ms();
        let tx = self.conn.transaction()?;
        let previous: i64 = tx
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [META_PUSH_COUNTER],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let counter = previous.saturating_add(1).max(now);
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![META_PUSH_COUNTER, counter],
        )?;
        {
            let mut signed =
                tx.prepare_cached("INSERT OR IGNORE INTO signed_changes (hash) VALUES (?1)")?;
            for hash in hashes {
                signed.execute([hash.as_slice()])?;
            }
        }
        tx.commit()?;
        Ok(push::sign_push(
            &key,
            device,
            u64::try_from(counter).unwrap_or(0),
            hashes,
        ))
    }

    /// Whether this device signed the change with `hash` in a push.
    pub(crate) fn signed_by_this_device(&self, hash: &[u8]) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM signed_changes WHERE hash = ?1")?
            .exists([hash])?)
    }

    fn stored_receipt(&self, id: RecordId) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT payload FROM receipts WHERE record_id = ?1",
                [id.as_bytes().as_slice()],
                |row| row.get(0),
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Applicant, NewApplication};
    use crate::store::StoreConfig;

    fn store(dir: &std::path::Path, name: &str) -> DeviceStore {
        let mut store = DeviceStore::open(StoreConfig::new(dir.join(name))).unwrap();
        store
            .import_catalogue(&[crate::catalogue::Procedure::new(
                "1.001193",
                "Đăng ký khai sinh",
                crate::catalogue::ProcessingTime::WorkingDays(3),
            )])
            .unwrap();
        store
    }

    fn intake(store: &mut DeviceStore) -> RecordId {
        store
            .create_application(
                "nguyen.van.an",
                NewApplication {
                    commune_code: "DB-MUONGPHANG".into(),
                    procedure_code: "1.001193".into(),
                    applicant: Applicant {
                        name: "Nguyễn Thị Hương".into(),
                        id_number: "011234567890".into(),
                        ..Applicant::default()
                    },
                    ..NewApplication::default()
                },
            )
            .unwrap()
            .id
    }

    #[test]
    fn the_key_is_made_once_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let first = store(dir.path(), "a.db").public_key().unwrap();
        assert_eq!(store(dir.path(), "a.db").public_key().unwrap(), first);
        assert_ne!(store(dir.path(), "b.db").public_key().unwrap(), first);
    }

    #[test]
    fn a_receipt_is_issued_once_and_verifies_on_another_tablet_with_the_key_list() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = store(dir.path(), "a.db");
        let mut b = store(dir.path(), "b.db");
        let id = intake(&mut a);
        let signed = a.issue_receipt(id).unwrap();
        assert_eq!(a.issue_receipt(id).unwrap(), signed);
        assert!(a.verify_receipt(&signed.payload).unwrap().is_ok());
        // B does not know A yet.
        assert_eq!(
            b.verify_receipt(&signed.payload)
                .unwrap()
                .unwrap_err()
                .code(),
            "unknown_device"
        );
        let entry = DeviceKeyEntry {
            device: a.device_id(),
            commune: "DB-MUONGPHANG".into(),
            public_key: a.public_key().unwrap(),
            valid_from: 0,
            valid_until: None,
            revoked_at: None,
            version: 5,
        };
        b.apply_device_keys(&[entry], 5).unwrap();
        assert_eq!(b.device_keys_version().unwrap(), 5);
        let receipt = b.verify_receipt(&signed.payload).unwrap().unwrap();
        assert_eq!(receipt.record_id, id);
        assert_eq!(receipt.applicant_name, "Nguyễn Thị Hương");
        let pdf = a.receipt_pdf(id).unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
    }
}
