//! Hostile input at the HTTP level, over real HTTP on 127.0.0.1, on SQLite and PostgreSQL:
//! huge declared lengths, chunked floods, lying and bombing frames, oversized counts, wrong and
//! missing content types, invalid UTF-8, deeply nested and overlong JSON, bad headers, replayed
//! requests, and records that no tablet could have written. What is wrong with a whole request
//! (credentials, content type, protocol version, a body that does not decode or is over a limit,
//! a record named twice) gets a clear 4xx (the protocol's JSON error where the server's own
//! handlers answer) and changes nothing; what is wrong with one pushed document is refused for
//! that document alone (200, its position and reason in `refused`), a good document beside it is
//! stored. No panic, and the server keeps serving. `sync_e2e.rs` already covers garbage, truncated and corrupt bodies, a
//! 100 MiB bomb and a plain 9 MiB body; they are not repeated here.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use communesync_core::codec::DocCodec;
use communesync_core::protocol::{
    CONTENT_TYPE, CONTENT_TYPE_V2, CONTENT_TYPE_V3, Limits, PROTOCOL_V2, PROTOCOL_V3,
    PROTOCOL_VERSION, PullRequest, PushDoc, SyncRequest, SyncResponse,
};
use communesync_core::record::{
    Applicant, Application, Author, DeviceId, Record, RecordDoc, RecordId, RecordKind, Status,
};
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_core::sync::{ReqwestTransport, enroll};
use communesync_tests::{TestServer, test_databases};

const COMMUNE: &str = "DB-MUONGPHANG";

/// One raw HTTP/1.1 exchange on a fresh connection: writes `head` and `body` (stopping early
/// if the server closes), then reads the status line. `None` when the server closed without
/// answering. Panics when no answer comes within 10 s.
fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> Option<u16> {
    try_raw(addr, head, body).unwrap_or_else(|e| panic!("{e}"))
}

/// [`raw`], with waiting 10 s in vain as an error.
fn try_raw(addr: SocketAddr, head: &str, body: &[u8]) -> Result<Option<u16>, String> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    if stream.write_all(head.as_bytes()).is_err() {
        return Ok(None);
    }
    // The server may answer and close before the body is sent: that is the point.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&buf[..n]);
                if response.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "no answer within 10 s to {}",
                    head.lines().next().unwrap_or_default()
                ));
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&response);
    Ok(text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok()))
}

/// Junk in the shape of an Automerge chunk (magic and a checksum that the wire leaves out): the
/// server receives `not a change` as a change's bytes.
fn not_a_change() -> Vec<u8> {
    [&[0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0][..], b"not a change"].concat()
}

fn sync_body(push: Vec<PushDoc>) -> Vec<u8> {
    request(push).encode(&mut DocCodec::new().unwrap()).unwrap()
}

fn request(push: Vec<PushDoc>) -> SyncRequest {
    SyncRequest {
        protocol: PROTOCOL_VERSION,
        device_time: 0,
        push,
        pull: Some(PullRequest {
            cursor: 0,
            max_bytes: 1 << 20,
        }),
        catalogue_version: 0,
        pending_docs: 0,
        extensions: Default::default(),
    }
}

/// A zstd frame (with the record dictionary) holding exactly `message`.
fn frame(message: &[u8]) -> Vec<u8> {
    DocCodec::new().unwrap().encode(message).unwrap()
}

/// Where a zstd frame keeps a one-byte content size (frames of small content).
fn content_size_offset(frame: &[u8]) -> usize {
    let descriptor = frame[4];
    assert_eq!(descriptor >> 6, 0, "expected a one-byte content size");
    assert_eq!(descriptor & 0x20, 0x20, "expected a single-segment frame");
    let dict_id_len = [0, 1, 2, 4][usize::from(descriptor & 3)];
    5 + dict_id_len
}

/// Postcard's varint encoding of an unsigned number.
fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// An application as a hostile `device` could encode it, bypassing the store's validation (its
/// own changes, naming itself as creator: only the record rules can refuse it).
fn forged(device: DeviceId, commune: &str, edit: impl FnOnce(&mut Application)) -> PushDoc {
    let mut app = Application {
        id: RecordId::new(),
        dossier_number: None,
        commune_code: commune.into(),
        procedure_code: "1.001193".into(),
        applicant: Applicant {
            name: "Lò Thị Hương".into(),
            village: "Bản Phăng".into(),
            ..Applicant::default()
        },
        received_at: 1_750_000_000_000,
        due_at: "2025-06-17".parse().unwrap(),
        documents: Vec::new(),
        fees: Vec::new(),
        status: Status::Received,
        assignee: None,
        notes: String::new(),
        created_by: Author {
            device: device.0,
            officer: "x".into(),
        },
        attachments: Vec::new(),
        procedure_version: 0,
        form_values: Default::default(),
        dossier_number_fallback: false,
        clock_events: Vec::new(),
        returned_at: None,
        returned_on_time: None,
        imported: None,
    };
    edit(&mut app);
    let id = app.id;
    let mut doc = RecordDoc::create(&Record::Application(app), device, "x", 0).unwrap();
    PushDoc {
        id: Some(id),
        kind: RecordKind::Application,
        changes: doc
            .changes_since(&[])
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect(),
    }
}

struct Setup {
    server: TestServer,
    /// The enrolled device: the author of every change its store makes.
    device: DeviceId,
    token: String,
    http: reqwest::Client,
    /// A record of the device's store, valid and not pushed yet.
    good_doc: PushDoc,
    /// The device's store and sample data, for more good records.
    store: Mutex<(DeviceStore, SampleData)>,
}

async fn setup(url: &str, dir: &std::path::Path) -> Setup {
    let server = TestServer::start(url).await.unwrap();
    let codes = server.commune_with_codes(COMMUNE, 1).await.unwrap();
    let transport = ReqwestTransport::new(&server.url()).unwrap();
    // The store's changes are the device's own: the server accepts only changes authored by
    // the device that pushes them.
    let mut store = DeviceStore::open(StoreConfig::new(dir.join("h.db"))).unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    let device = store.device_id();
    let token = enroll(&transport, &codes[0], device, "hostile")
        .await
        .unwrap()
        .token;
    let mut sample = SampleData::new(21);
    let good_doc = new_doc(&mut store, &mut sample);
    Setup {
        server,
        device,
        token,
        // A fresh connection per request: the server closes connections whose body it refused
        // unread, and a pooled one would race that close.
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
        good_doc,
        store: Mutex::new((store, sample)),
    }
}

/// A new valid application of `store`, as a push.
fn new_doc(store: &mut DeviceStore, sample: &mut SampleData) -> PushDoc {
    let app = store
        .create_application("x", sample.application(COMMUNE, None))
        .unwrap();
    PushDoc {
        id: Some(app.id),
        kind: RecordKind::Application,
        changes: store.changes_since(app.id, &[]).unwrap(),
    }
}

/// The (position, code) of each refusal of a response.
fn refusals(response: &SyncResponse) -> Vec<(u32, &str)> {
    response
        .refused
        .iter()
        .map(|r| (r.position, r.code.as_str()))
        .collect()
}

