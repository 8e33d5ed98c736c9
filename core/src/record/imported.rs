//! The import marker of a dossier brought in from a commune's existing register
//! ([`crate::register_import`]).
//!
//! An imported dossier is created in its final state (any status, received in the past) in one
//! change that carries this marker; the marker says where the record came from and is written
//! only in that first change: it is never added, altered or removed later
//! ([`crate::integrity::rules`]). A record without it keeps exactly the bytes it had (the field is
//! absent, not null).

use autosurgeon::{Hydrate, HydrateError, Prop, ReadDoc, Reconcile, Reconciler};
use serde::{Deserialize, Serialize};

/// Longest external id (the key of an entry in the commune's register).
pub const MAX_EXTERNAL_ID: usize = 128;
/// Longest original reference number.
pub const MAX_ORIGINAL_REFERENCE: usize = 128;

/// Where an imported dossier came from.
#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct Imported {
    /// The entry's key in the commune's register (unique per commune): a re-run of the same
    /// register finds it and imports nothing again.
    pub external_id: String,
    /// The reference number the register gave the dossier (what the citizen's old slip shows);
    /// empty when the register had none.
    #[serde(default)]
    pub original_reference: String,
    /// When it was imported (ms since the epoch, the importing device's corrected clock).
    pub imported_at: i64,
    /// When the result was handed back (ms since the epoch), for an entry already returned.
    #[serde(default)]
    pub returned_at: Option<i64>,
}

/// `Application::imported`: written only when set, read as `None` when absent.
pub(super) mod absent_when_none {
    use super::*;

    pub(in crate::record) fn reconcile<R: Reconciler>(
        value: &Option<Imported>,
        reconciler: R,
    ) -> Result<(), R::Error> {
        match value {
            Some(imported) => imported.reconcile(reconciler),
            None => Ok(()),
        }
    }

    pub(in crate::record) fn hydrate<D: ReadDoc>(
        doc: &D,
        obj: &automerge::ObjId,
        prop: Prop<'_>,
    ) -> Result<Option<Imported>, HydrateError> {
        match doc.get(obj, &prop)? {
            None => Ok(None),
            Some(_) => Option::<Imported>::hydrate(doc, obj, prop),
        }
    }
}
