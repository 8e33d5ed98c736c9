//! [`Engine`]: one device store and its sync client, as the app sees them.
//!
//! Every method that touches the store is `async` (Kotlin `suspend`, Swift `async`) and runs
//! the store work on tokio's blocking pool through [`Engine::with_store`], so the app may call
//! it from its UI thread; cheap getters that read memory only (`device_id`, `credential`) stay
//! synchronous.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use communesync_core::clock::{Clock, SystemClock};
use communesync_core::record::{DeviceId, RecordId};
use communesync_core::store::{DeviceStore, EncryptionKey, StoreConfig};
use communesync_core::sync::{
    ReqwestConfig, ReqwestTransport, ServerTrust, SyncClient, SyncConfig, SyncError,
    attachments::AttachmentPolicy, enroll_with_key,
};
use zeroize::Zeroize;

use crate::error::{CommuneSyncError, ErrorKind};
use crate::observer::{
    ChangeEvent, ChangeOrigin, Event, ObserverHandle, Observers, SyncObserver, WipeEvent,
};
use crate::policy::{BackgroundPolicy, PolicyInput, SyncDecision, next_sync_after};
use crate::status::StatusSource;
use crate::types::*;

type Result<T, E = CommuneSyncError> = std::result::Result<T, E>;

/// What the engine remembers about syncing, in memory (the credential lives in the platform
/// keystore, the sync cursor and outbox in the store).
#[derive(Default)]
pub(crate) struct SyncState {
    pub(crate) credential: Option<DeviceCredential>,
    client: Option<Arc<SyncClient<ReqwestTransport>>>,
    pub(crate) running: u32,
    pub(crate) last_success_ms: Option<i64>,
    pub(crate) consecutive_failures: u32,
    pub(crate) last_error: Option<(ErrorKind, String)>,
    pub(crate) last_report: Option<SyncReport>,
}

/// Why the engine no longer serves calls: the store was wiped on the province's order, or a
/// rekey failed (the file keeps its old key; open a new engine with it).
pub(crate) type Closed = Arc<Mutex<Option<CommuneSyncError>>>;

pub(crate) fn check_open(closed: &Closed) -> Result<()> {
    match &*closed.lock().unwrap_or_else(PoisonError::into_inner) {
        Some(err) => Err(err.clone()),
        None => Ok(()),
    }
}

