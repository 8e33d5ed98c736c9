//! Statutory time over a realistic Vietnamese year (2026: New Year with a compensatory working
//! Saturday, Tết Bính Ngọ, Hùng Kings' day carried to a Monday, 30/4-1/5, 2/9), from the
//! calendar fixture `core/fixtures/calendar_vn_2026.json`.

use super::*;
use crate::catalogue::{CatalogueFile, VIETNAM_OFFSET};
use crate::record::{Applicant, Author, RecordId, Status};

const FIXTURE: &str = include_str!("../../fixtures/calendar_vn_2026.json");

fn calendar() -> WorkingCalendar {
    CatalogueFile::parse(FIXTURE).unwrap().working_calendar()
}

fn d(s: &str) -> CivilDate {
    s.parse().unwrap()
}

/// `day` at `hh:mm` in Vietnam, ms since the epoch.
fn vn(day: &str, hh: u8, mm: u8) -> i64 {
    let time = time::Time::from_hms(hh, mm, 0).unwrap();
    d(day)
        .0
        .with_time(time)
        .assume_offset(VIETNAM_OFFSET)
        .unix_timestamp()
        * 1000
}

fn dossier(received_at: i64, processing: ProcessingTime) -> Application {
    Application {
        id: RecordId::new(),
        dossier_number: None,
        commune_code: "X".into(),
        procedure_code: "1.001193".into(),
        applicant: Applicant {
            name: "Lò Văn Pọm".into(),
            ..Applicant::default()
        },
        received_at,
        due_at: calendar().deadline(received_at, processing).date,
        documents: Vec::new(),
        fees: Vec::new(),
        status: Status::InProgress,
        assignee: None,
        notes: String::new(),
        created_by: Author {
            device: uuid::Uuid::nil(),
            officer: "lan".into(),
        },
        procedure_version: 1,
        form_values: Default::default(),
        dossier_number_fallback: false,
        imported: None,
        attachments: Vec::new(),
        clock_events: Vec::new(),
        returned_at: None,
        returned_on_time: None,
    }
}

fn event(kind: ClockEventKind, at: i64) -> ClockEvent {
    ClockEvent::new(kind, at, "lan", "Bản sao giấy chứng sinh")
}

fn extension(at: i64, day: &str) -> ClockEvent {
    let mut e = ClockEvent::new(ClockEventKind::Extension, at, "lan", "Chờ xác minh");
    e.appointment = Some(d(day));
    e
}

#[test]
fn the_fixture_is_a_real_2026() {
    let cal = calendar();
    for off in [
        "2026-01-01",
        "2026-01-02",
        "2026-02-17",
        "2026-04-27",
        "2026-09-02",
    ] {
        assert!(!cal.is_working_day(d(off)), "{off}");
    }
    // Saturday 10 January pays back Friday 2 January.
    assert!(cal.is_working_day(d("2026-01-10")));
    assert!(!cal.is_working_day(d("2026-01-17")));
}

#[test]
fn counting_crosses_tet() {
    // Thursday 12 February, 5 working days: Friday 13, then Tết (14-22), then 23, 24, 25, 26.
    let days = ProcessingTime::WorkingDays(5);
    let app = dossier(vn("2026-02-12", 9, 0), days);
    let due = effective_deadline(&app, days, &calendar());
    assert_eq!(due.due.date, d("2026-02-26"));
    assert_eq!(due.due.at_ms, None);
    assert_eq!(due.paused_since, None);
    // Across New Year: the 2 January bridge is off, the 10 January Saturday works.
    let app = dossier(vn("2026-01-08", 9, 0), ProcessingTime::WorkingDays(2));
    let due = effective_deadline(&app, ProcessingTime::WorkingDays(2), &calendar());
    assert_eq!(due.due.date, d("2026-01-10"));
    let app = dossier(vn("2025-12-31", 16, 0), ProcessingTime::WorkingDays(1));
    let due = effective_deadline(&app, ProcessingTime::WorkingDays(1), &calendar());
    assert_eq!(due.due.date, d("2026-01-05"));
}

#[test]
fn a_pause_across_a_holiday_adds_only_working_days() {
    // Monday 20 April, 10 working days: due Thursday 7 May (27/4, 30/4 and 1/5 are off).
    let days = ProcessingTime::WorkingDays(10);
    let mut app = dossier(vn("2026-04-20", 9, 0), days);
    assert_eq!(
        effective_deadline(&app, days, &calendar()).due.date,
        d("2026-05-07")
    );
    // Paused Wednesday 22 April (2 days used), complete again Monday 4 May: 23, 24, 28, 29
    // April and 4 May do not count, so the 8 days left run 5-14 May.
    let pause = event(ClockEventKind::Pause, vn("2026-04-22", 10, 0));
    app.clock_events.push(pause.clone());
    let paused = effective_deadline(&app, days, &calendar());
    assert_eq!(paused.paused_since, Some(pause.at));
    app.clock_events
        .push(event(ClockEventKind::Resume, vn("2026-05-04", 14, 0)));
    let resumed = effective_deadline(&app, days, &calendar());
    assert_eq!(resumed.due.date, d("2026-05-14"));
    assert_eq!(resumed.paused_since, None);
    // The intake date never moves.
    assert_eq!(app.due_at, d("2026-05-07"));
    // Two tablets' clocks disagree: a resume timed a moment before its pause (by another
    // tablet's clock) still ends it; what counts is the order the events were appended in.
    let mut skewed = dossier(vn("2026-04-20", 9, 0), days);
    skewed.clock_events = vec![
        event(ClockEventKind::Pause, vn("2026-04-22", 10, 0)),
        event(ClockEventKind::Resume, vn("2026-04-22", 9, 59)),
    ];
    let due = effective_deadline(&skewed, days, &calendar());
    assert_eq!(due.paused_since, None);
    assert_eq!(due.due.date, d("2026-05-07"));
}

