//! Device keys: each tablet signs what it vouches for (its pushes, its receipts) with an Ed25519
//! key pair made on the tablet, and anyone holding the province's list of device public keys
//! checks the signature offline.
//!
//! Contract:
//! - A [`DeviceSigningKey`] is created from the operating system's random source on the device
//!   and never leaves it: the device store keeps its 32 secret bytes in the encrypted store, and
//!   the bytes are zeroized when the key is dropped. Only the [`PublicKey`] is sent (at
//!   enrollment, and replaced at re-enrollment).
//! - The province's [`KeyList`] holds every device's keys with their validity: a key is valid
//!   from its registration until it is replaced (`valid_until`, re-enrollment with another key)
//!   or revoked (`revoked_at`, a lost or stolen tablet). What a key signed while it was valid
//!   stays valid after it is replaced or revoked; what it claims to sign after is refused.
//! - [`KeyList::verify`] is the one check of a device's signature at a claimed time, used by the
//!   receipt verifier on tablets and on the server alike, and answers with a reason a person can
//!   read ([`SignatureRefusal`]). Verification is strict Ed25519 (no malleable signatures, no
//!   small-order keys), so one message has one valid signature per key.
//! - The list travels as a delta: every entry carries the province's version at which it last
//!   changed, and a tablet asks for what changed after the version it holds.

use std::collections::HashMap;
use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::record::DeviceId;

pub mod push;
pub mod wire;

/// Bytes of a public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of a signature.
pub const SIGNATURE_LEN: usize = 64;

/// A device's Ed25519 public key (32 bytes). JSON shows it as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; PUBLIC_KEY_LEN]);

/// An Ed25519 signature (64 bytes). JSON shows it as 128 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

impl PublicKey {
    /// From bytes, refusing a slice of the wrong length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(PublicKey)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        hex::decode(text.trim())
            .ok()
            .and_then(|b| Self::from_slice(&b))
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Whether this is a usable Ed25519 key: a point on the curve that is not of small order
    /// (a small-order key would accept signatures nobody made). Checked at registration.
    pub fn is_usable(&self) -> bool {
        VerifyingKey::from_bytes(&self.0).is_ok_and(|key| !key.is_weak())
    }

    /// Whether `signature` is this key's signature of `message` (strict verification).
    pub fn verifies(&self, message: &[u8], signature: &Signature) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        if key.is_weak() {
            return false;
        }
        key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature.0))
            .is_ok()
    }
}

impl Signature {
    /// From bytes, refusing a slice of the wrong length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Signature)
    }

    /// Parses 128 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        hex::decode(text.trim())
            .ok()
            .and_then(|b| Self::from_slice(&b))
    }

    /// 128 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.to_hex())
    }
}

/// Hex in JSON (readable by operators), raw bytes in binary formats (postcard on the wire).
macro_rules! bytes_serde {
    ($ty:ident, $len:expr) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.serialize_str(&hex::encode(self.0))
                } else {
                    serializer.serialize_bytes(&self.0)
                }
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                use serde::de::Error as _;
                if deserializer.is_human_readable() {
                    let text = String::deserialize(deserializer)?;
                    let bytes = hex::decode(&text).map_err(D::Error::custom)?;
                    $ty::from_slice(&bytes).ok_or_else(|| {
                        D::Error::custom(concat!("expected ", stringify!($len), " bytes"))
                    })
                } else {
                    let bytes: &[u8] = serde_bytes_borrowed(deserializer)?;
                    $ty::from_slice(bytes).ok_or_else(|| {
                        D::Error::custom(concat!("expected ", stringify!($len), " bytes"))
                    })
                }
            }
        }
    };
}

fn serde_bytes_borrowed<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<&'de [u8], D::Error> {
    struct Visit;
    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = &'de [u8];
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }
        fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
            Ok(v)
        }
    }
    deserializer.deserialize_bytes(Visit)
}

bytes_serde!(PublicKey, PUBLIC_KEY_LEN);
bytes_serde!(Signature, SIGNATURE_LEN);

/// A device's private signing key. Its bytes are zeroized when it is dropped and never printed.
pub struct DeviceSigningKey(SigningKey);

impl DeviceSigningKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> crate::Result<Self> {
        let mut secret = zeroizing_secret();
        getrandom::fill(secret.as_mut())
            .map_err(|e| crate::Error::invalid("device key", format!("no random source: {e}")))?;
        Ok(DeviceSigningKey(SigningKey::from_bytes(&secret)))
    }

    /// The key whose 32 secret bytes are `secret` (as the device store keeps them).
    pub fn from_secret(secret: &[u8]) -> crate::Result<Self> {
        let bytes: [u8; 32] = secret
            .try_into()
            .map_err(|_| crate::Error::invalid("device key", "expected 32 secret bytes"))?;
        let mut holder = zeroizing_secret();
        *holder = bytes;
        Ok(DeviceSigningKey(SigningKey::from_bytes(&holder)))
    }

    /// The 32 secret bytes, to be kept in the encrypted store only.
    pub(crate) fn secret_bytes(&self) -> SecretBytes {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    /// The public half, which the province registers.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message).to_bytes())
    }
}

