//! The attachment channel of a tablet: contents move after the records, in hash-checked
//! chunks, each request resumable where the last whole chunk stopped.
//!
//! Contract:
//! - [`upload_pending`] sends the contents only this device holds, receipts and identity
//!   cards first ([`crate::attachment::AttachmentCategory::priority`]). Before each content it
//!   asks the server where it stands (`GET /v1/attachments/{sha256}`) and continues at the first
//!   chunk the server lacks: a cut at any byte costs at most the chunk in flight.
//! - A byte budget bounds a sync on a metered link ([`AttachmentPolicy`]); the records always
//!   go first (this runs after [`super::SyncClient::sync`]), so a budget never delays a record.
//! - [`download`] fetches one content (when the user opens it), resuming at the first missing
//!   chunk, each chunk checked against its hash and the whole content at the end;
//!   [`prefetch`] downloads what the commune's records name, within a budget, then evicts the
//!   least recently used contents the server holds beyond the cache bound.
//! - Progress is reported per attachment (bytes done of bytes in all).

use std::future::Future;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::client::SyncClient;
use super::transport::{Transport, TransportError};
use crate::store::DeviceStore;

/// Chunk size of uploads: 64 KiB (about 5 s at 100 kbit/s, so a cut wastes at most that).
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;

/// When and how much the channel may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentPolicy {
    /// Chunk size of new uploads (a multiple of [`crate::attachment::STORE_CHUNK`], at most
    /// 1 MiB).
    pub chunk_size: u32,
    /// Whether the link is metered (mobile data): then at most `metered_budget_bytes` of
    /// attachment chunks per sync; unmetered links have no budget.
    pub metered: bool,
    /// Bytes of attachment chunks one sync may send or receive on a metered link.
    pub metered_budget_bytes: u64,
    /// Bytes of downloaded contents the device keeps (what the server holds; contents not yet
    /// uploaded are never evicted).
    pub cache_bytes: u64,
    /// Whether a background sync also downloads what the commune's records name (within the
    /// same budget and the cache bound); otherwise contents come when the user opens them.
    pub prefetch: bool,
}

impl Default for AttachmentPolicy {
    fn default() -> Self {
        AttachmentPolicy {
            chunk_size: DEFAULT_CHUNK_SIZE,
            metered: true,
            metered_budget_bytes: 2 * 1024 * 1024,
            cache_bytes: 200 * 1024 * 1024,
            prefetch: false,
        }
    }
}

impl AttachmentPolicy {
    fn budget(&self) -> u64 {
        if self.metered {
            self.metered_budget_bytes
        } else {
            u64::MAX
        }
    }
}

/// Progress of one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentProgress {
    /// The content.
    pub sha256: String,
    /// Whether it is an upload (else a download).
    pub upload: bool,
    /// Bytes the server (upload) or this device (download) holds now.
    pub done_bytes: u64,
    /// Its size.
    pub total_bytes: u64,
}

/// What one run of the channel did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachmentReport {
    /// Contents now whole on the other side.
    pub completed: Vec<String>,
    /// Chunk bytes sent (uploads) or received (downloads).
    pub chunk_bytes: u64,
    /// Contents left for a later sync because the budget was spent.
    pub deferred: usize,
    /// Contents the server does not know yet (their record is not there): left for later.
    pub unknown: usize,
}

/// Why the channel stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// The link failed: run again later, it resumes at the last whole chunk.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// The server refused a request.
    #[error("server refused ({status} {code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The protocol's error code.
        code: String,
        /// Why.
        message: String,
    },
    /// The local store failed.
    #[error("store: {0}")]
    Store(#[from] crate::Error),
    /// The content is not in this device's scope on the server (or does not exist there).
    #[error("attachment {0} is not on the server")]
    NotOnServer(String),
    /// A downloaded chunk did not match its hash.
    #[error("a downloaded chunk of {0} did not match its hash")]
    CorruptChunk(String),
}

/// Where the server stands on a content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct RemoteStatus {
    /// Size named by the record.
    pub size: u64,
    /// Chunk size of the upload under way (0 before any chunk).
    pub chunk_size: u32,
    /// Chunks stored from 0.
    pub received: u32,
    /// Whether it is whole.
    pub complete: bool,
}

/// The requests of the attachment channel.
pub trait AttachmentTransport: Send + Sync {
    /// `GET /v1/attachments/{sha256}`; `None` for 404.
    fn status(
        &self,
        token: &str,
        sha256: &str,
    ) -> impl Future<Output = Result<Option<RemoteStatus>, AttachmentError>> + Send;
    /// `PUT /v1/attachments/{sha256}/chunks/{index}`.
    fn put_chunk(
        &self,
        token: &str,
        sha256: &str,
        size: u64,
        chunk_size: u32,
        index: u32,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<RemoteStatus, AttachmentError>> + Send;
    /// `GET /v1/attachments/{sha256}/chunks/{index}` with the chunk's hash from the server;
    /// `None` for 404.
    fn get_chunk(
        &self,
        token: &str,
        sha256: &str,
        index: u32,
    ) -> impl Future<Output = Result<Option<(Vec<u8>, String)>, AttachmentError>> + Send;
}

#[cfg(feature = "http")]
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: String,
}

