use std::fmt;
use std::str::FromStr;

use autosurgeon::{Hydrate, HydrateError, Prop, ReadDoc, Reconcile, Reconciler};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::workflow::{RequestStatus, Status};
use crate::attachment::AttachmentRef;
use crate::catalogue::{CivilDate, FormValues};
use crate::deadline::ClockEvent;

/// Identity of a record: a UUIDv7, so ids sort by creation time and never collide across tablets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecordId(pub Uuid);

impl RecordId {
    /// A fresh time-ordered id.
    pub fn new() -> Self {
        RecordId(Uuid::now_v7())
    }
    /// The 16 bytes stored in SQLite.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
    /// From the 16 stored bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Uuid::from_slice(bytes).ok().map(RecordId)
    }
}

impl Default for RecordId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RecordId {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(RecordId)
            .map_err(|e| crate::Error::invalid("id", e.to_string()))
    }
}

/// Identity of a tablet (or of the server): it is also the Automerge actor of its edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(pub Uuid);

impl DeviceId {
    /// A fresh random device id.
    pub fn new() -> Self {
        DeviceId(Uuid::new_v4())
    }

    /// Whether this id has the shape of an id a store creates: an RFC 9562 UUID of version 4
    /// (random) or 7 (time and random). The server refuses any other id at enrollment: a chosen
    /// id such as all zeros or all `f` would win or lose every Automerge tie on purpose.
    pub fn is_random(&self) -> bool {
        self.0.get_variant() == uuid::Variant::RFC4122 && matches!(self.0.get_version_num(), 4 | 7)
    }
}

impl Default for DeviceId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The two kinds of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// Intake of an administrative procedure.
    Application,
    /// A request or feedback from a citizen.
    CitizenRequest,
}

impl RecordKind {
    /// Stable code stored on disk and on the wire.
    pub fn code(self) -> i64 {
        match self {
            RecordKind::Application => 1,
            RecordKind::CitizenRequest => 2,
        }
    }
    /// Inverse of [`RecordKind::code`].
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(RecordKind::Application),
            2 => Some(RecordKind::CitizenRequest),
            _ => None,
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::Application => "application",
            RecordKind::CitizenRequest => "citizen_request",
        })
    }
}

/// Who made a change: the tablet and the officer signed in on it.
#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct Author {
    /// Device that made the change.
    #[autosurgeon(with = "uuid_string")]
    pub device: Uuid,
    /// Officer (staff account) who made it.
    pub officer: String,
}

/// The person who applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct Applicant {
    /// Full name as on the identity card, with diacritics ("Nguyễn Thị Hương").
    pub name: String,
    /// Citizen identity number (CCCD, 12 digits).
    pub id_number: String,
    /// Phone number.
    pub phone: String,
    /// Street address or hamlet.
    pub address: String,
    /// Village (bản) or residential group.
    pub village: String,
}

/// A paper or file received with an application.
#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct ReceivedDocument {
    /// What it is ("Tờ khai đăng ký khai sinh").
    #[key]
    pub name: String,
    /// Number of copies received.
    pub copies: u32,
    /// Whether the original (not a copy) was shown.
    pub original: bool,
}

/// A fee or charge for the procedure, in đồng.
#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct Fee {
    /// What the fee is for.
    #[key]
    pub name: String,
    /// Amount in Vietnamese đồng.
    pub amount_vnd: u64,
    /// Whether it has been paid.
    pub paid: bool,
}