impl fmt::Debug for DeviceSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceSigningKey(public {})", self.public_key())
    }
}

/// Secret bytes that are overwritten when dropped.
pub(crate) type SecretBytes = zeroize::Zeroizing<[u8; 32]>;

fn zeroizing_secret() -> SecretBytes {
    zeroize::Zeroizing::new([0; 32])
}

/// One registered key of one device, with its validity (times in ms since the epoch, server
/// clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeyEntry {
    /// The device.
    pub device: DeviceId,
    /// The commune the device is enrolled in (empty for a province-wide device).
    pub commune: String,
    /// The key.
    pub public_key: PublicKey,
    /// When the province registered it.
    pub valid_from: i64,
    /// When another key replaced it (re-enrollment); what it signed before stays valid.
    pub valid_until: Option<i64>,
    /// When the device was revoked (lost, stolen); what it signed before stays valid.
    pub revoked_at: Option<i64>,
    /// The province's key list version at which this entry last changed.
    pub version: u64,
}

/// Why a signature is not accepted as a device's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureRefusal {
    /// No key of this device is in the list (not enrolled in this province, or the list is
    /// older than the device: sync and try again).
    #[error("unknown device {0}: no key of this device is registered in the province")]
    UnknownDevice(DeviceId),
    /// The key that made the signature was revoked before the claimed signing time.
    #[error(
        "the device's key was revoked at {revoked_at} ms, before the signing time {signed_at} ms"
    )]
    KeyRevoked {
        /// Revocation time.
        revoked_at: i64,
        /// Claimed signing time.
        signed_at: i64,
    },
    /// The key that made the signature had been replaced (re-enrollment) before the claimed
    /// signing time.
    #[error(
        "the device's key was replaced at {replaced_at} ms, before the signing time {signed_at} ms"
    )]
    KeyReplaced {
        /// Replacement time.
        replaced_at: i64,
        /// Claimed signing time.
        signed_at: i64,
    },
    /// No key of the device made this signature over these bytes: forged or altered.
    #[error("bad signature: no key of device {0} signed these bytes (forged or altered)")]
    BadSignature(DeviceId),
    /// Not readable at all.
    #[error("malformed: {0}")]
    Malformed(String),
}

impl SignatureRefusal {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureRefusal::UnknownDevice(_) => "unknown_device",
            SignatureRefusal::KeyRevoked { .. } => "key_revoked",
            SignatureRefusal::KeyReplaced { .. } => "key_replaced",
            SignatureRefusal::BadSignature(_) => "bad_signature",
            SignatureRefusal::Malformed(_) => "malformed",
        }
    }
}

/// The province's device keys as a tablet (or the server) holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyList {
    by_device: HashMap<DeviceId, Vec<DeviceKeyEntry>>,
    version: u64,
}

impl KeyList {
    /// A list of `entries` at `version`.
    pub fn new(entries: impl IntoIterator<Item = DeviceKeyEntry>, version: u64) -> Self {
        let mut list = KeyList::default();
        list.apply_delta(entries, version);
        list
    }

    /// The province version this list is at (0: empty).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Applies what changed after [`KeyList::version`]: each entry replaces the one of the same
    /// device and key.
    pub fn apply_delta(&mut self, entries: impl IntoIterator<Item = DeviceKeyEntry>, version: u64) {
        for entry in entries {
            let keys = self.by_device.entry(entry.device).or_default();
            match keys.iter_mut().find(|k| k.public_key == entry.public_key) {
                Some(existing) => *existing = entry,
                None => keys.push(entry),
            }
        }
        self.version = self.version.max(version);
    }

    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = &DeviceKeyEntry> {
        self.by_device.values().flatten()
    }

    /// The keys of `device`.
    pub fn keys_of(&self, device: DeviceId) -> &[DeviceKeyEntry] {
        self.by_device.get(&device).map_or(&[], Vec::as_slice)
    }