#[cfg(feature = "http")]
fn refused(status: u16, body: &[u8]) -> AttachmentError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (code, message) = parsed.map_or_else(
        || (String::new(), String::from_utf8_lossy(body).into_owned()),
        |b| (b.error, b.message),
    );
    AttachmentError::Refused {
        status,
        code,
        message,
    }
}

/// Largest answer read from the channel (a chunk of 1 MiB and its head).
#[cfg(feature = "http")]
const MAX_ANSWER: usize = 1024 * 1024 + 4096;

#[cfg(feature = "http")]
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, AttachmentError> {
    let mut body = Vec::new();
    while let Some(piece) = response.chunk().await.map_err(super::transport::classify)? {
        if body.len() + piece.len() > MAX_ANSWER {
            return Err(TransportError::ResponseTooLarge {
                limit: MAX_ANSWER as u64,
            }
            .into());
        }
        body.extend_from_slice(&piece);
    }
    Ok(body)
}

#[cfg(feature = "http")]
impl AttachmentTransport for super::ReqwestTransport {
    async fn status(
        &self,
        token: &str,
        sha256: &str,
    ) -> Result<Option<RemoteStatus>, AttachmentError> {
        let response = self
            .http_client()
            .get(format!("{}/v1/attachments/{sha256}", self.base_url()))
            .bearer_auth(token)
            .send()
            .await
            .map_err(super::transport::classify)?;
        let status = response.status().as_u16();
        let body = read_bounded(response).await?;
        match status {
            200 => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| refused(status, e.to_string().as_bytes())),
            404 => Ok(None),
            _ => Err(refused(status, &body)),
        }
    }

    async fn put_chunk(
        &self,
        token: &str,
        sha256: &str,
        size: u64,
        chunk_size: u32,
        index: u32,
        bytes: Vec<u8>,
    ) -> Result<RemoteStatus, AttachmentError> {
        let digest = hex::encode(Sha256::digest(&bytes));
        let response = self
            .http_client()
            .put(format!(
                "{}/v1/attachments/{sha256}/chunks/{index}",
                self.base_url()
            ))
            .bearer_auth(token)
            .header("x-content-size", size.to_string())
            .header("x-chunk-size", chunk_size.to_string())
            .header("x-chunk-sha256", digest)
            .body(bytes)
            .send()
            .await
            .map_err(super::transport::classify)?;
        let status = response.status().as_u16();
        let body = read_bounded(response).await?;
        if status == 200 {
            serde_json::from_slice(&body).map_err(|e| refused(status, e.to_string().as_bytes()))
        } else {
            Err(refused(status, &body))
        }
    }

    async fn get_chunk(
        &self,
        token: &str,
        sha256: &str,
        index: u32,
    ) -> Result<Option<(Vec<u8>, String)>, AttachmentError> {
        let response = self
            .http_client()
            .get(format!(
                "{}/v1/attachments/{sha256}/chunks/{index}",
                self.base_url()
            ))
            .bearer_auth(token)
            .send()
            .await
            .map_err(super::transport::classify)?;
        let status = response.status().as_u16();
        let digest = response
            .headers()
            .get("x-chunk-sha256")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = read_bounded(response).await?;
        match status {
            200 => Ok(Some((body, digest))),
            404 => Ok(None),
            _ => Err(refused(status, &body)),
        }
    }
}

/// Runs `work` on the store on the blocking pool: reading or writing a chunk (up to 1 MiB of
/// SQLCipher pages) or listing contents must not hold a runtime thread, nor wait for the store's
/// lock on one.
async fn with_store<T, F>(store: &Arc<Mutex<DeviceStore>>, work: F) -> Result<T, AttachmentError>
where
    T: Send + 'static,
    F: FnOnce(&mut DeviceStore) -> crate::Result<T> + Send + 'static,
{
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || {
        work(
            &mut store
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    })
    .await
    .map_err(|err| {
        AttachmentError::Store(crate::Error::Document(format!(
            "attachment store work: {err}"
        )))
    })?
    .map_err(AttachmentError::Store)
}

