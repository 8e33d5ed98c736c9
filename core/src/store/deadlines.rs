//! Statutory time on the device: supplement pauses, resumes, extensions and the return
//! verdict as edits of a dossier, its effective deadline, and the projection the due-soon,
//! overdue and on-time/late lists read.
//!
//! Contract: every status change made through the store records what the statutory clock
//! needs in the same change (a pause with the move to `supplement_requested`, a resume when
//! leaving it, the return time and its verdict with the move to `returned`), so the
//! integrity rules (`integrity::deadline`) hold for every edit this device makes. The
//! projection's `effective_due` (NULL while the clock is stopped) and `returned_on_time` are
//! written in the transaction of every change, from the calendar and the pinned procedure
//! version on disk; [`DeviceStore::recompute_deadlines`] rewrites them for open dossiers when
//! the calendar changes.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use super::DeviceStore;
use crate::catalogue::{CivilDate, ProcessingTime, WorkingCalendar};
use crate::deadline::{
    ClockEvent, ClockEventKind, MAX_CLOCK_TEXT, derived_processing, effective_deadline,
    processing_of, verdict,
};
use crate::record::{Application, RecordId, Status};
use crate::{Error, Result};

/// Most dossiers one on-time/late page returns.
pub const MAX_VERDICT_PAGE: u32 = 500;
/// Open dossiers re-read per transaction by [`DeviceStore::recompute_deadlines`].
const RECOMPUTE_BATCH: usize = 500;

/// A dossier's statutory time as the app shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DossierDeadline {
    /// The due date computed at intake (never changes).
    pub statutory_due: CivilDate,
    /// The effective due date (pauses and extensions counted, the current calendar).
    pub due_date: CivilDate,
    /// The effective due instant for an hours-based deadline (ms since epoch).
    pub due_at_ms: Option<i64>,
    /// Since when the clock is stopped (a supplement awaited), ms since epoch.
    pub paused_since: Option<i64>,
    /// Whether an extension set the due date.
    pub extended: bool,
    /// When the result was handed over.
    pub returned_at: Option<i64>,
    /// Whether that was on time.
    pub returned_on_time: Option<bool>,
    /// The clock's events, in the order they count (appended, merged).
    pub events: Vec<ClockEvent>,
}

/// A returned dossier in an on-time or late list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnedDossier {
    /// Record id.
    pub id: RecordId,
    /// Dossier number, when it has one.
    pub dossier_number: Option<String>,
    /// Procedure code.
    pub procedure_code: String,
    /// Applicant's name.
    pub applicant_name: String,
    /// Receipt time, ms since epoch.
    pub received_at: i64,
    /// The effective due date it was judged by.
    pub due_date: Option<CivilDate>,
    /// Whether it was returned on time.
    pub on_time: bool,
}

impl DeviceStore {
    /// Asks the applicant for a supplement: the dossier moves to `supplement_requested` and the
    /// statutory clock stops, recording `missing` (what is missing), the time and the officer.
    pub fn request_supplement(
        &mut self,
        id: RecordId,
        officer: &str,
        missing: &str,
    ) -> Result<Application> {
        if missing.trim().is_empty() {
            return Err(Error::invalid("missing", "say what is missing"));
        }
        let mut event = ClockEvent::new(ClockEventKind::Pause, self.now_ms(), officer, missing);
        self.update_application(id, officer, |app| {
            event.at = event_time(event.at, app);
            app.status = Status::SupplementRequested;
            app.clock_events.push(event);
        })
    }

    /// The dossier is complete again: back to `in_progress`, and the clock restarts.
    pub fn mark_complete(&mut self, id: RecordId, officer: &str) -> Result<Application> {
        self.transition(id, officer, Status::InProgress)
    }

    /// Extends the deadline (the apology slip): `reason` and the new `appointment`, which must
    /// be after the current effective due date.
    pub fn extend_deadline(
        &mut self,
        id: RecordId,
        officer: &str,
        reason: &str,
        appointment: CivilDate,
    ) -> Result<Application> {
        if reason.trim().is_empty() || reason.len() > MAX_CLOCK_TEXT {
            return Err(Error::invalid(
                "reason",
                format!("give the reason in 1 to {MAX_CLOCK_TEXT} bytes"),
            ));
        }
        let mut event = ClockEvent::new(ClockEventKind::Extension, self.now_ms(), officer, reason);
        event.appointment = Some(appointment);
        self.update_application(id, officer, |app| {
            event.at = event_time(event.at, app);
            app.clock_events.push(event);
        })
    }