/// An application for an administrative procedure, received at the centre or in a village.
#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct Application {
    /// Record id.
    #[autosurgeon(with = "record_id")]
    pub id: RecordId,
    /// The dossier number the citizen quotes ("01234-261206-000042"), set at intake and never
    /// changed; `None` for applications taken before numbers existed. See [`crate::numbering`].
    #[autosurgeon(with = "absent_when_none")]
    #[serde(default)]
    pub dossier_number: Option<String>,
    /// Commune (scope) the application belongs to.
    pub commune_code: String,
    /// Procedure code from the catalogue.
    pub procedure_code: String,
    /// The applicant.
    pub applicant: Applicant,
    /// When it was received, milliseconds since the Unix epoch (device time at intake).
    pub received_at: i64,
    /// Statutory due date (working days after receipt).
    pub due_at: CivilDate,
    /// Papers received.
    pub documents: Vec<ReceivedDocument>,
    /// Fees and charges.
    pub fees: Vec<Fee>,
    /// Workflow status.
    pub status: Status,
    /// Officer handling it, if assigned.
    pub assignee: Option<String>,
    /// Free text notes, co-edited: merges character by character.
    #[autosurgeon(with = "text_string")]
    pub notes: String,
    /// Who created it.
    pub created_by: Author,
    /// Scans and photos attached to it (removed ones stay as tombstones). Absent in records
    /// written before attachments existed: read as empty.
    #[autosurgeon(missing = "Vec::new")]
    #[serde(default)]
    pub attachments: Vec<AttachmentRef>,
    /// Version of the procedure it was received under (0: received before catalogue version 2,
    /// no form). Its form, papers and fees are that version's, whatever the catalogue says later.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub procedure_version: u64,
    /// Values of the procedure's form, by field name, checked against the pinned version.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub form_values: FormValues,
    /// Whether [`Application::dossier_number`] is a fallback number: the device had no number
    /// block left at intake (see [`crate::numbering`]). Set with the number, never changed.
    #[autosurgeon(with = "absent_when_false")]
    #[serde(default)]
    pub dossier_number_fallback: bool,
    /// The statutory clock's events: supplement pauses, resumes and extensions, appended and
    /// never edited (see [`crate::deadline`]). Absent from dossiers that have none.
    #[autosurgeon(with = "absent_when_empty")]
    #[serde(default)]
    pub clock_events: Vec<ClockEvent>,
    /// When the result was handed over (ms since epoch), set with the move to `returned`.
    #[autosurgeon(with = "absent_when_unset")]
    #[serde(default)]
    pub returned_at: Option<i64>,
    /// Whether the return met the effective deadline, recorded with the move to `returned`
    /// ([`crate::deadline::verdict`]; the integrity rules refuse any other value).
    #[autosurgeon(with = "absent_when_unset")]
    #[serde(default)]
    pub returned_on_time: Option<bool>,
    /// Set when the dossier was imported from the commune's existing register, in its first
    /// change, and never changed (see [`super::Imported`]); `None` for a dossier taken on a
    /// tablet.
    #[autosurgeon(with = "super::imported::absent_when_none")]
    #[serde(default)]
    pub imported: Option<super::Imported>,
}

/// A request or feedback from a citizen.
#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct CitizenRequest {
    /// Record id.
    #[autosurgeon(with = "record_id")]
    pub id: RecordId,
    /// Commune (scope) the request belongs to.
    pub commune_code: String,
    /// Category code (e.g. `road`, `land`, `social_welfare`, `feedback`).
    pub category: String,
    /// Village (bản) where it was raised.
    pub village: String,
    /// What the citizen asks or reports.
    pub description: String,
    /// Reporter's name.
    pub reporter_name: String,
    /// Reporter's phone or other contact.
    pub reporter_contact: String,
    /// When it was received, milliseconds since the Unix epoch (device time).
    pub received_at: i64,
    /// Workflow status.
    pub status: RequestStatus,
    /// Officer handling it, if assigned.
    pub assignee: Option<String>,
    /// Free text notes, co-edited: merges character by character.
    #[autosurgeon(with = "text_string")]
    pub notes: String,
    /// Who created it.
    pub created_by: Author,
    /// Scans and photos attached to it (removed ones stay as tombstones). Absent in records
    /// written before attachments existed: read as empty.
    #[autosurgeon(missing = "Vec::new")]
    #[serde(default)]
    pub attachments: Vec<AttachmentRef>,
}

