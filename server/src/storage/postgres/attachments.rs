//! [`AttachmentStorage`] on PostgreSQL: chunks as `bytea` rows in the shared database, so every
//! replica serves every content; keyed by (commune, sha256). A chunk is stored under a row lock on its content, so two
//! replicas receiving the same chunk store it once.

use async_trait::async_trait;
use communesync_core::record::RecordId;
use deadpool_postgres::GenericClient;
use sha2::{Digest, Sha256};

use super::super::attachments::{
    AttachmentLimits, AttachmentStorage, ChunkRefusal, ChunkUpload, ContentState, Referenced,
    chunk_count,
};
use super::super::{Result, Scope, to_i64, to_u64};
use super::PostgresStorage;

async fn state(
    client: &impl GenericClient,
    commune: &str,
    sha256: &[u8; 32],
    lock: bool,
) -> Result<Option<ContentState>> {
    let sql = if lock {
        "SELECT size, chunk_size, received, complete FROM attachment_contents
         WHERE commune = $1 AND sha256 = $2 FOR UPDATE"
    } else {
        "SELECT size, chunk_size, received, complete FROM attachment_contents
         WHERE commune = $1 AND sha256 = $2"
    };
    let row = client
        .query_opt(sql, &[&commune, &sha256.as_slice()])
        .await?;
    Ok(match row {
        Some(row) => Some(ContentState {
            size: to_u64(row.try_get(0)?),
            chunk_size: u32::try_from(row.try_get::<_, i64>(1)?).unwrap_or(0),
            received: u32::try_from(row.try_get::<_, i64>(2)?).unwrap_or(0),
            complete: row.try_get(3)?,
        }),
        None => None,
    })
}

