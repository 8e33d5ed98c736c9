//! Records that cross the FFI, mirroring the core types: ids as strings, instants as
//! `SystemTime` (Kotlin `java.time.Instant`, Swift `Date`), civil dates (Vietnam) as
//! [`CivilDate`] (Kotlin `java.time.LocalDate`, Swift `DateComponents` with year, month and day;
//! `YYYY-MM-DD` on the wire, see `uniffi.toml`), statuses as enums.

use communesync_core::catalogue::{CivilDate, Procedure as CoreProcedure};
use communesync_core::record::{
    self as core, ConflictValue as CoreConflictValue, RecordId, RecordKind as CoreRecordKind,
    RequestStatus as CoreRequestStatus, Status as CoreStatus,
};
use communesync_core::store::{self as store, quarantine};
use communesync_core::sync::{
    self as sync, Credentials, Scope, SyncPhase as CorePhase, SyncProgress as CoreProgress,
};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::CommuneSyncError;

type Result<T, E = CommuneSyncError> = std::result::Result<T, E>;

pub(crate) fn parse_id(id: &str) -> Result<RecordId> {
    id.parse().map_err(CommuneSyncError::from)
}

// A civil date crosses as its `YYYY-MM-DD` text; the platform layers map it to their date type
// (uniffi.toml). A text the core does not accept is `InvalidInput` for the call.
uniffi::custom_type!(CivilDate, String, {
    remote,
    lower: |date| date.to_string(),
    try_lift: |text| text
        .parse::<CivilDate>()
        .map_err(|e| CommuneSyncError::invalid(format!("date {text:?}: {e}")).into()),
});

/// An instant from milliseconds since the Unix epoch (negative: before it).
pub(crate) fn time_from_ms(ms: i64) -> SystemTime {
    let offset = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    }
    .unwrap_or(UNIX_EPOCH)
}

/// Milliseconds since the Unix epoch of an instant, to the nearest millisecond (a Swift `Date` is
/// a `Double`: 0.251 s arrives as 0.250999999 s); saturating far outside ±292 million years.
pub(crate) fn ms_from_time(time: SystemTime) -> i64 {
    let nearest_ms = |d: Duration| i64::try_from((d.as_nanos() + 500_000) / 1_000_000);
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => nearest_ms(after).unwrap_or(i64::MAX),
        Err(before) => nearest_ms(before.duration()).map_or(i64::MIN, |ms| -ms),
    }
}

// ----- configuration and credential ------------------------------------------------------------

/// Everything needed to open an [`Engine`](crate::Engine).
#[derive(Clone, uniffi::Record)]
pub struct EngineConfig {
    /// Path of the store file (created if missing), in the app's private storage.
    pub store_path: String,
    /// The 32-byte SQLCipher key, from the Android Keystore / iOS Keychain. The store is always
    /// encrypted; the same key must be given at every open.
    pub encryption_key: Vec<u8>,
    /// Base URL of the provincial server (`https://sync.example.vn`).
    pub server_url: String,
    /// The credential from [`Engine::enroll`](crate::Engine::enroll), kept by the app in the
    /// platform keystore; `None` before enrollment.
    #[uniffi(default)]
    pub credential: Option<DeviceCredential>,
    /// When to sync in the background; `None` for the defaults suited to 2G.
    #[uniffi(default)]
    pub background_policy: Option<crate::BackgroundPolicy>,
    /// The app's version (Android `versionName`, iOS `CFBundleShortVersionString`). After the
    /// server answered "upgrade required", background syncs stop until the engine is opened by
    /// another version of the app (or of this library); a new version also tries again the
    /// pulled records an older one could not read.
    #[uniffi(default)]
    pub app_version: Option<String>,
    /// The province's CA certificates (PEM). When any is given, the server's certificate must
    /// come from one of them and the public web CAs bundled in the library are not trusted.
    /// Several are allowed so that a province can rotate its CA: add the new one, switch the
    /// server's certificate, then remove the old one. Empty: the bundled web roots.
    #[uniffi(default)]
    pub trusted_ca_pem: Vec<String>,
    /// Pinned server keys: base64 SHA-256 of a certificate's `SubjectPublicKeyInfo` (optionally
    /// `sha256/`-prefixed). When any is given, the server (or an intermediate it sends) must use
    /// one of these keys, on top of the CA check. Several are allowed, for rotation.
    #[uniffi(default)]
    pub pinned_keys: Vec<String>,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("store_path", &self.store_path)
            .field("encryption_key", &"<redacted>")
            .field("server_url", &self.server_url)
            .field("credential", &self.credential)
            .field("background_policy", &self.background_policy)
            .field("app_version", &self.app_version)
            .field("trusted_ca_pem", &self.trusted_ca_pem.len())
            .field("pinned_keys", &self.pinned_keys)
            .finish_non_exhaustive()
    }
}

