//! Issue 15, statutory time, over real HTTP on 127.0.0.1 against both server backends (SQLite
//! and PostgreSQL), with the 2026 Vietnamese calendar in the province catalogue.
//!
//! The honest story: a dossier received before Tết is paused for a supplement, completed,
//! extended with an apology slip and returned; the verdict is recorded with the return and a
//! colleague's tablet pulls the same events, deadline and verdict. Then a modified tablet sends
//! crafted Automerge changes that its store would refuse (an event removed, an event edited, a
//! forged on-time flag, a pause without the move to `supplement_requested`, the move without a
//! pause): each is refused for its own document and the server stores nothing of it.
//!
//! Calendar skew: a tablet that still holds an older published calendar returns a dossier with
//! the verdict its calendar gives and is accepted; a verdict no published calendar gives, or
//! one leaning on a calendar position never published, is refused.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use communesync_core::catalogue::delta::CatalogueHeld;
use communesync_core::catalogue::{CivilDate, VIETNAM_OFFSET};
use communesync_core::deadline::{ClockEvent, ClockEventKind};
use communesync_core::protocol::{Extensions, PushDoc, SyncResponse};
use communesync_core::record::{
    Applicant, Application, DeviceId, NewApplication, RecordDoc, RecordId, RecordKind, Source,
    Status,
};
use communesync_core::sync::{ReqwestTransport, SyncConfig, enroll};
use communesync_tests::hostile::RawSync;
use communesync_tests::tablet::Tablet;
use communesync_tests::{TestServer, test_databases};

const COMMUNE: &str = "DB-MUONGPHANG";
const CALENDAR_2026: &str = include_str!("../../core/fixtures/calendar_vn_2026.json");

/// The province catalogue: a 5-working-day procedure and the 2026 calendar.
fn catalogue() -> String {
    let mut file: serde_json::Value = serde_json::from_str(CALENDAR_2026).unwrap();
    file["procedures"] = serde_json::json!([{
        "code": "1.001193", "name": "Đăng ký khai sinh", "sector": "Hộ tịch",
        "processing": {"working_days": 5}, "version": 1
    }]);
    file.to_string()
}

fn d(s: &str) -> CivilDate {
    s.parse().unwrap()
}

