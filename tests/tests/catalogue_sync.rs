//! Issue 15: the catalogue by delta, end to end over real HTTP on 127.0.0.1, on SQLite and
//! PostgreSQL. A province catalogue of 2,000 procedures reaches one tablet by sync (paged) and
//! another from an exported file installed before its first sync (its sync then brings no
//! catalogue); two offline tablets take dossiers with form values; a publication changes 20
//! procedures (new versions, removals) and the calendar, and reaches both as a delta; a dossier
//! taken under version N is accepted after N+1 is published and keeps N's rules; a dossier
//! pinning a version that never existed is refused; the tablets converge. A tablet that joins
//! after N+1 receives N as a pinned-only version and edits that dossier under N's rules.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use communesync_core::catalogue::delta::{
    CalendarUpdate, CatalogueDelta, CatalogueEntry, CatalogueHeld, CataloguePosition,
    MAX_PAGE_ENTRIES,
};
use communesync_core::catalogue::{
    CatalogueFile, CivilDate, FieldKind, FormValue, FormValues, PersonValue, Procedure,
};
use communesync_core::protocol::{Extensions, PullRequest, PushDoc, SyncResponse};
use communesync_core::record::{
    Applicant, Application, DeviceId, NewApplication, Record, RecordDoc, RecordKind,
};
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, SyncReport, enroll};
use communesync_core::{Error, Result};
use communesync_tests::catalogue_gen::{generated_catalogue, twenty_changes};
use communesync_tests::hostile::RawSync;
use communesync_tests::{TestServer, test_databases};

const COMMUNE: &str = "DB-MUONGPHANG";

struct Tablet {
    client: SyncClient<ReqwestTransport>,
    store: Arc<Mutex<DeviceStore>>,
}

impl Tablet {
    async fn enroll(store: DeviceStore, name: &str, url: &str, code: &str) -> Self {
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
        Tablet { client, store }
    }

    fn with<T>(&self, f: impl FnOnce(&mut DeviceStore) -> T) -> T {
        f(&mut self.store.lock().unwrap())
    }

    async fn sync(&self) -> SyncReport {
        let report = self.client.sync(&|_| {}).await.unwrap();
        assert_eq!(report.refused, 0, "{report:?}");
        report
    }
}

/// Values for a generated procedure's form (its first three fields are required: text, date,
/// person), plus `extra` for fields a later version added.
fn form_for(p: &Procedure, child: &str) -> FormValues {
    let mut values = FormValues::new();
    for field in &p.form.fields {
        if !field.required {
            continue;
        }
        let value = match &field.kind {
            FieldKind::Text { .. } => FormValue::Text(child.into()),
            FieldKind::Date => FormValue::Date(CivilDate::from_ymd(2027, 3, 1).unwrap()),
            FieldKind::Person => FormValue::Person(PersonValue {
                name: "Lò Thị Hương".into(),
                citizen_id: Some("011198001234".into()),
                birth_date: None,
            }),
            FieldKind::Number { .. } => FormValue::Number(1),
            FieldKind::Choice { options } => FormValue::Choice(options[0].clone()),
            FieldKind::CitizenId => FormValue::CitizenId("011198001234".into()),
            other => panic!("no value for {other:?}"),
        };
        values.insert(field.name.clone(), value);
    }
    values
}

fn intake(p: &Procedure, form: FormValues) -> NewApplication {
    NewApplication {
        commune_code: COMMUNE.into(),
        procedure_code: p.code.clone(),
        applicant: Applicant {
            name: "Lò Văn Pọm".into(),
            village: "Bản Phăng".into(),
            ..Applicant::default()
        },
        form_values: form,
        ..NewApplication::default()
    }
}

