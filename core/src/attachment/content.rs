//! The content store: attachment bytes in the device store's SQLCipher file, as rows of
//! [`STORE_CHUNK`] bytes under their SHA-256.
//!
//! Every function streams: at most one row (or one requested range) is in memory at a time.

use std::io::{Read, Write};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use sha2::{Digest, Sha256};

use super::reference::is_content_address;
use crate::record::Record;
use crate::{Error, Result};

/// Bytes per stored row. Sync chunk sizes are multiples of it, so a downloaded chunk fills whole
/// rows and a resumed download starts at a row boundary.
pub const STORE_CHUNK: usize = 16 * 1024;

/// What the store knows of one content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentStatus {
    /// Its address.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Bytes present on this device (equal to `size` when complete).
    pub present_bytes: u64,
    /// Whether every byte is here and checked.
    pub complete: bool,
    /// Whether the server is known to hold it whole.
    pub on_server: bool,
}

pub(crate) fn hash_bytes(hex_hash: &str) -> Result<[u8; 32]> {
    if !is_content_address(hex_hash) {
        return Err(Error::invalid("sha256", "must be 64 lowercase hex digits"));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut out)
        .map_err(|e| Error::invalid("sha256", e.to_string()))?;
    Ok(out)
}

fn content_rowid(conn: &Connection, hash: &[u8; 32]) -> Result<Option<(i64, u64, bool)>> {
    Ok(conn
        .prepare_cached("SELECT rowid, size, complete FROM attachment_contents WHERE sha256 = ?1")?
        .query_row([hash.as_slice()], |row| {
            Ok((row.get(0)?, row.get::<_, i64>(1)? as u64, row.get(2)?))
        })
        .optional()?)
}

/// Stores what `reader` yields (at most `max_bytes`) in `tx`, returning its hash and size. The
/// same content already stored whole is kept once (dedupe); `priority` lowers the stored one.
pub(crate) fn ingest(
    tx: &Transaction<'_>,
    reader: &mut dyn Read,
    max_bytes: u64,
    priority: i64,
    now_ms: i64,
) -> Result<(String, u64)> {
    // A placeholder address (16 bytes: never a real 32-byte hash) until the bytes are hashed.
    let placeholder = uuid::Uuid::new_v4();
    tx.prepare_cached(
        "INSERT INTO attachment_contents(sha256, size, complete, on_server, priority, last_used)
         VALUES (?1, 0, 0, 0, ?2, ?3)",
    )?
    .execute(params![placeholder.as_bytes().as_slice(), priority, now_ms])?;
    let rowid = tx.last_insert_rowid();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; STORE_CHUNK];
    let mut size: u64 = 0;
    let mut idx: i64 = 0;
    loop {
        let filled = fill(reader, &mut buf)?;
        if filled == 0 {
            break;
        }
        size += filled as u64;
        if size > max_bytes {
            return Err(Error::invalid(
                "attachment",
                format!("larger than {max_bytes} bytes"),
            ));
        }
        hasher.update(&buf[..filled]);
        tx.prepare_cached("INSERT INTO attachment_chunks(content, idx, data) VALUES (?1, ?2, ?3)")?
            .execute(params![rowid, idx, &buf[..filled]])?;
        idx += 1;
        if filled < STORE_CHUNK {
            break;
        }
    }
    if size == 0 {
        return Err(Error::invalid("attachment", "is empty"));
    }
    let hash: [u8; 32] = hasher.finalize().into();
    match content_rowid(tx, &hash)? {
        Some((existing, _, true)) => {
            tx.prepare_cached("DELETE FROM attachment_contents WHERE rowid = ?1")?
                .execute([rowid])?;
            tx.prepare_cached(
                "UPDATE attachment_contents SET last_used = ?2, priority = min(priority, ?3)
                 WHERE rowid = ?1",
            )?
            .execute(params![existing, now_ms, priority])?;
        }
        other => {
            // A partial download of the same content is replaced by the whole one; what the
            // server holds is unchanged.
            let mut on_server = false;
            if let Some((partial, _, _)) = other {
                on_server = true;
                tx.prepare_cached("DELETE FROM attachment_contents WHERE rowid = ?1")?
                    .execute([partial])?;
            }
            tx.prepare_cached(
                "UPDATE attachment_contents SET sha256 = ?2, size = ?3, complete = 1, on_server = ?4
                 WHERE rowid = ?1",
            )?
            .execute(params![rowid, hash.as_slice(), size as i64, on_server])?;
        }
    }
    Ok((hex::encode(hash), size))
}

