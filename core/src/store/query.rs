//! Queries over the projections: they never load documents.

use rusqlite::types::Value as SqlValue;
use serde::{Deserialize, Serialize};

use super::DeviceStore;
use crate::catalogue::CivilDate;
use crate::record::{RecordId, RecordKind, Status};
use crate::search::match_expression;
use crate::{Error, Result};

/// Sort order of an application query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortBy {
    /// By receipt time.
    #[default]
    ReceivedAt,
    /// By effective due date (see [`ApplicationQuery::due_from`]).
    DueAt,
    /// By applicant name.
    ApplicantName,
}

/// Filters, order and page of an application query. Empty filters match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplicationQuery {
    /// Only this status.
    pub status: Option<Status>,
    /// Only open applications (received, in progress, supplement requested).
    #[serde(default)]
    pub open_only: bool,
    /// Only this procedure.
    pub procedure_code: Option<String>,
    /// Only this village.
    pub village: Option<String>,
    /// Only this assignee.
    pub assignee: Option<String>,
    /// Effectively due on or after this date (pauses, extensions and the calendar counted; a
    /// dossier whose clock is stopped has no effective due date and is not matched).
    pub due_from: Option<CivilDate>,
    /// Effectively due on or before this date.
    pub due_until: Option<CivilDate>,
    /// Received at or after (ms since epoch).
    pub received_from: Option<i64>,
    /// Received before (ms since epoch).
    pub received_until: Option<i64>,
    /// Only records with unresolved conflicts.
    #[serde(default)]
    pub with_conflicts: bool,
    /// Sort key.
    #[serde(default)]
    pub sort: SortBy,
    /// Newest / latest first.
    #[serde(default)]
    pub descending: bool,
    /// Page size (1..=500; 0 means 50).
    #[serde(default)]
    pub limit: u32,
    /// Rows to skip.
    #[serde(default)]
    pub offset: u32,
}

/// One row of an application list, read from the projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplicationSummary {
    /// Record id.
    pub id: RecordId,
    /// Procedure code.
    pub procedure_code: String,
    /// Applicant's name.
    pub applicant_name: String,
    /// Village.
    pub village: String,
    /// Status.
    pub status: Status,
    /// Assignee.
    pub assignee: Option<String>,
    /// Receipt time, ms since epoch.
    pub received_at: i64,
    /// Due date.
    pub due_at: CivilDate,
    /// Whether some field holds concurrent values.
    pub has_conflicts: bool,
}

/// A page of results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// How many rows match in all.
    pub total: u64,
    /// Offset of the next page, if there is one.
    pub next_offset: Option<u32>,
}

/// Applications per status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCount {
    /// Status.
    pub status: Status,
    /// Number of applications in it.
    pub count: u64,
}

/// A full-text search result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHit {
    /// Record id.
    pub id: RecordId,
    /// Record kind.
    pub kind: RecordKind,
    /// Applicant or reporter name.
    pub title: String,
    /// Status name.
    pub status: String,
}

const OPEN_STATUSES: &str = "('received', 'in_progress', 'supplement_requested')";

