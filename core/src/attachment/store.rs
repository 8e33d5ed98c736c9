//! The attachment API of the device store: attach, list, open, remove, evict.

use std::io::{Read, Write};
use std::path::Path;

use super::content;
use super::reference::{AttachmentRef, NewAttachment};
use crate::integrity::rules::{ATTACHMENT_MIME_TYPES, MAX_ATTACHMENT_BYTES};
use crate::record::{Record, RecordId};
use crate::store::DeviceStore;
use crate::{Error, Result};

impl DeviceStore {
    /// Attaches what `reader` yields to the record `id` (an application or a citizen request),
    /// as one change by `officer`. The bytes are stored first (streamed, hashed, deduplicated),
    /// then the reference is added to the record; if the record refuses it (a rule, a full
    /// disk), the bytes are dropped again unless another reference names them.
    pub fn attach(
        &mut self,
        id: RecordId,
        officer: &str,
        new: NewAttachment,
        reader: &mut dyn Read,
    ) -> Result<AttachmentRef> {
        crate::integrity::check_officer(officer)?;
        if !ATTACHMENT_MIME_TYPES.contains(&new.mime.as_str()) {
            return Err(Error::invalid(
                "attachments.mime",
                "must be image/jpeg, image/png or application/pdf",
            ));
        }
        // Fails early (before any byte is stored) for an unknown record or one of another
        // commune.
        let commune = self.get(id)?.commune_code().to_owned();
        if let Some(own) = self.enrolled_commune()
            && own != commune
        {
            return Err(Error::invalid(
                "commune_code",
                format!("this device is enrolled in commune {own}, not {commune}"),
            ));
        }
        let now = self.now_ms();
        let priority = new.category.priority();
        let tx = self.connection_mut().transaction()?;
        let (sha256, size) = content::ingest(&tx, reader, MAX_ATTACHMENT_BYTES, priority, now)?;
        tx.commit()?;
        self.committed();
        let reference = AttachmentRef {
            id: uuid::Uuid::now_v7().to_string(),
            sha256,
            size,
            mime: new.mime,
            caption: new.caption,
            document: new.document,
            page: new.page,
            category: new.category,
            added_at: now,
            removed: false,
        };
        let added = reference.clone();
        let result = self.edit_attachments(id, officer, move |refs| refs.push(added));
        if let Err(err) = result {
            // A kill before this point leaves the content unreferenced: the next eviction
            // drops it.
            self.drop_unreferenced()?;
            return Err(err);
        }
        Ok(reference)
    }

    /// [`DeviceStore::attach`] of bytes in memory.
    pub fn attach_bytes(
        &mut self,
        id: RecordId,
        officer: &str,
        new: NewAttachment,
        bytes: &[u8],
    ) -> Result<AttachmentRef> {
        self.attach(id, officer, new, &mut std::io::Cursor::new(bytes))
    }

