//! The register import into the device store (see [`crate::register_import`] for the format and
//! the contract).
//!
//! Each batch of [`IMPORT_BATCH`] entries is one SQLite transaction: the records, their
//! projections, their external ids and their outbox marks. A batch that fails to commit (a full
//! disk) stops the import with its error; the batches before it stay imported, and a re-run
//! imports the rest (entries already present are skipped). Every imported record is checked
//! with the shared creation rule ([`crate::integrity::check_creation`]) as the server will check
//! it.

use std::collections::{HashMap, HashSet};

use rusqlite::{OptionalExtension, Transaction, params};

use super::{DeviceStore, mark_outbox, projection};
use crate::catalogue::Procedure;
use crate::integrity::check_creation;
use crate::record::{Application, Author, Imported, Record, RecordDoc, RecordId};
use crate::register_import::{
    EntryError, IMPORT_BATCH, ImportSummary, RegisterEntry, parse_register,
};
use crate::{Error, Result};

/// Records the external id of an imported application (called with every projection write:
/// records imported here and records received by sync alike).
pub(super) fn index(tx: &Transaction<'_>, rowid: i64, record: &Record) -> Result<()> {
    if let Record::Application(Application {
        imported: Some(imported),
        commune_code,
        ..
    }) = record
    {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO imported_records(doc, commune_code, external_id)
             VALUES (?1, ?2, ?3)",
        )?
        .execute(params![rowid, commune_code, imported.external_id])?;
    }
    Ok(())
}

/// One entry made into a record, ready to insert.
struct Prepared {
    record: Record,
    doc: RecordDoc,
    snapshot: Vec<u8>,
}

impl DeviceStore {
    /// Imports a register file (CSV, see [`crate::register_import`]) into `commune` (the
    /// enrolled commune when `None`), as `officer`. A file-level problem is an error and imports
    /// nothing; otherwise the summary counts what was imported and already present, and lists
    /// each refused entry with its line.
    pub fn import_register_file(
        &mut self,
        officer: &str,
        commune: Option<&str>,
        bytes: &[u8],
    ) -> Result<ImportSummary> {
        let parsed = parse_register(bytes)?;
        let mut summary = self.import_register(officer, commune, parsed.entries)?;
        summary.errors.extend(parsed.errors);
        summary.errors.sort_by_key(|e| e.line);
        Ok(summary)
    }

