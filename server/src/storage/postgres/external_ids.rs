//! The external ids of imported dossiers, PostgreSQL side (see
//! [`ServerStorage::claim_external_ids`]): claims are inserted in one transaction, in key
//! order (so two transactions claiming keys at once never deadlock), and each claim's winner
//! is read back after its insert, which waits for a concurrent insert of the same key to
//! commit or roll back: replicas agree on the first record.
//!
//! [`ServerStorage::claim_external_ids`]: crate::storage::ServerStorage::claim_external_ids

use communesync_core::record::{DeviceId, RecordId};

use super::PostgresStorage;
use crate::storage::{ExternalIdClaim, Result, device_id, record_id};

impl PostgresStorage {
    pub(super) async fn claim_keys(
        &self,
        device: DeviceId,
        claims: Vec<ExternalIdClaim>,
        now: i64,
    ) -> Result<Vec<RecordId>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO external_ids (commune, external_id, doc, device, recorded_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (commune, external_id) DO NOTHING",
            )
            .await?;
        let holder = tx
            .prepare_cached("SELECT doc FROM external_ids WHERE commune = $1 AND external_id = $2")
            .await?;
        let device_bytes = device.0.as_bytes().as_slice();
        let mut sorted: Vec<&ExternalIdClaim> = claims.iter().collect();
        sorted.sort_unstable();
        let mut lost = std::collections::HashSet::new();
        for claim in sorted {
            tx.execute(
                &insert,
                &[
                    &claim.commune,
                    &claim.external_id,
                    &claim.doc.as_bytes().as_slice(),
                    &device_bytes,
                    &now,
                ],
            )
            .await?;
            let row = tx
                .query_one(&holder, &[&claim.commune, &claim.external_id])
                .await?;
            let doc: &[u8] = row.try_get(0)?;
            if record_id(doc)? != claim.doc {
                lost.insert(claim.doc);
            }
        }
        tx.commit().await?;
        Ok(claims
            .iter()
            .filter(|c| lost.contains(&c.doc))
            .map(|c| c.doc)
            .collect())
    }

    pub(super) async fn lookup_key(
        &self,
        commune: String,
        external_id: String,
    ) -> Result<Option<(RecordId, DeviceId)>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT doc, device FROM external_ids WHERE commune = $1 AND external_id = $2",
                &[&commune, &external_id],
            )
            .await?;
        row.map(|row| {
            let doc: &[u8] = row.try_get(0)?;
            let device: &[u8] = row.try_get(1)?;
            Ok((record_id(doc)?, device_id(device)?))
        })
        .transpose()
    }
}
