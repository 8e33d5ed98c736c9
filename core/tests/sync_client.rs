//! `SyncClient` against an in-process scripted server: a [`Transport`] that applies requests to a
//! second `DeviceStore` acting as a minimal hub, with faults injected between client and hub.
//! (Real HTTP end to end, through the poor-link emulator, is tested in `tests/`.)

// Helpers outside `#[test]` functions unwrap too: here a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use communesync_core::catalogue::{Procedure, ProcessingTime};
use communesync_core::clock::ManualClock;
use communesync_core::codec::DocCodec;
use communesync_core::protocol::{
    CatalogueUpdate, FeedDoc, Limits, PROTOCOL_VERSION, Refused, SyncRequest, SyncResponse,
};
use communesync_core::record::{
    Applicant, DeviceId, NewApplication, RecordDoc, RecordId, RecordKind, Source, decode_changes,
};
use communesync_core::store::{DeviceStore, Direction, StoreConfig};
use communesync_core::sync::{
    BackgroundPolicy, HttpRequest, HttpResponse, PolicyError, PolicyInput, Scope, SyncClient,
    SyncConfig, SyncDecision, SyncError, SyncPhase, SyncProgress, Transport, TransportError,
    enroll,
};

const OFFICER: &str = "lan.nguyen";
const COMMUNE: &str = "DB-MUONGPHANG";
const MONDAY_9AM: i64 = 1_795_399_200_000;

// ----- the scripted hub ------------------------------------------------------------------------

