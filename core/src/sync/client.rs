//! The sync client: rounds of push-and-pull against the provincial server, with retries.
//!
//! Contract: [`SyncClient::sync`] runs rounds until nothing is left (or
//! [`SyncConfig::max_rounds`]): each round is one [`SyncRequest`] that pushes one size-bounded
//! outbox batch and pulls one size-bounded feed batch after the store's cursor. A sync with
//! nothing to do is exactly one request. Each request is retried on transport errors and on
//! 429/500/502/503/504 with exponential backoff and full jitter (honouring `Retry-After`), at most
//! [`SyncConfig::max_attempts`] times; any other refusal ends the sync with a [`SyncError`] that
//! says what to do about it.
//!
//! One bad record never stops a sync: a pushed document the server refuses (its verdict names
//! it, protocol 3) is set aside in the store's quarantine with the reason and is not pushed
//! again until the app decides, while every other document of the batch is acknowledged and the
//! rounds go on; a pulled document this build cannot read is kept there too and the cursor moves
//! on ([`crate::store::quarantine`]). Each sync first tries again the incoming documents that an
//! older build could not read. "Upgrade required" is remembered in the store for this build (the
//! background policy stops until the app's version changes) and cleared by any successful sync.
//!
//! A sync cut at any instant (network, crash, kill) loses nothing and applies nothing twice:
//! - pushed documents leave the outbox only after a 200 whose body decoded, and only up to the
//!   heads they were taken at; when a response is lost the same changes are sent again, and the
//!   server, which stores changes by hash, accepts them again without storing them twice;
//! - a pulled batch and the cursor after it commit in one SQLite transaction, so a cut before
//!   the commit means the same batch is pulled again, and a cut after means it is not; Automerge
//!   ignores changes it already has in any case;
//! - acknowledgement and pull are separate transactions, and either order of a crash between
//!   them is one of the two cases above.
//!
//! The store lock is never held across an `.await`: each round reads the store, releases it,
//! talks to the server, then takes it again to apply the answer. When a round pushed nothing and
//! the feed goes on (a new tablet pulling its commune), the next round's request goes out while
//! the answer is applied on a blocking thread: pages are still applied one at a time, in order,
//! each with the cursor after it, and a page fetched ahead of a failed apply is dropped unread.
//! Local edits can go on during a sync; an edit made while its document's batch is in flight keeps
//! the document in the outbox.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::transport::{HttpRequest, HttpResponse, Transport, TransportError};
use crate::catalogue::delta::{CalendarUpdate, CatalogueDelta, CatalogueHeld};
use crate::codec::DocCodec;
use crate::numbering::{NumberGrant, NumberState};
use crate::protocol::{
    CONTENT_TYPE, CatalogueUpdate, Extensions, Limits, PROTOCOL_VERSION, PullRequest, PushDoc,
    SyncRequest, SyncResponse, WireError,
};
use crate::record::{DeviceId, RecordId};
use crate::store::{DeviceStore, PendingDoc, PullDoc, PullReport, RefusedDoc};

/// Path of the sync endpoint below the server's base URL.
pub const SYNC_PATH: &str = "/v1/sync";
/// Path of the enrollment endpoint below the server's base URL.
pub const ENROLL_PATH: &str = "/v1/enroll";

/// Tunables of [`SyncClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// Change bytes pushed in the first request (at least one document is always sent); later
    /// batches adapt to the link, see [`SyncConfig::target_request_time`]. Default 256 KiB: a
    /// few seconds at 2G speed once compressed, short enough to get through between drops.
    pub push_batch_bytes: usize,
    /// Change bytes asked of the server in the first request; adapts like pushes. Default
    /// 1 MiB (about 90 KB compressed: seven seconds at 2G speed before it adapts down, and a
    /// first batch large enough to compress well on a good link).
    pub pull_batch_bytes: u32,
    /// Upper bound for adapted push batches. Default 4 MiB: on a fast link, larger batches
    /// compress better (the record changes of a batch share most of their structure).
    pub max_push_batch_bytes: usize,
    /// Upper bound for adapted pull batches (the server applies its own cap too). Default 4 MiB.
    pub max_pull_batch_bytes: u32,
    /// Batches grow after an exchange faster than half this (×2, or ×4 under an eighth) and halve
    /// after one slower than twice this or after a failed attempt, so that a request on a poor link stays short enough
    /// to get through between drops while a good link moves large, well-compressed batches.
    /// Default 4 s.
    pub target_request_time: Duration,
    /// Attempts per request, the first included. Default 6.
    pub max_attempts: u32,
    /// Upper bound of the random wait before the first retry, doubled for each next one.
    /// Default 1 s.
    pub initial_backoff: Duration,
    /// Cap of the wait between attempts. A `Retry-After` longer than this ends the sync instead
    /// of keeping the caller waiting: the background policy will come back later. Default 60 s.
    pub max_backoff: Duration,
    /// Upper bound on rounds in one sync, against a server that always says `more`.
    /// Default 10 000.
    pub max_rounds: u32,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            push_batch_bytes: 256 * 1024,
            pull_batch_bytes: 1024 * 1024,
            max_push_batch_bytes: 4 * 1024 * 1024,
            max_pull_batch_bytes: 4 * 1024 * 1024,
            target_request_time: Duration::from_secs(4),
            max_attempts: 6,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_rounds: 10_000,
        }
    }
}

/// What one sync did. Serializes to JSON for the device CLI and the app's diagnostics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncReport {
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Bytes sent in completed exchanges (request lines, headers and bodies).
    pub bytes_up: u64,
    /// Bytes received in completed exchanges (status lines, headers and bodies).
    pub bytes_down: u64,
    /// Wall time of the sync, in seconds.
    pub seconds: f64,
    /// Documents the server acknowledged (a document acknowledged in two rounds counts twice).
    pub pushed_docs: u64,
    /// Changes in the acknowledged documents.
    pub pushed_changes: u64,
    /// Documents created or changed on this device by pulled changes.
    pub pulled_docs: u64,
    /// Changes received in the feed for documents that were not rejected.
    pub pulled_changes: u64,
    /// Documents that hold conflicts after a pull (each counted once).
    pub conflicts: u64,
    /// Pulled documents this build could not apply (corrupt, incomplete, wrong kind, unreadable):
    /// kept in the quarantine and retried, never skipped.
    pub rejected: u64,
    /// Pushed documents the server refused in this sync: set aside in the quarantine with the
    /// server's reason (the sync itself succeeds).
    pub refused: u64,
    /// Documents in the quarantine when the sync ended, both directions (see
    /// [`DeviceStore::quarantined`]).
    pub quarantined: u64,
    /// Attempts that were repeats of a failed one.
    pub retries: u64,
    /// Documents still waiting to be pushed when the sync ended.
    pub pending_docs: u64,
}