    /// Checks that `signature` over `message` was made by a key of `device` that was valid at
    /// `signed_at` (the signer's claimed time, ms since the epoch). Returns the key's entry.
    pub fn verify(
        &self,
        device: DeviceId,
        signed_at: i64,
        message: &[u8],
        signature: &Signature,
    ) -> Result<&DeviceKeyEntry, SignatureRefusal> {
        let keys = self.keys_of(device);
        if keys.is_empty() {
            return Err(SignatureRefusal::UnknownDevice(device));
        }
        // A device has one key per enrollment: a handful at most, so each is tried.
        let Some(entry) = keys
            .iter()
            .find(|k| k.public_key.verifies(message, signature))
        else {
            return Err(SignatureRefusal::BadSignature(device));
        };
        if let Some(revoked_at) = entry.revoked_at
            && revoked_at <= signed_at
        {
            return Err(SignatureRefusal::KeyRevoked {
                revoked_at,
                signed_at,
            });
        }
        if let Some(replaced_at) = entry.valid_until
            && replaced_at <= signed_at
        {
            return Err(SignatureRefusal::KeyReplaced {
                replaced_at,
                signed_at,
            });
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(device: DeviceId, key: &DeviceSigningKey, version: u64) -> DeviceKeyEntry {
        DeviceKeyEntry {
            device,
            commune: "C1".into(),
            public_key: key.public_key(),
            valid_from: 1_000,
            valid_until: None,
            revoked_at: None,
            version,
        }
    }

    #[test]
    fn a_signature_verifies_only_with_its_key_and_message() {
        let key = DeviceSigningKey::generate().unwrap();
        let other = DeviceSigningKey::generate().unwrap();
        let sig = key.sign(b"hello");
        assert!(key.public_key().verifies(b"hello", &sig));
        assert!(!key.public_key().verifies(b"hellO", &sig));
        assert!(!other.public_key().verifies(b"hello", &sig));
        let restored = DeviceSigningKey::from_secret(&*key.secret_bytes()).unwrap();
        assert_eq!(restored.public_key(), key.public_key());
        assert!(!format!("{key:?}").contains(&hex::encode(key.secret_bytes().as_ref())));
    }

    #[test]
    fn small_order_keys_are_not_usable() {
        assert!(!PublicKey([0; 32]).is_usable());
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(!PublicKey(identity).is_usable());
        assert!(!PublicKey(identity).verifies(b"x", &Signature([0; 64])));
        assert!(
            DeviceSigningKey::generate()
                .unwrap()
                .public_key()
                .is_usable()
        );
    }

    #[test]
    fn key_list_reasons() {
        let device = DeviceId::new();
        let old = DeviceSigningKey::generate().unwrap();
        let new = DeviceSigningKey::generate().unwrap();
        let mut list = KeyList::new([entry(device, &old, 1)], 1);
        assert!(list.verify(device, 5_000, b"m", &old.sign(b"m")).is_ok());
        assert_eq!(
            list.verify(DeviceId::new(), 5_000, b"m", &old.sign(b"m"))
                .unwrap_err()
                .code(),
            "unknown_device"
        );
        assert_eq!(
            list.verify(device, 5_000, b"m", &new.sign(b"m"))
                .unwrap_err()
                .code(),
            "bad_signature"
        );
        // Re-enrollment: the old key is replaced at 10 000, the new one registered.
        let mut replaced = entry(device, &old, 2);
        replaced.valid_until = Some(10_000);
        list.apply_delta([replaced, entry(device, &new, 2)], 2);
        assert_eq!(list.version(), 2);
        assert!(list.verify(device, 9_999, b"m", &old.sign(b"m")).is_ok());
        assert_eq!(
            list.verify(device, 10_000, b"m", &old.sign(b"m"))
                .unwrap_err()
                .code(),
            "key_replaced"
        );
        assert!(list.verify(device, 20_000, b"m", &new.sign(b"m")).is_ok());
        // Revocation (lost tablet) at 30 000.
        let mut revoked = entry(device, &new, 3);
        revoked.revoked_at = Some(30_000);
        list.apply_delta([revoked], 3);
        assert!(list.verify(device, 29_000, b"m", &new.sign(b"m")).is_ok());
        assert_eq!(
            list.verify(device, 30_001, b"m", &new.sign(b"m"))
                .unwrap_err()
                .code(),
            "key_revoked"
        );
        assert_eq!(list.entries().count(), 2);
    }

    #[test]
    fn keys_serialize_as_hex_in_json_and_raw_in_postcard() {
        let key = DeviceSigningKey::generate().unwrap().public_key();
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{}\"", key.to_hex()));
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), key);
        let bin = postcard::to_stdvec(&key).unwrap();
        assert_eq!(bin.len(), 33);
        assert_eq!(postcard::from_bytes::<PublicKey>(&bin).unwrap(), key);
        assert!(serde_json::from_str::<PublicKey>("\"abcd\"").is_err());
    }
}
