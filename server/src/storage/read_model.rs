//! The read model: one row per stored record, what operators query (the dashboard, searches,
//! overdue lists, reports and exports), so that no query decodes Automerge changes.
//!
//! The contract. Every document that has stored changes has exactly one row, written by
//! [`super::ServerStorage::ingest`] **in the same transaction** as the changes: a reader never
//! sees a change without its projection, nor a projection ahead of its changes. A row is a pure
//! function of the document's stored changes (and their server receive times) and of the
//! catalogue's rules for statutory time ([`DeadlineRules`]: the pinned procedure versions and the
//! working calendar): [`project_changes`] builds the record from every stored change, in feed
//! order, with core's document reading, and [`project_record`] maps the record to a
//! [`ReadModelRow`]. Because it is a function of those, [`super::ServerStorage::rebuild_read_model`]
//! (the `communesync admin rebuild-read-model` command) rebuilds the same rows from the changes
//! and the catalogue alone, and a new calendar re-projects the open dossiers
//! ([`super::ServerStorage::reproject_open`]).
//!
//! `due_on` is a dossier's effective deadline, as on the tablets (`core::deadline`): the pinned
//! procedure's processing time counted with the calendar from receipt, moved by supplement
//! pauses and set by extensions; empty while the clock is stopped (a supplement awaited), so a
//! paused dossier is never overdue. A document whose
//! changes do not read as a record of its kind (a record from a newer build, or a corrupt row)
//! still gets a row, with its registration, server facts and [`ReadModelRow::projection_error`]:
//! nothing is stuck, and what could not be projected is visible with its reason.
//!
//! The push path hands storage the row it computed from the document it has just checked
//! ([`Projected`]), so a push does not read and decode a document's changes a second time;
//! storage falls back to [`project_changes`] whenever that row may be stale (see [`Projected`]).
//!
//! Fields that other parts of the dossier work add to records (procedure version, returned time,
//! statutory on-time flag, attachments) are nullable columns, like the dossier number that
//! applications carry since issue 16; [`project_record`] is the one place that fills them. A
//! dossier returned on a tablet carries its return time and the verdict the server checked; for
//! an imported one the register's return time is used; otherwise a record's result time is
//! the device time of the last change that touched its status, once the status is `returned` or
//! `rejected`, and it is on time when that day (in Vietnam) is on or before the due date.

use std::sync::Arc;

use communesync_core::catalogue::WorkingCalendar;
use communesync_core::deadline::{effective_deadline, processing_of};
use communesync_core::integrity::{ProcedureSource, no_catalogue};
use communesync_core::record::{
    Application, DeviceId, Record, RecordDoc, RecordId, RecordKind, Source, Status,
};
use communesync_core::search::fold;

/// One record as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReadModelRow {
    /// The record id.
    pub id: RecordId,
    /// Commune it is registered to (the server's registration, not the record's claim).
    pub commune: String,
    /// Its kind.
    pub kind: RecordKind,
    /// Workflow status name (`received`, `in_progress`, ...); `None` if it could not be read.
    pub status: Option<String>,
    /// Procedure code (applications) or category (citizen requests).
    pub procedure_code: Option<String>,
    /// Version of the procedure in the catalogue the record was received under, when it has one.
    pub procedure_version: Option<i64>,
    /// The dossier number, when the record has one.
    pub dossier_number: Option<String>,
    /// When it was received (device time at intake, ms).
    pub received_at: Option<i64>,
    /// Statutory due date, `YYYY-MM-DD` (applications).
    pub due_on: Option<String>,
    /// When its result was given (returned or rejected), ms; see the module doc.
    pub returned_at: Option<i64>,
    /// Whether its result was given on or before the due date (`None` while it has none).
    pub on_time: Option<bool>,
    /// Officer handling it.
    pub assignee: Option<String>,
    /// Whether some field holds concurrent different values.
    pub has_conflicts: bool,
    /// Applicant's (or reporter's) name as written.
    pub applicant_name: Option<String>,
    /// The same name folded for search (core's `search::fold`: lowercase, no diacritics).
    pub name_folded: Option<String>,
    /// Applicant's identity number.
    pub id_number: Option<String>,
    /// Number of attachments, when records carry them.
    pub attachments: Option<i64>,
    /// Stored changes.
    pub changes: i64,
    /// Server receive time of its first stored change (ms).
    pub first_received_at: i64,
    /// Server receive time of its latest stored change (ms).
    pub last_received_at: i64,
    /// Why the changes could not be read as a record, when they could not.
    pub projection_error: Option<String>,
}

