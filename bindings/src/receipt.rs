//! Receipts for the apps: the signed receipt of an intake (its QR payload and what it states),
//! its A5 PDF, and the offline check of a scanned payload against the province's key list the
//! store holds. Store work runs off the caller's thread (Kotlin `suspend`, Swift `async`).

use communesync_core::receipt::{self, Receipt, SignedReceipt};
use communesync_core::record::RecordId;

use crate::engine::Engine;
use crate::error::CommuneSyncError;

type Result<T, E = CommuneSyncError> = std::result::Result<T, E>;

/// A paper listed on a receipt.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ReceiptPaperInfo {
    /// What it is.
    pub name: String,
    /// Copies received.
    pub copies: u32,
    /// Whether the original was shown.
    pub original: bool,
}

/// What a signed receipt states, with its QR payload.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ReceiptInfo {
    /// The QR payload (base45 text, at most 600 characters): print it as a QR code.
    pub payload: String,
    /// Dossier number (empty when the record has none).
    pub dossier_number: String,
    /// Record id.
    pub record_id: String,
    /// Commune code.
    pub commune_code: String,
    /// Procedure code.
    pub procedure_code: String,
    /// Catalogue version the procedure was taken from.
    pub procedure_version: u64,
    /// Applicant's name.
    pub applicant_name: String,
    /// Papers listed (the first ones when there were many).
    pub papers: Vec<ReceiptPaperInfo>,
    /// Papers left out of `papers` for room.
    pub papers_omitted: u32,
    /// Received time, ms since the epoch.
    pub received_at_ms: i64,
    /// Appointment date for the result, `YYYY-MM-DD`.
    pub due_date: String,
    /// Officer who received the dossier.
    pub officer: String,
    /// Device that signed.
    pub device_id: String,
    /// When it was signed, ms since the epoch.
    pub signed_at_ms: i64,
}

/// The verdict on a scanned receipt.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ReceiptVerdict {
    /// Whether the receipt is genuine.
    pub valid: bool,
    /// Why not: `malformed`, `unknown_device`, `key_revoked`, `key_replaced`, `bad_signature`.
    pub code: Option<String>,
    /// Readable reason.
    pub message: Option<String>,
    /// What the genuine receipt states.
    pub receipt: Option<ReceiptInfo>,
}

fn info(receipt: Receipt, payload: String) -> ReceiptInfo {
    ReceiptInfo {
        due_date: receipt
            .due_date()
            .map_or_else(String::new, |d| d.to_string()),
        payload,
        dossier_number: receipt.dossier_number,
        record_id: receipt.record_id.to_string(),
        commune_code: receipt.commune_code,
        procedure_code: receipt.procedure_code,
        procedure_version: receipt.procedure_version,
        applicant_name: receipt.applicant_name,
        papers: receipt
            .papers
            .into_iter()
            .map(|p| ReceiptPaperInfo {
                name: p.name,
                copies: p.copies,
                original: p.original,
            })
            .collect(),
        papers_omitted: receipt.papers_omitted,
        received_at_ms: receipt.received_at,
        officer: receipt.officer,
        device_id: receipt.device.to_string(),
        signed_at_ms: receipt.signed_at,
    }
}