/// What a sync is about to do next, as reported in [`SyncProgress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncPhase {
    /// Local changes remain to be pushed.
    Pushing,
    /// The server has more of the feed to send.
    Pulling,
    /// That was the last request.
    Done,
}

/// Progress of a running sync, reported after every completed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SyncProgress {
    /// What comes next.
    pub phase: SyncPhase,
    /// HTTP requests sent so far, retries included.
    pub requests: u64,
    /// Bytes sent so far.
    pub bytes_up: u64,
    /// Bytes received so far.
    pub bytes_down: u64,
    /// Documents acknowledged by the server so far.
    pub pushed_docs: u64,
    /// Documents created or changed by pulls so far.
    pub pulled_docs: u64,
    /// Documents still waiting to be pushed.
    pub pending_docs: u64,
}

/// Why a sync or an enrollment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The server could not be reached, or the link kept failing, after every attempt.
    #[error("offline: {0}")]
    Offline(String),
    /// The server's certificate is not trusted (wrong CA, expired, another host name, no pinned
    /// key; the message says which): not retried, since retrying will not change the
    /// certificate. Check the server URL, the trust configuration and the tablet's clock.
    #[error("the server is not trusted: {0}")]
    UntrustedServer(String),
    /// The server does not know this token (or the enrollment code is wrong or used): enroll
    /// again.
    #[error("the server does not accept this device's credential")]
    Unauthorized,
    /// The province revoked this device.
    #[error("this device has been revoked by the province")]
    Revoked,
    /// The province revoked this device and ordered its data wiped (HTTP 403 `wiped`): the
    /// store must be destroyed.
    #[error("the province ordered this device wiped: {0}")]
    Wiped(String),
    /// The server no longer accepts this version of the app (HTTP 426 `upgrade_required`):
    /// nothing will sync until the app is upgraded.
    #[error("this version of the app is too old for the server, upgrade it: {0}")]
    UpgradeRequired(String),
    /// The request touched records outside this device's scope.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The server refused the request and retrying the same request will not help.
    #[error("the server refused the request ({status} {code}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Error code from the body (`malformed`, `too_large`, `rate_limited`, ...).
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The server failed on every attempt.
    #[error("server error: {0}")]
    Server(String),
    /// The server's answer is not a valid body.
    #[error("bad response from the server: {0}")]
    Protocol(#[from] WireError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] crate::Error),
}

/// Where an enrolled device may read and write.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One commune, by code.
    Commune(String),
    /// The whole province.
    Province,
}

/// The credential the server issues at enrollment. Keep `token` in the platform keystore.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The device the credential is bound to.
    pub device_id: DeviceId,
    /// Secret bearer token for [`SyncClient`].
    pub token: String,
    /// Where the device may read and write.
    pub scope: Scope,
}

impl Credentials {
    /// The commune the credential is bound to (`None` for a province-wide one): what
    /// [`DeviceStore::set_enrolled_commune`] records at enrollment.
    pub fn commune(&self) -> Option<&str> {
        match &self.scope {
            Scope::Commune(code) => Some(code),
            Scope::Province => None,
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("device_id", &self.device_id)
            .field("token", &"<redacted>")
            .field("scope", &self.scope)
            .finish()
    }
}

/// Enrolls this device with a one-time code from the province and returns its credential.
///
/// A person is waiting, so transport failures and 5xx are retried only briefly (3 attempts,
/// waits of at most 1 s then 2 s). A wrong or used code is [`SyncError::Unauthorized`]; too many
/// tries is [`SyncError::Rejected`] with code `rate_limited` (not retried).
pub async fn enroll<T: Transport>(
    transport: &T,
    code: &str,
    device_id: DeviceId,
    label: &str,
) -> Result<Credentials, SyncError> {
    enroll_with_key(transport, code, device_id, label, None).await
}

/// [`enroll`], registering the device's public key ([`DeviceStore::public_key`]) with the
/// credential; at re-enrollment it replaces the device's previous key.
pub async fn enroll_with_key<T: Transport>(
    transport: &T,
    code: &str,
    device_id: DeviceId,
    label: &str,
    public_key: Option<crate::keys::PublicKey>,
) -> Result<Credentials, SyncError> {
    #[derive(Serialize)]
    struct EnrollRequest<'a> {
        code: &'a str,
        device_id: DeviceId,
        label: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        public_key: Option<String>,
    }
    let body = serde_json::to_vec(&EnrollRequest {
        code,
        device_id,
        label,
        public_key: public_key.map(|k| k.to_hex()),
    })
    .map_err(|e| crate::Error::Document(e.to_string()))?;
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(4),
        retry_rate_limited: false,
    };
    let mut counters = Counters::default();
    let response = exchange(
        transport,
        &retry,
        HttpRequest {
            path: ENROLL_PATH.to_owned(),
            bearer: None,
            content_type: "application/json".to_owned(),
            body,
        },
        &mut counters,
    )
    .await?;
    serde_json::from_slice(&response.body)
        .map_err(|e| SyncError::Protocol(WireError::Malformed(format!("enrollment response: {e}"))))
}

mod keys;
pub use keys::KeyRefresh;

use crate::keys::wire::{DeviceKeysDelta, DeviceKeysRequest};

/// Syncs one device store with the server over a [`Transport`].
pub struct SyncClient<T: Transport> {
    transport: T,
    store: Arc<Mutex<DeviceStore>>,
    token: String,
    config: SyncConfig,
    codec: Mutex<DocCodec>,
    limits: Limits,
    /// Held for a whole sync: two syncs of one store at once would race on the cursor.
    running: tokio::sync::Mutex<()>,
    /// Current push and pull batch sizes, adapted to the link across syncs.
    windows: Mutex<(Window, Window)>,
}

