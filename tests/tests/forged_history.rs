//! Issue 14's forged histories, sent as a modified tablet would: real HTTP on 127.0.0.1 with
//! Automerge changes crafted by hand (any actor, any content, any shape), on SQLite and
//! PostgreSQL. Each is refused for its own document with its own reason, a good document in the
//! same request is stored, what the server holds and serves does not change, and the honest
//! tablets keep syncing and agree.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use communesync_core::catalogue::CivilDate;
use communesync_core::codec::DocCodec;
use communesync_core::protocol::{CONTENT_TYPE, PROTOCOL_VERSION, PushDoc, SyncRequest};
use communesync_core::record::{
    Application, DeviceId, Record, RecordDoc, RecordId, RecordKind, Status,
};
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, enroll};
use communesync_tests::hostile::{Answer, Hostile, server_copy};
use communesync_tests::{TestServer, test_databases};

const COMMUNE: &str = "DB-MUONGPHANG";
const OTHER: &str = "DB-NATAU";

struct Tablet {
    client: SyncClient<ReqwestTransport>,
    store: Arc<Mutex<DeviceStore>>,
    device: DeviceId,
}

async fn tablet(dir: &std::path::Path, name: &str, url: &str, code: &str) -> Tablet {
    let mut store = DeviceStore::open(StoreConfig::new(dir.join(format!("{name}.db")))).unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    let device = store.device_id();
    let transport = ReqwestTransport::new(url).unwrap();
    let credentials = enroll(&transport, code, device, name).await.unwrap();
    let store = Arc::new(Mutex::new(store));
    let client = SyncClient::new(
        transport,
        store.clone(),
        credentials.token,
        SyncConfig::default(),
    )
    .unwrap();
    Tablet {
        client,
        store,
        device,
    }
}

impl Tablet {
    fn with<T>(&self, f: impl FnOnce(&mut DeviceStore) -> T) -> T {
        f(&mut self.store.lock().unwrap())
    }
}

/// An edit of a record, as a test case holds it.
type Edit = Box<dyn FnOnce(&mut Application)>;

/// One crafted edit of `doc`: the change it makes, as a push of that record.
fn crafted_edit(doc: &mut RecordDoc, edit: impl FnOnce(&mut Application)) -> PushDoc {
    let before = doc.application().unwrap();
    let heads = doc.heads();
    let mut after = before.clone();
    edit(&mut after);
    assert!(doc.edit(&before, &after, "officer", 1).unwrap());
    PushDoc {
        id: Some(doc.id()),
        kind: RecordKind::Application,
        changes: doc
            .changes_since(&heads)
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect(),
    }
}

/// A whole new record made by `actor`.
fn crafted_record(app: &Application, actor: DeviceId) -> PushDoc {
    let mut doc =
        RecordDoc::create(&Record::Application(app.clone()), actor, "officer", 1).unwrap();
    PushDoc {
        id: Some(app.id),
        kind: RecordKind::Application,
        changes: doc
            .changes_since(&[])
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect(),
    }
}

/// An empty change by `actor` on top of `doc`'s heads whose first operation counter is `skip`
/// past the one Automerge would give it (0: counters start over from 1).
fn counters_off_by(doc: &mut RecordDoc, actor: DeviceId, skip: u64) -> PushDoc {
    let heads = doc.heads();
    let next = doc
        .changes_since(&[])
        .iter()
        .map(automerge::Change::max_op)
        .max()
        .unwrap()
        + 1;
    let start_op = if skip == 0 { 1 } else { next + skip };
    let change = automerge::ExpandedChange {
        operations: Vec::new(),
        actor_id: automerge::ActorId::from(actor.0.as_bytes().as_slice()),
        hash: None,
        seq: 1,
        start_op: std::num::NonZeroU64::new(start_op).unwrap(),
        time: 0,
        message: None,
        deps: heads,
        extra_bytes: Vec::new(),
        author: None,
    };
    PushDoc {
        id: Some(doc.id()),
        kind: RecordKind::Application,
        changes: vec![automerge::Change::from(change).raw_bytes().to_vec()],
    }
}

