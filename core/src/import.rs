//! The bulk import format of `communesync device import`: one JSON object per line, each a
//! [`NewApplication`] (a commune's existing register, exported from a spreadsheet or an older
//! system).
//!
//! Parsing is separate from the store so that it can be tested and fuzzed on its own: a line is
//! bounded in size, blank lines are skipped, and anything else either parses into a
//! [`NewApplication`] or is an error naming what is wrong. The store then validates the record
//! as it validates any other ([`crate::store::DeviceStore::create_application`]).

use crate::record::NewApplication;
use crate::{Error, Result};

/// Longest line accepted (1 MiB): an application with its notes fits in far less.
pub const MAX_IMPORT_LINE: usize = 1024 * 1024;

/// Parses one line of an import file: `Ok(None)` for a blank line.
pub fn parse_import_line(line: &str) -> Result<Option<NewApplication>> {
    if line.len() > MAX_IMPORT_LINE {
        return Err(Error::invalid(
            "line",
            format!("longer than {MAX_IMPORT_LINE} bytes"),
        ));
    }
    if line.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str::<NewApplication>(line)
        .map(Some)
        .map_err(|e| Error::invalid("line", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_blank_lines_are_skipped_and_bad_ones_say_why() {
        let line = r#"{"commune_code":"DB-MUONGPHANG","procedure_code":"1.001193","applicant":{"name":"Lò Văn Pọm","id_number":"","phone":"","address":"","village":"Bản Phăng"}}"#;
        let app = parse_import_line(line).unwrap().unwrap();
        assert_eq!(app.applicant.name, "Lò Văn Pọm");
        assert_eq!(parse_import_line("   \t").unwrap(), None);
        for bad in ["{", "[]", "{\"commune_code\": 3}", "null"] {
            assert!(
                matches!(parse_import_line(bad), Err(Error::InvalidInput { .. })),
                "{bad}"
            );
        }
        let long = format!("\"{}\"", "a".repeat(MAX_IMPORT_LINE));
        assert!(parse_import_line(&long).is_err());
    }
}