/// Reads until `buf` is full or the reader ends.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::invalid("attachment", format!("read failed: {e}"))),
        }
    }
    Ok(filled)
}

/// What the store knows of `sha256`, or `None` when it holds none of it.
pub(crate) fn status(conn: &Connection, sha256: &str) -> Result<Option<ContentStatus>> {
    let hash = hash_bytes(sha256)?;
    let row = conn
        .prepare_cached(
            "SELECT c.size, c.complete, c.on_server,
                    (SELECT coalesce(sum(length(data)), 0) FROM attachment_chunks WHERE content = c.rowid)
             FROM attachment_contents c WHERE c.sha256 = ?1",
        )?
        .query_row([hash.as_slice()], |row| {
            Ok(ContentStatus {
                sha256: sha256.to_owned(),
                size: row.get::<_, i64>(0)? as u64,
                complete: row.get(1)?,
                on_server: row.get(2)?,
                present_bytes: row.get::<_, i64>(3)? as u64,
            })
        })
        .optional()?;
    Ok(row)
}

/// Streams the whole content to `out`, checking its hash as it goes. Nothing is written when
/// the content is not complete here ([`Error::ContentMissing`]); a content whose bytes no longer
/// match their hash is an error at the end (the caller discards what was written).
pub(crate) fn copy_to(conn: &Connection, sha256: &str, out: &mut dyn Write) -> Result<u64> {
    let hash = hash_bytes(sha256)?;
    let Some((rowid, size, true)) = content_rowid(conn, &hash)? else {
        return Err(Error::ContentMissing(sha256.to_owned()));
    };
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    let mut stmt =
        conn.prepare_cached("SELECT data FROM attachment_chunks WHERE content = ?1 ORDER BY idx")?;
    let mut rows = stmt.query([rowid])?;
    while let Some(row) = rows.next()? {
        let data = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
        hasher.update(data);
        out.write_all(data)
            .map_err(|e| Error::invalid("output", format!("write failed: {e}")))?;
        written += data.len() as u64;
    }
    let got: [u8; 32] = hasher.finalize().into();
    if got != hash || written != size {
        return Err(Error::Document(format!(
            "attachment {sha256} does not match its hash on this device"
        )));
    }
    Ok(written)
}

/// `len` bytes from `offset` (fewer at the end) of a complete content, for an upload chunk.
pub(crate) fn read_range(
    conn: &Connection,
    sha256: &str,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let hash = hash_bytes(sha256)?;
    let Some((rowid, size, true)) = content_rowid(conn, &hash)? else {
        return Err(Error::ContentMissing(sha256.to_owned()));
    };
    let end = size.min(offset.saturating_add(len as u64));
    let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
    if offset >= end {
        return Ok(out);
    }
    let first = (offset / STORE_CHUNK as u64) as i64;
    let last = ((end - 1) / STORE_CHUNK as u64) as i64;
    let mut stmt = conn.prepare_cached(
        "SELECT idx, data FROM attachment_chunks WHERE content = ?1 AND idx BETWEEN ?2 AND ?3
         ORDER BY idx",
    )?;
    let mut rows = stmt.query(params![rowid, first, last])?;
    while let Some(row) = rows.next()? {
        let idx: i64 = row.get(0)?;
        let data = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
        let row_start = idx as u64 * STORE_CHUNK as u64;
        let from = offset.saturating_sub(row_start) as usize;
        let to = ((end - row_start) as usize).min(data.len());
        if from < to {
            out.extend_from_slice(&data[from..to]);
        }
    }
    Ok(out)
}

