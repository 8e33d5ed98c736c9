//! Attachments in the bindings: scans and photos of a dossier's papers.
//!
//! Contract: every call that touches the store is async and runs through
//! [`Engine::with_store`] on the blocking pool (a 12 MP photo is prepared there, never on the
//! app's thread). Contents are streamed: attaching a file or opening to a path never holds the
//! whole content in memory. Attaching works offline; `sync_now` then sends the records first and
//! the contents after, within [`AttachmentSettings`]. Opening a content this tablet does not
//! hold downloads it first (resuming at the last whole chunk after a cut). Progress of every
//! upload and download reaches the [`AttachmentProgressListener`]s on a thread of their own.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;

use communesync_core::Error as CoreError;
use communesync_core::attachment as core;
use communesync_core::attachment::prepare::PrepareOptions;
use communesync_core::sync::attachments::{self as channel, AttachmentError, AttachmentPolicy};

use crate::engine::Engine;
use crate::error::CommuneSyncError;
use crate::observer::{Event, ObserverHandle};
use crate::types::{parse_id, time_from_ms};

type Result<T, E = CommuneSyncError> = std::result::Result<T, E>;

/// What kind of paper an attachment shows; receipts and identity cards are uploaded first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum AttachmentCategory {
    /// A signed receipt or payment proof.
    Receipt,
    /// A citizen identity card (CCCD) or other identity paper.
    IdentityCard,
    /// A form or certificate of the dossier.
    Document,
    /// Any other photo (a land plot, a road).
    Photo,
}

impl From<AttachmentCategory> for core::AttachmentCategory {
    fn from(c: AttachmentCategory) -> Self {
        match c {
            AttachmentCategory::Receipt => core::AttachmentCategory::Receipt,
            AttachmentCategory::IdentityCard => core::AttachmentCategory::IdentityCard,
            AttachmentCategory::Document => core::AttachmentCategory::Document,
            AttachmentCategory::Photo => core::AttachmentCategory::Photo,
        }
    }
}

impl From<core::AttachmentCategory> for AttachmentCategory {
    fn from(c: core::AttachmentCategory) -> Self {
        match c {
            core::AttachmentCategory::Receipt => AttachmentCategory::Receipt,
            core::AttachmentCategory::IdentityCard => AttachmentCategory::IdentityCard,
            core::AttachmentCategory::Document => AttachmentCategory::Document,
            core::AttachmentCategory::Photo => AttachmentCategory::Photo,
        }
    }
}

/// What the app says about a file it attaches.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct NewAttachment {
    /// MIME type: `image/jpeg`, `image/png` or `application/pdf` (a photo attached with
    /// `attach_photo` is always `image/jpeg`).
    pub mime: String,
    /// What kind of paper it shows.
    pub category: AttachmentCategory,
    /// What it shows (at most 200 characters).
    #[uniffi(default = "")]
    pub caption: String,
    /// Name of the received paper of the dossier it belongs to.
    #[uniffi(default)]
    pub document: Option<String>,
    /// Page number within that paper (0 when not paged).
    #[uniffi(default = 0)]
    pub page: u32,
}

impl From<NewAttachment> for core::NewAttachment {
    fn from(n: NewAttachment) -> Self {
        core::NewAttachment {
            mime: n.mime,
            caption: n.caption,
            document: n.document,
            page: n.page,
            category: n.category.into(),
        }
    }
}

/// An attachment of a record, and what this tablet holds of its content.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Attachment {
    /// The reference's id (to remove it).
    pub id: String,
    /// The content's SHA-256 (lowercase hex): to open or download it.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// MIME type.
    pub mime: String,
    /// What it shows.
    pub caption: String,
    /// The received paper it belongs to.
    pub document: Option<String>,
    /// Page within that paper.
    pub page: u32,
    /// What kind of paper it is.
    pub category: AttachmentCategory,
    /// When it was attached.
    pub added_at: std::time::SystemTime,
    /// Whether the whole content is on this tablet (opening needs no network).
    pub on_device: bool,
    /// Whether the server is known to hold it whole.
    pub on_server: bool,
}

