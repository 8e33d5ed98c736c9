//! The record rules: what a new record must be, and what one change may do to a record.
//!
//! Each rule is a pure function of the record before a change, the record after it and who makes
//! it ([`RuleContext`]). The device store calls them before it commits an edit; the server calls
//! them for every pushed change, with the record as it was at that change's own dependencies
//! (`integrity::history`). So a change one side accepts the other accepts too.
//!
//! Limits on sizes follow one principle: a change may not make a field break its limit, but a
//! field already over it (text that two tablets added to concurrently and that merged past the
//! cap, a value written before a rule existed) never makes the record uneditable: a change that
//! does not make it worse is accepted.

use std::sync::Arc;

use crate::attachment::{AttachmentRef, is_content_address};
use crate::catalogue::{CivilDate, Procedure, WorkingCalendar};
use crate::record::{
    Application, CitizenRequest, DeviceId, Imported, MAX_EXTERNAL_ID, MAX_ORIGINAL_REFERENCE,
    Record, RequestStatus, Status,
};
use crate::{Error, Result};

use super::{Refusal, RefusalCode};

/// Longest officer name a change may carry.
pub const MAX_OFFICER: usize = 128;
/// Longest notes one change may leave (notes merge: concurrent additions may pass it together).
pub const MAX_NOTES: usize = 64 * 1024;
/// Most received papers an application lists.
pub const MAX_DOCUMENTS: usize = 100;
/// Most fees an application lists.
pub const MAX_FEES: usize = 50;
/// Most attachment references a record holds, tombstones included (each is a few hundred bytes
/// of the record's document).
pub const MAX_ATTACHMENTS: usize = 200;
/// Largest attachment content, in bytes (a prepared page is ~150 KB; a PDF of a whole dossier
/// fits).
pub const MAX_ATTACHMENT_BYTES: u64 = 20 * 1024 * 1024;
/// MIME types an attachment may have: images of papers and PDFs.
pub const ATTACHMENT_MIME_TYPES: &[&str] = &["image/jpeg", "image/png", "application/pdf"];
/// Longest caption of an attachment.
pub const MAX_CAPTION: usize = 500;
/// Highest page number of an attachment.
pub const MAX_PAGE: u32 = 10_000;

/// Who makes a change, and what the checker knows.
pub struct RuleContext<'a> {
    /// The device making the change (on the server: the authenticated device that pushed it).
    pub device: DeviceId,
    /// The commune the device is enrolled in; `None` for a province account or a device not yet
    /// enrolled.
    pub commune: Option<&'a str>,
    /// Whether the procedure with this code may be withdrawn; `None` when the checker does not
    /// know the procedure (then withdrawal is not refused: the other side checked it).
    pub withdrawal_allowed: &'a dyn Fn(&str) -> Option<bool>,
    /// A procedure at a version, as far as the checker's catalogue knows it (the form a dossier
    /// pinned). See [`ProcedureLookup`].
    pub procedure_at: &'a dyn ProcedureSource,
}

/// Where a checker looks procedures up: its catalogue (any `Fn(&str, u64) -> ProcedureLookup`
/// is one).
pub trait ProcedureSource {
    /// The procedure `code` at `version`, as far as this catalogue knows it.
    fn lookup(&self, code: &str, version: u64) -> ProcedureLookup;

    /// The working calendar this catalogue holds, which statutory time counts with
    /// ([`crate::deadline`]); `None` when it has none (weekends off only).
    fn calendar(&self) -> Option<&WorkingCalendar> {
        None
    }

    /// The published calendar the device making the change declared it holds, when the
    /// checker knows it and it is not [`ProcedureSource::calendar`] (the server: the calendar
    /// in effect at the tablet's catalogue position). A return verdict or an extension's
    /// appointment that holds under it is accepted as well as one that holds under the
    /// checker's own calendar (ADR 0009): an honest tablet whose calendar is older than the
    /// server's is never stuck. `None` on a device (it counts with its own calendar only).
    fn declared_calendar(&self) -> Option<&WorkingCalendar> {
        None
    }
}