    /// Hands the result over: the dossier moves to `returned`, with the time and whether it
    /// was on time.
    pub fn return_dossier(&mut self, id: RecordId, officer: &str) -> Result<Application> {
        self.transition(id, officer, Status::Returned)
    }

    /// The dossier's statutory time: intake due date, effective deadline, pause, verdict.
    pub fn dossier_deadline(&mut self, id: RecordId) -> Result<DossierDeadline> {
        let app = self.get_application(id)?;
        let processing = processing_of(&app, &*self, &self.calendar);
        let effective = effective_deadline(&app, processing, &self.calendar);
        let events = app.clock_events.clone();
        Ok(DossierDeadline {
            statutory_due: app.due_at,
            due_date: effective.due.date,
            due_at_ms: effective.due.at_ms,
            paused_since: effective.paused_since,
            extended: effective.extended,
            returned_at: app.returned_at,
            returned_on_time: app.returned_on_time,
            events,
        })
    }

    /// Returned dossiers judged on time (`on_time`) or late, most recently received first.
    pub fn returned_by_verdict(
        &self,
        on_time: bool,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<ReturnedDossier>> {
        let limit = limit.clamp(1, MAX_VERDICT_PAGE);
        let mut stmt = self.connection().prepare_cached(
            "SELECT d.id, a.dossier_number, a.procedure_code, a.applicant_name, a.received_at,
                    a.effective_due
             FROM applications a JOIN documents d ON d.rowid = a.doc
             WHERE a.returned_on_time = ?1
             ORDER BY a.received_at DESC, a.doc DESC
             LIMIT ?2 OFFSET ?3",
        )?;
        let rows = stmt
            .query_map(params![on_time, limit, offset], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, Option<String>>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, number, code, name, received_at, due)| {
                Ok(ReturnedDossier {
                    id: RecordId::from_slice(&id)
                        .ok_or_else(|| Error::invalid("id", "bad id bytes in store"))?,
                    dossier_number: number,
                    procedure_code: code,
                    applicant_name: name,
                    received_at,
                    due_date: due.map(|d| d.parse()).transpose()?,
                    on_time,
                })
            })
            .collect()
    }

