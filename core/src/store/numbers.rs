//! Dossier numbers in the device store: the blocks the server granted, the fallback counter,
//! and which record took which number.
//!
//! Contract:
//! - A number is taken in the transaction that inserts its application (a compare-and-set on the
//!   block's `next`, plus a `number_uses` row whose primary key is the number): a kill before the
//!   commit leaves neither the record nor the use; after it, both. No number is given twice.
//! - Blocks are never deleted; a block's `first..next` are used by records of this store and
//!   `next..=last` are unused. That is what the device reports at each sync ([`NumberState`]).
//! - A grant is applied in one transaction and is idempotent (by block id): a grant offered again
//!   because its answer was lost adds nothing. A block that overlaps one already held of the same
//!   agency, or is malformed, is ignored rather than trusted.
//! - With no block left the store gives a fallback number (see [`crate::numbering`]); intake
//!   never waits for the network.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{DeviceStore, META_ENROLLED_COMMUNE};
use crate::catalogue::CivilDate;
use crate::numbering::{
    BlockUsage, GrantedBlock, INTAKE_WINDOW_DAYS, MAX_BLOCK_SIZE, MAX_HELD_BLOCKS, NumberFormat,
    NumberGrant, NumberState, Sequence, agency_code,
};
use crate::record::{Application, DeviceId, RecordId};
use crate::{Error, Result};

/// Most blocks one sync reports (the server reads as many).
pub const MAX_REPORTED: usize = 256;

const META_FORMAT: &str = "number_format";
const META_AGENCY: &str = "number_agency";
const META_SERIAL: &str = "number_serial";
const META_FALLBACK_NEXT: &str = "number_fallback_next";

/// The number an intake is about to take; [`take`] commits it.
#[derive(Debug, Clone)]
pub(super) struct NextNumber {
    pub(super) number: String,
    pub(super) fallback: bool,
    /// `(block, seq)` for a block number; `None` for a fallback.
    block: Option<(i64, i64)>,
    /// The fallback counter value taken (fallbacks only).
    fallback_n: i64,
}

/// A block this device holds, with how far it used it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBlock {
    /// The block as granted.
    pub block: GrantedBlock,
    /// The next sequence to take: `first..next` are used.
    pub next: u64,
}

/// A number this device gave, and to which record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberUse {
    /// The dossier number.
    pub number: String,
    /// The record it went to.
    pub record: RecordId,
    /// The block and sequence it came from; `None` for a fallback number.
    pub block: Option<(u64, u64)>,
}

fn meta<T: rusqlite::types::FromSql>(conn: &Connection, key: &str) -> Result<Option<T>> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()?)
}

