//! The statutory-time rules: what one change may do to a dossier's clock events and to its
//! return verdict (see [`crate::deadline`]).
//!
//! - Clock events are append-only: every event the dossier had is still there, unchanged; a
//!   change adds at most one, never past [`MAX_CLOCK_EVENTS`].
//! - A pause is recorded exactly with the move to `supplement_requested`, a resume exactly when
//!   the dossier leaves it; an extension only while the dossier is open, with a reason and an
//!   appointment after the current effective due date.
//! - No event is timed before the receipt, nor past [`MAX_SPAN_MS`] after it.
//! - An imported dossier is created without clock events; returned, it carries the register's
//!   return time and the verdict [`crate::deadline::imported_verdict`] gives (or, from older
//!   builds, neither field).
//! - `returned_at` and `returned_on_time` are set with the move to `returned` and never
//!   changed; the verdict is the one [`crate::deadline::verdict`] gives with the checker's
//!   calendar and the processing time of the pinned procedure version.

use std::collections::HashMap;

use crate::catalogue::WorkingCalendar;
use crate::deadline::{
    ClockEvent, ClockEventKind, MAX_CLOCK_EVENTS, MAX_CLOCK_TEXT, MAX_SPAN_MS, effective_deadline,
    imported_verdict, processing_of, verdict,
};
use crate::record::{Application, Imported, Status};

use super::RefusalCode;
use super::rules::{MAX_OFFICER, RuleContext, Violation};

fn refuse(code: RefusalCode, field: &str, reason: impl Into<String>) -> Violation {
    Violation {
        code,
        error: crate::Error::invalid(field, reason),
    }
}

/// The calendar a checker counts with (weekends only when it has none).
fn calendar_of<'a>(ctx: &'a RuleContext<'_>, fallback: &'a WorkingCalendar) -> &'a WorkingCalendar {
    ctx.procedure_at.calendar().unwrap_or(fallback)
}

/// The calendars a verdict or an appointment may hold under: the checker's, then the one the
/// device declared it holds (see [`crate::integrity::ProcedureSource::declared_calendar`]), at
/// most two whatever the device sent.
fn candidate_calendars<'a>(
    ctx: &'a RuleContext<'_>,
    own: &'a WorkingCalendar,
) -> impl Iterator<Item = &'a WorkingCalendar> {
    std::iter::once(own).chain(ctx.procedure_at.declared_calendar().filter(|c| *c != own))
}

/// A new dossier: received, no clock event and no return yet; or imported, without clock
/// events, its return (if any) the register's with the verdict [`imported_verdict`] gives.
pub(super) fn check_new_dossier(app: &Application) -> Result<(), Violation> {
    if let Some(imported) = &app.imported {
        return check_imported_return(app, imported);
    }
    if app.status == Status::Received
        && (!app.clock_events.is_empty()
            || app.returned_at.is_some()
            || app.returned_on_time.is_some())
    {
        return Err(refuse(
            RefusalCode::InvalidField,
            "clock_events",
            "a dossier just received has no clock event and no return",
        ));
    }
    Ok(())
}

/// An imported dossier's clock and return. Both return fields absent is accepted too: imports
/// made by builds that kept the register's return time in the marker only (the read model
/// judges those with the same function).
fn check_imported_return(app: &Application, imported: &Imported) -> Result<(), Violation> {
    if !app.clock_events.is_empty() {
        return Err(refuse(
            RefusalCode::InvalidField,
            "clock_events",
            "an imported dossier has no clock event (the register's due date stands for them)",
        ));
    }
    match (app.returned_at, app.returned_on_time) {
        (None, None) => Ok(()),
        (Some(at), Some(on_time)) => {
            if imported.returned_at != Some(at) {
                return Err(refuse(
                    RefusalCode::InvalidField,
                    "returned_at",
                    "an imported dossier's return time is the register's",
                ));
            }
            let expected = imported_verdict(app.due_at, at);
            if on_time != expected {
                return Err(refuse(
                    RefusalCode::InvalidField,
                    "returned_on_time",
                    format!(
                        "the return is {} by the due date {}",
                        if expected { "on time" } else { "late" },
                        app.due_at
                    ),
                ));
            }
            Ok(())
        }
        _ => Err(refuse(
            RefusalCode::InvalidField,
            "returned_at",
            "the return time and its verdict are recorded together",
        )),
    }
}