fn attachment(
    store: &communesync_core::store::DeviceStore,
    r: core::AttachmentRef,
) -> Result<Attachment> {
    let status = store.attachment_status(&r.sha256)?;
    Ok(Attachment {
        on_device: status.as_ref().is_some_and(|s| s.complete),
        on_server: status.as_ref().is_some_and(|s| s.on_server),
        id: r.id,
        sha256: r.sha256,
        size: r.size,
        mime: r.mime,
        caption: r.caption,
        document: r.document,
        page: r.page,
        category: r.category.into(),
        added_at: time_from_ms(r.added_at),
    })
}

/// How a camera photo of a paper is prepared for 2G.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct PhotoOptions {
    /// Long side of the prepared image, pixels (default 1600).
    #[uniffi(default = 1600)]
    pub long_side: u32,
    /// Gray levels only: smaller, for papers (default false).
    #[uniffi(default = false)]
    pub grayscale: bool,
    /// Bytes to aim at (default 150,000): the JPEG quality is searched to fit.
    #[uniffi(default = 150000)]
    pub target_bytes: u64,
    /// Also attach the original file (captioned "(original)"); default false.
    #[uniffi(default = false)]
    pub keep_original: bool,
}

impl Default for PhotoOptions {
    fn default() -> Self {
        let core = PrepareOptions::default();
        PhotoOptions {
            long_side: core.max_long_side,
            grayscale: core.grayscale,
            target_bytes: core.target_bytes as u64,
            keep_original: false,
        }
    }
}

/// The attachment channel's settings, used by each `sync_now` and download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct AttachmentSettings {
    /// Chunk size of new uploads: a multiple of 16 KiB, at most 1 MiB (default 64 KiB). A cut
    /// costs at most one chunk.
    pub chunk_size: u32,
    /// Whether the link is metered (mobile data): attachments then get at most
    /// `metered_budget_bytes` per sync; records always go (default true).
    pub metered: bool,
    /// Bytes of attachment chunks per sync on a metered link (default 2 MiB).
    pub metered_budget_bytes: u64,
    /// Whether each sync also downloads the contents the commune's records name (default
    /// false: contents come when opened).
    pub prefetch: bool,
    /// Bytes of downloaded contents kept on the tablet (default 200 MiB); contents not yet
    /// uploaded are never evicted.
    pub cache_bytes: u64,
}

impl From<AttachmentPolicy> for AttachmentSettings {
    fn from(p: AttachmentPolicy) -> Self {
        AttachmentSettings {
            chunk_size: p.chunk_size,
            metered: p.metered,
            metered_budget_bytes: p.metered_budget_bytes,
            prefetch: p.prefetch,
            cache_bytes: p.cache_bytes,
        }
    }
}

/// Bytes of one attachment moved by a sync or a download.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AttachmentProgress {
    /// The content.
    pub sha256: String,
    /// An upload (else a download).
    pub upload: bool,
    /// Bytes the server (upload) or this tablet (download) holds now.
    pub done_bytes: u64,
    /// The content's size.
    pub total_bytes: u64,
}

impl From<channel::AttachmentProgress> for AttachmentProgress {
    fn from(p: channel::AttachmentProgress) -> Self {
        AttachmentProgress {
            sha256: p.sha256,
            upload: p.upload,
            done_bytes: p.done_bytes,
            total_bytes: p.total_bytes,
        }
    }
}

/// Implemented by the app to show upload and download progress per attachment.
#[uniffi::export(with_foreign)]
pub trait AttachmentProgressListener: Send + Sync {
    /// After each chunk of an attachment moved.
    fn on_attachment_progress(&self, progress: AttachmentProgress);
}