/// What a row counts statutory time with: the server's catalogue rules (procedure versions and
/// the working calendar), shared by every projection of one push or rebuild.
pub type DeadlineRules = Arc<dyn ProcedureSource + Send + Sync>;

/// Rules that know no procedure and a calendar with weekends off only: a dossier counts the
/// working days from receipt to its intake due date (for tests and tools without a catalogue).
pub fn no_deadline_rules() -> DeadlineRules {
    Arc::new(no_catalogue)
}

/// The effective deadline of `app` as a `due_on` value: `None` while its clock is stopped.
fn effective_due_on(app: &Application, rules: &dyn ProcedureSource) -> Option<String> {
    let weekends_only;
    let calendar = match rules.calendar() {
        Some(calendar) => calendar,
        None => {
            weekends_only = WorkingCalendar::default();
            &weekends_only
        }
    };
    let processing = processing_of(app, rules, calendar);
    let effective = effective_deadline(app, processing, calendar);
    match effective.paused_since {
        Some(_) => None,
        None => Some(effective.due.date.to_string()),
    }
}

/// Statuses whose result has been given to the applicant.
fn result_given(status: Status) -> bool {
    matches!(status, Status::Returned | Status::Rejected)
}

/// What the document's history says beyond the record itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocFacts {
    /// Stored changes.
    pub changes: i64,
    /// Server receive time of the first stored change.
    pub first_received_at: i64,
    /// Server receive time of the latest stored change.
    pub last_received_at: i64,
    /// Whether some field is in conflict.
    pub has_conflicts: bool,
    /// Device time of the last change that touched the status, if any.
    pub status_changed_at: Option<i64>,
}

/// The row of `record`, registered to `commune`, with the facts of its history. The one place
/// that maps a record's fields to read-model columns.
pub fn project_record(
    record: &Record,
    commune: &str,
    facts: &DocFacts,
    rules: &dyn ProcedureSource,
) -> ReadModelRow {
    let mut row = ReadModelRow {
        id: record.id(),
        commune: commune.to_owned(),
        kind: record.kind(),
        status: None,
        procedure_code: None,
        procedure_version: None,
        dossier_number: None,
        received_at: None,
        due_on: None,
        returned_at: None,
        on_time: None,
        assignee: None,
        has_conflicts: facts.has_conflicts,
        applicant_name: None,
        name_folded: None,
        id_number: None,
        attachments: None,
        changes: facts.changes,
        first_received_at: facts.first_received_at,
        last_received_at: facts.last_received_at,
        projection_error: None,
    };
    match record {
        Record::Application(a) => {
            row.status = Some(a.status.as_str().to_owned());
            row.procedure_code = Some(a.procedure_code.clone());
            row.dossier_number = a.dossier_number.clone();
            row.received_at = Some(a.received_at);
            row.due_on = effective_due_on(a, rules);
            row.assignee = a.assignee.clone();
            row.applicant_name = Some(a.applicant.name.clone());
            row.name_folded = Some(fold(&a.applicant.name));
            row.id_number = Some(a.applicant.id_number.clone()).filter(|n| !n.is_empty());
            row.procedure_version = i64::try_from(a.procedure_version).ok().filter(|v| *v > 0);
            if result_given(a.status) {
                if let (Some(at), Some(on_time)) = (a.returned_at, a.returned_on_time) {
                    // The verdict recorded at return, which the server checked against the
                    // effective deadline (pauses, extensions, the calendar).
                    row.returned_at = Some(at);
                    row.on_time = Some(on_time);
                } else {
                    // Imported by an older build: the register's return time, judged as an
                    // import judges it now; otherwise (a rejection, a return from before
                    // verdicts) the device time of the status change against the intake due
                    // date, the same day comparison.
                    row.returned_at = a
                        .imported
                        .as_ref()
                        .and_then(|imported| imported.returned_at)
                        .or(facts.status_changed_at);
                    row.on_time = row
                        .returned_at
                        .map(|at| communesync_core::deadline::imported_verdict(a.due_at, at));
                }
            }
        }
        Record::CitizenRequest(r) => {
            row.status = Some(r.status.as_str().to_owned());
            row.procedure_code = Some(r.category.clone());
            row.received_at = Some(r.received_at);
            row.assignee = r.assignee.clone();
            row.applicant_name = Some(r.reporter_name.clone());
            row.name_folded = Some(fold(&r.reporter_name));
        }
    }
    row
}

