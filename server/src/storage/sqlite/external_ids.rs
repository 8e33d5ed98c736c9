//! The external ids of imported dossiers, SQLite side (see
//! [`ServerStorage::claim_external_ids`]): claims are inserted in one IMMEDIATE transaction,
//! and each claim's winner read back in it, so two pushes claiming one key at once agree on
//! its first record.
//!
//! [`ServerStorage::claim_external_ids`]: crate::storage::ServerStorage::claim_external_ids

use communesync_core::record::{DeviceId, RecordId};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::SqliteStorage;
use crate::storage::{ExternalIdClaim, Result, device_id, record_id};

impl SqliteStorage {
    pub(super) async fn claim_keys(
        &self,
        device: DeviceId,
        claims: Vec<ExternalIdClaim>,
        now: i64,
    ) -> Result<Vec<RecordId>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut lost = Vec::new();
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO external_ids (commune, external_id, doc, device, recorded_at)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (commune, external_id) DO NOTHING",
                )?;
                let mut holder = tx.prepare_cached(
                    "SELECT doc FROM external_ids WHERE commune = ?1 AND external_id = ?2",
                )?;
                for claim in &claims {
                    insert.execute(params![
                        claim.commune,
                        claim.external_id,
                        claim.doc.as_bytes().as_slice(),
                        device.0.as_bytes().as_slice(),
                        now
                    ])?;
                    let doc: Vec<u8> = holder
                        .query_row(params![claim.commune, claim.external_id], |row| row.get(0))?;
                    if record_id(&doc)? != claim.doc {
                        lost.push(claim.doc);
                    }
                }
            }
            tx.commit()?;
            Ok(lost)
        })
        .await
    }

    pub(super) async fn lookup_key(
        &self,
        commune: String,
        external_id: String,
    ) -> Result<Option<(RecordId, DeviceId)>> {
        self.read(move |conn| {
            let row: Option<(Vec<u8>, Vec<u8>)> = conn
                .prepare_cached(
                    "SELECT doc, device FROM external_ids WHERE commune = ?1 AND external_id = ?2",
                )?
                .query_row(params![commune, external_id], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?;
            row.map(|(doc, device)| Ok((record_id(&doc)?, device_id(&device)?)))
                .transpose()
        })
        .await
    }
}
