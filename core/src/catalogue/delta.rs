//! The catalogue on the sync wire: what changed since the tablet's version, by delta (protocol 4
//! extensions, registry in `docs/PROTOCOL.md`).
//!
//! Contract. The server numbers each publication of the catalogue (1, 2, ...) and records, per
//! procedure code, the publication that last changed it: a new procedure version, or its
//! removal. A tablet says what it holds ([`CatalogueHeld`], request tag 5): its catalogue version,
//! where it stopped inside a delta cut in pages, and its calendar version. The server answers
//! ([`CatalogueDelta`], response tag 5) with the entries changed after that position, in
//! (publication, code) order, at most [`MAX_PAGE_ENTRIES`] entries and about
//! [`PAGE_BODY_BYTES`] of procedure JSON a page: the tablet installs a page in one transaction
//! and asks on from `more`; it claims the catalogue version only with the last page. The
//! current entries come first; after them, the procedure versions that are no longer current
//! and were published after the tablet's version ([`CatalogueEntry::Pinned`], in (publication,
//! code, version) order, in the same page bounds): a dossier another tablet took under such a
//! version must stay editable here, so a tablet that joins late still holds every version an
//! open dossier may pin (a tablet from 0 receives every kept version). They are pinned-only on
//! the tablet: never offered for intake nor shown in search. The
//! calendar travels whole when its version moved ([`CalendarUpdate`], response tag 6; at most
//! [`crate::catalogue::procedure::MAX_OVERRIDES`] days). A tablet with no catalogue starts from
//! version 0 and so receives every current procedure, paged. Each payload is decoded from at most
//! its `MAX_BYTES`, and each procedure is checked like a catalogue file's before anything of
//! the page is installed.

use serde::{Deserialize, Serialize};

use super::calendar::CalendarOverride;
use crate::protocol::WireExtension;

/// Entries one delta page carries at most.
pub const MAX_PAGE_ENTRIES: usize = 500;
/// Procedure JSON one page carries, about (the server stops adding entries past it; one entry
/// is at most [`MAX_PROCEDURE_JSON`]).
pub const PAGE_BODY_BYTES: usize = 192 * 1024;
/// Most bytes of one procedure's JSON the server publishes.
pub const MAX_PROCEDURE_JSON: usize = 64 * 1024;

/// A position in the catalogue's change list: after the entry of `code` changed by publication
/// `publication` (among the current entries), or, with `pinned_version`, after that
/// non-current version of `code` published by `publication` (among the pinned-only versions,
/// which follow every current entry).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CataloguePosition {
    /// Publication (catalogue version) of the last entry installed.
    pub publication: u64,
    /// Its procedure code.
    pub code: String,
    /// The procedure version of the last pinned-only entry installed (`None`: still among the
    /// current entries).
    #[serde(default)]
    pub pinned_version: Option<u64>,
}

/// What a tablet holds of the catalogue (request, tag 5).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogueHeld {
    /// Catalogue version it holds whole (0: none).
    pub version: u64,
    /// Where it stopped in a paged delta after `version` (`None`: at `version`).
    pub resume: Option<CataloguePosition>,
    /// Calendar version it holds (0: none).
    pub calendar_version: u64,
}

impl WireExtension for CatalogueHeld {
    const TAG: u16 = 5;
    // Two numbers and a procedure code (at most 500 bytes).
    const MAX_BYTES: usize = 1024;
}

/// One change of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogueEntry {
    /// A procedure added or given a new version: its JSON (one procedure of a catalogue file).
    Put(String),
    /// A procedure taken out of the catalogue (its versions stay for the dossiers pinning them).
    Removed(String),
    /// A version that is not (or no longer) the current one, published after the tablet's
    /// version: its JSON, kept only to check the dossiers pinning it (never for intake).
    Pinned(String),
}

/// Changes after the tablet's position (response, tag 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogueDelta {
    /// The catalogue version the tablet holds once it installed this page and every page after.
    pub version: u64,
    /// Changes in (publication, code) order.
    pub entries: Vec<CatalogueEntry>,
    /// Where the next page starts (`None`: this was the last one; the tablet is at `version`).
    pub more: Option<CataloguePosition>,
}

impl WireExtension for CatalogueDelta {
    const TAG: u16 = 5;
    const MAX_BYTES: usize = crate::protocol::extensions::MAX_EXTENSION_BYTES;
}

/// The working calendar's overrides, whole, when its version moved (response, tag 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalendarUpdate {
    /// The calendar's version (the publication that last changed it).
    pub version: u64,
    /// Every override, both ways.
    pub overrides: Vec<CalendarOverride>,
}

impl WireExtension for CalendarUpdate {
    const TAG: u16 = 6;
    // About 40 bytes a day plus its reason; 2,000 days at most.
    const MAX_BYTES: usize = 256 * 1024;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Extensions;

    #[test]
    fn a_delta_round_trips_and_an_oversized_one_is_refused() {
        let delta = CatalogueDelta {
            version: 7,
            entries: vec![
                CatalogueEntry::Put(r#"{"code":"1.001193"}"#.into()),
                CatalogueEntry::Removed("1.000894".into()),
                CatalogueEntry::Pinned(r#"{"code":"1.001193","version":1}"#.into()),
            ],
            more: Some(CataloguePosition {
                publication: 6,
                code: "1.001193".into(),
                pinned_version: Some(1),
            }),
        };
        let ext = Extensions::new().with(&delta).unwrap();
        assert_eq!(ext.get::<CatalogueDelta>().unwrap(), Some(delta));

        let held = CatalogueHeld {
            version: 3,
            resume: Some(CataloguePosition {
                publication: 4,
                code: "x".repeat(2_000),
                pinned_version: None,
            }),
            calendar_version: 3,
        };
        // Too large to send, and too large to read.
        assert!(Extensions::new().with(&held).is_err());
    }
}