/// The row of document `id` (registered to `commune` as `kind`) from its stored changes in feed
/// order, each with its server receive time. Never fails: changes that do not read as a record
/// give a row with [`ReadModelRow::projection_error`].
pub fn project_changes(
    id: RecordId,
    commune: &str,
    kind: RecordKind,
    changes: &[(Vec<u8>, i64)],
    rules: &dyn ProcedureSource,
) -> ReadModelRow {
    let mut facts = DocFacts {
        changes: changes.len() as i64,
        first_received_at: changes.iter().map(|(_, at)| *at).min().unwrap_or(0),
        last_received_at: changes.iter().map(|(_, at)| *at).max().unwrap_or(0),
        ..DocFacts::default()
    };
    let bytes: Vec<Vec<u8>> = changes.iter().map(|(bytes, _)| bytes.clone()).collect();
    // The server checked every stored change when it was pushed.
    match RecordDoc::from_changes(id, kind, &bytes, DeviceId::default(), Source::Server) {
        Ok((mut doc, record)) => {
            read_doc_facts(&mut doc, &record, &mut facts);
            project_record(&record, commune, &facts, rules)
        }
        Err(error) => unreadable(id, commune, kind, &facts, error.to_string()),
    }
}

/// Fills the facts that the document itself says (conflicts; the time of the last status change,
/// read only when [`project_record`] uses it: a result given).
fn read_doc_facts(doc: &mut RecordDoc, record: &Record, facts: &mut DocFacts) {
    facts.has_conflicts = !doc.conflicts().is_empty();
    let needs_status_time = matches!(record, Record::Application(a) if result_given(a.status));
    facts.status_changed_at = if needs_status_time {
        doc.history()
            .iter()
            .filter(|entry| entry.fields.iter().any(|f| f == "status" || f == "created"))
            .map(|entry| entry.device_time)
            .max()
    } else {
        None
    };
}

/// Whether this build writes the read model: always, except a server built with the
/// `bench-no-read-model` feature to measure what the read model costs a sync.
pub const ENABLED: bool = !cfg!(feature = "bench-no-read-model");

/// A row the push path computed from the document it has just checked (the stored history and
/// the pushed changes applied), handed to [`super::ServerStorage::ingest`] with the document so
/// that storage need not read and decode the document's changes again.
///
/// Storage writes it only when the row it holds counts exactly `base_changes` stored changes (the
/// history the checker read: changes are only ever added, so the same count is the same set),
/// or, for a document registered by this very ingest, when `base_changes` is 0. Otherwise (a
/// concurrent push of the same record committed in between, or a document without a row)
/// storage projects the document from its stored changes, as the rebuild does. Storage fills the
/// server facts (`changes`, `first_received_at`, `last_received_at`) either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projected {
    /// The row; its server facts are storage's to fill.
    pub row: ReadModelRow,
    /// Stored changes of the document the checker built on (0 for a record new to it).
    pub base_changes: i64,
    /// The rules the row was computed with: storage projects with them when the row is stale.
    pub rules: ProjectionRules,
}