/// The device credential issued at enrollment. The token is a secret: keep the whole record in
/// the platform keystore and pass it back in [`EngineConfig::credential`] at every open.
#[derive(Clone, PartialEq, Eq, uniffi::Record)]
pub struct DeviceCredential {
    /// The device (store) it is bound to.
    pub device_id: String,
    /// Bearer token for sync.
    pub token: String,
    /// The commune whose records the device reads and writes; `None` for a province account.
    pub commune_code: Option<String>,
}

impl std::fmt::Debug for DeviceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCredential")
            .field("device_id", &self.device_id)
            .field("token", &"<redacted>")
            .field("commune_code", &self.commune_code)
            .finish()
    }
}

impl From<Credentials> for DeviceCredential {
    fn from(c: Credentials) -> Self {
        DeviceCredential {
            device_id: c.device_id.to_string(),
            token: c.token,
            commune_code: match c.scope {
                Scope::Commune(code) => Some(code),
                Scope::Province => None,
            },
        }
    }
}

// ----- statuses and kinds ------------------------------------------------------------------------

/// Status of an application: received → in progress ⇄ supplement requested, in progress →
/// ready → returned; rejected and withdrawn end an open application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ApplicationStatus {
    /// Received, not yet processed.
    Received,
    /// Being processed.
    InProgress,
    /// Waiting for the applicant's missing papers.
    SupplementRequested,
    /// The result is ready to hand over.
    Ready,
    /// Handed to the applicant (final).
    Returned,
    /// Refused (final).
    Rejected,
    /// Withdrawn by the applicant (final).
    Withdrawn,
}

impl From<CoreStatus> for ApplicationStatus {
    fn from(s: CoreStatus) -> Self {
        match s {
            CoreStatus::Received => Self::Received,
            CoreStatus::InProgress => Self::InProgress,
            CoreStatus::SupplementRequested => Self::SupplementRequested,
            CoreStatus::Ready => Self::Ready,
            CoreStatus::Returned => Self::Returned,
            CoreStatus::Rejected => Self::Rejected,
            CoreStatus::Withdrawn => Self::Withdrawn,
        }
    }
}

impl From<ApplicationStatus> for CoreStatus {
    fn from(s: ApplicationStatus) -> Self {
        match s {
            ApplicationStatus::Received => Self::Received,
            ApplicationStatus::InProgress => Self::InProgress,
            ApplicationStatus::SupplementRequested => Self::SupplementRequested,
            ApplicationStatus::Ready => Self::Ready,
            ApplicationStatus::Returned => Self::Returned,
            ApplicationStatus::Rejected => Self::Rejected,
            ApplicationStatus::Withdrawn => Self::Withdrawn,
        }
    }
}

/// Status of a citizen request: received → in progress → resolved → closed, or rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum RequestStatus {
    /// Raised, not yet looked at.
    Received,
    /// Someone is working on it.
    InProgress,
    /// Answered or fixed; waiting for the citizen's confirmation.
    Resolved,
    /// Closed (final).
    Closed,
    /// Not within the commune's remit (final).
    Rejected,
}

impl From<CoreRequestStatus> for RequestStatus {
    fn from(s: CoreRequestStatus) -> Self {
        match s {
            CoreRequestStatus::Received => Self::Received,
            CoreRequestStatus::InProgress => Self::InProgress,
            CoreRequestStatus::Resolved => Self::Resolved,
            CoreRequestStatus::Closed => Self::Closed,
            CoreRequestStatus::Rejected => Self::Rejected,
        }
    }
}

impl From<RequestStatus> for CoreRequestStatus {
    fn from(s: RequestStatus) -> Self {
        match s {
            RequestStatus::Received => Self::Received,
            RequestStatus::InProgress => Self::InProgress,
            RequestStatus::Resolved => Self::Resolved,
            RequestStatus::Closed => Self::Closed,
            RequestStatus::Rejected => Self::Rejected,
        }
    }
}

/// The two kinds of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum RecordKind {
    /// An application for an administrative procedure.
    Application,
    /// A citizen's request or feedback.
    CitizenRequest,
}

impl From<CoreRecordKind> for RecordKind {
    fn from(k: CoreRecordKind) -> Self {
        match k {
            CoreRecordKind::Application => Self::Application,
            CoreRecordKind::CitizenRequest => Self::CitizenRequest,
        }
    }
}

// ----- records -----------------------------------------------------------------------------------

/// Who made a change: the device and the officer signed in on it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Author {
    /// Device id.
    pub device_id: String,
    /// Officer (staff account).
    pub officer: String,
}

/// The person who applies.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Applicant {
    /// Full name with diacritics ("Nguyễn Thị Hương").
    pub name: String,
    /// Citizen identity number (12 digits, or 9 for an old card), or empty.
    #[uniffi(default)]
    pub id_number: String,
    /// Phone number (9 to 15 digits, optional leading `+`), or empty.
    #[uniffi(default)]
    pub phone: String,
    /// Street address or hamlet.
    #[uniffi(default)]
    pub address: String,
    /// Village (bản) or residential group.
    #[uniffi(default)]
    pub village: String,
}

