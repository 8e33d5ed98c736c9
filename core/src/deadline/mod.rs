//! Statutory time of a dossier: clock events and the effective due date.
//!
//! Contract. A dossier's `due_at` is the date computed at intake and never changes. What the
//! office owes the citizen is the *effective* deadline, one pure function
//! ([`effective_deadline`]) of the dossier (receipt time, clock events), the processing time of
//! the procedure version it pinned (working days, or working hours) and the working calendar:
//! - the deadline counts from the receipt as the calendar counts (the receipt day does not
//!   count; hours-based procedures count office hours of working days);
//! - a supplement pause ([`ClockEventKind::Pause`], recorded with the move to
//!   `supplement_requested`) stops the clock until the resume ([`ClockEventKind::Resume`],
//!   recorded when the dossier leaves that status): the working time in between (working days
//!   after the pause's day up to the resume's day, or office minutes for hours-based
//!   procedures) is added to the deadline;
//! - an extension ([`ClockEventKind::Extension`], the apology slip) replaces the due date with
//!   its appointment date;
//! - events apply in list order: the order they were appended, which is causal (an event
//!   appended after another was seen comes after it) and, for events two tablets appended
//!   concurrently, the same on every replica once merged. Not by their times: two tablets'
//!   clocks disagree, and a resume timed a moment before its pause still ends that pause.
//!
//! A dossier imported already returned carries the register's return time and the verdict
//! [`imported_verdict`] gives (its due date against that time), set by the import.
//!
//! At return the verdict ([`is_on_time`]) is recorded in the dossier with the transition; the
//! integrity rules (`integrity::deadline`) refuse any other verdict, on the device and on the
//! server. Every loop is bounded: event times count only within [`MAX_SPAN_MS`] after the
//! receipt, and a dossier holds at most [`MAX_CLOCK_EVENTS`] events.

use autosurgeon::{Hydrate, Reconcile};
use serde::{Deserialize, Serialize};

use crate::catalogue::{CivilDate, Deadline, ProcessingTime, WorkingCalendar};
use crate::integrity::{ProcedureLookup, ProcedureSource};
use crate::record::Application;

/// Most clock events one dossier holds.
pub const MAX_CLOCK_EVENTS: usize = 100;
/// Longest reason (what is missing, why the extension) in bytes.
pub const MAX_CLOCK_TEXT: usize = 1000;
/// Event times count within this span after the receipt (ten years): what bounds the counting.
pub const MAX_SPAN_MS: i64 = 3650 * 24 * 3600 * 1000;

/// What a clock event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Reconcile, Hydrate, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockEventKind {
    /// The office asks the applicant for a supplement: the clock stops.
    #[autosurgeon(rename = "pause")]
    Pause,
    /// The dossier is complete again: the clock restarts.
    #[autosurgeon(rename = "resume")]
    Resume,
    /// The office will be late and gives a new appointment (the apology slip).
    #[autosurgeon(rename = "extension")]
    Extension,
}

impl ClockEventKind {
    /// Name on disk, on the wire and in the bindings.
    pub fn as_str(self) -> &'static str {
        match self {
            ClockEventKind::Pause => "pause",
            ClockEventKind::Resume => "resume",
            ClockEventKind::Extension => "extension",
        }
    }
}

/// One event of a dossier's statutory clock. Events are appended, never edited or removed;
/// the list merges by event id.
#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct ClockEvent {
    /// Event id (a UUIDv7), the key the list merges by.
    #[key]
    pub id: String,
    /// What it does.
    pub kind: ClockEventKind,
    /// When, ms since the Unix epoch (the device's corrected time).
    pub at: i64,
    /// Officer who recorded it.
    pub officer: String,
    /// What is missing (a pause), why (an extension); empty for a resume.
    #[serde(default)]
    pub reason: String,
    /// The new appointment date (an extension only).
    #[serde(default)]
    pub appointment: Option<CivilDate>,
}

impl ClockEvent {
    /// A new event with a fresh id.
    pub fn new(kind: ClockEventKind, at: i64, officer: &str, reason: &str) -> Self {
        ClockEvent {
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            at,
            officer: officer.to_owned(),
            reason: reason.to_owned(),
            appointment: None,
        }
    }
}

/// A dossier's effective deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveDeadline {
    /// When it is due: the date, and the instant for an hours-based deadline. While paused, the
    /// deadline as if the dossier were complete again at the pause (the time left is kept).
    pub due: Deadline,
    /// Since when the clock is stopped (ms), while a supplement is awaited.
    pub paused_since: Option<i64>,
    /// Whether an extension set the date.
    pub extended: bool,
}