/// [`DeadlineRules`] inside a [`Projected`] (compared by identity).
#[derive(Clone)]
pub struct ProjectionRules(pub DeadlineRules);

impl std::fmt::Debug for ProjectionRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProjectionRules(..)")
    }
}

impl PartialEq for ProjectionRules {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ProjectionRules {}

/// What storage holds of a document's row before an ingest: `(changes, first_received_at,
/// last_received_at)` if it has a row.
pub(crate) type StoredFacts = Option<(i64, i64, i64)>;

/// The row to write for `projected` after an ingest that stored `stored_now` of the document's
/// changes at `now`, given the row storage held (`before`) and whether this ingest registered
/// the document; `None` when the projection may be stale and the document must be projected
/// from its stored changes (see [`Projected`]).
pub(crate) fn complete_projected(
    projected: Projected,
    before: StoredFacts,
    registered_here: bool,
    stored_now: i64,
    now: i64,
) -> Option<ReadModelRow> {
    let mut row = projected.row;
    let (changes, first, last) = match before {
        None if registered_here && projected.base_changes == 0 => (0, now, now),
        Some((changes, first, last)) if !registered_here && changes == projected.base_changes => {
            (changes, first.min(now), last.max(now))
        }
        _ => return None,
    };
    row.changes = changes.saturating_add(stored_now);
    row.first_received_at = first;
    row.last_received_at = last;
    Some(row)
}

/// The projection of `record`, registered to `commune`, read from `doc` (its document, with the
/// pushed changes applied) that was built on `base_changes` stored changes.
pub fn project_checked(
    doc: &mut RecordDoc,
    record: &Record,
    commune: &str,
    base_changes: usize,
    rules: &DeadlineRules,
) -> Projected {
    let mut facts = DocFacts::default();
    read_doc_facts(doc, record, &mut facts);
    Projected {
        row: project_record(record, commune, &facts, rules.as_ref()),
        rules: ProjectionRules(rules.clone()),
        base_changes: i64::try_from(base_changes).unwrap_or(i64::MAX),
    }
}

/// The row of a document whose changes do not read as a record.
fn unreadable(
    id: RecordId,
    commune: &str,
    kind: RecordKind,
    facts: &DocFacts,
    error: String,
) -> ReadModelRow {
    ReadModelRow {
        id,
        commune: commune.to_owned(),
        kind,
        status: None,
        procedure_code: None,
        procedure_version: None,
        dossier_number: None,
        received_at: None,
        due_on: None,
        returned_at: None,
        on_time: None,
        assignee: None,
        has_conflicts: false,
        applicant_name: None,
        name_folded: None,
        id_number: None,
        attachments: None,
        changes: facts.changes,
        first_received_at: facts.first_received_at,
        last_received_at: facts.last_received_at,
        projection_error: Some(super::truncate_utf8(&error, 500).to_owned()),
    }
}

/// Read-model columns, in the order rows are written and read.
pub(crate) const COLUMNS: &str = "id, commune, kind, status, procedure_code, procedure_version, \
     dossier_number, received_at, due_on, returned_at, on_time, assignee, has_conflicts, \
     applicant_name, name_folded, id_number, attachments, changes, first_received_at, \
     last_received_at, projection_error";

/// Number of [`COLUMNS`].
pub(crate) const COLUMN_COUNT: usize = 21;

/// A bound value of a query built here, for either backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SqlParam {
    Text(String),
    Int(i64),
    /// A record kind code (SMALLINT on PostgreSQL).
    Kind(i16),
}