impl<F: Fn(&str, u64) -> ProcedureLookup> ProcedureSource for F {
    fn lookup(&self, code: &str, version: u64) -> ProcedureLookup {
        self(code, version)
    }
}

/// What a checker knows of a procedure at one version.
#[derive(Debug, Clone)]
pub enum ProcedureLookup {
    /// The procedure at that version.
    Known(Arc<Procedure>),
    /// The checker's catalogue has the procedure, but never had that version: a pin nobody
    /// published is refused (it would escape the form's rules).
    UnknownVersion,
    /// The checker has no catalogue entry for the code (a server with no catalogue yet, a
    /// procedure of another province's list): a dossier without form values passes, one with
    /// values is refused (values nobody can check).
    UnknownCode,
}

/// A lookup that knows no procedure (a checker without a catalogue).
pub fn no_catalogue(_: &str, _: u64) -> ProcedureLookup {
    ProcedureLookup::UnknownCode
}

/// A broken rule: the code the server answers and the error the device store returns.
#[derive(Debug)]
pub struct Violation {
    /// Why, for the wire.
    pub code: RefusalCode,
    /// Why, as the store's error.
    pub error: Error,
}

impl Violation {
    fn new(code: RefusalCode, error: Error) -> Self {
        Violation { code, error }
    }

    fn field(code: RefusalCode, field: &str, reason: impl Into<String>) -> Self {
        Violation::new(code, Error::invalid(field, reason))
    }

    /// As a refusal of a pushed document.
    pub fn refusal(&self) -> Refusal {
        Refusal::new(self.code.clone(), self.error.to_string())
    }
}

impl From<Violation> for Error {
    fn from(violation: Violation) -> Self {
        violation.error
    }
}

/// Checks the officer name a change carries.
pub fn check_officer(officer: &str) -> Result<()> {
    if officer.trim().is_empty() || officer.len() > MAX_OFFICER {
        return Err(Error::invalid(
            "officer",
            format!("must be 1 to {MAX_OFFICER} bytes"),
        ));
    }
    Ok(())
}

/// Checks that a record of `commune` is the device's to write: a device enrolled in a commune
/// writes that commune's records only (a province account, `ctx.commune == None`, any).
pub fn check_scope(commune: &str, ctx: &RuleContext<'_>) -> std::result::Result<(), Violation> {
    match ctx.commune {
        Some(own) if own != commune => Err(Violation::field(
            RefusalCode::NotYours,
            "commune_code",
            format!("this device is enrolled in commune {own}, not {commune}"),
        )),
        _ => Ok(()),
    }
}

/// Checks a new record, as its first change makes it.
pub fn check_creation(
    record: &Record,
    ctx: &RuleContext<'_>,
) -> std::result::Result<(), Violation> {
    if let Some(problem) = field_problems(record).into_iter().next() {
        return Err(problem.violation());
    }
    // The receipt time is the device's claim (its clock may be years off before its first
    // sync, and an intake may be entered late): it is kept, never judged by another clock; the
    // server records its own receive time beside it.
    let (commune, creator, initial) = match record {
        // Only a dossier imported from the commune's register is created in its final state.
        Record::Application(a) => (
            &a.commune_code,
            a.created_by.device,
            a.status == Status::Received || a.imported.is_some(),
        ),
        Record::CitizenRequest(r) => (
            &r.commune_code,
            r.created_by.device,
            r.status == RequestStatus::Received,
        ),
    };
    check_scope(commune, ctx)?;
    if creator != ctx.device.0 {
        return Err(Violation::field(
            RefusalCode::NotAttributed,
            "created_by",
            "a record names the device that created it",
        ));
    }
    if !initial {
        return Err(Violation::field(
            RefusalCode::IllegalTransition,
            "status",
            "a new record starts as received",
        ));
    }
    if let Record::Application(app) = record {
        let received = CivilDate::from_unix_millis(app.received_at)
            .map_err(|e| Violation::new(RefusalCode::InvalidField, e))?;
        if app.due_at < received {
            return Err(Violation::field(
                RefusalCode::InvalidField,
                "due_at",
                "cannot be before the receipt",
            ));
        }
        check_form(None, app, ctx)?;
        super::deadline::check_new_dossier(app)?;
        if let Some(imported) = &app.imported {
            check_import_marker(app, imported)?;
        }
    }
    Ok(())
}