/// What an officer enters to create an application; the store fills id, due date and status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewApplication {
    /// Commune the application belongs to.
    pub commune_code: String,
    /// Procedure code from the catalogue.
    pub procedure_code: String,
    /// The applicant.
    pub applicant: Applicant,
    /// Received time (ms since epoch); `None` means now, by the device clock.
    #[serde(default)]
    pub received_at: Option<i64>,
    /// Papers received.
    #[serde(default)]
    pub documents: Vec<ReceivedDocument>,
    /// Fees.
    #[serde(default)]
    pub fees: Vec<Fee>,
    /// Officer handling it.
    #[serde(default)]
    pub assignee: Option<String>,
    /// Initial notes.
    #[serde(default)]
    pub notes: String,
    /// Values of the procedure's form (checked against the version in force at intake, which
    /// the application pins).
    #[serde(default)]
    pub form_values: FormValues,
}

/// What an officer enters to create a citizen request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewCitizenRequest {
    /// Commune the request belongs to.
    pub commune_code: String,
    /// Category code.
    pub category: String,
    /// Village where it was raised.
    pub village: String,
    /// What the citizen asks or reports.
    pub description: String,
    /// Reporter's name.
    pub reporter_name: String,
    /// Reporter's contact.
    pub reporter_contact: String,
    /// Received time (ms since epoch); `None` means now.
    #[serde(default)]
    pub received_at: Option<i64>,
    /// Officer handling it.
    #[serde(default)]
    pub assignee: Option<String>,
    /// Initial notes.
    #[serde(default)]
    pub notes: String,
}

/// Either kind of record, as read from the store.
// An application is larger than a citizen request (form values, attachments, clock events):
// records are read one at a time and held briefly, and boxing the variant would cost an
// allocation on every read and a change to every match in the bindings and the server.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// An application.
    Application(Application),
    /// A citizen request.
    CitizenRequest(CitizenRequest),
}

impl Record {
    /// The record's id.
    pub fn id(&self) -> RecordId {
        match self {
            Record::Application(a) => a.id,
            Record::CitizenRequest(r) => r.id,
        }
    }
    /// The record's kind.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Application(_) => RecordKind::Application,
            Record::CitizenRequest(_) => RecordKind::CitizenRequest,
        }
    }
    /// The commune the record belongs to.
    pub fn commune_code(&self) -> &str {
        match self {
            Record::Application(a) => &a.commune_code,
            Record::CitizenRequest(r) => &r.commune_code,
        }
    }
}

/// Notes are Automerge text so that concurrent edits merge character by character; the Rust
/// side sees a `String` and an update is turned into the smallest splice.
mod text_string {
    use super::*;
    pub(super) fn reconcile<R: Reconciler>(value: &str, mut reconciler: R) -> Result<(), R::Error> {
        use autosurgeon::reconcile::TextReconciler;
        let mut text = reconciler.text()?;
        text.update(value)
    }
    pub(super) fn hydrate<D: ReadDoc>(
        doc: &D,
        obj: &automerge::ObjId,
        prop: Prop<'_>,
    ) -> Result<String, HydrateError> {
        Ok(autosurgeon::Text::hydrate(doc, obj, prop)?
            .as_str()
            .to_owned())
    }
}

/// An optional value that is written only when set: a record without it (taken before dossier
/// numbers existed) keeps exactly the bytes it had, and reads back as `None`.
mod absent_when_none {
    use super::*;
    pub(super) fn reconcile<R: Reconciler>(
        value: &Option<String>,
        mut reconciler: R,
    ) -> Result<(), R::Error> {
        match value {
            Some(text) => reconciler.str(text),
            None => Ok(()),
        }
    }
    pub(super) fn hydrate<D: ReadDoc>(
        doc: &D,
        obj: &automerge::ObjId,
        prop: Prop<'_>,
    ) -> Result<Option<String>, HydrateError> {
        match doc.get(obj, &prop)? {
            None => Ok(None),
            Some(_) => Option::<String>::hydrate(doc, obj, prop),
        }
    }
}

