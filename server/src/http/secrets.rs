//! Secrets: tokens and enrollment codes, of which only hashes are stored.

use rand::Rng;
use sha2::{Digest, Sha256};

// ----- secrets -----------------------------------------------------------------------------------

/// SHA-256 of a secret; only this is stored.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A fresh bearer token (256 random bits, hex).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTVWXYZ23456789";

/// A fresh enrollment code people can read out and type: 12 characters from an alphabet
/// without look-alikes (≈ 59 bits), shown as `XXXX-XXXX-XXXX`.
pub fn new_enrollment_code() -> String {
    let mut rng = rand::rng();
    let chars: Vec<char> = (0..12)
        .map(|_| char::from(CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())]))
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// The hash of an enrollment code as typed: case, spaces and dashes do not matter.
pub fn hash_enrollment_code(code: &str) -> [u8; 32] {
    let normalized: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    hash_secret(&normalized)
}