/// The times an import marker vouches for: the dossier was received before it was imported,
/// and returned (only a returned dossier has a return time) between the two.
fn check_import_marker(
    app: &Application,
    imported: &Imported,
) -> std::result::Result<(), Violation> {
    if app.received_at > imported.imported_at {
        return Err(Violation::field(
            RefusalCode::InvalidField,
            "received_at",
            "an imported dossier was received before its import",
        ));
    }
    match imported.returned_at {
        Some(_) if app.status != Status::Returned => Err(Violation::field(
            RefusalCode::InvalidField,
            "imported.returned_at",
            "only a returned dossier has a return time",
        )),
        Some(returned) if returned < app.received_at || returned > imported.imported_at => {
            Err(Violation::field(
                RefusalCode::InvalidField,
                "imported.returned_at",
                "must be between the receipt and the import",
            ))
        }
        _ => Ok(()),
    }
}

/// The form rule: a dossier's form values conform to the form of the procedure version it
/// pinned. Checked at creation, and at an edit that changes the values, the pin or the
/// procedure; an edit may leave a problem that was already there (a merge), never add one.
/// The pin changes only with the procedure.
pub fn check_form(
    before: Option<&Application>,
    after: &Application,
    ctx: &RuleContext<'_>,
) -> std::result::Result<(), Violation> {
    if let Some(before) = before {
        if before.form_values == after.form_values
            && before.procedure_version == after.procedure_version
            && before.procedure_code == after.procedure_code
        {
            return Ok(());
        }
        if before.procedure_version != after.procedure_version
            && before.procedure_code == after.procedure_code
        {
            return Err(Violation::field(
                RefusalCode::ImmutableField,
                "procedure_version",
                "a dossier keeps the procedure version it was received under",
            ));
        }
    }
    let (code, version) = (&after.procedure_code, after.procedure_version);
    if version == 0 {
        if after.form_values.is_empty() {
            return Ok(());
        }
        return Err(Violation::field(
            RefusalCode::InvalidField,
            "form_values",
            "a dossier without a pinned procedure version has no form",
        ));
    }
    let procedure = match ctx.procedure_at.lookup(code, version) {
        ProcedureLookup::Known(procedure) => procedure,
        ProcedureLookup::UnknownVersion => {
            return Err(Violation::field(
                RefusalCode::InvalidField,
                "procedure_version",
                format!("version {version} of procedure {code} was never published"),
            ));
        }
        ProcedureLookup::UnknownCode if after.form_values.is_empty() => return Ok(()),
        ProcedureLookup::UnknownCode => {
            return Err(Violation::field(
                RefusalCode::InvalidField,
                "form_values",
                format!("procedure {code} is not in the catalogue: its form cannot be checked"),
            ));
        }
    };
    let received = CivilDate::from_unix_millis(after.received_at)
        .map_err(|e| Violation::new(RefusalCode::InvalidField, e))?;
    let problems = procedure.form.check(&after.form_values, received);
    let excused = match before {
        Some(b) if b.procedure_version == version && b.procedure_code == *code => {
            procedure.form.check(&b.form_values, received)
        }
        _ => Vec::new(),
    };
    match problems.into_iter().find(|p| !excused.contains(p)) {
        Some(problem) => Err(Violation::new(
            RefusalCode::InvalidField,
            Error::invalid(problem.field, problem.reason),
        )),
        None => Ok(()),
    }
}