/// One change's effect on the statutory clock.
pub(super) fn check_clock_edit(
    before: &Application,
    after: &Application,
    ctx: &RuleContext<'_>,
) -> Result<(), Violation> {
    let added = appended(before, after)?;
    let default_calendar = WorkingCalendar::default();
    let calendar = calendar_of(ctx, &default_calendar);
    if let Some(event) = added {
        check_event(before, after, event, ctx, calendar)?;
    }
    let entering =
        before.status != Status::SupplementRequested && after.status == Status::SupplementRequested;
    let leaving =
        before.status == Status::SupplementRequested && after.status != Status::SupplementRequested;
    let kind = added.map(|e| e.kind);
    if entering && kind != Some(ClockEventKind::Pause) {
        return Err(refuse(
            RefusalCode::IllegalTransition,
            "clock_events",
            "the move to supplement_requested records a pause of the statutory clock",
        ));
    }
    if leaving && kind != Some(ClockEventKind::Resume) {
        return Err(refuse(
            RefusalCode::IllegalTransition,
            "clock_events",
            "leaving supplement_requested records the resume of the statutory clock",
        ));
    }
    check_return(before, after, ctx, calendar)
}

/// The event this change appends, if any; every earlier event must be kept as it was.
fn appended<'a>(
    before: &Application,
    after: &'a Application,
) -> Result<Option<&'a ClockEvent>, Violation> {
    let mut now: HashMap<&str, &ClockEvent> = HashMap::with_capacity(after.clock_events.len());
    for event in &after.clock_events {
        if now.insert(event.id.as_str(), event).is_some() {
            return Err(refuse(
                RefusalCode::InvalidField,
                "clock_events",
                "two clock events with one id",
            ));
        }
    }
    for event in &before.clock_events {
        if now.get(event.id.as_str()) != Some(&event) {
            return Err(refuse(
                RefusalCode::ImmutableField,
                "clock_events",
                "clock events are never edited or removed",
            ));
        }
    }
    let new = after.clock_events.len() - before.clock_events.len();
    if new > 1 {
        return Err(refuse(
            RefusalCode::InvalidField,
            "clock_events",
            "a change records at most one clock event",
        ));
    }
    if new == 1 && after.clock_events.len() > MAX_CLOCK_EVENTS {
        return Err(refuse(
            RefusalCode::TooLarge,
            "clock_events",
            format!("more than {MAX_CLOCK_EVENTS} clock events"),
        ));
    }
    let known: std::collections::HashSet<&str> =
        before.clock_events.iter().map(|e| e.id.as_str()).collect();
    Ok(after
        .clock_events
        .iter()
        .find(|e| !known.contains(e.id.as_str())))
}

