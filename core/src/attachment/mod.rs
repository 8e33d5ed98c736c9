//! Attachments: scans and photos of a dossier's papers.
//!
//! Contract:
//! - A record holds its attachments as a list of [`AttachmentRef`]s (content hash, size, MIME
//!   type, caption, paper, page, category, tombstone). They merge like the other list fields,
//!   keyed by their id, and follow the shared rules of [`crate::integrity::rules`] (count, size,
//!   MIME allow-list; the content of a reference never changes; a removal is a tombstone that is
//!   never undone), so the server re-checks them.
//! - Contents are addressed by their SHA-256 and stored in the device store's own SQLCipher file
//!   as rows of [`STORE_CHUNK`] bytes: encrypted at rest with the store key, written in the same
//!   WAL (a kill at any instant leaves either the whole content or none of it), deleted by a
//!   wipe. One content is stored once whatever the number of references to it (dedupe).
//! - Nothing holds a whole content in memory: attaching reads the source one row at a time,
//!   opening streams rows to the writer and checks the hash on the way, uploads and downloads
//!   move one chunk at a time.
//! - A content attached on this device stays until the server holds it whole; after that (and
//!   for downloaded contents) it is a cache entry, evicted least recently used first beyond a
//!   bound ([`crate::store::DeviceStore::evict_attachments`]). A content no live reference names
//!   is dropped.
//! - [`prepare`] (feature `image`) turns a camera photo of a paper into a small upright JPEG for
//!   2G with bounded memory and time; the original is stored only if the app asks.
//! - [`prepare`] turns a camera photo of a paper into a small JPEG for 2G, with bounded memory.

pub(crate) mod content;
#[cfg(feature = "image")]
pub mod prepare;

mod reference;
mod store;
#[cfg(test)]
mod tests;

pub use content::{ContentStatus, STORE_CHUNK};
pub use reference::{
    AttachmentCategory, AttachmentRef, NewAttachment, is_content_address, sha256_hex,
};
