//! Operator reports over the read model: the province dashboard's periods, the periodic report
//! for a date range, and exports of records and reports as CSV or JSON for the provincial
//! one-stop system. Shared by the admin API, the CLI and the console.
//!
//! The contract. Days are civil days in Vietnam (UTC+7): a range `from..=to` covers
//! `[from 00:00, to+1 00:00)` in Vietnam time, and overdue is judged on the range's last day (or
//! today, if the range ends later). CSV is RFC 4180 (comma, CRLF, quotes doubled) with a header
//! line; a cell that a spreadsheet would read as a formula (starting with `=`, `+`, `-`, `@`, tab
//! or carriage return) is prefixed with `'`, because names come from tablets and a tablet may be
//! hostile. Exports are bounded: at most [`crate::storage::MAX_RECORDS_LISTED`] records per call,
//! paged with `offset`.

use communesync_core::catalogue::CivilDate;
use serde::Serialize;
use time::{Duration, UtcOffset, Weekday};

use crate::storage::{ReadModelRow, ReportRow};

/// Vietnam's offset from UTC (no daylight saving).
const VIETNAM: UtcOffset = match UtcOffset::from_hms(7, 0, 0) {
    Ok(offset) => offset,
    Err(_) => UtcOffset::UTC,
};

/// Start of `day` in Vietnam, ms since the Unix epoch.
pub fn day_start_ms(day: CivilDate) -> i64 {
    let at = day.0.midnight().assume_offset(VIETNAM);
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The dashboard's periods at `now_ms`: today, and the starts of this week (Monday) and this
/// month, in Vietnam.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    /// Today (overdue is judged on it).
    pub today: CivilDate,
    /// Start of this week (Monday 00:00), ms.
    pub week_from: i64,
    /// Start of this month (the 1st, 00:00), ms.
    pub month_from: i64,
}

impl Periods {
    /// The periods containing `now_ms`.
    pub fn at(now_ms: i64) -> Self {
        let today = CivilDate::from_unix_millis(now_ms).unwrap_or_else(|_| CivilDate::today());
        let since_monday = i64::from(today.0.weekday().number_days_from_monday());
        let monday = CivilDate(today.0 - Duration::days(since_monday));
        let first = CivilDate(today.0.replace_day(1).unwrap_or(today.0));
        debug_assert_eq!(monday.0.weekday(), Weekday::Monday);
        Periods {
            today,
            week_from: day_start_ms(monday),
            month_from: day_start_ms(first),
        }
    }
}

/// A report's range: `from..=to` (civil days), as storage wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportRange {
    /// First day.
    pub from: CivilDate,
    /// Last day (inclusive).
    pub to: CivilDate,
}

/// Longest report range accepted, in days.
pub const MAX_REPORT_DAYS: i64 = 3_700;

impl ReportRange {
    /// The range, or why not: `to` before `from`, or longer than [`MAX_REPORT_DAYS`].
    pub fn new(from: CivilDate, to: CivilDate) -> Result<Self, String> {
        if to.0 < from.0 {
            return Err(format!("the range ends ({to}) before it starts ({from})"));
        }
        if (to.0 - from.0).whole_days() >= MAX_REPORT_DAYS {
            return Err(format!("a report covers at most {MAX_REPORT_DAYS} days"));
        }
        Ok(ReportRange { from, to })
    }

    /// Start (inclusive) and end (exclusive), ms.
    pub fn bounds_ms(&self) -> (i64, i64) {
        (day_start_ms(self.from), day_start_ms(self.to.plus_days(1)))
    }

    /// The day overdue is judged on: the last day, or `today` when the range ends later.
    pub fn judged_on(&self, today: CivilDate) -> CivilDate {
        if self.to.0 > today.0 { today } else { self.to }
    }
}

/// The periodic report as exported: the range and its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// First day, `YYYY-MM-DD`.
    pub from: String,
    /// Last day, `YYYY-MM-DD` (inclusive).
    pub to: String,
    /// The day overdue was judged on.
    pub overdue_judged_on: String,
    /// One line per commune and procedure.
    pub lines: Vec<ReportRow>,
}

/// Runs the periodic report over `range`.
pub async fn report(
    storage: &dyn crate::storage::ServerStorage,
    range: ReportRange,
    now_ms: i64,
) -> Result<Report, crate::storage::StorageError> {
    let (from, until) = range.bounds_ms();
    let today = CivilDate::from_unix_millis(now_ms).unwrap_or_else(|_| CivilDate::today());
    let judged = range.judged_on(today);
    let lines = storage.report(from, until, &judged.to_string()).await?;
    Ok(Report {
        from: range.from.to_string(),
        to: range.to.to_string(),
        overdue_judged_on: judged.to_string(),
        lines,
    })
}

/// Output format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated values with a header line.
    #[default]
    Csv,
    /// JSON.
    Json,
}

/// One CSV cell: quoted when needed, formula-looking text defused.
fn cell(text: &str) -> String {
    let defused = match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}"),
        _ => text.to_owned(),
    };
    if defused.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