impl Setup {
    /// Another valid record of the device, not pushed yet.
    fn fresh_doc(&self) -> PushDoc {
        let mut guard = self.store.lock().unwrap();
        let (store, sample) = &mut *guard;
        new_doc(store, sample)
    }

    /// How many changes the server holds of `id`, `None` when it does not hold the record.
    async fn stored_changes(&self, id: RecordId) -> Option<usize> {
        let storage = &self.server.storage;
        storage.doc_registration(id).await.unwrap()?;
        Some(storage.doc_changes(id).await.unwrap().len())
    }

    /// Documents and changes the server holds, all communes together.
    async fn totals(&self) -> (u64, u64) {
        let stats = self.server.storage.stats().await.unwrap();
        (
            stats.iter().map(|s| s.documents).sum(),
            stats.iter().map(|s| s.changes).sum(),
        )
    }

    /// Pushes `bad` beside a good new record (`bad` first or second) as protocol 3, and checks
    /// the verdicts: 200, `bad` refused with `code` at its position, nothing of it stored, and
    /// the good record stored whole. Returns the refusal's message.
    async fn refused_beside_a_good_one(
        &self,
        what: &str,
        bad: PushDoc,
        bad_first: bool,
        code: &str,
    ) -> String {
        let (response, bad_position) = self.pushed_beside_a_good_one(what, bad, bad_first).await;
        assert_eq!(
            refusals(&response),
            vec![(bad_position, code)],
            "{what}: {:?}, missing their base: {:?}",
            response.refused,
            response.missing_deps
        );
        assert!(response.missing_deps.is_empty(), "{what}");
        response.refused[0].message.clone()
    }

    /// Pushes `bad` beside a good new record (`bad` first or second) as protocol 3, checks that
    /// the answer is 200, that nothing of `bad` is stored and that the good record is, whole;
    /// returns the answer and the position of `bad`.
    async fn pushed_beside_a_good_one(
        &self,
        what: &str,
        bad: PushDoc,
        bad_first: bool,
    ) -> (SyncResponse, u32) {
        let good = self.fresh_doc();
        let good_id = good.id.unwrap();
        let bad_before = match bad.id {
            Some(id) => self.stored_changes(id).await,
            None => None,
        };
        let (documents, changes) = self.totals().await;
        let (push, bad_position) = if bad_first {
            (vec![bad.clone(), good.clone()], 0)
        } else {
            (vec![good.clone(), bad.clone()], 1)
        };
        let (status, body) = self
            .post_raw(
                "/v1/sync",
                Some(&self.token),
                Some(CONTENT_TYPE),
                sync_body(push),
            )
            .await;
        assert_eq!(status, 200, "{what}: {}", String::from_utf8_lossy(&body));
        let response =
            SyncResponse::decode(&mut DocCodec::new().unwrap(), &body, &Limits::default()).unwrap();
        if let Some(id) = bad.id {
            assert_eq!(self.stored_changes(id).await, bad_before, "{what}: stored");
        }
        // One bad record never blocks another: the good one is stored, and nothing else.
        assert_eq!(
            self.stored_changes(good_id).await,
            Some(good.changes.len()),
            "{what}: the good record beside it"
        );
        assert_eq!(
            self.totals().await,
            (documents + 1, changes + good.changes.len() as u64),
            "{what}"
        );
        (response, bad_position)
    }