/// A change by `actor` on top of the record as the server holds it that adds a field holding
/// `depth` maps nested in each other (a few bytes each).
async fn nested_junk(server: &TestServer, id: RecordId, actor: DeviceId, depth: usize) -> PushDoc {
    use automerge::transaction::Transactable;
    let mut doc = automerge::AutoCommit::new()
        .with_actor(automerge::ActorId::from(actor.0.as_bytes().as_slice()));
    for bytes in server.storage.doc_changes(id).await.unwrap() {
        doc.apply_changes([automerge::Change::from_bytes(bytes).unwrap()])
            .unwrap();
    }
    let heads = doc.get_heads();
    let mut obj = doc
        .put_object(automerge::ROOT, "x", automerge::ObjType::Map)
        .unwrap();
    for _ in 1..depth {
        obj = doc.put_object(&obj, "x", automerge::ObjType::Map).unwrap();
    }
    doc.commit();
    PushDoc {
        id: Some(id),
        kind: RecordKind::Application,
        changes: doc
            .get_changes(&heads)
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_histories_are_refused_per_document_and_honest_tablets_agree() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "forged").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 4).await.unwrap();
        let other_codes = server.commune_with_codes(OTHER, 1).await.unwrap();
        let sub = tempfile::tempdir().unwrap();
        let colleague = tablet(sub.path(), "colleague", &server.url(), &codes[0]).await;
        let elsewhere = tablet(sub.path(), "elsewhere", &server.url(), &other_codes[0]).await;
        let hostile = Hostile::enroll(&server.url(), &codes[1]).await.unwrap();
        let mut sample = SampleData::new(14);

        // The colleague's record, synced; and one of another commune.
        let app = colleague.with(|s| {
            let app = s
                .create_application("lan", sample.application(COMMUNE, None))
                .unwrap();
            s.transition(app.id, "lan", Status::InProgress).unwrap()
        });
        colleague.client.sync(&|_| {}).await.unwrap();
        let foreign = elsewhere.with(|s| {
            s.create_application("mai", sample.application(OTHER, None))
                .unwrap()
        });
        elsewhere.client.sync(&|_| {}).await.unwrap();
        let stored_before = server.storage.doc_changes(app.id).await.unwrap();

        // Crafted pushes, each about the colleague's record unless said otherwise.
        let mut as_colleague = server_copy(&server, app.id, colleague.device)
            .await
            .unwrap();
        let under_colleagues_name = crafted_edit(&mut as_colleague, |a| {
            a.notes = "sửa dưới tên đồng nghiệp".into()
        });
        let mut cases: Vec<(&str, PushDoc, &str)> = vec![(
            "an edit under the colleague's actor and officer",
            under_colleagues_name,
            "not_attributed",
        )];
        let own_edits: Vec<(&str, Edit, &str)> = vec![
            (
                "a status that skips the workflow",
                Box::new(|a| a.status = Status::Returned),
                "illegal_transition",
            ),
            (
                "received_at moved to 2020",
                Box::new(|a| a.received_at = 1_577_836_800_000),
                "immutable_field",
            ),
            (
                "due_at moved to 2099",
                Box::new(|a| a.due_at = CivilDate::from_ymd(2099, 12, 31).unwrap()),
                "immutable_field",
            ),
            (
                "created_by rewritten",
                Box::new(|a| a.created_by.officer = "someone".into()),
                "immutable_field",
            ),
        ];
        for (name, edit, code) in own_edits {
            let mut copy = server_copy(&server, app.id, hostile.device).await.unwrap();
            cases.push((name, crafted_edit(&mut copy, edit), code));
        }
        // Changes whose operation counters do not start right after their dependencies':
        // Automerge applies them in memory, but no saved document can hold them (a tablet that
        // pulled one would store a record it can no longer read).
        for (name, skip) in [
            ("operation counters that skip ahead", 2),
            ("operation counters that start over", 0),
        ] {
            let mut copy = server_copy(&server, app.id, hostile.device).await.unwrap();
            cases.push((
                name,
                counters_off_by(&mut copy, hostile.device, skip),
                "sequence",
            ));
        }
        // Maps nested 20,000 deep (60 KB): the server's conflict finder recursed into them and
        // overflowed its worker's stack, aborting the whole server (found by the `changes`
        // fuzz target as a tablet's crash). The record's shape is bounded (`integrity::shape`).
        cases.push((
            "maps nested 20,000 deep",
            nested_junk(&server, app.id, hostile.device, 20_000).await,
            "malformed",
        ));
        // A second root inside the existing record.
        let mut rooted = app.clone();
        rooted.status = Status::Received;
        rooted.created_by.device = hostile.device.0;
        let second_root = crafted_record(&rooted, hostile.device);
        cases.push((
            "a second root change inside the record",
            second_root,
            "second_root",
        ));
        // A new record naming a tablet of another commune as its creator.
        let mut framed = Application {
            id: RecordId::new(),
            ..app.clone()
        };
        framed.status = Status::Received;
        framed.created_by.device = elsewhere.device.0;
        cases.push((
            "a record created in another tablet's name",
            crafted_record(&framed, hostile.device),
            "not_attributed",
        ));
        // A new record of another commune.
        let mut outside = Application {
            id: RecordId::new(),
            commune_code: OTHER.into(),
            ..app.clone()
        };
        outside.status = Status::Received;
        outside.created_by.device = hostile.device.0;
        cases.push((
            "a record of another commune",
            crafted_record(&outside, hostile.device),
            "not_yours",
        ));
        // Another commune's record, named with its kind and with the wrong kind: one answer,
        // which leaks neither the kind nor anything else.
        let mut as_elsewhere = server_copy(&server, foreign.id, hostile.device)
            .await
            .unwrap();
        let right_kind = crafted_edit(&mut as_elsewhere, |a| a.notes = "y".into());
        cases.push(("another commune's record", right_kind, "not_yours"));
        let mut as_elsewhere = server_copy(&server, foreign.id, hostile.device)
            .await
            .unwrap();
        let mut wrong_kind = crafted_edit(&mut as_elsewhere, |a| a.notes = "x".into());
        wrong_kind.kind = RecordKind::CitizenRequest;
        cases.push((
            "another commune's record as another kind",
            wrong_kind,
            "not_yours",
        ));

        // Each forged document goes in its own request (a record may appear once per request),
        // with a good record of the hostile device's own riding along.
        let mut messages = Vec::new();
        let mut goods = Vec::new();
        for (name, doc, code) in &cases {
            let mut good = Application {
                id: RecordId::new(),
                ..app.clone()
            };
            good.status = Status::Received;
            good.notes = String::new();
            // A new record of its own, without the copied record's dossier number (which is
            // another record's: refused as such, see `dossier_numbers.rs`).
            good.dossier_number = None;
            good.dossier_number_fallback = false;
            good.created_by.device = hostile.device.0;
            let Answer {
                status,
                response,
                text,
            } = hostile
                .send(vec![doc.clone(), crafted_record(&good, hostile.device)])
                .await
                .unwrap();
            assert_eq!(status, 200, "{url}: {name}: {text}");
            let response = response.unwrap();
            assert!(response.missing_deps.is_empty(), "{url}: {name}");
            assert_eq!(response.refused.len(), 1, "{url}: {name}: {response:?}");
            let refused = &response.refused[0];
            assert_eq!(refused.position, 0, "{url}: {name}");
            assert_eq!(refused.code, *code, "{url}: {name}: {}", refused.message);
            if name.starts_with("another commune's record") {
                messages.push(refused.message.clone());
            }
            goods.push(good.id);
        }
        assert_eq!(messages.len(), 2);
        assert!(
            messages.windows(2).all(|w| w[0] == w[1])
                && messages.iter().all(|m| !m.contains("citizen")
                    && !m.contains("application")
                    && !m.contains(&foreign.id.to_string())),
            "{url}: {messages:?}"
        );
        // Operators see the device's refused documents, one row per record with its latest
        // reason.
        let seen = server.storage.refusals(Some(hostile.device)).await.unwrap();
        let mut latest: Vec<(RecordId, &str)> = Vec::new();
        for (_, doc, code) in &cases {
            let id = doc.id.unwrap();
            latest.retain(|(other, _)| *other != id);
            latest.push((id, code));
        }
        assert_eq!(seen.len(), latest.len(), "{url}: {seen:?}");
        for (id, code) in latest {
            assert!(
                seen.iter().any(|r| r.doc == id && r.code == code),
                "{url}: {id} {code} not shown to operators: {seen:?}"
            );
        }
        // The good records are stored; the colleague's record is exactly as it was.
        for id in &goods {
            assert!(
                server
                    .storage
                    .doc_registration(*id)
                    .await
                    .unwrap()
                    .is_some(),
                "{url}"
            );
        }
        for id in [framed.id, outside.id] {
            assert!(server.storage.doc_registration(id).await.unwrap().is_none());
        }
        assert_eq!(
            server.storage.doc_changes(app.id).await.unwrap(),
            stored_before,
            "{url}"
        );

        // Operators read the record's history: each change's claims beside the server's facts.
        let history: Vec<communesync_server::http::HistoryOut> = reqwest::Client::new()
            .get(format!(
                "{}/v1/admin/records/{}/history",
                server.url(),
                app.id
            ))
            .bearer_auth(&server.admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(history.len(), stored_before.len(), "{url}");
        for change in &history {
            assert_eq!(change.pushed_by, colleague.device.0, "{url}");
            assert_eq!(change.author, Some(colleague.device.0), "{url}");
            assert!(change.attributed && change.received_at > 0, "{url}");
            assert_eq!(change.officer, "lan");
        }
        assert_eq!(history[1].fields, vec!["status".to_owned()]);

        // The honest tablets go on: the colleague edits and syncs, a newly enrolled tablet
        // pulls everything, and both read the same record.
        colleague.with(|s| s.transition(app.id, "lan", Status::Ready).unwrap());
        colleague.client.sync(&|_| {}).await.unwrap();
        let newcomer = tablet(sub.path(), "newcomer", &server.url(), &codes[2]).await;
        newcomer.client.sync(&|_| {}).await.unwrap();
        let seen_by_newcomer = newcomer.with(|s| s.get_application(app.id).unwrap());
        let seen_by_colleague = colleague.with(|s| s.get_application(app.id).unwrap());
        assert_eq!(seen_by_newcomer, seen_by_colleague, "{url}");
        assert_eq!(seen_by_newcomer.status, Status::Ready, "{url}");
        assert!(newcomer.with(|s| s.conflicts(app.id).unwrap()).is_empty());
        for id in &goods {
            assert_eq!(newcomer.with(|s| s.get_application(*id).unwrap()).id, *id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_a_colleagues_name_cannot_brick_the_colleague() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "brick").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 2).await.unwrap();
        let sub = tempfile::tempdir().unwrap();
        let victim = tablet(sub.path(), "victim", &server.url(), &codes[0]).await;
        let hostile = Hostile::enroll(&server.url(), &codes[1]).await.unwrap();
        let mut sample = SampleData::new(3);
        let app = victim.with(|s| {
            s.create_application("lan", sample.application(COMMUNE, None))
                .unwrap()
        });
        victim.client.sync(&|_| {}).await.unwrap();
        // The victim's next sequence number, taken first by the hostile device.
        let mut as_victim = server_copy(&server, app.id, victim.device).await.unwrap();
        let squatted = crafted_edit(&mut as_victim, |a| a.notes = "chiếm chỗ".into());
        let Answer {
            status,
            response,
            text,
        } = hostile.send(vec![squatted]).await.unwrap();
        assert_eq!(status, 200, "{url}: {text}");
        assert_eq!(response.unwrap().refused[0].code, "not_attributed");
        // The victim's own next change (same sequence number) goes through, again and again.
        for step in [Status::InProgress, Status::Ready] {
            victim.with(|s| s.transition(app.id, "lan", step).unwrap());
            let report = victim.client.sync(&|_| {}).await.unwrap();
            assert_eq!(report.pushed_docs, 1, "{url}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_record_named_thousands_of_times_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "repeated").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 2).await.unwrap();
        let sub = tempfile::tempdir().unwrap();
        let honest = tablet(sub.path(), "honest", &server.url(), &codes[0]).await;
        let hostile = Hostile::enroll(&server.url(), &codes[1]).await.unwrap();
        let app = honest.with(|s| {
            s.create_application("lan", SampleData::new(5).application(COMMUNE, None))
                .unwrap()
        });
        honest.client.sync(&|_| {}).await.unwrap();
        // 20,000 entries naming the record (the body is tiny once compressed): refused whole
        // at decoding (400), so no entry re-reads the record's history.
        let one = PushDoc {
            id: Some(app.id),
            kind: RecordKind::Application,
            changes: Vec::new(),
        };
        let Answer { status, text, .. } = hostile.send(vec![one; 20_000]).await.unwrap();
        assert_eq!(status, 400, "{url}: {text}");
        assert!(text.contains("more than once"), "{url}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_of_a_push_stops_when_its_client_goes_away() {
    use std::io::Write;

    let dir = tempfile::tempdir().unwrap();
    let url = communesync_tests::sqlite_url(dir.path(), "abandoned");
    let storage = communesync_server::storage::open(&url).await.unwrap();
    storage
        .create_commune(COMMUNE, "Mường Phăng")
        .await
        .unwrap();
    let (code, _) = communesync_server::http::issue_enrollment_code(
        storage.as_ref(),
        &communesync_server::storage::Scope::Commune(COMMUNE.into()),
        std::time::Duration::from_secs(3600),
        communesync_tests::now_ms(),
    )
    .await
    .unwrap();
    let state = communesync_server::http::AppState::new(
        storage.clone(),
        communesync_server::http::ServerConfig::default(),
    );
    // The server's own accept loop, as `communesync serve` runs it.
    let app = communesync_server::http::router(state.clone());
    let listener = communesync_server::serve::bind(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(communesync_server::serve::serve(
        listener,
        app,
        communesync_server::serve::ServeConfig::default(),
        std::future::pending(),
    ));
    let hostile = Hostile::enroll(&format!("http://{addr}"), &code)
        .await
        .unwrap();

    // A push that takes the server a while: thousands of valid new records.
    let mut sample = SampleData::new(9);
    let template = {
        let mut store =
            DeviceStore::open(StoreConfig::new(dir.path().join("template.db"))).unwrap();
        store.import_catalogue(&SampleData::catalogue()).unwrap();
        store
            .create_application("lan", sample.application(COMMUNE, None))
            .unwrap()
    };
    let push: Vec<PushDoc> = (0..6_000)
        .map(|_| {
            let mut app = Application {
                id: RecordId::new(),
                ..template.clone()
            };
            app.created_by.device = hostile.device.0;
            crafted_record(&app, hostile.device)
        })
        .collect();
    let body = SyncRequest {
        protocol: PROTOCOL_VERSION,
        device_time: 0,
        push,
        pull: None,
        catalogue_version: 0,
        pending_docs: 0,
        extensions: Default::default(),
    }
    .encode(&mut DocCodec::new().unwrap())
    .unwrap();
    // Sent whole, then the client is gone before any answer.
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    write!(
        socket,
        "POST /v1/sync HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n\r\n",
        hostile.token,
        body.len()
    )
    .unwrap();
    socket.write_all(&body).unwrap();
    socket.flush().unwrap();
    drop(socket);
    let mut waited = 0;
    while state.abandoned_syncs() == 0 && waited < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(
        state.abandoned_syncs(),
        1,
        "the server never saw the client leave"
    );
    // Stopped before storing: nothing of the push is there.
    let stats = storage.stats().await.unwrap();
    assert_eq!(stats[0].documents, 0, "{stats:?}");
}