/// The communesync engine of one tablet: the encrypted store, edits, queries, conflicts,
/// history, enrollment and sync. Open one per store file and share it; every method is safe to
/// call from any thread, and store calls are async (they run on a background pool).
#[derive(uniffi::Object)]
pub struct Engine {
    pub(crate) store: Arc<Mutex<DeviceStore>>,
    pub(crate) closed: Closed,
    device_id: DeviceId,
    store_path: String,
    server_url: String,
    /// Built once at open, so that every sync shares its connection pool and TLS session cache
    /// (a resumed handshake costs a 2G tablet far fewer bytes); the error, if the URL or trust
    /// settings are unusable, is reported at each network call.
    transport: std::result::Result<ReqwestTransport, String>,
    policy: BackgroundPolicy,
    clock: SystemClock,
    pub(crate) state: Arc<Mutex<SyncState>>,
    pub(crate) observers: Arc<Observers>,
    /// The attachment channel's settings (chunk size, budget, metered link, prefetch, cache).
    pub(crate) attachment_policy: Mutex<AttachmentPolicy>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("device_id", &self.device_id)
            .field("server_url", &self.server_url)
            .finish_non_exhaustive()
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl Engine {
    /// Opens (creating if needed) the encrypted store at `config.store_path`. Fails with
    /// `InvalidInput` for a key that is not 32 bytes or a credential of another device, and with
    /// `Storage` for a wrong key or an unreadable file. The key bytes are copied once into a
    /// buffer that is overwritten when the store has used it (and the config's copy at once);
    /// overwrite the app's own copy (`key.fill(0)`) after this returns.
    #[uniffi::constructor]
    pub async fn open(mut config: EngineConfig) -> Result<Arc<Self>> {
        let key = EncryptionKey::from_slice(&config.encryption_key);
        config.encryption_key.zeroize();
        let key = key?;
        if config.server_url.trim().is_empty() {
            return Err(CommuneSyncError::invalid("server_url: must not be empty"));
        }
        let mut store_config = StoreConfig::new(&config.store_path).encrypted(key);
        store_config.app_version = config.app_version.clone();
        let credential = config.credential.clone();
        let store = blocking(move || {
            let mut store = DeviceStore::open(store_config)?;
            if let Some(credential) = &credential {
                check_credential(store.device_id(), credential)?;
                // The credential's scope is authoritative (a store enrolled before the scope was
                // recorded learns it here).
                store.set_enrolled_commune(credential.commune_code.as_deref())?;
            }
            Ok(store)
        })
        .await?;
        let device_id = store.device_id();
        tracing::info!(device = %device_id, "engine opened");
        let transport = ReqwestTransport::with_config(
            &config.server_url,
            ReqwestConfig {
                trust: ServerTrust {
                    ca_pem: std::mem::take(&mut config.trusted_ca_pem),
                    pinned_keys: std::mem::take(&mut config.pinned_keys),
                },
                ..ReqwestConfig::default()
            },
        )
        .map_err(|e| e.to_string());
        Ok(Arc::new(Engine {
            transport,
            store: Arc::new(Mutex::new(store)),
            closed: Closed::default(),
            device_id,
            store_path: config.store_path,
            server_url: config.server_url,
            policy: config.background_policy.unwrap_or_default(),
            clock: SystemClock,
            state: Arc::new(Mutex::new(SyncState {
                credential: config.credential,
                ..SyncState::default()
            })),
            observers: Arc::new(Observers::default()),
            attachment_policy: Mutex::new(AttachmentPolicy::default()),
        }))
    }

    /// This device's id (fixed when the store is created; enrollment binds it to a commune).
    pub fn device_id(&self) -> String {
        self.device_id.to_string()
    }

    // ----- enrollment and sync ---------------------------------------------------------------

    /// Exchanges a one-time enrollment code from the province for this device's credential.
    /// The engine uses it from now on; store it in the platform keystore and pass it in
    /// `EngineConfig.credential` at the next open. A wrong or used code is `Unauthorized`.
    /// The commune it binds the device to is recorded: records of other communes can no longer
    /// be created or edited, and those created before (offline, with another commune's code) are
    /// set aside in the quarantine at once.
    pub async fn enroll(&self, code: String, label: String) -> Result<DeviceCredential> {
        self.check_open()?;
        let transport = self.transport()?;
        // The device's public key is registered with the credential (replacing its previous
        // one at re-enrollment); the private key stays in the store.
        // Enrolling again (the engine or the store had a credential): a new key, installed
        // once the server has registered it (the old one may have been revoked).
        let had_credential = self.state().credential.is_some();
        let again = had_credential
            || self
                .with_store(|store| Ok(store.enrolled_commune().is_some()))
                .await?;
        let new_key = if again {
            Some(communesync_core::keys::DeviceSigningKey::generate()?)
        } else {
            None
        };
        let public_key = match &new_key {
            Some(key) => key.public_key(),
            None => self.with_store(|store| Ok(store.public_key()?)).await?,
        };
        let credentials = enroll_with_key(
            &transport,
            code.trim(),
            self.device_id,
            &label,
            Some(public_key),
        )
        .await?;
        if let Some(key) = new_key {
            // The server holds the new key: without it here the device's pushes are refused
            // until it enrolls again, which the error says.
            self.with_store(move |store| Ok(store.install_signing_key(&key)?))
                .await?;
        }
        let credential = DeviceCredential::from(credentials);
        check_credential(self.device_id, &credential)?;
        // The server has enrolled the device: the credential must reach the app whatever
        // happens here. A scope not recorded now is recorded before the next sync.
        let commune = credential.commune_code.clone();
        let _ = self
            .with_store(move |store| Ok(store.set_enrolled_commune(commune.as_deref())?))
            .await;
        {
            let mut state = self.state();
            state.credential = Some(credential.clone());
            state.client = None;
            state.consecutive_failures = 0;
            state.last_error = None;
        }
        self.observers.emit(Event::Status);
        Ok(credential)
    }

    /// The credential in use, if the device is enrolled.
    pub fn credential(&self) -> Option<DeviceCredential> {
        self.state().credential.clone()
    }

    /// Pushes local changes and pulls colleagues' until both sides are up to date; observers
    /// get progress after each request. A sync cut at any point resumes where it stopped and
    /// loses nothing. A second call while one runs waits for it. Records the server refuses are
    /// set aside in the quarantine (`SyncReport.refused`) and do not fail the sync. Fails with
    /// `Unauthorized` when not enrolled, `Revoked`, `UpgradeRequired` when the server no longer
    /// accepts this version of the app, `Wiped` when the province ordered the device wiped (the
    /// engine then destroys the store and tells the observers), or `Offline` after the retries.
    /// After the records, the attachment channel runs within the engine's attachment settings
    /// (`setAttachmentSettings`): pending uploads, receipts and identity cards first, then the
    /// prefetch if asked; its progress goes to `watchAttachmentProgress` listeners, and its
    /// failure is `SyncReport.attachment_error` (the records' sync stands).
    pub async fn sync_now(&self) -> Result<SyncReport> {
        self.check_open()?;
        let client = match self.client().await {
            Ok(client) => client,
            Err(err) => {
                record_failure(&mut self.state(), &err);
                self.observers.emit(Event::Status);
                return Err(err);
            }
        };
        self.observers.emit(Event::Status);
        let observers = self.observers.clone();
        let pulled_seen = AtomicU64::new(0);
        let attachment_policy = self.attachment_policy().clone();
        let attachment_observers = self.observers.clone();
        let result = client
            .sync_with_attachments(
                &attachment_policy,
                &|progress| {
                    let progress = SyncProgress::from(progress);
                    observers.emit(Event::Progress(progress));
                    let before = pulled_seen.swap(progress.pulled_docs, Ordering::Relaxed);
                    if progress.pulled_docs > before {
                        observers.emit(Event::Changed(ChangeEvent {
                            origin: ChangeOrigin::Sync,
                            record_ids: Vec::new(),
                            changed_count: progress.pulled_docs - before,
                        }));
                    }
                },
                &|progress| {
                    attachment_observers.emit(Event::Attachment(progress.into()));
                },
            )
            .await;
        drop(client);
        let result = match result {
            Ok(full) => {
                let mut report = SyncReport::from(full.records);
                match full.attachments {
                    Ok(channel) => {
                        report.attachments_completed = channel.completed.len() as u64;
                        report.attachment_bytes = channel.chunk_bytes;
                        report.attachments_deferred = channel.deferred as u64;
                    }
                    Err(err) => report.attachment_error = Some(err.to_string()),
                }
                Ok(report)
            }
            Err(SyncError::Wiped(message)) => Err(self.wipe(message).await),
            Err(err) => Err(CommuneSyncError::from(err)),
        };
        {
            let mut state = self.state();
            state.running = state.running.saturating_sub(1);
            match &result {
                Ok(report) => {
                    state.last_success_ms = Some(self.clock.now_ms());
                    state.consecutive_failures = 0;
                    state.last_error = None;
                    state.last_report = Some(report.clone());
                }
                Err(err) => record_failure(&mut state, err),
            }
        }
        self.observers.emit(Event::Status);
        result
    }

    /// A snapshot of the sync state.
    pub async fn sync_status(&self) -> Result<SyncStatus> {
        let source = self.status_source();
        blocking(move || source.snapshot()).await
    }

    /// The facts the background policy decides on, from this engine's state, all on the device
    /// clock. The last success is the one of this process, else the server time of the last sync
    /// kept in the store, brought to the device clock by the offset learnt then (a tablet whose
    /// clock is years behind would otherwise see its last sync in the future and never sync).
    /// "Upgrade required" is kept in the store for the version of the app that got it, so the
    /// policy stops across restarts until another version opens the store. Attachment contents
    /// waiting for upload count as pending work, like records.
    pub async fn policy_input(&self, metered: bool) -> Result<PolicyInput> {
        let status = self.sync_status().await?;
        let (offset, pending_uploads) = self
            .with_store(|store| {
                Ok((
                    store.clock_offset_ms(),
                    store.pending_attachment_uploads(1_000)?.len() as u64,
                ))
            })
            .await?;
        let (consecutive_failures, last_error) = if status.upgrade_required {
            (
                status.consecutive_failures.max(1),
                Some(ErrorKind::UpgradeRequired),
            )
        } else {
            (status.consecutive_failures, status.last_error_kind)
        };
        let last_server_sync_ms = status.last_server_sync.map(ms_from_time);
        Ok(PolicyInput {
            // Contents waiting for upload are pending work as well.
            pending_changes: status.pending_changes + pending_uploads,
            last_success_ms: status
                .last_success
                .map(ms_from_time)
                .or(last_server_sync_ms.map(|t| t.saturating_sub(offset))),
            consecutive_failures,
            metered,
            now_ms: self.clock.now_ms(),
            last_error,
        })
    }

    /// When the next background sync should run, by this engine's policy and state. The
    /// WorkManager worker and the BGTaskScheduler helper call it after each sync and schedule
    /// what it says; not enrolled (or wiped) is `Stop`.
    pub async fn next_sync_after(&self, metered: bool) -> Result<SyncDecision> {
        if self.state().credential.is_none() || self.check_open().is_err() {
            return Ok(SyncDecision::Stop);
        }
        Ok(next_sync_after(
            self.policy_input(metered).await?,
            Some(self.policy),
        ))
    }

    /// Starts delivering sync progress and record changes to `observer`, until
    /// [`ObserverHandle::stop`] or until the engine is closed.
    pub fn observe(&self, observer: Arc<dyn SyncObserver>) -> Result<Arc<ObserverHandle>> {
        self.observers.add(observer).map(Arc::new)
    }

    // ----- applications ----------------------------------------------------------------------

    /// Records a new application received by `officer` (offline is fine). The procedure must be
    /// in the catalogue, which arrives with the first sync.
    pub async fn create_application(
        &self,
        officer: String,
        new: NewApplication,
    ) -> Result<Application> {
        let app = self
            .with_store(move |s| Ok(s.create_application(&officer, new.into())?))
            .await?;
        self.changed(app.id);
        Ok(app.into())
    }

    /// An application by id.
    pub async fn get_application(&self, id: String) -> Result<Application> {
        let id = parse_id(&id)?;
        self.with_store(move |s| Ok(s.get_application(id)?.into()))
            .await
    }

    /// Changes the fields set in `update`, as one change by `officer`. A status change must
    /// follow the workflow from the current status (else `Conflict`).
    pub async fn update_application(
        &self,
        officer: String,
        id: String,
        update: ApplicationUpdate,
    ) -> Result<Application> {
        let id = parse_id(&id)?;
        let app = self
            .with_store(move |s| Ok(s.update_application(id, &officer, |app| update.apply(app))?))
            .await?;
        self.changed(id);
        Ok(app.into())
    }

    /// Applications matching `query`, one page.
    pub async fn query_applications(&self, query: ApplicationQuery) -> Result<ApplicationPage> {
        let query = query.try_into()?;
        self.with_store(move |s| Ok(s.query_applications(&query)?.into()))
            .await
    }

    /// Open applications past their due date (today in Vietnam), most overdue first.
    pub async fn overdue(&self, limit: u32, offset: u32) -> Result<ApplicationPage> {
        self.with_store(move |s| Ok(s.overdue(s.today()?, limit, offset)?.into()))
            .await
    }

    /// Open applications due within `working_days` working days from today (not yet overdue).
    pub async fn due_soon(
        &self,
        working_days: u32,
        limit: u32,
        offset: u32,
    ) -> Result<ApplicationPage> {
        self.with_store(move |s| Ok(s.due_soon(s.today()?, working_days, limit, offset)?.into()))
            .await
    }

    /// How many applications are in each status (every status listed, with 0 when none).
    pub async fn counts_by_status(&self) -> Result<Vec<StatusCount>> {
        self.with_store(|s| Ok(s.counts_by_status()?.into_iter().map(Into::into).collect()))
            .await
    }

    /// One procedure of the catalogue (`InvalidInput` if unknown).
    pub async fn procedure(&self, code: String) -> Result<Procedure> {
        self.with_store(move |s| Ok(s.procedure(&code)?.into()))
            .await
    }

    // ----- citizen requests ------------------------------------------------------------------

    /// Records a new citizen request.
    pub async fn create_citizen_request(
        &self,
        officer: String,
        new: NewCitizenRequest,
    ) -> Result<CitizenRequest> {
        let request = self
            .with_store(move |s| Ok(s.create_citizen_request(&officer, new.into())?))
            .await?;
        self.changed(request.id);
        Ok(request.into())
    }

    /// A citizen request by id.
    pub async fn get_citizen_request(&self, id: String) -> Result<CitizenRequest> {
        let id = parse_id(&id)?;
        self.with_store(move |s| Ok(s.get_citizen_request(id)?.into()))
            .await
    }

    /// Changes the fields set in `update`, as one change by `officer`.
    pub async fn update_citizen_request(
        &self,
        officer: String,
        id: String,
        update: CitizenRequestUpdate,
    ) -> Result<CitizenRequest> {
        let id = parse_id(&id)?;
        let request = self
            .with_store(move |s| Ok(s.update_citizen_request(id, &officer, |r| update.apply(r))?))
            .await?;
        self.changed(id);
        Ok(request.into())
    }

    // ----- any record ------------------------------------------------------------------------

    /// Any record by id.
    pub async fn get_record(&self, id: String) -> Result<Record> {
        let id = parse_id(&id)?;
        self.with_store(move |s| Ok(s.get(id)?.into())).await
    }

    /// Records whose names, notes, phone, id number or village contain every word of `text`,
    /// ignoring case and Vietnamese diacritics ("nguyen thi huong" finds "Nguyễn Thị Hương");
    /// the last word may be a prefix. Best matches first, at most `limit` (1 to 500).
    pub async fn search(&self, text: String, limit: u32) -> Result<Vec<SearchHit>> {
        self.with_store(move |s| {
            Ok(s.search(&text, limit)?
                .into_iter()
                .map(Into::into)
                .collect())
        })
        .await
    }

    /// Fields of the record holding concurrent different values after a sync.
    pub async fn conflicts(&self, id: String) -> Result<Vec<Conflict>> {
        let id = parse_id(&id)?;
        self.with_store(move |s| Ok(s.conflicts(id)?.into_iter().map(Into::into).collect()))
            .await
    }

    /// Settles the conflict on `field` with `value` (usually one of the candidates), as one
    /// change by `officer`; returns the record as it now reads.
    pub async fn resolve(
        &self,
        officer: String,
        id: String,
        field: String,
        value: ConflictValue,
    ) -> Result<Record> {
        let id = parse_id(&id)?;
        let record = self
            .with_store(move |s| Ok(s.resolve(id, &officer, &field, &value.into())?))
            .await?;
        self.changed(id);
        Ok(record.into())
    }

    /// Every change to the record, in causal order: who (device, officer), when (device clock,
    /// and the server's receive time once it has the change) and which fields.
    pub async fn history(&self, id: String) -> Result<Vec<HistoryEntry>> {
        let id = parse_id(&id)?;
        self.with_store(move |s| Ok(s.history(id)?.into_iter().map(Into::into).collect()))
            .await
    }

    // ----- quarantine ------------------------------------------------------------------------

    /// The commune this device enrolled in (`None` before enrollment or for a province account).
    pub async fn enrolled_commune(&self) -> Result<Option<String>> {
        self.with_store(|s| Ok(s.enrolled_commune().map(str::to_owned)))
            .await
    }

    /// Records set aside, oldest first: pushed records the server refused (with its reason)
    /// and pulled records this version of the app cannot read. Every other record keeps syncing.
    pub async fn quarantined(&self) -> Result<Vec<QuarantinedRecord>> {
        self.with_store(|s| Ok(s.quarantined()?.into_iter().map(Into::into).collect()))
            .await
    }

    /// Takes a record out of the quarantine: a refused one goes back to the outbox (the next
    /// sync pushes it, with any edit made since: for a reason that was transient, fixed by an
    /// edit, or fixed by an app upgrade); an unreadable incoming one is tried again at once.
    /// Returns whether it left the quarantine. `NotFound` when it is not quarantined.
    pub async fn retry_quarantined(&self, id: String) -> Result<bool> {
        let id = parse_id(&id)?;
        let left = self
            .with_store(move |s| Ok(s.retry_quarantined(id)?))
            .await?;
        if left {
            self.changed(id);
        }
        Ok(left)
    }

    /// Discards a quarantined record as `officer` decided, for `reason` (written to the audit
    /// log): a refused record loses this device's changes the server never acknowledged (the
    /// record itself goes if the server never had it); an incoming one loses its kept data.
    pub async fn discard_quarantined(
        &self,
        officer: String,
        id: String,
        reason: String,
    ) -> Result<()> {
        let id = parse_id(&id)?;
        self.with_store(move |s| Ok(s.discard_quarantined(id, &officer, &reason)?))
            .await?;
        self.changed(id);
        Ok(())
    }

    /// The fix for a refused record whose history the server cannot accept (created with
    /// another commune's code, an immutable field changed): a new record with the same content,
    /// for this device's commune, at the same status, created by `officer`; the old one is
    /// discarded with an audit entry naming the copy. Returns the new record.
    pub async fn copy_quarantined_as_new(&self, officer: String, id: String) -> Result<Record> {
        let id = parse_id(&id)?;
        let copy = self
            .with_store(move |s| Ok(s.copy_quarantined_as_new(id, &officer)?))
            .await?;
        self.changed(id);
        self.changed(copy.id());
        Ok(copy.into())
    }

    /// What officers decided about quarantined records, oldest first.
    pub async fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        self.with_store(|s| Ok(s.audit_log()?.into_iter().map(Into::into).collect()))
            .await
    }
}

