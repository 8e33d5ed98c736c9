//! Signed pushes: one signature covers every change a sync request pushes, so a signature costs
//! 64 bytes per request, not per change.
//!
//! The device signs [`push_message`]: a domain tag, its device id, a request counter and the
//! SHA-256 of the list of the Automerge hashes of the changes it pushes, in request order. The
//! hashes are not sent: the receiver computes them from the changes it got (an Automerge change
//! hash is the SHA-256 of the change chunk, [`change_hash`]), so a change swapped, added or left
//! out makes the signature fail. The server keeps the hash list and the signature, so that each
//! stored change can be shown later to be covered by a signature of the device that pushed it.
//! The counter makes each signed message unique (the device takes the larger of its previous
//! counter plus one and its clock); replaying a signed request can only deliver again the very
//! changes the device signed, which storing is idempotent for.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{DeviceSigningKey, KeyList, Signature, SignatureRefusal};
use crate::record::DeviceId;

/// Signed messages of pushes start with this (never taken for a receipt's).
const DOMAIN: &[u8] = b"communesync/push/v1\0";

/// What a signed push carries beside its changes (the request's extension, tag 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSignature {
    /// The request counter the device signed.
    pub counter: u64,
    /// Ed25519 signature of [`push_message`].
    pub signature: Signature,
}

/// The Automerge hash of a change chunk as `Change::raw_bytes` gives it (magic, checksum, then
/// type, length and body): the SHA-256 of everything after the magic and checksum. `None` for
/// bytes too short to be a chunk.
pub fn change_hash(raw: &[u8]) -> Option<[u8; 32]> {
    raw.get(8..).map(|rest| Sha256::digest(rest).into())
}

/// The bytes a device signs for a push of changes with `hashes` (in request order).
pub fn push_message(device: DeviceId, counter: u64, hashes: &[[u8; 32]]) -> Vec<u8> {
    let mut digest = Sha256::new();
    for hash in hashes {
        digest.update(hash);
    }
    let mut message = Vec::with_capacity(DOMAIN.len() + 16 + 8 + 4 + 32);
    message.extend_from_slice(DOMAIN);
    message.extend_from_slice(device.0.as_bytes());
    message.extend_from_slice(&counter.to_le_bytes());
    message.extend_from_slice(
        &u32::try_from(hashes.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    message.extend_from_slice(&digest.finalize());
    message
}

/// Signs a push of changes with `hashes`.
pub fn sign_push(
    key: &DeviceSigningKey,
    device: DeviceId,
    counter: u64,
    hashes: &[[u8; 32]],
) -> PushSignature {
    PushSignature {
        counter,
        signature: key.sign(&push_message(device, counter, hashes)),
    }
}

/// Checks that `signature` is `device`'s signature, with a key valid at `at` (the server's
/// receive time), of a push of changes with `hashes`.
pub fn verify_push(
    keys: &KeyList,
    device: DeviceId,
    at: i64,
    hashes: &[[u8; 32]],
    signature: &PushSignature,
) -> Result<(), SignatureRefusal> {
    keys.verify(
        device,
        at,
        &push_message(device, signature.counter, hashes),
        &signature.signature,
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DeviceKeyEntry;

    #[test]
    fn one_signature_covers_exactly_the_changes_in_their_order() {
        let key = DeviceSigningKey::generate().unwrap();
        let device = DeviceId::new();
        let keys = KeyList::new(
            [DeviceKeyEntry {
                device,
                commune: String::new(),
                public_key: key.public_key(),
                valid_from: 0,
                valid_until: None,
                revoked_at: None,
                version: 1,
            }],
            1,
        );
        let hashes = [[1u8; 32], [2; 32], [3; 32]];
        let signed = sign_push(&key, device, 7, &hashes);
        assert!(verify_push(&keys, device, 10, &hashes, &signed).is_ok());
        let swapped = [[1u8; 32], [3; 32], [2; 32]];
        let fewer = [[1u8; 32], [2; 32]];
        let other = [[1u8; 32], [2; 32], [4; 32]];
        for bad in [&swapped[..], &fewer[..], &other[..]] {
            assert_eq!(
                verify_push(&keys, device, 10, bad, &signed)
                    .unwrap_err()
                    .code(),
                "bad_signature"
            );
        }
        // Another counter, another device: not the signed message.
        let replayed = PushSignature {
            counter: 8,
            ..signed
        };
        assert!(verify_push(&keys, device, 10, &hashes, &replayed).is_err());
        assert_eq!(
            verify_push(&keys, DeviceId::new(), 10, &hashes, &signed)
                .unwrap_err()
                .code(),
            "unknown_device"
        );
    }

    #[test]
    fn change_hash_is_automerges() {
        let mut doc = automerge::AutoCommit::new();
        automerge::transaction::Transactable::put(&mut doc, automerge::ROOT, "k", "v").unwrap();
        let change = doc.get_changes(&[])[0].clone();
        assert_eq!(change_hash(change.raw_bytes()), Some(change.hash().0));
        assert_eq!(change_hash(b"short"), None);
    }
}
