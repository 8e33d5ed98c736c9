//! Signed pushes (ADR 0008): the server checks the one signature a push carries over the hashes
//! of all its changes before anything of it is judged or stored.
//!
//! A device with a registered key must sign: an unsigned push is refused (`unsigned_push`), and
//! a signature that is not the device's over exactly these changes, with a key valid now, is
//! refused (`bad_signature`: forged, another device's key, changes swapped, added or left out,
//! a revoked key). The one signature covers every document of the request, so a refusal
//! refuses them all, each with that reason (the tablet sets them aside with it, operators see it
//! among the device's refused documents), and nothing of the push is stored; the pull of the
//! same request is answered as usual. A device without a key (enrolled before keys, not yet
//! registered on first use) is accepted unsigned, as before. A verified push's signed message
//! (its hash list) and signature are kept, linked from each change, so history can verify
//! each change again later.

use communesync_core::integrity::RefusalCode;
use communesync_core::keys::push::{PushSignature, change_hash, verify_push};
use communesync_core::keys::wire::DeviceKeysRequest;
use communesync_core::keys::{KeyList, SignatureRefusal};
use communesync_core::protocol::{PushDoc, WireError};
use communesync_core::record::{DeviceId, RecordId};

use super::{ApiError, AppState};
use crate::storage::PushSignatureRow;

/// The verdict on a push's signature.
pub(super) enum PushAuth {
    /// The device has no registered key: accepted unsigned.
    Unkeyed,
    /// Verified: keep this with the changes.
    Verified(PushSignatureRow),
    /// Every document of the push is refused with this reason.
    Refused(RefusalCode, String),
}

/// The hashes of every change of `push`, in request order (what the device signed).
pub(super) fn change_hashes(push: &[PushDoc]) -> Vec<[u8; 32]> {
    push.iter()
        .flat_map(|doc| doc.changes.iter())
        .map(|change| change_hash(change).unwrap_or([0; 32]))
        .collect()
}

/// Documents of a refused push whose record id is read from their first change when they were
/// sent whole (so operators see which records were refused): a bound on that work.
const IDS_READ_FOR_OPERATORS: usize = 100;

/// The record id of each document of `push` when known: sent, or (for the first
/// [`IDS_READ_FOR_OPERATORS`] sent whole) written by its first change.
pub(super) fn record_ids(push: &[PushDoc]) -> Vec<Option<RecordId>> {
    let mut read = 0;
    push.iter()
        .map(|doc| {
            doc.id.or_else(|| {
                if read >= IDS_READ_FOR_OPERATORS {
                    return None;
                }
                read += 1;
                let first = doc.changes.first()?;
                let mut am = automerge::AutoCommit::new();
                am.load_incremental(first).ok()?;
                let (value, _) = automerge::ReadDoc::get(&am, automerge::ROOT, "id").ok()??;
                value.as_str()?.parse().ok()
            })
        })
        .collect()
}

/// Checks the push signature of `device` (from the request's extension, or its decoding error).
pub(super) async fn check(
    state: &AppState,
    device: DeviceId,
    hashes: Vec<[u8; 32]>,
    extension: &Result<Option<DeviceKeysRequest>, WireError>,
    now: i64,
) -> Result<PushAuth, ApiError> {
    let keys = state.storage.device_keys_of(device).await?;
    if keys.is_empty() {
        return Ok(PushAuth::Unkeyed);
    }
    let signature: PushSignature = match extension {
        Ok(Some(DeviceKeysRequest {
            push: Some(signature),
            ..
        })) => *signature,
        Ok(_) => {
            return Ok(PushAuth::Refused(
                RefusalCode::UnsignedPush,
                "this device has a registered key and the push is not signed: nothing of it \
                 was stored (update the app, or re-enroll the device)"
                    .into(),
            ));
        }
        Err(err) => {
            return Ok(PushAuth::Refused(
                RefusalCode::BadSignature,
                format!("the push signature does not read ({err}): nothing of it was stored"),
            ));
        }
    };
    let list = KeyList::new(keys, 0);
    match verify_push(&list, device, now, &hashes, &signature) {
        Ok(()) => Ok(PushAuth::Verified(PushSignatureRow {
            device,
            counter: signature.counter,
            hashes,
            signature: signature.signature.0,
            received_at: now,
        })),
        Err(refusal) => {
            tracing::warn!(%device, code = refusal.code(), "push signature refused");
            Ok(PushAuth::Refused(
                RefusalCode::BadSignature,
                format!("{}; nothing of this push was stored", describe(&refusal)),
            ))
        }
    }
}

fn describe(refusal: &SignatureRefusal) -> String {
    match refusal {
        SignatureRefusal::BadSignature(_) => "the push signature is not this device's over \
             these changes (forged, another device's key, or changes swapped)"
            .into(),
        other => format!("the push signature is refused: {other}"),
    }
}