/// Checks one change: `before` is the record the change was made on, `after` the record it
/// leaves. Both must be of the same kind.
pub fn check_edit(
    before: &Record,
    after: &Record,
    ctx: &RuleContext<'_>,
) -> std::result::Result<(), Violation> {
    let commune = match before {
        Record::Application(b) => &b.commune_code,
        Record::CitizenRequest(b) => &b.commune_code,
    };
    check_scope(commune, ctx)?;
    match (before, after) {
        (Record::Application(b), Record::Application(a)) => check_application_edit(b, a, ctx)?,
        (Record::CitizenRequest(b), Record::CitizenRequest(a)) => check_request_edit(b, a)?,
        _ => {
            return Err(Violation::field(
                RefusalCode::ImmutableField,
                "kind",
                "a record keeps its kind",
            ));
        }
    }
    let before_problems = field_problems(before);
    for problem in field_problems(after) {
        // Not made worse by this change: the field was already over its limit (or already
        // broke its rule) at least as much before it.
        let excused = before_problems
            .iter()
            .any(|b| b.field == problem.field && b.size >= problem.size);
        if !excused {
            return Err(problem.violation());
        }
    }
    Ok(())
}

/// Whether `after` differs from `before` in its status only (what settling a conflict on the
/// status changes): the status workflow is then checked as a choice among concurrent values.
pub fn only_status_changed(before: &Record, after: &Record) -> bool {
    match (before, after) {
        (Record::Application(b), Record::Application(a)) => {
            Application {
                status: b.status,
                ..a.clone()
            } == *b
        }
        (Record::CitizenRequest(b), Record::CitizenRequest(a)) => {
            CitizenRequest {
                status: b.status,
                ..a.clone()
            } == *b
        }
        _ => false,
    }
}

fn immutable(kind: &str) -> Violation {
    Violation::field(
        RefusalCode::ImmutableField,
        kind,
        "id, commune, creator and receipt time cannot be changed",
    )
}

fn check_application_edit(
    before: &Application,
    after: &Application,
    ctx: &RuleContext<'_>,
) -> std::result::Result<(), Violation> {
    if before.id != after.id
        || before.commune_code != after.commune_code
        || before.created_by != after.created_by
        || before.received_at != after.received_at
    {
        return Err(immutable("application"));
    }
    check_attachments_edit(&before.attachments, &after.attachments)?;
    // The number the citizen was given at the desk: set once at intake, in the record's first
    // change, and never altered, cleared or added later (see `crate::numbering`).
    if before.dossier_number != after.dossier_number
        || before.dossier_number_fallback != after.dossier_number_fallback
    {
        return Err(Violation::field(
            RefusalCode::ImmutableField,
            "dossier_number",
            "is given at intake and cannot be changed",
        ));
    }
    // The due date follows the procedure (a change of procedure recomputes it); a legal
    // extension will be its own event.
    if after.due_at != before.due_at && after.procedure_code == before.procedure_code {
        return Err(Violation::field(
            RefusalCode::ImmutableField,
            "due_at",
            "follows the procedure; it cannot be set",
        ));
    }
    // Where an imported dossier came from is written with it, once: a marker added to a
    // dossier taken on a tablet would let it skip the workflow, one altered would break the
    // register's key.
    if before.imported != after.imported {
        return Err(Violation::field(
            RefusalCode::ImmutableField,
            "imported",
            "is written when the dossier is imported and never changed",
        ));
    }
    check_form(Some(before), after, ctx)?;
    if after.status != before.status {
        let allowed = (ctx.withdrawal_allowed)(&before.procedure_code).unwrap_or(true);
        before
            .status
            .check_transition(after.status, allowed)
            .map_err(|e| Violation::new(RefusalCode::IllegalTransition, e))?;
    }
    super::deadline::check_clock_edit(before, after, ctx)?;
    Ok(())
}

fn check_request_edit(
    before: &CitizenRequest,
    after: &CitizenRequest,
) -> std::result::Result<(), Violation> {
    if before.id != after.id
        || before.commune_code != after.commune_code
        || before.created_by != after.created_by
        || before.received_at != after.received_at
    {
        return Err(immutable("citizen_request"));
    }
    check_attachments_edit(&before.attachments, &after.attachments)?;
    if after.status != before.status {
        before
            .status
            .check_transition(after.status)
            .map_err(|e| Violation::new(RefusalCode::IllegalTransition, e))?;
    }
    Ok(())
}

