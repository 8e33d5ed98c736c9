//! The province's overdue lists count statutory time as the tablets do (issues 15 and 18), over
//! real HTTP on 127.0.0.1 against both server backends: a read-model row's `due_on` is the
//! dossier's effective deadline (the pinned procedure's working days under the province calendar,
//! moved by supplement pauses, set by extensions, empty while the clock is stopped), a new
//! calendar moves the open dossiers' rows without any push, and a rebuild gives the same rows.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use communesync_core::catalogue::{CivilDate, VIETNAM_OFFSET};
use communesync_core::record::{Applicant, NewApplication, Status};
use communesync_server::catalogue::CatalogueRules;
use communesync_server::storage::RecordQuery;
use communesync_tests::tablet::Tablet;
use communesync_tests::{TestServer, test_databases};

const COMMUNE: &str = "DB-MUONGPHANG";
const CALENDAR_2026: &str = include_str!("../../core/fixtures/calendar_vn_2026.json");

/// The province catalogue at `version`: a 5-working-day procedure (version 1 throughout) and the
/// 2026 calendar with `extra_days_off`.
fn catalogue(version: u64, extra_days_off: &[&str]) -> String {
    let mut file: serde_json::Value = serde_json::from_str(CALENDAR_2026).unwrap();
    for day in extra_days_off {
        file["calendar"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"day": day, "working": false, "reason": "Nghỉ đột xuất"}));
    }
    file["version"] = serde_json::json!(version);
    file["procedures"] = serde_json::json!([{
        "code": "1.001193", "name": "Đăng ký khai sinh", "sector": "Hộ tịch",
        "processing": {"working_days": 5}, "version": 1
    }]);
    file.to_string()
}

fn d(s: &str) -> CivilDate {
    s.parse().unwrap()
}

fn vn(day: &str, hh: u8) -> i64 {
    d(day)
        .0
        .with_time(time::Time::from_hms(hh, 0, 0).unwrap())
        .assume_offset(VIETNAM_OFFSET)
        .unix_timestamp()
        * 1000
}

fn intake(received_at: i64) -> NewApplication {
    NewApplication {
        commune_code: COMMUNE.into(),
        procedure_code: "1.001193".into(),
        applicant: Applicant {
            name: "Lò Văn Pọm".into(),
            village: "Bản Phăng".into(),
            ..Applicant::default()
        },
        received_at: Some(received_at),
        ..NewApplication::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overdue_lists_follow_pauses_extensions_and_a_new_calendar_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "read_model_deadlines")
        .await
        .unwrap()
    {
        let server = TestServer::start(&url).await.unwrap();
        server
            .storage
            .put_catalogue(&catalogue(1, &[]))
            .await
            .unwrap();
        let codes = server.commune_with_codes(COMMUNE, 1).await.unwrap();
        let sub = tempfile::tempdir().unwrap();
        let tablet = Tablet::enroll(sub.path(), "a", &server.url(), &codes[0])
            .await
            .unwrap();
        tablet.client.sync(&|_| {}).await.unwrap();

        // Three dossiers received Thursday 12 February 2026, before Tết: due 26 February.
        let (plain, paused, extended) = tablet.with(|s| {
            let mut ids = Vec::new();
            for _ in 0..3 {
                let app = s
                    .create_application("lan", intake(vn("2026-02-12", 9)))
                    .unwrap();
                assert_eq!(app.due_at, d("2026-02-26"));
                s.transition(app.id, "lan", Status::InProgress).unwrap();
                ids.push(app.id);
            }
            s.request_supplement(ids[1], "lan", "Bản sao giấy chứng sinh")
                .unwrap();
            s.extend_deadline(ids[2], "lan", "Chờ xác minh", d("2026-03-20"))
                .unwrap();
            (ids[0], ids[1], ids[2])
        });
        assert_eq!(tablet.client.sync(&|_| {}).await.unwrap().refused, 0);

        let due_on = |id| {
            let storage = server.storage.clone();
            async move { storage.record_row(id).await.unwrap().unwrap().due_on }
        };
        assert_eq!(due_on(plain).await.as_deref(), Some("2026-02-26"), "{url}");
        // The clock is stopped while the supplement is awaited: no due date, never overdue.
        assert_eq!(due_on(paused).await, None, "{url}");
        assert_eq!(
            due_on(extended).await.as_deref(),
            Some("2026-03-20"),
            "{url}"
        );
        let overdue = |day: &str| {
            let storage = server.storage.clone();
            let query = RecordQuery {
                overdue_on: Some(day.to_owned()),
                ..RecordQuery::default()
            };
            async move {
                let mut ids: Vec<_> = storage
                    .records(&query)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|row| row.id)
                    .collect();
                ids.sort();
                ids
            }
        };
        assert_eq!(overdue("2026-03-02").await, vec![plain], "{url}");
        assert!(overdue("2026-02-26").await.is_empty(), "{url}");

        // The province adds a day off on 25 February: the open dossier is due a working day
        // later, the extended one keeps its appointment, without any tablet pushing.
        server
            .storage
            .put_catalogue(&catalogue(2, &["2026-02-25"]))
            .await
            .unwrap();
        assert_eq!(due_on(plain).await.as_deref(), Some("2026-02-27"), "{url}");
        assert_eq!(
            due_on(extended).await.as_deref(),
            Some("2026-03-20"),
            "{url}"
        );
        assert_eq!(due_on(paused).await, None, "{url}");
        assert!(overdue("2026-02-27").await.is_empty(), "{url}");
        assert_eq!(overdue("2026-02-28").await, vec![plain], "{url}");

        // The tablet completes the paused dossier (the clock runs again; paused and resumed
        // today, long after its due date, so nothing is added) and syncs: its row gets the due
        // date the tablet computes with the new calendar it pulled, and it is overdue.
        tablet.client.sync(&|_| {}).await.unwrap();
        let resumed_due = tablet.with(|s| {
            s.mark_complete(paused, "lan").unwrap();
            s.dossier_deadline(paused).unwrap().due_date
        });
        assert_eq!(tablet.client.sync(&|_| {}).await.unwrap().refused, 0);
        assert_eq!(due_on(paused).await, Some(resumed_due.to_string()), "{url}");
        assert_eq!(resumed_due, d("2026-02-27"), "{url}");
        assert_eq!(overdue("2026-03-02").await.len(), 2, "{url}");

        // A rebuild from the changes and the catalogue gives the same rows.
        let mut before = Vec::new();
        for id in [plain, paused, extended] {
            before.push(server.storage.record_row(id).await.unwrap().unwrap());
        }
        let rules = CatalogueRules::load_deadline_rules(server.storage.as_ref())
            .await
            .unwrap();
        server.storage.rebuild_read_model(rules).await.unwrap();
        for row in before {
            assert_eq!(
                server.storage.record_row(row.id).await.unwrap().unwrap(),
                row,
                "{url}"
            );
        }
    }
}