impl From<core::Applicant> for Applicant {
    fn from(a: core::Applicant) -> Self {
        Applicant {
            name: a.name,
            id_number: a.id_number,
            phone: a.phone,
            address: a.address,
            village: a.village,
        }
    }
}

impl From<Applicant> for core::Applicant {
    fn from(a: Applicant) -> Self {
        core::Applicant {
            name: a.name,
            id_number: a.id_number,
            phone: a.phone,
            address: a.address,
            village: a.village,
        }
    }
}

/// A paper received with an application.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ReceivedDocument {
    /// What it is ("Tờ khai đăng ký khai sinh").
    pub name: String,
    /// Copies received.
    #[uniffi(default = 1)]
    pub copies: u32,
    /// Whether the original was shown.
    #[uniffi(default)]
    pub original: bool,
}

/// A fee for the procedure, in đồng.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Fee {
    /// What it is for.
    pub name: String,
    /// Amount in Vietnamese đồng.
    pub amount_vnd: u64,
    /// Whether it is paid.
    #[uniffi(default)]
    pub paid: bool,
}

fn documents_to_core(docs: Vec<ReceivedDocument>) -> Vec<core::ReceivedDocument> {
    docs.into_iter()
        .map(|d| core::ReceivedDocument {
            name: d.name,
            copies: d.copies,
            original: d.original,
        })
        .collect()
}

fn fees_to_core(fees: Vec<Fee>) -> Vec<core::Fee> {
    fees.into_iter()
        .map(|f| core::Fee {
            name: f.name,
            amount_vnd: f.amount_vnd,
            paid: f.paid,
        })
        .collect()
}

/// An application for an administrative procedure.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Application {
    /// Record id (a UUID).
    pub id: String,
    /// The dossier number the citizen quotes ("01234-261206-000042"), given at intake; `None`
    /// for applications taken before numbers existed.
    pub dossier_number: Option<String>,
    /// Whether the number is a fallback (the tablet had no block of numbers left).
    pub dossier_number_fallback: bool,
    /// Commune it belongs to.
    pub commune_code: String,
    /// Procedure code from the catalogue.
    pub procedure_code: String,
    /// The applicant.
    pub applicant: Applicant,
    /// When it was received (device clock at intake).
    pub received_at: SystemTime,
    /// Statutory due date in Vietnam.
    pub due_date: CivilDate,
    /// Papers received.
    pub documents: Vec<ReceivedDocument>,
    /// Fees.
    pub fees: Vec<Fee>,
    /// Workflow status.
    pub status: ApplicationStatus,
    /// Officer handling it.
    pub assignee: Option<String>,
    /// Free-text notes (concurrent edits merge character by character).
    pub notes: String,
    /// Who created it.
    pub created_by: Author,
}

impl From<core::Application> for Application {
    fn from(a: core::Application) -> Self {
        Application {
            id: a.id.to_string(),
            dossier_number: a.dossier_number,
            dossier_number_fallback: a.dossier_number_fallback,
            commune_code: a.commune_code,
            procedure_code: a.procedure_code,
            applicant: a.applicant.into(),
            received_at: time_from_ms(a.received_at),
            due_date: a.due_at,
            documents: a
                .documents
                .into_iter()
                .map(|d| ReceivedDocument {
                    name: d.name,
                    copies: d.copies,
                    original: d.original,
                })
                .collect(),
            fees: a
                .fees
                .into_iter()
                .map(|f| Fee {
                    name: f.name,
                    amount_vnd: f.amount_vnd,
                    paid: f.paid,
                })
                .collect(),
            status: a.status.into(),
            assignee: a.assignee,
            notes: a.notes,
            created_by: author(a.created_by),
        }
    }
}

fn author(a: core::Author) -> Author {
    Author {
        device_id: a.device.to_string(),
        officer: a.officer,
    }
}

/// What an officer enters for a new application; the engine sets id, due date and status.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct NewApplication {
    /// Commune it belongs to (the device's commune).
    pub commune_code: String,
    /// Procedure code from the catalogue (which arrives with the first sync).
    pub procedure_code: String,
    /// The applicant.
    pub applicant: Applicant,
    /// When it was received; `None` for now.
    #[uniffi(default)]
    pub received_at: Option<SystemTime>,
    /// Papers received.
    #[uniffi(default)]
    pub documents: Vec<ReceivedDocument>,
    /// Fees.
    #[uniffi(default)]
    pub fees: Vec<Fee>,
    /// Officer handling it.
    #[uniffi(default)]
    pub assignee: Option<String>,
    /// Initial notes.
    #[uniffi(default)]
    pub notes: String,
}

impl From<NewApplication> for core::NewApplication {
    fn from(n: NewApplication) -> Self {
        core::NewApplication {
            commune_code: n.commune_code,
            procedure_code: n.procedure_code,
            applicant: n.applicant.into(),
            received_at: n.received_at.map(ms_from_time),
            documents: documents_to_core(n.documents),
            fees: fees_to_core(n.fees),
            assignee: n.assignee,
            notes: n.notes,
            form_values: Default::default(),
        }
    }
}