/// Uploads the contents only this device holds, first first, within the policy's budget.
pub async fn upload_pending<A: AttachmentTransport>(
    store: &Arc<Mutex<DeviceStore>>,
    transport: &A,
    token: &str,
    policy: &AttachmentPolicy,
    progress: &(dyn Fn(AttachmentProgress) + Send + Sync),
) -> Result<AttachmentReport, AttachmentError> {
    let mut report = AttachmentReport::default();
    let budget = policy.budget();
    // Bounded: one pass over at most this many contents per run.
    let pending = with_store(store, |s| s.pending_attachment_uploads(1_000)).await?;
    for (sha256, size) in pending {
        if report.chunk_bytes >= budget {
            report.deferred += 1;
            continue;
        }
        let Some(remote) = transport.status(token, &sha256).await? else {
            report.unknown += 1;
            continue;
        };
        if remote.complete {
            // Already whole there (sent before a lost answer, or the same content from another
            // tablet): nothing to send, but the app's progress still ends at its size.
            progress(AttachmentProgress {
                sha256: sha256.clone(),
                upload: true,
                done_bytes: size,
                total_bytes: size,
            });
            let hash = sha256.clone();
            with_store(store, move |s| s.mark_attachment_on_server(&hash)).await?;
            report.completed.push(sha256);
            continue;
        }
        let chunk_size = if remote.received > 0 && remote.chunk_size > 0 {
            remote.chunk_size
        } else {
            policy.chunk_size
        };
        let count = size.div_ceil(u64::from(chunk_size.max(1)));
        let mut index = remote.received;
        let mut complete = false;
        let mut deferred = false;
        // Bounded: the index grows with every accepted chunk, and each answer is the server's
        // resume point; at most `count` + 1 requests for one content.
        for _ in 0..=count {
            if u64::from(index) >= count {
                break;
            }
            let offset = u64::from(index) * u64::from(chunk_size);
            let hash = sha256.clone();
            let bytes = with_store(store, move |s| {
                s.attachment_range(&hash, offset, chunk_size as usize)
            })
            .await?;
            if report.chunk_bytes + bytes.len() as u64 > budget {
                deferred = true;
                break;
            }
            let sent = bytes.len() as u64;
            let answer = transport
                .put_chunk(token, &sha256, size, chunk_size, index, bytes)
                .await?;
            report.chunk_bytes += sent;
            progress(AttachmentProgress {
                sha256: sha256.clone(),
                upload: true,
                done_bytes: (u64::from(answer.received) * u64::from(chunk_size)).min(size),
                total_bytes: size,
            });
            if answer.complete {
                complete = true;
                break;
            }
            index = answer.received;
        }
        if complete {
            let hash = sha256.clone();
            with_store(store, move |s| s.mark_attachment_on_server(&hash)).await?;
            report.completed.push(sha256);
        } else if deferred {
            report.deferred += 1;
        }
    }
    Ok(report)
}

/// Downloads one content named by a record of this device (when the user opens it), resuming
/// at the first chunk missing here. Returns the chunk bytes received.
pub async fn download<A: AttachmentTransport>(
    store: &Arc<Mutex<DeviceStore>>,
    transport: &A,
    token: &str,
    sha256: &str,
    progress: &(dyn Fn(AttachmentProgress) + Send + Sync),
) -> Result<u64, AttachmentError> {
    let Some(remote) = transport.status(token, sha256).await? else {
        return Err(AttachmentError::NotOnServer(sha256.to_owned()));
    };
    if !remote.complete || remote.chunk_size == 0 {
        return Err(AttachmentError::NotOnServer(sha256.to_owned()));
    }
    let chunk_size = remote.chunk_size;
    let count = remote.size.div_ceil(u64::from(chunk_size));
    let hash = sha256.to_owned();
    let start = with_store(store, move |s| {
        s.attachment_resume_offset(&hash, chunk_size as usize)
    })
    .await?;
    let mut index = u32::try_from(start / u64::from(chunk_size)).unwrap_or(u32::MAX);
    let mut received = 0;
    while u64::from(index) < count {
        let Some((bytes, digest)) = transport.get_chunk(token, sha256, index).await? else {
            return Err(AttachmentError::NotOnServer(sha256.to_owned()));
        };
        if hex::encode(Sha256::digest(&bytes)) != digest {
            return Err(AttachmentError::CorruptChunk(sha256.to_owned()));
        }
        received += bytes.len() as u64;
        let offset = u64::from(index) * u64::from(chunk_size);
        let length = bytes.len() as u64;
        let (hash, size) = (sha256.to_owned(), remote.size);
        with_store(store, move |s| {
            s.store_attachment_range(&hash, size, offset, &bytes)
        })
        .await?;
        progress(AttachmentProgress {
            sha256: sha256.to_owned(),
            upload: false,
            done_bytes: (offset + length).min(remote.size),
            total_bytes: remote.size,
        });
        index += 1;
    }
    let hash = sha256.to_owned();
    with_store(store, move |s| s.mark_attachment_on_server(&hash)).await?;
    Ok(received)
}

