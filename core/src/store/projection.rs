//! Projection rows and the search index, written in the same transaction as each change.

use rusqlite::{Transaction, params};

use crate::Result;
use crate::record::Record;
use crate::search::fold;

pub(super) fn write(
    tx: &Transaction<'_>,
    rowid: i64,
    record: &Record,
    has_conflicts: bool,
) -> Result<()> {
    let body = match record {
        Record::Application(app) => {
            tx.execute(
                "INSERT OR REPLACE INTO applications(doc, commune_code, procedure_code, status,
                    village, assignee, applicant_name, received_at, due_at, has_conflicts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    rowid,
                    app.commune_code,
                    app.procedure_code,
                    app.status.as_str(),
                    app.applicant.village,
                    app.assignee,
                    app.applicant.name,
                    app.received_at,
                    app.due_at.to_string(),
                    has_conflicts,
                ],
            )?;
            fold(&format!(
                "{} {} {} {} {}",
                app.applicant.name,
                app.applicant.id_number,
                app.applicant.phone,
                app.applicant.village,
                app.notes
            ))
        }
        Record::CitizenRequest(req) => {
            tx.execute(
                "INSERT OR REPLACE INTO citizen_requests(doc, commune_code, category, status,
                    village, assignee, reporter_name, received_at, has_conflicts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    rowid,
                    req.commune_code,
                    req.category,
                    req.status.as_str(),
                    req.village,
                    req.assignee,
                    req.reporter_name,
                    req.received_at,
                    has_conflicts,
                ],
            )?;
            fold(&format!(
                "{} {} {} {}",
                req.reporter_name, req.village, req.description, req.notes
            ))
        }
    };
    tx.execute(
        "INSERT OR REPLACE INTO search_index(rowid, body) VALUES (?1, ?2)",
        params![rowid, body],
    )?;
    Ok(())
}
