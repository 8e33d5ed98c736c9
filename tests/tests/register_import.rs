//! Issue 15's register import over real HTTP on SQLite and PostgreSQL: a commune's register
//! imported on one tablet reaches the server and a second tablet in its state (an entry already
//! returned arrives returned, with its return time), one change per dossier; a re-run imports
//! nothing and pushes nothing; and, as a modified tablet would send them, a forged import that
//! skips the workflow of an existing record, a duplicate external id from another tablet and an
//! import marker edited later are each refused for their own document, with nothing stored.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use communesync_core::protocol::PushDoc;
use communesync_core::record::{
    Application, DeviceId, Imported, Record, RecordDoc, RecordId, RecordKind, Status,
};
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, enroll};
use communesync_tests::hostile::{Hostile, server_copy};
use communesync_tests::{TestServer, test_databases};

const COMMUNE: &str = "DB-MUONGPHANG";

const REGISTER: &str = "\
external_id,procedure_code,applicant_name,status,received_at,due_date,original_reference,returned_at,applicant_village,notes
SK-2025-0001,1.001193,Lò Văn Pọm,returned,2025-03-14 09:30,2025-03-17,12/HT-2025,2025-03-17 15:00,Bản Phăng,Đã trả kết quả
SK-2025-0002,1.000894,Lò Thị Xuân,in_progress,2025-11-03 08:00,,13/HT-2025,,Bản Noong Bua,
SK-2025-0003,1.001612,Quàng Văn Ún,rejected,2025-06-05,2025-06-16,,,,Thiếu giấy tờ
SK-2025-0004,1.001193,Cầm Thị Én,supplement_requested,2025-11-20 14:00,,,,Bản Phăng,
SK-2025-0005,1.001193,,received,2025-11-20,,,,,
";

struct Tablet {
    client: SyncClient<ReqwestTransport>,
    store: Arc<Mutex<DeviceStore>>,
}

async fn tablet(dir: &std::path::Path, name: &str, url: &str, code: &str) -> Tablet {
    let mut store = DeviceStore::open(StoreConfig::new(dir.join(format!("{name}.db")))).unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    let transport = ReqwestTransport::new(url).unwrap();
    let credentials = enroll(&transport, code, store.device_id(), name)
        .await
        .unwrap();
    store.set_enrolled_commune(credentials.commune()).unwrap();
    let store = Arc::new(Mutex::new(store));
    let client = SyncClient::new(
        transport,
        store.clone(),
        credentials.token,
        SyncConfig::default(),
    )
    .unwrap();
    Tablet { client, store }
}

impl Tablet {
    fn with<T>(&self, f: impl FnOnce(&mut DeviceStore) -> T) -> T {
        f(&mut self.store.lock().unwrap())
    }
}

/// One crafted edit of `doc`, as a push of that record.
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