    /// Recomputes the effective due date of every open dossier with the current calendar and
    /// catalogue (what the due-soon and overdue lists read). Call it when the calendar changes
    /// (a calendar delta, a catalogue install); returns how many dossiers were re-read.
    pub fn recompute_deadlines(&mut self) -> Result<usize> {
        let open: Vec<(i64, Vec<u8>)> = {
            let mut stmt = self.connection().prepare(
                "SELECT a.doc, d.id FROM applications a JOIN documents d ON d.rowid = a.doc
                 WHERE a.status IN ('received', 'in_progress', 'supplement_requested')",
            )?;
            stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        let mut done = 0;
        for batch in open.chunks(RECOMPUTE_BATCH) {
            let mut apps = Vec::with_capacity(batch.len());
            for (rowid, id) in batch {
                let Some(id) = RecordId::from_slice(id) else {
                    continue;
                };
                // A document that no longer reads keeps its row (quarantine shows it).
                if let Ok(app) = self.get_application(id) {
                    apps.push((*rowid, app));
                }
            }
            let tx = self.conn.transaction()?;
            for (rowid, app) in &apps {
                project(&tx, *rowid, app)?;
            }
            tx.commit()?;
            done += apps.len();
        }
        Ok(done)
    }

    /// What an edit adds for the statutory clock: a pause with the move to
    /// `supplement_requested` and a resume when leaving it (unless the edit recorded one), the
    /// return time and its verdict with the move to `returned`.
    pub(super) fn fill_clock(&self, before: &Application, after: &mut Application, officer: &str) {
        let now = event_time(self.now_ms(), after);
        let added = after.clock_events.len() > before.clock_events.len();
        let entering = before.status != Status::SupplementRequested
            && after.status == Status::SupplementRequested;
        let leaving = before.status == Status::SupplementRequested
            && after.status != Status::SupplementRequested;
        if !added && entering {
            after
                .clock_events
                .push(ClockEvent::new(ClockEventKind::Pause, now, officer, ""));
        } else if !added && leaving {
            after
                .clock_events
                .push(ClockEvent::new(ClockEventKind::Resume, now, officer, ""));
        }
        if before.status != Status::Returned
            && after.status == Status::Returned
            && after.returned_at.is_none()
        {
            let processing = processing_of(after, self, &self.calendar);
            after.returned_at = Some(now);
            after.returned_on_time = Some(verdict(after, processing, &self.calendar, now));
        }
    }
}

/// A clock event's time by this device's (corrected) clock, kept within what the rules accept:
/// a tablet whose clock is off still records its event, at the receipt at worst.
fn event_time(now: i64, app: &Application) -> i64 {
    now.clamp(
        app.received_at,
        app.received_at.saturating_add(crate::deadline::MAX_SPAN_MS),
    )
}

/// Writes the deadline columns of application `rowid` where they changed, from the calendar and
/// the pinned procedure version on disk (in the caller's transaction).
pub(super) fn project(tx: &Transaction<'_>, rowid: i64, app: &Application) -> Result<()> {
    let calendar = calendar_on_disk(tx)?;
    let processing = processing_on_disk(tx, app, &calendar)?;
    let effective = effective_deadline(app, processing, &calendar);
    let due = match effective.paused_since {
        Some(_) => None,
        None => Some(effective.due.date.to_string()),
    };
    tx.prepare_cached(
        "UPDATE applications SET effective_due = ?2, returned_on_time = ?3
         WHERE doc = ?1 AND (effective_due IS NOT ?2 OR returned_on_time IS NOT ?3)",
    )?
    .execute(params![rowid, due, app.returned_on_time])?;
    Ok(())
}

/// The calendar as the transaction sees it (cached statements: this runs with every change of an
/// application, and the two tables hold a few dozen days).
fn calendar_on_disk(conn: &Connection) -> Result<WorkingCalendar> {
    let mut overrides = Vec::new();
    for (sql, working) in [
        ("SELECT day FROM holidays", false),
        ("SELECT day FROM compensatory_days", true),
    ] {
        let days = conn
            .prepare_cached(sql)?
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for day in days {
            overrides.push(crate::catalogue::CalendarOverride {
                day: day.parse()?,
                working,
                reason: String::new(),
            });
        }
    }
    Ok(WorkingCalendar::from_overrides(&overrides))
}

/// The processing time of the procedure version `app` pinned, as this device stored it.
fn processing_on_disk(
    conn: &Connection,
    app: &Application,
    calendar: &WorkingCalendar,
) -> Result<ProcessingTime> {
    #[derive(Deserialize)]
    struct Timing {
        #[serde(default)]
        processing: Option<ProcessingTime>,
        #[serde(default)]
        processing_days: Option<u32>,
    }
    let version = i64::try_from(app.procedure_version).unwrap_or(i64::MAX);
    let pinned: Option<String> = conn
        .prepare_cached("SELECT body FROM procedure_versions WHERE code = ?1 AND version = ?2")?
        .query_row(params![app.procedure_code, version], |row| row.get(0))
        .optional()?;
    let current: Option<(Option<String>, u32, i64)> = match pinned {
        Some(_) => None,
        None => conn
            .prepare_cached(
                "SELECT body, processing_days, version FROM procedures WHERE code = ?1",
            )?
            .query_row([&app.procedure_code], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()?,
    };
    let body = match (pinned, current) {
        (Some(body), _) => Some(body),
        (None, Some((body, days, v))) if v == version => match body {
            Some(body) => Some(body),
            None => return Ok(ProcessingTime::WorkingDays(days)),
        },
        _ => None,
    };
    let timing = body.and_then(|b| serde_json::from_str::<Timing>(&b).ok());
    Ok(
        match timing.and_then(|t| {
            t.processing
                .or(t.processing_days.map(ProcessingTime::WorkingDays))
        }) {
            Some(time) => time,
            None => derived_processing(app, calendar),
        },
    )
}

/// The effective deadline as the lists read it, for tests.
#[cfg(test)]
pub(super) fn effective_due_column(conn: &Connection, id: RecordId) -> Result<Option<String>> {
    Ok(conn.query_row(
        "SELECT a.effective_due FROM applications a JOIN documents d ON d.rowid = a.doc
         WHERE d.id = ?1",
        [id.as_bytes().as_slice()],
        |row| row.get(0),
    )?)
}

#[cfg(test)]
#[path = "deadlines_tests.rs"]
mod tests;