    async fn state(&self) -> String {
        let s = &self.server.storage;
        let devices: Vec<_> = s
            .list_devices(None)
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.device, d.changes_pushed))
            .collect();
        format!(
            "{:?}\n{devices:?}\n{:?}\n{:?}",
            s.list_communes().await.unwrap(),
            s.catalogue().await.unwrap(),
            s.stats().await.unwrap()
        )
    }

    async fn healthy(&self) {
        let response = self
            .http
            .get(format!("{}/v1/health", self.server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }

    /// POSTs to `path` and returns the status and body.
    async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Vec<u8>) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.server.url()))
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (
            status,
            response
                .bytes()
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default(),
        )
    }

    /// POSTs to `path` and returns the status and body as text.
    async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, String) {
        let (status, body) = self.post_raw(path, token, content_type, body).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sync_bodies_get_clear_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "hostile_sync").await.unwrap() {
        let sub = tempfile::tempdir().unwrap();
        let s = setup(&url, sub.path()).await;
        let before = s.state().await;
        let limits = Limits::default();

        // Messages inside valid frames.
        let mut unknown_kind = postcard_request_prefix(1);
        unknown_kind.push(1); // Some(id)
        unknown_kind.push(16); // a UUID is 16 bytes, length first
        unknown_kind.extend_from_slice(RecordId::new().as_bytes());
        unknown_kind.push(7); // no such record kind
        let mut endless_vec = varint(u64::from(PROTOCOL_VERSION));
        endless_vec.push(0); // device_time 0 (zigzag)
        endless_vec.extend(varint(u64::MAX >> 1)); // a push list "longer than memory"
        let version = |protocol| {
            SyncRequest {
                protocol,
                ..request(Vec::new())
            }
            .encode(&mut DocCodec::new().unwrap())
            .unwrap()
        };
        let (v0, v1, next) = (version(0), version(1), version(PROTOCOL_VERSION + 1));
        let mut trailing = varint(u64::from(PROTOCOL_VERSION));
        trailing.extend(postcard_tail());
        trailing.extend_from_slice(b"and more");
        let many_docs: Vec<PushDoc> = (0..limits.max_docs + 1)
            .map(|_| PushDoc {
                id: Some(RecordId::new()),
                kind: RecordKind::Application,
                changes: Vec::new(),
            })
            .collect();
        let many_changes = PushDoc {
            id: Some(RecordId::new()),
            kind: RecordKind::Application,
            changes: vec![not_a_change(); limits.max_changes_per_doc + 1],
        };
        // A few KB that declare millions (the issue's 11 million empty documents in 1 KB) and
        // hold far more than the limit: counts are checked as elements are read, so the decoder
        // stops at the first one past the limit whatever the body claims or holds. (A declared
        // length the body cannot hold is malformed: "a list longer than memory" above.)
        let mut millions_of_docs = postcard_request_prefix(11_000_000);
        for _ in 0..1_000_000 {
            millions_of_docs.extend([0, 0, 0]); // no id, an application, no changes
        }
        let mut millions_of_changes = postcard_request_prefix(1);
        millions_of_changes.extend([0, 0]); // no id, an application
        millions_of_changes.extend(varint(5_000_000));
        for _ in 0..limits.max_changes_per_doc * 2 {
            millions_of_changes.extend(varint(8));
            millions_of_changes.extend([0u8; 8]);
        }
        // Every document within its own limit, the request over the total: counted as read.
        let per_doc = limits.max_changes_per_doc as u64;
        let docs = (limits.max_changes as u64).div_ceil(per_doc) + 1;
        let mut changes_past_the_total = postcard_request_prefix(docs);
        for _ in 0..docs {
            changes_past_the_total.extend([0, 0]);
            changes_past_the_total.extend(varint(per_doc));
            for _ in 0..per_doc {
                changes_past_the_total.extend(varint(8));
                changes_past_the_total.extend([0u8; 8]);
            }
        }
        changes_past_the_total.extend([0, 0, 0]); // pull, catalogue_version, pending_docs
        let (millions_of_docs, millions_of_changes, changes_past_the_total) = (
            frame(&millions_of_docs),
            frame(&millions_of_changes),
            frame(&changes_past_the_total),
        );
        for small in [
            &millions_of_docs,
            &millions_of_changes,
            &changes_past_the_total,
        ] {
            assert!(small.len() < 8 * 1024, "{} bytes", small.len());
        }
        // A frame that declares more than the decoded limit, and one that lies about its size.
        let mut lying = frame(&[0u8; 64]);
        let declared_too_much = {
            let body = vec![0u8; limits.max_body + 1];
            frame(&body)
        };
        // Claim 200 bytes in the frame's content size field.
        let fcs = content_size_offset(&lying);
        lying[fcs] = 200;
        // One record named twice in a push: refused whole, before any document is looked at.
        let twice = s.fresh_doc();
        let repeated_id = sync_body(vec![twice.clone(), s.fresh_doc(), twice.clone()]);
        // A body of one protocol sent as the other's content type.
        let v2_body = SyncRequest {
            protocol: PROTOCOL_V2,
            ..request(vec![s.fresh_doc()])
        }
        .encode(&mut DocCodec::new().unwrap())
        .unwrap();

        // Refusals of the whole request: nothing in it is looked at or stored.
        let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
            (
                "unknown record kind",
                frame(&unknown_kind),
                CONTENT_TYPE,
                400,
                "malformed",
            ),
            (
                "a list longer than memory",
                frame(&endless_vec),
                CONTENT_TYPE,
                400,
                "malformed",
            ),
            (
                "protocol version 0",
                v0,
                CONTENT_TYPE,
                426,
                "upgrade_required",
            ),
            (
                "protocol version 1 (an old tablet)",
                v1.clone(),
                CONTENT_TYPE,
                426,
                "upgrade_required",
            ),
            (
                "protocol version 1 as protocol 2's content type",
                v1,
                CONTENT_TYPE_V2,
                426,
                "upgrade_required",
            ),
            (
                "a newer protocol version",
                next,
                CONTENT_TYPE,
                400,
                "malformed",
            ),
            (
                "a protocol 2 body as protocol 3's content type",
                v2_body,
                CONTENT_TYPE,
                400,
                "malformed",
            ),
            (
                "a protocol 3 body as protocol 2's content type",
                sync_body(vec![s.fresh_doc()]),
                CONTENT_TYPE_V2,
                400,
                "malformed",
            ),
            (
                "trailing bytes",
                frame(&trailing),
                CONTENT_TYPE,
                400,
                "malformed",
            ),
            ("empty body", Vec::new(), CONTENT_TYPE, 400, "malformed"),
            (
                "frame over the decoded limit",
                declared_too_much,
                CONTENT_TYPE,
                413,
                "too_large",
            ),
            (
                "frame lying about its size",
                lying,
                CONTENT_TYPE,
                400,
                "malformed",
            ),
            (
                "more documents than allowed",
                sync_body(many_docs),
                CONTENT_TYPE,
                413,
                "too_large",
            ),
            (
                "more changes than allowed",
                sync_body(vec![many_changes]),
                CONTENT_TYPE,
                413,
                "too_large",
            ),
            (
                "a few KB declaring 11 million documents",
                millions_of_docs,
                CONTENT_TYPE,
                413,
                "too_large",
            ),
            (
                "a few KB declaring 5 million changes of one document",
                millions_of_changes,
                CONTENT_TYPE,
                413,
                "too_large",
            ),
            (
                "more changes in one request than allowed, each document within its limit",
                changes_past_the_total,
                CONTENT_TYPE,
                413,
                "too_large",
            ),
            (
                "a record id repeated in one push",
                repeated_id,
                CONTENT_TYPE,
                400,
                "malformed",
            ),
        ];
        let mut tried = 0;
        for (name, body, content_type, status, code) in cases {
            let (got, text) = s
                .post("/v1/sync", Some(&s.token), Some(content_type), body)
                .await;
            assert_eq!(got, status, "{url}: {name}: {text}");
            assert!(
                text.contains(&format!("\"error\":\"{code}\"")),
                "{url}: {name}: {text}"
            );
            tried += 1;
        }
        assert_eq!(
            s.state().await,
            before,
            "{url}: a refused request changed state"
        );
        assert_eq!(s.stored_changes(twice.id.unwrap()).await, None, "{url}");

        // Refusals of one document: answered in the response (200), the document is not
        // stored, and a good record beside it is.
        // Changes travel without their checksum (the server recomputes it): a damaged change
        // is one Automerge cannot parse, here an unknown chunk type.
        let mut bad_change = s.good_doc.changes[0].clone();
        bad_change[8] = 0x7f;
        let per_document: Vec<(&str, PushDoc, &str)> = vec![
            (
                "a change that does not parse",
                PushDoc {
                    changes: vec![bad_change],
                    ..s.good_doc.clone()
                },
                "malformed",
            ),
            (
                "junk as a change",
                PushDoc {
                    id: Some(RecordId::new()),
                    kind: RecordKind::Application,
                    changes: vec![not_a_change()],
                },
                "malformed",
            ),
            (
                "junk as a whole new record (no id)",
                PushDoc {
                    id: None,
                    kind: RecordKind::Application,
                    changes: vec![not_a_change()],
                },
                "malformed",
            ),
            (
                "an application pushed as a citizen request",
                PushDoc {
                    kind: RecordKind::CitizenRequest,
                    ..s.good_doc.clone()
                },
                "malformed",
            ),
        ];
        for (i, (name, doc, code)) in per_document.into_iter().enumerate() {
            s.refused_beside_a_good_one(&format!("{url}: {name}"), doc, i % 2 == 0, code)
                .await;
            tried += 1;
        }
        // One record twice, once sent whole without its id (the server reads the id from the
        // record): the first is stored, the second refused as a duplicate.
        let whole = s.fresh_doc();
        let (status, body) = s
            .post_raw(
                "/v1/sync",
                Some(&s.token),
                Some(CONTENT_TYPE),
                sync_body(vec![
                    PushDoc {
                        id: None,
                        ..whole.clone()
                    },
                    whole.clone(),
                ]),
            )
            .await;
        assert_eq!(status, 200, "{url}");
        let response = SyncResponse::decode(&mut DocCodec::new().unwrap(), &body, &limits).unwrap();
        assert_eq!(refusals(&response), vec![(1, "duplicate")], "{url}");
        assert_eq!(
            s.stored_changes(whole.id.unwrap()).await,
            Some(whole.changes.len()),
            "{url}"
        );
        tried += 1;
        // Changes of one record sent under another id: never stored, never acknowledged, and
        // refused as malformed (the history is all there: asking for it again would loop).
        let (response, position) = s
            .pushed_beside_a_good_one(
                &format!("{url}: changes of another record id"),
                PushDoc {
                    id: Some(RecordId::new()),
                    ..s.good_doc.clone()
                },
                true,
            )
            .await;
        assert_eq!(
            refusals(&response),
            vec![(position, "malformed")],
            "{url}: changes of another record id: {:?}",
            response.missing_deps
        );
        tried += 1;
        // The good record itself beside a bad one: the good one is stored...
        let (status, body) = s
            .post_raw(
                "/v1/sync",
                Some(&s.token),
                Some(CONTENT_TYPE),
                sync_body(vec![
                    s.good_doc.clone(),
                    PushDoc {
                        id: Some(RecordId::new()),
                        kind: RecordKind::Application,
                        changes: vec![not_a_change()],
                    },
                ]),
            )
            .await;
        assert_eq!(status, 200, "{url}");
        let response = SyncResponse::decode(&mut DocCodec::new().unwrap(), &body, &limits).unwrap();
        assert_eq!(refusals(&response), vec![(1, "malformed")], "{url}");
        let good_id = s.good_doc.id.unwrap();
        assert_eq!(
            s.stored_changes(good_id).await,
            Some(s.good_doc.changes.len()),
            "{url}"
        );
        tried += 1;
        // ...and, now that the server holds it as an application, pushing it as a citizen
        // request is a record not this device's to write (one answer, whatever the reason).
        let message = s
            .refused_beside_a_good_one(
                &format!("{url}: a stored application pushed as a citizen request"),
                PushDoc {
                    kind: RecordKind::CitizenRequest,
                    ..s.good_doc.clone()
                },
                true,
                "not_yours",
            )
            .await;
        assert!(!message.contains("application"), "{url}: {message}");
        tried += 1;

        let before = s.state().await;

        // Content types: only the exact ones; older protocols' must upgrade.
        for (content_type, status, code) in [
            (None, 415, "unsupported_media_type"),
            (
                Some("application/octet-stream"),
                415,
                "unsupported_media_type",
            ),
            (
                Some("application/x-communesync-v4; charset=utf-8"),
                415,
                "unsupported_media_type",
            ),
            (
                Some("APPLICATION/X-COMMUNESYNC-V4"),
                415,
                "unsupported_media_type",
            ),
            (
                Some("application/x-communesync-v2; charset=utf-8"),
                415,
                "unsupported_media_type",
            ),
            (
                Some("application/x-communesync-v5"),
                415,
                "unsupported_media_type",
            ),
            // A tablet still speaking protocol version 1, or the unversioned one before it.
            (
                Some("application/x-communesync-v1"),
                426,
                "upgrade_required",
            ),
            (Some("application/x-communesync"), 426, "upgrade_required"),
            (Some("application/json"), 415, "unsupported_media_type"),
        ] {
            let (got, text) = s
                .post(
                    "/v1/sync",
                    Some(&s.token),
                    content_type,
                    sync_body(vec![s.fresh_doc()]),
                )
                .await;
            assert_eq!(got, status, "{url}: {content_type:?}: {text}");
            assert!(
                text.contains(&format!("\"error\":\"{code}\"")),
                "{url}: {content_type:?}: {text}"
            );
            tried += 1;
        }

        // Bad credentials in odd shapes: all 401, never a 500.
        for header in [
            "Bearer ".to_owned(),
            "Bearer    ".to_owned(),
            "Basic dXNlcjpwYXNz".to_owned(),
            format!("bearer {}", s.token),
            format!("Bearer {}", "a".repeat(10_000)),
            format!("Bearer {}\u{0}", &s.token[..10]),
        ] {
            let response = s
                .http
                .post(format!("{}/v1/sync", s.server.url()))
                .header("authorization", header.as_bytes())
                .header("content-type", CONTENT_TYPE)
                .body(sync_body(vec![s.fresh_doc()]))
                .send()
                .await;
            // A header value reqwest itself refuses (a NUL byte) never reaches the server.
            if let Ok(response) = response {
                assert_eq!(response.status().as_u16(), 401, "{url}: {header:.20}");
            }
            tried += 1;
        }
        s.healthy().await;
        assert_eq!(
            s.state().await,
            before,
            "{url}: a refused request changed state"
        );
        eprintln!("{url}: {tried} hostile sync requests refused");
    }
}