fn vn(day: &str, hh: u8, mm: u8) -> i64 {
    d(day)
        .0
        .with_time(time::Time::from_hms(hh, mm, 0).unwrap())
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

async fn push(url: &str, token: &str, push: Vec<PushDoc>) -> SyncResponse {
    push_declaring(url, token, push, None).await
}

/// A push that declares, in tag 5, the calendar version the tablet holds.
async fn push_declaring(
    url: &str,
    token: &str,
    push: Vec<PushDoc>,
    calendar_version: Option<u64>,
) -> SyncResponse {
    let mut extensions = Extensions::default();
    if let Some(calendar_version) = calendar_version {
        extensions
            .insert(&CatalogueHeld {
                version: calendar_version,
                resume: None,
                calendar_version,
            })
            .unwrap();
    }
    RawSync {
        extensions,
        ..RawSync::push(push)
    }
    .answer(url, token)
    .await
    .unwrap()
}

/// One edit of the dossier the server holds, made by `actor` as a modified tablet would.
fn crafted_edit(
    id: RecordId,
    stored: &[Vec<u8>],
    actor: DeviceId,
    change: impl FnOnce(&mut Application),
) -> PushDoc {
    let mut doc =
        RecordDoc::from_changes(id, RecordKind::Application, stored, actor, Source::Server)
            .unwrap()
            .0;
    let before = doc.application().unwrap();
    let heads = doc.heads();
    let mut after = before.clone();
    change(&mut after);
    assert!(doc.edit(&before, &after, "officer", 1).unwrap());
    PushDoc {
        id: Some(id),
        kind: RecordKind::Application,
        changes: doc
            .changes_since(&heads)
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_extensions_and_the_return_verdict_hold_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "dossier_time").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        server.storage.put_catalogue(&catalogue()).await.unwrap();
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

        // Received Thursday 12 February 2026: 5 working days across Tết, due 26 February.
        let honest = a.with(|s| {
            let app = s
                .create_application("lan", intake(vn("2026-02-12", 9, 0)))
                .unwrap();
            assert_eq!(app.due_at, d("2026-02-26"));
            s.transition(app.id, "lan", Status::InProgress).unwrap();
            s.request_supplement(app.id, "lan", "Bản sao giấy chứng sinh")
                .unwrap();
            s.mark_complete(app.id, "lan").unwrap();
            let due = s.dossier_deadline(app.id).unwrap().due_date;
            s.extend_deadline(app.id, "lan", "Chờ xác minh", due.plus_days(400))
                .unwrap();
            s.transition(app.id, "lan", Status::Ready).unwrap();
            s.return_dossier(app.id, "lan").unwrap()
        });
        assert_eq!(honest.returned_on_time, Some(true));
        assert_eq!(honest.clock_events.len(), 3);
        // Two more dossiers for the attacks: one ready and late, one in progress.
        let (late, open) = a.with(|s| {
            let late = s
                .create_application("lan", intake(vn("2026-02-12", 9, 0)))
                .unwrap();
            s.transition(late.id, "lan", Status::InProgress).unwrap();
            s.transition(late.id, "lan", Status::Ready).unwrap();
            let open = s
                .create_application("lan", intake(vn("2026-02-12", 10, 0)))
                .unwrap();
            s.transition(open.id, "lan", Status::InProgress).unwrap();
            (late.id, open.id)
        });
        let report = a.client.sync(&|_| {}).await.unwrap();
        assert_eq!(report.refused, 0, "{url}");

        // The colleague's tablet reads the same events, deadline and verdict.
        b.client.sync(&|_| {}).await.unwrap();
        let pulled = b.with(|s| s.get_application(honest.id).unwrap());
        assert_eq!(pulled, honest, "{url}");
        let on_time = b.with(|s| s.returned_by_verdict(true, 10, 0).unwrap());
        assert_eq!(on_time.len(), 1, "{url}");
        assert_eq!(on_time[0].id, honest.id);

        // A modified tablet.
        let hostile = DeviceId::new();
        let transport = ReqwestTransport::new(&server.url()).unwrap();
        let token = enroll(&transport, &codes[2], hostile, "hostile")
            .await
            .unwrap()
            .token;
        let stored_honest = server.storage.doc_changes(honest.id).await.unwrap();
        let stored_late = server.storage.doc_changes(late).await.unwrap();
        let stored_open = server.storage.doc_changes(open).await.unwrap();
        let now = vn("2026-12-06", 10, 0);
        let cases: Vec<(&str, PushDoc, &str, &str)> = vec![
            (
                "an event removed",
                crafted_edit(honest.id, &stored_honest, hostile, |a| {
                    a.clock_events
                        .retain(|e| e.kind != ClockEventKind::Extension);
                }),
                "immutable_field",
                "never edited or removed",
            ),
            (
                "a forged on-time flag",
                crafted_edit(late, &stored_late, hostile, |a| {
                    a.status = Status::Returned;
                    a.returned_at = Some(now);
                    a.returned_on_time = Some(true);
                }),
                "invalid_field",
                "late by the effective due date 2026-02-26",
            ),
            (
                "a pause without the status change",
                crafted_edit(open, &stored_open, hostile, |a| {
                    a.clock_events.push(ClockEvent::new(
                        ClockEventKind::Pause,
                        now,
                        "officer",
                        "x",
                    ));
                }),
                "illegal_transition",
                "only with the move to supplement_requested",
            ),
        ];
        let response = push(
            &server.url(),
            &token,
            cases.iter().map(|(_, doc, _, _)| doc.clone()).collect(),
        )
        .await;
        assert_eq!(response.refused.len(), cases.len(), "{url}: {response:?}");
        for refusal in &response.refused {
            let (name, _, code, why) = &cases[refusal.position as usize];
            assert_eq!(refusal.code, *code, "{url}: {name}: {}", refusal.message);
            assert!(
                refusal.message.contains(why),
                "{url}: {name}: {}",
                refusal.message
            );
        }
        // One at a time, on the same documents: an edited event, the move without a pause.
        for (name, doc, code) in [
            (
                "an event edited",
                crafted_edit(honest.id, &stored_honest, hostile, |a| {
                    a.clock_events[0].reason = "Không thiếu gì".into();
                }),
                "immutable_field",
            ),
            (
                "the supplement asked without a pause",
                crafted_edit(open, &stored_open, hostile, |a| {
                    a.status = Status::SupplementRequested;
                }),
                "illegal_transition",
            ),
            (
                "a late return without its verdict",
                crafted_edit(late, &stored_late, hostile, |a| {
                    a.status = Status::Returned;
                }),
                "invalid_field",
            ),
        ] {
            let response = push(&server.url(), &token, vec![doc]).await;
            assert_eq!(response.refused.len(), 1, "{url}: {name}");
            assert_eq!(response.refused[0].code, code, "{url}: {name}");
        }
        for (id, stored) in [
            (honest.id, &stored_honest),
            (late, &stored_late),
            (open, &stored_open),
        ] {
            assert_eq!(
                server.storage.doc_changes(id).await.unwrap().len(),
                stored.len(),
                "{url}"
            );
        }

        // The honest late return is accepted with its true verdict.
        a.with(|s| {
            let returned = s.return_dossier(late, "lan").unwrap();
            assert_eq!(returned.returned_on_time, Some(false));
        });
        let report = a.client.sync(&|_| {}).await.unwrap();
        assert_eq!(report.refused, 0, "{url}");
        b.client.sync(&|_| {}).await.unwrap();
        let late_list = b.with(|s| s.returned_by_verdict(false, 10, 0).unwrap());
        assert_eq!(late_list.len(), 1, "{url}");
        assert_eq!(late_list[0].id, late);
    }
}