impl Engine {
    /// Runs `work` on the store on tokio's blocking pool (the caller's thread, often the app's
    /// UI thread, never waits for the disk or for the store's lock), after checking the engine
    /// is still open. Every store call of every binding goes through here:
    /// `self.with_store(move |store| Ok(store.something(arg)?.into())).await`.
    pub(crate) async fn with_store<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DeviceStore) -> Result<T> + Send + 'static,
    {
        self.check_open()?;
        let store = self.store.clone();
        let closed = self.closed.clone();
        blocking(move || {
            let mut store = lock_store(&store);
            // Wiped or closed while this call waited for the lock.
            check_open(&closed)?;
            work(&mut store)
        })
        .await
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        check_open(&self.closed)
    }

    /// Everything a status snapshot reads, for a thread of its own.
    pub(crate) fn status_source(&self) -> StatusSource {
        StatusSource {
            device_id: self.device_id,
            store: self.store.clone(),
            state: self.state.clone(),
            closed: self.closed.clone(),
        }
    }

    /// The sync client, built at the first sync from the credential; counts a running sync.
    pub(crate) async fn client(&self) -> Result<Arc<SyncClient<ReqwestTransport>>> {
        let credential = {
            let mut state = self.state();
            if let Some(client) = &state.client {
                let client = client.clone();
                state.running += 1;
                return Ok(client);
            }
            state.credential.clone().ok_or_else(|| {
                CommuneSyncError::Unauthorized(
                    "this device is not enrolled: enroll with a code first".into(),
                )
            })?
        };
        let transport = self.transport()?;
        let commune = credential.commune_code.clone();
        self.with_store(move |s| Ok(s.set_enrolled_commune(commune.as_deref())?))
            .await?;
        let client = Arc::new(SyncClient::new(
            transport,
            self.store.clone(),
            credential.token.clone(),
            SyncConfig::default(),
        )?);
        let mut state = self.state();
        // Two first syncs at once: both use the client stored first.
        let client = state.client.get_or_insert(client).clone();
        state.running += 1;
        Ok(client)
    }

    /// Destroys the store on the province's order: forgets the credential and the sync client,
    /// closes and deletes the store's files, then tells the observers. Returns the error the
    /// caller reports.
    async fn wipe(&self, message: String) -> CommuneSyncError {
        self.close(CommuneSyncError::Wiped(
            "this device's store was wiped on the province's order".into(),
        ));
        {
            let mut state = self.state();
            state.credential = None;
            state.client = None;
        }
        let store = self.store.clone();
        let deleted = blocking(move || Ok(lock_store(&store).wipe()?)).await;
        // Told even when a file could not be deleted: the app must know, and delete the rest.
        let (deleted_files, message) = match deleted {
            Ok(paths) => (
                paths.iter().map(|p| p.display().to_string()).collect(),
                message,
            ),
            Err(err) => (
                Vec::new(),
                format!("{message} (the wipe is incomplete: {err})"),
            ),
        };
        tracing::warn!(device = %self.device_id, "store wiped on the province's order");
        self.observers.emit(Event::Wiped(WipeEvent {
            device_id: self.device_id.to_string(),
            store_path: self.store_path.clone(),
            deleted_files,
            message: message.clone(),
        }));
        CommuneSyncError::Wiped(message)
    }

    /// From now on every call fails with `reason`.
    pub(crate) fn close(&self, reason: CommuneSyncError) {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
    }

    pub(crate) fn attachment_policy(&self) -> MutexGuard<'_, AttachmentPolicy> {
        self.attachment_policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn transport(&self) -> Result<ReqwestTransport> {
        self.transport
            .clone()
            .map_err(|e| CommuneSyncError::invalid(format!("server_url or trust settings: {e}")))
    }

    pub(crate) fn changed(&self, id: RecordId) {
        self.observers.emit(Event::Changed(ChangeEvent {
            origin: ChangeOrigin::Local,
            record_ids: vec![id.to_string()],
            changed_count: 1,
        }));
    }
}

pub(crate) fn lock_store(store: &Mutex<DeviceStore>) -> MutexGuard<'_, DeviceStore> {
    // Every store write is one SQLite transaction: a panic in another holder rolled it back, so
    // the store behind a poisoned lock is consistent.
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs blocking work (disk I/O, a lock) on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| CommuneSyncError::Storage(format!("the store task failed: {e}")))?
}

fn record_failure(state: &mut SyncState, err: &CommuneSyncError) {
    state.consecutive_failures = state.consecutive_failures.saturating_add(1);
    state.last_error = Some((err.kind(), err.to_string()));
}

fn check_credential(device: DeviceId, credential: &DeviceCredential) -> Result<()> {
    if credential.device_id != device.to_string() {
        return Err(CommuneSyncError::invalid(format!(
            "credential: issued to device {}, but this store is device {device}",
            credential.device_id
        )));
    }
    if credential.token.is_empty() {
        return Err(CommuneSyncError::invalid("credential: empty token"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
