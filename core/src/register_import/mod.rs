//! Import of a commune's existing register with its state (issue 15).
//!
//! Contract:
//! - The format is CSV as a spreadsheet exports it (UTF-8, a header row naming the columns in
//!   any order; see [`COLUMNS`] and docs/PROTOCOL.md, "Register import"). Each entry is a dossier
//!   in its current state: procedure, applicant, status (any, including `returned` and
//!   `rejected`), received time, due date, original reference number, external id and, for a
//!   returned dossier, its return time.
//! - Bounded: a file over [`MAX_REGISTER_FILE`] bytes or [`MAX_REGISTER_ENTRIES`] entries, not
//!   UTF-8, or without a required column is refused whole ([`crate::Error::InvalidInput`]) and
//!   nothing is imported. Otherwise a bad entry is reported with its line ([`EntryError`]) and
//!   skipped, and the rest are imported.
//! - Idempotent: the external id is the key of an entry within its commune. The store
//!   ([`crate::store::DeviceStore::import_register`]) skips an entry whose external id a record
//!   of the commune already has (imported here, or by another tablet and received by sync):
//!   a re-run creates no record and no change. An external id twice in one file is an error
//!   on its second line.
//! - Each imported dossier is one Automerge change, in its final state, carrying the import
//!   marker ([`crate::record::Imported`]); its history shows an import, not transitions made
//!   today. The store writes one transaction per batch of [`IMPORT_BATCH`] entries.
//!
//! Parsing is separate from the store, so that it can be tested and fuzzed on its own.

mod csv;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use time::{Date, Month, PrimitiveDateTime, Time};

use crate::catalogue::{CivilDate, VIETNAM_OFFSET};
use crate::record::{Applicant, MAX_EXTERNAL_ID, MAX_ORIGINAL_REFERENCE, Status};
use crate::{Error, Result};

/// Largest register file accepted (10,000 dossiers take about 3 MiB).
pub const MAX_REGISTER_FILE: usize = 32 * 1024 * 1024;
/// Most entries one file may hold.
pub const MAX_REGISTER_ENTRIES: usize = 50_000;
/// Entries written per store transaction.
pub const IMPORT_BATCH: usize = 500;
/// Longest single field (notes are the longest).
pub const MAX_FIELD: usize = 64 * 1024;

/// The columns a register file may have; those marked required must be present.
pub const COLUMNS: &[(&str, bool)] = &[
    ("external_id", true),
    ("procedure_code", true),
    ("applicant_name", true),
    ("status", true),
    ("received_at", true),
    ("due_date", false),
    ("original_reference", false),
    ("returned_at", false),
    ("applicant_id_number", false),
    ("applicant_phone", false),
    ("applicant_address", false),
    ("applicant_village", false),
    ("notes", false),
];

/// One entry of the register, as read from its line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterEntry {
    /// The line the entry starts on (1 is the header).
    pub line: u64,
    /// Its key in the commune's register.
    pub external_id: String,
    /// Procedure code.
    pub procedure_code: String,
    /// The applicant.
    pub applicant: Applicant,
    /// Current status.
    pub status: Status,
    /// When it was received (ms since the epoch).
    pub received_at: i64,
    /// The due date the register gives; `None`: computed from the procedure.
    pub due_at: Option<CivilDate>,
    /// The register's reference number (empty when none).
    pub original_reference: String,
    /// When it was returned (ms since the epoch), for a returned dossier.
    pub returned_at: Option<i64>,
    /// Notes.
    pub notes: String,
}

/// Why one entry was not imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryError {
    /// The line it starts on.
    pub line: u64,
    /// Its external id, when it could be read.
    pub external_id: Option<String>,
    /// Why.
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSummary {
    /// Entries imported now (one new record, one change each).
    pub imported: u64,
    /// Entries whose external id a record of the commune already has: nothing written.
    pub already_present: u64,
    /// Entries refused, with their line and reason.
    pub errors: Vec<EntryError>,
}

/// A register file read into entries and per-entry errors.
#[derive(Debug, Default)]
pub struct ParsedRegister {
    /// Entries that read well, in file order.
    pub entries: Vec<RegisterEntry>,
    /// Lines that did not.
    pub errors: Vec<EntryError>,
}

