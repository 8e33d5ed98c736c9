//! Dossier number blocks and the number index, SQLite side (see [`ServerStorage`]): blocks are
//! cut from an agency's counter in one IMMEDIATE transaction, so the counter read and its advance
//! are one step under the database's write lock, whichever process or handle allocates.
//!
//! [`ServerStorage`]: crate::storage::ServerStorage

use communesync_core::record::{DeviceId, RecordId};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::SqliteStorage;
use crate::storage::{
    MAX_NUMBER_BLOCK, MAX_NUMBER_BLOCKS_LISTED, NumberBlock, Result, StorageError, device_id,
    record_id, to_i64, to_u64,
};

const BLOCK_COLUMNS: &str =
    "id, device, agency, format, first, last, granted_at, acknowledged, next";

fn block_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Vec<u8>, NumberBlock)> {
    let device: Vec<u8> = row.get(1)?;
    Ok((
        device,
        NumberBlock {
            id: to_u64(row.get(0)?),
            device: DeviceId(uuid::Uuid::nil()),
            agency: row.get(2)?,
            format: row.get(3)?,
            first: to_u64(row.get(4)?),
            last: to_u64(row.get(5)?),
            granted_at: row.get(6)?,
            acknowledged: row.get(7)?,
            next: to_u64(row.get(8)?),
        },
    ))
}

impl SqliteStorage {
    pub(super) async fn allocate_block(
        &self,
        device: DeviceId,
        agency: String,
        format: String,
        size: u64,
        now: i64,
    ) -> Result<NumberBlock> {
        let size = size.clamp(1, MAX_NUMBER_BLOCK);
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let known: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM devices WHERE id = ?1",
                    [device.0.as_bytes().as_slice()],
                    |row| row.get(0),
                )
                .optional()?;
            if known.is_none() {
                return Err(StorageError::NotFound);
            }
            let first: i64 = tx
                .query_row(
                    "SELECT next FROM number_counters WHERE agency = ?1",
                    [&agency],
                    |row| row.get(0),
                )
                .optional()?
                .unwrap_or(1);
            let last = first.checked_add(to_i64(size) - 1).ok_or_else(|| {
                StorageError::Conflict(format!("agency {agency}'s counter is exhausted"))
            })?;
            tx.execute(
                "INSERT INTO number_counters (agency, next) VALUES (?1, ?2)
                 ON CONFLICT (agency) DO UPDATE SET next = excluded.next",
                params![agency, last + 1],
            )?;
            tx.execute(
                "INSERT INTO number_blocks (device, agency, format, first, last, granted_at, next)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?4)",
                params![
                    device.0.as_bytes().as_slice(),
                    agency,
                    format,
                    first,
                    last,
                    now
                ],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(NumberBlock {
                id: to_u64(id),
                device,
                agency,
                format,
                first: to_u64(first),
                last: to_u64(last),
                granted_at: now,
                acknowledged: false,
                next: to_u64(first),
            })
        })
        .await
    }

    pub(super) async fn blocks(&self, device: Option<DeviceId>) -> Result<Vec<NumberBlock>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT * FROM (SELECT {BLOCK_COLUMNS} FROM number_blocks
                                WHERE ?1 IS NULL OR device = ?1 ORDER BY id DESC LIMIT ?2)
                 ORDER BY id"
            ))?;
            let rows = stmt.query_map(
                params![
                    device.map(|d| d.0.as_bytes().to_vec()),
                    to_i64(MAX_NUMBER_BLOCKS_LISTED as u64)
                ],
                block_of,
            )?;
            let mut blocks = Vec::new();
            for row in rows {
                let (device, mut block) = row?;
                block.device = device_id(&device)?;
                blocks.push(block);
            }
            Ok(blocks)
        })
        .await
    }

    pub(super) async fn report_usage(
        &self,
        device: DeviceId,
        usage: Vec<(u64, u64)>,
        now: i64,
    ) -> Result<()> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut stmt = tx.prepare_cached(
                    "UPDATE number_blocks
                     SET acknowledged = 1, reported_at = ?4,
                         next = max(next, min(?3, last + 1))
                     WHERE id = ?1 AND device = ?2",
                )?;
                for (block, next) in usage {
                    stmt.execute(params![
                        to_i64(block),
                        device.0.as_bytes().as_slice(),
                        to_i64(next),
                        now
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub(super) async fn record_numbers(
        &self,
        device: DeviceId,
        numbers: Vec<(String, RecordId)>,
        now: i64,
    ) -> Result<()> {
        if numbers.is_empty() {
            return Ok(());
        }
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO dossier_numbers (number, doc, device, recorded_at)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (number) DO NOTHING",
                )?;
                for (number, doc) in &numbers {
                    stmt.execute(params![
                        number,
                        doc.as_bytes().as_slice(),
                        device.0.as_bytes().as_slice(),
                        now
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub(super) async fn lookup_number(
        &self,
        number: String,
    ) -> Result<Option<(RecordId, DeviceId)>> {
        self.read(move |conn| {
            let row: Option<(Vec<u8>, Vec<u8>)> = conn
                .prepare_cached("SELECT doc, device FROM dossier_numbers WHERE number = ?1")?
                .query_row([&number], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            row.map(|(doc, device)| Ok((record_id(&doc)?, device_id(&device)?)))
                .transpose()
        })
        .await
    }
}