/// Downloads what the records name and this device lacks, first first, within the policy's
/// budget, then evicts beyond the cache bound.
pub async fn prefetch<A: AttachmentTransport>(
    store: &Arc<Mutex<DeviceStore>>,
    transport: &A,
    token: &str,
    policy: &AttachmentPolicy,
    progress: &(dyn Fn(AttachmentProgress) + Send + Sync),
) -> Result<AttachmentReport, AttachmentError> {
    let mut report = AttachmentReport::default();
    let budget = policy.budget().min(policy.cache_bytes);
    let missing = with_store(store, |s| s.missing_attachments(1_000)).await?;
    for (sha256, size) in missing {
        if report.chunk_bytes.saturating_add(size) > budget {
            report.deferred += 1;
            continue;
        }
        match download(store, transport, token, &sha256, progress).await {
            Ok(bytes) => {
                report.chunk_bytes += bytes;
                report.completed.push(sha256);
            }
            // Not uploaded yet by the tablet that attached it: later.
            Err(AttachmentError::NotOnServer(_)) => report.unknown += 1,
            Err(other) => return Err(other),
        }
    }
    let cache_bytes = policy.cache_bytes;
    with_store(store, move |s| s.evict_attachments(cache_bytes)).await?;
    Ok(report)
}

/// What a whole sync did: the records, then the attachment channel.
#[derive(Debug)]
pub struct FullSyncReport {
    /// The records' sync.
    pub records: super::SyncReport,
    /// The attachment channel: what it did, or why it stopped (the records' sync stands
    /// either way; the next sync resumes at the last whole chunk).
    pub attachments: Result<AttachmentReport, AttachmentError>,
}

impl<T: Transport + AttachmentTransport> SyncClient<T> {
    /// A whole sync as the background work runs it: the records first ([`SyncClient::sync`];
    /// its failure is the result), then the attachment channel within one byte budget:
    /// this device's pending contents (receipts and identity cards first), then, when the
    /// policy asks for it, the commune's contents this device lacks, and eviction beyond the
    /// cache bound. On a metered link the attachments get `metered_budget_bytes` in all; on an
    /// unmetered one no budget. Records never wait for an attachment.
    pub async fn sync_with_attachments(
        &self,
        policy: &AttachmentPolicy,
        progress: &(dyn Fn(super::SyncProgress) + Send + Sync),
        attachment_progress: &(dyn Fn(AttachmentProgress) + Send + Sync),
    ) -> Result<FullSyncReport, super::SyncError> {
        let records = self.sync(progress).await?;
        let attachments = async {
            let mut report = self.upload_attachments(policy, attachment_progress).await?;
            if policy.prefetch {
                let left = AttachmentPolicy {
                    metered_budget_bytes: policy
                        .metered_budget_bytes
                        .saturating_sub(report.chunk_bytes),
                    ..policy.clone()
                };
                let fetched = self
                    .prefetch_attachments(&left, attachment_progress)
                    .await?;
                report.chunk_bytes += fetched.chunk_bytes;
                report.deferred += fetched.deferred;
                report.unknown += fetched.unknown;
                report.completed.extend(fetched.completed);
            }
            Ok(report)
        }
        .await;
        if let Err(err) = &attachments {
            tracing::info!(%err, "attachment channel stopped; the next sync resumes it");
        }
        Ok(FullSyncReport {
            records,
            attachments,
        })
    }

    /// Uploads this device's pending attachments after a record sync ([`upload_pending`]).
    pub async fn upload_attachments(
        &self,
        policy: &AttachmentPolicy,
        progress: &(dyn Fn(AttachmentProgress) + Send + Sync),
    ) -> Result<AttachmentReport, AttachmentError> {
        upload_pending(
            self.store(),
            self.transport(),
            self.token(),
            policy,
            progress,
        )
        .await
    }

    /// Downloads one attachment's content ([`download`]).
    pub async fn download_attachment(
        &self,
        sha256: &str,
        progress: &(dyn Fn(AttachmentProgress) + Send + Sync),
    ) -> Result<u64, AttachmentError> {
        download(
            self.store(),
            self.transport(),
            self.token(),
            sha256,
            progress,
        )
        .await
    }

    /// Prefetches the commune's attachments within the policy ([`prefetch`]).
    pub async fn prefetch_attachments(
        &self,
        policy: &AttachmentPolicy,
        progress: &(dyn Fn(AttachmentProgress) + Send + Sync),
    ) -> Result<AttachmentReport, AttachmentError> {
        prefetch(
            self.store(),
            self.transport(),
            self.token(),
            policy,
            progress,
        )
        .await
    }
}
