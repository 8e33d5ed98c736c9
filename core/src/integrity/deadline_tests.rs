//! The statutory-time rules as a hostile tablet meets them, one change at a time.

use super::*;
use crate::catalogue::CivilDate;
use crate::integrity::rules::{check_creation, check_edit, no_catalogue};
use crate::record::{Applicant, Author, DeviceId, Record, RecordId};

// Received Monday 2026-11-23 03:00 in Vietnam, 3 working days: due Thursday 2026-11-26.
const RECEIVED: i64 = 1_795_377_600_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

fn sample(device: DeviceId, status: Status) -> Application {
    Application {
        id: RecordId::new(),
        dossier_number: None,
        commune_code: "X".into(),
        procedure_code: "1.001193".into(),
        applicant: Applicant {
            name: "Nguyễn Thị Hương".into(),
            ..Applicant::default()
        },
        received_at: RECEIVED,
        due_at: CivilDate::from_ymd(2026, 11, 26).unwrap(),
        documents: vec![],
        fees: vec![],
        status,
        assignee: None,
        notes: String::new(),
        created_by: Author {
            device: device.0,
            officer: "lan".into(),
        },
        procedure_version: 0,
        form_values: Default::default(),
        dossier_number_fallback: false,
        imported: None,
        attachments: Vec::new(),
        clock_events: Vec::new(),
        returned_at: None,
        returned_on_time: None,
    }
}

fn yes(_: &str) -> Option<bool> {
    Some(true)
}

fn check(before: &Application, after: &Application) -> Result<(), Violation> {
    let device = DeviceId(before.created_by.device);
    let ctx = RuleContext {
        device,
        commune: Some("X"),
        withdrawal_allowed: &yes,
        procedure_at: &no_catalogue,
    };
    check_edit(
        &Record::Application(before.clone()),
        &Record::Application(after.clone()),
        &ctx,
    )
}

fn refused(before: &Application, after: &Application, code: RefusalCode, field: &str) {
    let violation = check(before, after).unwrap_err();
    assert_eq!(violation.code, code, "{:?}", violation.error);
    assert!(
        matches!(&violation.error, crate::Error::InvalidInput { field: f, .. } if f == field),
        "{:?}",
        violation.error
    );
}

fn pause(at: i64) -> ClockEvent {
    ClockEvent::new(ClockEventKind::Pause, at, "lan", "CCCD")
}

#[test]
fn events_are_append_only() {
    let device = DeviceId::new();
    let before = sample(device, Status::InProgress);
    let mut paused = before.clone();
    paused.status = Status::SupplementRequested;
    paused.clock_events.push(pause(RECEIVED + HOUR));
    check(&before, &paused).unwrap();

    let mut edited = paused.clone();
    edited.clock_events[0].at += HOUR;
    refused(
        &paused,
        &edited,
        RefusalCode::ImmutableField,
        "clock_events",
    );
    let mut removed = paused.clone();
    removed.clock_events.clear();
    refused(
        &paused,
        &removed,
        RefusalCode::ImmutableField,
        "clock_events",
    );
    // Two events with one id, or two events in one change.
    let mut resumed = paused.clone();
    resumed.status = Status::InProgress;
    let mut twin = ClockEvent::new(ClockEventKind::Resume, RECEIVED + 2 * HOUR, "lan", "");
    twin.id = paused.clock_events[0].id.clone();
    resumed.clock_events.push(twin);
    refused(&paused, &resumed, RefusalCode::InvalidField, "clock_events");
    let mut two = paused.clone();
    two.status = Status::InProgress;
    for _ in 0..2 {
        two.clock_events.push(ClockEvent::new(
            ClockEventKind::Resume,
            RECEIVED + 2 * HOUR,
            "lan",
            "",
        ));
    }
    refused(&paused, &two, RefusalCode::InvalidField, "clock_events");
}