/// Changes to an application: only the fields that are set change (so an edit never writes
/// back stale values of fields it did not touch).
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct ApplicationUpdate {
    /// New procedure (the due date follows).
    #[uniffi(default)]
    pub procedure_code: Option<String>,
    /// New applicant details.
    #[uniffi(default)]
    pub applicant: Option<Applicant>,
    /// New list of papers.
    #[uniffi(default)]
    pub documents: Option<Vec<ReceivedDocument>>,
    /// New list of fees.
    #[uniffi(default)]
    pub fees: Option<Vec<Fee>>,
    /// New status (must follow the workflow).
    #[uniffi(default)]
    pub status: Option<ApplicationStatus>,
    /// New assignee.
    #[uniffi(default)]
    pub assignee: Option<String>,
    /// Removes the assignee (wins over `assignee`).
    #[uniffi(default)]
    pub unassign: bool,
    /// New notes (stored as the smallest text edit, so concurrent note edits merge).
    #[uniffi(default)]
    pub notes: Option<String>,
}

impl ApplicationUpdate {
    pub(crate) fn apply(self, app: &mut core::Application) {
        if let Some(v) = self.procedure_code {
            app.procedure_code = v;
        }
        if let Some(v) = self.applicant {
            app.applicant = v.into();
        }
        if let Some(v) = self.documents {
            app.documents = documents_to_core(v);
        }
        if let Some(v) = self.fees {
            app.fees = fees_to_core(v);
        }
        if let Some(v) = self.status {
            app.status = v.into();
        }
        if let Some(v) = self.assignee {
            app.assignee = Some(v);
        }
        if self.unassign {
            app.assignee = None;
        }
        if let Some(v) = self.notes {
            app.notes = v;
        }
    }
}

/// A citizen's request or feedback.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct CitizenRequest {
    /// Record id (a UUID).
    pub id: String,
    /// Commune it belongs to.
    pub commune_code: String,
    /// Category code (`road`, `land`, `social_welfare`, `feedback`, ...).
    pub category: String,
    /// Village where it was raised.
    pub village: String,
    /// What the citizen asks or reports.
    pub description: String,
    /// Reporter's name.
    pub reporter_name: String,
    /// Reporter's contact.
    pub reporter_contact: String,
    /// When it was received (device clock).
    pub received_at: SystemTime,
    /// Workflow status.
    pub status: RequestStatus,
    /// Officer handling it.
    pub assignee: Option<String>,
    /// Free-text notes.
    pub notes: String,
    /// Who created it.
    pub created_by: Author,
}

impl From<core::CitizenRequest> for CitizenRequest {
    fn from(r: core::CitizenRequest) -> Self {
        CitizenRequest {
            id: r.id.to_string(),
            commune_code: r.commune_code,
            category: r.category,
            village: r.village,
            description: r.description,
            reporter_name: r.reporter_name,
            reporter_contact: r.reporter_contact,
            received_at: time_from_ms(r.received_at),
            status: r.status.into(),
            assignee: r.assignee,
            notes: r.notes,
            created_by: author(r.created_by),
        }
    }
}

/// What an officer enters for a new citizen request.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct NewCitizenRequest {
    /// Commune it belongs to.
    pub commune_code: String,
    /// Category code.
    pub category: String,
    /// What the citizen asks or reports.
    pub description: String,
    /// Village where it was raised.
    #[uniffi(default)]
    pub village: String,
    /// Reporter's name.
    #[uniffi(default)]
    pub reporter_name: String,
    /// Reporter's contact.
    #[uniffi(default)]
    pub reporter_contact: String,
    /// When it was received; `None` for now.
    #[uniffi(default)]
    pub received_at: Option<SystemTime>,
    /// Officer handling it.
    #[uniffi(default)]
    pub assignee: Option<String>,
    /// Initial notes.
    #[uniffi(default)]
    pub notes: String,
}

impl From<NewCitizenRequest> for core::NewCitizenRequest {
    fn from(n: NewCitizenRequest) -> Self {
        core::NewCitizenRequest {
            commune_code: n.commune_code,
            category: n.category,
            village: n.village,
            description: n.description,
            reporter_name: n.reporter_name,
            reporter_contact: n.reporter_contact,
            received_at: n.received_at.map(ms_from_time),
            assignee: n.assignee,
            notes: n.notes,
        }
    }
}

/// Changes to a citizen request: only the fields that are set change.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct CitizenRequestUpdate {
    /// New category.
    #[uniffi(default)]
    pub category: Option<String>,
    /// New village.
    #[uniffi(default)]
    pub village: Option<String>,
    /// New description.
    #[uniffi(default)]
    pub description: Option<String>,
    /// New reporter name.
    #[uniffi(default)]
    pub reporter_name: Option<String>,
    /// New reporter contact.
    #[uniffi(default)]
    pub reporter_contact: Option<String>,
    /// New status (must follow the workflow).
    #[uniffi(default)]
    pub status: Option<RequestStatus>,
    /// New assignee.
    #[uniffi(default)]
    pub assignee: Option<String>,
    /// Removes the assignee (wins over `assignee`).
    #[uniffi(default)]
    pub unassign: bool,
    /// New notes.
    #[uniffi(default)]
    pub notes: Option<String>,
}

