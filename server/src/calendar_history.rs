//! The working calendar a pushing tablet declared it holds (ADR 0009).
//!
//! Contract. A tablet computes a return verdict (and checks an extension's appointment) with
//! the calendar it holds, which may be older than the server's. The server keeps every
//! published calendar (`calendar_versions`, one row per publication that changed it) and, for
//! each push, looks up the one in effect at the position the tablet declared: tag 5's
//! `calendar_version`, or the request's `catalogue_version` for a tablet without tag 5.
//! [`declared_calendar`] gives it when it differs from the current one; the record rules then
//! accept what holds under either (`ProcedureSource::declared_calendar` in core). Never a
//! calendar that was not published: position 0 (a tablet without a catalogue) counts weekends
//! only, as a server without a catalogue does; a position past the head, or one whose calendar
//! was published before the server kept them (schema 11), declares nothing (the current
//! calendar only). Cost: at most one indexed storage read per sync with a push, none when the
//! position is cached ([`CALENDAR_CACHE`] positions, cleared when full).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use communesync_core::catalogue::{CalendarOverride, WorkingCalendar};

use crate::storage::{CatalogueHead, ServerStorage, StorageError};

/// Declared positions whose calendar is kept parsed in memory.
pub const CALENDAR_CACHE: usize = 16;

/// Parsed calendars by declared catalogue position (what a position resolves to never changes:
/// published calendars are never edited).
#[derive(Default)]
pub struct CalendarCache {
    by_position: Mutex<HashMap<u64, Option<Arc<WorkingCalendar>>>>,
}

/// The calendar in effect at the tablet's declared `position`, when it is a published one other
/// than the current (`head`'s); `None` otherwise (see the module's contract).
pub async fn declared_calendar<S: ServerStorage + ?Sized>(
    storage: &S,
    cache: &CalendarCache,
    head: &CatalogueHead,
    position: u64,
) -> Result<Option<Arc<WorkingCalendar>>, StorageError> {
    if position > head.version || (head.calendar_version > 0 && position >= head.calendar_version) {
        return Ok(None);
    }
    if position == 0 {
        return Ok(Some(Arc::new(WorkingCalendar::default())));
    }
    if let Some(found) = cache
        .by_position
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&position)
    {
        return Ok(found.clone());
    }
    let found = match storage.calendar_at(position).await? {
        None => None,
        Some((version, json)) => match serde_json::from_str::<Vec<CalendarOverride>>(&json) {
            Ok(overrides) => Some(Arc::new(WorkingCalendar::from_overrides(&overrides))),
            Err(e) => {
                tracing::error!(version, error = %e, "a stored calendar does not parse");
                None
            }
        },
    };
    let mut cached = cache
        .by_position
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if cached.len() >= CALENDAR_CACHE {
        cached.clear();
    }
    cached.insert(position, found.clone());
    Ok(found)
}