/// A new record pushed without any change: nothing to store, so it must not be acknowledged
/// either: a tablet told it is stored would stop sending a record the province never got. It
/// is refused as malformed (it was acknowledged in the first cut of protocol 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_record_without_changes_is_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "empty_record").await.unwrap() {
        let sub = tempfile::tempdir().unwrap();
        let s = setup(&url, sub.path()).await;
        let empty_record = PushDoc {
            id: Some(RecordId::new()),
            kind: RecordKind::Application,
            changes: Vec::new(),
        };
        let (response, position) = s
            .pushed_beside_a_good_one(
                &format!("{url}: a new record without changes"),
                empty_record.clone(),
                false,
            )
            .await;
        assert_eq!(
            refusals(&response),
            vec![(position, "malformed")],
            "{url}: a new record without changes: {:?}",
            response.missing_deps
        );
        assert_eq!(
            s.stored_changes(empty_record.id.unwrap()).await,
            None,
            "{url}"
        );
    }
}

/// Protocol 3 (before extensions) is accepted for an overlap period: the tablet gets its
/// per-document verdicts in its own layout, and its request is read without extensions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_3_tablet_gets_its_verdicts_in_its_own_layout() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "protocol_3").await.unwrap() {
        let sub = tempfile::tempdir().unwrap();
        let s = setup(&url, sub.path()).await;
        let good = s.fresh_doc();
        let other_commune = forged(s.device, "DB-OTHER", |_| {});
        let body = SyncRequest {
            protocol: PROTOCOL_V3,
            ..request(vec![good.clone(), other_commune.clone()])
        }
        .encode(&mut DocCodec::new().unwrap())
        .unwrap();
        let response = s
            .http
            .post(format!("{}/v1/sync", s.server.url()))
            .bearer_auth(s.token.clone())
            .header("content-type", CONTENT_TYPE_V3)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{url}");
        assert_eq!(response.headers()["content-type"], CONTENT_TYPE_V3, "{url}");
        let body = response.bytes().await.unwrap();
        let limits = Limits::default();
        // Not version 4's layout: an old tablet is never sent what it cannot read.
        assert!(SyncResponse::decode(&mut DocCodec::new().unwrap(), &body, &limits).is_err());
        let answer = SyncResponse::decode_any(&mut DocCodec::new().unwrap(), &body, &limits)
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(answer.protocol, PROTOCOL_V3, "{url}");
        assert_eq!(refusals(&answer), vec![(1, "not_yours")], "{url}");
        assert_eq!(
            s.stored_changes(good.id.unwrap()).await,
            Some(good.changes.len()),
            "{url}"
        );
        assert_eq!(
            s.stored_changes(other_commune.id.unwrap()).await,
            None,
            "{url}"
        );
    }
}