impl CitizenRequestUpdate {
    pub(crate) fn apply(self, r: &mut core::CitizenRequest) {
        if let Some(v) = self.category {
            r.category = v;
        }
        if let Some(v) = self.village {
            r.village = v;
        }
        if let Some(v) = self.description {
            r.description = v;
        }
        if let Some(v) = self.reporter_name {
            r.reporter_name = v;
        }
        if let Some(v) = self.reporter_contact {
            r.reporter_contact = v;
        }
        if let Some(v) = self.status {
            r.status = v.into();
        }
        if let Some(v) = self.assignee {
            r.assignee = Some(v);
        }
        if self.unassign {
            r.assignee = None;
        }
        if let Some(v) = self.notes {
            r.notes = v;
        }
    }
}

/// Either kind of record.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Record {
    /// An application.
    Application {
        /// The application.
        application: Application,
    },
    /// A citizen request.
    CitizenRequest {
        /// The request.
        request: CitizenRequest,
    },
}

impl From<core::Record> for Record {
    fn from(r: core::Record) -> Self {
        match r {
            core::Record::Application(a) => Record::Application {
                application: a.into(),
            },
            core::Record::CitizenRequest(r) => Record::CitizenRequest { request: r.into() },
        }
    }
}

/// One procedure of the province's catalogue.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Procedure {
    /// National procedure code (`1.001193`).
    pub code: String,
    /// Name ("Đăng ký khai sinh").
    pub name: String,
    /// Statutory processing time in working days.
    pub processing_days: u32,
    /// Whether an applicant may withdraw once received.
    pub withdrawal_allowed: bool,
}

impl From<CoreProcedure> for Procedure {
    fn from(p: CoreProcedure) -> Self {
        Procedure {
            code: p.code,
            name: p.name,
            processing_days: p.processing.working_days(),
            withdrawal_allowed: p.withdrawal_allowed,
        }
    }
}

// ----- conflicts and history ---------------------------------------------------------------------

/// A single value as it appears in a conflict or a resolution.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum ConflictValue {
    /// No value (an unset optional field).
    Empty,
    /// A yes/no value.
    Flag {
        /// The value.
        value: bool,
    },
    /// A whole number.
    Number {
        /// The value.
        value: i64,
    },
    /// A text value (statuses are their snake_case names: `in_progress`).
    Text {
        /// The value.
        value: String,
    },
}

impl From<CoreConflictValue> for ConflictValue {
    fn from(v: CoreConflictValue) -> Self {
        match v {
            CoreConflictValue::Null => Self::Empty,
            CoreConflictValue::Bool(value) => Self::Flag { value },
            CoreConflictValue::Int(value) => Self::Number { value },
            CoreConflictValue::Str(value) => Self::Text { value },
        }
    }
}

impl From<ConflictValue> for CoreConflictValue {
    fn from(v: ConflictValue) -> Self {
        match v {
            ConflictValue::Empty => Self::Null,
            ConflictValue::Flag { value } => Self::Bool(value),
            ConflictValue::Number { value } => Self::Int(value),
            ConflictValue::Text { value } => Self::Str(value),
        }
    }
}

/// One of the competing values of a conflict, with who wrote it.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ConflictCandidate {
    /// The value.
    pub value: ConflictValue,
    /// Device that wrote it.
    pub device_id: Option<String>,
    /// Officer who wrote it.
    pub officer: Option<String>,
}

/// A field that holds concurrent different values after a sync; a person picks one with
/// [`Engine::resolve`](crate::Engine::resolve).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Conflict {
    /// Dotted path of the field (`status`, `assignee`, `applicant.phone`).
    pub field: String,
    /// The competing values; the first is the one reads currently show.
    pub values: Vec<ConflictCandidate>,
}

impl From<core::Conflict> for Conflict {
    fn from(c: core::Conflict) -> Self {
        Conflict {
            field: c.field,
            values: c
                .values
                .into_iter()
                .map(|v| ConflictCandidate {
                    value: v.value.into(),
                    device_id: v.device.map(|d| d.to_string()),
                    officer: v.officer,
                })
                .collect(),
        }
    }
}

/// One change in a record's history.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct HistoryEntry {
    /// Hex hash of the change.
    pub hash: String,
    /// Device that made it.
    pub device_id: Option<String>,
    /// Officer signed in at the time.
    pub officer: String,
    /// The device's clock at the time (informative: device clocks drift).
    pub device_time: SystemTime,
    /// Fields it touched (`created` for the first change).
    pub fields: Vec<String>,
    /// When the server received it (server clock): the server's fact beside
    /// the device's claim. `None` until the server has acknowledged it.
    pub server_received_at: Option<SystemTime>,
    /// Whether this device signed the change in a push (its own changes since device keys).
    pub signed_by_this_device: bool,
}

