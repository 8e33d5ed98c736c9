//! Integrity: the rules every record and every change obey, defined once, checked twice.
//!
//! A commune's dossier is a legal record, and an enrolled tablet can be buggy, old, stolen or
//! hostile. So every rule a device enforces on its own edits is a pure function here
//! ([`rules`]), which the device store calls before it commits an edit and the server calls
//! again for every pushed change, against the record as it was at that change's own
//! dependencies ([`check_pushed`]). Nothing the server accepts is refused on a device, and the
//! reverse.
//!
//! What the server checks per pushed change:
//! - attribution: its Automerge actor is the device that pushed it ([`history`]);
//! - shape: exactly one root change per record (its first); each author's changes numbered 1, 2,
//!   3... each building on the previous; operation counters past its dependencies'; bounded
//!   dependencies, authors and message;
//! - the document's shape ([`shape`]): objects at most 8 levels deep, at most 4,096 of them
//!   (checked when the changes apply, so also on every tablet);
//! - the record rules ([`rules`]): a new record is valid, in the device's commune, created by
//!   that device, received (unless it carries the import marker of a dossier imported from the
//!   commune's register, received before its import); an edit keeps id, kind, commune,
//!   receipt time, creator, due date (except with the procedure) and import marker, follows the status
//!   workflow, keeps the form values within the form of the procedure version the dossier
//!   pinned ([`check_form`]), keeps the statutory clock's events append-only and its return
//!   verdict true (`deadline`, see [`crate::deadline`]), and makes no field break its rule or limit (a field already over a limit by a
//!   merge never makes the record uneditable).
//!
//! A refusal ([`Refusal`]) carries a stable code ([`RefusalCode`]) and a message: the server
//! answers it per document, and the tablet sets that document aside (quarantine) while every
//! other one flows.

mod check;
mod deadline;
pub mod history;
mod refusal;
pub mod rules;
pub mod shape;

pub use check::{Verdict, check_pushed, check_pushed_keeping_doc};
pub use history::{Admission, ChangeMeta, HistoryIndex};
pub use refusal::{Refusal, RefusalCode};
pub use rules::{
    ProcedureLookup, ProcedureSource, RuleContext, Violation, check_creation, check_edit,
    check_form, check_officer, check_scope, no_catalogue,
};

#[cfg(test)]
mod tests;