/// What the hub does to the next request instead of (or besides) answering it.
enum Fault {
    /// The connection fails before the hub sees the request.
    Transport,
    /// The hub answers with this status and error code, without processing the request.
    Status(u16, &'static str, Option<Duration>),
    /// The hub processes the request and commits, then the response is lost on the way back.
    LoseResponse,
    /// Runs before the hub processes the request (while the client waits for the answer).
    Hook(Box<dyn FnOnce() + Send>),
}

struct FeedEntry {
    doc: RecordId,
    kind: RecordKind,
    change: Vec<u8>,
    origin: DeviceId,
}

struct HubState {
    _dir: tempfile::TempDir,
    store: DeviceStore,
    codec: DocCodec,
    tokens: HashMap<String, DeviceId>,
    revoked: HashSet<String>,
    /// Tokens of devices the province ordered wiped.
    wiped: HashSet<String>,
    /// Records whose pushes the hub refuses, with the code it answers.
    refuse: HashMap<RecordId, &'static str>,
    /// Documents pushed in the last sync request.
    last_push: Vec<RecordId>,
    codes: HashSet<String>,
    feed: Vec<FeedEntry>,
    faults: VecDeque<Fault>,
    /// Requests that reached the transport (faulted ones included).
    requests: u64,
    catalogue: Option<(u64, String)>,
    clock: i64,
    /// The store epoch its sync answers carry (none: a server before epochs).
    epoch: Option<String>,
}

#[derive(Clone)]
struct Hub(Arc<Mutex<HubState>>);

impl Hub {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = DeviceStore::open(StoreConfig::new(dir.path().join("hub.db"))).unwrap();
        Hub(Arc::new(Mutex::new(HubState {
            _dir: dir,
            store,
            codec: DocCodec::new().unwrap(),
            tokens: HashMap::new(),
            revoked: HashSet::new(),
            wiped: HashSet::new(),
            refuse: HashMap::new(),
            last_push: Vec::new(),
            codes: HashSet::new(),
            feed: Vec::new(),
            faults: VecDeque::new(),
            requests: 0,
            catalogue: None,
            clock: MONDAY_9AM + 3_600_000,
            epoch: None,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.0.lock().unwrap()
    }

    fn register(&self, device: DeviceId) -> String {
        let token = format!("tok-{device}");
        self.state().tokens.insert(token.clone(), device);
        token
    }

    fn fault(&self, fault: Fault) {
        self.state().faults.push_back(fault);
    }

    fn requests(&self) -> u64 {
        self.state().requests
    }

    fn feed_len(&self) -> usize {
        self.state().feed.len()
    }

    /// The hub lost everything (restored from an old backup), tokens excepted.
    fn lose_data(&self) {
        let mut state = self.state();
        let dir = tempfile::tempdir().unwrap();
        state.store = DeviceStore::open(StoreConfig::new(dir.path().join("hub.db"))).unwrap();
        state._dir = dir;
        state.feed.clear();
    }

    fn handle(&self, req: HttpRequest) -> Result<HttpResponse, TransportError> {
        let mut state = self.state();
        state.requests += 1;
        let mut lose = false;
        match state.faults.pop_front() {
            None => {}
            Some(Fault::Transport) => {
                return Err(TransportError::Interrupted(
                    "connection reset by peer".into(),
                ));
            }
            Some(Fault::Status(status, code, retry_after)) => {
                return Ok(HttpResponse {
                    retry_after,
                    ..error(status, code)
                });
            }
            Some(Fault::LoseResponse) => lose = true,
            Some(Fault::Hook(hook)) => {
                drop(state);
                hook();
                state = self.state();
            }
        }
        let response = match req.path.as_str() {
            "/v1/sync" => HttpResponse {
                store_epoch: state.epoch.clone(),
                ..state.sync(&req)
            },
            "/v1/enroll" => state.enroll(&req),
            _ => error(404, "not_found"),
        };
        if lose {
            return Err(TransportError::Interrupted(
                "connection cut mid-body".into(),
            ));
        }
        Ok(response)
    }
}

fn error(status: u16, code: &str) -> HttpResponse {
    let body = format!(r#"{{"error":"{code}","message":"scripted {code}"}}"#).into_bytes();
    HttpResponse {
        status,
        bytes_sent: 300,
        bytes_received: 120 + body.len() as u64,
        body,
        retry_after: None,
        store_epoch: None,
    }
}

fn ok(body: Vec<u8>, sent: usize) -> HttpResponse {
    HttpResponse {
        status: 200,
        bytes_sent: 300 + sent as u64,
        bytes_received: 120 + body.len() as u64,
        body,
        retry_after: None,
        store_epoch: None,
    }
}

impl HubState {
    fn sync(&mut self, req: &HttpRequest) -> HttpResponse {
        assert_eq!(req.content_type, communesync_core::protocol::CONTENT_TYPE);
        let token = req.bearer.clone().unwrap_or_default();
        if self.wiped.contains(&token) {
            return error(403, "wiped");
        }
        if self.revoked.contains(&token) {
            return error(403, "revoked");
        }
        let Some(&device) = self.tokens.get(&token) else {
            return error(401, "unauthorized");
        };
        let request = SyncRequest::decode(&mut self.codec, &req.body, &Limits::default()).unwrap();
        assert_eq!(request.protocol, PROTOCOL_VERSION);
        let mut missing_deps = Vec::new();
        let mut refused = Vec::new();
        self.last_push.clear();
        for (position, doc) in request.push.iter().enumerate() {
            // A whole history may come without id: the record holds it.
            let id = doc.id.unwrap_or_else(|| {
                let changes = decode_changes(RecordId::new(), &doc.changes).unwrap();
                let (_, record) = RecordDoc::from_decoded(
                    None,
                    doc.kind,
                    changes,
                    DeviceId::new(),
                    Source::Untrusted,
                )
                .unwrap();
                record.id()
            });
            self.last_push.push(id);
            if let Some(code) = self.refuse.get(&id) {
                refused.push(Refused {
                    position: u32::try_from(position).unwrap(),
                    code: (*code).to_owned(),
                    message: format!("scripted {code}"),
                });
                continue;
            }
            let before = if self.store.contains(id).unwrap() {
                self.store.heads(id).unwrap()
            } else {
                Vec::new()
            };
            match self.store.apply_remote_changes(id, doc.kind, &doc.changes) {
                Ok(()) => {
                    for change in self.store.changes_since(id, &before).unwrap() {
                        self.feed.push(FeedEntry {
                            doc: id,
                            kind: doc.kind,
                            change,
                            origin: device,
                        });
                    }
                }
                Err(communesync_core::Error::InvalidInput { reason, .. })
                    if reason.contains("depend on") =>
                {
                    missing_deps.push(u32::try_from(position).unwrap());
                }
                Err(err) => panic!("hub refused {id}: {err}"),
            }
        }
        let pull = request.pull.unwrap();
        let mut feed: Vec<FeedDoc> = Vec::new();
        let mut index: HashMap<RecordId, usize> = HashMap::new();
        let mut bytes = 0usize;
        let mut next_cursor = pull.cursor;
        for (i, entry) in self
            .feed
            .iter()
            .enumerate()
            .skip(usize::try_from(pull.cursor).unwrap())
        {
            if entry.origin != device {
                if bytes > 0 && bytes + entry.change.len() > pull.max_bytes as usize {
                    break;
                }
                bytes += entry.change.len();
                let at = *index.entry(entry.doc).or_insert_with(|| {
                    feed.push(FeedDoc {
                        id: Some(entry.doc),
                        kind: entry.kind,
                        changes: Vec::new(),
                        // One receive time for the page: the first carries it, the rest add 0.
                        received_delta: if feed.is_empty() { self.clock } else { 0 },
                    });
                    feed.len() - 1
                });
                feed[at].changes.push(entry.change.clone());
            }
            next_cursor = i as u64 + 1;
        }
        let catalogue = self
            .catalogue
            .as_ref()
            .filter(|(version, _)| *version > request.catalogue_version)
            .map(|(version, json)| CatalogueUpdate {
                version: *version,
                json: json.clone(),
            });
        self.clock += 1000;
        let response = SyncResponse {
            protocol: PROTOCOL_VERSION,
            server_time: self.clock,
            missing_deps,
            refused,
            feed,
            next_cursor,
            more: (next_cursor as usize) < self.feed.len(),
            catalogue,
            extensions: Default::default(),
        };
        ok(response.encode(&mut self.codec).unwrap(), req.body.len())
    }

    fn enroll(&mut self, req: &HttpRequest) -> HttpResponse {
        assert_eq!(req.content_type, "application/json");
        assert!(req.bearer.is_none());
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        let code = body["code"].as_str().unwrap();
        assert!(!body["label"].as_str().unwrap().is_empty());
        if !self.codes.remove(code) {
            return error(401, "unauthorized");
        }
        let device: DeviceId = serde_json::from_value(body["device_id"].clone()).unwrap();
        let token = format!("secret-{device}");
        self.tokens.insert(token.clone(), device);
        let body = serde_json::json!({
            "device_id": device,
            "token": token,
            "scope": {"commune": COMMUNE},
        });
        ok(serde_json::to_vec(&body).unwrap(), req.body.len())
    }
}

impl Transport for Hub {
    fn send(
        &self,
        req: HttpRequest,
    ) -> impl Future<Output = Result<HttpResponse, TransportError>> + Send {
        let hub = self.clone();
        async move {
            // Let other tasks run, as a real exchange would.
            tokio::task::yield_now().await;
            hub.handle(req)
        }
    }
}

// ----- tablets ---------------------------------------------------------------------------------

struct Tablet {
    _dir: tempfile::TempDir,
    store: Arc<Mutex<DeviceStore>>,
    client: SyncClient<Hub>,
}

fn fast() -> SyncConfig {
    SyncConfig {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(50),
        ..SyncConfig::default()
    }
}

/// [`fast`] with feed pages of about 4 KB: a few records each, so a pull takes many requests.
fn small_pages() -> SyncConfig {
    SyncConfig {
        pull_batch_bytes: 4096,
        max_pull_batch_bytes: 4096,
        ..fast()
    }
}

fn tablet(hub: &Hub, config: SyncConfig) -> Tablet {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(MONDAY_9AM);
    let mut store =
        DeviceStore::open_with_clock(StoreConfig::new(dir.path().join("t.db")), Arc::new(clock))
            .unwrap();
    store
        .import_catalogue(&[Procedure {
            withdrawal_allowed: true,
            ..Procedure::new(
                "1.001193",
                "Đăng ký khai sinh",
                ProcessingTime::WorkingDays(3),
            )
        }])
        .unwrap();
    let token = hub.register(store.device_id());
    let store = Arc::new(Mutex::new(store));
    let client = SyncClient::new(hub.clone(), store.clone(), token, config).unwrap();
    Tablet {
        _dir: dir,
        store,
        client,
    }
}

/// Text that Automerge's own compression cannot shrink much, so batch sizes are predictable.
fn notes(seed: u64, len: usize) -> String {
    const SYLLABLES: &[&str] = &[
        "ban", "muong", "phang", "che", "can", "nga", "hoa", "sinh", "tong", "lo", "vi", "ca",
        "giang", "sung", "mua", "thao", "ly", "pom", "chu", "pao",
    ];
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut out = String::new();
    while out.len() < len {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        out.push_str(SYLLABLES[(x >> 33) as usize % SYLLABLES.len()]);
        out.push(' ');
    }
    out
}

impl Tablet {
    fn create(&self, n: usize, notes_len: usize) -> Vec<RecordId> {
        let mut store = self.store.lock().unwrap();
        (0..n)
            .map(|i| {
                store
                    .create_application(
                        OFFICER,
                        NewApplication {
                            commune_code: COMMUNE.into(),
                            procedure_code: "1.001193".into(),
                            applicant: Applicant {
                                name: format!("Lò Thị Hương {i}"),
                                village: "Bản Phăng".into(),
                                ..Default::default()
                            },
                            notes: notes(i as u64 + notes_len as u64 * 1000, notes_len),
                            ..Default::default()
                        },
                    )
                    .unwrap()
                    .id
            })
            .collect()
    }

    async fn sync(&self) -> Result<communesync_core::sync::SyncReport, SyncError> {
        self.client.sync(&|_| {}).await
    }

    fn pending(&self) -> u64 {
        self.store.lock().unwrap().pending_count().unwrap()
    }

    fn heads(&self, id: RecordId) -> Vec<automerge::ChangeHash> {
        self.store.lock().unwrap().heads(id).unwrap()
    }

    fn history_len(&self, id: RecordId) -> usize {
        self.store.lock().unwrap().history(id).unwrap().len()
    }
}

/// How many batches `pending_push` makes of documents of these sizes (greedy, at least one
/// document per batch).
fn batches(sizes: &[usize], budget: usize) -> u64 {
    let (mut count, mut bytes) = (0u64, 0usize);
    for &size in sizes {
        if count == 0 || (bytes > 0 && bytes + size > budget) {
            count += 1;
            bytes = 0;
        }
        bytes += size;
    }
    count
}

fn assert_no_duplicates_in_feed(hub: &Hub) {
    let state = hub.state();
    let unique: HashSet<&Vec<u8>> = state.feed.iter().map(|e| &e.change).collect();
    assert_eq!(unique.len(), state.feed.len(), "a change was stored twice");
}

// ----- tests -----------------------------------------------------------------------------------

#[tokio::test]
async fn batches_grow_on_a_link_that_takes_them_and_nothing_is_lost() {
    let hub = Hub::new();
    let start = 4 * 1024;
    let a = tablet(
        &hub,
        SyncConfig {
            push_batch_bytes: start,
            max_push_batch_bytes: 64 * 1024,
            // Every exchange counts as fast, however busy the machine.
            target_request_time: Duration::from_secs(3600),
            ..fast()
        },
    );
    a.create(60, 1500);
    let sizes: Vec<usize> = a
        .store
        .lock()
        .unwrap()
        .pending_push(usize::MAX)
        .unwrap()
        .iter()
        .map(|doc| doc.changes.iter().map(Vec::len).sum())
        .collect();
    let fixed = batches(&sizes, start);
    let report = a.sync().await.unwrap();
    assert_eq!((report.pushed_docs, report.pending_docs), (60, 0));
    // Windows of 4, 16, 64, 64... KiB instead of 4 KiB each time.
    assert!(report.requests < fixed / 2, "{report:?} vs {fixed} fixed");
    assert_eq!(hub.state().feed.len(), 60);
    assert_no_duplicates_in_feed(&hub);
}

#[tokio::test]
async fn first_sync_pushes_in_size_bounded_batches_and_an_idle_sync_is_one_request() {
    let hub = Hub::new();
    let budget = 8 * 1024;
    let a = tablet(
        &hub,
        SyncConfig {
            // A fixed size: no room to grow.
            push_batch_bytes: budget,
            max_push_batch_bytes: budget,
            ..fast()
        },
    );
    let ids = a.create(40, 1500);
    let sizes: Vec<usize> = a
        .store
        .lock()
        .unwrap()
        .pending_push(usize::MAX)
        .unwrap()
        .iter()
        .map(|doc| doc.changes.iter().map(Vec::len).sum())
        .collect();
    let total: usize = sizes.iter().sum();
    let expected = batches(&sizes, budget);
    // Documents of about equal size pack into ceil(total / budget) batches, give or take the
    // space a whole document cannot fill at the end of each batch.
    assert!(expected >= total.div_ceil(budget) as u64);
    assert!(expected <= total.div_ceil(budget - sizes.iter().max().unwrap()) as u64);

    let report = a.sync().await.unwrap();
    assert_eq!(report.requests, expected, "{report:?}");
    assert_eq!(hub.requests(), expected);
    assert_eq!(report.pushed_docs, 40);
    assert_eq!(report.pushed_changes, 40);
    assert_eq!((report.retries, report.pending_docs), (0, 0));
    // Bodies are counted (and compressed: uncompressed changes shrink well with the dictionary).
    assert!(report.bytes_up > total as u64 / 20, "{report:?}");
    assert!(report.bytes_up < total as u64, "{report:?}");
    assert_eq!(a.pending(), 0);
    for id in &ids {
        assert_eq!(hub.state().store.heads(*id).unwrap(), a.heads(*id));
    }

    let idle = a.sync().await.unwrap();
    assert_eq!(idle.requests, 1, "{idle:?}");
    assert_eq!(hub.requests(), expected + 1);
    assert_eq!((idle.pushed_docs, idle.pulled_docs), (0, 0));
    assert!(idle.bytes_up < 1024, "an idle sync is small: {idle:?}");
}

#[tokio::test]
async fn transient_failures_are_retried_a_bounded_number_of_times() {
    let hub = Hub::new();
    let a = tablet(
        &hub,
        SyncConfig {
            max_attempts: 4,
            ..fast()
        },
    );
    a.create(3, 100);

    hub.fault(Fault::Transport);
    hub.fault(Fault::Status(503, "unavailable", None));
    hub.fault(Fault::Status(500, "internal", None));
    let report = a.sync().await.unwrap();
    assert_eq!((report.requests, report.retries), (4, 3), "{report:?}");
    assert_eq!(report.pushed_docs, 3);
    assert_eq!(a.pending(), 0);

    // A server that stays down: exactly max_attempts, then an error, and nothing is lost.
    a.create(2, 100);
    let before = hub.requests();
    for _ in 0..10 {
        hub.fault(Fault::Status(503, "unavailable", None));
    }
    let err = a.sync().await.unwrap_err();
    assert!(
        matches!(&err, SyncError::Server(m) if m.contains("unavailable")),
        "{err}"
    );
    assert_eq!(hub.requests() - before, 4);
    assert_eq!(a.pending(), 2);

    // No network at all.
    hub.state().faults.clear();
    let before = hub.requests();
    for _ in 0..10 {
        hub.fault(Fault::Transport);
    }
    let err = a.sync().await.unwrap_err();
    assert!(matches!(err, SyncError::Offline(_)), "{err}");
    assert_eq!(hub.requests() - before, 4);
    assert_eq!(a.pending(), 2);

    hub.state().faults.clear();
    let report = a.sync().await.unwrap();
    assert_eq!((report.requests, report.pushed_docs), (1, 2));
}

#[tokio::test]
async fn rate_limits_are_honoured_or_end_the_sync() {
    let hub = Hub::new();
    let a = tablet(&hub, fast());
    a.create(1, 100);
    hub.fault(Fault::Status(
        429,
        "rate_limited",
        Some(Duration::from_millis(40)),
    ));
    let started = Instant::now();
    let report = a.sync().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(40));
    assert_eq!((report.requests, report.retries), (2, 1));

    // Asked to wait longer than max_backoff: give up at once, the scheduler comes back later.
    a.create(1, 100);
    let before = hub.requests();
    hub.fault(Fault::Status(
        429,
        "rate_limited",
        Some(Duration::from_secs(600)),
    ));
    let err = a.sync().await.unwrap_err();
    assert!(
        matches!(&err, SyncError::Rejected { status: 429, code, .. } if code == "rate_limited"),
        "{err}"
    );
    assert_eq!(hub.requests() - before, 1);
    assert_eq!(a.pending(), 1);
}

#[tokio::test]
async fn refusals_are_not_retried() {
    let hub = Hub::new();
    let a = tablet(&hub, fast());
    a.create(2, 100);

    let cases: Vec<(u16, &'static str)> = vec![
        (400, "malformed"),
        (403, "forbidden"),
        (413, "too_large"),
        (415, "unsupported_media_type"),
    ];
    for (status, code) in cases {
        let before = hub.requests();
        hub.fault(Fault::Status(status, code, None));
        let err = a.sync().await.unwrap_err();
        assert_eq!(hub.requests() - before, 1, "{status} was retried");
        match (status, err) {
            (403, SyncError::Forbidden(message)) => assert_eq!(message, "scripted forbidden"),
            (
                _,
                SyncError::Rejected {
                    status: s, code: c, ..
                },
            ) => {
                assert_eq!((s, c.as_str()), (status, code));
            }
            (_, err) => panic!("{status}: {err}"),
        }
    }

    // Revoked by the province.
    let token = hub
        .state()
        .tokens
        .iter()
        .find(|(_, d)| **d == a.store.lock().unwrap().device_id())
        .map(|(t, _)| t.clone())
        .unwrap();
    hub.state().revoked.insert(token.clone());
    let before = hub.requests();
    assert!(matches!(a.sync().await, Err(SyncError::Revoked)));
    assert_eq!(hub.requests() - before, 1);

    // Unknown to the server.
    hub.state().revoked.clear();
    hub.state().tokens.remove(&token);
    let before = hub.requests();
    assert!(matches!(a.sync().await, Err(SyncError::Unauthorized)));
    assert_eq!(hub.requests() - before, 1);
    assert_eq!(a.pending(), 2, "nothing was acknowledged");
}

#[tokio::test]
async fn a_response_lost_after_the_server_applied_it_is_resent_without_duplicates() {
    let hub = Hub::new();
    let once = SyncConfig {
        max_attempts: 1,
        ..fast()
    };
    let a = tablet(&hub, once.clone());
    let b = tablet(
        &hub,
        SyncConfig {
            pull_batch_bytes: 2048,
            ..once
        },
    );
    let from_a = a.create(5, 600);
    let from_b = b.create(2, 600);

    // The hub stores a's push, the answer never arrives.
    hub.fault(Fault::LoseResponse);
    assert!(matches!(a.sync().await, Err(SyncError::Offline(_))));
    assert_eq!(a.pending(), 5, "unacknowledged work stays in the outbox");
    let feed = hub.feed_len();
    assert_eq!(feed, 5);
    let report = a.sync().await.unwrap();
    assert_eq!((report.requests, report.pushed_docs), (1, 5));
    assert_eq!(
        hub.feed_len(),
        feed,
        "the resent changes were not stored twice"
    );

    // b's push is stored and a's feed sent, the answer is lost: b resends and re-pulls.
    hub.fault(Fault::LoseResponse);
    assert!(matches!(b.sync().await, Err(SyncError::Offline(_))));
    assert_eq!(b.store.lock().unwrap().sync_cursor().unwrap(), 0);
    assert!(!b.store.lock().unwrap().contains(from_a[0]).unwrap());
    let report = b.sync().await.unwrap();
    assert_eq!(report.pushed_docs, 2);
    assert_eq!(report.pulled_docs, 5);
    assert!(report.requests > 1, "small pull batches: {report:?}");

    // Lost answers inside one sync are retried with the same batch.
    let retrying = tablet(&hub, fast());
    let from_c = retrying.create(1, 100);
    hub.fault(Fault::LoseResponse);
    hub.fault(Fault::LoseResponse);
    let report = retrying.sync().await.unwrap();
    assert_eq!(report.retries, 2);
    assert_eq!(report.pulled_docs, 7);

    a.sync().await.unwrap();
    b.sync().await.unwrap();
    assert_no_duplicates_in_feed(&hub);
    assert_eq!(hub.feed_len(), 8);
    for id in from_a.iter().chain(&from_b).chain(&from_c) {
        let heads = hub.state().store.heads(*id).unwrap();
        assert_eq!(a.heads(*id), heads);
        assert_eq!(b.heads(*id), heads);
        assert_eq!(retrying.heads(*id), heads);
        assert_eq!(a.history_len(*id), 1);
        assert_eq!(b.history_len(*id), 1);
    }
    assert_eq!((a.pending(), b.pending(), retrying.pending()), (0, 0, 0));
}

#[tokio::test]
async fn changes_from_another_device_arrive_and_conflicts_are_counted() {
    let hub = Hub::new();
    let a = tablet(&hub, fast());
    let b = tablet(&hub, small_pages());
    hub.state().catalogue = Some((
        2,
        r#"{"procedures":[{"code":"1.001193","name":"Đăng ký khai sinh","processing_days":5}],"holidays":["2026-12-31"]}"#.into(),
    ));
    let ids = a.create(20, 800);
    a.sync().await.unwrap();

    // b pulls a's records over several feed batches.
    let report = b.sync().await.unwrap();
    assert_eq!((report.pulled_docs, report.pulled_changes), (20, 20));
    assert!(report.requests >= 4, "{report:?}");
    assert_eq!((report.conflicts, report.rejected), (0, 0));
    assert_eq!(b.store.lock().unwrap().catalogue_version().unwrap(), 2);
    assert_eq!(
        b.store
            .lock()
            .unwrap()
            .procedure("1.001193")
            .unwrap()
            .processing,
        communesync_core::catalogue::ProcessingTime::WorkingDays(5)
    );
    assert!(b.store.lock().unwrap().last_sync_at().unwrap().is_some());

    // Both assign the same application to different officers while apart.
    let id = ids[0];
    let assign = |t: &Tablet, who: &str| {
        t.store
            .lock()
            .unwrap()
            .update_application(id, OFFICER, |app| app.assignee = Some(who.into()))
            .unwrap();
    };
    assign(&a, "lan.nguyen");
    assign(&b, "minh.lo");
    a.sync().await.unwrap();
    let report = b.sync().await.unwrap();
    assert_eq!(report.pushed_docs, 1);
    assert_eq!((report.pulled_docs, report.pulled_changes), (1, 1));
    assert_eq!(report.conflicts, 1, "{report:?}");
    assert!(!b.store.lock().unwrap().conflicts(id).unwrap().is_empty());

    let report = a.sync().await.unwrap();
    assert_eq!((report.pulled_docs, report.conflicts), (1, 1));
    assert_eq!(a.heads(id), b.heads(id));
    assert_eq!(a.heads(id), hub.state().store.heads(id).unwrap());
    assert_no_duplicates_in_feed(&hub);
}

#[tokio::test]
async fn a_long_pull_asks_for_the_next_page_while_applying_one_and_a_failure_keeps_what_was_applied()
 {
    let hub = Hub::new();
    let a = tablet(&hub, fast());
    let pages = small_pages();
    let ids = a.create(24, 1500);
    a.sync().await.unwrap();

    // A clean pull of many pages: one request per page, nothing extra for the pages fetched
    // ahead, every record once.
    let b = tablet(&hub, pages.clone());
    let before = hub.requests();
    let report = b.sync().await.unwrap();
    assert_eq!(report.pulled_docs, 24, "{report:?}");
    assert!(report.requests >= 6, "{report:?}");
    assert_eq!(hub.requests() - before, report.requests);
    for id in &ids {
        assert_eq!(b.heads(*id), a.heads(*id));
        assert_eq!(b.history_len(*id), 1);
    }

    // The third request (sent while the second page is applied) is refused: the sync fails,
    // the two pages before it stay applied with the cursor after them, and the next sync
    // pulls the rest from there.
    let c = tablet(&hub, pages);
    hub.fault(Fault::Hook(Box::new(|| {})));
    hub.fault(Fault::Hook(Box::new(|| {})));
    hub.fault(Fault::Status(400, "malformed", None));
    let err = c.sync().await.unwrap_err();
    assert!(
        matches!(err, SyncError::Rejected { status: 400, .. }),
        "{err}"
    );
    let (have, cursor) = {
        let store = c.store.lock().unwrap();
        let have = ids
            .iter()
            .filter(|id| store.contains(**id).unwrap())
            .count();
        (have, store.sync_cursor().unwrap())
    };
    assert!(
        have >= 2 && have < ids.len(),
        "{have} records after two pages"
    );
    assert_eq!(cursor, have as u64, "the cursor is after the applied pages");
    let report = c.sync().await.unwrap();
    assert_eq!(report.pulled_docs as usize, ids.len() - have, "{report:?}");
    for id in &ids {
        assert_eq!(c.heads(*id), a.heads(*id));
        assert_eq!(c.history_len(*id), 1);
    }
}

#[tokio::test]
async fn the_next_page_is_asked_for_while_one_is_applied_and_dropped_when_that_fails() {
    let hub = Hub::new();
    let a = tablet(&hub, fast());
    let ids = a.create(12, 3000);
    a.sync().await.unwrap();

    // A tablet whose disk is full: its store holds what it has but cannot grow (a quota below
    // the file's size stops it at its size).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.db");
    let device = {
        let store = DeviceStore::open(StoreConfig::new(&path)).unwrap();
        store.device_id()
    };
    let open = |quota: Option<u64>| {
        let mut config = StoreConfig::new(&path);
        config.max_size_bytes = quota;
        Arc::new(Mutex::new(DeviceStore::open(config).unwrap()))
    };
    let token = hub.register(device);
    let pages = small_pages();
    let store = open(Some(0));
    let client = SyncClient::new(hub.clone(), store.clone(), token.clone(), pages.clone()).unwrap();
    let before = hub.requests();
    let err = client.sync(&|_| {}).await.unwrap_err();
    assert!(
        matches!(err, SyncError::Store(communesync_core::Error::StorageFull)),
        "{err}"
    );
    // Each page is one record here (3 KB of notes against a 4 KB window). The pages before the
    // full disk stay applied with the cursor after them; the page that did not fit is not kept;
    // and the page after it had already been asked for while it was being applied (it is
    // dropped unread): one request more than the pages tried.
    let have = {
        let store = store.lock().unwrap();
        let have = ids
            .iter()
            .filter(|id| store.contains(**id).unwrap())
            .count();
        assert_eq!(store.sync_cursor().unwrap(), have as u64);
        have
    };
    assert!(have < ids.len(), "the quota never filled");
    assert_eq!(hub.requests() - before, have as u64 + 2);
    drop(client);
    drop(store);

    // Space returns: the pull goes on from the cursor and gets every record once.
    let store = open(None);
    let client = SyncClient::new(hub.clone(), store.clone(), token, pages).unwrap();
    let report = client.sync(&|_| {}).await.unwrap();
    assert_eq!(report.pulled_docs as usize, ids.len() - have, "{report:?}");
    let mut store = store.lock().unwrap();
    for id in &ids {
        assert_eq!(store.heads(*id).unwrap(), a.heads(*id));
        assert_eq!(store.history(*id).unwrap().len(), 1);
    }
}

#[tokio::test]
async fn progress_is_reported_after_every_request_with_growing_counters() {
    let hub = Hub::new();
    let a = tablet(
        &hub,
        SyncConfig {
            push_batch_bytes: 6 * 1024,
            max_push_batch_bytes: 6 * 1024,
            ..fast()
        },
    );
    a.create(30, 1500);
    hub.fault(Fault::Transport);
    let seen: Mutex<Vec<SyncProgress>> = Mutex::new(Vec::new());
    let report = a
        .client
        .sync(&|p| seen.lock().unwrap().push(p))
        .await
        .unwrap();
    let seen = seen.into_inner().unwrap();
    assert!(seen.len() >= 5, "{seen:?}");
    assert_eq!(seen.len() as u64, report.requests - report.retries);
    for pair in seen.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        assert!(after.requests > before.requests);
        assert!(after.bytes_up > before.bytes_up);
        assert!(after.bytes_down > before.bytes_down);
        assert!(after.pushed_docs > before.pushed_docs);
        assert!(after.pending_docs < before.pending_docs);
        assert_eq!(before.phase, SyncPhase::Pushing);
    }
    let last = seen.last().unwrap();
    assert_eq!(last.phase, SyncPhase::Done);
    assert_eq!(
        (
            last.requests,
            last.bytes_up,
            last.pushed_docs,
            last.pending_docs
        ),
        (report.requests, report.bytes_up, 30, 0)
    );
}

#[tokio::test]
async fn documents_the_server_lacks_the_base_of_are_sent_whole() {
    let hub = Hub::new();
    let a = tablet(&hub, fast());
    let ids = a.create(3, 200);
    a.sync().await.unwrap();
    hub.lose_data();
    a.store
        .lock()
        .unwrap()
        .update_application(ids[1], OFFICER, |app| app.notes.push_str(" Đã bổ sung."))
        .unwrap();
    let report = a.sync().await.unwrap();
    // Round 1: the lone new change is refused for missing dependencies; round 2: whole history.
    assert_eq!(report.requests, 2, "{report:?}");
    assert_eq!((report.pushed_docs, report.pushed_changes), (1, 2));
    assert_eq!(hub.state().store.heads(ids[1]).unwrap(), a.heads(ids[1]));
    assert_eq!(a.pending(), 0);
}

#[tokio::test]
async fn a_new_store_epoch_makes_the_tablet_give_back_everything_once() {
    let hub = Hub::new();
    let a = tablet(&hub, fast());
    let ids = a.create(5, 200);
    hub.state().epoch = Some("e1".into());
    a.sync().await.unwrap();
    // The hub restored from a backup older than everything: a new epoch.
    hub.lose_data();
    hub.state().epoch = Some("e2".into());
    let report = a.sync().await.unwrap();
    assert_eq!(report.pushed_docs, 5, "{report:?}");
    for id in &ids {
        assert_eq!(hub.state().store.heads(*id).unwrap(), a.heads(*id));
    }
    assert_eq!(a.pending(), 0);
    // A replica still sending the old epoch, then the new one: nothing is redone.
    for epoch in ["e1", "e2"] {
        hub.state().epoch = Some(epoch.into());
        let report = a.sync().await.unwrap();
        assert_eq!((report.requests, report.pushed_docs), (1, 0), "{report:?}");
    }
    // A server without epochs (or a malformed header, which the transport drops) changes
    // nothing either.
    hub.state().epoch = None;
    assert_eq!(a.sync().await.unwrap().pushed_docs, 0);
}

#[tokio::test]
async fn edits_during_a_sync_go_out_in_the_same_sync_and_the_store_stays_usable() {
    let hub = Hub::new();
    let a = tablet(&hub, fast());
    let ids = a.create(2, 200);
    let store = a.store.clone();
    let id = ids[0];
    hub.fault(Fault::Hook(Box::new(move || {
        // The client must not hold the store while it waits for the server.
        let mut store = store.try_lock().expect("store locked across an await");
        store
            .update_application(id, OFFICER, |app| app.assignee = Some("minh.lo".into()))
            .unwrap();
    })));
    let report = a.sync().await.unwrap();
    assert_eq!(report.requests, 2, "{report:?}");
    assert_eq!(report.pushed_docs, 3);
    assert_eq!(a.pending(), 0);
    assert_eq!(hub.state().store.heads(id).unwrap(), a.heads(id));
}

#[tokio::test]
async fn sync_futures_can_be_spawned() {
    fn assert_send<F: Send>(_: &F) {}
    let hub = Hub::new();
    let a = tablet(&hub, fast());
    let future = a.client.sync(&|_| {});
    assert_send(&future);
    drop(future);
}

#[tokio::test]
async fn enrollment_turns_a_one_time_code_into_a_credential() {
    let hub = Hub::new();
    hub.state().codes.insert("7QK-2M9".into());
    let device = DeviceId::new();
    let credentials = enroll(&hub, "7QK-2M9", device, "Máy tính bảng 1")
        .await
        .unwrap();
    assert_eq!(credentials.device_id, device);
    assert_eq!(credentials.scope, Scope::Commune(COMMUNE.into()));
    assert_eq!(hub.state().tokens.get(&credentials.token), Some(&device));

    // The code was used up.
    assert!(matches!(
        enroll(&hub, "7QK-2M9", DeviceId::new(), "Máy 2").await,
        Err(SyncError::Unauthorized)
    ));
    // Too many tries: refused at once, no retry.
    let before = hub.requests();
    hub.fault(Fault::Status(
        429,
        "rate_limited",
        Some(Duration::from_secs(1)),
    ));
    let err = enroll(&hub, "whatever", DeviceId::new(), "Máy 3")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SyncError::Rejected { status: 429, code, .. } if code == "rate_limited"),
        "{err}"
    );
    assert_eq!(hub.requests() - before, 1);
}

// ----- one bad record never stops a sync ------------------------------------------------------

/// A change a newer app made on top of `changes`: a top-level `key` this build reads as part of
/// the record (here a status value it does not know).
fn newer_app_change(changes: &[Vec<u8>], key: &str, value: &str) -> Vec<u8> {
    use automerge::transaction::Transactable;
    let mut doc = automerge::AutoCommit::new();
    for change in changes {
        doc.load_incremental(change).unwrap();
    }
    let heads = doc.get_heads();
    doc.put(automerge::ROOT, key, value).unwrap();
    doc.commit();
    doc.get_changes(&heads)[0].raw_bytes().to_vec()
}

fn token_of(hub: &Hub, tablet: &Tablet) -> String {
    let device = tablet.store.lock().unwrap().device_id();
    hub.state()
        .tokens
        .iter()
        .find(|(_, d)| **d == device)
        .map(|(t, _)| t.clone())
        .unwrap()
}

#[tokio::test]
async fn a_refused_document_is_set_aside_and_everything_else_flows_both_ways() {
    let hub = Hub::new();
    let b = tablet(&hub, fast());
    let from_b = b.create(3, 200);
    b.sync().await.unwrap();
    // Small batches: the refused record goes alone in a round of its own.
    let a = tablet(
        &hub,
        SyncConfig {
            push_batch_bytes: 1,
            max_push_batch_bytes: 1,
            ..fast()
        },
    );
    let ids = a.create(5, 200);
    hub.state().refuse.insert(ids[0], "immutable_field");
    hub.state().refuse.insert(ids[3], "not_attributed");

    let report = a.sync().await.unwrap();
    assert_eq!(
        (report.pushed_docs, report.refused, report.quarantined),
        (3, 2, 2),
        "{report:?}"
    );
    assert_eq!(
        (report.pulled_docs, report.pending_docs),
        (3, 0),
        "{report:?}"
    );
    for id in &from_b {
        assert_eq!(a.heads(*id), b.heads(*id));
    }
    for id in [ids[1], ids[2], ids[4]] {
        assert_eq!(hub.state().store.heads(id).unwrap(), a.heads(id));
    }
    assert!(!hub.state().store.contains(ids[0]).unwrap());
    let listed = a.store.lock().unwrap().quarantined().unwrap();
    let codes: Vec<(RecordId, &str)> = listed
        .iter()
        .map(|e| (e.record_id, e.code.as_str()))
        .collect();
    assert_eq!(
        codes,
        vec![(ids[0], "immutable_field"), (ids[3], "not_attributed")]
    );
    assert_eq!(listed[0].message, "scripted immutable_field");
    assert_eq!(listed[0].direction, Direction::Outgoing);
    // The server's receive time is in the history of what it acknowledged.
    let received = a.store.lock().unwrap().history(ids[1]).unwrap()[0].server_received_at;
    assert!(received.is_some_and(|t| t > MONDAY_9AM), "{received:?}");
    let pulled = a.store.lock().unwrap().history(from_b[0]).unwrap()[0].server_received_at;
    assert!(pulled.is_some(), "pulled changes carry the feed's time");

    // An edit of a refused record is kept, and not pushed behind the app's back.
    a.store
        .lock()
        .unwrap()
        .update_application(ids[0], OFFICER, |app| app.notes.push_str(" Đã sửa."))
        .unwrap();
    let before = hub.requests();
    let report = a.sync().await.unwrap();
    assert_eq!(
        (report.requests, report.pushed_docs, report.refused),
        (1, 0, 0)
    );
    assert_eq!(hub.requests() - before, 1);
    assert!(hub.state().last_push.is_empty());
    assert_eq!(report.quarantined, 2);

    // Once the app retries (the server's reason went away), it goes with the edit.
    hub.state().refuse.remove(&ids[0]);
    assert!(a.store.lock().unwrap().retry_quarantined(ids[0]).unwrap());
    let report = a.sync().await.unwrap();
    assert_eq!(
        (report.pushed_docs, report.pushed_changes),
        (1, 2),
        "{report:?}"
    );
    assert_eq!(report.quarantined, 1);
    assert_eq!(hub.state().store.heads(ids[0]).unwrap(), a.heads(ids[0]));
    assert_eq!(hub.state().store.history(ids[0]).unwrap().len(), 2);
    assert_no_duplicates_in_feed(&hub);
}

#[tokio::test]
async fn a_pulled_document_this_build_cannot_read_is_kept_and_tried_again_by_the_next_build() {
    let hub = Hub::new();
    let a = tablet(&hub, fast());
    let ids = a.create(3, 200);
    a.sync().await.unwrap();
    // A newer app gave one record a status this build does not know.
    let base = a.store.lock().unwrap().changes_since(ids[1], &[]).unwrap();
    let newer = newer_app_change(&base, "status", "archived");
    hub.state().feed.push(FeedEntry {
        doc: ids[1],
        kind: RecordKind::Application,
        change: newer.clone(),
        origin: DeviceId::new(),
    });
    let later = a.create(1, 200);
    a.sync().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let open = |app_version: Option<&str>| {
        let mut config = StoreConfig::new(&path);
        config.app_version = app_version.map(str::to_owned);
        Arc::new(Mutex::new(DeviceStore::open(config).unwrap()))
    };
    let store = open(Some("1.0"));
    let token = hub.register(store.lock().unwrap().device_id());
    let client = SyncClient::new(hub.clone(), store.clone(), token.clone(), fast()).unwrap();
    let report = client.sync(&|_| {}).await.unwrap();
    // The record is there as the feed's first change left it; its unreadable change is kept,
    // the cursor moved past it, and the record created after it arrived.
    assert_eq!((report.rejected, report.quarantined), (1, 1), "{report:?}");
    assert_eq!(
        store.lock().unwrap().sync_cursor().unwrap(),
        hub.feed_len() as u64
    );
    assert!(store.lock().unwrap().contains(later[0]).unwrap());
    let entry = store.lock().unwrap().quarantined().unwrap()[0].clone();
    assert_eq!(
        (
            entry.record_id,
            entry.direction,
            entry.code.as_str(),
            entry.attempts
        ),
        (ids[1], Direction::Incoming, "unreadable", 1)
    );
    // The same build does not try again in vain at every sync.
    client.sync(&|_| {}).await.unwrap();
    assert_eq!(store.lock().unwrap().quarantined().unwrap()[0].attempts, 1);
    drop(client);
    drop(store);

    // An upgraded app tries again at its first sync.
    let store = open(Some("1.1"));
    let client = SyncClient::new(hub.clone(), store.clone(), token, fast()).unwrap();
    let report = client.sync(&|_| {}).await.unwrap();
    assert_eq!(report.quarantined, 1);
    assert_eq!(store.lock().unwrap().quarantined().unwrap()[0].attempts, 2);
}

#[tokio::test]
async fn upgrade_required_and_wiped_are_errors_of_their_own() {
    let hub = Hub::new();
    let a = tablet(&hub, fast());
    a.create(2, 100);

    let before = hub.requests();
    hub.fault(Fault::Status(426, "upgrade_required", None));
    let err = a.sync().await.unwrap_err();
    assert!(
        matches!(&err, SyncError::UpgradeRequired(m) if m.contains("upgrade_required")),
        "{err}"
    );
    assert_eq!(hub.requests() - before, 1, "not retried");
    assert_eq!(PolicyError::from(&err), PolicyError::UpgradeRequired);
    assert!(a.store.lock().unwrap().upgrade_required().unwrap());
    assert_eq!(a.pending(), 2, "nothing was acknowledged");
    let policy = BackgroundPolicy::default().next_sync_after(&PolicyInput {
        pending_changes: 2,
        consecutive_failures: 1,
        last_error: Some(PolicyError::from(&err)),
        ..PolicyInput::default()
    });
    assert_eq!(policy, SyncDecision::Stop);
    // A sync that goes through (the server was upgraded back, say) clears it.
    a.sync().await.unwrap();
    assert!(!a.store.lock().unwrap().upgrade_required().unwrap());

    a.create(1, 100);
    let token = token_of(&hub, &a);
    hub.state().wiped.insert(token);
    let before = hub.requests();
    let err = a.sync().await.unwrap_err();
    assert!(matches!(err, SyncError::Wiped(_)), "{err}");
    assert_eq!(hub.requests() - before, 1, "not retried");
    assert_eq!(PolicyError::from(&err), PolicyError::Wiped);
    assert_eq!(a.pending(), 1);
}