/// A field that breaks its rule, with a size to tell whether a change made it worse.
struct FieldProblem {
    field: &'static str,
    reason: String,
    /// Bytes or entries for a limit; 0 for a rule of form.
    size: usize,
    code: RefusalCode,
}

impl FieldProblem {
    fn violation(&self) -> Violation {
        Violation::field(self.code.clone(), self.field, self.reason.clone())
    }
}

/// Every field of `record` that breaks its rule, in field order.
fn field_problems(record: &Record) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    match record {
        Record::Application(app) => application_problems(app, &mut problems),
        Record::CitizenRequest(request) => request_problems(request, &mut problems),
    }
    problems
}

fn text(out: &mut Vec<FieldProblem>, field: &'static str, value: &str, max: usize, required: bool) {
    if required && value.trim().is_empty() {
        out.push(FieldProblem {
            field,
            reason: "must not be empty".to_owned(),
            size: 0,
            code: RefusalCode::InvalidField,
        });
    }
    if value.len() > max {
        out.push(FieldProblem {
            field,
            reason: format!("longer than {max} bytes"),
            size: value.len(),
            code: RefusalCode::TooLarge,
        });
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        out.push(FieldProblem {
            field,
            reason: "contains control characters".to_owned(),
            size: 0,
            code: RefusalCode::InvalidField,
        });
    }
}

fn form(out: &mut Vec<FieldProblem>, field: &'static str, ok: bool, reason: &str) {
    if !ok {
        out.push(FieldProblem {
            field,
            reason: reason.to_owned(),
            size: 0,
            code: RefusalCode::InvalidField,
        });
    }
}

fn count(out: &mut Vec<FieldProblem>, field: &'static str, len: usize, max: usize) {
    if len > max {
        out.push(FieldProblem {
            field,
            reason: format!("more than {max} entries"),
            size: len,
            code: RefusalCode::TooLarge,
        });
    }
}

fn application_problems(app: &Application, out: &mut Vec<FieldProblem>) {
    if let Some(number) = &app.dossier_number {
        text(
            out,
            "dossier_number",
            number,
            crate::numbering::MAX_NUMBER_LEN,
            true,
        );
    }
    form(
        out,
        "dossier_number_fallback",
        !app.dossier_number_fallback || app.dossier_number.is_some(),
        "flags a dossier number: there is none",
    );
    text(out, "commune_code", &app.commune_code, 64, true);
    text(out, "procedure_code", &app.procedure_code, 64, true);
    text(out, "applicant.name", &app.applicant.name, 200, true);
    text(out, "applicant.address", &app.applicant.address, 500, false);
    text(out, "applicant.village", &app.applicant.village, 200, false);
    let id = &app.applicant.id_number;
    form(
        out,
        "applicant.id_number",
        id.is_empty()
            || ((id.len() == 9 || id.len() == 12) && id.chars().all(|c| c.is_ascii_digit())),
        "must be 12 digits (citizen identity card) or 9 digits (old identity card)",
    );
    let phone = &app.applicant.phone;
    let digits = phone.strip_prefix('+').unwrap_or(phone);
    form(
        out,
        "applicant.phone",
        phone.is_empty()
            || ((9..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit())),
        "must be 9 to 15 digits",
    );
    if let Some(assignee) = &app.assignee {
        text(out, "assignee", assignee, 128, true);
    }
    text(out, "notes", &app.notes, MAX_NOTES, false);
    count(out, "documents", app.documents.len(), MAX_DOCUMENTS);
    count(out, "fees", app.fees.len(), MAX_FEES);
    if let Some(imported) = &app.imported {
        text(
            out,
            "imported.external_id",
            &imported.external_id,
            MAX_EXTERNAL_ID,
            true,
        );
        text(
            out,
            "imported.original_reference",
            &imported.original_reference,
            MAX_ORIGINAL_REFERENCE,
            false,
        );
    }
    for doc in &app.documents {
        text(out, "documents.name", &doc.name, 500, true);
    }
    for fee in &app.fees {
        text(out, "fees.name", &fee.name, 200, true);
    }
    attachment_problems(&app.attachments, out);
}