/// The `WHERE ... ORDER BY ... LIMIT ... OFFSET ...` of a records query, with placeholders made
/// by `placeholder(n)` (1-based: `?n` on SQLite, `$n` on PostgreSQL), and its parameters.
pub(crate) fn records_tail(
    query: &super::RecordQuery,
    placeholder: fn(usize) -> String,
) -> (String, Vec<SqlParam>) {
    let mut clauses: Vec<String> = Vec::new();
    let mut params: Vec<SqlParam> = Vec::new();
    let mut push = |clause: &str, param: SqlParam, params: &mut Vec<SqlParam>| {
        params.push(param);
        clauses.push(clause.replace("{}", &placeholder(params.len())));
    };
    if let Some(commune) = &query.commune {
        push("commune = {}", SqlParam::Text(commune.clone()), &mut params);
    }
    if let Some(kind) = query.kind {
        let code = i16::try_from(kind.code()).unwrap_or(i16::MAX);
        push("kind = {}", SqlParam::Kind(code), &mut params);
    }
    if let Some(status) = &query.status {
        push("status = {}", SqlParam::Text(status.clone()), &mut params);
    }
    if let Some(code) = &query.procedure_code {
        push(
            "procedure_code = {}",
            SqlParam::Text(code.clone()),
            &mut params,
        );
    }
    if let Some(name) = &query.name {
        let pattern = super::like_contains(&fold(name.trim()));
        push(
            "name_folded LIKE {} ESCAPE '\\'",
            SqlParam::Text(pattern),
            &mut params,
        );
    }
    if let Some(number) = &query.id_number {
        push(
            "id_number = {}",
            SqlParam::Text(number.clone()),
            &mut params,
        );
    }
    if let Some(number) = &query.dossier_number {
        push(
            "dossier_number = {}",
            SqlParam::Text(number.clone()),
            &mut params,
        );
    }
    if let Some(day) = &query.overdue_on {
        push(
            &format!("{} AND due_on < {{}}", open_clause()),
            SqlParam::Text(day.clone()),
            &mut params,
        );
    }
    if let Some(from) = query.received_from {
        push("received_at >= {}", SqlParam::Int(from), &mut params);
    }
    if let Some(until) = query.received_until {
        push("received_at < {}", SqlParam::Int(until), &mut params);
    }
    let mut sql = String::new();
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    let limit = match query.limit {
        0 => super::MAX_RECORDS_LISTED,
        n => n.min(super::MAX_RECORDS_LISTED),
    };
    params.push(SqlParam::Int(limit as i64));
    let limit_at = placeholder(params.len());
    params.push(SqlParam::Int(
        i64::try_from(query.offset).unwrap_or(i64::MAX),
    ));
    let offset_at = placeholder(params.len());
    sql.push_str(&format!(
        " ORDER BY received_at IS NULL, received_at DESC, id LIMIT {limit_at} OFFSET {offset_at}"
    ));
    (sql, params)
}

/// `status IN (<open statuses>)`.
/// Open records re-projected per transaction by [`super::ServerStorage::reproject_open`].
pub(crate) const REPROJECT_PAGE: usize = 500;

pub(crate) fn open_clause() -> String {
    let names: Vec<String> = super::OPEN_STATUSES
        .iter()
        .map(|name| format!("'{name}'"))
        .collect();
    format!("status IN ({})", names.join(", "))
}

/// Dashboard figures per commune and status; parameters: week start, month start, today.
pub(crate) fn summaries_sql(placeholder: fn(usize) -> String) -> String {
    let (week, month, today) = (placeholder(1), placeholder(2), placeholder(3));
    // Counts, overdue and verdicts from the maintained counts (migration 7); the records
    // received this week and month from the rows received since the earlier of the two starts
    // (an index range). Each group has its figures in one part and zeros in the other. Sums are
    // cast: PostgreSQL sums BIGINT as NUMERIC.
    let sum = |expr: &str| format!("CAST(SUM({expr}) AS BIGINT)");
    let zero = "CAST(0 AS BIGINT)";
    format!(
        "SELECT commune, NULLIF(status, ''), {count}, {zero}, {zero}, {overdue}, {on_time}, \
         {late} FROM read_model_counts GROUP BY commune, status \
         UNION ALL \
         SELECT commune, status, {zero}, {in_week}, {in_month}, {zero}, {zero}, {zero} \
         FROM read_model \
         WHERE received_at >= CASE WHEN {week} < {month} THEN {week} ELSE {month} END \
         GROUP BY commune, status",
        count = sum("n"),
        overdue = sum(&format!(
            "CASE WHEN due_on <> '' AND due_on < {today} THEN n ELSE 0 END"
        )),
        on_time = sum("CASE WHEN on_time = 1 THEN n ELSE 0 END"),
        late = sum("CASE WHEN on_time = 0 THEN n ELSE 0 END"),
        in_week = sum(&format!(
            "CASE WHEN received_at >= {week} THEN 1 ELSE 0 END"
        )),
        in_month = sum(&format!(
            "CASE WHEN received_at >= {month} THEN 1 ELSE 0 END"
        )),
    )
}

