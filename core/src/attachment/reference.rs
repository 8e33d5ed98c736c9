//! [`AttachmentRef`]: what a record says about one attached file.

use autosurgeon::{Hydrate, Reconcile};
use serde::{Deserialize, Serialize};

/// A file attached to a record (a scan or photo of a received paper), as the record holds it.
///
/// The record carries the reference; the bytes live in the content store under
/// [`AttachmentRef::sha256`]. References are keyed by [`AttachmentRef::id`], so concurrent
/// additions on two tablets merge as a list (like the received papers); a removal sets
/// [`AttachmentRef::removed`] (a tombstone that syncs) and the reference stays in the list.
#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct AttachmentRef {
    /// Identity of this reference (a UUIDv7 string): the same content attached twice to one
    /// record is two references.
    #[key]
    pub id: String,
    /// SHA-256 of the content, 64 lowercase hex digits: the content's address.
    pub sha256: String,
    /// Size of the content in bytes.
    pub size: u64,
    /// MIME type (`image/jpeg`, `image/png`, `application/pdf`).
    pub mime: String,
    /// What it shows ("CCCD mặt trước").
    pub caption: String,
    /// Name of the received paper ([`crate::record::ReceivedDocument::name`]) it is an image of,
    /// if any.
    pub document: Option<String>,
    /// Page number within that paper (1 for the first; 0 when not paged).
    pub page: u32,
    /// What kind of paper it is, for upload priority: receipts and identity cards go first.
    pub category: AttachmentCategory,
    /// When it was attached, ms since the epoch (device time corrected by the server offset).
    pub added_at: i64,
    /// Set when the attachment was removed: a tombstone, never unset.
    pub removed: bool,
}

impl AttachmentRef {
    /// Whether the attachment is shown (not removed).
    pub fn is_live(&self) -> bool {
        !self.removed
    }
}

/// What kind of paper an attachment shows; orders uploads (lower [`AttachmentCategory::priority`]
/// first).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Reconcile, Hydrate, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentCategory {
    /// A signed receipt or payment proof.
    #[autosurgeon(rename = "receipt")]
    Receipt,
    /// A citizen identity card (CCCD) or other identity paper.
    #[autosurgeon(rename = "identity_card")]
    IdentityCard,
    /// A form or certificate of the dossier.
    #[default]
    #[autosurgeon(rename = "document")]
    Document,
    /// Any other photo (a land plot, a road).
    #[autosurgeon(rename = "photo")]
    Photo,
}

impl AttachmentCategory {
    /// Upload order: 0 goes first.
    pub fn priority(self) -> i64 {
        match self {
            AttachmentCategory::Receipt => 0,
            AttachmentCategory::IdentityCard => 1,
            AttachmentCategory::Document => 2,
            AttachmentCategory::Photo => 3,
        }
    }
}

/// What the app gives to attach a file; the store fills id, hash, size and time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAttachment {
    /// MIME type of the bytes.
    pub mime: String,
    /// What it shows.
    #[serde(default)]
    pub caption: String,
    /// Name of the received paper it belongs to.
    #[serde(default)]
    pub document: Option<String>,
    /// Page number within that paper (0 when not paged).
    #[serde(default)]
    pub page: u32,
    /// What kind of paper it is.
    #[serde(default)]
    pub category: AttachmentCategory,
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Whether `s` has the form of a content address: 64 lowercase hex digits.
pub fn is_content_address(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