/// Protocol 2 is accepted for an overlap period: a tablet not upgraded yet pushes and pulls in
/// its own layout (no per-document verdicts), and a refused document refuses its whole request
/// as protocol 2 always did (403 for a record not its own, 400 otherwise), storing nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_2_tablet_still_syncs_and_a_refusal_refuses_its_whole_request() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "protocol_2").await.unwrap() {
        let sub = tempfile::tempdir().unwrap();
        let s = setup(&url, sub.path()).await;
        let limits = Limits::default();
        let v2 = |push: Vec<PushDoc>| {
            SyncRequest {
                protocol: PROTOCOL_V2,
                ..request(push)
            }
            .encode(&mut DocCodec::new().unwrap())
            .unwrap()
        };
        let sync_v2 = |token: String, body: Vec<u8>| {
            s.http
                .post(format!("{}/v1/sync", s.server.url()))
                .bearer_auth(token)
                .header("content-type", CONTENT_TYPE_V2)
                .body(body)
                .send()
        };

        // An old tablet pushes a good record and reads the answer in protocol 2's layout.
        let good = s.good_doc.clone();
        let response = sync_v2(s.token.clone(), v2(vec![good.clone()]))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{url}");
        assert_eq!(response.headers()["content-type"], CONTENT_TYPE_V2, "{url}");
        let body = response.bytes().await.unwrap();
        let answer = SyncResponse::decode_v2(&mut DocCodec::new().unwrap(), &body, &limits)
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(answer.protocol, PROTOCOL_V2, "{url}");
        assert!(answer.missing_deps.is_empty(), "{url}: not acknowledged");
        // Not protocol 3's layout: an old tablet is never sent what it cannot read.
        assert!(
            SyncResponse::decode(&mut DocCodec::new().unwrap(), &body, &limits).is_err(),
            "{url}"
        );
        assert_eq!(
            s.stored_changes(good.id.unwrap()).await,
            Some(good.changes.len()),
            "{url}"
        );

        // Another old tablet of the commune pulls it.
        let codes = s.server.commune_with_codes(COMMUNE, 1).await.unwrap();
        let transport = ReqwestTransport::new(&s.server.url()).unwrap();
        let colleague = enroll(&transport, &codes[0], DeviceId::new(), "old")
            .await
            .unwrap()
            .token;
        let response = sync_v2(colleague, v2(Vec::new())).await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{url}");
        let pulled = SyncResponse::decode_v2(
            &mut DocCodec::new().unwrap(),
            &response.bytes().await.unwrap(),
            &limits,
        )
        .unwrap();
        let feed: Vec<(RecordKind, &Vec<Vec<u8>>)> =
            pulled.feed.iter().map(|d| (d.kind, &d.changes)).collect();
        assert_eq!(
            feed,
            vec![(RecordKind::Application, &good.changes)],
            "{url}"
        );

        // A refused document refuses the whole request: the good record beside it is not
        // stored either.
        let before = s.state().await;
        let cases: Vec<(&str, PushDoc, u16, &str)> = vec![
            (
                "a change that does not parse",
                PushDoc {
                    id: Some(RecordId::new()),
                    kind: RecordKind::Application,
                    changes: vec![not_a_change()],
                },
                400,
                "malformed",
            ),
            (
                "a record made by another device",
                forged(DeviceId::new(), COMMUNE, |_| {}),
                400,
                "malformed",
            ),
            (
                "a record breaking a field rule",
                forged(s.device, COMMUNE, |a| a.applicant.name.clear()),
                400,
                "malformed",
            ),
            (
                "a record of another commune",
                forged(s.device, "DB-NATAU", |_| {}),
                403,
                "forbidden",
            ),
            (
                "a stored application pushed as a citizen request",
                PushDoc {
                    kind: RecordKind::CitizenRequest,
                    ..good.clone()
                },
                403,
                "forbidden",
            ),
        ];
        for (name, bad, status, code) in cases {
            let beside = s.fresh_doc();
            let response = sync_v2(s.token.clone(), v2(vec![beside.clone(), bad.clone()]))
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), status, "{url}: {name}");
            let text = response.text().await.unwrap();
            assert!(
                text.contains(&format!("\"error\":\"{code}\"")),
                "{url}: {name}: {text}"
            );
            assert_eq!(
                s.stored_changes(beside.id.unwrap()).await,
                None,
                "{url}: {name}"
            );
            if bad.id != good.id {
                assert_eq!(
                    s.stored_changes(bad.id.unwrap()).await,
                    None,
                    "{url}: {name}"
                );
            }
        }
        assert_eq!(s.state().await, before, "{url}: a refused request stored");
    }
}

/// Postcard bytes of a request's fields after `protocol`, for a request that pushes
/// `docs` documents (the documents themselves follow).
fn postcard_request_prefix(docs: u64) -> Vec<u8> {
    let mut out = varint(u64::from(PROTOCOL_VERSION));
    out.push(0); // device_time
    out.extend(varint(docs));
    out
}

/// Postcard bytes of an empty request after `protocol`.
fn postcard_tail() -> Vec<u8> {
    let mut out = vec![0]; // device_time
    out.push(0); // no push
    out.push(0); // pull: None
    out.push(0); // catalogue_version
    out.push(0); // pending_docs
    out.push(0); // extensions: none
    out
}

/// Routes that take a body, with the headers they need and the statuses a too-large body may get
/// (the JSON routes answer every body rejection as `malformed`).
fn huge_length_routes(s: &Setup) -> Vec<(&'static str, String, Vec<u16>)> {
    let auth = format!("Authorization: Bearer {}\r\n", s.token);
    let admin = format!("Authorization: Bearer {}\r\n", s.server.admin_token);
    vec![
        (
            "/v1/sync",
            format!("{auth}Content-Type: {CONTENT_TYPE}\r\n"),
            vec![413],
        ),
        (
            "/v1/enroll",
            "Content-Type: application/json\r\n".to_owned(),
            vec![413],
        ),
        (
            "/v1/admin/communes",
            format!("{admin}Content-Type: application/json\r\n"),
            vec![413],
        ),
    ]
}

/// FINDING (fixed): a request that declared a huge `Content-Length` and sent nothing got no
/// answer: the body extractor waits for bytes that never come, and the server has no read
/// timeout, so each such connection is held open for as long as the client likes (a slowloris
/// exhausts file descriptors and tasks without ever being authenticated). Memory stays bounded
/// (see the test above). Fix: refuse a declared length over the limit before reading (a
/// middleware on the router checking `Content-Length`), and a header/body read timeout. Both
/// are in place now (`refuse_declared_oversize`, `ServerConfig::body_idle_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_declared_length_is_refused_before_any_body_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let url = communesync_tests::sqlite_url(dir.path(), "early.db");
    let sub = tempfile::tempdir().unwrap();
    let s = setup(&url, sub.path()).await;
    let mut hung = Vec::new();
    for (path, headers, want) in huge_length_routes(&s) {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 1000000000000\r\n\r\n"
        );
        match try_raw(s.server.addr, &head, &[]) {
            Ok(status) => assert!(
                status.is_some_and(|s| want.contains(&s)),
                "{path}: {status:?}"
            ),
            Err(err) => hung.push(format!("{path}: {err}")),
        }
    }
    assert!(hung.is_empty(), "{hung:#?}");
}

/// A sync with wrong credentials is answered 401 from its headers: the server neither waits for
/// nor buffers its body (here one that never comes; the body idle timeout is the default 30 s,
/// well past `try_raw`'s 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_with_wrong_credentials_is_refused_before_its_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let url = communesync_tests::sqlite_url(dir.path(), "unread.db");
    let server = TestServer::start(&url).await.unwrap();
    let before = server.storage.stats().await.unwrap();
    for auth in ["Authorization: Bearer not-a-token\r\n", ""] {
        let head = format!(
            "POST /v1/sync HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {CONTENT_TYPE}\r\n\
             Content-Length: 1000000\r\n\r\n"
        );
        let status = try_raw(server.addr, &head, &[0x28, 0xb5, 0x2f, 0xfd])
            .unwrap_or_else(|err| panic!("{auth:?}: {err}"));
        assert_eq!(status, Some(401), "{auth:?}");
    }
    assert_eq!(server.storage.stats().await.unwrap(), before);
}