impl From<core::HistoryEntry> for HistoryEntry {
    fn from(h: core::HistoryEntry) -> Self {
        HistoryEntry {
            hash: h.hash,
            device_id: h.device.map(|d| d.to_string()),
            officer: h.officer,
            device_time: time_from_ms(h.device_time),
            fields: h.fields,
            server_received_at: h.server_received_at.map(time_from_ms),
            signed_by_this_device: h.signed_by_this_device,
        }
    }
}

// ----- quarantine ----------------------------------------------------------------------------

/// Which way a quarantined record was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum QuarantineDirection {
    /// Pushed by this device and refused by the server: its local changes wait for a decision.
    Outgoing,
    /// Pulled from the server and not readable by this version of the app: kept, and tried
    /// again by the next version.
    Incoming,
}

impl From<quarantine::Direction> for QuarantineDirection {
    fn from(d: quarantine::Direction) -> Self {
        match d {
            quarantine::Direction::Outgoing => Self::Outgoing,
            quarantine::Direction::Incoming => Self::Incoming,
        }
    }
}

/// A record set aside: every other record keeps syncing. Outgoing ones can be retried
/// ([`Engine::retry_quarantined`](crate::Engine::retry_quarantined)), discarded or copied as a
/// new record.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct QuarantinedRecord {
    /// Record id (for an incoming record whose id could not be read, one made from its data:
    /// `id_known` is false).
    pub record_id: String,
    /// Whether `record_id` is the record's own id.
    pub id_known: bool,
    /// Record kind.
    pub kind: RecordKind,
    /// Refused on the way out, or unreadable on the way in.
    pub direction: QuarantineDirection,
    /// Why, for programs: the server's refusal code (`not_yours`, `immutable_field`,
    /// `illegal_transition`, `second_root`, `sequence`, `not_attributed`, `invalid_field`,
    /// `too_large`, `malformed`, `duplicate`, or a newer one) for outgoing records;
    /// `unreadable`, `missing_dependencies`, `wrong_kind` or `invalid` for incoming ones.
    pub code: String,
    /// Why, for people (English; apps show their own text per code).
    pub message: String,
    /// When it was first set aside (device clock corrected by the server's).
    pub first_at: SystemTime,
    /// When it was last refused or tried.
    pub last_at: SystemTime,
    /// Times refused (outgoing) or tried (incoming).
    pub attempts: u32,
    /// Incoming: whether its data is kept (false beyond the quarantine's bound).
    pub changes_kept: bool,
}

impl From<quarantine::QuarantinedRecord> for QuarantinedRecord {
    fn from(q: quarantine::QuarantinedRecord) -> Self {
        QuarantinedRecord {
            record_id: q.record_id.to_string(),
            id_known: q.id_known,
            kind: q.kind.into(),
            direction: q.direction.into(),
            code: q.code,
            message: q.message,
            first_at: time_from_ms(q.first_at),
            last_at: time_from_ms(q.last_at),
            attempts: q.attempts,
            changes_kept: q.changes_kept,
        }
    }
}

/// What an officer did about a quarantined record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum AuditAction {
    /// Discarded.
    Discarded,
    /// Replaced by a new record with the same content.
    CopiedAsNew,
}

/// One entry of the audit log of quarantine decisions: who, when, what, why.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AuditEntry {
    /// When (device clock corrected by the server's).
    pub at: SystemTime,
    /// The officer who decided.
    pub officer: String,
    /// What was done.
    pub action: AuditAction,
    /// The quarantined record.
    pub record_id: String,
    /// Its kind.
    pub kind: RecordKind,
    /// Which way it had been going.
    pub direction: QuarantineDirection,
    /// The code it was quarantined with.
    pub code: String,
    /// The message it was quarantined with.
    pub message: String,
    /// The officer's reason.
    pub reason: String,
    /// For a copy: the new record's id.
    pub replacement_id: Option<String>,
}

impl From<quarantine::AuditEntry> for AuditEntry {
    fn from(a: quarantine::AuditEntry) -> Self {
        AuditEntry {
            at: time_from_ms(a.at),
            officer: a.officer,
            action: match a.action {
                quarantine::AuditAction::Discarded => AuditAction::Discarded,
                quarantine::AuditAction::CopiedAsNew => AuditAction::CopiedAsNew,
            },
            record_id: a.record_id.to_string(),
            kind: a.kind.into(),
            direction: a.direction.into(),
            code: a.code,
            message: a.message,
            reason: a.reason,
            replacement_id: a.replacement.map(|id| id.to_string()),
        }
    }
}

// ----- queries -------------------------------------------------------------------------------

/// Sort order of an application query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, uniffi::Enum)]
pub enum SortBy {
    /// By receipt time.
    #[default]
    ReceivedAt,
    /// By statutory due date.
    DueDate,
    /// By applicant name.
    ApplicantName,
}