impl DeviceStore {
    /// Applications matching `query`, one page, from the projection.
    pub fn query_applications(&self, query: &ApplicationQuery) -> Result<Page<ApplicationSummary>> {
        let limit = match query.limit {
            0 => 50,
            n if n > 500 => return Err(Error::invalid("limit", "at most 500")),
            n => n,
        };
        let mut clauses: Vec<String> = Vec::new();
        let mut args: Vec<SqlValue> = Vec::new();
        let mut push = |clause: &str, value: SqlValue| {
            args.push(value);
            clauses.push(clause.replace('?', &format!("?{}", args.len())));
        };
        if let Some(status) = query.status {
            push("a.status = ?", SqlValue::Text(status.as_str().to_owned()));
        }
        if let Some(code) = &query.procedure_code {
            push("a.procedure_code = ?", SqlValue::Text(code.clone()));
        }
        if let Some(village) = &query.village {
            push("a.village = ?", SqlValue::Text(village.clone()));
        }
        if let Some(assignee) = &query.assignee {
            push("a.assignee = ?", SqlValue::Text(assignee.clone()));
        }
        if let Some(day) = query.due_from {
            push("a.effective_due >= ?", SqlValue::Text(day.to_string()));
        }
        if let Some(day) = query.due_until {
            push("a.effective_due <= ?", SqlValue::Text(day.to_string()));
        }
        if let Some(ms) = query.received_from {
            push("a.received_at >= ?", SqlValue::Integer(ms));
        }
        if let Some(ms) = query.received_until {
            push("a.received_at < ?", SqlValue::Integer(ms));
        }
        if query.open_only {
            clauses.push(format!("a.status IN {OPEN_STATUSES}"));
        }
        if query.with_conflicts {
            clauses.push("a.has_conflicts = 1".to_owned());
        }
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let column = match query.sort {
            SortBy::ReceivedAt => "a.received_at",
            SortBy::DueAt => "a.effective_due",
            SortBy::ApplicantName => "a.applicant_name",
        };
        let direction = if query.descending { "DESC" } else { "ASC" };
        // Overdue and due-soon lists: the planner, without statistics, prefers the status index
        // and sorts tens of thousands of rows; the partial index of open applications by due
        // date answers both the count and the page directly.
        let table = if query.open_only && query.status.is_none() && query.sort == SortBy::DueAt {
            "applications a INDEXED BY applications_open_by_effective_due"
        } else {
            "applications a"
        };

        let total: u64 = self.connection().query_row(
            &format!("SELECT count(*) FROM {table} {filter}"),
            rusqlite::params_from_iter(args.iter()),
            |row| row.get(0),
        )?;
        let sql = format!(
            "SELECT d.id, a.procedure_code, a.applicant_name, a.village, a.status, a.assignee,
                    a.received_at, a.due_at, a.has_conflicts
             FROM {table} JOIN documents d ON d.rowid = a.doc
             {filter}
             ORDER BY {column} {direction}, a.doc {direction}
             LIMIT {limit} OFFSET {offset}",
            offset = query.offset
        );
        let mut stmt = self.connection().prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |row| {
            Ok((
                row.get::<_, Vec<u8>>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, Option<String>>(5)?,
                row.get::<_, i64>(6)?,
                row.get::<_, String>(7)?,
                row.get::<_, bool>(8)?,
            ))
        })?;
        let mut items = Vec::new();
        for row in rows {
            let (
                id,
                procedure_code,
                applicant_name,
                village,
                status,
                assignee,
                received_at,
                due_at,
                has_conflicts,
            ) = row?;
            items.push(ApplicationSummary {
                id: RecordId::from_slice(&id)
                    .ok_or_else(|| Error::invalid("id", "bad id bytes in store"))?,
                procedure_code,
                applicant_name,
                village,
                status: status.parse()?,
                assignee,
                received_at,
                due_at: due_at.parse()?,
                has_conflicts,
            });
        }
        let end = u64::from(query.offset) + items.len() as u64;
        let next_offset = (end < total).then(|| u32::try_from(end).unwrap_or(u32::MAX));
        Ok(Page {
            items,
            total,
            next_offset,
        })
    }

    /// Open applications whose due date has passed (`today` in Vietnam), most overdue first.
    pub fn overdue(
        &self,
        today: CivilDate,
        limit: u32,
        offset: u32,
    ) -> Result<Page<ApplicationSummary>> {
        self.query_applications(&ApplicationQuery {
            open_only: true,
            due_until: Some(today.plus_days(-1)),
            sort: SortBy::DueAt,
            limit,
            offset,
            ..Default::default()
        })
    }

    /// Open applications due within `working_days` working days from `today` (not yet overdue).
    pub fn due_soon(
        &self,
        today: CivilDate,
        working_days: u32,
        limit: u32,
        offset: u32,
    ) -> Result<Page<ApplicationSummary>> {
        self.query_applications(&ApplicationQuery {
            open_only: true,
            due_from: Some(today),
            due_until: Some(self.calendar().add_working_days(today, working_days)),
            sort: SortBy::DueAt,
            limit,
            offset,
            ..Default::default()
        })
    }

    /// Number of applications in each status (statuses with none are listed with 0).
    pub fn counts_by_status(&self) -> Result<Vec<StatusCount>> {
        let mut stmt = self
            .connection()
            .prepare_cached("SELECT status, count(*) FROM applications GROUP BY status")?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut counts: Vec<StatusCount> = Status::ALL
            .into_iter()
            .map(|status| StatusCount { status, count: 0 })
            .collect();
        for (status, count) in rows {
            let status: Status = status.parse()?;
            if let Some(slot) = counts.iter_mut().find(|c| c.status == status) {
                slot.count = count;
            }
        }
        Ok(counts)
    }

    /// Records whose names, notes, phone, id number or village match every word of `text`,
    /// ignoring case and diacritics; the last word may be a prefix. Best matches first.
    pub fn search(&self, text: &str, limit: u32) -> Result<Vec<SearchHit>> {
        let Some(expr) = match_expression(text) else {
            return Ok(Vec::new());
        };
        let limit = limit.clamp(1, 500);
        let mut stmt = self.connection().prepare_cached(
            "SELECT d.id, d.kind,
                    coalesce(a.applicant_name, r.reporter_name, ''),
                    coalesce(a.status, r.status, '')
             FROM (SELECT rowid, rank FROM search_index WHERE search_index MATCH ?1
                   ORDER BY rank LIMIT ?2) s
             JOIN documents d ON d.rowid = s.rowid
             LEFT JOIN applications a ON a.doc = d.rowid
             LEFT JOIN citizen_requests r ON r.doc = d.rowid
             ORDER BY s.rank",
        )?;
        let rows = stmt
            .query_map(rusqlite::params![expr, limit], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, kind, title, status)| {
                Ok(SearchHit {
                    id: RecordId::from_slice(&id)
                        .ok_or_else(|| Error::invalid("id", "bad id bytes in store"))?,
                    kind: RecordKind::from_code(kind)
                        .ok_or_else(|| Error::invalid("kind", "bad record kind in store"))?,
                    title,
                    status,
                })
            })
            .collect()
    }
}
