//! Device keys on the sync wire (protocol 4 extensions, registry in `docs/PROTOCOL.md`).
//!
//! - Request, tag 3 ([`DeviceKeysRequest`]): the version of the province's key list the tablet
//!   holds and, when the request pushes changes, the push's signature (64 bytes and a counter
//!   for the whole request, [`super::push`]).
//! - Response, tag 4 ([`DeviceKeysDelta`]): the key list entries changed after that version, at
//!   most [`MAX_DELTA_ENTRIES`] a response (`more` says the next sync brings the rest).

use serde::{Deserialize, Serialize};

use super::DeviceKeyEntry;
use super::push::PushSignature;
use crate::protocol::WireExtension;

/// Entries one response carries at most.
pub const MAX_DELTA_ENTRIES: usize = 1_000;

/// What a tablet says about keys in a sync request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeysRequest {
    /// Version of the province's key list the tablet holds (0: none).
    pub keys_version: u64,
    /// The signature of the pushed changes (`None` when the request pushes nothing).
    pub push: Option<PushSignature>,
}

impl WireExtension for DeviceKeysRequest {
    const TAG: u16 = 3;
    const MAX_BYTES: usize = 128;
}

/// The key list entries the tablet lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeysDelta {
    /// The version the tablet holds once it applied `entries`.
    pub version: u64,
    /// Entries changed after the tablet's version.
    pub entries: Vec<DeviceKeyEntry>,
    /// Whether more entries wait.
    pub more: bool,
}

impl WireExtension for DeviceKeysDelta {
    // About 100 bytes an entry.
    const TAG: u16 = 4;
    const MAX_BYTES: usize = 256 * 1024;
}

/// At most [`MAX_DELTA_ENTRIES`] of `entries` (ordered by version) for a tablet, cut between
/// versions so the tablet's version never claims half of one; `current` is the list's version.
pub fn cut_delta(mut entries: Vec<DeviceKeyEntry>, current: u64) -> DeviceKeysDelta {
    if entries.len() <= MAX_DELTA_ENTRIES {
        return DeviceKeysDelta {
            version: current,
            entries,
            more: false,
        };
    }
    entries.truncate(MAX_DELTA_ENTRIES);
    let first = entries.first().map_or(0, |e| e.version);
    let last = entries.last().map_or(0, |e| e.version);
    if first != last {
        entries.retain(|e| e.version < last);
    }
    DeviceKeysDelta {
        version: entries.last().map_or(current, |e| e.version),
        entries,
        more: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{DeviceSigningKey, PublicKey};
    use crate::protocol::Extensions;
    use crate::record::DeviceId;

    fn entry(version: u64) -> DeviceKeyEntry {
        DeviceKeyEntry {
            device: DeviceId::new(),
            commune: "DB-MUONGPHANG".into(),
            public_key: PublicKey([7; 32]),
            valid_from: 1_765_000_000_000,
            valid_until: None,
            revoked_at: None,
            version,
        }
    }

    #[test]
    fn extensions_round_trip_within_their_bounds() {
        let key = DeviceSigningKey::generate().unwrap();
        let request = DeviceKeysRequest {
            keys_version: 12,
            push: Some(super::super::push::sign_push(
                &key,
                DeviceId::new(),
                1_765_000_000_000,
                &[[1; 32]],
            )),
        };
        let mut ext = Extensions::new();
        ext.insert(&request).unwrap();
        assert_eq!(ext.get::<DeviceKeysRequest>().unwrap(), Some(request));
        // The full delta fits its bound.
        let delta = DeviceKeysDelta {
            version: 9,
            entries: (0..MAX_DELTA_ENTRIES as u64).map(entry).collect(),
            more: false,
        };
        ext.insert(&delta).unwrap();
        assert_eq!(ext.get::<DeviceKeysDelta>().unwrap(), Some(delta));
    }

    #[test]
    fn a_cut_delta_never_splits_a_version() {
        let mut entries: Vec<_> = (1..=MAX_DELTA_ENTRIES as u64).map(entry).collect();
        entries.push(entry(MAX_DELTA_ENTRIES as u64));
        let out = cut_delta(entries, 99_999);
        assert!(out.more);
        assert_eq!(out.entries.len(), MAX_DELTA_ENTRIES - 1);
        assert_eq!(out.version, MAX_DELTA_ENTRIES as u64 - 1);
        let small = cut_delta(vec![entry(1)], 3);
        assert!(!small.more);
        assert_eq!(small.version, 3);
    }
}