fn csv_line(cells: &[String]) -> String {
    let mut line = cells.iter().map(|c| cell(c)).collect::<Vec<_>>().join(",");
    line.push_str("\r\n");
    line
}

fn opt<T: ToString>(value: &Option<T>) -> String {
    value.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// The report as CSV: `from,to,commune,procedure_code,received,processed_on_time,processed_late,overdue`.
pub fn report_csv(report: &Report) -> String {
    let mut out = csv_line(
        &[
            "from",
            "to",
            "commune",
            "procedure_code",
            "received",
            "processed_on_time",
            "processed_late",
            "overdue",
        ]
        .map(String::from),
    );
    for line in &report.lines {
        out.push_str(&csv_line(&[
            report.from.clone(),
            report.to.clone(),
            line.commune.clone(),
            line.procedure_code.clone(),
            line.received.to_string(),
            line.processed_on_time.to_string(),
            line.processed_late.to_string(),
            line.overdue.to_string(),
        ]));
    }
    out
}

/// Columns of a records export, in order.
pub const RECORD_COLUMNS: [&str; 19] = [
    "id",
    "commune",
    "kind",
    "status",
    "procedure_code",
    "procedure_version",
    "dossier_number",
    "received_at",
    "due_on",
    "returned_at",
    "on_time",
    "assignee",
    "has_conflicts",
    "applicant_name",
    "id_number",
    "attachments",
    "changes",
    "last_received_at",
    "projection_error",
];

/// Records as CSV ([`RECORD_COLUMNS`]; times as RFC 3339 in Vietnam time).
pub fn records_csv(rows: &[ReadModelRow]) -> String {
    let mut out = csv_line(&RECORD_COLUMNS.map(String::from));
    for row in rows {
        out.push_str(&csv_line(&[
            row.id.to_string(),
            row.commune.clone(),
            row.kind.to_string(),
            opt(&row.status),
            opt(&row.procedure_code),
            opt(&row.procedure_version),
            opt(&row.dossier_number),
            opt(&row.received_at.map(rfc3339)),
            opt(&row.due_on),
            opt(&row.returned_at.map(rfc3339)),
            opt(&row.on_time),
            opt(&row.assignee),
            row.has_conflicts.to_string(),
            opt(&row.applicant_name),
            opt(&row.id_number),
            opt(&row.attachments),
            row.changes.to_string(),
            rfc3339(row.last_received_at),
            opt(&row.projection_error),
        ]));
    }
    out
}

/// `ms` as RFC 3339 in Vietnam time (`2026-09-01T08:30:00+07:00`).
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .map(|at| at.to_offset(VIETNAM))
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_vietnamese_days() {
        let day: CivilDate = "2026-09-01".parse().unwrap();
        assert_eq!(day_start_ms(day), 1_788_195_600_000);
        assert_eq!(rfc3339(1_788_195_600_000), "2026-09-01T00:00:00+07:00");
        // Thursday 2026-09-03 10:00 in Vietnam: week from Monday 08-31, month from 09-01.
        let periods = Periods::at(1_788_195_600_000 + 2 * 86_400_000 + 10 * 3_600_000);
        assert_eq!(periods.today.to_string(), "2026-09-03");
        assert_eq!(periods.week_from, 1_788_195_600_000 - 86_400_000);
        assert_eq!(periods.month_from, 1_788_195_600_000);
    }

    #[test]
    fn ranges_are_checked_and_inclusive() {
        let d = |s: &str| s.parse::<CivilDate>().unwrap();
        assert!(ReportRange::new(d("2026-09-02"), d("2026-09-01")).is_err());
        assert!(ReportRange::new(d("2000-01-01"), d("2026-09-01")).is_err());
        let range = ReportRange::new(d("2026-09-01"), d("2026-09-30")).unwrap();
        assert_eq!(
            range.bounds_ms(),
            (1_788_195_600_000, 1_788_195_600_000 + 30 * 86_400_000)
        );
        assert_eq!(range.judged_on(d("2026-09-10")).to_string(), "2026-09-10");
        assert_eq!(range.judged_on(d("2026-12-10")).to_string(), "2026-09-30");
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("-1"), "'-1");
        assert_eq!(cell("line\nbreak"), "\"line\nbreak\"");
        let report = Report {
            from: "2026-09-01".into(),
            to: "2026-09-30".into(),
            overdue_judged_on: "2026-09-30".into(),
            lines: vec![ReportRow {
                commune: "c1".into(),
                procedure_code: "khai_sinh".into(),
                received: 3,
                processed_on_time: 2,
                processed_late: 1,
                overdue: 0,
            }],
        };
        assert_eq!(
            report_csv(&report),
            "from,to,commune,procedure_code,received,processed_on_time,processed_late,overdue\r\n\
             2026-09-01,2026-09-30,c1,khai_sinh,3,2,1,0\r\n"
        );
    }
}