    /// Imports register entries into `commune` (the enrolled commune when `None`), as
    /// `officer`: each entry not yet present becomes one record, in its state, in one change
    /// marked as imported; one transaction per [`IMPORT_BATCH`] entries.
    pub fn import_register(
        &mut self,
        officer: &str,
        commune: Option<&str>,
        entries: Vec<RegisterEntry>,
    ) -> Result<ImportSummary> {
        crate::integrity::check_officer(officer)?;
        let commune = match commune.or(self.enrolled_commune.as_deref()) {
            Some(code) if !code.trim().is_empty() => code.to_owned(),
            _ => {
                return Err(Error::invalid(
                    "commune_code",
                    "give the commune the register belongs to (this device is not enrolled)",
                ));
            }
        };
        crate::integrity::rules::check_scope(&commune, &self.rules(&|_| None))?;
        let mut summary = ImportSummary::default();
        let mut procedures: HashMap<String, Option<Procedure>> = HashMap::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let batch: Vec<RegisterEntry> = entries.by_ref().take(IMPORT_BATCH).collect();
            let imported_at = self.now_ms();
            let now = self.clock.now_ms();
            let mut prepared = Vec::with_capacity(batch.len());
            for entry in batch {
                let error = |reason: String| EntryError {
                    line: entry.line,
                    external_id: Some(entry.external_id.clone()),
                    reason,
                };
                if !seen.insert(entry.external_id.clone()) {
                    summary
                        .errors
                        .push(error("external id given twice in this import".to_owned()));
                    continue;
                }
                if self
                    .imported_record(&commune, &entry.external_id)?
                    .is_some()
                {
                    summary.already_present += 1;
                    continue;
                }
                let procedure = match procedures.get(&entry.procedure_code) {
                    Some(known) => known.clone(),
                    None => {
                        let found = match self.procedure(&entry.procedure_code) {
                            Ok(procedure) => Some(procedure),
                            Err(Error::UnknownProcedure(_)) => None,
                            Err(other) => return Err(other),
                        };
                        procedures.insert(entry.procedure_code.clone(), found.clone());
                        found
                    }
                };
                match self.prepare(
                    officer,
                    &commune,
                    entry,
                    procedure.as_ref(),
                    imported_at,
                    now,
                ) {
                    Ok(ready) => prepared.push(ready),
                    Err(refused) => summary.errors.push(refused),
                }
            }
            summary.imported += self.insert_batch(prepared)?;
        }
        Ok(summary)
    }

    /// The record of `commune` imported with `external_id`, if this store has one.
    pub fn imported_record(&self, commune: &str, external_id: &str) -> Result<Option<RecordId>> {
        let id: Option<Vec<u8>> = self
            .conn
            .prepare_cached(
                "SELECT d.id FROM imported_records i JOIN documents d ON d.rowid = i.doc
                 WHERE i.commune_code = ?1 AND i.external_id = ?2 LIMIT 1",
            )?
            .query_row(params![commune, external_id], |row| row.get(0))
            .optional()?;
        Ok(id.as_deref().and_then(RecordId::from_slice))
    }

    /// The record an entry becomes, checked by the creation rule, with its one change.
    fn prepare(
        &mut self,
        officer: &str,
        commune: &str,
        entry: RegisterEntry,
        procedure: Option<&Procedure>,
        imported_at: i64,
        now: i64,
    ) -> std::result::Result<Prepared, EntryError> {
        let (line, external_id) = (entry.line, entry.external_id.clone());
        let error = |reason: String| EntryError {
            line,
            external_id: Some(external_id.clone()),
            reason,
        };
        let due_at = match (entry.due_at, procedure) {
            (Some(due), _) => due,
            (None, Some(procedure)) => {
                self.calendar
                    .deadline(entry.received_at, procedure.processing)
                    .date
            }
            (None, None) => {
                return Err(error(format!(
                    "procedure {} is not in this tablet's catalogue: give the due date",
                    entry.procedure_code
                )));
            }
        };
        let app = Application {
            id: RecordId::new(),
            // Dossier numbers are given at intake on a tablet; the register's own number is
            // kept as the original reference.
            dossier_number: None,
            commune_code: commune.to_owned(),
            procedure_code: entry.procedure_code,
            applicant: entry.applicant,
            received_at: entry.received_at,
            due_at,
            documents: Vec::new(),
            fees: Vec::new(),
            status: entry.status,
            assignee: None,
            notes: entry.notes,
            created_by: Author {
                device: self.device.0,
                officer: officer.to_owned(),
            },
            procedure_version: procedure.map_or(0, |p| p.version),
            form_values: Default::default(),
            dossier_number_fallback: false,
            attachments: Vec::new(),
            // The register's clock history is not imported (its due date stands for it); a
            // returned entry carries the register's return time and its verdict, like a return
            // made on a tablet, so that lists and exports treat both alike.
            clock_events: Vec::new(),
            returned_at: entry.returned_at,
            returned_on_time: entry
                .returned_at
                .map(|at| crate::deadline::imported_verdict(due_at, at)),
            imported: Some(Imported {
                external_id: entry.external_id,
                original_reference: entry.original_reference,
                imported_at,
                returned_at: entry.returned_at,
            }),
        };
        let record = Record::Application(app);
        check_creation(&record, &self.rules(&|_| None)).map_err(|v| error(v.error.to_string()))?;
        let mut doc = RecordDoc::create(&record, self.device, officer, now)
            .map_err(|e| error(e.to_string()))?;
        let snapshot = self
            .codec
            .encode(&doc.save_uncompressed())
            .map_err(|e| error(e.to_string()))?;
        Ok(Prepared {
            record,
            doc,
            snapshot,
        })
    }

    /// Inserts prepared records in one transaction; returns how many.
    fn insert_batch(&mut self, prepared: Vec<Prepared>) -> Result<u64> {
        if prepared.is_empty() {
            return Ok(0);
        }
        let tx = self.conn.transaction()?;
        let mut count = 0u64;
        for mut ready in prepared {
            tx.prepare_cached(
                "INSERT INTO documents(id, kind, snapshot, chunk_count) VALUES (?1, ?2, ?3, 0)",
            )?
            .execute(params![
                ready.record.id().as_bytes().as_slice(),
                ready.record.kind().code(),
                ready.snapshot
            ])?;
            let rowid = tx.last_insert_rowid();
            projection::write(&tx, rowid, &ready.record, false)?;
            let created = ready.doc.changes_since(&[]);
            mark_outbox(&tx, &mut self.codec, rowid, &created)?;
            count += 1;
        }
        tx.commit()?;
        self.checkpointer.committed();
        Ok(count)
    }
}

#[cfg(test)]
mod tests;
