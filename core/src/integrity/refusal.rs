//! Why a change or a document was refused: a stable code for programs, a message for people.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Machine-readable reason a document was refused. On the wire and on disk it is its
/// [`RefusalCode::as_str`] name, so a code added by a newer server reaches an older tablet as
/// [`RefusalCode::Other`] instead of failing its sync.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum RefusalCode {
    /// A change does not decode, or the document does not read as a record of its kind.
    Malformed,
    /// A change's author (its Automerge actor) is not the device that pushed it, or a record
    /// names as its creator a device that did not create it.
    NotAttributed,
    /// A second root change (one without dependencies) in a record that has one.
    SecondRoot,
    /// A change's sequence number does not follow its author's previous change (a gap, a reuse,
    /// or a previous change it does not build on), or its operation counters go backwards.
    Sequence,
    /// A change alters what never changes: id, kind, commune, receipt time, creator, due date
    /// (except with the procedure, or by a legal extension).
    ImmutableField,
    /// A status change that skips or reverses the workflow.
    IllegalTransition,
    /// A field value breaks its rule (format, required, characters).
    InvalidField,
    /// A field, list, message or document grows past its limit.
    TooLarge,
    /// The record is not this device's to write (another commune's, or registered as another
    /// kind). Deliberately one code and one message whatever the reason, so that a device
    /// learns nothing about records outside its scope.
    NotYours,
    /// The same record appears twice in one request.
    Duplicate,
    /// A new application's dossier number was not granted to the pushing device (not in one of
    /// its blocks, nor its fallback form), or another record has it.
    DossierNumber,
    /// The pushing device has a registered key and the push carries no signature (issue 16):
    /// every document of the request is refused.
    UnsignedPush,
    /// The push's signature is not the device's over these changes (forged, another device's
    /// key, changes swapped or a revoked key): every document of the request is refused.
    BadSignature,
    /// A new imported dossier names an external id that another record of its commune already
    /// has: the entry of the register was imported before (by another tablet).
    ExternalId,
    /// A code this build does not know (sent by a newer server).
    Other(String),
}

impl RefusalCode {
    /// The name used on the wire, on disk and in the bindings.
    pub fn as_str(&self) -> &str {
        match self {
            RefusalCode::Malformed => "malformed",
            RefusalCode::NotAttributed => "not_attributed",
            RefusalCode::SecondRoot => "second_root",
            RefusalCode::Sequence => "sequence",
            RefusalCode::ImmutableField => "immutable_field",
            RefusalCode::IllegalTransition => "illegal_transition",
            RefusalCode::InvalidField => "invalid_field",
            RefusalCode::TooLarge => "too_large",
            RefusalCode::NotYours => "not_yours",
            RefusalCode::Duplicate => "duplicate",
            RefusalCode::DossierNumber => "dossier_number",
            RefusalCode::UnsignedPush => "unsigned_push",
            RefusalCode::BadSignature => "bad_signature",
            RefusalCode::ExternalId => "external_id",
            RefusalCode::Other(code) => code,
        }
    }

    /// The code of a name (unknown names become [`RefusalCode::Other`]).
    pub fn parse(name: &str) -> Self {
        match name {
            "malformed" => RefusalCode::Malformed,
            "not_attributed" => RefusalCode::NotAttributed,
            "second_root" => RefusalCode::SecondRoot,
            "sequence" => RefusalCode::Sequence,
            "immutable_field" => RefusalCode::ImmutableField,
            "illegal_transition" => RefusalCode::IllegalTransition,
            "invalid_field" => RefusalCode::InvalidField,
            "too_large" => RefusalCode::TooLarge,
            "not_yours" => RefusalCode::NotYours,
            "duplicate" => RefusalCode::Duplicate,
            "dossier_number" => RefusalCode::DossierNumber,
            "unsigned_push" => RefusalCode::UnsignedPush,
            "bad_signature" => RefusalCode::BadSignature,
            "external_id" => RefusalCode::ExternalId,
            other => RefusalCode::Other(other.to_owned()),
        }
    }
}

impl From<RefusalCode> for String {
    fn from(code: RefusalCode) -> String {
        code.as_str().to_owned()
    }
}

impl From<String> for RefusalCode {
    fn from(name: String) -> Self {
        RefusalCode::parse(&name)
    }
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: its code and a readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// Why, for programs.
    pub code: RefusalCode,
    /// Why, for people.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// The one refusal for a record outside the device's scope, whatever the reason.
    pub fn not_yours() -> Self {
        Refusal::new(
            RefusalCode::NotYours,
            "this record does not exist in this device's commune",
        )
    }
}

impl From<Refusal> for crate::Error {
    fn from(refusal: Refusal) -> Self {
        match refusal.code {
            RefusalCode::IllegalTransition => crate::Error::InvalidInput {
                field: "status".to_owned(),
                reason: refusal.message,
            },
            code => crate::Error::InvalidInput {
                field: code.as_str().to_owned(),
                reason: refusal.message,
            },
        }
    }
}