async fn raw_push(url: &str, token: &str, push: Vec<PushDoc>) -> SyncResponse {
    RawSync {
        pull: Some(PullRequest {
            cursor: 0,
            max_bytes: 1 << 16,
        }),
        ..RawSync::push(push)
    }
    .answer(url, token)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalogue_travels_by_delta_and_dossiers_keep_their_pinned_version() {
    let dir = tempfile::tempdir().unwrap();
    let generated = generated_catalogue(2_000, 15);
    let first_json = serde_json::to_string(&generated).unwrap();
    let (next, removed) = twenty_changes(generated.clone());
    let next_json = serde_json::to_string(&next).unwrap();
    let changed = generated.procedures[0].clone();
    let changed_v2 = next.procedures[0].clone();

    for url in test_databases(dir.path(), "catalogue").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        assert_eq!(server.storage.put_catalogue(&first_json).await.unwrap(), 1);
        let codes = server.commune_with_codes(COMMUNE, 4).await.unwrap();
        let sub = tempfile::tempdir().unwrap();

        // Tablet A: the whole catalogue by sync, in pages.
        let a_store = DeviceStore::open(StoreConfig::new(sub.path().join("a.db"))).unwrap();
        let a = Tablet::enroll(a_store, "a", &server.url(), &codes[0]).await;
        let full = a.sync().await;
        assert!(full.requests > 2, "{url}: one page? {full:?}");
        a.with(|s| {
            assert_eq!(s.procedure_count().unwrap(), 2_000);
            assert_eq!(s.catalogue_version().unwrap(), 1);
            assert!(
                s.calendar()
                    .is_working_day(CivilDate::from_ymd(2027, 2, 20).unwrap())
            );
        });

        // Tablet B: the exported file before its first sync; the sync brings no catalogue.
        let (version, json) = server.storage.catalogue().await.unwrap().unwrap();
        let mut exported = CatalogueFile::parse(&json).unwrap();
        exported.version = Some(version);
        let mut b_store = DeviceStore::open(StoreConfig::new(sub.path().join("b.db"))).unwrap();
        assert_eq!(
            b_store
                .install_catalogue_file(&serde_json::to_string(&exported).unwrap())
                .unwrap(),
            2_000
        );
        let b = Tablet::enroll(b_store, "b", &server.url(), &codes[1]).await;
        let first_b = b.sync().await;
        assert!(
            first_b.bytes_down * 20 < full.bytes_down,
            "{url}: {first_b:?} against {full:?}"
        );
        assert_eq!(b.with(|s| s.catalogue_version().unwrap()), 1);

        // Offline on A: a dossier under version N of the procedure that changes.
        let a_form = form_for(&changed, "Lò Thị Mai");
        let a_app = a.with(|s| {
            s.create_application("lan", intake(&changed, a_form.clone()))
                .unwrap()
        });
        assert_eq!(a_app.procedure_version, changed.version);

        // The province publishes 20 changes and a calendar override.
        assert_eq!(server.storage.put_catalogue(&next_json).await.unwrap(), 2);

        // B receives the delta (nothing else waits for it).
        let delta = b.sync().await;
        assert!(
            delta.bytes_down < 5 * 1024,
            "{url}: a 20-procedure delta took {} bytes: {delta:?}",
            delta.bytes_down
        );
        b.with(|s| {
            assert_eq!(s.catalogue_version().unwrap(), 2);
            assert_eq!(s.procedure_count().unwrap(), 1_998);
            assert_eq!(
                s.procedure(&changed.code).unwrap().version,
                changed_v2.version
            );
            for code in &removed {
                assert!(matches!(s.procedure(code), Err(Error::UnknownProcedure(_))));
            }
            assert!(
                s.calendar()
                    .is_working_day(CivilDate::from_ymd(2027, 5, 8).unwrap())
            );
        });

        // A syncs: its dossier, taken under N, is accepted after N+1 is published.
        a.sync().await;
        a.with(|s| {
            assert_eq!(s.catalogue_version().unwrap(), 2);
            // Its rules do not change: still N, without N+1's new required field.
            let app = s.get_application(a_app.id).unwrap();
            assert_eq!(app.procedure_version, changed.version);
            assert_eq!(
                s.procedure_at(&changed.code, changed.version).unwrap(),
                Some(changed.clone())
            );
        });
        // A new dossier now takes N+1, which asks for the new field.
        let without_new_field: Result<Application> =
            a.with(|s| s.create_application("lan", intake(&changed_v2, a_form.clone())));
        assert!(
            matches!(&without_new_field, Err(Error::InvalidInput { field, .. }) if field == "form.household_book"),
            "{without_new_field:?}"
        );

        // Offline on B: a dossier under N+1; an edit of A's dossier under N's rules.
        b.sync().await;
        let b_form = form_for(&changed_v2, "Lò Văn Sơn");
        let b_app = b.with(|s| {
            s.create_application("hoa", intake(&changed_v2, b_form.clone()))
                .unwrap()
        });
        assert_eq!(b_app.procedure_version, changed_v2.version);
        let mut edited = a_form.clone();
        let first_text = changed
            .form
            .fields
            .iter()
            .find(|f| matches!(f.kind, FieldKind::Text { .. }) && f.required)
            .unwrap()
            .name
            .clone();
        edited.insert(first_text.clone(), FormValue::Text("Lò Thị Mai Anh".into()));
        let values = edited.clone();
        b.with(|s| {
            s.update_application(a_app.id, "hoa", |app| app.form_values = values)
                .unwrap()
        });

        // They sync and converge.
        b.sync().await;
        a.sync().await;
        b.sync().await;
        for tablet in [&a, &b] {
            tablet.with(|s| {
                let mine = s.get_application(a_app.id).unwrap();
                assert_eq!(mine.form_values, edited, "{url}");
                assert_eq!(mine.procedure_version, changed.version);
                let theirs = s.get_application(b_app.id).unwrap();
                assert_eq!(theirs.form_values, b_form, "{url}");
                assert_eq!(theirs.procedure_version, changed_v2.version);
            });
        }

        // Tablet C joins after N+1: its sync from 0 brings N as a pinned-only version, so it
        // edits A's dossier under N's rules (N+1's new field is not asked) and the server takes
        // the edit; search and intake only know N+1.
        let c_store = DeviceStore::open(StoreConfig::new(sub.path().join("c.db"))).unwrap();
        let c = Tablet::enroll(c_store, "c", &server.url(), &codes[3]).await;
        c.sync().await;
        c.with(|s| {
            assert_eq!(s.catalogue_version().unwrap(), 2);
            assert_eq!(s.procedure_count().unwrap(), 1_998, "{url}");
            assert_eq!(
                s.procedure_at(&changed.code, changed.version).unwrap(),
                Some(changed.clone()),
                "{url}"
            );
            assert_eq!(
                s.procedure(&changed.code).unwrap().version,
                changed_v2.version
            );
            let found = s.search_procedures(&changed_v2.name, 200).unwrap();
            let listed: Vec<u64> = found
                .iter()
                .filter(|p| p.code == changed.code)
                .map(|p| p.version)
                .collect();
            assert_eq!(listed, [changed_v2.version], "{url}");
            // A removed procedure's last version is kept for its dossiers, not listed.
            assert!(matches!(
                s.procedure(&removed[0]),
                Err(Error::UnknownProcedure(_))
            ));
            let removed_version = generated
                .procedures
                .iter()
                .find(|p| p.code == removed[0])
                .unwrap()
                .version;
            assert!(
                s.procedure_at(&removed[0], removed_version)
                    .unwrap()
                    .is_some()
            );
        });
        let mut c_edit = edited.clone();
        c_edit.insert(first_text, FormValue::Text("Lò Thị Mai Chi".into()));
        assert!(!c_edit.contains_key("household_book"));
        let values = c_edit.clone();
        let c_edited =
            c.with(|s| s.update_application(a_app.id, "thu", |app| app.form_values = values));
        assert!(c_edited.is_ok(), "{url}: {c_edited:?}");
        // A new dossier on C is under N+1: N's form is not enough.
        let c_new: Result<Application> =
            c.with(|s| s.create_application("thu", intake(&changed, a_form.clone())));
        assert!(
            matches!(&c_new, Err(Error::InvalidInput { field, .. }) if field == "form.household_book"),
            "{url}: {c_new:?}"
        );
        c.sync().await;
        a.sync().await;
        a.with(|s| {
            let app = s.get_application(a_app.id).unwrap();
            assert_eq!(app.form_values, c_edit, "{url}");
            assert_eq!(app.procedure_version, changed.version);
        });

        // Tablet D is reinstalled from a file exported after N+1: it holds N too, pinned-only.
        let exported_after = communesync_server::catalogue::export(&*server.storage)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exported_after.version, Some(2));
        let mut d_store = DeviceStore::open(StoreConfig::new(sub.path().join("d.db"))).unwrap();
        d_store
            .install_catalogue_file(&serde_json::to_string(&exported_after).unwrap())
            .unwrap();
        assert_eq!(d_store.procedure_count().unwrap(), 1_998, "{url}");
        assert_eq!(
            d_store
                .procedure_at(&changed.code, changed.version)
                .unwrap(),
            Some(changed.clone()),
            "{url}"
        );
        assert_eq!(
            d_store.procedure(&changed.code).unwrap().version,
            changed_v2.version
        );
        assert_eq!(d_store.catalogue_version().unwrap(), 2);

        // A dossier pinning a version that never existed is refused by the server.
        let hostile = DeviceId::new();
        let transport = ReqwestTransport::new(&server.url()).unwrap();
        let token = enroll(&transport, &codes[2], hostile, "hostile")
            .await
            .unwrap()
            .token;
        let mut invented = a.with(|s| s.get_application(a_app.id).unwrap());
        invented.id = communesync_core::record::RecordId::new();
        invented.dossier_number = None;
        invented.created_by.device = hostile.0;
        invented.procedure_version = changed_v2.version + 5;
        let mut doc =
            RecordDoc::create(&Record::Application(invented.clone()), hostile, "x", 1).unwrap();
        let response = raw_push(
            &server.url(),
            &token,
            vec![PushDoc {
                id: Some(invented.id),
                kind: RecordKind::Application,
                changes: doc
                    .changes_since(&[])
                    .into_iter()
                    .map(|c| c.raw_bytes().to_vec())
                    .collect(),
            }],
        )
        .await;
        assert_eq!(response.refused.len(), 1, "{url}: {response:?}");
        assert_eq!(response.refused[0].code, "invalid_field");
        assert!(response.refused[0].message.contains("never published"));
        assert!(
            server
                .storage
                .doc_changes(invented.id)
                .await
                .unwrap()
                .is_empty()
        );
        server.stop().await;
    }
}