/// Filters, order and page of an application list. Unset filters match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct ApplicationQuery {
    /// Only this status.
    #[uniffi(default)]
    pub status: Option<ApplicationStatus>,
    /// Only open applications (received, in progress, supplement requested).
    #[uniffi(default)]
    pub open_only: bool,
    /// Only this procedure.
    #[uniffi(default)]
    pub procedure_code: Option<String>,
    /// Only this village.
    #[uniffi(default)]
    pub village: Option<String>,
    /// Only this assignee.
    #[uniffi(default)]
    pub assignee: Option<String>,
    /// Due on or after this date.
    #[uniffi(default)]
    pub due_from: Option<CivilDate>,
    /// Due on or before this date.
    #[uniffi(default)]
    pub due_until: Option<CivilDate>,
    /// Received at or after.
    #[uniffi(default)]
    pub received_from: Option<SystemTime>,
    /// Received before.
    #[uniffi(default)]
    pub received_until: Option<SystemTime>,
    /// Only records with unresolved conflicts.
    #[uniffi(default)]
    pub with_conflicts: bool,
    /// Sort key (`None`: by receipt time).
    #[uniffi(default)]
    pub sort: Option<SortBy>,
    /// Latest first.
    #[uniffi(default)]
    pub descending: bool,
    /// Page size, 1 to 500 (0 means 50).
    #[uniffi(default)]
    pub limit: u32,
    /// Rows to skip (the previous page's `next_offset`).
    #[uniffi(default)]
    pub offset: u32,
}

impl TryFrom<ApplicationQuery> for store::ApplicationQuery {
    type Error = CommuneSyncError;
    fn try_from(q: ApplicationQuery) -> Result<Self> {
        Ok(store::ApplicationQuery {
            status: q.status.map(Into::into),
            open_only: q.open_only,
            procedure_code: q.procedure_code,
            village: q.village,
            assignee: q.assignee,
            due_from: q.due_from,
            due_until: q.due_until,
            received_from: q.received_from.map(ms_from_time),
            received_until: q.received_until.map(ms_from_time),
            with_conflicts: q.with_conflicts,
            sort: match q.sort.unwrap_or_default() {
                SortBy::ReceivedAt => store::SortBy::ReceivedAt,
                SortBy::DueDate => store::SortBy::DueAt,
                SortBy::ApplicantName => store::SortBy::ApplicantName,
            },
            descending: q.descending,
            limit: q.limit,
            offset: q.offset,
        })
    }
}

/// One row of an application list.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ApplicationSummary {
    /// Record id.
    pub id: String,
    /// Procedure code.
    pub procedure_code: String,
    /// Applicant's name.
    pub applicant_name: String,
    /// Village.
    pub village: String,
    /// Status.
    pub status: ApplicationStatus,
    /// Assignee.
    pub assignee: Option<String>,
    /// When it was received.
    pub received_at: SystemTime,
    /// Due date.
    pub due_date: CivilDate,
    /// Whether a field holds concurrent values (see [`Engine::conflicts`](crate::Engine::conflicts)).
    pub has_conflicts: bool,
}

/// One page of an application list.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ApplicationPage {
    /// The rows.
    pub items: Vec<ApplicationSummary>,
    /// Rows matching in all.
    pub total: u64,
    /// Offset of the next page, if there is one.
    pub next_offset: Option<u32>,
}

impl From<store::Page<store::ApplicationSummary>> for ApplicationPage {
    fn from(p: store::Page<store::ApplicationSummary>) -> Self {
        ApplicationPage {
            items: p
                .items
                .into_iter()
                .map(|s| ApplicationSummary {
                    id: s.id.to_string(),
                    procedure_code: s.procedure_code,
                    applicant_name: s.applicant_name,
                    village: s.village,
                    status: s.status.into(),
                    assignee: s.assignee,
                    received_at: time_from_ms(s.received_at),
                    due_date: s.due_at,
                    has_conflicts: s.has_conflicts,
                })
                .collect(),
            total: p.total,
            next_offset: p.next_offset,
        }
    }
}

/// Applications in one status.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct StatusCount {
    /// The status.
    pub status: ApplicationStatus,
    /// How many applications are in it.
    pub count: u64,
}

impl From<store::StatusCount> for StatusCount {
    fn from(c: store::StatusCount) -> Self {
        StatusCount {
            status: c.status.into(),
            count: c.count,
        }
    }
}

/// A full-text search result.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SearchHit {
    /// Record id.
    pub id: String,
    /// Record kind.
    pub kind: RecordKind,
    /// Applicant's or reporter's name.
    pub title: String,
    /// Status name (`received`, `in_progress`, ...).
    pub status: String,
}

impl From<store::SearchHit> for SearchHit {
    fn from(h: store::SearchHit) -> Self {
        SearchHit {
            id: h.id.to_string(),
            kind: h.kind.into(),
            title: h.title,
            status: h.status,
        }
    }
}

