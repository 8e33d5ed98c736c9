//! Statutory time, for the app: ask for a supplement (the clock stops), mark the dossier
//! complete (it restarts), extend with a reason and a new appointment (the apology slip),
//! return the result (the on-time verdict is recorded with it), read a dossier's effective
//! deadline, and list returned dossiers on time or late. The due-soon and overdue lists
//! (`Engine::due_soon`, `Engine::overdue`) follow pauses, extensions and the calendar.
//!
//! Every method touches the store, so each is `async` (Kotlin `suspend`, Swift `async`) and
//! runs its store work on a blocking-pool thread through `Engine::with_store`.

use std::time::SystemTime;

use communesync_core::catalogue::CivilDate;
use communesync_core::deadline as core;
use communesync_core::record::RecordId;
use communesync_core::store;

use crate::engine::Engine;
use crate::error::CommuneSyncError;
use crate::types::{Application, parse_id, time_from_ms};

type Result<T, E = CommuneSyncError> = std::result::Result<T, E>;

/// What a clock event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum DeadlineEventKind {
    /// A supplement was asked for: the clock stopped.
    Pause,
    /// The dossier was complete again: the clock restarted.
    Resume,
    /// An extension with a new appointment (the apology slip).
    Extension,
}

impl From<core::ClockEventKind> for DeadlineEventKind {
    fn from(kind: core::ClockEventKind) -> Self {
        match kind {
            core::ClockEventKind::Pause => DeadlineEventKind::Pause,
            core::ClockEventKind::Resume => DeadlineEventKind::Resume,
            core::ClockEventKind::Extension => DeadlineEventKind::Extension,
        }
    }
}

/// One event of a dossier's statutory clock.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DeadlineEvent {
    /// What it did.
    pub kind: DeadlineEventKind,
    /// When.
    pub at: SystemTime,
    /// Officer who recorded it.
    pub officer: String,
    /// What was missing (a pause), why (an extension); empty for a resume.
    pub reason: String,
    /// The new appointment (an extension).
    pub appointment: Option<CivilDate>,
}

/// A dossier's statutory time.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DossierDeadline {
    /// The due date computed at intake (never changes).
    pub statutory_due: CivilDate,
    /// The effective due date: pauses, extensions and the current calendar counted.
    pub due_date: CivilDate,
    /// The effective due instant, for a procedure counted in working hours.
    pub due_at: Option<SystemTime>,
    /// Since when the clock is stopped (a supplement is awaited).
    pub paused_since: Option<SystemTime>,
    /// Whether an extension set the due date.
    pub extended: bool,
    /// When the result was handed over.
    pub returned_at: Option<SystemTime>,
    /// Whether that was on time (recorded with the return).
    pub returned_on_time: Option<bool>,
    /// The clock's events, in the order they count.
    pub events: Vec<DeadlineEvent>,
}

impl From<store::DossierDeadline> for DossierDeadline {
    fn from(d: store::DossierDeadline) -> Self {
        DossierDeadline {
            statutory_due: d.statutory_due,
            due_date: d.due_date,
            due_at: d.due_at_ms.map(time_from_ms),
            paused_since: d.paused_since.map(time_from_ms),
            extended: d.extended,
            returned_at: d.returned_at.map(time_from_ms),
            returned_on_time: d.returned_on_time,
            events: d
                .events
                .into_iter()
                .map(|e| DeadlineEvent {
                    kind: e.kind.into(),
                    at: time_from_ms(e.at),
                    officer: e.officer,
                    reason: e.reason,
                    appointment: e.appointment,
                })
                .collect(),
        }
    }
}

/// A returned dossier in the on-time or late list.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ReturnedDossier {
    /// Record id.
    pub id: String,
    /// Dossier number, when it has one.
    pub dossier_number: Option<String>,
    /// Procedure code.
    pub procedure_code: String,
    /// Applicant's name.
    pub applicant_name: String,
    /// When it was received.
    pub received_at: SystemTime,
    /// The effective due date it was judged by.
    pub due_date: Option<CivilDate>,
    /// Whether it was returned on time.
    pub on_time: bool,
}

impl From<store::ReturnedDossier> for ReturnedDossier {
    fn from(r: store::ReturnedDossier) -> Self {
        ReturnedDossier {
            id: r.id.to_string(),
            dossier_number: r.dossier_number,
            procedure_code: r.procedure_code,
            applicant_name: r.applicant_name,
            received_at: time_from_ms(r.received_at),
            due_date: r.due_date,
            on_time: r.on_time,
        }
    }
}

impl Engine {
    /// One edit of a dossier through the store, announced to observers.
    async fn clock_edit<F>(&self, id: String, work: F) -> Result<Application>
    where
        F: FnOnce(
                &mut store::DeviceStore,
                RecordId,
            ) -> communesync_core::Result<communesync_core::record::Application>
            + Send
            + 'static,
    {
        let id: RecordId = parse_id(&id)?;
        let app = self.with_store(move |s| Ok(work(s, id)?)).await?;
        self.changed(id);
        Ok(app.into())
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl Engine {
    /// Asks the applicant for a supplement: the dossier moves to `SupplementRequested` and the
    /// statutory clock stops, recording what is `missing` (`InvalidInput` when empty).
    pub async fn request_supplement(
        &self,
        officer: String,
        id: String,
        missing: String,
    ) -> Result<Application> {
        self.clock_edit(id, move |s, id| {
            s.request_supplement(id, &officer, &missing)
        })
        .await
    }

    /// The dossier is complete again: back to `InProgress`, and the clock restarts.
    pub async fn mark_complete(&self, officer: String, id: String) -> Result<Application> {
        self.clock_edit(id, move |s, id| s.mark_complete(id, &officer))
            .await
    }

    /// Extends the deadline (the apology slip) with a reason and a new appointment, which must
    /// be after the current effective due date (`InvalidInput` otherwise).
    pub async fn extend_deadline(
        &self,
        officer: String,
        id: String,
        reason: String,
        appointment: CivilDate,
    ) -> Result<Application> {
        self.clock_edit(id, move |s, id| {
            s.extend_deadline(id, &officer, &reason, appointment)
        })
        .await
    }

    /// Hands the result over: the dossier moves from `Ready` to `Returned`, recording the time
    /// and whether it was on time.
    pub async fn return_dossier(&self, officer: String, id: String) -> Result<Application> {
        self.clock_edit(id, move |s, id| s.return_dossier(id, &officer))
            .await
    }

    /// A dossier's statutory time: intake due date, effective deadline, pause, verdict, events.
    pub async fn dossier_deadline(&self, id: String) -> Result<DossierDeadline> {
        let id: RecordId = parse_id(&id)?;
        self.with_store(move |s| Ok(s.dossier_deadline(id)?.into()))
            .await
    }

    /// Returned dossiers judged on time (`on_time` true) or late, most recently received first;
    /// at most `limit` (≤ 500) from `offset`.
    pub async fn returned_dossiers(
        &self,
        on_time: bool,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<ReturnedDossier>> {
        self.with_store(move |s| {
            Ok(s.returned_by_verdict(on_time, limit, offset)?
                .into_iter()
                .map(Into::into)
                .collect())
        })
        .await
    }
}

#[cfg(test)]
#[path = "deadlines_tests.rs"]
mod tests;
