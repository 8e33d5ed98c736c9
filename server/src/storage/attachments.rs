//! Attachment contents on the server, behind [`AttachmentStorage`] (a supertrait of
//! [`super::ServerStorage`], so both backends implement it and the conformance suite covers it).
//!
//! Contract:
//! - Contents are kept per commune: a content is keyed by (commune, SHA-256). An upload for
//!   one commune never reads, completes or answers from another commune's content, so a hash
//!   (and size) of another commune's file reveals nothing: its upload starts at chunk 0 and is
//!   completed only by bytes that match the hash. De-duplication stays within a commune.
//! - A content is addressed by its SHA-256 and uploaded in chunks of a size fixed at its first
//!   chunk, in order: chunk `i` is stored only after chunks `0..i`; sending a stored chunk again
//!   is a no-op. [`ContentState::received`] is where an interrupted upload resumes.
//! - The last chunk completes the content only if the whole content matches its hash (read back
//!   chunk by chunk); otherwise every chunk is dropped and the upload starts over.
//! - A record's references are recorded at push ([`AttachmentStorage::reference_attachment`]):
//!   a commune's content is readable in a scope, and uploadable by a device, only while a live
//!   reference of a record of that commune names it. Callers answer "absent" otherwise.
//! - Quotas are checked when a content's first chunk arrives: the bytes of contents a device
//!   uploaded, and of the commune's contents, stay within [`AttachmentLimits`].
//! - [`AttachmentStorage::sweep_attachments`] deletes a commune's contents that no live
//!   reference of that commune names once its last reference change there is older than the
//!   grace period (and incomplete uploads of them).

use async_trait::async_trait;
use communesync_core::record::{DeviceId, RecordId};

use super::{Result, Scope};

/// Bytes of one stored row on the device, which chunk sizes are multiples of.
pub const CHUNK_GRAIN: u32 = communesync_core::attachment::STORE_CHUNK as u32;
/// Largest chunk accepted.
pub const MAX_CHUNK_SIZE: u32 = 1024 * 1024;

/// Size limits and quotas of attachment contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachmentLimits {
    /// Bytes of contents one device may have uploaded in all.
    pub device_quota: u64,
    /// Bytes of one commune's contents.
    pub commune_quota: u64,
}

impl Default for AttachmentLimits {
    fn default() -> Self {
        AttachmentLimits {
            device_quota: 2 * 1024 * 1024 * 1024,
            commune_quota: 20 * 1024 * 1024 * 1024,
        }
    }
}

/// What the server holds of one content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentState {
    /// Its size in bytes.
    pub size: u64,
    /// The chunk size of its upload.
    pub chunk_size: u32,
    /// Chunks stored (from index 0).
    pub received: u32,
    /// Whether it is whole and matched its hash.
    pub complete: bool,
}

/// A live reference that opens a content to a scope: the commune whose content it is, and
/// the size its records name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referenced {
    /// The commune whose stored content the scope reads.
    pub commune: String,
    /// The size the commune's live references name (the largest, if they disagree).
    pub size: u64,
}

/// One uploaded chunk, its shape already checked ([`chunk_shape`]) and its own hash matched.
#[derive(Debug, Clone)]
pub struct ChunkUpload<'a> {
    /// The content.
    pub sha256: [u8; 32],
    /// Its size, as a reference of the device's commune names it.
    pub size: u64,
    /// The chunk size of the upload.
    pub chunk_size: u32,
    /// The chunk's index.
    pub index: u32,
    /// Its bytes.
    pub bytes: &'a [u8],
    /// The device uploading.
    pub device: DeviceId,
    /// Its commune: the content stored is this commune's.
    pub commune: &'a str,
}

/// Why a chunk was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkRefusal {
    /// A quota would be passed.
    Quota(String),
    /// The chunk does not fit what is stored (another chunk size, a gap).
    Mismatch(String),
    /// The whole content did not match its hash: everything was dropped.
    HashMismatch,
}

/// Number of chunks of a content.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size.max(1)))
}

/// Checks a chunk's shape: the chunk size a multiple of [`CHUNK_GRAIN`] up to
/// [`MAX_CHUNK_SIZE`], the index inside the content, the length what that index must have.
pub fn chunk_shape(size: u64, chunk_size: u32, index: u32, len: usize) -> Result<(), String> {
    if chunk_size == 0 || !chunk_size.is_multiple_of(CHUNK_GRAIN) || chunk_size > MAX_CHUNK_SIZE {
        return Err(format!(
            "chunk size must be a multiple of {CHUNK_GRAIN} up to {MAX_CHUNK_SIZE}"
        ));
    }
    let count = chunk_count(size, chunk_size);
    if u64::from(index) >= count {
        return Err(format!(
            "chunk {index} is past the content's {count} chunks"
        ));
    }
    let start = u64::from(index) * u64::from(chunk_size);
    let expected = (size - start).min(u64::from(chunk_size));
    if len as u64 != expected {
        return Err(format!("chunk {index} must be {expected} bytes, not {len}"));
    }
    Ok(())
}

/// Storage of attachment contents; see the module contract.
#[async_trait]
pub trait AttachmentStorage: Send + Sync {
    /// Records that document `doc` of `commune` names the content `sha256` of `size` bytes,
    /// live or as a tombstone (an upsert; a tombstone is never made live again).
    async fn reference_attachment(
        &self,
        sha256: [u8; 32],
        commune: &str,
        doc: RecordId,
        size: u64,
        live: bool,
        now: i64,
    ) -> Result<()>;

    /// The commune and size of a live reference of `scope` to the content, or `None` when no
    /// live reference of the scope names it. A commune scope gets its own commune; the province
    /// gets a commune whose live reference names it, one that holds the content whole first
    /// (then the first by name).
    async fn attachment_referenced(
        &self,
        sha256: [u8; 32],
        scope: &Scope,
    ) -> Result<Option<Referenced>>;

    /// What is stored of `commune`'s content, if anything.
    async fn attachment_state(
        &self,
        commune: &str,
        sha256: [u8; 32],
    ) -> Result<Option<ContentState>>;

    /// Stores one chunk (see the module contract). `Ok(Err(..))` is a refusal that changed
    /// nothing (except [`ChunkRefusal::HashMismatch`], which dropped the content's chunks).
    async fn put_attachment_chunk(
        &self,
        upload: ChunkUpload<'_>,
        limits: &AttachmentLimits,
        now: i64,
    ) -> Result<std::result::Result<ContentState, ChunkRefusal>>;

    /// Chunk `index` of `commune`'s complete content (`None` if it is not complete or the index
    /// is past its end).
    async fn attachment_chunk(
        &self,
        commune: &str,
        sha256: [u8; 32],
        index: u32,
    ) -> Result<Option<Vec<u8>>>;

    /// Deletes each commune's contents (complete or not) that no live reference of that commune
    /// names and whose references there last changed (or which were created, when never
    /// referenced there) before `now - grace_ms`. Returns how many were deleted.
    async fn sweep_attachments(&self, now: i64, grace_ms: i64) -> Result<u64>;
}
