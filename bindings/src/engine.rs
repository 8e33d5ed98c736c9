//! [`Engine`]: one device store and its sync client, as the app sees them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use communesync_core::clock::{Clock, SystemClock};
use communesync_core::record::{DeviceId, RecordId};
use communesync_core::store::{DeviceStore, EncryptionKey, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, SyncError, enroll};

use crate::error::{CommuneSyncError, ErrorKind};
use crate::observer::{
    ChangeEvent, ChangeOrigin, Event, ObserverHandle, Observers, SyncObserver, WipeEvent,
};
use crate::policy::{BackgroundPolicy, PolicyInput, SyncDecision, next_sync_after};
use crate::types::*;

type Result<T, E = CommuneSyncError> = std::result::Result<T, E>;

/// What the engine remembers about syncing, in memory (the credential lives in the platform
/// keystore, the sync cursor and outbox in the store).
#[derive(Default)]
struct SyncState {
    credential: Option<DeviceCredential>,
    client: Option<Arc<SyncClient<ReqwestTransport>>>,
    running: u32,
    last_success_ms: Option<i64>,
    consecutive_failures: u32,
    last_error: Option<(ErrorKind, String)>,
    last_report: Option<SyncReport>,
}

/// The communesync engine of one tablet: the encrypted store, edits, queries, conflicts,
/// history, enrollment and sync. Open one per store file and share it; every method is safe to
/// call from any thread. Store calls take milliseconds of disk I/O: call them off the UI thread.
#[derive(uniffi::Object)]
pub struct Engine {
    store: Arc<Mutex<DeviceStore>>,
    /// Set once the store was wiped on the province's order: every call fails from then on.
    wiped: AtomicBool,
    device_id: DeviceId,
    store_path: String,
    server_url: String,
    policy: BackgroundPolicy,
    clock: SystemClock,
    state: Mutex<SyncState>,
    observers: Arc<Observers>,
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
    /// `Storage` for a wrong key or an unreadable file.
    #[uniffi::constructor]
    pub fn open(config: EngineConfig) -> Result<Arc<Self>> {
        let key = EncryptionKey::from_slice(&config.encryption_key)?;
        if config.server_url.trim().is_empty() {
            return Err(CommuneSyncError::invalid("server_url: must not be empty"));
        }
        let mut store_config = StoreConfig::new(&config.store_path).encrypted(key);
        store_config.app_version = config.app_version.clone();
        let mut store = DeviceStore::open(store_config)?;
        let device_id = store.device_id();
        if let Some(credential) = &config.credential {
            check_credential(device_id, credential)?;
            // The credential's scope is authoritative (a store enrolled before the scope was
            // recorded learns it here).
            store.set_enrolled_commune(credential.commune_code.as_deref())?;
        }
        Ok(Arc::new(Engine {
            store: Arc::new(Mutex::new(store)),
            wiped: AtomicBool::new(false),
            device_id,
            store_path: config.store_path,
            server_url: config.server_url,
            policy: config.background_policy.unwrap_or_default(),
            clock: SystemClock,
            state: Mutex::new(SyncState {
                credential: config.credential,
                ..SyncState::default()
            }),
            observers: Arc::new(Observers::default()),
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
        self.check_not_wiped()?;
        let transport = self.transport()?;
        let credentials = enroll(&transport, code.trim(), self.device_id, &label).await?;
        let credential = DeviceCredential::from(credentials);
        check_credential(self.device_id, &credential)?;
        // The server has enrolled the device: the credential must reach the app whatever
        // happens here. A scope not recorded now is recorded before the next sync.
        let _ = self
            .store()?
            .set_enrolled_commune(credential.commune_code.as_deref());
        let mut state = self.state();
        state.credential = Some(credential.clone());
        state.client = None;
        state.consecutive_failures = 0;
        state.last_error = None;
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
    pub async fn sync_now(&self) -> Result<SyncReport> {
        self.check_not_wiped()?;
        let client = {
            let mut state = self.state();
            let client = match (&state.client, &state.credential) {
                (Some(client), _) => Ok(client.clone()),
                (None, Some(credential)) => self.transport().and_then(|transport| {
                    self.store()?
                        .set_enrolled_commune(credential.commune_code.as_deref())?;
                    Ok(Arc::new(SyncClient::new(
                        transport,
                        self.store.clone(),
                        credential.token.clone(),
                        SyncConfig::default(),
                    )?))
                }),
                (None, None) => Err(CommuneSyncError::Unauthorized(
                    "this device is not enrolled: enroll with a code first".into(),
                )),
            };
            match client {
                Ok(client) => {
                    state.client = Some(client.clone());
                    state.running += 1;
                    client
                }
                Err(err) => {
                    record_failure(&mut state, &err);
                    return Err(err);
                }
            }
        };
        let observers = self.observers.clone();
        let pulled_seen = AtomicU64::new(0);
        let result = client
            .sync(&|progress| {
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
            })
            .await;
        drop(client);
        let result = match result {
            Ok(report) => Ok(SyncReport::from(report)),
            Err(SyncError::Wiped(message)) => Err(self.wipe(&message)),
            Err(err) => Err(CommuneSyncError::from(err)),
        };
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
        result
    }

    /// A snapshot of the sync state.
    pub fn sync_status(&self) -> Result<SyncStatus> {
        let (pending_changes, quarantined, enrolled_commune, upgrade_required, last_server_sync_ms) = {
            let store = self.store()?;
            (
                store.pending_count()?,
                store.quarantined_count()?,
                store.enrolled_commune().map(str::to_owned),
                store.upgrade_required()?,
                store.last_sync_at()?,
            )
        };
        let state = self.state();
        Ok(SyncStatus {
            device_id: self.device_id.to_string(),
            enrolled: state.credential.is_some(),
            syncing: state.running > 0,
            pending_changes,
            quarantined,
            enrolled_commune,
            upgrade_required,
            last_server_sync_ms,
            last_success_ms: state.last_success_ms,
            consecutive_failures: state.consecutive_failures,
            last_error_kind: state.last_error.as_ref().map(|(kind, _)| *kind),
            last_error: state
                .last_error
                .as_ref()
                .map(|(_, message)| message.clone()),
            last_report: state.last_report.clone(),
        })
    }

    /// The facts the background policy decides on, from this engine's state, all on the device
    /// clock. The last success is the one of this process, else the server time of the last sync
    /// kept in the store, brought to the device clock by the offset learnt then (a tablet whose
    /// clock is years behind would otherwise see its last sync in the future and never sync).
    /// "Upgrade required" is kept in the store for the version of the app that got it, so the
    /// policy stops across restarts until another version opens the store.
    pub fn policy_input(&self, metered: bool) -> Result<PolicyInput> {
        let status = self.sync_status()?;
        let offset = self.store()?.clock_offset_ms();
        let (consecutive_failures, last_error) = if status.upgrade_required {
            (
                status.consecutive_failures.max(1),
                Some(ErrorKind::UpgradeRequired),
            )
        } else {
            (status.consecutive_failures, status.last_error_kind)
        };
        Ok(PolicyInput {
            pending_changes: status.pending_changes,
            last_success_ms: status
                .last_success_ms
                .or(status.last_server_sync_ms.map(|t| t.saturating_sub(offset))),
            consecutive_failures,
            metered,
            now_ms: self.clock.now_ms(),
            last_error,
        })
    }

    /// When the next background sync should run, by this engine's policy and state. The
    /// WorkManager worker and the BGTaskScheduler helper call it after each sync and schedule
    /// what it says; not enrolled is `Stop`.
    pub fn next_sync_after(&self, metered: bool) -> Result<SyncDecision> {
        if self.state().credential.is_none() || self.wiped.load(Ordering::SeqCst) {
            return Ok(SyncDecision::Stop);
        }
        Ok(next_sync_after(
            self.policy_input(metered)?,
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
    pub fn create_application(&self, officer: String, new: NewApplication) -> Result<Application> {
        let app = self.store()?.create_application(&officer, new.into())?;
        self.changed(app.id);
        Ok(app.into())
    }

    /// An application by id.
    pub fn get_application(&self, id: String) -> Result<Application> {
        let id = parse_id(&id)?;
        Ok(self.store()?.get_application(id)?.into())
    }

    /// Changes the fields set in `update`, as one change by `officer`. A status change must
    /// follow the workflow from the current status (else `Conflict`).
    pub fn update_application(
        &self,
        officer: String,
        id: String,
        update: ApplicationUpdate,
    ) -> Result<Application> {
        let id = parse_id(&id)?;
        let app = self
            .store()?
            .update_application(id, &officer, |app| update.apply(app))?;
        self.changed(id);
        Ok(app.into())
    }

    /// Applications matching `query`, one page.
    pub fn query_applications(&self, query: ApplicationQuery) -> Result<ApplicationPage> {
        let query = query.try_into()?;
        Ok(self.store()?.query_applications(&query)?.into())
    }

    /// Open applications past their due date (today in Vietnam), most overdue first.
    pub fn overdue(&self, limit: u32, offset: u32) -> Result<ApplicationPage> {
        let store = self.store()?;
        let today = store.today()?;
        Ok(store.overdue(today, limit, offset)?.into())
    }

    /// Open applications due within `working_days` working days from today (not yet overdue).
    pub fn due_soon(&self, working_days: u32, limit: u32, offset: u32) -> Result<ApplicationPage> {
        let store = self.store()?;
        let today = store.today()?;
        Ok(store.due_soon(today, working_days, limit, offset)?.into())
    }

    /// How many applications are in each status (every status listed, with 0 when none).
    pub fn counts_by_status(&self) -> Result<Vec<StatusCount>> {
        Ok(self
            .store()?
            .counts_by_status()?
            .into_iter()
            .map(|c| StatusCount {
                status: c.status.into(),
                count: c.count,
            })
            .collect())
    }

    /// One procedure of the catalogue (`InvalidInput` if unknown).
    pub fn procedure(&self, code: String) -> Result<Procedure> {
        Ok(self.store()?.procedure(&code)?.into())
    }

    // ----- citizen requests ------------------------------------------------------------------

    /// Records a new citizen request.
    pub fn create_citizen_request(
        &self,
        officer: String,
        new: NewCitizenRequest,
    ) -> Result<CitizenRequest> {
        let request = self.store()?.create_citizen_request(&officer, new.into())?;
        self.changed(request.id);
        Ok(request.into())
    }

    /// A citizen request by id.
    pub fn get_citizen_request(&self, id: String) -> Result<CitizenRequest> {
        let id = parse_id(&id)?;
        Ok(self.store()?.get_citizen_request(id)?.into())
    }

    /// Changes the fields set in `update`, as one change by `officer`.
    pub fn update_citizen_request(
        &self,
        officer: String,
        id: String,
        update: CitizenRequestUpdate,
    ) -> Result<CitizenRequest> {
        let id = parse_id(&id)?;
        let request = self
            .store()?
            .update_citizen_request(id, &officer, |r| update.apply(r))?;
        self.changed(id);
        Ok(request.into())
    }

    // ----- any record ------------------------------------------------------------------------

    /// Any record by id.
    pub fn get_record(&self, id: String) -> Result<Record> {
        let id = parse_id(&id)?;
        Ok(self.store()?.get(id)?.into())
    }

    /// Records whose names, notes, phone, id number or village contain every word of `text`,
    /// ignoring case and Vietnamese diacritics ("nguyen thi huong" finds "Nguyễn Thị Hương");
    /// the last word may be a prefix. Best matches first, at most `limit` (1 to 500).
    pub fn search(&self, text: String, limit: u32) -> Result<Vec<SearchHit>> {
        Ok(self
            .store()?
            .search(&text, limit)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Fields of the record holding concurrent different values after a sync.
    pub fn conflicts(&self, id: String) -> Result<Vec<Conflict>> {
        let id = parse_id(&id)?;
        Ok(self
            .store()?
            .conflicts(id)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Settles the conflict on `field` with `value` (usually one of the candidates), as one
    /// change by `officer`; returns the record as it now reads.
    pub fn resolve(
        &self,
        officer: String,
        id: String,
        field: String,
        value: ConflictValue,
    ) -> Result<Record> {
        let id = parse_id(&id)?;
        let record = self.store()?.resolve(id, &officer, &field, &value.into())?;
        self.changed(id);
        Ok(record.into())
    }

    /// Every change to the record, in causal order: who (device, officer), when (device clock,
    /// and the server's receive time once it has the change) and which fields.
    pub fn history(&self, id: String) -> Result<Vec<HistoryEntry>> {
        let id = parse_id(&id)?;
        Ok(self
            .store()?
            .history(id)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    // ----- quarantine ------------------------------------------------------------------------

    /// The commune this device enrolled in (`None` before enrollment or for a province account).
    pub fn enrolled_commune(&self) -> Result<Option<String>> {
        Ok(self.store()?.enrolled_commune().map(str::to_owned))
    }

    /// Records set aside, oldest first: pushed records the server refused (with its reason)
    /// and pulled records this version of the app cannot read. Every other record keeps syncing.
    pub fn quarantined(&self) -> Result<Vec<QuarantinedRecord>> {
        Ok(self
            .store()?
            .quarantined()?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Takes a record out of the quarantine: a refused one goes back to the outbox (the next
    /// sync pushes it, with any edit made since: for a reason that was transient, fixed by an
    /// edit, or fixed by an app upgrade); an unreadable incoming one is tried again at once.
    /// Returns whether it left the quarantine. `NotFound` when it is not quarantined.
    pub fn retry_quarantined(&self, id: String) -> Result<bool> {
        let id = parse_id(&id)?;
        let left = self.store()?.retry_quarantined(id)?;
        if left {
            self.changed(id);
        }
        Ok(left)
    }

    /// Discards a quarantined record as `officer` decided, for `reason` (written to the audit
    /// log): a refused record loses this device's changes the server never acknowledged (the
    /// record itself goes if the server never had it); an incoming one loses its kept data.
    pub fn discard_quarantined(&self, officer: String, id: String, reason: String) -> Result<()> {
        let id = parse_id(&id)?;
        self.store()?.discard_quarantined(id, &officer, &reason)?;
        self.changed(id);
        Ok(())
    }

    /// The fix for a refused record whose history the server cannot accept (created with
    /// another commune's code, an immutable field changed): a new record with the same content,
    /// for this device's commune, at the same status, created by `officer`; the old one is
    /// discarded with an audit entry naming the copy. Returns the new record.
    pub fn copy_quarantined_as_new(&self, officer: String, id: String) -> Result<Record> {
        let id = parse_id(&id)?;
        let copy = self.store()?.copy_quarantined_as_new(id, &officer)?;
        self.changed(id);
        self.changed(copy.id());
        Ok(copy.into())
    }

    /// What officers decided about quarantined records, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        Ok(self
            .store()?
            .audit_log()?
            .into_iter()
            .map(Into::into)
            .collect())
    }
}

impl Engine {
    pub(crate) fn store(&self) -> Result<MutexGuard<'_, DeviceStore>> {
        self.check_not_wiped()?;
        // Every store write is one SQLite transaction: a panic in another holder rolled it back,
        // so the store behind a poisoned lock is consistent.
        Ok(self.store.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `work` on the store off the caller's thread (a blocking-pool thread), so the app
    /// sees a `suspend` / `async` call that never blocks its UI thread.
    pub(crate) async fn on_store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut DeviceStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.check_not_wiped()?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut store)
        })
        .await
        .map_err(|e| CommuneSyncError::Storage(format!("store task: {e}")))?
    }

    fn check_not_wiped(&self) -> Result<()> {
        if self.wiped.load(Ordering::SeqCst) {
            return Err(CommuneSyncError::Wiped(
                "this device's store was wiped on the province's order".into(),
            ));
        }
        Ok(())
    }

    /// Destroys the store on the province's order: forgets the credential and the sync client,
    /// closes and deletes the store's files, then tells the observers. Returns the error the
    /// caller reports.
    fn wipe(&self, message: &str) -> CommuneSyncError {
        self.wiped.store(true, Ordering::SeqCst);
        {
            let mut state = self.state();
            state.credential = None;
            state.client = None;
        }
        let deleted = self
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .wipe();
        // Told even when a file could not be deleted: the app must know, and delete the rest.
        let (deleted_files, message) = match deleted {
            Ok(paths) => (
                paths.iter().map(|p| p.display().to_string()).collect(),
                message.to_owned(),
            ),
            Err(err) => (
                Vec::new(),
                format!("{message} (the wipe is incomplete: {err})"),
            ),
        };
        self.observers.emit(Event::Wiped(WipeEvent {
            device_id: self.device_id.to_string(),
            store_path: self.store_path.clone(),
            deleted_files,
            message: message.clone(),
        }));
        CommuneSyncError::Wiped(message)
    }

    fn state(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn transport(&self) -> Result<ReqwestTransport> {
        ReqwestTransport::new(&self.server_url)
            .map_err(|e| CommuneSyncError::invalid(format!("server_url: {e}")))
    }

    pub(crate) fn changed(&self, id: RecordId) {
        self.observers.emit(Event::Changed(ChangeEvent {
            origin: ChangeOrigin::Local,
            record_ids: vec![id.to_string()],
            changed_count: 1,
        }));
    }
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