/// One group of [`summaries_sql`].
pub(crate) struct SummaryGroup {
    pub(crate) commune: String,
    pub(crate) status: Option<String>,
    pub(crate) count: i64,
    pub(crate) week: i64,
    pub(crate) month: i64,
    pub(crate) due_before_today: i64,
    pub(crate) on_time: i64,
    pub(crate) late: i64,
}

/// Folds the groups into one summary per commune, with every commune in `communes` present.
pub(crate) fn fold_summaries(
    communes: Vec<String>,
    groups: Vec<SummaryGroup>,
) -> Vec<super::CommuneSummary> {
    let mut by_commune: std::collections::BTreeMap<String, super::CommuneSummary> = communes
        .into_iter()
        .map(|code| {
            let summary = super::CommuneSummary {
                commune: code.clone(),
                ..Default::default()
            };
            (code, summary)
        })
        .collect();
    let n = |value: i64| super::to_u64(value);
    for group in groups {
        let summary =
            by_commune
                .entry(group.commune.clone())
                .or_insert_with(|| super::CommuneSummary {
                    commune: group.commune.clone(),
                    ..Default::default()
                });
        summary.received_this_week += n(group.week);
        summary.received_this_month += n(group.month);
        summary.on_time += n(group.on_time);
        summary.late += n(group.late);
        match group.status {
            Some(status) => {
                if super::OPEN_STATUSES.contains(&status.as_str()) {
                    summary.open += n(group.count);
                    summary.overdue += n(group.due_before_today);
                }
                *summary.by_status.entry(status).or_default() += n(group.count);
            }
            None => summary.unreadable += n(group.count),
        }
    }
    by_commune.into_values().collect()
}

/// The periodic report per commune and procedure; parameters: from, until, last day.
pub(crate) fn report_sql(placeholder: fn(usize) -> String) -> String {
    let (from, until, day) = (placeholder(1), placeholder(2), placeholder(3));
    let open = open_clause();
    format!(
        "SELECT commune, COALESCE(procedure_code, ''), \
         SUM(CASE WHEN received_at >= {from} AND received_at < {until} THEN 1 ELSE 0 END), \
         SUM(CASE WHEN returned_at >= {from} AND returned_at < {until} AND on_time = TRUE \
             THEN 1 ELSE 0 END), \
         SUM(CASE WHEN returned_at >= {from} AND returned_at < {until} AND on_time = FALSE \
             THEN 1 ELSE 0 END), \
         SUM(CASE WHEN {open} AND received_at < {until} AND due_on < {day} THEN 1 ELSE 0 END) \
         FROM read_model WHERE projection_error IS NULL \
         GROUP BY commune, COALESCE(procedure_code, '')"
    )
}

/// Report rows with a figure, by commune then procedure.
pub(crate) fn report_rows(rows: Vec<(String, String, [i64; 4])>) -> Vec<super::ReportRow> {
    let mut out: Vec<super::ReportRow> = rows
        .into_iter()
        .filter(|(_, _, figures)| figures.iter().any(|n| *n > 0))
        .map(
            |(commune, procedure_code, [r, ok, late, overdue])| super::ReportRow {
                commune,
                procedure_code,
                received: super::to_u64(r),
                processed_on_time: super::to_u64(ok),
                processed_late: super::to_u64(late),
                overdue: super::to_u64(overdue),
            },
        )
        .collect();
    out.sort();
    out
}
