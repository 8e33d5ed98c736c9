//! Statutory time through the device store, over the 2026 calendar fixture: pauses, resumes,
//! extensions, the return verdict, the lists, and the recompute when the calendar changes.

use std::sync::Arc;

use super::*;
use crate::catalogue::{CatalogueFile, Procedure, VIETNAM_OFFSET};
use crate::clock::ManualClock;
use crate::record::{Applicant, NewApplication};
use crate::store::StoreConfig;

const OFFICER: &str = "lan";
const FIXTURE: &str = include_str!("../../fixtures/calendar_vn_2026.json");

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

fn open(path: &std::path::Path, clock: &ManualClock) -> DeviceStore {
    let mut store =
        DeviceStore::open_with_clock(StoreConfig::new(path), Arc::new(clock.clone())).unwrap();
    store
        .import_catalogue(&[
            Procedure::new(
                "1.001193",
                "Đăng ký khai sinh",
                ProcessingTime::WorkingDays(5),
            ),
            Procedure::new(
                "2.000908",
                "Chứng thực bản sao",
                ProcessingTime::WorkingHours(4),
            ),
        ])
        .unwrap();
    store
        .set_calendar(&CatalogueFile::parse(FIXTURE).unwrap().overrides())
        .unwrap();
    store
}

fn intake(store: &mut DeviceStore, code: &str, received_at: i64) -> Application {
    store
        .create_application(
            OFFICER,
            NewApplication {
                commune_code: "01234".into(),
                procedure_code: code.into(),
                applicant: Applicant {
                    name: "Lò Thị Mai".into(),
                    ..Applicant::default()
                },
                received_at: Some(received_at),
                ..NewApplication::default()
            },
        )
        .unwrap()
}

fn ids(page: crate::store::Page<crate::store::ApplicationSummary>) -> Vec<RecordId> {
    page.items.into_iter().map(|s| s.id).collect()
}

#[test]
fn a_dossier_paused_resumed_extended_and_returned_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(vn("2026-02-12", 9, 0));
    let mut s = open(&dir.path().join("t.db"), &clock);
    let app = intake(&mut s, "1.001193", vn("2026-02-12", 9, 0));
    // 5 working days across Tết.
    assert_eq!(app.due_at, d("2026-02-26"));
    s.transition(app.id, OFFICER, Status::InProgress).unwrap();
    assert_eq!(
        ids(s.overdue(d("2026-02-27"), 50, 0).unwrap()),
        vec![app.id]
    );
    assert_eq!(
        ids(s.due_soon(d("2026-02-23"), 3, 50, 0).unwrap()),
        vec![app.id]
    );

    // Supplement asked on Friday 13 February: the clock stops, the dossier leaves the lists.
    clock.set(vn("2026-02-13", 10, 0));
    assert!(matches!(
        s.request_supplement(app.id, OFFICER, " "),
        Err(Error::InvalidInput { .. })
    ));
    let paused = s
        .request_supplement(app.id, OFFICER, "Bản sao giấy chứng sinh")
        .unwrap();
    assert_eq!(paused.status, Status::SupplementRequested);
    assert_eq!(paused.clock_events.len(), 1);
    assert_eq!(paused.clock_events[0].reason, "Bản sao giấy chứng sinh");
    let deadline = s.dossier_deadline(app.id).unwrap();
    assert_eq!(deadline.paused_since, Some(vn("2026-02-13", 10, 0)));
    assert_eq!(effective_due_column(s.connection(), app.id).unwrap(), None);
    assert!(ids(s.overdue(d("2026-03-10"), 50, 0).unwrap()).is_empty());

    // Complete again Wednesday 25 February: 23, 24 and 25 did not count, due Tuesday 3 March.
    clock.set(vn("2026-02-25", 9, 0));
    let resumed = s.mark_complete(app.id, OFFICER).unwrap();
    assert_eq!(resumed.status, Status::InProgress);
    assert_eq!(resumed.clock_events[1].kind, ClockEventKind::Resume);
    let deadline = s.dossier_deadline(app.id).unwrap();
    assert_eq!(deadline.due_date, d("2026-03-03"));
    assert_eq!(deadline.statutory_due, d("2026-02-26"));
    assert!(ids(s.overdue(d("2026-03-03"), 50, 0).unwrap()).is_empty());
    assert_eq!(
        ids(s.overdue(d("2026-03-04"), 50, 0).unwrap()),
        vec![app.id]
    );

    // The apology slip: a reason and an appointment after the current due date.
    clock.set(vn("2026-03-02", 9, 0));
    for (reason, day) in [("Chờ xác minh", "2026-03-03"), ("", "2026-03-10")] {
        assert!(matches!(
            s.extend_deadline(app.id, OFFICER, reason, d(day)),
            Err(Error::InvalidInput { .. })
        ));
    }
    s.extend_deadline(app.id, OFFICER, "Chờ xác minh", d("2026-03-10"))
        .unwrap();
    let deadline = s.dossier_deadline(app.id).unwrap();
    assert_eq!(deadline.due_date, d("2026-03-10"));
    assert!(deadline.extended);
    assert!(ids(s.overdue(d("2026-03-10"), 50, 0).unwrap()).is_empty());

    // Returned on the appointment day: on time, recorded with the transition.
    s.transition(app.id, OFFICER, Status::Ready).unwrap();
    clock.set(vn("2026-03-10", 15, 0));
    let returned = s.return_dossier(app.id, OFFICER).unwrap();
    assert_eq!(returned.returned_at, Some(vn("2026-03-10", 15, 0)));
    assert_eq!(returned.returned_on_time, Some(true));
    let on_time = s.returned_by_verdict(true, 50, 0).unwrap();
    assert_eq!(on_time.len(), 1);
    assert_eq!(on_time[0].id, app.id);
    assert_eq!(on_time[0].due_date, Some(d("2026-03-10")));
    assert!(s.returned_by_verdict(false, 50, 0).unwrap().is_empty());

    // What the store would not write: an edited event, a removed one, a forged verdict.
    for edit in [
        (|a: &mut Application| a.clock_events[0].reason = "khác".into()) as fn(&mut Application),
        |a| drop(a.clock_events.pop()),
        |a| a.returned_on_time = Some(false),
    ] {
        assert!(s.update_application(app.id, OFFICER, edit).is_err());
    }
    assert_eq!(s.get_application(app.id).unwrap(), returned);
}