/// Stores `bytes` downloaded at `offset` (a multiple of [`STORE_CHUNK`]) of a content of `size`
/// bytes; when the last piece arrives, the whole content is checked against its hash (and
/// dropped if it does not match). Returns whether the content is now complete.
pub(crate) fn write_range(
    tx: &Transaction<'_>,
    sha256: &str,
    size: u64,
    offset: u64,
    bytes: &[u8],
    now_ms: i64,
) -> Result<bool> {
    let hash = hash_bytes(sha256)?;
    if !offset.is_multiple_of(STORE_CHUNK as u64)
        || offset.saturating_add(bytes.len() as u64) > size
    {
        return Err(Error::invalid(
            "chunk",
            "outside the content or not aligned",
        ));
    }
    let rowid = match content_rowid(tx, &hash)? {
        Some((_, _, true)) => return Ok(true),
        Some((rowid, stored_size, false)) if stored_size == size => rowid,
        Some((rowid, _, false)) => {
            tx.execute("DELETE FROM attachment_contents WHERE rowid = ?1", [rowid])?;
            insert_partial(tx, &hash, size, now_ms)?
        }
        None => insert_partial(tx, &hash, size, now_ms)?,
    };
    for (i, piece) in bytes.chunks(STORE_CHUNK).enumerate() {
        let idx = (offset / STORE_CHUNK as u64) as i64 + i as i64;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO attachment_chunks(content, idx, data) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![rowid, idx, piece])?;
    }
    let present: i64 = tx
        .prepare_cached(
            "SELECT coalesce(sum(length(data)), 0) FROM attachment_chunks WHERE content = ?1",
        )?
        .query_row([rowid], |row| row.get(0))?;
    if present as u64 != size {
        return Ok(false);
    }
    let mut hasher = Sha256::new();
    {
        let mut stmt = tx
            .prepare_cached("SELECT data FROM attachment_chunks WHERE content = ?1 ORDER BY idx")?;
        let mut rows = stmt.query([rowid])?;
        while let Some(row) = rows.next()? {
            hasher.update(row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?);
        }
    }
    let got: [u8; 32] = hasher.finalize().into();
    if got != hash {
        tx.execute("DELETE FROM attachment_chunks WHERE content = ?1", [rowid])?;
        return Err(Error::Document(format!(
            "downloaded attachment {sha256} does not match its hash; it will be fetched again"
        )));
    }
    tx.execute(
        "UPDATE attachment_contents SET complete = 1, last_used = ?2 WHERE rowid = ?1",
        params![rowid, now_ms],
    )?;
    Ok(true)
}

fn insert_partial(tx: &Transaction<'_>, hash: &[u8; 32], size: u64, now_ms: i64) -> Result<i64> {
    tx.prepare_cached(
        "INSERT INTO attachment_contents(sha256, size, complete, on_server, priority, last_used)
         VALUES (?1, ?2, 0, 1, 2, ?3)",
    )?
    .execute(params![hash.as_slice(), size as i64, now_ms])?;
    Ok(tx.last_insert_rowid())
}

/// The offset where a download of `sha256` resumes: the first missing row, aligned down to
/// `chunk_size` (0 when nothing is here).
pub(crate) fn resume_offset(conn: &Connection, sha256: &str, chunk_size: usize) -> Result<u64> {
    let hash = hash_bytes(sha256)?;
    let Some((rowid, size, complete)) = content_rowid(conn, &hash)? else {
        return Ok(0);
    };
    if complete {
        return Ok(size);
    }
    // Rows are written whole-chunk at a time in one transaction, in order: the count of rows is
    // the first missing one.
    let rows: i64 = conn
        .prepare_cached("SELECT count(*) FROM attachment_chunks WHERE content = ?1")?
        .query_row([rowid], |row| row.get(0))?;
    let offset = rows as u64 * STORE_CHUNK as u64;
    Ok(offset - offset % chunk_size.max(1) as u64)
}

/// Marks a content as held whole by the server (after an upload or a download).
pub(crate) fn mark_on_server(conn: &Connection, sha256: &str) -> Result<()> {
    let hash = hash_bytes(sha256)?;
    conn.prepare_cached("UPDATE attachment_contents SET on_server = 1 WHERE sha256 = ?1")?
        .execute([hash.as_slice()])?;
    Ok(())
}

/// Marks a content used now (for the cache's eviction order).
pub(crate) fn touch(conn: &Connection, sha256: &str, now_ms: i64) -> Result<()> {
    let hash = hash_bytes(sha256)?;
    conn.prepare_cached("UPDATE attachment_contents SET last_used = ?2 WHERE sha256 = ?1")?
        .execute(params![hash.as_slice(), now_ms])?;
    Ok(())
}