fn u64_of(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The number the next application received at `received_at` of `commune` takes.
pub(super) fn next_number(
    conn: &Connection,
    device: DeviceId,
    commune: &str,
    received_at: i64,
) -> Result<NextNumber> {
    let day = CivilDate::from_unix_millis(received_at)?;
    let block: Option<(i64, String, String, i64)> = conn
        .prepare_cached(
            "SELECT id, agency, format, next FROM number_blocks WHERE next <= last
             ORDER BY id LIMIT 1",
        )?
        .query_row([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .optional()?;
    if let Some((id, agency, format, next)) = block {
        let format = NumberFormat::parse(&format)?;
        return Ok(NextNumber {
            number: format.render(&agency, day, Sequence::Block(u64_of(next))),
            fallback: false,
            block: Some((id, next)),
            fallback_n: 0,
        });
    }
    let format = match meta::<String>(conn, META_FORMAT)? {
        Some(text) => NumberFormat::parse(&text)?,
        None => NumberFormat::default(),
    };
    let agency = match meta::<String>(conn, META_AGENCY)? {
        Some(agency) => agency,
        None => agency_code(
            &meta::<String>(conn, META_ENROLLED_COMMUNE)?.unwrap_or_else(|| commune.to_owned()),
        ),
    };
    let n: i64 = meta(conn, META_FALLBACK_NEXT)?.unwrap_or(0);
    let sequence = match meta::<i64>(conn, META_SERIAL)? {
        Some(serial) => Sequence::Serial {
            serial: u64_of(serial),
            n: u64_of(n),
        },
        None => Sequence::Device {
            device,
            n: u64_of(n),
        },
    };
    Ok(NextNumber {
        number: format.render(&agency, day, sequence),
        fallback: true,
        block: None,
        fallback_n: n,
    })
}

/// Takes `next` for `record`, inside the transaction that inserts the record.
pub(super) fn take(
    tx: &Transaction<'_>,
    next: &NextNumber,
    record: RecordId,
    now: i64,
) -> Result<()> {
    match next.block {
        Some((block, seq)) => {
            let moved = tx
                .prepare_cached(
                    "UPDATE number_blocks SET next = next + 1 WHERE id = ?1 AND next = ?2",
                )?
                .execute(params![block, seq])?;
            if moved != 1 {
                return Err(Error::Document(
                    "the dossier number was taken meanwhile".to_owned(),
                ));
            }
        }
        None => {
            tx.prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)")?
                .execute(params![
                    META_FALLBACK_NEXT,
                    next.fallback_n.saturating_add(1)
                ])?;
        }
    }
    tx.prepare_cached(
        "INSERT INTO number_uses(number, doc, block, seq, used_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        next.number,
        record.as_bytes().as_slice(),
        next.block.map(|(block, _)| block),
        next.block.map(|(_, seq)| seq),
        now
    ])?;
    Ok(())
}

impl DeviceStore {
    /// What this device tells the server about its numbers at a sync: its blocks still open
    /// or used since their last report (oldest first, at most [`MAX_REPORTED`]).
    pub fn number_state(&self) -> Result<NumberState> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, next FROM number_blocks
             WHERE next <= last OR reported IS NULL OR reported <> next
             ORDER BY id LIMIT ?1",
        )?;
        let blocks = stmt
            .query_map([MAX_REPORTED as i64], |row| {
                Ok(BlockUsage {
                    block: u64_of(row.get(0)?),
                    next: u64_of(row.get(1)?),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let remaining: i64 = self
            .conn
            .prepare_cached("SELECT coalesce(sum(last + 1 - next), 0) FROM number_blocks")?
            .query_row([], |row| row.get(0))?;
        let since = self
            .now_ms()
            .saturating_sub(INTAKE_WINDOW_DAYS * 24 * 3_600_000);
        let recent: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM number_uses WHERE used_at > ?1")?
            .query_row([since], |row| row.get(0))?;
        let fallback_used: i64 = meta(&self.conn, META_FALLBACK_NEXT)?.unwrap_or(0);
        Ok(NumberState {
            blocks,
            remaining: u64_of(remaining),
            recent_intake: u32::try_from(recent).unwrap_or(u32::MAX),
            fallback_used: u64_of(fallback_used),
        })
    }

    /// Records that the server received `sent` (the sync that carried it was answered).
    pub fn mark_numbers_reported(&mut self, sent: &NumberState) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("UPDATE number_blocks SET reported = ?2 WHERE id = ?1")?;
            for usage in &sent.blocks {
                stmt.execute(params![i64_of(usage.block), i64_of(usage.next)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every block this device holds, oldest first.
    pub fn number_blocks(&self) -> Result<Vec<HeldBlock>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, agency, format, first, last, next FROM number_blocks ORDER BY id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(HeldBlock {
                block: GrantedBlock {
                    id: u64_of(row.get(0)?),
                    agency: row.get(1)?,
                    format: row.get(2)?,
                    first: u64_of(row.get(3)?),
                    last: u64_of(row.get(4)?),
                },
                next: u64_of(row.get(5)?),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every number this device gave, in number order.
    pub fn number_uses(&self) -> Result<Vec<NumberUse>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT number, doc, block, seq FROM number_uses ORDER BY number")?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, Option<i64>>(2)?,
                row.get::<_, Option<i64>>(3)?,
            ))
        })?;
        let mut uses = Vec::new();
        for row in rows {
            let (number, doc, block, seq) = row?;
            let record = RecordId::from_slice(&doc)
                .ok_or_else(|| Error::Document("a stored record id is malformed".to_owned()))?;
            uses.push(NumberUse {
                number,
                record,
                block: block.zip(seq).map(|(b, s)| (u64_of(b), u64_of(s))),
            });
        }
        Ok(uses)
    }

    /// The format numbers are rendered with, as the server last sent it (the default before).
    pub fn number_format(&self) -> Result<String> {
        Ok(meta::<String>(&self.conn, META_FORMAT)?
            .unwrap_or_else(|| crate::numbering::DEFAULT_FORMAT.to_owned()))
    }

    /// Applies what the server answered about numbers, in one transaction. Returns how many
    /// blocks were added (blocks already held, malformed, or overlapping a held block of their
    /// agency are ignored).
    pub fn apply_number_grant(&mut self, grant: &NumberGrant) -> Result<usize> {
        let now = self.now_ms();
        let tx = self.conn.transaction()?;
        if NumberFormat::parse(&grant.format).is_ok() {
            tx.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
                params![META_FORMAT, grant.format],
            )?;
        }
        if !grant.agency.is_empty() && agency_code(&grant.agency) == grant.agency {
            tx.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
                params![META_AGENCY, grant.agency],
            )?;
        }
        let mut added = 0;
        for block in &grant.blocks {
            if acceptable(&tx, block)? {
                tx.execute(
                    "INSERT INTO number_blocks(id, agency, format, first, last, next, received_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?4, ?6)",
                    params![
                        i64_of(block.id),
                        block.agency,
                        block.format,
                        i64_of(block.first),
                        i64_of(block.last),
                        now
                    ],
                )?;
                added += 1;
            }
        }
        // The fallback serial: the first block this device was granted, fixed once.
        let serial: Option<i64> = meta(&tx, META_SERIAL)?;
        if serial.is_none() {
            let first: Option<i64> =
                tx.query_row("SELECT min(id) FROM number_blocks", [], |row| row.get(0))?;
            if let Some(first) = first {
                tx.execute(
                    "INSERT INTO meta(key, value) VALUES (?1, ?2)",
                    params![META_SERIAL, first],
                )?;
            }
        }
        tx.commit()?;
        Ok(added)
    }

    /// The application with this dossier number, if the store has one (its own or pulled).
    pub fn application_by_number(&mut self, number: &str) -> Result<Option<Application>> {
        let id: Option<Vec<u8>> = self
            .conn
            .prepare_cached(
                "SELECT d.id FROM applications a JOIN documents d ON d.rowid = a.doc
                 WHERE a.dossier_number = ?1 ORDER BY d.rowid LIMIT 1",
            )?
            .query_row([number.trim()], |row| row.get(0))
            .optional()?;
        match id.as_deref().and_then(RecordId::from_slice) {
            Some(id) => Ok(Some(self.get_application(id)?)),
            None => Ok(None),
        }
    }
}

/// Whether a granted block may be stored: well formed, new, and disjoint from the blocks held
/// for its agency.
fn acceptable(tx: &Transaction<'_>, block: &GrantedBlock) -> Result<bool> {
    if block.first > block.last
        || block.size() > MAX_BLOCK_SIZE
        || block.last >= i64::MAX as u64
        || block.id == 0
        || block.id >= i64::MAX as u64
        || block.agency.is_empty()
        || agency_code(&block.agency) != block.agency
        || NumberFormat::parse(&block.format).is_err()
    {
        return Ok(false);
    }
    let (held, clash): (i64, i64) = tx.query_row(
        "SELECT count(CASE WHEN next <= last THEN 1 END),
                count(CASE WHEN id = ?1 OR (agency = ?2 AND first <= ?4 AND ?3 <= last)
                      THEN 1 END)
         FROM number_blocks",
        params![
            i64_of(block.id),
            block.agency,
            i64_of(block.first),
            i64_of(block.last)
        ],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    Ok(clash == 0 && usize::try_from(held).unwrap_or(usize::MAX) < MAX_HELD_BLOCKS)
}

#[cfg(test)]
#[path = "numbers_tests.rs"]
mod tests;