fn imported_id(store: &DeviceStore, key: &str) -> RecordId {
    store.imported_record(COMMUNE, key).unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_reaches_the_server_and_a_second_tablet_in_its_state_once() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "register").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 2).await.unwrap();
        let sub = tempfile::tempdir().unwrap();
        let a = tablet(sub.path(), "a", &server.url(), &codes[0]).await;
        let b = tablet(sub.path(), "b", &server.url(), &codes[1]).await;

        let summary = a
            .with(|s| s.import_register_file("lan", None, REGISTER.as_bytes()))
            .unwrap();
        assert_eq!((summary.imported, summary.already_present), (4, 0));
        assert_eq!(summary.errors.len(), 1);
        assert_eq!(summary.errors[0].line, 6);
        let report = a.client.sync(&|_| {}).await.unwrap();
        assert_eq!((report.pushed_docs, report.pushed_changes), (4, 4));
        assert_eq!(report.refused, 0);

        // The server holds each dossier as one change.
        let returned = a.with(|s| imported_id(s, "SK-2025-0001"));
        for key in [
            "SK-2025-0001",
            "SK-2025-0002",
            "SK-2025-0003",
            "SK-2025-0004",
        ] {
            let id = a.with(|s| imported_id(s, key));
            assert_eq!(
                server.storage.doc_changes(id).await.unwrap().len(),
                1,
                "{key}"
            );
            assert_eq!(
                server
                    .storage
                    .external_id(COMMUNE, key)
                    .await
                    .unwrap()
                    .map(|(doc, _)| doc),
                Some(id)
            );
        }

        // The second tablet receives them in their state, the returned one with its time.
        b.client.sync(&|_| {}).await.unwrap();
        let app = b.with(|s| s.get_application(returned)).unwrap();
        assert_eq!(app.status, Status::Returned);
        let marker = app.imported.clone().unwrap();
        assert_eq!(marker.external_id, "SK-2025-0001");
        assert_eq!(marker.original_reference, "12/HT-2025");
        // 2025-03-17 15:00 in Vietnam, on its due date: on time, recorded like any return.
        assert_eq!(marker.returned_at, Some(1_742_198_400_000));
        assert_eq!(app.returned_at, marker.returned_at);
        assert_eq!(app.returned_on_time, Some(true));
        let listed = b.with(|s| s.returned_by_verdict(true, 10, 0)).unwrap();
        assert_eq!(
            listed.iter().map(|a| a.id).collect::<Vec<_>>(),
            [returned],
            "{url}"
        );
        let rows = server
            .storage
            .records(&communesync_server::storage::RecordQuery {
                commune: Some(COMMUNE.into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let row = rows.iter().find(|r| r.id == returned).unwrap();
        assert_eq!(
            (row.returned_at, row.on_time),
            (app.returned_at, Some(true))
        );
        let history = b.with(|s| s.history(returned)).unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].fields, ["imported"]);
        let rejected = b.with(|s| imported_id(s, "SK-2025-0003"));
        assert_eq!(
            b.with(|s| s.get_application(rejected)).unwrap().status,
            Status::Rejected
        );

        // Re-runs, on either tablet: nothing imported, nothing to push, nothing new stored.
        for t in [&a, &b] {
            let again = t
                .with(|s| s.import_register_file("lan", None, REGISTER.as_bytes()))
                .unwrap();
            assert_eq!((again.imported, again.already_present), (0, 4));
            assert_eq!(t.with(|s| s.pending_count()).unwrap(), 0);
            let report = t.client.sync(&|_| {}).await.unwrap();
            assert_eq!(report.pushed_changes, 0);
        }
        assert_eq!(server.storage.doc_changes(returned).await.unwrap().len(), 1);

        // An open imported dossier goes on along the workflow, and the other tablet follows.
        let open = b.with(|s| imported_id(s, "SK-2025-0002"));
        b.with(|s| s.transition(open, "mai", Status::Ready))
            .unwrap();
        b.client.sync(&|_| {}).await.unwrap();
        a.client.sync(&|_| {}).await.unwrap();
        assert_eq!(
            a.with(|s| s.get_application(open)).unwrap().status,
            Status::Ready
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_imports_are_refused_per_document_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "forged-import").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 3).await.unwrap();
        let sub = tempfile::tempdir().unwrap();
        let a = tablet(sub.path(), "a", &server.url(), &codes[0]).await;
        let late = tablet(sub.path(), "late", &server.url(), &codes[1]).await;
        let hostile = Hostile::enroll(&server.url(), &codes[2]).await.unwrap();
        let mut sample = SampleData::new(15);

        // An ordinary dossier and the imported register, synced.
        let ordinary = a.with(|s| {
            let app = s
                .create_application("lan", sample.application(COMMUNE, None))
                .unwrap();
            s.transition(app.id, "lan", Status::InProgress).unwrap()
        });
        a.with(|s| s.import_register_file("lan", None, REGISTER.as_bytes()))
            .unwrap();
        a.client.sync(&|_| {}).await.unwrap();
        let open = a.with(|s| imported_id(s, "SK-2025-0002"));
        let marker = a.with(|s| s.get_application(open)).unwrap().imported;
        let stored_before = (
            server.storage.doc_changes(ordinary.id).await.unwrap(),
            server.storage.doc_changes(open).await.unwrap(),
        );

        // 1. A forged import on the existing ordinary dossier: the marker added with the final
        //    status, to skip the workflow.
        let mut copy = server_copy(&server, ordinary.id, hostile.device)
            .await
            .unwrap();
        let skip = crafted_edit(&mut copy, |app| {
            app.imported = Some(Imported {
                external_id: "SK-FORGED".into(),
                original_reference: String::new(),
                imported_at: app.received_at,
                returned_at: None,
            });
            app.status = Status::Returned;
        });
        // 2. The marker of an imported dossier edited later (its key moved).
        let mut copy = server_copy(&server, open, hostile.device).await.unwrap();
        let rekeyed = crafted_edit(&mut copy, |app| {
            if let Some(m) = &mut app.imported {
                m.external_id = "SK-2025-9999".into();
                m.original_reference = "99/HT".into();
            }
        });
        // 3. A second record of the commune with an external id already imported.
        let mut duplicate = a.with(|s| s.get_application(open)).unwrap();
        duplicate.id = RecordId::new();
        duplicate.created_by.device = hostile.device.0;
        let duplicate_push = crafted_record(&duplicate, hostile.device);
        // 4. A dossier created in its final state without being an import.
        let mut final_state = duplicate.clone();
        final_state.id = RecordId::new();
        final_state.imported = None;
        let final_push = crafted_record(&final_state, hostile.device);
        // 5. Two new imports with one key in one push: the first is admitted, the second not.
        let mut twin = duplicate.clone();
        twin.id = RecordId::new();
        if let Some(m) = &mut twin.imported {
            m.external_id = "SK-2025-7777".into();
        }
        let mut twin2 = twin.clone();
        twin2.id = RecordId::new();
        // 6. A returned dossier imported with a forged verdict (the register's return is on
        //    its due date: on time, not late).
        let mut forged_verdict = a
            .with(|s| s.get_application(imported_id(s, "SK-2025-0001")))
            .unwrap();
        assert_eq!(forged_verdict.returned_on_time, Some(true));
        forged_verdict.id = RecordId::new();
        forged_verdict.created_by.device = hostile.device.0;
        if let Some(m) = &mut forged_verdict.imported {
            m.external_id = "SK-2025-8888".into();
        }
        forged_verdict.returned_on_time = Some(false);
        // 7. The same as an older build imported it: neither return field, accepted; the read
        //    model judges the register's time the same way.
        let mut legacy = forged_verdict.clone();
        legacy.id = RecordId::new();
        if let Some(m) = &mut legacy.imported {
            m.external_id = "SK-2025-6666".into();
        }
        legacy.returned_at = None;
        legacy.returned_on_time = None;
        let response = hostile
            .answer(vec![
                skip,
                rekeyed,
                duplicate_push,
                final_push,
                crafted_record(&twin, hostile.device),
                crafted_record(&twin2, hostile.device),
                crafted_record(&forged_verdict, hostile.device),
                crafted_record(&legacy, hostile.device),
            ])
            .await
            .unwrap();
        let mut codes: Vec<(u32, String)> = response
            .refused
            .iter()
            .map(|r| (r.position, r.code.clone()))
            .collect();
        codes.sort();
        assert_eq!(
            codes,
            [
                (0, "immutable_field".to_owned()),
                (1, "immutable_field".to_owned()),
                (2, "external_id".to_owned()),
                (3, "illegal_transition".to_owned()),
                (5, "external_id".to_owned()),
                (6, "invalid_field".to_owned()),
            ],
            "{:?}",
            response.refused
        );
        // Nothing of them stored; the first twin (a valid import of a new key) is.
        assert_eq!(
            (
                server.storage.doc_changes(ordinary.id).await.unwrap(),
                server.storage.doc_changes(open).await.unwrap(),
            ),
            stored_before
        );
        for id in [duplicate.id, final_state.id, twin2.id, forged_verdict.id] {
            assert_eq!(server.storage.doc_changes(id).await.unwrap().len(), 0);
        }
        assert_eq!(server.storage.doc_changes(twin.id).await.unwrap().len(), 1);
        assert!(
            response
                .refused
                .iter()
                .any(|r| r.position == 6 && r.message.contains("on time by the due date")),
            "{:?}",
            response.refused
        );
        let rows = server
            .storage
            .records(&communesync_server::storage::RecordQuery {
                commune: Some(COMMUNE.into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let row = rows.iter().find(|r| r.id == legacy.id).unwrap();
        assert_eq!(
            (row.returned_at, row.on_time),
            (Some(1_742_198_400_000), Some(true))
        );
        assert_eq!(
            server
                .storage
                .external_id(COMMUNE, "SK-2025-0002")
                .await
                .unwrap()
                .map(|(doc, _)| doc),
            Some(open)
        );
        assert_eq!(
            server
                .storage
                .external_id(COMMUNE, "SK-FORGED")
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            marker,
            a.with(|s| s.get_application(open)).unwrap().imported
        );

        // An honest tablet that imported the same register offline before its first sync:
        // its copies are refused (set aside, visible with their reason), nothing duplicated.
        let summary = late
            .with(|s| s.import_register_file("mai", None, REGISTER.as_bytes()))
            .unwrap();
        assert_eq!(summary.imported, 4);
        let report = late.client.sync(&|_| {}).await.unwrap();
        assert_eq!(report.refused, 4, "{report:?}");
        let quarantined = late.with(|s| s.quarantined()).unwrap();
        assert_eq!(quarantined.len(), 4);
        assert!(quarantined.iter().all(|q| q.code == "external_id"));
        assert_eq!(
            server
                .storage
                .external_id(COMMUNE, "SK-2025-0001")
                .await
                .unwrap()
                .map(|(doc, _)| doc),
            Some(a.with(|s| imported_id(s, "SK-2025-0001")))
        );
    }
}