/// A body that stops arriving (within the declared length) is dropped after the idle timeout
/// with a 4xx, instead of holding the connection and its task for as long as the client likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_dropped_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let url = communesync_tests::sqlite_url(dir.path(), "stalled.db");
    let config = communesync_server::http::ServerConfig {
        body_idle_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let server = TestServer::start_with(&url, config, None).await.unwrap();
    let before = server.storage.stats().await.unwrap();
    for path in ["/v1/sync", "/v1/enroll"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        );
        // Ten bytes of the thousand declared, then nothing: answered (well within try_raw's
        // 10 s) rather than held open.
        let status = try_raw(server.addr, &head, b"{\"code\": \"")
            .unwrap_or_else(|err| panic!("{path}: {err}"));
        assert!(
            status.is_none_or(|s| (400..500).contains(&s)),
            "{path}: {status:?}"
        );
    }
    assert_eq!(server.storage.stats().await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_declared_lengths_and_floods_are_refused_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = communesync_tests::sqlite_url(dir.path(), "lengths.db");
    let sub = tempfile::tempdir().unwrap();
    let s = setup(&url, sub.path()).await;
    let before = s.state().await;
    let addr = s.server.addr;
    let auth = format!("Authorization: Bearer {}\r\n", s.token);

    // A terabyte announced and 9 MiB sent: the server reads no more than its 8 MiB limit and
    // refuses (memory stays bounded whatever the declared length).
    let nine_mib = vec![b'{'; 9 << 20];
    for (path, headers, want) in huge_length_routes(&s) {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 1000000000000\r\n\r\n"
        );
        let status = raw(addr, &head, &nine_mib);
        assert!(
            status.is_some_and(|s| want.contains(&s)),
            "{path}: {status:?}"
        );
    }
    // A Content-Length past u64: refused as a bad request.
    let head = format!(
        "POST /v1/sync HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 99999999999999999999999\r\n\r\n"
    );
    assert_eq!(raw(addr, &head, &[]), Some(400));
    // A chunked body that never ends (12 MiB offered): cut off at the 8 MiB limit.
    let chunk = {
        let data = vec![b'x'; 64 * 1024];
        let mut c = format!("{:x}\r\n", data.len()).into_bytes();
        c.extend_from_slice(&data);
        c.extend_from_slice(b"\r\n");
        c
    };
    let flood: Vec<u8> = chunk.repeat(12 * 16);
    let head = format!(
        "POST /v1/sync HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {CONTENT_TYPE}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    assert_eq!(raw(addr, &head, &flood), Some(413));
    // The same flood to the JSON routes: 413 as well, not a parse error.
    let admin = format!("Authorization: Bearer {}\r\n", s.server.admin_token);
    for (method, path, headers) in [
        ("POST", "/v1/enroll", String::new()),
        ("POST", "/v1/admin/communes", admin.clone()),
        ("PUT", "/v1/admin/catalogue", admin.clone()),
    ] {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
        assert_eq!(raw(addr, &head, &flood), Some(413), "{path}");
    }
    // A megabyte of headers.
    let head = format!(
        "GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n",
        "j".repeat(1 << 20)
    );
    let status = raw(addr, &head, &[]);
    assert!(
        matches!(status, None | Some(431) | Some(400)),
        "huge header: {status:?}"
    );
    // Not HTTP at all.
    let status = raw(
        addr,
        "\u{16}\u{3}\u{1}\u{2}\u{0}\u{1}\u{0}\u{1}\u{fc}\r\n\r\n",
        &[],
    );
    assert!(matches!(status, None | Some(400)), "{status:?}");
    // Wrong method, unknown path.
    assert_eq!(
        raw(addr, "GET /v1/sync HTTP/1.1\r\nHost: x\r\n\r\n", &[]),
        Some(405)
    );
    assert_eq!(
        raw(
            addr,
            "GET /v1/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
            &[]
        ),
        Some(404)
    );
    s.healthy().await;
    assert_eq!(s.state().await, before);
}