/// The processing time a dossier counts with: that of the procedure version it pinned when the
/// checker knows it; otherwise the working days from receipt to the `due_at` computed at intake
/// (a dossier of a procedure this catalogue lacks, or taken before versions were pinned).
pub fn processing_of(
    app: &Application,
    procedures: &dyn ProcedureSource,
    calendar: &WorkingCalendar,
) -> ProcessingTime {
    match procedures.lookup(&app.procedure_code, app.procedure_version) {
        ProcedureLookup::Known(procedure) => procedure.processing,
        ProcedureLookup::UnknownVersion | ProcedureLookup::UnknownCode => {
            derived_processing(app, calendar)
        }
    }
}

/// The working days from receipt to the intake's `due_at`.
pub fn derived_processing(app: &Application, calendar: &WorkingCalendar) -> ProcessingTime {
    let received = date_of(app.received_at).unwrap_or(app.due_at);
    // Both dates are the dossier's; the span is bounded like the events'.
    let limit = received.plus_days(i64::from(crate::catalogue::calendar::MAX_SPAN_DAYS));
    let days = calendar.working_days_between(received, app.due_at.min(limit));
    ProcessingTime::WorkingDays(u32::try_from(days.max(0)).unwrap_or(0))
}

/// The effective deadline of `app` (see the module's contract).
pub fn effective_deadline(
    app: &Application,
    processing: ProcessingTime,
    calendar: &WorkingCalendar,
) -> EffectiveDeadline {
    let received = app.received_at;
    let clamp = |at: i64| at.clamp(received, received.saturating_add(MAX_SPAN_MS));
    let mut due = calendar.deadline(received, processing);
    let mut paused_since: Option<i64> = None;
    let mut extended = false;
    for event in app.clock_events.iter().take(MAX_CLOCK_EVENTS) {
        match event.kind {
            ClockEventKind::Pause => {
                if paused_since.is_none() {
                    paused_since = Some(clamp(event.at));
                }
            }
            ClockEventKind::Resume => {
                if let Some(from) = paused_since.take() {
                    due = shifted(calendar, due, from, clamp(event.at).max(from));
                }
            }
            ClockEventKind::Extension => {
                if let Some(day) = event.appointment {
                    due = Deadline {
                        date: day,
                        at_ms: None,
                    };
                    extended = true;
                }
            }
        }
    }
    EffectiveDeadline {
        due,
        paused_since,
        extended,
    }
}

/// `due` moved by the working time between `from` and `to` (a pause).
fn shifted(calendar: &WorkingCalendar, due: Deadline, from: i64, to: i64) -> Deadline {
    match due.at_ms {
        Some(at) => {
            let at = calendar.add_working_minutes(at, calendar.working_minutes_between(from, to));
            Deadline {
                date: date_of(at).unwrap_or(due.date),
                at_ms: Some(at),
            }
        }
        None => {
            let (Ok(from), Ok(to)) = (date_of(from), date_of(to)) else {
                return due;
            };
            let days = calendar.working_days_between(from, to);
            match u32::try_from(days) {
                Ok(days) if days > 0 => Deadline {
                    date: calendar.add_working_days(due.date, days),
                    at_ms: None,
                },
                _ => due,
            }
        }
    }
}

/// Whether a return at `returned_at` meets `due`: by the instant for an hours-based deadline,
/// by the civil day in Vietnam otherwise.
pub fn is_on_time(due: &Deadline, returned_at: i64) -> bool {
    match due.at_ms {
        Some(at) => returned_at <= at,
        None => date_of(returned_at).is_ok_and(|day| day <= due.date),
    }
}

/// The verdict the dossier must record when returned at `returned_at`.
pub fn verdict(
    app: &Application,
    processing: ProcessingTime,
    calendar: &WorkingCalendar,
    returned_at: i64,
) -> bool {
    is_on_time(
        &effective_deadline(app, processing, calendar).due,
        returned_at,
    )
}

/// The verdict of a dossier imported already returned: the register's return time against the
/// dossier's `due_at` (the register's due date, or the one the import computed), by the civil
/// day. The register's clock history (pauses, extensions) is not imported: its due date stands
/// for the effective deadline, whatever calendar the checker holds.
pub fn imported_verdict(due_at: CivilDate, returned_at: i64) -> bool {
    is_on_time(
        &Deadline {
            date: due_at,
            at_ms: None,
        },
        returned_at,
    )
}

fn date_of(ms: i64) -> crate::Result<CivilDate> {
    CivilDate::from_unix_millis(ms)
}

#[cfg(test)]
mod tests;