#[test]
fn an_hours_based_procedure_counts_office_hours() {
    // 8 working hours from Friday 13 February 15:00: 2 hours that day, Tết, then 6 hours on
    // Monday 23 February (07:30-11:30, 13:00-15:00).
    let hours = ProcessingTime::WorkingHours(8);
    let app = dossier(vn("2026-02-13", 15, 0), hours);
    let due = effective_deadline(&app, hours, &calendar()).due;
    assert_eq!(due.date, d("2026-02-23"));
    assert_eq!(due.at_ms, Some(vn("2026-02-23", 15, 0)));

    // 4 working hours from Monday 2 March 08:00: due 13:30. Paused 09:00 to 14:00 (2h30 of
    // the morning and 1h of the afternoon are office time): due 17:00.
    let hours = ProcessingTime::WorkingHours(4);
    let mut app = dossier(vn("2026-03-02", 8, 0), hours);
    assert_eq!(
        effective_deadline(&app, hours, &calendar()).due.at_ms,
        Some(vn("2026-03-02", 13, 30))
    );
    app.clock_events
        .push(event(ClockEventKind::Pause, vn("2026-03-02", 9, 0)));
    app.clock_events
        .push(event(ClockEventKind::Resume, vn("2026-03-02", 14, 0)));
    let due = effective_deadline(&app, hours, &calendar()).due;
    assert_eq!(due.at_ms, Some(vn("2026-03-02", 17, 0)));
    assert!(verdict(&app, hours, &calendar(), vn("2026-03-02", 16, 59)));
    assert!(!verdict(&app, hours, &calendar(), vn("2026-03-02", 17, 1)));
}

#[test]
fn an_extension_replaces_the_due_date() {
    // Monday 24 August, 5 working days: due Monday 31 August (1-2 September are off after it).
    let days = ProcessingTime::WorkingDays(5);
    let mut app = dossier(vn("2026-08-24", 9, 0), days);
    assert_eq!(
        effective_deadline(&app, days, &calendar()).due.date,
        d("2026-08-31")
    );
    assert!(!verdict(&app, days, &calendar(), vn("2026-09-03", 8, 0)));
    app.clock_events
        .push(extension(vn("2026-08-28", 10, 0), "2026-09-07"));
    let extended = effective_deadline(&app, days, &calendar());
    assert_eq!(extended.due.date, d("2026-09-07"));
    assert!(extended.extended);
    // On time up to the end of the appointment day, late the day after.
    assert!(verdict(&app, days, &calendar(), vn("2026-09-07", 16, 45)));
    assert!(!verdict(&app, days, &calendar(), vn("2026-09-08", 8, 0)));
}

#[test]
fn on_time_and_late_at_return() {
    let days = ProcessingTime::WorkingDays(5);
    let app = dossier(vn("2026-02-12", 9, 0), days);
    // Due Thursday 26 February: that evening is on time, Friday morning is late.
    assert!(verdict(&app, days, &calendar(), vn("2026-02-26", 23, 59)));
    assert!(!verdict(&app, days, &calendar(), vn("2026-02-27", 7, 30)));
    // A calendar without Tết would have made the same return late.
    assert!(!verdict(
        &app,
        days,
        &WorkingCalendar::default(),
        vn("2026-02-26", 10, 0)
    ));
}

#[test]
fn hostile_times_stay_bounded_and_unmatched_events_are_ignored() {
    let days = ProcessingTime::WorkingDays(5);
    let mut app = dossier(vn("2026-02-12", 9, 0), days);
    // A resume without a pause does nothing; a pause far in the future is clamped.
    app.clock_events
        .push(event(ClockEventKind::Resume, i64::MIN));
    assert_eq!(
        effective_deadline(&app, days, &calendar()).due.date,
        d("2026-02-26")
    );
    app.clock_events.push(event(ClockEventKind::Pause, 0));
    app.clock_events
        .push(event(ClockEventKind::Resume, i64::MAX));
    let due = effective_deadline(&app, days, &calendar());
    assert!(due.due.date > d("2030-01-01"));
    let hours = ProcessingTime::WorkingHours(4);
    let mut app = dossier(vn("2026-02-12", 9, 0), hours);
    app.clock_events.push(event(ClockEventKind::Pause, 0));
    app.clock_events
        .push(event(ClockEventKind::Resume, i64::MAX));
    assert!(
        effective_deadline(&app, hours, &calendar())
            .due
            .at_ms
            .is_some()
    );
}