// ----- sync ----------------------------------------------------------------------------------

/// What a sync does next, in [`SyncProgress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncPhase {
    /// Local changes remain to be pushed.
    Pushing,
    /// The server has more to send.
    Pulling,
    /// That was the last request.
    Done,
}

/// Progress of a running sync, after each completed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct SyncProgress {
    /// What comes next.
    pub phase: SyncPhase,
    /// Requests sent so far (retries included).
    pub requests: u64,
    /// Bytes sent so far.
    pub bytes_up: u64,
    /// Bytes received so far.
    pub bytes_down: u64,
    /// Documents the server acknowledged so far.
    pub pushed_docs: u64,
    /// Documents created or changed by pulls so far.
    pub pulled_docs: u64,
    /// Documents still waiting to be pushed.
    pub pending_docs: u64,
}

impl From<CoreProgress> for SyncProgress {
    fn from(p: CoreProgress) -> Self {
        SyncProgress {
            phase: match p.phase {
                CorePhase::Pushing => SyncPhase::Pushing,
                CorePhase::Pulling => SyncPhase::Pulling,
                CorePhase::Done => SyncPhase::Done,
            },
            requests: p.requests,
            bytes_up: p.bytes_up,
            bytes_down: p.bytes_down,
            pushed_docs: p.pushed_docs,
            pulled_docs: p.pulled_docs,
            pending_docs: p.pending_docs,
        }
    }
}

/// What one sync did.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncReport {
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Bytes sent.
    pub bytes_up: u64,
    /// Bytes received.
    pub bytes_down: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Documents the server acknowledged.
    pub pushed_docs: u64,
    /// Changes in them.
    pub pushed_changes: u64,
    /// Documents created or changed on this device by the pull.
    pub pulled_docs: u64,
    /// Changes pulled.
    pub pulled_changes: u64,
    /// Documents holding conflicts after the pull.
    pub conflicts: u64,
    /// Pulled records this version of the app could not read: kept in the quarantine.
    pub rejected: u64,
    /// Pushed records the server refused in this sync: set aside in the quarantine.
    pub refused: u64,
    /// Records in the quarantine after the sync (both directions).
    pub quarantined: u64,
    /// Repeated attempts.
    pub retries: u64,
    /// Documents still waiting to be pushed.
    pub pending_docs: u64,
    /// Attachment contents now whole on the server (uploads) or here (prefetch), after the
    /// records.
    #[uniffi(default = 0)]
    pub attachments_completed: u64,
    /// Attachment chunk bytes sent or received.
    #[uniffi(default = 0)]
    pub attachment_bytes: u64,
    /// Attachment contents left for a later sync (the metered budget was spent).
    #[uniffi(default = 0)]
    pub attachments_deferred: u64,
    /// Why the attachment channel stopped, if it did (the records' sync stands; the next sync
    /// resumes at the last whole chunk).
    #[uniffi(default)]
    pub attachment_error: Option<String>,
}

impl From<sync::SyncReport> for SyncReport {
    fn from(r: sync::SyncReport) -> Self {
        SyncReport {
            requests: r.requests,
            bytes_up: r.bytes_up,
            bytes_down: r.bytes_down,
            seconds: r.seconds,
            pushed_docs: r.pushed_docs,
            pushed_changes: r.pushed_changes,
            pulled_docs: r.pulled_docs,
            pulled_changes: r.pulled_changes,
            conflicts: r.conflicts,
            rejected: r.rejected,
            refused: r.refused,
            quarantined: r.quarantined,
            retries: r.retries,
            pending_docs: r.pending_docs,
            attachments_completed: 0,
            attachment_bytes: 0,
            attachments_deferred: 0,
            attachment_error: None,
        }
    }
}

/// A snapshot of the engine's sync state, for a status bar or a diagnostics screen.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncStatus {
    /// This device's id.
    pub device_id: String,
    /// Whether the engine holds a credential.
    pub enrolled: bool,
    /// Whether a sync is running now.
    pub syncing: bool,
    /// Records with changes the server has not acknowledged and that go out with the next sync.
    pub pending_changes: u64,
    /// Records set aside in the quarantine (see [`Engine::quarantined`](crate::Engine::quarantined)).
    pub quarantined: u64,
    /// The commune the device enrolled in (`None` before enrollment or for a province account).
    pub enrolled_commune: Option<String>,
    /// Whether the server refused this version of the app: upgrade it.
    pub upgrade_required: bool,
    /// Server time of the last successful sync, kept in the store.
    pub last_server_sync: Option<SystemTime>,
    /// Device time of the last successful sync in this process.
    pub last_success: Option<SystemTime>,
    /// Syncs that failed since the last success (in this process).
    pub consecutive_failures: u32,
    /// What the last sync failed with, if it failed.
    pub last_error_kind: Option<crate::ErrorKind>,
    /// Its message.
    pub last_error: Option<String>,
    /// The last sync's report, if one succeeded in this process.
    pub last_report: Option<SyncReport>,
}