#[async_trait]
impl AttachmentStorage for PostgresStorage {
    async fn reference_attachment(
        &self,
        sha256: [u8; 32],
        commune: &str,
        doc: RecordId,
        size: u64,
        live: bool,
        now: i64,
    ) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO attachment_refs AS r (sha256, doc, commune, size, live, changed_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (sha256, doc) DO UPDATE SET live = EXCLUDED.live,
                     changed_at = EXCLUDED.changed_at
                 WHERE r.live AND NOT EXCLUDED.live",
                &[
                    &sha256.as_slice(),
                    &doc.as_bytes().as_slice(),
                    &commune,
                    &to_i64(size),
                    &live,
                    &now,
                ],
            )
            .await?;
        Ok(())
    }

    async fn attachment_referenced(
        &self,
        sha256: [u8; 32],
        scope: &Scope,
    ) -> Result<Option<Referenced>> {
        let client = self.client().await?;
        let commune = scope.commune();
        let row = client
            .query_opt(
                "SELECT r.commune, max(r.size)::bigint,
                        coalesce((SELECT c.complete FROM attachment_contents c
                                  WHERE c.commune = r.commune AND c.sha256 = r.sha256), FALSE)
                            AS whole
                 FROM attachment_refs r
                 WHERE r.sha256 = $1 AND r.live AND ($2::text IS NULL OR r.commune = $2)
                 GROUP BY r.commune, r.sha256
                 ORDER BY whole DESC, r.commune
                 LIMIT 1",
                &[&sha256.as_slice(), &commune],
            )
            .await?;
        Ok(match row {
            Some(row) => Some(Referenced {
                commune: row.try_get(0)?,
                size: to_u64(row.try_get(1)?),
            }),
            None => None,
        })
    }

    async fn attachment_state(
        &self,
        commune: &str,
        sha256: [u8; 32],
    ) -> Result<Option<ContentState>> {
        let client = self.client().await?;
        state(&client, commune, &sha256, false).await
    }

    async fn put_attachment_chunk(
        &self,
        upload: ChunkUpload<'_>,
        limits: &AttachmentLimits,
        now: i64,
    ) -> Result<std::result::Result<ContentState, ChunkRefusal>> {
        let sha256 = upload.sha256;
        let (size, chunk_size, index) = (upload.size, upload.chunk_size, upload.index);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let current = match state(&tx, upload.commune, &sha256, true).await? {
            Some(current) => current,
            None => {
                let device = upload.device.0.as_bytes().as_slice().to_vec();
                let by_device: i64 = tx
                    .query_one(
                        "SELECT coalesce(sum(size), 0)::bigint FROM attachment_contents
                         WHERE uploaded_by = $1",
                        &[&device],
                    )
                    .await?
                    .try_get(0)?;
                if to_u64(by_device).saturating_add(size) > limits.device_quota {
                    return Ok(Err(ChunkRefusal::Quota(format!(
                        "this device's attachments would pass {} bytes",
                        limits.device_quota
                    ))));
                }
                let by_commune: i64 = tx
                    .query_one(
                        "SELECT coalesce(sum(size), 0)::bigint FROM attachment_contents
                         WHERE commune = $1",
                        &[&upload.commune],
                    )
                    .await?
                    .try_get(0)?;
                if to_u64(by_commune).saturating_add(size) > limits.commune_quota {
                    return Ok(Err(ChunkRefusal::Quota(format!(
                        "the commune's attachments would pass {} bytes",
                        limits.commune_quota
                    ))));
                }
                tx.execute(
                    "INSERT INTO attachment_contents
                         (commune, sha256, size, chunk_size, received, complete, uploaded_by, created_at)
                     VALUES ($1, $2, $3, $4, 0, FALSE, $5, $6)
                     ON CONFLICT (commune, sha256) DO NOTHING",
                    &[
                        &upload.commune,
                        &sha256.as_slice(),
                        &to_i64(size),
                        &i64::from(chunk_size),
                        &device,
                        &now,
                    ],
                )
                .await?;
                // Another replica may have created it first: read it under the lock.
                match state(&tx, upload.commune, &sha256, true).await? {
                    Some(current) => current,
                    None => {
                        return Err(super::super::StorageError::backend(
                            "attachment content vanished",
                        ));
                    }
                }
            }
        };
        if current.complete {
            tx.commit().await?;
            return Ok(Ok(current));
        }
        let mut current = current;
        if current.size != size || current.chunk_size != chunk_size {
            if index != 0 {
                return Ok(Err(ChunkRefusal::Mismatch(format!(
                    "this content is uploaded as {} bytes in chunks of {}",
                    current.size, current.chunk_size
                ))));
            }
            // An upload of another size or chunk size starts over from its first chunk: a stale
            // or hostile partial upload never blocks the content.
            tx.execute(
                "DELETE FROM attachment_chunks WHERE commune = $1 AND sha256 = $2",
                &[&upload.commune, &sha256.as_slice()],
            )
            .await?;
            tx.execute(
                "UPDATE attachment_contents SET size = $3, chunk_size = $4, received = 0,
                     uploaded_by = $5
                 WHERE commune = $1 AND sha256 = $2",
                &[
                    &upload.commune,
                    &sha256.as_slice(),
                    &to_i64(size),
                    &i64::from(chunk_size),
                    &upload.device.0.as_bytes().as_slice(),
                ],
            )
            .await?;
            current = ContentState {
                size,
                chunk_size,
                received: 0,
                complete: false,
            };
        }
        if index < current.received {
            tx.commit().await?;
            return Ok(Ok(current));
        }
        if index > current.received {
            return Ok(Err(ChunkRefusal::Mismatch(format!(
                "chunk {index} before chunk {}",
                current.received
            ))));
        }
        tx.execute(
            "INSERT INTO attachment_chunks(commune, sha256, idx, data) VALUES ($1, $2, $3, $4)",
            &[
                &upload.commune,
                &sha256.as_slice(),
                &i64::from(index),
                &upload.bytes,
            ],
        )
        .await?;
        let received = index + 1;
        let complete = u64::from(received) == chunk_count(size, chunk_size);
        if complete {
            // Read back one chunk at a time: memory stays one chunk whatever the content.
            let mut hasher = Sha256::new();
            for i in 0..received {
                let row = tx
                    .query_one(
                        "SELECT data FROM attachment_chunks
                         WHERE commune = $1 AND sha256 = $2 AND idx = $3",
                        &[&upload.commune, &sha256.as_slice(), &i64::from(i)],
                    )
                    .await?;
                hasher.update(row.try_get::<_, &[u8]>(0)?);
            }
            let got: [u8; 32] = hasher.finalize().into();
            if got != sha256 {
                tx.execute(
                    "DELETE FROM attachment_chunks WHERE commune = $1 AND sha256 = $2",
                    &[&upload.commune, &sha256.as_slice()],
                )
                .await?;
                tx.execute(
                    "UPDATE attachment_contents SET received = 0
                     WHERE commune = $1 AND sha256 = $2",
                    &[&upload.commune, &sha256.as_slice()],
                )
                .await?;
                tx.commit().await?;
                return Ok(Err(ChunkRefusal::HashMismatch));
            }
        }
        tx.execute(
            "UPDATE attachment_contents SET received = $3, complete = $4
             WHERE commune = $1 AND sha256 = $2",
            &[
                &upload.commune,
                &sha256.as_slice(),
                &i64::from(received),
                &complete,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(ContentState {
            size,
            chunk_size,
            received,
            complete,
        }))
    }

    async fn attachment_chunk(
        &self,
        commune: &str,
        sha256: [u8; 32],
        index: u32,
    ) -> Result<Option<Vec<u8>>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT k.data FROM attachment_chunks k
                 JOIN attachment_contents c
                   ON c.commune = k.commune AND c.sha256 = k.sha256 AND c.complete
                 WHERE k.commune = $1 AND k.sha256 = $2 AND k.idx = $3",
                &[&commune, &sha256.as_slice(), &i64::from(index)],
            )
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get(0)?),
            None => None,
        })
    }

    async fn sweep_attachments(&self, now: i64, grace_ms: i64) -> Result<u64> {
        let client = self.client().await?;
        let cutoff = now.saturating_sub(grace_ms);
        let deleted = client
            .execute(
                "DELETE FROM attachment_contents c
                 WHERE NOT EXISTS (SELECT 1 FROM attachment_refs r
                                   WHERE r.commune = c.commune AND r.sha256 = c.sha256
                                     AND r.live)
                   AND coalesce((SELECT max(r.changed_at) FROM attachment_refs r
                                 WHERE r.commune = c.commune AND r.sha256 = c.sha256),
                                c.created_at) < $1",
                &[&cutoff],
            )
            .await?;
        Ok(deleted)
    }
}