fn request_problems(request: &CitizenRequest, out: &mut Vec<FieldProblem>) {
    text(out, "commune_code", &request.commune_code, 64, true);
    text(out, "category", &request.category, 64, true);
    text(out, "village", &request.village, 200, false);
    text(out, "description", &request.description, 16 * 1024, true);
    text(out, "reporter_name", &request.reporter_name, 200, false);
    text(
        out,
        "reporter_contact",
        &request.reporter_contact,
        200,
        false,
    );
    if let Some(assignee) = &request.assignee {
        text(out, "assignee", assignee, 128, true);
    }
    text(out, "notes", &request.notes, MAX_NOTES, false);
    attachment_problems(&request.attachments, out);
}

/// Rules of the attachment references a record holds: how many, and each one's form. The
/// server re-checks them for every pushed change, and refuses an upload of a content no
/// reference of the device's scope names with its size.
fn attachment_problems(refs: &[AttachmentRef], out: &mut Vec<FieldProblem>) {
    count(out, "attachments", refs.len(), MAX_ATTACHMENTS);
    for (i, reference) in refs.iter().enumerate() {
        form(
            out,
            "attachments.id",
            !reference.id.is_empty()
                && reference.id.len() <= 64
                && refs[..i].iter().all(|other| other.id != reference.id),
            "must be a unique id of 1 to 64 bytes",
        );
        form(
            out,
            "attachments.sha256",
            is_content_address(&reference.sha256),
            "must be 64 lowercase hex digits",
        );
        form(
            out,
            "attachments.size",
            (1..=MAX_ATTACHMENT_BYTES).contains(&reference.size),
            "must be 1 byte to 20 MiB",
        );
        form(
            out,
            "attachments.mime",
            ATTACHMENT_MIME_TYPES.contains(&reference.mime.as_str()),
            "must be image/jpeg, image/png or application/pdf",
        );
        form(
            out,
            "attachments.page",
            reference.page <= MAX_PAGE,
            "must be at most 10000",
        );
        text(
            out,
            "attachments.caption",
            &reference.caption,
            MAX_CAPTION,
            false,
        );
        if let Some(document) = &reference.document {
            text(out, "attachments.document", document, 500, true);
        }
    }
}

/// What a change may do to the references: add some, change a caption, a page or the paper,
/// remove one (a tombstone). The content a reference names, its size, type and time are fixed;
/// a reference is never taken out of the list and a removal is never undone (so that a removal
/// syncs, and a content named once stays accountable).
fn check_attachments_edit(
    before: &[AttachmentRef],
    after: &[AttachmentRef],
) -> std::result::Result<(), Violation> {
    for old in before {
        let Some(new) = after.iter().find(|r| r.id == old.id) else {
            return Err(Violation::field(
                RefusalCode::ImmutableField,
                "attachments",
                "an attachment is removed with a tombstone, not taken out of the list",
            ));
        };
        if new.sha256 != old.sha256
            || new.size != old.size
            || new.mime != old.mime
            || new.added_at != old.added_at
        {
            return Err(Violation::field(
                RefusalCode::ImmutableField,
                "attachments",
                "the content, size, type and time of an attachment cannot be changed",
            ));
        }
        if old.removed && !new.removed {
            return Err(Violation::field(
                RefusalCode::ImmutableField,
                "attachments.removed",
                "a removed attachment stays removed",
            ));
        }
    }
    Ok(())
}

/// Checks a record's fields on their own (what a record arriving whole from elsewhere must
/// satisfy): the first field that breaks its rule.
pub fn validate_fields(record: &Record) -> Result<()> {
    match field_problems(record).into_iter().next() {
        Some(problem) => Err(problem.violation().error),
        None => Ok(()),
    }
}
