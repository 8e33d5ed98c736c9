//! Issue 15: a dossier's form values checked against the procedure version it pinned, on the
//! device and, sent by a modified tablet as crafted Automerge changes over real HTTP on
//! 127.0.0.1, on the server (SQLite and PostgreSQL). The honest dossier syncs to a colleague
//! with its values; every crafted one is refused for its own document with `invalid_field` or
//! `immutable_field`, and the server keeps nothing of it.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use communesync_core::catalogue::{FormValue, FormValues, PersonValue};
use communesync_core::protocol::{PushDoc, SyncResponse};
use communesync_core::record::{
    Applicant, Application, DeviceId, NewApplication, Record, RecordDoc, RecordKind, Source,
};
use communesync_core::sync::{ReqwestTransport, enroll};
use communesync_core::{Error, Result};
use communesync_tests::hostile::RawSync;
use communesync_tests::tablet::Tablet;
use communesync_tests::{TestServer, test_databases};

const COMMUNE: &str = "DB-MUONGPHANG";

const CATALOGUE: &str = r#"{"procedures":[
    {"code":"1.001193","name":"Đăng ký khai sinh","sector":"Hộ tịch","processing":{"working_days":1},
     "papers":[{"name":"Tờ khai đăng ký khai sinh","copies":1,"original":true}],
     "form":{"fields":[
        {"name":"child_name","label":"Họ tên trẻ","type":"text","required":true,"max_len":100},
        {"name":"mother","label":"Mẹ","type":"person","required":true},
        {"name":"sex","label":"Giới tính","type":"choice","options":["Nam","Nữ"]}]},
     "version":2}],
  "holidays":["2026-09-02"]}"#;

fn good_form() -> FormValues {
    let mut form = FormValues::new();
    form.insert("child_name".into(), FormValue::Text("Lò Thị Mai".into()));
    form.insert(
        "mother".into(),
        FormValue::Person(PersonValue {
            name: "Lò Thị Hương".into(),
            citizen_id: Some("011198001234".into()),
            birth_date: None,
        }),
    );
    form
}

fn intake(form: FormValues) -> NewApplication {
    NewApplication {
        commune_code: COMMUNE.into(),
        procedure_code: "1.001193".into(),
        applicant: Applicant {
            name: "Lò Văn Pọm".into(),
            village: "Bản Phăng".into(),
            ..Applicant::default()
        },
        form_values: form,
        ..NewApplication::default()
    }
}

async fn push(url: &str, token: &str, push: Vec<PushDoc>) -> SyncResponse {
    RawSync::push(push).answer(url, token).await.unwrap()
}