    /// [`DeviceStore::attach`] of a file (read in rows, never whole).
    pub fn attach_file(
        &mut self,
        id: RecordId,
        officer: &str,
        new: NewAttachment,
        path: &Path,
    ) -> Result<AttachmentRef> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.attach(id, officer, new, &mut file)
    }

    /// Attaches a camera photo or scan of a paper, prepared for 2G ([`super::prepare`]): the
    /// small JPEG is attached (its MIME type is `image/jpeg` whatever `new.mime` says); the
    /// original file too, as a second reference captioned "(original)", only when
    /// `keep_original`. Returns the prepared reference, then the original's when kept.
    #[cfg(feature = "image")]
    pub fn attach_photo(
        &mut self,
        id: RecordId,
        officer: &str,
        new: NewAttachment,
        path: &Path,
        options: &super::prepare::PrepareOptions,
        keep_original: bool,
    ) -> Result<Vec<AttachmentRef>> {
        let prepared = super::prepare::prepare_file(path, options)?;
        let mut refs = Vec::new();
        let prepared_new = NewAttachment {
            mime: prepared.mime().to_owned(),
            ..new.clone()
        };
        refs.push(self.attach_bytes(id, officer, prepared_new, &prepared.bytes)?);
        if keep_original {
            let mut head = [0u8; 4];
            let mut file = std::fs::File::open(path).map_err(|e| Error::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let _ = file.read(&mut head);
            let mime = if head.starts_with(&[0x89, b'P', b'N', b'G']) {
                "image/png"
            } else {
                "image/jpeg"
            };
            let caption = format!("{} (original)", new.caption);
            let original = NewAttachment {
                mime: mime.to_owned(),
                caption: caption
                    .chars()
                    .take(super::super::integrity::rules::MAX_CAPTION)
                    .collect(),
                ..new
            };
            refs.push(self.attach_file(id, officer, original, path)?);
        }
        Ok(refs)
    }

    /// The attachments of a record that are not removed, in the order they were added.
    pub fn attachments(&mut self, id: RecordId) -> Result<Vec<AttachmentRef>> {
        let mut refs = match self.get(id)? {
            Record::Application(a) => a.attachments,
            Record::CitizenRequest(r) => r.attachments,
        };
        refs.retain(AttachmentRef::is_live);
        Ok(refs)
    }

    /// Removes an attachment from a record: its reference becomes a tombstone (which syncs);
    /// the content is dropped here once no live reference names it.
    pub fn remove_attachment(
        &mut self,
        id: RecordId,
        officer: &str,
        reference: &str,
    ) -> Result<()> {
        let known = self.attachments(id)?.iter().any(|r| r.id == reference);
        if !known {
            return Err(Error::invalid(
                "attachment",
                format!("record {id} has no attachment {reference}"),
            ));
        }
        let reference = reference.to_owned();
        self.edit_attachments(id, officer, move |refs| {
            for r in refs.iter_mut().filter(|r| r.id == reference) {
                r.removed = true;
            }
        })?;
        self.drop_unreferenced()?;
        Ok(())
    }

    /// Changes the caption, paper or page of an attachment.
    pub fn describe_attachment(
        &mut self,
        id: RecordId,
        officer: &str,
        reference: &str,
        caption: String,
        document: Option<String>,
        page: u32,
    ) -> Result<AttachmentRef> {
        let reference = reference.to_owned();
        let wanted = reference.clone();
        self.edit_attachments(id, officer, move |refs| {
            for r in refs.iter_mut().filter(|r| r.id == reference) {
                r.caption = caption.clone();
                r.document = document.clone();
                r.page = page;
            }
        })?;
        self.attachments(id)?
            .into_iter()
            .find(|r| r.id == wanted)
            .ok_or_else(|| Error::invalid("attachment", format!("no attachment {wanted}")))
    }

    /// Streams the content `sha256` to `out`, checking its hash; [`Error::ContentMissing`]
    /// when it is not wholly here (download it first).
    pub fn open_attachment(&mut self, sha256: &str, out: &mut dyn Write) -> Result<u64> {
        let written = content::copy_to(self.connection(), sha256, out)?;
        content::touch(self.connection(), sha256, self.now_ms())?;
        Ok(written)
    }

    /// Writes the content `sha256` to the file `path` (through a temporary file beside it,
    /// renamed once the hash checked: the file is whole or absent).
    pub fn open_attachment_to_path(&mut self, sha256: &str, path: &Path) -> Result<u64> {
        let file_error = |e: std::io::Error| Error::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut temp_name = path.as_os_str().to_owned();
        temp_name.push(".part");
        let temp = std::path::PathBuf::from(temp_name);
        let written = {
            let file = std::fs::File::create(&temp).map_err(file_error)?;
            let mut out = std::io::BufWriter::new(file);
            let result = self.open_attachment(sha256, &mut out).and_then(|n| {
                out.flush().map_err(file_error)?;
                Ok(n)
            });
            if result.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            result?
        };
        std::fs::rename(&temp, path).map_err(file_error)?;
        Ok(written)
    }

    /// What this device holds of the content `sha256` (`None`: none of it).
    pub fn attachment_status(&self, sha256: &str) -> Result<Option<content::ContentStatus>> {
        content::status(self.connection(), sha256)
    }

    /// Frees space: drops contents no live reference names, then evicts the least recently
    /// used contents the server holds until at most `max_cached_bytes` of them stay. A content
    /// not yet uploaded is never evicted. Returns the bytes freed.
    pub fn evict_attachments(&mut self, max_cached_bytes: u64) -> Result<u64> {
        let tx = self.connection_mut().transaction()?;
        let freed = content::evict(&tx, max_cached_bytes)?;
        tx.commit()?;
        self.committed();
        Ok(freed)
    }

    // ----- for the attachment channel (crate::sync::attachments) ------------------------------

    /// Contents to upload, first first (receipts and identity cards before other photos): whole
    /// here, not known on the server, named by a live reference. `(sha256, size)`.
    pub fn pending_attachment_uploads(&self, limit: usize) -> Result<Vec<(String, u64)>> {
        content::pending_uploads(self.connection(), limit)
    }

    /// Contents named by a live reference and not wholly here (what a prefetch downloads),
    /// first first. `(sha256, size)`.
    pub fn missing_attachments(&self, limit: usize) -> Result<Vec<(String, u64)>> {
        content::missing_contents(self.connection(), limit)
    }

    /// `len` bytes of the content `sha256` from `offset` (fewer at its end): one upload chunk.
    pub fn attachment_range(&self, sha256: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        content::read_range(self.connection(), sha256, offset, len)
    }

    /// Stores a downloaded chunk of the content `sha256` (of `size` bytes) at `offset` (a
    /// multiple of [`super::STORE_CHUNK`]), in one transaction; the last chunk completes it
    /// after the whole hash checked. Returns whether it is complete.
    pub fn store_attachment_range(
        &mut self,
        sha256: &str,
        size: u64,
        offset: u64,
        bytes: &[u8],
    ) -> Result<bool> {
        if size > MAX_ATTACHMENT_BYTES {
            return Err(Error::invalid("attachment", "larger than the size limit"));
        }
        let now = self.now_ms();
        let tx = self.connection_mut().transaction()?;
        let complete = content::write_range(&tx, sha256, size, offset, bytes, now);
        // A hash mismatch deleted the rows: that is committed too, so the download restarts.
        // Any other failure rolls the chunk back.
        if matches!(complete, Ok(_) | Err(Error::Document(_))) {
            tx.commit()?;
            self.committed();
        }
        complete
    }

    /// Where a download of `sha256` resumes (the bytes already here, aligned down to
    /// `chunk_size`).
    pub fn attachment_resume_offset(&self, sha256: &str, chunk_size: usize) -> Result<u64> {
        content::resume_offset(self.connection(), sha256, chunk_size)
    }

    /// Records that the server holds the content `sha256` whole (it may now be evicted here).
    pub fn mark_attachment_on_server(&mut self, sha256: &str) -> Result<()> {
        content::mark_on_server(self.connection(), sha256)
    }

    fn drop_unreferenced(&mut self) -> Result<()> {
        self.evict_attachments(u64::MAX).map(|_| ())
    }

    /// Runs `edit` on the attachment list of the record `id`, as one change.
    fn edit_attachments(
        &mut self,
        id: RecordId,
        officer: &str,
        edit: impl FnOnce(&mut Vec<AttachmentRef>),
    ) -> Result<()> {
        match self.get(id)? {
            Record::Application(_) => {
                self.update_application(id, officer, |a| edit(&mut a.attachments))?;
            }
            Record::CitizenRequest(_) => {
                self.update_citizen_request(id, officer, |r| edit(&mut r.attachments))?;
            }
        }
        Ok(())
    }
}