/// A JSON case: name, path, bearer token, content type, body.
type JsonCase<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>, Vec<u8>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_json_bodies_get_clear_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "hostile_json").await.unwrap() {
        let sub = tempfile::tempdir().unwrap();
        let s = setup(&url, sub.path()).await;
        let before = s.state().await;
        let admin = s.server.admin_token.clone();
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep_object = format!(
            r#"{{"code": "DB-X", "name": {}1{}}}"#,
            "{\"a\":".repeat(50_000),
            "}".repeat(50_000)
        );
        let mut invalid_utf8 = br#"{"code": "ABCD-EFGH-JKMN", "device_id": "6f1c0e4e-8d1a-4a53-9a51-7a0e2f6c1b11", "label": ""#.to_vec();
        invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
        invalid_utf8.extend_from_slice(b"\"}");
        let json = Some("application/json");
        let device = "6f1c0e4e-8d1a-4a53-9a51-7a0e2f6c1b11";
        let cases: Vec<JsonCase> = vec![
            // Enrollment (no credential needed: the most exposed route).
            (
                "enroll: garbage",
                "/v1/enroll",
                None,
                json,
                b"\x00\x01garbage".to_vec(),
            ),
            (
                "enroll: deeply nested",
                "/v1/enroll",
                None,
                json,
                deep.clone().into_bytes(),
            ),
            (
                "enroll: invalid UTF-8",
                "/v1/enroll",
                None,
                json,
                invalid_utf8,
            ),
            (
                "enroll: no content type",
                "/v1/enroll",
                None,
                None,
                format!(r#"{{"code":"ABCD-EFGH-JKMN","device_id":"{device}"}}"#).into_bytes(),
            ),
            (
                "enroll: overlong code",
                "/v1/enroll",
                None,
                json,
                format!(
                    r#"{{"code":"{}","device_id":"{device}"}}"#,
                    "A".repeat(1 << 20)
                )
                .into_bytes(),
            ),
            (
                "enroll: overlong label",
                "/v1/enroll",
                None,
                json,
                format!(
                    r#"{{"code":"ABCD-EFGH-JKMN","device_id":"{device}","label":"{}"}}"#,
                    "ả".repeat(100_000)
                )
                .into_bytes(),
            ),
            (
                "enroll: device id not a UUID",
                "/v1/enroll",
                None,
                json,
                br#"{"code":"ABCD-EFGH-JKMN","device_id":"'; DROP TABLE devices; --"}"#.to_vec(),
            ),
            (
                "enroll: wrong types",
                "/v1/enroll",
                None,
                json,
                br#"{"code":12,"device_id":[1,2]}"#.to_vec(),
            ),
            // Operator routes, with the operator's token: still validated.
            (
                "commune: deeply nested",
                "/v1/admin/communes",
                Some(&admin),
                json,
                deep_object.into_bytes(),
            ),
            (
                "commune: overlong name",
                "/v1/admin/communes",
                Some(&admin),
                json,
                format!(r#"{{"code":"DB-X","name":"{}"}}"#, "x".repeat(5_000_000)).into_bytes(),
            ),
            (
                "commune: code with path characters",
                "/v1/admin/communes",
                Some(&admin),
                json,
                br#"{"code":"../DB-X","name":"x"}"#.to_vec(),
            ),
            (
                "commune: blank name",
                "/v1/admin/communes",
                Some(&admin),
                json,
                br#"{"code":"DB-X","name":"   "}"#.to_vec(),
            ),
            (
                "code: unknown scope",
                "/v1/admin/enrollment-codes",
                Some(&admin),
                json,
                br#"{"scope":{"planet":"mars"}}"#.to_vec(),
            ),
            (
                "code: absurd ttl",
                "/v1/admin/enrollment-codes",
                Some(&admin),
                json,
                br#"{"scope":"province","ttl_hours":4294967295}"#.to_vec(),
            ),
        ];
        let mut tried = 0;
        for (name, path, token, content_type, body) in cases {
            let (status, text) = s.post(path, token, content_type, body).await;
            assert_eq!(status, 400, "{url}: {name}: {text:.300}");
            assert!(
                text.contains("\"error\":\"malformed\""),
                "{url}: {name}: {text:.300}"
            );
            tried += 1;
        }
        // The catalogue (PUT): invalid UTF-8, nesting, garbage.
        for body in [
            vec![0xff, 0xfe, 0x00],
            "[".repeat(100_000).into_bytes(),
            br#"{"procedures":[{"code":"","name":"x","processing_days":1}]}"#.to_vec(),
            br#"{"procedures":[{"code":"1","name":"x","processing_days":-1}]}"#.to_vec(),
        ] {
            let response = s
                .http
                .put(format!("{}/v1/admin/catalogue", s.server.url()))
                .bearer_auth(&admin)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 400, "{url}");
            tried += 1;
        }
        // A revoke of something that is not a device id.
        for id in ["not-a-uuid", "%00", &"9".repeat(5000)] {
            let response = s
                .http
                .post(format!("{}/v1/admin/devices/{id}/revoke", s.server.url()))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 400, "{url}: {id:.20}");
            tried += 1;
        }
        // An unknown device id: 404, not 500.
        let response = s
            .http
            .post(format!(
                "{}/v1/admin/devices/{}/revoke",
                s.server.url(),
                DeviceId::new()
            ))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 404, "{url}");
        s.healthy().await;
        assert_eq!(
            s.state().await,
            before,
            "{url}: a refused request changed state"
        );
        eprintln!("{url}: {tried} hostile JSON requests refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_requests_change_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "replay").await.unwrap() {
        let sub = tempfile::tempdir().unwrap();
        let s = setup(&url, sub.path()).await;
        let body = sync_body(vec![s.good_doc.clone()]);
        // The same push sent ten times at once, then ten more times in a row.
        let mut concurrent = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let request = s
                .http
                .post(format!("{}/v1/sync", s.server.url()))
                .bearer_auth(&s.token)
                .header("content-type", CONTENT_TYPE)
                .body(body.clone());
            concurrent.spawn(async move { request.send().await.unwrap().status().as_u16() });
        }
        let mut ok = 0;
        while let Some(status) = concurrent.join_next().await {
            assert_eq!(status.unwrap(), 200, "{url}");
            ok += 1;
        }
        let stored = s.state().await;
        for _ in 0..10 {
            let response = s
                .http
                .post(format!("{}/v1/sync", s.server.url()))
                .bearer_auth(&s.token)
                .header("content-type", CONTENT_TYPE)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 200);
            let decoded = SyncResponse::decode(
                &mut DocCodec::new().unwrap(),
                &response.bytes().await.unwrap(),
                &Limits::default(),
            )
            .unwrap();
            assert!(decoded.missing_deps.is_empty(), "{url}: not acknowledged");
            assert!(decoded.refused.is_empty(), "{url}: {:?}", decoded.refused);
            ok += 1;
        }
        assert_eq!(s.state().await, stored, "{url}: a replay stored something");
        let stats = s.server.storage.stats().await.unwrap();
        assert_eq!(
            (stats[0].documents, stats[0].changes),
            (1, s.good_doc.changes.len() as u64),
            "{url}"
        );
        assert_eq!(
            s.server
                .storage
                .doc_changes(s.good_doc.id.unwrap())
                .await
                .unwrap()
                .len(),
            s.good_doc.changes.len()
        );
        // A replayed enrollment: the code is spent.
        let codes = s.server.commune_with_codes(COMMUNE, 1).await.unwrap();
        let enroll_body = serde_json::to_vec(&serde_json::json!({
            "code": codes[0], "device_id": DeviceId::new(), "label": "replayed"
        }))
        .unwrap();
        let first = s
            .post(
                "/v1/enroll",
                None,
                Some("application/json"),
                enroll_body.clone(),
            )
            .await;
        let second = s
            .post("/v1/enroll", None, Some("application/json"), enroll_body)
            .await;
        assert_eq!((first.0, second.0), (200, 401), "{url}");
        let devices = s.server.storage.list_devices(None).await.unwrap();
        assert_eq!(
            devices
                .iter()
                .filter(|d| d.device.label == "replayed")
                .count(),
            1
        );
        // Replayed operator calls: a second create is 409, a second revoke is a no-op.
        let admin = s.server.admin_token.clone();
        let create = br#"{"code":"DB-TWICE","name":"x"}"#.to_vec();
        let a = s
            .post(
                "/v1/admin/communes",
                Some(&admin),
                Some("application/json"),
                create.clone(),
            )
            .await;
        let b = s
            .post(
                "/v1/admin/communes",
                Some(&admin),
                Some("application/json"),
                create,
            )
            .await;
        assert_eq!((a.0, b.0), (201, 409), "{url}");
        let id = devices[0].device.id;
        for _ in 0..2 {
            let (status, _) = s
                .post(
                    &format!("/v1/admin/devices/{id}/revoke"),
                    Some(&admin),
                    None,
                    Vec::new(),
                )
                .await;
            assert_eq!(status, 204);
        }
        eprintln!("{url}: {ok} replayed syncs, 1 stored");
    }
}