/// Bytes under the catalogue's request tag that are not a position.
#[derive(serde::Serialize, serde::Deserialize)]
struct NotAPosition(Vec<u8>);

impl communesync_core::protocol::WireExtension for NotAPosition {
    const TAG: u16 = 5;
    const MAX_BYTES: usize = 64 * 1024;
}

async fn ask(url: &str, token: &str, extensions: Extensions) -> SyncResponse {
    RawSync {
        pull: None,
        catalogue_version: 0,
        extensions,
        ..RawSync::push(Vec::new())
    }
    .answer(url, token)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_catalogue_position_gets_a_bounded_answer_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let json = serde_json::to_string(&generated_catalogue(600, 3)).unwrap();
    for url in test_databases(dir.path(), "catalogue_hostile")
        .await
        .unwrap()
    {
        let server = TestServer::start(&url).await.unwrap();
        server.storage.put_catalogue(&json).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 1).await.unwrap();
        let transport = ReqwestTransport::new(&server.url()).unwrap();
        let token = enroll(&transport, &codes[0], DeviceId::new(), "hostile")
            .await
            .unwrap()
            .token;
        let delta = |response: &SyncResponse| response.extensions.get::<CatalogueDelta>().unwrap();

        // Not a position (too long to be one): no catalogue, the sync answered.
        let junk = Extensions::new()
            .with(&NotAPosition(vec![7; 4_000]))
            .unwrap();
        let answer = ask(&server.url(), &token, junk).await;
        assert_eq!(delta(&answer), None, "{url}");
        assert_eq!(answer.catalogue, None);

        // A version this server never reached: the tablet starts again (a first page, bounded).
        let future = CatalogueHeld {
            version: u64::MAX,
            resume: None,
            calendar_version: u64::MAX,
        };
        let answer = ask(
            &server.url(),
            &token,
            Extensions::new().with(&future).unwrap(),
        )
        .await;
        let page = delta(&answer).unwrap();
        assert!(
            page.more.is_some() && page.entries.len() <= MAX_PAGE_ENTRIES,
            "{url}"
        );
        assert!(answer.extensions.get::<CalendarUpdate>().unwrap().is_some());
        // Up to date: nothing.
        let current = CatalogueHeld {
            version: 1,
            resume: None,
            calendar_version: 1,
        };
        let answer = ask(
            &server.url(),
            &token,
            Extensions::new().with(&current).unwrap(),
        )
        .await;
        assert_eq!(delta(&answer), None, "{url}");
        assert!(answer.extensions.get::<CalendarUpdate>().unwrap().is_none());

        // From nothing: one page, bounded, and the rest when asked from where it stopped.
        let mut held = CatalogueHeld::default();
        let mut received = 0usize;
        for _ in 0..100 {
            let answer = ask(
                &server.url(),
                &token,
                Extensions::new().with(&held).unwrap(),
            )
            .await;
            let page = delta(&answer).unwrap();
            assert!(page.entries.len() <= MAX_PAGE_ENTRIES);
            received += page.entries.len();
            match page.more {
                Some(position) => held.resume = Some(position),
                None => break,
            }
        }
        assert_eq!(received, 600, "{url}");

        // Every procedure gets a new version: the 600 replaced ones follow the current entries
        // as pinned-only versions, paged in the same bounds, each once, to a tablet from 0; a
        // tablet at version 1 had them as current and gets only the new ones.
        let mut next = generated_catalogue(600, 3);
        for p in &mut next.procedures {
            p.version += 1;
        }
        assert_eq!(
            server
                .storage
                .put_catalogue(&serde_json::to_string(&next).unwrap())
                .await
                .unwrap(),
            2
        );
        for (from, puts_expected, pinned_expected) in [(0, 600, 600), (1, 600, 0)] {
            let mut held = CatalogueHeld {
                version: from,
                resume: None,
                calendar_version: from,
            };
            let (mut puts, mut pinned) = (Vec::new(), Vec::new());
            let mut pages = 0;
            for _ in 0..100 {
                let answer = ask(
                    &server.url(),
                    &token,
                    Extensions::new().with(&held).unwrap(),
                )
                .await;
                let page = delta(&answer).unwrap();
                assert!(page.entries.len() <= MAX_PAGE_ENTRIES);
                pages += 1;
                for entry in page.entries {
                    match entry {
                        CatalogueEntry::Put(json) => puts.push(json),
                        CatalogueEntry::Pinned(json) => {
                            let p: Procedure = serde_json::from_str(&json).unwrap();
                            let current = next.procedures.iter().find(|n| n.code == p.code);
                            assert_eq!(
                                current.map(|n| n.version),
                                Some(p.version + 1),
                                "{url}: only replaced versions"
                            );
                            pinned.push((p.code, p.version));
                        }
                        CatalogueEntry::Removed(code) => panic!("{url}: {code} removed"),
                    }
                }
                match page.more {
                    Some(position) => held.resume = Some(position),
                    None => break,
                }
            }
            assert_eq!(puts.len(), puts_expected, "{url} from {from}");
            assert_eq!(pinned.len(), pinned_expected, "{url} from {from}");
            pinned.sort();
            pinned.dedup();
            assert_eq!(pinned.len(), pinned_expected, "{url}: a version sent twice");
            assert!(pages >= 2, "{url}");
        }

        // A pinned-only position past the end: a last page, empty; one the server never
        // reached: the tablet starts again.
        for (publication, pinned_version, starts_again) in
            [(2, u64::MAX, false), (u64::MAX, 1, true)]
        {
            let position = CatalogueHeld {
                version: 0,
                resume: Some(CataloguePosition {
                    publication,
                    code: "~".repeat(400),
                    pinned_version: Some(pinned_version),
                }),
                calendar_version: 2,
            };
            let answer = ask(
                &server.url(),
                &token,
                Extensions::new().with(&position).unwrap(),
            )
            .await;
            let page = delta(&answer).unwrap();
            assert!(page.entries.len() <= MAX_PAGE_ENTRIES, "{url}");
            assert_eq!(page.more.is_some(), starts_again, "{url}: {:?}", page.more);
            assert_eq!(page.entries.is_empty(), !starts_again, "{url}");
        }
        server.stop().await;
    }
}