/// Reads a register file. A file-level problem (size, encoding, header, entry count) is an
/// error; a bad line is an [`EntryError`] in the result.
pub fn parse_register(bytes: &[u8]) -> Result<ParsedRegister> {
    if bytes.len() > MAX_REGISTER_FILE {
        return Err(Error::invalid(
            "register",
            format!("the file is larger than {MAX_REGISTER_FILE} bytes"),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Error::invalid(
            "register",
            format!("the file is not UTF-8 text (save the sheet as CSV UTF-8): {e}"),
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (records, unterminated) = csv::records(text);
    let mut records = records.into_iter();
    let header = records
        .next()
        .ok_or_else(|| Error::invalid("register", "the file is empty (no header row)"))?;
    let columns = Columns::of(&header.fields)?;
    let mut parsed = ParsedRegister::default();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for record in records {
        if parsed.entries.len() + parsed.errors.len() >= MAX_REGISTER_ENTRIES {
            return Err(Error::invalid(
                "register",
                format!("more than {MAX_REGISTER_ENTRIES} entries: split the file"),
            ));
        }
        match columns.entry(&record) {
            Ok(entry) => match seen.get(&entry.external_id) {
                Some(first) => parsed.errors.push(EntryError {
                    line: record.line,
                    reason: format!("external id already on line {first}"),
                    external_id: Some(entry.external_id),
                }),
                None => {
                    seen.insert(entry.external_id.clone(), record.line);
                    parsed.entries.push(entry);
                }
            },
            Err(error) => parsed.errors.push(error),
        }
    }
    if let Some(open) = unterminated {
        parsed.errors.push(EntryError {
            line: open.line,
            external_id: None,
            reason: "a quoted field never ends: this line and the rest of the file were not read"
                .to_owned(),
        });
    }
    Ok(parsed)
}

/// Where each known column is in the header.
struct Columns {
    at: HashMap<&'static str, usize>,
    count: usize,
}

impl Columns {
    fn of(header: &[String]) -> Result<Self> {
        let mut at = HashMap::new();
        for (index, name) in header.iter().enumerate() {
            let name = name.trim().to_ascii_lowercase();
            let Some((known, _)) = COLUMNS.iter().find(|(column, _)| *column == name) else {
                return Err(Error::invalid(
                    "register",
                    format!("unknown column {name:?} in the header (see the register format)"),
                ));
            };
            if at.insert(*known, index).is_some() {
                return Err(Error::invalid(
                    "register",
                    format!("column {name:?} appears twice in the header"),
                ));
            }
        }
        if let Some((missing, _)) = COLUMNS
            .iter()
            .find(|(column, required)| *required && !at.contains_key(column))
        {
            return Err(Error::invalid(
                "register",
                format!("the header has no {missing:?} column"),
            ));
        }
        Ok(Columns {
            at,
            count: header.len(),
        })
    }

    fn entry(&self, record: &csv::CsvRecord) -> std::result::Result<RegisterEntry, EntryError> {
        let external_id = self.get(record, "external_id").trim().to_owned();
        let error = |reason: String| EntryError {
            line: record.line,
            external_id: (!external_id.is_empty()).then(|| external_id.clone()),
            reason,
        };
        if record.fields.len() != self.count {
            return Err(error(format!(
                "{} fields where the header has {}",
                record.fields.len(),
                self.count
            )));
        }
        if let Some(long) = record.fields.iter().find(|f| f.len() > MAX_FIELD) {
            return Err(error(format!(
                "a field of {} bytes (at most {MAX_FIELD})",
                long.len()
            )));
        }
        if external_id.is_empty() {
            return Err(error("external_id: must not be empty".to_owned()));
        }
        if external_id.len() > MAX_EXTERNAL_ID {
            return Err(error(format!(
                "external_id: longer than {MAX_EXTERNAL_ID} bytes"
            )));
        }
        let original_reference = self.get(record, "original_reference").trim().to_owned();
        if original_reference.len() > MAX_ORIGINAL_REFERENCE {
            return Err(error(format!(
                "original_reference: longer than {MAX_ORIGINAL_REFERENCE} bytes"
            )));
        }
        let status_text = self.get(record, "status").trim().to_ascii_lowercase();
        let status: Status = status_text
            .parse()
            .map_err(|_| error(format!("status: unknown status {status_text:?}")))?;
        let received_at = parse_time(self.get(record, "received_at"))
            .map_err(|reason| error(format!("received_at: {reason}")))?;
        let due_text = self.get(record, "due_date").trim();
        let due_at = if due_text.is_empty() {
            None
        } else {
            Some(
                parse_date(due_text)
                    .map(CivilDate)
                    .map_err(|reason| error(format!("due_date: {reason}")))?,
            )
        };
        let returned_text = self.get(record, "returned_at").trim();
        let returned_at = if returned_text.is_empty() {
            None
        } else {
            Some(
                parse_time(returned_text)
                    .map_err(|reason| error(format!("returned_at: {reason}")))?,
            )
        };
        Ok(RegisterEntry {
            line: record.line,
            procedure_code: self.get(record, "procedure_code").trim().to_owned(),
            applicant: Applicant {
                name: self.get(record, "applicant_name").trim().to_owned(),
                id_number: self.get(record, "applicant_id_number").trim().to_owned(),
                phone: self.get(record, "applicant_phone").trim().to_owned(),
                address: self.get(record, "applicant_address").trim().to_owned(),
                village: self.get(record, "applicant_village").trim().to_owned(),
            },
            status,
            received_at,
            due_at,
            original_reference,
            returned_at,
            notes: self.get(record, "notes").to_owned(),
            external_id,
        })
    }

    fn get<'r>(&self, record: &'r csv::CsvRecord, column: &str) -> &'r str {
        self.at
            .get(column)
            .and_then(|&i| record.fields.get(i))
            .map_or("", String::as_str)
    }
}

/// A date as registers write it: `YYYY-MM-DD` or `DD/MM/YYYY`.
fn parse_date(text: &str) -> std::result::Result<Date, String> {
    let bad = || format!("{text:?} is not a date (YYYY-MM-DD or DD/MM/YYYY)");
    let numbers = |parts: Vec<&str>| -> Option<(i32, u8, u8)> {
        match parts.as_slice() {
            [y, m, d] if y.len() == 4 => Some((y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)),
            _ => None,
        }
    };
    let (y, m, d) = if text.contains('/') {
        let mut parts: Vec<&str> = text.split('/').collect();
        parts.reverse();
        numbers(parts)
    } else {
        numbers(text.split('-').collect())
    }
    .ok_or_else(bad)?;
    let month = Month::try_from(m).map_err(|_| bad())?;
    Date::from_calendar_date(y, month, d).map_err(|_| bad())
}

/// A time in Vietnam as registers write it: a date (as [`parse_date`]), optionally followed by
/// ` HH:MM` or ` HH:MM:SS` (or `T` between); a date alone is its midnight. Returns ms since the
/// epoch.
fn parse_time(text: &str) -> std::result::Result<i64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    let (date, clock) = match text.split_once([' ', 'T']) {
        Some((date, clock)) => (date, Some(clock.trim())),
        None => (text, None),
    };
    let date = parse_date(date)?;
    let time = match clock {
        None => Time::MIDNIGHT,
        Some(clock) => {
            let bad = || format!("{clock:?} is not a time of day (HH:MM or HH:MM:SS)");
            let parts: Vec<&str> = clock.split(':').collect();
            let number = |s: &&str| s.parse::<u8>().map_err(|_| bad());
            let (h, m, s) = match parts.as_slice() {
                [h, m] => (number(h)?, number(m)?, 0),
                [h, m, s] => (number(h)?, number(m)?, number(s)?),
                _ => return Err(bad()),
            };
            Time::from_hms(h, m, s).map_err(|_| bad())?
        }
    };
    let at = PrimitiveDateTime::new(date, time).assume_offset(VIETNAM_OFFSET);
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).map_err(|_| "out of range".to_owned())
}

#[cfg(test)]
mod tests;