fn check_text(field: &str, value: &str, max: usize, required: bool) -> Result<(), Violation> {
    if required && value.trim().is_empty() {
        return Err(refuse(
            RefusalCode::InvalidField,
            field,
            "must not be empty",
        ));
    }
    if value.len() > max {
        return Err(refuse(
            RefusalCode::TooLarge,
            field,
            format!("longer than {max} bytes"),
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(refuse(
            RefusalCode::InvalidField,
            field,
            "contains control characters",
        ));
    }
    Ok(())
}

fn check_event(
    before: &Application,
    after: &Application,
    event: &ClockEvent,
    ctx: &RuleContext<'_>,
    calendar: &WorkingCalendar,
) -> Result<(), Violation> {
    check_text("clock_events.id", &event.id, 64, true)?;
    check_text("clock_events.officer", &event.officer, MAX_OFFICER, true)?;
    check_text("clock_events.reason", &event.reason, MAX_CLOCK_TEXT, false)?;
    if event.at < after.received_at {
        return Err(refuse(
            RefusalCode::InvalidField,
            "clock_events.at",
            "a clock event cannot be before the receipt",
        ));
    }
    if event.at > after.received_at.saturating_add(MAX_SPAN_MS) {
        return Err(refuse(
            RefusalCode::InvalidField,
            "clock_events.at",
            "a clock event more than ten years after the receipt",
        ));
    }
    match event.kind {
        ClockEventKind::Pause | ClockEventKind::Resume => {
            if event.appointment.is_some() {
                return Err(refuse(
                    RefusalCode::InvalidField,
                    "clock_events.appointment",
                    "only an extension gives an appointment",
                ));
            }
            let ok = match event.kind {
                ClockEventKind::Pause => {
                    before.status != Status::SupplementRequested
                        && after.status == Status::SupplementRequested
                }
                _ => {
                    before.status == Status::SupplementRequested
                        && after.status != Status::SupplementRequested
                }
            };
            if !ok {
                return Err(refuse(
                    RefusalCode::IllegalTransition,
                    "clock_events",
                    "a pause is recorded only with the move to supplement_requested, a resume \
                     only when the dossier leaves it",
                ));
            }
        }
        ClockEventKind::Extension => {
            if !before.status.is_open() || after.status != before.status {
                return Err(refuse(
                    RefusalCode::IllegalTransition,
                    "clock_events",
                    "an extension is recorded on an open dossier, without a status change",
                ));
            }
            check_text("clock_events.reason", &event.reason, MAX_CLOCK_TEXT, true)?;
            let Some(appointment) = event.appointment else {
                return Err(refuse(
                    RefusalCode::InvalidField,
                    "clock_events.appointment",
                    "an extension gives the new appointment date",
                ));
            };
            // After the due date as the checker counts it, or as the device declared it
            // counted (its calendar may be older): the earliest of the two is the bar.
            let current = candidate_calendars(ctx, calendar)
                .map(|calendar| {
                    let processing = processing_of(before, ctx.procedure_at, calendar);
                    effective_deadline(before, processing, calendar).due.date
                })
                .min()
                .unwrap_or(before.due_at);
            if appointment <= current {
                return Err(refuse(
                    RefusalCode::InvalidField,
                    "clock_events.appointment",
                    format!("must be after the current due date {current}"),
                ));
            }
            let limit = crate::catalogue::CivilDate::from_unix_millis(
                after.received_at.saturating_add(MAX_SPAN_MS),
            )
            .map_err(|e| Violation {
                code: RefusalCode::InvalidField,
                error: e,
            })?;
            if appointment > limit {
                return Err(refuse(
                    RefusalCode::InvalidField,
                    "clock_events.appointment",
                    "more than ten years after the receipt",
                ));
            }
        }
    }
    Ok(())
}

fn check_return(
    before: &Application,
    after: &Application,
    ctx: &RuleContext<'_>,
    calendar: &WorkingCalendar,
) -> Result<(), Violation> {
    let was_set = before.returned_at.is_some() || before.returned_on_time.is_some();
    if was_set {
        if before.returned_at != after.returned_at
            || before.returned_on_time != after.returned_on_time
        {
            return Err(refuse(
                RefusalCode::ImmutableField,
                "returned_at",
                "the return and its verdict are recorded once",
            ));
        }
        return Ok(());
    }
    let returning = before.status != Status::Returned && after.status == Status::Returned;
    match (returning, after.returned_at, after.returned_on_time) {
        (false, None, None) => Ok(()),
        (false, _, _) => Err(refuse(
            RefusalCode::InvalidField,
            "returned_at",
            "is recorded only with the move to returned",
        )),
        (true, Some(at), Some(on_time)) => {
            if at < after.received_at {
                return Err(refuse(
                    RefusalCode::InvalidField,
                    "returned_at",
                    "cannot be before the receipt",
                ));
            }
            // The verdict stands if it is the one the checker's calendar gives, or the one the
            // calendar the device declared it holds gives (both published; ADR 0009).
            let holds = candidate_calendars(ctx, calendar).any(|calendar| {
                let processing = processing_of(after, ctx.procedure_at, calendar);
                verdict(after, processing, calendar, at) == on_time
            });
            if !holds {
                let processing = processing_of(after, ctx.procedure_at, calendar);
                let due = effective_deadline(after, processing, calendar).due;
                let expected = !on_time;
                return Err(refuse(
                    RefusalCode::InvalidField,
                    "returned_on_time",
                    format!(
                        "the return is {} by the effective due date {}",
                        if expected { "on time" } else { "late" },
                        due.date
                    ),
                ));
            }
            Ok(())
        }
        (true, _, _) => Err(refuse(
            RefusalCode::InvalidField,
            "returned_at",
            "the move to returned records the return time and its verdict",
        )),
    }
}

#[cfg(test)]
#[path = "deadline_tests.rs"]
mod tests;
