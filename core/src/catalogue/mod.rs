//! The procedure catalogue that the province distributes, and statutory time.
//!
//! - [`procedure`]: procedures (version 2: sector, level, processing time in working days or
//!   hours, fees, required papers, form, days in force, version) and the catalogue file, which
//!   still reads version 1;
//! - [`form`]: a procedure's typed form and the check of a dossier's values against it;
//! - [`calendar`]: working days and hours with overrides both ways (days off, compensatory
//!   working days);
//! - [`date`]: civil dates in Vietnam;
//! - [`delta`]: the catalogue on the sync wire, by delta (protocol 4 tags 5 and 6).
//!
//! Dates are civil dates in Vietnam (UTC+7, no daylight saving), whatever the tablet's time
//! zone setting says.

pub mod calendar;
pub mod date;
pub mod delta;
pub mod form;
pub mod procedure;

pub use calendar::{CalendarOverride, Deadline, WorkingCalendar};
pub use date::{CivilDate, VIETNAM_OFFSET};
pub use form::{
    AddressValue, FieldKind, FieldSpec, FormProblem, FormSchema, FormValue, FormValues,
    PersonValue, check_citizen_id,
};
pub use procedure::{CatalogueFile, FeeSpec, Level, Procedure, ProcessingTime, RequiredPaper};
