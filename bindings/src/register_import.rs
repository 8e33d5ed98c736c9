//! Import of a commune's existing register with its state, for the app: the register as CSV
//! bytes (what a spreadsheet exports; the format is in docs/PROTOCOL.md, "Register import")
//! imported into this tablet's store, each entry as one dossier in its current state marked as
//! imported; the next sync sends them. Idempotent: the external id is the key, a re-run imports
//! nothing twice. A bad file is an `InvalidInput` error and imports nothing; a bad line is listed
//! in the summary with its number and skipped.
//!
//! Every method touches the store: `async` (Kotlin `suspend`, Swift `async`), run on a
//! blocking-pool thread through `Engine::with_store`.

use std::time::SystemTime;

use communesync_core::record as core;
use communesync_core::register_import as import;

use crate::engine::Engine;
use crate::error::CommuneSyncError;
use crate::types::{parse_id, time_from_ms};

type Result<T, E = CommuneSyncError> = std::result::Result<T, E>;

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct RegisterImportSummary {
    /// Entries imported now (one dossier, one change each).
    pub imported: u64,
    /// Entries whose external id a dossier of the commune already has: nothing written.
    pub already_present: u64,
    /// Entries refused, with their line.
    pub errors: Vec<RegisterEntryError>,
}

/// Why one line of the register was not imported.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct RegisterEntryError {
    /// The line it starts on (1 is the header).
    pub line: u64,
    /// Its external id, when it could be read.
    pub external_id: Option<String>,
    /// Why.
    pub reason: String,
}

/// Where an imported dossier came from (set at its import, never changed).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ImportMarker {
    /// Its key in the commune's register.
    pub external_id: String,
    /// The register's reference number (empty when none).
    pub original_reference: String,
    /// When it was imported.
    pub imported_at: SystemTime,
    /// When it was returned, for a dossier imported as returned.
    pub returned_at: Option<SystemTime>,
}

impl From<core::Imported> for ImportMarker {
    fn from(m: core::Imported) -> Self {
        ImportMarker {
            external_id: m.external_id,
            original_reference: m.original_reference,
            imported_at: time_from_ms(m.imported_at),
            returned_at: m.returned_at.map(time_from_ms),
        }
    }
}

impl From<import::ImportSummary> for RegisterImportSummary {
    fn from(s: import::ImportSummary) -> Self {
        RegisterImportSummary {
            imported: s.imported,
            already_present: s.already_present,
            errors: s
                .errors
                .into_iter()
                .map(|e| RegisterEntryError {
                    line: e.line,
                    external_id: e.external_id,
                    reason: e.reason,
                })
                .collect(),
        }
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl Engine {
    /// Imports a register (CSV bytes with a header row) as `officer`, into `commune_code` (the
    /// commune this tablet enrolled in when `None`).
    pub async fn import_register(
        &self,
        officer: String,
        commune_code: Option<String>,
        csv: Vec<u8>,
    ) -> Result<RegisterImportSummary> {
        self.with_store(move |store| {
            Ok(store
                .import_register_file(&officer, commune_code.as_deref(), &csv)?
                .into())
        })
        .await
    }

    /// The id of the dossier of `commune_code` imported with `external_id`, if this tablet has it.
    pub async fn imported_application_id(
        &self,
        commune_code: String,
        external_id: String,
    ) -> Result<Option<String>> {
        self.with_store(move |store| {
            Ok(store
                .imported_record(&commune_code, &external_id)?
                .map(|id| id.to_string()))
        })
        .await
    }

    /// The import marker of application `record_id`: `None` for a dossier taken on a tablet.
    pub async fn import_marker(&self, record_id: String) -> Result<Option<ImportMarker>> {
        let id = parse_id(&record_id)?;
        self.with_store(move |store| Ok(store.get_application(id)?.imported.map(Into::into)))
            .await
    }
}

#[cfg(test)]
mod tests;
