//! Projection rows and the search index, written in the same transaction as each change, and
//! only where they differ from what is there (most edits touch notes, not indexed columns).

use std::hash::{Hash, Hasher};

use rusqlite::types::Value as SqlValue;
use rusqlite::{OptionalExtension, Transaction, params_from_iter};

use crate::Result;
use crate::record::Record;
use crate::search::fold;

/// Writes the projection row and the search entry of `record` where they changed.
pub(super) fn write(
    tx: &Transaction<'_>,
    rowid: i64,
    record: &Record,
    has_conflicts: bool,
) -> Result<()> {
    super::register_import::index(tx, rowid, record)?;
    let (table, columns, values, body) = row_of(rowid, record, has_conflicts);
    let select = format!("SELECT {} FROM {table} WHERE doc = ?1", columns.join(", "));
    let current: Option<Vec<SqlValue>> = tx
        .prepare_cached(&select)?
        .query_row([rowid], |row| {
            (0..columns.len())
                .map(|i| row.get::<_, SqlValue>(i))
                .collect()
        })
        .optional()?;
    if current.as_ref() != Some(&values) {
        let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        let updates: Vec<String> = columns
            .iter()
            .skip(1)
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let upsert = format!(
            "INSERT INTO {table}({}) VALUES ({}) ON CONFLICT(doc) DO UPDATE SET {}",
            columns.join(", "),
            placeholders.join(", "),
            updates.join(", ")
        );
        tx.prepare_cached(&upsert)?
            .execute(params_from_iter(values.iter()))?;
    }

    if let Record::Application(app) = record {
        super::deadlines::project(tx, rowid, app)?;
    }

    let digest = digest(&body);
    let indexed: i64 = tx
        .prepare_cached("SELECT search_digest FROM documents WHERE rowid = ?1")?
        .query_row([rowid], |row| row.get(0))?;
    if indexed != digest {
        tx.prepare_cached("INSERT OR REPLACE INTO search_index(rowid, body) VALUES (?1, ?2)")?
            .execute(rusqlite::params![rowid, body])?;
        tx.prepare_cached("UPDATE documents SET search_digest = ?2 WHERE rowid = ?1")?
            .execute(rusqlite::params![rowid, digest])?;
    }
    crate::attachment::content::project_refs(tx, rowid, record)?;
    Ok(())
}

/// Whether the projection currently flags unresolved conflicts.
pub(super) fn has_conflicts(tx: &Transaction<'_>, rowid: i64, record: &Record) -> Result<bool> {
    let table = match record {
        Record::Application(_) => "applications",
        Record::CitizenRequest(_) => "citizen_requests",
    };
    Ok(tx
        .prepare_cached(&format!("SELECT has_conflicts FROM {table} WHERE doc = ?1"))?
        .query_row([rowid], |row| row.get::<_, bool>(0))
        .optional()?
        .unwrap_or(false))
}

type Row = (&'static str, Vec<&'static str>, Vec<SqlValue>, String);

fn row_of(rowid: i64, record: &Record, has_conflicts: bool) -> Row {
    let text = |s: &str| SqlValue::Text(s.to_owned());
    let opt = |s: &Option<String>| s.as_deref().map_or(SqlValue::Null, text);
    let flag = SqlValue::Integer(i64::from(has_conflicts));
    match record {
        Record::Application(app) => (
            "applications",
            vec![
                "doc",
                "commune_code",
                "procedure_code",
                "status",
                "village",
                "assignee",
                "applicant_name",
                "received_at",
                "due_at",
                "has_conflicts",
                "dossier_number",
            ],
            vec![
                SqlValue::Integer(rowid),
                text(&app.commune_code),
                text(&app.procedure_code),
                text(app.status.as_str()),
                text(&app.applicant.village),
                opt(&app.assignee),
                text(&app.applicant.name),
                SqlValue::Integer(app.received_at),
                SqlValue::Text(app.due_at.to_string()),
                flag,
                opt(&app.dossier_number),
            ],
            fold(&format!(
                "{} {} {} {} {} {}",
                app.dossier_number.as_deref().unwrap_or_default(),
                app.applicant.name,
                app.applicant.id_number,
                app.applicant.phone,
                app.applicant.village,
                app.notes
            )),
        ),
        Record::CitizenRequest(req) => (
            "citizen_requests",
            vec![
                "doc",
                "commune_code",
                "category",
                "status",
                "village",
                "assignee",
                "reporter_name",
                "received_at",
                "has_conflicts",
            ],
            vec![
                SqlValue::Integer(rowid),
                text(&req.commune_code),
                text(&req.category),
                text(req.status.as_str()),
                text(&req.village),
                opt(&req.assignee),
                text(&req.reporter_name),
                SqlValue::Integer(req.received_at),
                flag,
            ],
            fold(&format!(
                "{} {} {} {}",
                req.reporter_name, req.village, req.description, req.notes
            )),
        ),
    }
}

/// A stable 63-bit digest (never 0, the column's "not indexed" default).
fn digest(body: &str) -> i64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    (hasher.finish() >> 1) as i64 | 1
}