/// A flag written only when true (see [`absent_when_none`]).
mod absent_when_false {
    use super::*;
    pub(super) fn reconcile<R: Reconciler>(
        value: &bool,
        mut reconciler: R,
    ) -> Result<(), R::Error> {
        if *value {
            reconciler.boolean(true)
        } else {
            Ok(())
        }
    }
    pub(super) fn hydrate<D: ReadDoc>(
        doc: &D,
        obj: &automerge::ObjId,
        prop: Prop<'_>,
    ) -> Result<bool, HydrateError> {
        match doc.get(obj, &prop)? {
            None => Ok(false),
            Some(_) => bool::hydrate(doc, obj, prop),
        }
    }
}

/// An optional value of any type written only when set (see [`absent_when_none`]).
mod absent_when_unset {
    use super::*;
    pub(super) fn reconcile<T: Reconcile, R: Reconciler>(
        value: &Option<T>,
        reconciler: R,
    ) -> Result<(), R::Error> {
        match value {
            Some(inner) => inner.reconcile(reconciler),
            None => Ok(()),
        }
    }
    pub(super) fn hydrate<T: Hydrate, D: ReadDoc>(
        doc: &D,
        obj: &automerge::ObjId,
        prop: Prop<'_>,
    ) -> Result<Option<T>, HydrateError> {
        match doc.get(obj, &prop)? {
            None => Ok(None),
            Some(_) => Option::<T>::hydrate(doc, obj, prop),
        }
    }
}

/// A list written only once it has an entry: dossiers without clock events keep their bytes.
mod absent_when_empty {
    use super::*;
    pub(super) fn reconcile<T: Reconcile, R: Reconciler>(
        value: &Vec<T>,
        reconciler: R,
    ) -> Result<(), R::Error> {
        if value.is_empty() {
            Ok(())
        } else {
            value.reconcile(reconciler)
        }
    }
    pub(super) fn hydrate<T: Hydrate, D: ReadDoc>(
        doc: &D,
        obj: &automerge::ObjId,
        prop: Prop<'_>,
    ) -> Result<Vec<T>, HydrateError> {
        match doc.get(obj, &prop)? {
            None => Ok(Vec::new()),
            Some(_) => Vec::<T>::hydrate(doc, obj, prop),
        }
    }
}

mod uuid_string {
    use super::*;
    pub(super) fn reconcile<R: Reconciler>(
        value: &Uuid,
        mut reconciler: R,
    ) -> Result<(), R::Error> {
        reconciler.str(value.hyphenated().to_string())
    }
    pub(super) fn hydrate<D: ReadDoc>(
        doc: &D,
        obj: &automerge::ObjId,
        prop: Prop<'_>,
    ) -> Result<Uuid, HydrateError> {
        let s = String::hydrate(doc, obj, prop)?;
        Uuid::parse_str(&s).map_err(|e| HydrateError::unexpected("a uuid", e.to_string()))
    }
}

mod record_id {
    use super::*;
    pub(super) fn reconcile<R: Reconciler>(
        value: &RecordId,
        reconciler: R,
    ) -> Result<(), R::Error> {
        super::uuid_string::reconcile(&value.0, reconciler)
    }
    pub(super) fn hydrate<D: ReadDoc>(
        doc: &D,
        obj: &automerge::ObjId,
        prop: Prop<'_>,
    ) -> Result<RecordId, HydrateError> {
        super::uuid_string::hydrate(doc, obj, prop).map(RecordId)
    }
}

#[cfg(test)]
mod device_id_tests {
    use super::*;

    #[test]
    fn only_version_4_and_7_rfc_uuids_are_random_device_ids() {
        assert!(DeviceId::new().is_random());
        assert!(DeviceId(Uuid::now_v7()).is_random());
        for chosen in [
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            // Version 4 with the Microsoft variant, versions 1 and 8 with the RFC variant.
            "f81d4fae-7dec-4d0e-c765-00a0c91e6bf6",
            "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "f81d4fae-7dec-8d0e-a765-00a0c91e6bf6",
        ] {
            let id = DeviceId(Uuid::parse_str(chosen).unwrap());
            assert!(!id.is_random(), "{chosen}");
        }
    }
}