/// FINDING (fixed): the server checked that a pushed record hydrates and stays in its commune,
/// but not the field rules the device store enforces (`validate_application`: lengths, control
/// characters, identity number and phone formats, required names). An enrolled device that
/// encodes records itself stores a 4 MB name, terminal escapes or an empty name, and every
/// tablet of the commune pulls them. Fixed: the server checks every pushed change against the
/// same record rules as the device store (`integrity::rules`). Each such record is refused on
/// its own, with its reason, and a good record of the same request is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_no_tablet_could_write_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "forged").await.unwrap() {
        let sub = tempfile::tempdir().unwrap();
        let s = setup(&url, sub.path()).await;
        // Crafted by the enrolled device itself: attributed, so only the rules can refuse them.
        let device = s.device;
        let cases: Vec<(&str, PushDoc, &str)> = vec![
            (
                "a 4 MB applicant name",
                forged(device, COMMUNE, |a| {
                    a.applicant.name = "Hương ".repeat(700_000)
                }),
                "too_large",
            ),
            (
                "control characters in the name",
                forged(device, COMMUNE, |a| {
                    a.applicant.name = "Lò\u{0}\u{1b}[2J".into()
                }),
                "invalid_field",
            ),
            (
                "an identity number of letters",
                forged(device, COMMUNE, |a| {
                    a.applicant.id_number = "ABCDEFGHIJKL".into()
                }),
                "invalid_field",
            ),
            (
                "an empty name",
                forged(device, COMMUNE, |a| a.applicant.name.clear()),
                "invalid_field",
            ),
            (
                "an empty commune",
                forged(device, "", |_| {}),
                "invalid_field",
            ),
        ];
        for (i, (name, doc, code)) in cases.into_iter().enumerate() {
            s.refused_beside_a_good_one(&format!("{url}: {name}"), doc, i % 2 == 1, code)
                .await;
        }
        // The same crafting without a broken rule is stored: the refusals above are the rules'.
        let valid = forged(device, COMMUNE, |_| {});
        let (status, body) = s
            .post_raw(
                "/v1/sync",
                Some(&s.token),
                Some(CONTENT_TYPE),
                sync_body(vec![valid.clone()]),
            )
            .await;
        assert_eq!(status, 200, "{url}");
        let response =
            SyncResponse::decode(&mut DocCodec::new().unwrap(), &body, &Limits::default()).unwrap();
        assert_eq!(refusals(&response), vec![], "{url}");
        assert_eq!(
            s.stored_changes(valid.id.unwrap()).await,
            Some(valid.changes.len()),
            "{url}"
        );
    }
}

/// A change Automerge 0.12 panicked on (an operation naming an actor past the change's actor
/// table; found by the `changes` fuzz target, see `core/tests/fuzz_regressions.rs`), pushed on
/// top of a record the server holds: refused as malformed like any other bad change (not a 500),
/// for its document only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_automerge_cannot_apply_is_refused_as_malformed() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "panic_change").await.unwrap() {
        let sub = tempfile::tempdir().unwrap();
        let s = setup(&url, sub.path()).await;
        // The fuzz target's base application, made by `device`.
        let id = RecordId(uuid::Uuid::from_bytes([7; 16]));
        let base = |device: DeviceId| {
            let app = Application {
                id,
                dossier_number: None,
                commune_code: COMMUNE.into(),
                procedure_code: "1.001193".into(),
                applicant: Applicant {
                    name: "Lò Thị Hương".into(),
                    village: "Bản Phăng".into(),
                    ..Applicant::default()
                },
                received_at: 1_750_000_000_000,
                due_at: "2025-06-17".parse().unwrap(),
                documents: Vec::new(),
                fees: Vec::new(),
                status: Status::Received,
                assignee: None,
                notes: "Đã nhận hồ sơ.".into(),
                created_by: Author {
                    device: device.0,
                    officer: "lan".into(),
                },
                attachments: Vec::new(),
                procedure_version: 0,
                form_values: Default::default(),
                dossier_number_fallback: false,
                clock_events: Vec::new(),
                returned_at: None,
                returned_on_time: None,
                imported: None,
            };
            RecordDoc::create(&Record::Application(app), device, "lan", 0).unwrap()
        };
        let hex = concat!(
            "856f4a8369d4573e01df0101880ccbdb7f164e5007f0f6275fa2ea1cb510a4ace51c32a04bf7ae4df375",
            "54c310010101010101010101010101010101010222052e7b226f223a226d696e68222c2266223a5b2261",
            "737369676e6565222c226e6f746573222c22737461747573225d7d000c0104020411041307151334024202",
            "560e572070047102730300020d0000020d0900020d0000027e21030b017e067374617475730861737369",
            "676e6565000d020d0f017eb6014603167f3602167f360616696e5f70726f67726573736d696e027e2103",
            "0b017e06737461747573086e672e02010d0002020d0000",
        );
        let mut change: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        // The fuzz input is the second change of actor [1; 16] on the base it made. Only the
        // pushing device may author what it pushes: the same change, by the enrolled device, on
        // the base that device made (its dependency and its actor rewritten in place; the
        // checksum is the receiver's to recompute). The fuzz base was made before records got
        // their `attachments` list, `procedure_version` and `form_values` at creation: the
        // change's start op is moved past today's base too (its operations name none of those
        // fields' operations).
        const DEP: std::ops::Range<usize> = 12..44;
        const ACTOR: std::ops::Range<usize> = 45..61;
        const SEQ: usize = 61;
        let fuzz_device = DeviceId(uuid::Uuid::from_bytes([1; 16]));
        assert_eq!(change[ACTOR], *fuzz_device.0.as_bytes());
        assert_eq!(change[SEQ], 2, "the second change of its actor");
        let mut doc = base(s.device);
        change[DEP].copy_from_slice(&doc.heads()[0].0);
        change[ACTOR].copy_from_slice(s.device.0.as_bytes());
        // Its first operation follows the base's last (one LEB128 byte after the sequence
        // number): the base grew with the application's fields since the input was found.
        const START_OP: usize = 62;
        let start_op = doc.changes_since(&[]).last().unwrap().max_op() + 1;
        assert!(start_op < 128);
        change[START_OP] = start_op as u8;
        let creation: Vec<Vec<u8>> = doc
            .changes_since(&[])
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        let (status, body) = s
            .post_raw(
                "/v1/sync",
                Some(&s.token),
                Some(CONTENT_TYPE),
                sync_body(vec![PushDoc {
                    id: Some(id),
                    kind: RecordKind::Application,
                    changes: creation.clone(),
                }]),
            )
            .await;
        assert_eq!(status, 200, "{url}");
        let response =
            SyncResponse::decode(&mut DocCodec::new().unwrap(), &body, &Limits::default()).unwrap();
        assert_eq!(refusals(&response), vec![], "{url}");
        assert_eq!(s.stored_changes(id).await, Some(creation.len()), "{url}");
        let message = s
            .refused_beside_a_good_one(
                &format!("{url}: the change Automerge panicked on"),
                PushDoc {
                    id: Some(id),
                    kind: RecordKind::Application,
                    changes: vec![change],
                },
                true,
                "malformed",
            )
            .await;
        // Refused where Automerge applies it (it passed the history checks before that).
        assert!(message.contains("cannot be applied"), "{url}: {message}");
        s.healthy().await;

        // A change Automerge panics on while decoding it (operation counters past u32), sent
        // as a new record's whole history: refused as malformed as well (was 500). The fuzz
        // input: flags, record id, then (u16 little-endian length, change) pairs.
        let input = include_bytes!("../fuzz/seeds/changes/crash-operation-counter-overflow");
        let mut rest = &input[17..];
        let mut changes = Vec::new();
        while rest.len() >= 2 {
            let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
            changes.push(rest[2..2 + len].to_vec());
            rest = &rest[2 + len..];
        }
        s.refused_beside_a_good_one(
            &format!("{url}: operation counters past u32"),
            PushDoc {
                id: None,
                kind: RecordKind::Application,
                changes,
            },
            false,
            "malformed",
        )
        .await;
        s.healthy().await;
    }
}