#[test]
fn pauses_and_resumes_go_with_the_status() {
    let device = DeviceId::new();
    let before = sample(device, Status::InProgress);
    // A pause without the status change, the status change without a pause.
    let mut lone = before.clone();
    lone.clock_events.push(pause(RECEIVED + HOUR));
    refused(
        &before,
        &lone,
        RefusalCode::IllegalTransition,
        "clock_events",
    );
    let mut silent = before.clone();
    silent.status = Status::SupplementRequested;
    refused(
        &before,
        &silent,
        RefusalCode::IllegalTransition,
        "clock_events",
    );
    // Leaving the supplement without a resume, and a pause before the receipt.
    let mut paused = silent.clone();
    paused.clock_events.push(pause(RECEIVED + HOUR));
    let mut left = paused.clone();
    left.status = Status::InProgress;
    refused(
        &paused,
        &left,
        RefusalCode::IllegalTransition,
        "clock_events",
    );
    let mut early = silent.clone();
    early.clock_events.push(pause(RECEIVED - HOUR));
    refused(
        &before,
        &early,
        RefusalCode::InvalidField,
        "clock_events.at",
    );
    // A new dossier carries no clock event.
    let ctx = RuleContext {
        device,
        commune: Some("X"),
        withdrawal_allowed: &yes,
        procedure_at: &no_catalogue,
    };
    let mut fresh = sample(device, Status::Received);
    fresh.clock_events.push(pause(RECEIVED));
    assert!(check_creation(&Record::Application(fresh), &ctx).is_err());
}

#[test]
fn an_extension_needs_a_reason_and_a_later_appointment() {
    let device = DeviceId::new();
    let before = sample(device, Status::InProgress);
    let extend = |reason: &str, day: Option<&str>| {
        let mut after = before.clone();
        let mut event = ClockEvent::new(ClockEventKind::Extension, RECEIVED + DAY, "lan", reason);
        event.appointment = day.map(|d| d.parse().unwrap());
        after.clock_events.push(event);
        after
    };
    check(&before, &extend("Chờ xác minh", Some("2026-11-30"))).unwrap();
    refused(
        &before,
        &extend("", Some("2026-11-30")),
        RefusalCode::InvalidField,
        "clock_events.reason",
    );
    refused(
        &before,
        &extend("Chờ xác minh", None),
        RefusalCode::InvalidField,
        "clock_events.appointment",
    );
    refused(
        &before,
        &extend("Chờ xác minh", Some("2026-11-26")),
        RefusalCode::InvalidField,
        "clock_events.appointment",
    );
    let mut closed = sample(device, Status::Ready);
    closed.clock_events.clear();
    let mut late = closed.clone();
    let mut event = ClockEvent::new(ClockEventKind::Extension, RECEIVED + DAY, "lan", "x");
    event.appointment = Some("2026-12-30".parse().unwrap());
    late.clock_events.push(event);
    refused(
        &closed,
        &late,
        RefusalCode::IllegalTransition,
        "clock_events",
    );
}

#[test]
fn the_verdict_is_the_one_the_function_gives() {
    let device = DeviceId::new();
    let ready = sample(device, Status::Ready);
    let returned = |at: i64, on_time: Option<bool>| {
        let mut after = ready.clone();
        after.status = Status::Returned;
        after.returned_at = Some(at);
        after.returned_on_time = on_time;
        after
    };
    // Due Thursday 26 November: Wednesday is on time, the next Monday is late.
    check(&ready, &returned(RECEIVED + 2 * DAY, Some(true))).unwrap();
    check(&ready, &returned(RECEIVED + 7 * DAY, Some(false))).unwrap();
    refused(
        &ready,
        &returned(RECEIVED + 7 * DAY, Some(true)),
        RefusalCode::InvalidField,
        "returned_on_time",
    );
    refused(
        &ready,
        &returned(RECEIVED + 7 * DAY, None),
        RefusalCode::InvalidField,
        "returned_at",
    );
    // Set without the move, or changed afterwards.
    let mut early = ready.clone();
    early.returned_at = Some(RECEIVED + DAY);
    early.returned_on_time = Some(true);
    refused(&ready, &early, RefusalCode::InvalidField, "returned_at");
    let done = returned(RECEIVED + 7 * DAY, Some(false));
    let mut rewritten = done.clone();
    rewritten.returned_on_time = Some(true);
    refused(
        &done,
        &rewritten,
        RefusalCode::ImmutableField,
        "returned_at",
    );
}

/// A checker with a 3-working-day procedure, its own calendar and, maybe, the calendar the
/// pushing device declared (the server's view of an old tablet).
struct Calendars {
    own: WorkingCalendar,
    declared: Option<WorkingCalendar>,
}

impl crate::integrity::ProcedureSource for Calendars {
    fn lookup(&self, code: &str, _: u64) -> crate::integrity::ProcedureLookup {
        use crate::catalogue::{Procedure, ProcessingTime};
        let p = Procedure::new(code, "Đăng ký khai sinh", ProcessingTime::WorkingDays(3));
        crate::integrity::ProcedureLookup::Known(std::sync::Arc::new(p))
    }

    fn calendar(&self) -> Option<&WorkingCalendar> {
        Some(&self.own)
    }

    fn declared_calendar(&self) -> Option<&WorkingCalendar> {
        self.declared.as_ref()
    }
}

