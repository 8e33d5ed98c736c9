//! [`AttachmentStorage`] on SQLite: chunks as rows next to the records, in the same file,
//! keyed by (commune, sha256).

use async_trait::async_trait;
use communesync_core::record::RecordId;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};

use super::super::attachments::{
    AttachmentLimits, AttachmentStorage, ChunkRefusal, ChunkUpload, ContentState, Referenced,
    chunk_count,
};
use super::super::{Result, Scope, to_i64, to_u64};
use super::SqliteStorage;

fn state(conn: &Connection, commune: &str, sha256: &[u8; 32]) -> Result<Option<ContentState>> {
    Ok(conn
        .prepare_cached(
            "SELECT size, chunk_size, received, complete FROM attachment_contents
             WHERE commune = ?1 AND sha256 = ?2",
        )?
        .query_row(params![commune, sha256.as_slice()], |row| {
            Ok(ContentState {
                size: to_u64(row.get(0)?),
                chunk_size: u32::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                received: u32::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                complete: row.get(3)?,
            })
        })
        .optional()?)
}

#[async_trait]
impl AttachmentStorage for SqliteStorage {
    async fn reference_attachment(
        &self,
        sha256: [u8; 32],
        commune: &str,
        doc: RecordId,
        size: u64,
        live: bool,
        now: i64,
    ) -> Result<()> {
        let commune = commune.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO attachment_refs(sha256, doc, commune, size, live, changed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(sha256, doc) DO UPDATE SET live = excluded.live,
                     changed_at = excluded.changed_at
                 WHERE attachment_refs.live = 1 AND excluded.live = 0",
            )?
            .execute(params![
                sha256.as_slice(),
                doc.as_bytes().as_slice(),
                commune,
                to_i64(size),
                live,
                now
            ])?;
            Ok(())
        })
        .await
    }

    async fn attachment_referenced(
        &self,
        sha256: [u8; 32],
        scope: &Scope,
    ) -> Result<Option<Referenced>> {
        let commune = scope.commune().map(str::to_owned);
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT r.commune, max(r.size),
                            coalesce((SELECT c.complete FROM attachment_contents c
                                      WHERE c.commune = r.commune AND c.sha256 = r.sha256), 0)
                                AS whole
                     FROM attachment_refs r
                     WHERE r.sha256 = ?1 AND r.live = 1 AND (?2 IS NULL OR r.commune = ?2)
                     GROUP BY r.commune
                     ORDER BY whole DESC, r.commune
                     LIMIT 1",
                )?
                .query_row(params![sha256.as_slice(), commune], |row| {
                    Ok(Referenced {
                        commune: row.get(0)?,
                        size: to_u64(row.get(1)?),
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn attachment_state(
        &self,
        commune: &str,
        sha256: [u8; 32],
    ) -> Result<Option<ContentState>> {
        let commune = commune.to_owned();
        self.read(move |conn| state(conn, &commune, &sha256)).await
    }

    async fn put_attachment_chunk(
        &self,
        upload: ChunkUpload<'_>,
        limits: &AttachmentLimits,
        now: i64,
    ) -> Result<std::result::Result<ContentState, ChunkRefusal>> {
        let sha256 = upload.sha256;
        let (size, chunk_size, index) = (upload.size, upload.chunk_size, upload.index);
        let bytes = upload.bytes.to_vec();
        let device = upload.device;
        let commune = upload.commune.to_owned();
        let limits = *limits;
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = match state(&tx, &commune, &sha256)? {
                Some(current) => current,
                None => {
                    let by_device: i64 = tx.query_row(
                        "SELECT coalesce(sum(size), 0) FROM attachment_contents WHERE uploaded_by = ?1",
                        [device.0.as_bytes().as_slice()],
                        |row| row.get(0),
                    )?;
                    if to_u64(by_device).saturating_add(size) > limits.device_quota {
                        return Ok(Err(ChunkRefusal::Quota(format!(
                            "this device's attachments would pass {} bytes",
                            limits.device_quota
                        ))));
                    }
                    let by_commune: i64 = tx.query_row(
                        "SELECT coalesce(sum(size), 0) FROM attachment_contents WHERE commune = ?1",
                        [&commune],
                        |row| row.get(0),
                    )?;
                    if to_u64(by_commune).saturating_add(size) > limits.commune_quota {
                        return Ok(Err(ChunkRefusal::Quota(format!(
                            "the commune's attachments would pass {} bytes",
                            limits.commune_quota
                        ))));
                    }
                    tx.execute(
                        "INSERT INTO attachment_contents
                             (commune, sha256, size, chunk_size, received, complete, uploaded_by, created_at)
                         VALUES (?1, ?2, ?3, ?4, 0, 0, ?5, ?6)",
                        params![
                            commune,
                            sha256.as_slice(),
                            to_i64(size),
                            i64::from(chunk_size),
                            device.0.as_bytes().as_slice(),
                            now
                        ],
                    )?;
                    ContentState {
                        size,
                        chunk_size,
                        received: 0,
                        complete: false,
                    }
                }
            };
            if current.complete {
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
                // An upload of another size or chunk size starts over from its first chunk: a
                // stale or hostile partial upload never blocks the content.
                tx.execute(
                    "DELETE FROM attachment_chunks WHERE commune = ?1 AND sha256 = ?2",
                    params![commune, sha256.as_slice()],
                )?;
                tx.execute(
                    "UPDATE attachment_contents SET size = ?3, chunk_size = ?4, received = 0,
                         uploaded_by = ?5
                     WHERE commune = ?1 AND sha256 = ?2",
                    params![
                        commune,
                        sha256.as_slice(),
                        to_i64(size),
                        i64::from(chunk_size),
                        device.0.as_bytes().as_slice()
                    ],
                )?;
                current = ContentState {
                    size,
                    chunk_size,
                    received: 0,
                    complete: false,
                };
            }
            if index < current.received {
                return Ok(Ok(current));
            }
            if index > current.received {
                return Ok(Err(ChunkRefusal::Mismatch(format!(
                    "chunk {index} before chunk {}",
                    current.received
                ))));
            }
            tx.execute(
                "INSERT INTO attachment_chunks(commune, sha256, idx, data) VALUES (?1, ?2, ?3, ?4)",
                params![commune, sha256.as_slice(), i64::from(index), bytes],
            )?;
            let received = index + 1;
            let complete = u64::from(received) == chunk_count(size, chunk_size);
            if complete {
                let mut hasher = Sha256::new();
                {
                    let mut stmt = tx.prepare_cached(
                        "SELECT data FROM attachment_chunks WHERE commune = ?1 AND sha256 = ?2
                         ORDER BY idx",
                    )?;
                    let mut rows = stmt.query(params![commune, sha256.as_slice()])?;
                    while let Some(row) = rows.next()? {
                        hasher.update(row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?);
                    }
                }
                let got: [u8; 32] = hasher.finalize().into();
                if got != sha256 {
                    tx.execute(
                        "DELETE FROM attachment_chunks WHERE commune = ?1 AND sha256 = ?2",
                        params![commune, sha256.as_slice()],
                    )?;
                    tx.execute(
                        "UPDATE attachment_contents SET received = 0
                         WHERE commune = ?1 AND sha256 = ?2",
                        params![commune, sha256.as_slice()],
                    )?;
                    tx.commit()?;
                    return Ok(Err(ChunkRefusal::HashMismatch));
                }
            }
            tx.execute(
                "UPDATE attachment_contents SET received = ?3, complete = ?4
                 WHERE commune = ?1 AND sha256 = ?2",
                params![commune, sha256.as_slice(), i64::from(received), complete],
            )?;
            tx.commit()?;
            Ok(Ok(ContentState {
                size,
                chunk_size,
                received,
                complete,
            }))
        })
        .await
    }

    async fn attachment_chunk(
        &self,
        commune: &str,
        sha256: [u8; 32],
        index: u32,
    ) -> Result<Option<Vec<u8>>> {
        let commune = commune.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT k.data FROM attachment_chunks k
                     JOIN attachment_contents c
                       ON c.commune = k.commune AND c.sha256 = k.sha256 AND c.complete = 1
                     WHERE k.commune = ?1 AND k.sha256 = ?2 AND k.idx = ?3",
                )?
                .query_row(
                    params![commune, sha256.as_slice(), i64::from(index)],
                    |row| row.get(0),
                )
                .optional()?)
        })
        .await
    }

    async fn sweep_attachments(&self, now: i64, grace_ms: i64) -> Result<u64> {
        self.write(move |conn| {
            let cutoff = now.saturating_sub(grace_ms);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let deleted = tx.execute(
                "DELETE FROM attachment_contents
                 WHERE NOT EXISTS (SELECT 1 FROM attachment_refs r
                                   WHERE r.commune = attachment_contents.commune
                                     AND r.sha256 = attachment_contents.sha256 AND r.live = 1)
                   AND coalesce((SELECT max(r.changed_at) FROM attachment_refs r
                                 WHERE r.commune = attachment_contents.commune
                                   AND r.sha256 = attachment_contents.sha256),
                                attachment_contents.created_at) < ?1",
                [cutoff],
            )?;
            tx.commit()?;
            Ok(deleted as u64)
        })
        .await
    }
}