impl From<SignedReceipt> for ReceiptInfo {
    fn from(signed: SignedReceipt) -> Self {
        info(signed.receipt, signed.payload)
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl Engine {
    /// The signed receipt of application `record_id` (issued at the first call, the same one
    /// at every reprint).
    pub async fn issue_receipt(&self, record_id: String) -> Result<ReceiptInfo> {
        let id: RecordId = record_id.parse()?;
        self.with_store(move |store| Ok(store.issue_receipt(id)?.into()))
            .await
    }

    /// The receipt of application `record_id` as a one-page A5 PDF (Vietnamese text, QR code).
    pub async fn receipt_pdf(&self, record_id: String) -> Result<Vec<u8>> {
        let id: RecordId = record_id.parse()?;
        self.with_store(move |store| Ok(store.receipt_pdf(id)?))
            .await
    }

    /// Writes the receipt PDF of application `record_id` to `path`.
    pub async fn write_receipt_pdf(&self, record_id: String, path: String) -> Result<()> {
        let pdf = self.receipt_pdf(record_id).await?;
        tokio::task::spawn_blocking(move || std::fs::write(&path, pdf))
            .await
            .map_err(|e| CommuneSyncError::invalid(format!("receipt task: {e}")))?
            .map_err(|e| CommuneSyncError::invalid(format!("writing the receipt: {e}")))
    }

    /// Verifies a scanned receipt payload offline, against the province's key list this store
    /// holds (kept current by sync). A refused receipt is a verdict, not an error.
    pub async fn verify_receipt(&self, payload: String) -> Result<ReceiptVerdict> {
        self.with_store(move |store| {
            Ok(match store.verify_receipt(&payload)? {
                Ok(receipt) => ReceiptVerdict {
                    valid: true,
                    code: None,
                    message: None,
                    receipt: Some(info(receipt, payload)),
                },
                Err(refusal) => ReceiptVerdict {
                    valid: false,
                    code: Some(refusal.code().to_owned()),
                    message: Some(refusal.to_string()),
                    receipt: None,
                },
            })
        })
        .await
    }

    /// This device's public key (64 hex digits), registered at enrollment.
    pub async fn device_public_key(&self) -> Result<String> {
        self.with_store(|store| Ok(store.public_key()?.to_hex()))
            .await
    }
}

/// Most characters of a receipt's QR payload.
#[uniffi::export]
pub fn receipt_payload_max_chars() -> u32 {
    receipt::MAX_PAYLOAD_BYTES as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::types::EngineConfig;

    fn engine(runtime: &tokio::runtime::Runtime, dir: &std::path::Path, name: &str) -> Arc<Engine> {
        runtime
            .block_on(Engine::open(EngineConfig {
                store_path: dir.join(name).to_string_lossy().into_owned(),
                encryption_key: vec![7; 32],
                server_url: "http://127.0.0.1:9".into(),
                credential: None,
                app_version: None,
                background_policy: None,
                trusted_ca_pem: Vec::new(),
                pinned_keys: Vec::new(),
            }))
            .unwrap()
    }

    #[test]
    fn one_engine_issues_a_receipt_another_verifies_it_offline_and_refuses_an_altered_one() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let a = engine(&runtime, dir.path(), "a.db");
        let b = engine(&runtime, dir.path(), "b.db");
        let id = {
            let mut store = a.store.lock().unwrap();
            store
                .import_catalogue(&communesync_core::sample::SampleData::catalogue())
                .unwrap();
            let new = communesync_core::sample::SampleData::new(1).application("C1", None);
            store
                .create_application("can.bo", new)
                .unwrap()
                .id
                .to_string()
        };
        let receipt = runtime.block_on(a.issue_receipt(id.clone())).unwrap();
        assert!(receipt.payload.len() <= 600);
        assert_eq!(
            runtime.block_on(a.issue_receipt(id.clone())).unwrap(),
            receipt
        );
        let pdf = runtime.block_on(a.receipt_pdf(id.clone())).unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
        // B learns A's key (what sync brings), then verifies offline.
        let verdict = runtime
            .block_on(b.verify_receipt(receipt.payload.clone()))
            .unwrap();
        assert_eq!(verdict.code.as_deref(), Some("unknown_device"));
        let (device, public_key) = {
            let mut store = a.store.lock().unwrap();
            (store.device_id(), store.public_key().unwrap())
        };
        let entry = communesync_core::keys::DeviceKeyEntry {
            device,
            commune: "C1".into(),
            public_key,
            valid_from: 0,
            valid_until: None,
            revoked_at: None,
            version: 1,
        };
        b.store
            .lock()
            .unwrap()
            .apply_device_keys(&[entry], 1)
            .unwrap();
        let verdict = runtime
            .block_on(b.verify_receipt(receipt.payload.clone()))
            .unwrap();
        assert!(verdict.valid, "{verdict:?}");
        assert_eq!(verdict.receipt.unwrap().record_id, id);
        let mut altered = receipt.payload.into_bytes();
        altered[30] = if altered[30] == b'A' { b'B' } else { b'A' };
        let verdict = runtime
            .block_on(b.verify_receipt(String::from_utf8(altered).unwrap()))
            .unwrap();
        assert!(!verdict.valid);
        assert!(matches!(
            verdict.code.as_deref(),
            Some("bad_signature" | "malformed")
        ));
    }
}