/// Nine in the morning in Vietnam on `day`.
fn nine_on(day: CivilDate) -> i64 {
    day.0
        .with_time(time::Time::from_hms(9, 0, 0).unwrap())
        .assume_offset(VIETNAM_OFFSET)
        .unix_timestamp()
        * 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablet_with_an_older_calendar_returns_with_its_verdict_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    for url in test_databases(dir.path(), "dossier_skew").await.unwrap() {
        let server = TestServer::start(&url).await.unwrap();
        server.storage.put_catalogue(&catalogue()).await.unwrap();
        let codes = server.commune_with_codes(COMMUNE, 3).await.unwrap();
        let sub = tempfile::tempdir().unwrap();
        let a = Tablet::enroll(sub.path(), "a", &server.url(), &codes[0])
            .await
            .unwrap();
        a.client.sync(&|_| {}).await.unwrap();
        // A tablet on a poor link: one document a request.
        let one_by_one = SyncConfig {
            push_batch_bytes: 1,
            max_push_batch_bytes: 1,
            ..SyncConfig::default()
        };
        let c = Tablet::enroll_with(sub.path(), "c", &server.url(), &codes[2], one_by_one)
            .await
            .unwrap();
        c.client.sync(&|_| {}).await.unwrap();

        // Received three weeks ago (5 working days: late today by the calendar the tablet
        // holds), and two months ago (late by any calendar).
        let today = CivilDate::today();
        let recent = today.plus_days(-21);
        let (honest, forged, old) = a.with(|s| {
            let mut ids = Vec::new();
            for day in [recent, recent, today.plus_days(-60)] {
                let app = s.create_application("lan", intake(nine_on(day))).unwrap();
                s.transition(app.id, "lan", Status::InProgress).unwrap();
                s.transition(app.id, "lan", Status::Ready).unwrap();
                ids.push(app.id);
            }
            (ids[0], ids[1], ids[2])
        });
        let (c_edited, c_returned) = c.with(|s| {
            let mut ids = Vec::new();
            for _ in 0..2 {
                let app = s
                    .create_application("mai", intake(nine_on(recent)))
                    .unwrap();
                s.transition(app.id, "mai", Status::InProgress).unwrap();
                ids.push(app.id);
            }
            s.transition(ids[1], "mai", Status::Ready).unwrap();
            (ids[0], ids[1])
        });
        for t in [&a, &c] {
            let report = t.client.sync(&|_| {}).await.unwrap();
            assert_eq!(report.refused, 0, "{url}");
        }
        let held = server.storage.catalogue_head().await.unwrap().unwrap();
        assert_eq!(held.calendar_version, 1, "{url}");

        // The province then closes the offices from the day after that receipt to today (a
        // storm): by the new calendar those dossiers are not due yet.
        let mut file: serde_json::Value = serde_json::from_str(&catalogue()).unwrap();
        file["calendar"] = (1..=21)
            .map(|n| {
                serde_json::json!({
                    "day": recent.plus_days(n).to_string(), "working": false, "reason": "Bão"
                })
            })
            .collect();
        assert_eq!(
            server
                .storage
                .put_catalogue(&file.to_string())
                .await
                .unwrap(),
            2
        );

        // A modified tablet: verdicts by a calendar nobody published, or by none.
        let hostile = DeviceId::new();
        let transport = ReqwestTransport::new(&server.url()).unwrap();
        let token = enroll(&transport, &codes[1], hostile, "hostile")
            .await
            .unwrap()
            .token;
        let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
        let stored_forged = server.storage.doc_changes(forged).await.unwrap();
        let stored_old = server.storage.doc_changes(old).await.unwrap();
        let returned = |id: RecordId, stored: &[Vec<u8>], on_time: bool| {
            crafted_edit(id, stored, hostile, |a| {
                a.status = Status::Returned;
                a.returned_at = Some(now);
                a.returned_on_time = Some(on_time);
            })
        };
        for (name, doc, declared) in [
            // Late only by calendar 1, leaning on a position never published.
            (
                "a calendar position never published",
                returned(forged, &stored_forged, false),
                Some(99),
            ),
            // The same without tag 5 (the request's catalogue version is past the head).
            ("no position", returned(forged, &stored_forged, false), None),
            // On time by no calendar ever published, whatever the position declared.
            (
                "on time by no calendar",
                returned(old, &stored_old, true),
                Some(1),
            ),
            ("and position 0", returned(old, &stored_old, true), Some(0)),
        ] {
            let response = push_declaring(&server.url(), &token, vec![doc], declared).await;
            assert_eq!(response.refused.len(), 1, "{url}: {name}");
            assert_eq!(response.refused[0].code, "invalid_field", "{url}: {name}");
            assert!(
                response.refused[0].message.contains("returned_on_time"),
                "{url}: {name}: {}",
                response.refused[0].message
            );
        }
        for (id, stored) in [(forged, &stored_forged), (old, &stored_old)] {
            assert_eq!(
                server.storage.doc_changes(id).await.unwrap().len(),
                stored.len(),
                "{url}: nothing of a refused return is stored"
            );
        }

        // The honest tablet, still on calendar 1, returns offline: late by its calendar. Its
        // sync declares calendar 1, the return is accepted, then it receives calendar 2.
        let verdict = a.with(|s| s.return_dossier(honest, "lan").unwrap().returned_on_time);
        assert_eq!(verdict, Some(false), "{url}");
        let report = a.client.sync(&|_| {}).await.unwrap();
        assert_eq!(report.refused, 0, "{url}");
        assert_eq!(a.with(|s| s.quarantined_count().unwrap()), 0, "{url}");
        // Now on calendar 2, the same tablet's verdict for the twin is on time, also accepted.
        let twin = a.with(|s| s.return_dossier(forged, "lan").unwrap().returned_on_time);
        assert_eq!(twin, Some(true), "{url}");
        let report = a.client.sync(&|_| {}).await.unwrap();
        assert_eq!(report.refused, 0, "{url}");

        // The tablet on a poor link edits one dossier, then returns another (late by its
        // calendar), both offline. Its first request carries the edit only and is answered with
        // the new calendar; the tablet installs it only once nothing is left to push, so the
        // return reaches the server declaring the calendar it was judged with.
        c.with(|s| {
            s.transition(c_edited, "mai", Status::Ready).unwrap();
            let returned = s.return_dossier(c_returned, "mai").unwrap();
            assert_eq!(returned.returned_on_time, Some(false));
        });
        let report = c.client.sync(&|_| {}).await.unwrap();
        assert!(report.requests >= 2, "{url}: {report:?}");
        assert_eq!(report.refused, 0, "{url}: {report:?}");
        assert_eq!(c.with(|s| s.catalogue_held().unwrap().calendar_version), 2);

        // The read model keeps the verdict each return recorded.
        let rows = server
            .storage
            .records(&communesync_server::storage::RecordQuery {
                commune: Some(COMMUNE.into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let on_time = |id: RecordId| rows.iter().find(|r| r.id == id).unwrap().on_time;
        assert_eq!(on_time(honest), Some(false), "{url}");
        assert_eq!(on_time(forged), Some(true), "{url}");
        assert_eq!(on_time(old), None, "{url}");
    }
}