fn channel_error(err: AttachmentError) -> CommuneSyncError {
    let message = err.to_string();
    match err {
        AttachmentError::Transport(_) | AttachmentError::CorruptChunk(_) => {
            CommuneSyncError::Offline(message)
        }
        AttachmentError::Refused { status: 401, .. } => CommuneSyncError::Unauthorized(message),
        AttachmentError::Refused { status: 403, .. } => CommuneSyncError::Revoked(message),
        AttachmentError::Refused {
            status: 429 | 500..,
            ..
        } => CommuneSyncError::Offline(message),
        AttachmentError::Refused { .. } => CommuneSyncError::InvalidInput(message),
        AttachmentError::NotOnServer(_) => CommuneSyncError::NotFound(message),
        AttachmentError::Store(core) => core.into(),
        _ => CommuneSyncError::Storage(message),
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl Engine {
    /// Attaches bytes (a scan, a PDF) to an application or citizen request, as one change by
    /// `officer`. Same content twice (on two dossiers) is stored and sent once.
    pub async fn attach_bytes(
        &self,
        officer: String,
        record_id: String,
        new: NewAttachment,
        bytes: Vec<u8>,
    ) -> Result<Attachment> {
        let id = parse_id(&record_id)?;
        let attached = self
            .with_store(move |s| {
                let r = s.attach_bytes(id, &officer, new.into(), &bytes)?;
                attachment(s, r)
            })
            .await?;
        self.changed(id);
        Ok(attached)
    }

    /// Attaches a file, read in pieces (never whole in memory).
    pub async fn attach_file(
        &self,
        officer: String,
        record_id: String,
        new: NewAttachment,
        path: String,
    ) -> Result<Attachment> {
        let id = parse_id(&record_id)?;
        let attached = self
            .with_store(move |s| {
                let r = s.attach_file(id, &officer, new.into(), &PathBuf::from(path))?;
                attachment(s, r)
            })
            .await?;
        self.changed(id);
        Ok(attached)
    }

    /// Attaches a camera photo (JPEG or PNG file) prepared for 2G: turned upright, reduced to
    /// `options.long_side`, gray if asked, re-encoded as JPEG near `options.target_bytes`.
    /// Returns the prepared attachment, then the original when `options.keep_original`.
    pub async fn attach_photo(
        &self,
        officer: String,
        record_id: String,
        new: NewAttachment,
        path: String,
        options: PhotoOptions,
    ) -> Result<Vec<Attachment>> {
        let id = parse_id(&record_id)?;
        let prepare = PrepareOptions {
            max_long_side: options.long_side,
            grayscale: options.grayscale,
            target_bytes: usize::try_from(options.target_bytes).unwrap_or(usize::MAX),
            ..PrepareOptions::default()
        };
        let attached = self
            .with_store(move |s| {
                let refs = s.attach_photo(
                    id,
                    &officer,
                    new.into(),
                    &PathBuf::from(path),
                    &prepare,
                    options.keep_original,
                )?;
                refs.into_iter().map(|r| attachment(s, r)).collect()
            })
            .await?;
        self.changed(id);
        Ok(attached)
    }

    /// The attachments of a record that are not removed, in the order they were added.
    pub async fn attachments(&self, record_id: String) -> Result<Vec<Attachment>> {
        let id = parse_id(&record_id)?;
        self.with_store(move |s| {
            let refs = s.attachments(id)?;
            refs.into_iter().map(|r| attachment(s, r)).collect()
        })
        .await
    }

    /// Removes an attachment (a removal that syncs, never undone); the content is dropped from
    /// this tablet once nothing names it.
    pub async fn remove_attachment(
        &self,
        officer: String,
        record_id: String,
        attachment_id: String,
    ) -> Result<()> {
        let id = parse_id(&record_id)?;
        self.with_store(move |s| Ok(s.remove_attachment(id, &officer, &attachment_id)?))
            .await?;
        self.changed(id);
        Ok(())
    }

    /// Writes the content `sha256` to the file `path` (streamed, its hash checked; the file is
    /// whole or absent). A content this tablet does not hold is downloaded first (the device
    /// must be enrolled and online); returns the bytes written.
    pub async fn open_attachment(&self, sha256: String, path: String) -> Result<u64> {
        let open = |sha256: String, path: String| {
            self.with_store(move |s| {
                match s.open_attachment_to_path(&sha256, &PathBuf::from(path)) {
                    Ok(n) => Ok(Some(n)),
                    Err(CoreError::ContentMissing(_)) => Ok(None),
                    Err(other) => Err(other.into()),
                }
            })
        };
        if let Some(written) = open(sha256.clone(), path.clone()).await? {
            return Ok(written);
        }
        self.download_attachment(sha256.clone()).await?;
        open(sha256.clone(), path).await?.ok_or_else(|| {
            CommuneSyncError::NotFound(format!("attachment {sha256} is not on this tablet"))
        })
    }

    /// Downloads the content `sha256` now (resuming at the last whole chunk); returns the
    /// bytes received. `NotFound` when the server does not hold it whole (not uploaded yet by
    /// the tablet that attached it) or it is not of this device's commune.
    pub async fn download_attachment(&self, sha256: String) -> Result<u64> {
        self.check_open()?;
        if !core::is_content_address(&sha256) {
            return Err(CommuneSyncError::invalid(
                "sha256: must be 64 lowercase hex digits",
            ));
        }
        let client = self.client().await?;
        let observers = self.observers.clone();
        let result = client
            .download_attachment(&sha256, &|progress| {
                observers.emit(Event::Attachment(progress.into()));
            })
            .await;
        drop(client);
        {
            let mut state = self.state();
            state.running = state.running.saturating_sub(1);
        }
        result.map_err(channel_error)
    }

    /// The attachment channel's settings now.
    pub fn attachment_settings(&self) -> AttachmentSettings {
        self.attachment_policy().clone().into()
    }

    /// Changes the attachment channel's settings (for the next syncs and downloads): say
    /// `metered` when the link changes. `InvalidInput` for a chunk size that is not a multiple
    /// of 16 KiB between 16 KiB and 1 MiB.
    pub fn set_attachment_settings(&self, settings: AttachmentSettings) -> Result<()> {
        let chunk = settings.chunk_size as usize;
        if chunk == 0 || !chunk.is_multiple_of(core::STORE_CHUNK) || chunk > 1024 * 1024 {
            return Err(CommuneSyncError::invalid(
                "chunk_size: a multiple of 16384 between 16384 and 1048576",
            ));
        }
        *self.attachment_policy() = AttachmentPolicy {
            chunk_size: settings.chunk_size,
            metered: settings.metered,
            metered_budget_bytes: settings.metered_budget_bytes,
            cache_bytes: settings.cache_bytes,
            prefetch: settings.prefetch,
        };
        Ok(())
    }

    /// Delivers the progress of every attachment upload and download to `listener`, on a
    /// thread of its own, until [`ObserverHandle::stop`]. The Kotlin
    /// `engine.attachmentProgressFlow()` and the Swift `engine.attachmentProgressUpdates()`
    /// wrap it.
    pub fn watch_attachment_progress(
        &self,
        listener: Arc<dyn AttachmentProgressListener>,
    ) -> Result<Arc<ObserverHandle>> {
        self.check_open()?;
        let handle = self
            .observers
            .add_thread("communesync-attachments", move |events| {
                for event in events {
                    if let Event::Attachment(progress) = event {
                        // An exception in the app's listener must not end the delivery.
                        let _ = catch_unwind(AssertUnwindSafe(|| {
                            listener.on_attachment_progress(progress)
                        }));
                    }
                }
            })?;
        Ok(Arc::new(handle))
    }
}
