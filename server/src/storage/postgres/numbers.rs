//! Dossier number blocks and the number index, PostgreSQL side (see [`ServerStorage`]): a block
//! is cut from its agency's counter by one upsert that returns the counter's previous value; the
//! row lock it takes is held until commit, so replicas allocating at once queue on it and never
//! overlap.
//!
//! [`ServerStorage`]: crate::storage::ServerStorage

use communesync_core::record::{DeviceId, RecordId};
use tokio_postgres::Row;

use super::PostgresStorage;
use crate::storage::{
    MAX_NUMBER_BLOCK, MAX_NUMBER_BLOCKS_LISTED, NumberBlock, Result, StorageError, device_id,
    record_id, to_i64, to_u64,
};

const BLOCK_COLUMNS: &str =
    "id, device, agency, format, first, last, granted_at, acknowledged, next";

fn block_of(row: &Row) -> Result<NumberBlock> {
    let device: &[u8] = row.try_get(1)?;
    Ok(NumberBlock {
        id: to_u64(row.try_get(0)?),
        device: device_id(device)?,
        agency: row.try_get(2)?,
        format: row.try_get(3)?,
        first: to_u64(row.try_get(4)?),
        last: to_u64(row.try_get(5)?),
        granted_at: row.try_get(6)?,
        acknowledged: row.try_get(7)?,
        next: to_u64(row.try_get(8)?),
    })
}

impl PostgresStorage {
    pub(super) async fn allocate_block(
        &self,
        device: DeviceId,
        agency: &str,
        format: &str,
        size: u64,
        now: i64,
    ) -> Result<NumberBlock> {
        let size = to_i64(size.clamp(1, MAX_NUMBER_BLOCK));
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let device_bytes = device.0.as_bytes().as_slice();
        if tx
            .query_opt("SELECT 1 FROM devices WHERE id = $1", &[&device_bytes])
            .await?
            .is_none()
        {
            return Err(StorageError::NotFound);
        }
        let first: i64 = tx
            .query_one(
                "INSERT INTO number_counters AS c (agency, next) VALUES ($1, 1 + $2::bigint)
                 ON CONFLICT (agency) DO UPDATE SET next = c.next + $2::bigint
                 RETURNING next - $2::bigint",
                &[&agency, &size],
            )
            .await?
            .try_get(0)?;
        let last = first + size - 1;
        let id: i64 = tx
            .query_one(
                "INSERT INTO number_blocks (device, agency, format, first, last, granted_at, next)
                 VALUES ($1, $2, $3, $4, $5, $6, $4) RETURNING id",
                &[&device_bytes, &agency, &format, &first, &last, &now],
            )
            .await?
            .try_get(0)?;
        tx.commit().await?;
        Ok(NumberBlock {
            id: to_u64(id),
            device,
            agency: agency.to_owned(),
            format: format.to_owned(),
            first: to_u64(first),
            last: to_u64(last),
            granted_at: now,
            acknowledged: false,
            next: to_u64(first),
        })
    }

    pub(super) async fn blocks(&self, device: Option<DeviceId>) -> Result<Vec<NumberBlock>> {
        let client = self.client().await?;
        let device = device.map(|d| d.0.as_bytes().to_vec());
        let rows = client
            .query(
                &format!(
                    "SELECT * FROM (SELECT {BLOCK_COLUMNS} FROM number_blocks
                                    WHERE $1::bytea IS NULL OR device = $1
                                    ORDER BY id DESC LIMIT $2) b
                     ORDER BY id"
                ),
                &[&device, &to_i64(MAX_NUMBER_BLOCKS_LISTED as u64)],
            )
            .await?;
        rows.iter().map(block_of).collect()
    }

    pub(super) async fn report_usage(
        &self,
        device: DeviceId,
        usage: &[(u64, u64)],
        now: i64,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let stmt = tx
            .prepare_cached(
                "UPDATE number_blocks
                 SET acknowledged = true, reported_at = $4,
                     next = GREATEST(next, LEAST($3, last + 1))
                 WHERE id = $1 AND device = $2",
            )
            .await?;
        let device_bytes = device.0.as_bytes().as_slice();
        // Blocks in id order: concurrent reports of one device lock them in the same order.
        let mut usage = usage.to_vec();
        usage.sort_unstable();
        for (block, next) in usage {
            tx.execute(&stmt, &[&to_i64(block), &device_bytes, &to_i64(next), &now])
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn record_numbers(
        &self,
        device: DeviceId,
        numbers: &[(String, RecordId)],
        now: i64,
    ) -> Result<()> {
        if numbers.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO dossier_numbers (number, doc, device, recorded_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (number) DO NOTHING",
            )
            .await?;
        let device_bytes = device.0.as_bytes().as_slice();
        let mut numbers = numbers.to_vec();
        numbers.sort_unstable();
        for (number, doc) in &numbers {
            tx.execute(
                &stmt,
                &[&number, &doc.as_bytes().as_slice(), &device_bytes, &now],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn lookup_number(&self, number: &str) -> Result<Option<(RecordId, DeviceId)>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT doc, device FROM dossier_numbers WHERE number = $1",
                &[&number],
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