/// Contents to upload, first first: complete here, not known on the server, referenced by a
/// live reference; by priority (receipts and identity cards first), then age.
pub(crate) fn pending_uploads(conn: &Connection, limit: usize) -> Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.sha256, c.size, min(r.priority) AS p FROM attachment_contents c
         JOIN attachment_refs r ON r.sha256 = c.sha256 AND r.live = 1
         WHERE c.complete = 1 AND c.on_server = 0
         GROUP BY c.rowid ORDER BY p, c.rowid LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |row| {
        Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)? as u64))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (hash, size) = row?;
        out.push((hex::encode(hash), size));
    }
    Ok(out)
}

/// Contents referenced live by records that are not complete here (what a prefetch
/// downloads), with their size, by priority.
pub(crate) fn missing_contents(conn: &Connection, limit: usize) -> Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT r.sha256, max(r.size), min(r.priority) AS p FROM attachment_refs r
         LEFT JOIN attachment_contents c ON c.sha256 = r.sha256
         WHERE r.live = 1 AND (c.rowid IS NULL OR c.complete = 0)
         GROUP BY r.sha256 ORDER BY p LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |row| {
        Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)? as u64))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (hash, size) = row?;
        out.push((hex::encode(hash), size));
    }
    Ok(out)
}

/// Frees space: drops contents no live reference needs (and that are not waiting for upload),
/// then evicts the least recently used contents the server holds until the cached bytes are at
/// most `max_cached_bytes`. A content only this device holds is never evicted. Returns the
/// bytes freed.
pub(crate) fn evict(tx: &Transaction<'_>, max_cached_bytes: u64) -> Result<u64> {
    let mut freed: u64 = 0;
    let unneeded: Vec<(i64, i64)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT c.rowid, c.size FROM attachment_contents c
             WHERE NOT EXISTS (SELECT 1 FROM attachment_refs r WHERE r.sha256 = c.sha256 AND r.live = 1)",
        )?;
        stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?
    };
    for (rowid, size) in unneeded {
        tx.execute("DELETE FROM attachment_contents WHERE rowid = ?1", [rowid])?;
        freed += size as u64;
    }
    let mut cached: u64 = tx.query_row(
        "SELECT coalesce(sum(size), 0) FROM attachment_contents WHERE on_server = 1",
        [],
        |row| row.get::<_, i64>(0),
    )? as u64;
    if cached <= max_cached_bytes {
        return Ok(freed);
    }
    let candidates: Vec<(i64, i64)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT rowid, size FROM attachment_contents WHERE on_server = 1 ORDER BY last_used, rowid",
        )?;
        stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?
    };
    for (rowid, size) in candidates {
        if cached <= max_cached_bytes {
            break;
        }
        tx.execute("DELETE FROM attachment_contents WHERE rowid = ?1", [rowid])?;
        cached = cached.saturating_sub(size as u64);
        freed += size as u64;
    }
    Ok(freed)
}

/// Projects the references `record` holds into `attachment_refs` (called with every write of a
/// record). References are never taken out of a record (a removal is a tombstone), so a record
/// without any has nothing to project.
pub(crate) fn project_refs(tx: &Transaction<'_>, doc: i64, record: &Record) -> Result<()> {
    let refs = match record {
        Record::Application(a) => &a.attachments,
        Record::CitizenRequest(r) => &r.attachments,
    };
    if refs.is_empty() {
        return Ok(());
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO attachment_refs(doc, ref_id, sha256, size, live, priority)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(doc, ref_id) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size,
             live = excluded.live, priority = excluded.priority
         WHERE sha256 IS NOT excluded.sha256 OR size IS NOT excluded.size
             OR live IS NOT excluded.live OR priority IS NOT excluded.priority",
    )?;
    for reference in refs {
        // A malformed hash (refused by the rules; possible only in a record set aside) is not
        // projected.
        let Ok(hash) = hash_bytes(&reference.sha256) else {
            continue;
        };
        upsert.execute(params![
            doc,
            reference.id,
            hash.as_slice(),
            reference.size as i64,
            reference.is_live(),
            reference.category.priority()
        ])?;
    }
    Ok(())
}