#[test]
fn a_late_return_an_hours_based_dossier_and_a_calendar_change() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(vn("2026-08-24", 9, 0));
    let mut s = open(&dir.path().join("t.db"), &clock);

    // Late: 5 working days from Monday 24 August are due Monday 31 August.
    let late = intake(&mut s, "1.001193", vn("2026-08-24", 9, 0));
    assert_eq!(late.due_at, d("2026-08-31"));
    s.transition(late.id, OFFICER, Status::InProgress).unwrap();
    s.transition(late.id, OFFICER, Status::Ready).unwrap();
    clock.set(vn("2026-09-03", 8, 0));
    let returned = s.return_dossier(late.id, OFFICER).unwrap();
    assert_eq!(returned.returned_on_time, Some(false));
    assert_eq!(s.returned_by_verdict(false, 50, 0).unwrap()[0].id, late.id);

    // Hours-based: 4 working hours from Thursday 3 September 15:00 (2 that day) are due Friday
    // 09:30.
    let quick = intake(&mut s, "2.000908", vn("2026-09-03", 15, 0));
    let deadline = s.dossier_deadline(quick.id).unwrap();
    assert_eq!(deadline.due_at_ms, Some(vn("2026-09-04", 9, 30)));

    // A dossier open when the province adds a day off: its deadline moves, the lists follow.
    let open = intake(&mut s, "1.001193", vn("2026-08-24", 10, 0));
    assert_eq!(
        ids(s.overdue(d("2026-09-03"), 50, 0).unwrap()),
        vec![open.id]
    );
    let mut overrides = CatalogueFile::parse(FIXTURE).unwrap().overrides();
    overrides.push(crate::catalogue::CalendarOverride {
        day: d("2026-08-31"),
        working: false,
        reason: "Nghỉ bù".into(),
    });
    s.set_calendar(&overrides).unwrap();
    assert_eq!(
        s.dossier_deadline(open.id).unwrap().due_date,
        d("2026-09-03")
    );
    assert!(ids(s.overdue(d("2026-09-03"), 50, 0).unwrap()).is_empty());
    assert_eq!(
        ids(s.due_soon(d("2026-09-03"), 0, 50, 0).unwrap()),
        vec![open.id]
    );
    // The intake date and the recorded verdict stay as they were.
    assert_eq!(s.get_application(open.id).unwrap().due_at, d("2026-08-31"));
    assert_eq!(
        s.get_application(late.id).unwrap().returned_on_time,
        Some(false)
    );
    assert_eq!(s.recompute_deadlines().unwrap(), 2);
}