fn whole(app: &Application, actor: DeviceId) -> PushDoc {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_that_breaks_its_schema_is_refused_on_the_device_and_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "forms").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        server.storage.put_catalogue(CATALOGUE).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 3).await.unwrap();
        let sub = tempfile::tempdir().unwrap();
        let a = Tablet::enroll(sub.path(), "a", &server.url(), &codes[0])
            .await
            .unwrap();
        let b = Tablet::enroll(sub.path(), "b", &server.url(), &codes[1])
            .await
            .unwrap();
        a.client.sync(&|_| {}).await.unwrap();
        b.client.sync(&|_| {}).await.unwrap();

        // On the device: a bad form is refused and nothing is written; a good one is pinned.
        let mut bad = good_form();
        bad.insert("sex".into(), FormValue::Choice("Khác".into()));
        let refused: Result<Application> =
            a.with(|s| s.create_application("lan", intake(bad.clone())));
        assert!(
            matches!(&refused, Err(Error::InvalidInput { field, .. }) if field == "form.sex"),
            "{refused:?}"
        );
        let app = a.with(|s| s.create_application("lan", intake(good_form())).unwrap());
        assert_eq!(app.procedure_version, 2);
        let report = a.client.sync(&|_| {}).await.unwrap();
        assert_eq!(report.refused, 0, "{url}");
        b.client.sync(&|_| {}).await.unwrap();
        let pulled = b.with(|s| s.get_application(app.id).unwrap());
        assert_eq!(pulled.form_values, good_form());

        // A modified tablet sends what its store would refuse.
        let hostile_device = DeviceId::new();
        let transport = ReqwestTransport::new(&server.url()).unwrap();
        let token = enroll(&transport, &codes[2], hostile_device, "hostile")
            .await
            .unwrap()
            .token;
        let mut template = app.clone();
        template.created_by.device = hostile_device.0;
        let crafted = |edit: &dyn Fn(&mut Application)| {
            let mut forged = template.clone();
            forged.id = communesync_core::record::RecordId::new();
            edit(&mut forged);
            forged
        };
        let cases: Vec<(&str, Application, &str)> = vec![
            (
                "a value outside its choice",
                crafted(&|a| a.form_values = bad.clone()),
                "form.sex",
            ),
            (
                "a required field missing",
                crafted(&|a| drop(a.form_values.remove("mother"))),
                "form.mother",
            ),
            (
                "a field the form does not have",
                crafted(&|a| {
                    a.form_values
                        .insert("smuggled".into(), FormValue::Text("x".into()));
                }),
                "form.smuggled",
            ),
            (
                "a citizen id that fails the CCCD check",
                crafted(&|a| {
                    a.form_values.insert(
                        "mother".into(),
                        FormValue::Person(PersonValue {
                            name: "Lò Thị Hương".into(),
                            citizen_id: Some("003198001234".into()),
                            birth_date: None,
                        }),
                    );
                }),
                "form.mother",
            ),
            (
                "a version nobody published",
                crafted(&|a| {
                    a.procedure_version = 99;
                    a.form_values.clear();
                }),
                "never published",
            ),
        ];
        let ids: Vec<_> = cases.iter().map(|(_, a, _)| a.id).collect();
        let response = push(
            &server.url(),
            &token,
            cases
                .iter()
                .map(|(_, a, _)| whole(a, hostile_device))
                .collect(),
        )
        .await;
        assert_eq!(response.refused.len(), cases.len(), "{url}: {response:?}");
        for refusal in &response.refused {
            let (name, _, why) = &cases[refusal.position as usize];
            assert_eq!(refusal.code, "invalid_field", "{url}: {name}");
            assert!(
                refusal.message.contains(why),
                "{url}: {name}: {}",
                refusal.message
            );
        }
        for id in ids {
            assert!(
                server.storage.doc_changes(id).await.unwrap().is_empty(),
                "{url}"
            );
        }

        // An edit of the honest dossier that breaks its form, and one that moves its pin.
        let stored = server.storage.doc_changes(app.id).await.unwrap();
        let edit = |change: &dyn Fn(&mut Application)| {
            let mut doc = RecordDoc::from_changes(
                app.id,
                RecordKind::Application,
                &stored,
                hostile_device,
                Source::Server,
            )
            .unwrap()
            .0;
            let before = doc.application().unwrap();
            let heads = doc.heads();
            let mut after = before.clone();
            change(&mut after);
            assert!(doc.edit(&before, &after, "officer", 1).unwrap());
            PushDoc {
                id: Some(app.id),
                kind: RecordKind::Application,
                changes: doc
                    .changes_since(&heads)
                    .into_iter()
                    .map(|c| c.raw_bytes().to_vec())
                    .collect(),
            }
        };
        let response = push(
            &server.url(),
            &token,
            vec![edit(&|a| {
                a.form_values
                    .insert("child_name".into(), FormValue::Text("x".repeat(101)));
            })],
        )
        .await;
        assert_eq!(response.refused[0].code, "invalid_field", "{url}");
        let response = push(
            &server.url(),
            &token,
            vec![edit(&|a| a.procedure_version = 1)],
        )
        .await;
        assert_eq!(response.refused[0].code, "immutable_field", "{url}");
        assert_eq!(
            server.storage.doc_changes(app.id).await.unwrap().len(),
            stored.len()
        );
    }
}