/// The correction from the device clock to the server's, from one exchange: none within a
/// minute (clocks that close are trusted as they are, and the round trip blurs the rest).
pub(crate) fn clock_offset(server_ms: i64, device_ms: i64) -> i64 {
    let offset = server_ms.saturating_sub(device_ms);
    if offset.saturating_abs() < 60_000 {
        0
    } else {
        offset
    }
}

/// A batch size that grows on a link that takes it and shrinks on one that does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    current: u64,
    min: u64,
    max: u64,
}

impl Window {
    /// A window starting at `initial`, adapting between a floor (16 KiB, or `initial` if
    /// smaller) and `max` (or `initial` if larger).
    pub(crate) fn new(initial: u64, max: u64) -> Self {
        let min = initial.clamp(1, 16 * 1024);
        Window {
            current: initial.max(1),
            min,
            max: max.max(initial).max(1),
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.current
    }

    /// After an exchange that needed no retry and took `took`: ×4 when far under the target
    /// (a fast link reaches large, well-compressed batches in a couple of requests), ×2 when
    /// under half of it, ÷2 when over twice it.
    pub(crate) fn succeeded(&mut self, took: Duration, target: Duration) {
        if took < target / 8 {
            self.current = self.current.saturating_mul(4).min(self.max);
        } else if took < target / 2 {
            self.current = self.current.saturating_mul(2).min(self.max);
        } else if took > target.saturating_mul(2) {
            self.shrink();
        }
    }

    /// After a failed attempt (a cut, a timeout, a server error).
    pub(crate) fn shrink(&mut self) {
        self.current = (self.current / 2).max(self.min);
    }
}

impl<T: Transport> std::fmt::Debug for SyncClient<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> SyncClient<T> {
    /// A client for `store`, authenticating with the device `token` from [`enroll`].
    pub fn new(
        transport: T,
        store: Arc<Mutex<DeviceStore>>,
        token: impl Into<String>,
        config: SyncConfig,
    ) -> Result<Self, SyncError> {
        Ok(SyncClient {
            transport,
            store,
            token: token.into(),
            codec: Mutex::new(DocCodec::new()?),
            limits: Limits::default(),
            running: tokio::sync::Mutex::new(()),
            windows: Mutex::new((
                Window::new(
                    config.push_batch_bytes as u64,
                    config.max_push_batch_bytes as u64,
                ),
                Window::new(
                    u64::from(config.pull_batch_bytes),
                    u64::from(config.max_pull_batch_bytes),
                ),
            )),
            config,
        })
    }