#[test]
fn a_verdict_holds_under_the_checkers_or_the_declared_calendar_only() {
    use crate::catalogue::CalendarOverride;
    let device = DeviceId::new();
    let mut ready = sample(device, Status::Ready);
    ready.procedure_version = 1;
    // Old calendar: the plain week, due Thursday 26 November. New calendar: Wednesday 25 is a
    // day off, due Friday 27. A return on Friday is late by the old, on time by the new.
    let old = WorkingCalendar::default();
    let new = WorkingCalendar::from_overrides(&[CalendarOverride {
        day: "2026-11-25".parse().unwrap(),
        working: false,
        reason: "Nghỉ".into(),
    }]);
    let friday = RECEIVED + 4 * DAY;
    let mut returned = ready.clone();
    returned.status = Status::Returned;
    returned.returned_at = Some(friday);
    let verdict_under = |own: &WorkingCalendar, declared: Option<&WorkingCalendar>, v: bool| {
        let source = Calendars {
            own: own.clone(),
            declared: declared.cloned(),
        };
        let ctx = RuleContext {
            device,
            commune: Some("X"),
            withdrawal_allowed: &yes,
            procedure_at: &source,
        };
        let mut after = returned.clone();
        after.returned_on_time = Some(v);
        check_edit(
            &Record::Application(ready.clone()),
            &Record::Application(after),
            &ctx,
        )
    };
    // The device counts with its own calendar only.
    verdict_under(&old, None, false).unwrap();
    assert!(verdict_under(&old, None, true).is_err());
    verdict_under(&new, None, true).unwrap();
    assert!(verdict_under(&new, None, false).is_err());
    // The server (new calendar) accepts the old tablet's late verdict it declared, and its own.
    verdict_under(&new, Some(&old), false).unwrap();
    verdict_under(&new, Some(&old), true).unwrap();
    // A verdict no candidate calendar gives is refused, naming the checker's due date.
    let saturday = RECEIVED + 5 * DAY;
    let source = Calendars {
        own: new.clone(),
        declared: Some(old.clone()),
    };
    let ctx = RuleContext {
        device,
        commune: Some("X"),
        withdrawal_allowed: &yes,
        procedure_at: &source,
    };
    let mut forged = returned.clone();
    forged.returned_at = Some(saturday);
    forged.returned_on_time = Some(true);
    let violation = check_edit(
        &Record::Application(ready.clone()),
        &Record::Application(forged),
        &ctx,
    )
    .unwrap_err();
    assert_eq!(violation.code, RefusalCode::InvalidField);
    assert!(
        violation
            .error
            .to_string()
            .contains("late by the effective due date 2026-11-27"),
        "{}",
        violation.error
    );
}

#[test]
fn an_imported_return_carries_the_registers_time_and_verdict_or_neither() {
    use crate::record::Imported;
    let device = DeviceId::new();
    let ctx = RuleContext {
        device,
        commune: Some("X"),
        withdrawal_allowed: &yes,
        procedure_at: &no_catalogue,
    };
    // Due Thursday 26 November; the register says returned Friday 27: late.
    let friday = RECEIVED + 4 * DAY;
    let mut imported = sample(device, Status::Returned);
    imported.imported = Some(Imported {
        external_id: "SK-1".into(),
        original_reference: String::new(),
        imported_at: RECEIVED + 30 * DAY,
        returned_at: Some(friday),
    });
    let with = |at: Option<i64>, on_time: Option<bool>| {
        let mut app = imported.clone();
        app.returned_at = at;
        app.returned_on_time = on_time;
        check_creation(&Record::Application(app), &ctx)
    };
    with(Some(friday), Some(false)).unwrap();
    // An import by an older build: neither field (the read model judges it the same way).
    with(None, None).unwrap();
    let forged = with(Some(friday), Some(true)).unwrap_err();
    assert_eq!(forged.code, RefusalCode::InvalidField);
    assert!(
        forged
            .error
            .to_string()
            .contains("late by the due date 2026-11-26"),
        "{}",
        forged.error
    );
    // Another time than the register's, or one field without the other.
    assert!(with(Some(RECEIVED + DAY), Some(true)).is_err());
    assert!(with(Some(friday), None).is_err());
    assert!(with(None, Some(false)).is_err());
    // No clock history comes with an import.
    let mut events = imported.clone();
    events.returned_at = Some(friday);
    events.returned_on_time = Some(false);
    events.clock_events.push(pause(RECEIVED + HOUR));
    assert!(check_creation(&Record::Application(events), &ctx).is_err());
}