    /// The store this client syncs.
    pub fn store(&self) -> &Arc<Mutex<DeviceStore>> {
        &self.store
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The configuration.
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// The device credential (for the attachment channel).
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Pushes every pending change and pulls the feed until nothing is left, reporting progress
    /// after each request. A second call while one runs waits for it, then runs (cheaply).
    ///
    /// Needs a tokio runtime with timers (for the waits between retries) and its blocking pool (a
    /// page of a long pull is applied there while the next one is fetched); it starts none.
    pub async fn sync(
        &self,
        progress: &(dyn Fn(SyncProgress) + Send + Sync),
    ) -> Result<SyncReport, SyncError> {
        let _running = self.running.lock().await;
        let result = self.sync_rounds(progress).await;
        // What the background policy needs to know across restarts: "upgrade required" holds
        // for this build until a sync succeeds (or another build opens the store).
        let remembered = match &result {
            Err(SyncError::UpgradeRequired(_)) => self.lock_store().set_upgrade_required(true),
            Ok(_) => {
                let mut store = self.lock_store();
                match store.upgrade_required() {
                    Ok(true) => store.set_upgrade_required(false),
                    Ok(false) => Ok(()),
                    Err(err) => Err(err),
                }
            }
            Err(_) => Ok(()),
        };
        if let Err(err) = remembered {
            tracing::warn!(%err, "could not record the upgrade state");
        }
        result
    }

    async fn sync_rounds(
        &self,
        progress: &(dyn Fn(SyncProgress) + Send + Sync),
    ) -> Result<SyncReport, SyncError> {
        let started = Instant::now();
        let retry = RetryPolicy {
            max_attempts: self.config.max_attempts,
            initial_backoff: self.config.initial_backoff,
            max_backoff: self.config.max_backoff,
            retry_rate_limited: true,
        };
        let mut counters = Counters::default();
        let mut report = SyncReport::default();
        // Documents an older build could not read: this one may (on a blocking thread: after an
        // upgrade this decodes up to the quarantine's bound once).
        let store = Arc::clone(&self.store);
        let recovered = tokio::task::spawn_blocking(move || {
            store
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retry_incoming_quarantine()
        })
        .await
        .map_err(|err| {
            SyncError::Store(crate::Error::Document(format!(
                "retrying quarantined documents: {err}"
            )))
        })??;
        report.pulled_docs += (recovered.created + recovered.updated) as u64;
        // Documents the server said it lacked the base of, already sent whole in this sync:
        // a second "missing deps" for one of them is not progress (a server bug, not a loop).
        let mut sent_whole: HashSet<RecordId> = HashSet::new();
        let mut conflicted: HashSet<RecordId> = HashSet::new();
        let mut rounds = 0u32;
        // The next round's exchange when it was made while this round's answer was applied.
        let mut ahead: Option<Sent> = None;
        loop {
            rounds += 1;
            let sent = match ahead.take() {
                Some(sent) => sent,
                None => {
                    let prepared = self.prepare()?;
                    self.send(prepared, &retry, &mut counters).await
                }
            };
            let Sent {
                round:
                    Round {
                        mut batch,
                        change_counts,
                        cursor_sent,
                        device_time_sent,
                        numbers_sent,
                        held_sent,
                    },
                sent_at,
                took,
                retried,
                http,
            } = sent;
            let http = match http {
                Ok(http) => http,
                Err(err) => {
                    let mut windows = self.lock_windows();
                    windows.0.shrink();
                    windows.1.shrink();
                    tracing::info!(%err, rounds, "sync failed");
                    return Err(err);
                }
            };
            {
                let target = self.config.target_request_time;
                let mut windows = self.lock_windows();
                if retried {
                    windows.0.shrink();
                    windows.1.shrink();
                } else {
                    windows.0.succeeded(took, target);
                    windows.1.succeeded(took, target);
                }
            }
            // A server restored from a backup (its store epoch changed) may lack what it
            // acknowledged, and its feed positions mean other changes now: everything goes again
            // from the next round on, and this answer (of the old view) is dropped unread.
            if let Some(epoch) = http.store_epoch.as_deref()
                && self.note_store_epoch(epoch)?
            {
                continue;
            }
            let response = SyncResponse::decode(&mut self.lock_codec(), &http.body, &self.limits)?;
            drop(http);
            // Blocks of dossier numbers (an extension a feature may refuse: the rest of the
            // answer stands, and the next sync asks again).
            let numbers_granted = match response.extensions.get::<NumberGrant>() {
                Ok(grant) => grant,
                Err(err) => {
                    tracing::warn!(%err, "dossier number grant refused");
                    None
                }
            };

            // Every pushed document is stored but those the server lists, by position in the
            // batch, as lacking their base (positions past the batch mean nothing).
            let missing: HashSet<usize> = response
                .missing_deps
                .iter()
                .filter_map(|&i| usize::try_from(i).ok())
                .collect();
            // A refusal wins over everything else said of the same position; the first refusal
            // of a position counts.
            let mut refusals: HashMap<usize, (String, String)> = HashMap::new();
            for refusal in response.refused {
                if let Ok(position) = usize::try_from(refusal.position) {
                    refusals
                        .entry(position)
                        .or_insert((refusal.code, refusal.message));
                }
            }
            let batch_was_empty = batch.is_empty();
            let mut acked: Vec<PendingDoc> = Vec::new();
            let mut resend_whole: Vec<RecordId> = Vec::new();
            let mut refused: Vec<RefusedDoc> = Vec::new();
            for (position, (doc, changes)) in batch.drain(..).zip(change_counts).enumerate() {
                if let Some((code, message)) = refusals.remove(&position) {
                    tracing::warn!(id = %doc.id, code, message, "pushed document refused");
                    refused.push(RefusedDoc {
                        id: doc.id,
                        kind: doc.kind,
                        code,
                        message,
                    });
                } else if missing.contains(&position) {
                    resend_whole.push(doc.id);
                } else {
                    report.pushed_changes += changes;
                    acked.push(doc);
                }
            }
            let pushed_any = !acked.is_empty();
            let refused_any = !refused.is_empty();
            report.refused += refused.len() as u64;
            let mut newly_whole = false;
            for id in &resend_whole {
                newly_whole |= sent_whole.insert(*id);
            }
            let pull_moved = response.next_cursor != cursor_sent || !response.feed.is_empty();
            let feed_changes: u64 = response
                .feed
                .iter()
                .map(|doc| doc.changes.len() as u64)
                .sum();
            let mut received_at = 0i64;
            let pulled: Vec<PullDoc> = response
                .feed
                .into_iter()
                .map(|doc| {
                    received_at = received_at.saturating_add(doc.received_delta);
                    PullDoc {
                        id: doc.id,
                        kind: doc.kind,
                        changes: doc.changes,
                        received_at,
                    }
                })
                .collect();

            // Nothing was pushed and the feed goes on: the next page is asked for while this one
            // is applied (on a blocking thread). Pages are still applied in order, each with its
            // cursor; an exchange ahead of a failed apply is dropped unread.
            // Not while a catalogue page is installed: the next page's position depends on it.
            let fetch_ahead = batch_was_empty
                && response.more
                && pull_moved
                && rounds < self.config.max_rounds
                && !response
                    .extensions
                    .tags()
                    .any(|tag| tag == <CatalogueDelta as crate::protocol::WireExtension>::TAG);
            let acked_docs = acked.len() as u64;
            let half_trip = i64::try_from(sent_at.elapsed().as_millis() / 2).unwrap_or(0);
            let catalogue_sent = response.catalogue.as_ref().map(|c| c.version);
            // A key list delta that does not decode is dropped: the next sync asks again from
            // the version held, and records keep flowing.
            let keys = response
                .extensions
                .get::<DeviceKeysDelta>()
                .unwrap_or_else(|err| {
                    tracing::warn!(%err, "device keys delta refused");
                    None
                });
            // The catalogue by delta (tags 5 and 6): a page or a calendar that does not decode is
            // dropped, and the next round asks again from what the device holds.
            let catalogue_delta =
                response
                    .extensions
                    .get::<CatalogueDelta>()
                    .unwrap_or_else(|err| {
                        tracing::warn!(%err, "catalogue delta refused");
                        None
                    });
            let calendar = response
                .extensions
                .get::<CalendarUpdate>()
                .unwrap_or_else(|err| {
                    tracing::warn!(%err, "calendar update refused");
                    None
                });
            let catalogue_more = catalogue_delta
                .as_ref()
                .and_then(|delta| delta.more.clone());
            let answer = Answer {
                catalogue_delta,
                calendar,
                acked,
                refused,
                resend_whole,
                pulled,
                next_cursor: response.next_cursor,
                catalogue: response.catalogue,
                keys,
                server_time: response.server_time,
                // The server's clock at the middle of the exchange against ours: a tablet whose
                // clock is wrong stamps receipts (and due dates) by the server's time instead.
                device_time_at_server: device_time_sent.saturating_add(half_trip),
                numbers_sent,
                numbers_granted,
            };
            let applied = if fetch_ahead {
                let prepared = self.prepare_pull(answer.next_cursor, catalogue_sent)?;
                let store = Arc::clone(&self.store);
                let applying = tokio::task::spawn_blocking(move || answer.apply(&store));
                ahead = Some(self.send(prepared, &retry, &mut counters).await);
                match applying.await {
                    Ok(applied) => applied,
                    Err(err) => match err.try_into_panic() {
                        Ok(panic) => std::panic::resume_unwind(panic),
                        Err(err) => Err(SyncError::Store(crate::Error::Document(format!(
                            "applying a pulled batch: {err}"
                        )))),
                    },
                }
            } else {
                answer.apply(&self.store)
            };
            let Applied {
                pull: pull_report,
                pending,
                quarantined,
                catalogue_installed,
            } = applied?;
            report.quarantined = quarantined;

            report.pushed_docs += acked_docs;
            for (id, reason) in &pull_report.rejected {
                tracing::warn!(%id, reason, "pulled document refused");
            }
            report.pulled_changes += feed_changes.saturating_sub(pull_report.rejected_changes);
            report.pulled_docs += (pull_report.created + pull_report.updated) as u64;
            report.rejected += pull_report.rejected.len() as u64;
            conflicted.extend(pull_report.conflicted.iter().copied());
            report.conflicts = conflicted.len() as u64;
            report.pending_docs = pending;
            counters.copy_to(&mut report);

            // Go on while the server has more feed (and the cursor moves), or while pushes
            // remain and this round moved them forward (a refused document left the outbox's
            // queue). A new edit after a pull-only round is new work too.
            let push_progress = pushed_any || refused_any || newly_whole || batch_was_empty;
            let more_push = pending > 0 && push_progress;
            // A paged catalogue goes on while its position moves (a page installed).
            let more_catalogue = catalogue_more.is_some()
                && catalogue_more.as_ref() != held_sent.resume.as_ref()
                && catalogue_installed;
            let more_pull = (response.more && pull_moved) || more_catalogue;
            let go_on = (more_push || more_pull) && rounds < self.config.max_rounds;
            if (more_push || more_pull) && !go_on {
                tracing::warn!(rounds, "sync stopped at the round limit");
            }
            let phase = if !go_on {
                SyncPhase::Done
            } else if more_push {
                SyncPhase::Pushing
            } else {
                SyncPhase::Pulling
            };
            progress(SyncProgress {
                phase,
                requests: report.requests,
                bytes_up: report.bytes_up,
                bytes_down: report.bytes_down,
                pushed_docs: report.pushed_docs,
                pulled_docs: report.pulled_docs,
                pending_docs: pending,
            });
            if !go_on {
                report.seconds = started.elapsed().as_secs_f64();
                tracing::info!(?report, "sync done");
                return Ok(report);
            }
        }
    }

    /// Remembers the server store's epoch; `true` when it is one never seen after another (the
    /// server was restored: the store then re-queues everything, see
    /// [`DeviceStore::server_restored`]).
    fn note_store_epoch(&self, epoch: &str) -> Result<bool, SyncError> {
        let mut store = self.lock_store();
        let known = store.server_store_epochs()?;
        if known.is_empty() {
            store.set_server_store_epoch(epoch)?;
            Ok(false)
        } else if known.iter().any(|k| k == epoch) {
            Ok(false)
        } else {
            store.server_restored(epoch)?;
            Ok(true)
        }
    }

    /// Sends a prepared round (with retries) and keeps what its answer needs.
    async fn send(&self, prepared: Prepared, retry: &RetryPolicy, counters: &mut Counters) -> Sent {
        let sent_at = Instant::now();
        let retries_before = counters.retries;
        let http = exchange(&self.transport, retry, prepared.request, counters).await;
        Sent {
            round: prepared.round,
            sent_at,
            took: sent_at.elapsed(),
            retried: counters.retries > retries_before,
            http,
        }
    }

    /// Reads the next round from the store (one outbox batch and the feed after the cursor) and
    /// encodes it; the store lock is released before encoding.
    fn prepare(&self) -> Result<Prepared, SyncError> {
        let (push_window, pull_window) = {
            let windows = self.lock_windows();
            (windows.0.get(), windows.1.get())
        };
        let (batch, request, numbers) = {
            let mut store = self.lock_store();
            let mut batch =
                store.pending_push(usize::try_from(push_window).unwrap_or(usize::MAX))?;
            let cursor = store.sync_cursor()?;
            // What this device's dossier numbers are at: the server answers with blocks.
            let numbers = store.number_state()?;
            let mut extensions = Extensions::new();
            extensions.insert(&numbers)?;
            // The catalogue by delta: the server answers what changed after this (tag 5/6).
            let held = store.catalogue_held()?;
            extensions.insert(&held)?;
            let request = SyncRequest {
                protocol: PROTOCOL_VERSION,
                device_time: store.clock().now_ms(),
                // The changes move into the request; the batch keeps what the acknowledgement
                // needs (id, heads, outbox sequence).
                push: batch
                    .iter_mut()
                    .map(|doc| PushDoc {
                        // A whole history carries the id in its first change.
                        id: (!doc.whole).then_some(doc.id),
                        kind: doc.kind,
                        changes: std::mem::take(&mut doc.changes),
                    })
                    .collect(),
                pull: Some(PullRequest {
                    cursor,
                    max_bytes: u32::try_from(pull_window).unwrap_or(u32::MAX),
                }),
                catalogue_version: held.version,
                pending_docs: store.pending_count()?.saturating_sub(batch.len() as u64),
                extensions,
            };
            let mut request = request;
            // One signature for the whole push (ADR 0008): over the hashes of its changes,
            // which the server computes from the changes themselves.
            let push = if request.push.is_empty() {
                None
            } else {
                let hashes: Vec<[u8; 32]> = request
                    .push
                    .iter()
                    .flat_map(|doc| doc.changes.iter())
                    .map(|change| crate::keys::push::change_hash(change).unwrap_or([0; 32]))
                    .collect();
                Some(store.sign_push(&hashes)?)
            };
            request.extensions.insert(&DeviceKeysRequest {
                keys_version: store.device_keys_version()?,
                push,
            })?;
            (batch, request, numbers)
        };
        let change_counts = request
            .push
            .iter()
            .map(|doc| doc.changes.len() as u64)
            .collect();
        let mut prepared = self.encode(request, batch, change_counts)?;
        prepared.round.numbers_sent = Some(numbers);
        Ok(prepared)
    }

    /// A round that only pulls the feed after `cursor`, to send while the page before it is
    /// applied. `catalogue` is the version that page brings, if any (not installed yet); never
    /// while a catalogue delta page is installed (the next page's position depends on it).
    fn prepare_pull(&self, cursor: u64, catalogue: Option<u64>) -> Result<Prepared, SyncError> {
        let pull_window = self.lock_windows().1.get();
        let request = {
            let store = self.lock_store();
            let held = store.catalogue_held()?;
            let mut extensions = Extensions::new().with(&DeviceKeysRequest {
                keys_version: store.device_keys_version()?,
                push: None,
            })?;
            extensions.insert(&held)?;
            SyncRequest {
                protocol: PROTOCOL_VERSION,
                device_time: store.clock().now_ms(),
                push: Vec::new(),
                pull: Some(PullRequest {
                    cursor,
                    max_bytes: u32::try_from(pull_window).unwrap_or(u32::MAX),
                }),
                catalogue_version: held.version.max(catalogue.unwrap_or(0)),
                pending_docs: store.pending_count()?,
                extensions,
            }
        };
        self.encode(request, Vec::new(), Vec::new())
    }

    fn encode(
        &self,
        request: SyncRequest,
        batch: Vec<PendingDoc>,
        change_counts: Vec<u64>,
    ) -> Result<Prepared, SyncError> {
        let cursor_sent = request.pull.map_or(0, |pull| pull.cursor);
        let device_time_sent = request.device_time;
        let held_sent = request
            .extensions
            .get::<CatalogueHeld>()
            .ok()
            .flatten()
            .unwrap_or_default();
        let body = request.encode(&mut self.lock_codec())?;
        Ok(Prepared {
            round: Round {
                batch,
                change_counts,
                cursor_sent,
                device_time_sent,
                numbers_sent: None,
                held_sent,
            },
            request: HttpRequest {
                path: SYNC_PATH.to_owned(),
                bearer: Some(self.token.clone()),
                content_type: CONTENT_TYPE.to_owned(),
                body,
            },
        })
    }

    fn lock_windows(&self) -> MutexGuard<'_, (Window, Window)> {
        // Two sizes, always valid: a panic elsewhere cannot leave them half-written.
        self.windows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_store(&self) -> MutexGuard<'_, DeviceStore> {
        // Every store write is one SQLite transaction: a panic in another holder rolled it back,
        // so the store behind a poisoned lock is consistent.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_codec(&self) -> MutexGuard<'_, DocCodec> {
        // The codec holds no state between calls.
        self.codec.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What handling a round's answer needs of what the round sent.
struct Round {
    /// What the acknowledgement needs of the pushed documents (their changes went in the body).
    batch: Vec<PendingDoc>,
    /// Changes per pushed document.
    change_counts: Vec<u64>,
    cursor_sent: u64,
    device_time_sent: i64,
    /// The dossier number state the request reported, if it did.
    numbers_sent: Option<NumberState>,
    /// What the request said the device holds of the catalogue.
    held_sent: CatalogueHeld,
}

/// A round ready to send.
struct Prepared {
    round: Round,
    request: HttpRequest,
}

/// A round sent, with how its exchange ended.
struct Sent {
    round: Round,
    sent_at: Instant,
    /// How long the exchange took, retries included.
    took: Duration,
    /// Whether it needed a retry.
    retried: bool,
    http: Result<HttpResponse, SyncError>,
}

/// What a round's answer changes in the store.
struct Answer {
    /// A page of the catalogue's delta (tag 5).
    catalogue_delta: Option<CatalogueDelta>,
    /// The province's working calendar, when it moved (tag 6).
    calendar: Option<CalendarUpdate>,
    acked: Vec<PendingDoc>,
    /// Pushed documents the server refused: set aside, not acknowledged.
    refused: Vec<RefusedDoc>,
    resend_whole: Vec<RecordId>,
    pulled: Vec<PullDoc>,
    next_cursor: u64,
    catalogue: Option<CatalogueUpdate>,
    /// The province's key list entries this device lacked.
    keys: Option<DeviceKeysDelta>,
    server_time: i64,
    /// This device's clock when the server answered (half way through the exchange).
    device_time_at_server: i64,
    /// The dossier number state the request reported (the server has it now).
    numbers_sent: Option<NumberState>,
    /// Blocks the server granted or offered again.
    numbers_granted: Option<NumberGrant>,
}

/// What applying an answer left.
struct Applied {
    pull: PullReport,
    /// Documents still to push.
    pending: u64,
    /// Documents in the quarantine.
    quarantined: u64,
    /// Whether a catalogue page was installed.
    catalogue_installed: bool,
}

impl Answer {
    /// Applies the answer and returns the pull's report and the documents still pending. Takes
    /// the store lock (on a blocking thread when the next exchange is under way).
    fn apply(&self, store: &Mutex<DeviceStore>) -> Result<Applied, SyncError> {
        let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
        store.quarantine_refused(&self.refused)?;
        store.acknowledge_push(&self.acked, self.server_time)?;
        // They stay in the outbox; the next round sends their whole history.
        store.forget_server_heads(&self.resend_whole)?;
        let pull_report = store.apply_pull(&self.pulled, self.next_cursor)?;
        if let Some(catalogue) = &self.catalogue {
            match store.apply_catalogue(catalogue.version, &catalogue.json) {
                Ok(()) => {}
                // A bad catalogue from the server must not stop records from syncing: the old
                // one stays in force.
                Err(err @ crate::Error::InvalidInput { .. }) => {
                    tracing::warn!(%err, version = catalogue.version, "catalogue refused");
                }
                Err(err) => return Err(err.into()),
            }
        }
        // A bad page or calendar from the server must not stop records from syncing: what the
        // device holds stays in force, and it asks again at the next sync.
        let mut catalogue_installed = false;
        if let Some(delta) = &self.catalogue_delta {
            match store.apply_catalogue_delta(delta) {
                Ok(_) => catalogue_installed = true,
                Err(err @ crate::Error::InvalidInput { .. }) => {
                    tracing::warn!(%err, version = delta.version, "catalogue page refused");
                }
                Err(err) => return Err(err.into()),
            }
        }
        // A new calendar waits until nothing is left to push: every change made with the old
        // one (a return's verdict) reaches the server declaring the old one, under which the
        // server accepts it (ADR 0009). The server sends the calendar again until it is held.
        let drained = self.calendar.is_some() && store.pending_count()? == 0;
        if let Some(calendar) = self.calendar.as_ref().filter(|_| drained) {
            match store.apply_calendar_update(calendar) {
                Ok(()) => {}
                Err(err @ crate::Error::InvalidInput { .. }) => {
                    tracing::warn!(%err, version = calendar.version, "calendar refused");
                }
                Err(err) => return Err(err.into()),
            }
        }
        if let Some(grant) = &self.numbers_granted {
            store.apply_number_grant(grant)?;
        }
        if let Some(sent) = &self.numbers_sent {
            store.mark_numbers_reported(sent)?;
        }
        if let Some(keys) = &self.keys {
            store.apply_device_keys(&keys.entries, keys.version)?;
        }
        store.set_last_sync_at(self.server_time)?;
        store.set_clock_offset(clock_offset(self.server_time, self.device_time_at_server))?;
        Ok(Applied {
            pull: pull_report,
            pending: store.pending_count()?,
            quarantined: store.quarantined_count()?,
            catalogue_installed,
        })
    }
}

/// How one request is retried.
#[derive(Debug, Clone, Copy)]
struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    /// Whether a 429 is retried (after its `Retry-After`).
    retry_rate_limited: bool,
}

#[derive(Debug, Default)]
struct Counters {
    requests: u64,
    retries: u64,
    bytes_up: u64,
    bytes_down: u64,
}

impl Counters {
    fn copy_to(&self, report: &mut SyncReport) {
        report.requests = self.requests;
        report.retries = self.retries;
        report.bytes_up = self.bytes_up;
        report.bytes_down = self.bytes_down;
    }
}

/// Sends `req` until a 2xx arrives, an error that retrying cannot fix, or the attempts run out.
async fn exchange<T: Transport>(
    transport: &T,
    retry: &RetryPolicy,
    req: HttpRequest,
    counters: &mut Counters,
) -> Result<HttpResponse, SyncError> {
    let max_attempts = retry.max_attempts.max(1);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        counters.requests += 1;
        let (error, retry_after) = match transport.send(req.clone()).await {
            Ok(response) => {
                counters.bytes_up += response.bytes_sent;
                counters.bytes_down += response.bytes_received;
                if (200..300).contains(&response.status) {
                    return Ok(response);
                }
                let error = error_from_response(&response);
                let retryable = match response.status {
                    500 | 502 | 503 | 504 => true,
                    429 => retry.retry_rate_limited,
                    _ => false,
                };
                if !retryable {
                    return Err(error);
                }
                (error, response.retry_after)
            }
            Err(TransportError::ResponseTooLarge { limit }) => {
                return Err(SyncError::Protocol(WireError::TooLarge(format!(
                    "response larger than {limit} bytes"
                ))));
            }
            Err(TransportError::UntrustedServer(reason)) => {
                return Err(SyncError::UntrustedServer(reason));
            }
            Err(err) if !err.is_retryable() => return Err(SyncError::Offline(err.to_string())),
            Err(err) => (SyncError::Offline(err.to_string()), None),
        };
        if attempt >= max_attempts {
            return Err(error);
        }
        let Some(delay) = retry_delay(
            attempt,
            retry.initial_backoff,
            retry.max_backoff,
            retry_after,
            rand::random::<f64>(),
        ) else {
            // The server asks for a longer pause than a sync should wait for.
            return Err(error);
        };
        tracing::debug!(%error, attempt, ?delay, "retrying");
        counters.retries += 1;
        tokio::time::sleep(delay).await;
    }
}

/// The wait after failed attempt number `attempt` (1 for the first): "full jitter", a uniform
/// draw (`unit` in [0, 1]) below `initial × 2^(attempt−1)` capped at `max`, so that tablets
/// that failed together do not come back together. A `Retry-After` is honoured: the wait is at
/// least that long, plus a draw below `initial`. `None` when `Retry-After` exceeds `max`.
pub(crate) fn retry_delay(
    attempt: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    unit: f64,
) -> Option<Duration> {
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    };
    match retry_after {
        Some(asked) if asked > max => None,
        Some(asked) => Some(asked.saturating_add(initial.min(max).mul_f64(unit))),
        None => {
            let doublings = attempt.saturating_sub(1).min(31);
            let ceiling = initial.saturating_mul(1u32 << doublings).min(max);
            Some(ceiling.mul_f64(unit))
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    message: String,
}

/// The error a non-2xx response stands for.
fn error_from_response(response: &HttpResponse) -> SyncError {
    let status = response.status;
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&response.body) {
        Ok(body) => (body.error, body.message),
        // Not the server's JSON: a proxy, a captive portal, a load balancer.
        Err(_) => {
            let text = &response.body[..response.body.len().min(200)];
            (
                format!("http_{status}"),
                String::from_utf8_lossy(text).into_owned(),
            )
        }
    };
    match (status, code.as_str()) {
        (401, _) => SyncError::Unauthorized,
        (403, "revoked") => SyncError::Revoked,
        (403, "wiped") => SyncError::Wiped(message),
        (426, _) | (_, "upgrade_required") => SyncError::UpgradeRequired(message),
        (403, _) => SyncError::Forbidden(message),
        (500..=599, _) => SyncError::Server(format!("{status} {code}: {message}")),
        _ => SyncError::Rejected {
            status,
            code,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_is_full_jitter_below_a_doubling_capped_ceiling() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let ceilings = [1, 2, 4, 8, 16, 32, 60, 60, 60];
        for (i, ceiling) in ceilings.iter().enumerate() {
            let attempt = i as u32 + 1;
            let ceiling = Duration::from_secs(*ceiling);
            assert_eq!(
                retry_delay(attempt, initial, max, None, 0.0),
                Some(Duration::ZERO)
            );
            assert_eq!(retry_delay(attempt, initial, max, None, 1.0), Some(ceiling));
            for _ in 0..200 {
                let delay = retry_delay(attempt, initial, max, None, rand::random()).unwrap();
                assert!(delay <= ceiling, "attempt {attempt}: {delay:?}");
            }
        }
        // Spread: draws are not all the same.
        let draws: HashSet<Duration> = (0..50)
            .map(|_| retry_delay(3, initial, max, None, rand::random()).unwrap())
            .collect();
        assert!(draws.len() > 10);
    }

    #[test]
    fn batch_windows_grow_on_a_fast_link_and_shrink_on_a_poor_one() {
        let target = Duration::from_secs(4);
        let mut window = Window::new(256 * 1024, 4 * 1024 * 1024);
        // Fast exchanges double it, very fast ones quadruple it, up to the cap.
        window.succeeded(Duration::from_secs(1), target);
        assert_eq!(window.get(), 512 * 1024);
        window.succeeded(Duration::from_millis(100), target);
        assert_eq!(window.get(), 2 * 1024 * 1024);
        for _ in 0..10 {
            window.succeeded(Duration::from_millis(100), target);
        }
        assert_eq!(window.get(), 4 * 1024 * 1024);
        // Within [target/2, 2·target] it holds.
        window.succeeded(Duration::from_secs(3), target);
        assert_eq!(window.get(), 4 * 1024 * 1024);
        // Slow exchanges and failures halve it, down to the floor.
        window.succeeded(Duration::from_secs(9), target);
        assert_eq!(window.get(), 2 * 1024 * 1024);
        for _ in 0..20 {
            window.shrink();
        }
        assert_eq!(window.get(), 16 * 1024);
        // A start below the floor is its own floor; a cap below the start is the start.
        let mut small = Window::new(2048, 1024);
        small.shrink();
        assert_eq!(small.get(), 2048);
        small.succeeded(Duration::ZERO, target);
        assert_eq!(small.get(), 2048);
    }

    #[test]
    fn clock_offsets_ignore_small_drift_and_survive_extremes() {
        assert_eq!(clock_offset(1_000_000, 990_000), 0);
        assert_eq!(clock_offset(1_000_000, 1_050_000), 0);
        let seven_years = 7 * 365 * 86_400_000;
        assert_eq!(
            clock_offset(1_000_000, 1_000_000 + seven_years),
            -seven_years
        );
        assert_eq!(clock_offset(i64::MAX, i64::MIN), i64::MAX);
        assert_eq!(clock_offset(0, i64::MAX), -i64::MAX);
    }

    #[test]
    fn backoff_survives_absurd_inputs() {
        for attempt in [0, 1, 31, 32, 33, 1000, u32::MAX] {
            for unit in [f64::NAN, -1.0, 0.5, 2.0, f64::INFINITY] {
                let delay =
                    retry_delay(attempt, Duration::MAX, Duration::from_secs(60), None, unit)
                        .unwrap();
                assert!(delay <= Duration::from_secs(60));
                let delay = retry_delay(attempt, 500 * MS, Duration::ZERO, None, unit).unwrap();
                assert_eq!(delay, Duration::ZERO);
            }
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let asked = Some(Duration::from_secs(30));
        for _ in 0..100 {
            let delay = retry_delay(1, initial, max, asked, rand::random()).unwrap();
            assert!(delay >= Duration::from_secs(30) && delay <= Duration::from_secs(31));
        }
        assert_eq!(
            retry_delay(1, initial, max, Some(Duration::ZERO), 0.0),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_delay(1, initial, max, Some(Duration::from_secs(61)), 0.5),
            None
        );
    }

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            body: body.as_bytes().to_vec(),
            retry_after: None,
            bytes_sent: 0,
            bytes_received: 0,
            store_epoch: None,
        }
    }

    #[test]
    fn error_bodies_map_to_errors() {
        let json = |code: &str| format!(r#"{{"error":"{code}","message":"because"}}"#);
        assert!(matches!(
            error_from_response(&response(401, &json("unauthorized"))),
            SyncError::Unauthorized
        ));
        assert!(matches!(
            error_from_response(&response(403, &json("revoked"))),
            SyncError::Revoked
        ));
        assert!(matches!(
            error_from_response(&response(403, &json("forbidden"))),
            SyncError::Forbidden(m) if m == "because"
        ));
        assert!(matches!(
            error_from_response(&response(403, &json("wiped"))),
            SyncError::Wiped(m) if m == "because"
        ));
        assert!(matches!(
            error_from_response(&response(426, &json("upgrade_required"))),
            SyncError::UpgradeRequired(m) if m == "because"
        ));
        // A proxy's page for 426 is still "upgrade required".
        assert!(matches!(
            error_from_response(&response(426, "<html>Upgrade Required</html>")),
            SyncError::UpgradeRequired(_)
        ));
        assert!(matches!(
            error_from_response(&response(413, &json("too_large"))),
            SyncError::Rejected { status: 413, code, .. } if code == "too_large"
        ));
        assert!(matches!(
            error_from_response(&response(429, &json("rate_limited"))),
            SyncError::Rejected { status: 429, code, .. } if code == "rate_limited"
        ));
        assert!(matches!(
            error_from_response(&response(503, &json("unavailable"))),
            SyncError::Server(m) if m.contains("unavailable")
        ));
        // A proxy's HTML page.
        assert!(matches!(
            error_from_response(&response(502, "<html>Bad Gateway</html>")),
            SyncError::Server(m) if m.contains("http_502") && m.contains("Bad Gateway")
        ));
        assert!(matches!(
            error_from_response(&response(400, "")),
            SyncError::Rejected { status: 400, code, .. } if code == "http_400"
        ));
    }

    #[test]
    fn scope_and_credentials_use_the_server_json() {
        let commune: Credentials = serde_json::from_str(
            r#"{"device_id":"6f1c0e4e-8d1a-4a53-9a51-7a0e2f6c1b11","token":"t0k","scope":{"commune":"DB-MUONGPHANG"}}"#,
        )
        .unwrap();
        assert_eq!(commune.scope, Scope::Commune("DB-MUONGPHANG".into()));
        assert!(!format!("{commune:?}").contains("t0k"));
        let province: Credentials = serde_json::from_str(
            r#"{"device_id":"6f1c0e4e-8d1a-4a53-9a51-7a0e2f6c1b11","token":"t","scope":"province"}"#,
        )
        .unwrap();
        assert_eq!(province.scope, Scope::Province);
    }

    #[test]
    fn the_report_serializes_for_the_cli() {
        let json = serde_json::to_value(SyncReport {
            requests: 2,
            ..SyncReport::default()
        })
        .unwrap();
        assert_eq!(json["requests"], 2);
        assert_eq!(json["seconds"], 0.0);
        assert_eq!(serde_json::to_value(SyncPhase::Pulling).unwrap(), "pulling");
    }
}
