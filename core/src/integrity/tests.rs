//! The rules and checks as an attacker meets them: changes crafted with any actor, any order,
//! any content, against the history the server holds.

use automerge::Change;

use super::*;
use crate::catalogue::CivilDate;
use crate::record::{
    Applicant, Application, Author, DeviceId, Record, RecordDoc, RecordKind, Status,
};

const COMMUNE: &str = "DB-MUONGPHANG";

fn sample(device: DeviceId) -> Application {
    Application {
        id: crate::record::RecordId::new(),
        dossier_number: None,
        commune_code: COMMUNE.into(),
        procedure_code: "1.001193".into(),
        applicant: Applicant {
            name: "Nguyễn Thị Hương".into(),
            ..Applicant::default()
        },
        received_at: 1_795_377_600_000,
        due_at: CivilDate::from_ymd(2026, 11, 26).unwrap(),
        documents: vec![],
        fees: vec![],
        status: Status::Received,
        assignee: None,
        notes: String::new(),
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
    }
}

/// An edit of a record, as a test case holds it.
type Edit = Box<dyn FnOnce(&mut Application)>;

fn no_withdrawal(_: &str) -> Option<bool> {
    Some(false)
}

fn ctx(device: DeviceId) -> RuleContext<'static> {
    RuleContext {
        device,
        commune: Some(COMMUNE),
        withdrawal_allowed: &no_withdrawal,
        procedure_at: &no_catalogue,
    }
}

fn all_changes(doc: &mut RecordDoc) -> Vec<Change> {
    doc.changes_since(&[])
}

/// A copy of `doc` whose next edits are made by `device`.
fn as_device(doc: &mut RecordDoc, device: DeviceId) -> RecordDoc {
    let bytes = doc.save();
    RecordDoc::load(doc.id(), doc.kind(), &bytes, device).unwrap()
}

/// One edit on `doc`; returns the new change.
fn edit(doc: &mut RecordDoc, change: impl FnOnce(&mut Application)) -> Change {
    let before = doc.application().unwrap();
    let heads = doc.heads();
    let mut after = before.clone();
    change(&mut after);
    assert!(doc.edit(&before, &after, "lan", 5).unwrap());
    let mut new = doc.changes_since(&heads);
    assert_eq!(new.len(), 1);
    new.remove(0)
}

fn verdict(stored: Vec<Change>, pushed: Vec<Change>, pusher: DeviceId) -> Verdict {
    check_pushed(None, RecordKind::Application, stored, pushed, &ctx(pusher))
}

fn refused_code(v: Verdict) -> RefusalCode {
    match v {
        Verdict::Refused(refusal) => refusal.code,
        other => panic!("accepted: {other:?}"),
    }
}

fn created(device: DeviceId) -> RecordDoc {
    RecordDoc::create(&Record::Application(sample(device)), device, "lan", 1).unwrap()
}

#[test]
fn an_honest_history_is_accepted_change_by_change() {
    let tablet = DeviceId::new();
    let mut doc = created(tablet);
    let root = all_changes(&mut doc);
    let moved = edit(&mut doc, |a| a.status = Status::InProgress);
    let noted = edit(&mut doc, |a| a.notes = "đủ".into());
    match verdict(Vec::new(), root.clone(), tablet) {
        Verdict::Accepted { new, record } => {
            assert_eq!(new, vec![0]);
            assert!(record.is_some());
        }
        other => panic!("{other:?}"),
    }
    match verdict(root.clone(), vec![moved.clone(), noted.clone()], tablet) {
        Verdict::Accepted { new, .. } => assert_eq!(new, vec![0, 1]),
        other => panic!("{other:?}"),
    }
    // Sent out of order: checked in causal order all the same.
    match verdict(root.clone(), vec![noted.clone(), moved.clone()], tablet) {
        Verdict::Accepted { new, .. } => assert_eq!(new, vec![1, 0]),
        other => panic!("{other:?}"),
    }
    // Known changes again: nothing new.
    assert!(matches!(
        verdict(root.clone(), root.clone(), tablet),
        Verdict::Accepted { record: None, .. }
    ));
    // Without its base: the whole history is needed.
    assert!(matches!(
        verdict(Vec::new(), vec![moved], tablet),
        Verdict::MissingDeps
    ));
}

#[test]
fn a_colleagues_identity_is_refused() {
    let (colleague, hostile) = (DeviceId::new(), DeviceId::new());
    let mut doc = created(colleague);
    let root = all_changes(&mut doc);
    // An edit made under the colleague's actor, pushed by another device.
    let forged = edit(&mut doc, |a| a.notes = "sửa".into());
    assert_eq!(
        refused_code(verdict(root.clone(), vec![forged], hostile)),
        RefusalCode::NotAttributed
    );
    // A record created in the colleague's name by the hostile device.
    let mut framed = sample(colleague);
    framed.id = crate::record::RecordId::new();
    let mut doc = RecordDoc::create(&Record::Application(framed), hostile, "x", 1).unwrap();
    assert_eq!(
        refused_code(verdict(Vec::new(), all_changes(&mut doc), hostile)),
        RefusalCode::NotAttributed
    );
}

#[test]
fn the_record_rules_hold_per_change() {
    let tablet = DeviceId::new();
    let mut doc = created(tablet);
    let root = all_changes(&mut doc);
    let cases: Vec<(&str, Edit, RefusalCode)> = vec![
        (
            "received -> returned",
            Box::new(|a| a.status = Status::Returned),
            RefusalCode::IllegalTransition,
        ),
        (
            "withdrawn where the procedure forbids it",
            Box::new(|a| a.status = Status::Withdrawn),
            RefusalCode::IllegalTransition,
        ),
        (
            "received_at moved to 2020",
            Box::new(|a| a.received_at = 1_577_836_800_000),
            RefusalCode::ImmutableField,
        ),
        (
            "due_at moved to 2099",
            Box::new(|a| a.due_at = CivilDate::from_ymd(2099, 1, 1).unwrap()),
            RefusalCode::ImmutableField,
        ),
        (
            "moved to another commune",
            Box::new(|a| a.commune_code = "DB-NAMPO".into()),
            RefusalCode::ImmutableField,
        ),
        (
            "creator rewritten",
            Box::new(|a| a.created_by.device = DeviceId::new().0),
            RefusalCode::ImmutableField,
        ),
        (
            "a phone number that is not one",
            Box::new(|a| a.applicant.phone = "call me".into()),
            RefusalCode::InvalidField,
        ),
        (
            "notes over the limit in one change",
            Box::new(|a| a.notes = "x".repeat(rules::MAX_NOTES + 1)),
            RefusalCode::TooLarge,
        ),
    ];
    for (name, change, code) in cases {
        let mut copy = as_device(&mut doc, tablet);
        let bad = edit(&mut copy, change);
        assert_eq!(
            refused_code(verdict(root.clone(), vec![bad], tablet)),
            code,
            "{name}"
        );
    }
}

#[test]
fn a_skipped_workflow_is_refused_even_after_a_legal_step() {
    let tablet = DeviceId::new();
    let mut doc = created(tablet);
    let root = all_changes(&mut doc);
    let legal = edit(&mut doc, |a| a.status = Status::InProgress);
    let back = edit(&mut doc, |a| a.status = Status::Received);
    assert_eq!(
        refused_code(verdict(root, vec![legal, back], tablet)),
        RefusalCode::IllegalTransition
    );
}

#[test]
fn a_second_root_is_refused() {
    let tablet = DeviceId::new();
    let app = sample(tablet);
    let mut first = RecordDoc::create(&Record::Application(app.clone()), tablet, "lan", 1).unwrap();
    let root = all_changes(&mut first);
    // The same record created again, from nothing: a second change without dependencies.
    let mut again = app;
    again.status = Status::Received;
    again.applicant.name = "Someone else".into();
    let mut second = RecordDoc::create(&Record::Application(again), tablet, "lan", 2).unwrap();
    assert_eq!(
        refused_code(verdict(root, all_changes(&mut second), tablet)),
        RefusalCode::SecondRoot
    );
}

#[test]
fn an_author_forking_its_own_chain_is_refused() {
    let tablet = DeviceId::new();
    let mut doc = created(tablet);
    let root = all_changes(&mut doc);
    let mut fork = as_device(&mut doc, tablet);
    let one = edit(&mut doc, |a| a.notes = "một".into());
    let other = edit(&mut fork, |a| a.notes = "hai".into());
    assert_eq!(one.seq(), other.seq());
    let mut stored = root.clone();
    stored.push(one);
    assert_eq!(
        refused_code(verdict(stored, vec![other], tablet)),
        RefusalCode::Sequence
    );
}

fn meta(actor: DeviceId, seq: u64, start_op: u64, deps: Vec<automerge::ChangeHash>) -> ChangeMeta {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&seq.to_be_bytes());
    hash[8..24].copy_from_slice(actor.0.as_bytes());
    hash[24..].copy_from_slice(&start_op.to_be_bytes());
    ChangeMeta {
        hash: automerge::ChangeHash(hash),
        actor: actor.0.as_bytes().to_vec(),
        seq,
        start_op,
        max_op: start_op + 2,
        deps,
        message_len: 10,
    }
}

#[test]
fn sequence_gaps_op_counters_and_sizes_are_refused() {
    let (a, b) = (DeviceId::new(), DeviceId::new());
    let mut index = HistoryIndex::new();
    let root = meta(a, 1, 1, vec![]);
    assert_eq!(index.admit(&root, a), Ok(Admission::Added));
    assert_eq!(index.admit(&root, a), Ok(Admission::Known));
    // b's first change must be its seq 1.
    let gap = meta(b, 2, 4, vec![root.hash]);
    assert_eq!(
        index.admit(&gap, b).unwrap_err().code,
        RefusalCode::Sequence
    );
    // Op counters must pass those of its dependencies (root used 1..=3).
    let reused_ops = meta(b, 1, 2, vec![root.hash]);
    assert_eq!(
        index.admit(&reused_ops, b).unwrap_err().code,
        RefusalCode::Sequence
    );
    // ...and start right after them: a gap is refused too (a saved document cannot hold it).
    let skipped_ops = meta(b, 1, 5, vec![root.hash]);
    assert_eq!(
        index.admit(&skipped_ops, b).unwrap_err().code,
        RefusalCode::Sequence
    );
    let b1 = meta(b, 1, 4, vec![root.hash]);
    assert_eq!(index.admit(&b1, b), Ok(Admission::Added));
    // a's second change that does not build on a's first (it names only b's, which does).
    let a2 = meta(a, 2, 7, vec![b1.hash]);
    assert_eq!(index.admit(&a2, a), Ok(Admission::Added));
    // A change naming an unknown dependency: the history is missing, not refused.
    let dangling = meta(a, 3, 10, vec![automerge::ChangeHash([9; 32])]);
    assert_eq!(index.admit(&dangling, a), Ok(Admission::MissingDeps));
    // Too many dependencies, too long a message.
    let mut wide = meta(a, 3, 10, vec![a2.hash; history::MAX_DEPS + 1]);
    assert_eq!(
        index.admit(&wide, a).unwrap_err().code,
        RefusalCode::TooLarge
    );
    wide.deps = vec![a2.hash];
    wide.message_len = history::MAX_MESSAGE + 1;
    assert_eq!(
        index.admit(&wide, a).unwrap_err().code,
        RefusalCode::TooLarge
    );
}

#[test]
fn notes_merged_past_the_limit_never_freeze_a_record() {
    let (a_dev, b_dev) = (DeviceId::new(), DeviceId::new());
    let mut a = created(a_dev);
    let root = all_changes(&mut a);
    let mut b = as_device(&mut a, b_dev);
    let half = "y".repeat(rules::MAX_NOTES / 2 + 100);
    let on_a = edit(&mut a, |app| app.notes = format!("A{half}"));
    let on_b = edit(&mut b, |app| app.notes = format!("B{half}"));
    // Each change alone is within the limit; merged, the notes are over it.
    let mut stored = root.clone();
    stored.push(on_a.clone());
    match verdict(stored.clone(), vec![on_b.clone()], b_dev) {
        Verdict::Accepted { record, .. } => match record.as_deref() {
            Some(Record::Application(app)) => assert!(app.notes.len() > rules::MAX_NOTES),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    // On the merged record, an edit of another field passes; shortening the notes passes;
    // making them longer still does not.
    a.apply_changes(&[on_b.raw_bytes().to_vec()], crate::record::Source::Server)
        .unwrap();
    stored.push(on_b);
    let merged = a.application().unwrap();
    let mut status = as_device(&mut a, a_dev);
    let moved = edit(&mut status, |app| app.status = Status::InProgress);
    assert!(matches!(
        verdict(stored.clone(), vec![moved], a_dev),
        Verdict::Accepted { .. }
    ));
    let mut longer = as_device(&mut a, a_dev);
    let grown = edit(&mut longer, |app| app.notes.push_str("more"));
    assert_eq!(
        refused_code(verdict(stored.clone(), vec![grown], a_dev)),
        RefusalCode::TooLarge
    );
    let mut shorter = as_device(&mut a, a_dev);
    let cut = edit(&mut shorter, |app| {
        app.notes.truncate(merged.notes.len() - 10)
    });
    assert!(matches!(
        verdict(stored, vec![cut], a_dev),
        Verdict::Accepted { .. }
    ));
}

#[test]
fn creation_is_checked_against_the_devices_commune() {
    let tablet = DeviceId::new();
    let mut elsewhere = sample(tablet);
    elsewhere.commune_code = "DB-NAMPO".into();
    let record = Record::Application(elsewhere);
    let violation = check_creation(&record, &ctx(tablet)).unwrap_err();
    assert_eq!(violation.code, RefusalCode::NotYours);
    // A province account (no commune) may create in any commune.
    let province = RuleContext {
        commune: None,
        ..ctx(tablet)
    };
    assert!(check_creation(&record, &province).is_ok());
    // A new record starts as received.
    let mut done = sample(tablet);
    done.status = Status::Returned;
    assert_eq!(
        check_creation(&Record::Application(done), &ctx(tablet))
            .unwrap_err()
            .code,
        RefusalCode::IllegalTransition
    );
}

#[test]
fn refusal_codes_survive_the_wire_including_unknown_ones() {
    for code in [
        RefusalCode::Malformed,
        RefusalCode::NotAttributed,
        RefusalCode::SecondRoot,
        RefusalCode::Sequence,
        RefusalCode::ImmutableField,
        RefusalCode::IllegalTransition,
        RefusalCode::InvalidField,
        RefusalCode::TooLarge,
        RefusalCode::NotYours,
        RefusalCode::Duplicate,
        RefusalCode::DossierNumber,
        RefusalCode::UnsignedPush,
        RefusalCode::BadSignature,
        RefusalCode::ExternalId,
    ] {
        assert_eq!(RefusalCode::parse(code.as_str()), code);
    }
    assert_eq!(
        RefusalCode::parse("signature_invalid"),
        RefusalCode::Other("signature_invalid".into())
    );
}

#[test]
fn settling_a_status_conflict_with_either_value_is_accepted_and_nothing_else() {
    let (a_dev, b_dev) = (DeviceId::new(), DeviceId::new());
    let mut a = created(a_dev);
    edit(&mut a, |app| app.status = Status::InProgress);
    let mut b = as_device(&mut a, b_dev);
    // Two legal steps from in_progress, made concurrently.
    edit(&mut a, |app| app.status = Status::Ready);
    let rejected = edit(&mut b, |app| app.status = Status::Rejected);
    a.apply_changes(
        &[rejected.raw_bytes().to_vec()],
        crate::record::Source::Server,
    )
    .unwrap();
    let stored = all_changes(&mut a);
    let conflict = a
        .conflicts()
        .into_iter()
        .find(|c| c.field == "status")
        .unwrap();
    assert_eq!(conflict.values.len(), 2);
    // Whichever value reads now, settling on the other is a step backwards from it
    // (ready -> rejected, or rejected -> ready): still accepted as a choice between the two.
    for candidate in &conflict.values {
        let mut settle = as_device(&mut a, a_dev);
        let heads = settle.heads();
        settle
            .resolve("status", &candidate.value, "lan", 9)
            .unwrap();
        let change = settle.changes_since(&heads);
        assert!(
            matches!(
                verdict(stored.clone(), change, a_dev),
                Verdict::Accepted { .. }
            ),
            "{:?}",
            candidate.value
        );
    }
    // A third status is no resolution: the device refuses it, and crafted by hand it is an
    // illegal transition for the server.
    let mut third = as_device(&mut a, a_dev);
    assert!(
        third
            .resolve(
                "status",
                &crate::record::ConflictValue::Str("received".into()),
                "lan",
                9
            )
            .is_err()
    );
    let back = edit(&mut third, |app| app.status = Status::Received);
    assert_eq!(
        refused_code(verdict(stored, vec![back], a_dev)),
        RefusalCode::IllegalTransition
    );
}

/// A catalogue with procedure 1.001193 at version 2 only: a form with a required child name.
fn birth_catalogue(code: &str, version: u64) -> ProcedureLookup {
    use crate::catalogue::{Procedure, ProcessingTime};
    if code != "1.001193" {
        return ProcedureLookup::UnknownCode;
    }
    if version != 2 {
        return ProcedureLookup::UnknownVersion;
    }
    let mut p = Procedure::new(code, "Đăng ký khai sinh", ProcessingTime::WorkingDays(1));
    p.version = 2;
    p.form = serde_json::from_str(
        r#"{"fields":[{"name":"child_name","label":"Họ tên trẻ","type":"text","required":true,"max_len":50}]}"#,
    )
    .unwrap();
    ProcedureLookup::Known(std::sync::Arc::new(p))
}

#[test]
fn form_values_follow_the_pinned_version_on_both_sides() {
    use crate::catalogue::FormValue;
    let tablet = DeviceId::new();
    let with_catalogue = RuleContext {
        procedure_at: &birth_catalogue,
        ..ctx(tablet)
    };
    let mut good = sample(tablet);
    good.procedure_version = 2;
    good.form_values
        .insert("child_name".into(), FormValue::Text("Lò Thị Mai".into()));
    assert!(check_creation(&Record::Application(good.clone()), &with_catalogue).is_ok());

    let refused = |app: &Application, ctx: &RuleContext<'_>| {
        let v = check_creation(&Record::Application(app.clone()), ctx).unwrap_err();
        assert_eq!(v.code, RefusalCode::InvalidField);
        v.error.to_string()
    };
    // Values that break the form: a missing required field, a wrong type, an unknown field.
    let mut missing = good.clone();
    missing.form_values.clear();
    assert!(refused(&missing, &with_catalogue).contains("form.child_name"));
    let mut wrong_type = good.clone();
    wrong_type
        .form_values
        .insert("child_name".into(), FormValue::Number(7));
    assert!(refused(&wrong_type, &with_catalogue).contains("form.child_name"));
    let mut extra = good.clone();
    extra
        .form_values
        .insert("smuggled".into(), FormValue::Text("x".into()));
    assert!(refused(&extra, &with_catalogue).contains("form.smuggled"));
    // A pin nobody published, to escape the form.
    let mut invented = good.clone();
    invented.procedure_version = 99;
    invented.form_values.clear();
    assert!(refused(&invented, &with_catalogue).contains("never published"));
    // Values without a pin, or for a procedure the checker cannot see.
    let mut unpinned = good.clone();
    unpinned.procedure_version = 0;
    assert!(refused(&unpinned, &with_catalogue).contains("form_values"));
    let mut elsewhere = good.clone();
    elsewhere.procedure_code = "9.999999".into();
    assert!(refused(&elsewhere, &with_catalogue).contains("cannot be checked"));
    elsewhere.form_values.clear();
    assert!(check_creation(&Record::Application(elsewhere), &with_catalogue).is_ok());

    // Edits: the pin stays; a value may not break the form; an old problem is not held
    // against an edit that leaves it as it was.
    let before = Record::Application(good.clone());
    let mut repinned = good.clone();
    repinned.procedure_version = 3;
    let v = check_edit(&before, &Record::Application(repinned), &with_catalogue).unwrap_err();
    assert_eq!(v.code, RefusalCode::ImmutableField);
    let mut long = good.clone();
    long.form_values
        .insert("child_name".into(), FormValue::Text("a".repeat(51)));
    assert!(check_edit(&before, &Record::Application(long.clone()), &with_catalogue).is_err());
    let mut noted = long.clone();
    noted.notes = "Đã gọi điện.".into();
    assert!(
        check_edit(
            &Record::Application(long),
            &Record::Application(noted),
            &with_catalogue
        )
        .is_ok()
    );
}

#[test]
fn a_dossier_number_is_set_at_creation_and_never_changed() {
    let tablet = DeviceId::new();
    let numbered = |number: Option<&str>, fallback: bool| {
        let mut app = sample(tablet);
        app.dossier_number = number.map(str::to_owned);
        app.dossier_number_fallback = fallback;
        RecordDoc::create(&Record::Application(app), tablet, "lan", 1).unwrap()
    };
    // At creation: accepted with or without a number; a flag without a number is not.
    for (number, fallback, ok) in [
        (Some("01234-261206-000001"), false, true),
        (Some("01234-261206-D7-0"), true, true),
        (None, false, true),
        (None, true, false),
        (Some(""), false, false),
    ] {
        let mut doc = numbered(number, fallback);
        let verdict = verdict(Vec::new(), all_changes(&mut doc), tablet);
        assert_eq!(
            matches!(verdict, Verdict::Accepted { .. }),
            ok,
            "{number:?} {fallback}: {verdict:?}"
        );
    }
    // Afterwards: altered, added or re-flagged, it is refused as immutable (clearing is the same
    // rule: `rules::check_application_edit` compares the whole value).
    let edits: Vec<(Option<&str>, Edit)> = vec![
        (
            Some("01234-261206-000001"),
            Box::new(|a| a.dossier_number = Some("01234-261206-000002".into())),
        ),
        (
            None,
            Box::new(|a| a.dossier_number = Some("01234-261206-000009".into())),
        ),
        (
            Some("01234-261206-000001"),
            Box::new(|a| a.dossier_number_fallback = true),
        ),
    ];
    for (number, change) in edits {
        let mut doc = numbered(number, false);
        let root = all_changes(&mut doc);
        let forged = edit(&mut doc, change);
        assert_eq!(
            refused_code(verdict(root, vec![forged], tablet)),
            RefusalCode::ImmutableField
        );
    }
}

fn imported(device: DeviceId, status: Status) -> Application {
    Application {
        status,
        imported: Some(crate::record::Imported {
            external_id: "SK-0001".into(),
            original_reference: "12/HT-2025".into(),
            imported_at: 1_795_399_200_000,
            returned_at: None,
        }),
        ..sample(device)
    }
}

fn created_as(app: Application, device: DeviceId) -> Vec<Change> {
    let mut doc = RecordDoc::create(&Record::Application(app), device, "lan", 1).unwrap();
    all_changes(&mut doc)
}

#[test]
fn only_an_imported_dossier_is_created_past_received() {
    let tablet = DeviceId::new();
    for status in Status::ALL {
        let accepted = verdict(
            Vec::new(),
            created_as(imported(tablet, status), tablet),
            tablet,
        );
        assert!(
            matches!(accepted, Verdict::Accepted { .. }),
            "{status}: {accepted:?}"
        );
        if status != Status::Received {
            let plain = Application {
                status,
                ..sample(tablet)
            };
            assert_eq!(
                refused_code(verdict(Vec::new(), created_as(plain, tablet), tablet)),
                RefusalCode::IllegalTransition
            );
        }
    }
    // Returned, with its return time between receipt and import.
    let mut returned = imported(tablet, Status::Returned);
    if let Some(marker) = &mut returned.imported {
        marker.returned_at = Some(returned.received_at + 1);
    }
    assert!(matches!(
        verdict(Vec::new(), created_as(returned.clone(), tablet), tablet),
        Verdict::Accepted { .. }
    ));
    let mut bad = Vec::new();
    // Received after its import.
    let mut late = imported(tablet, Status::Ready);
    late.received_at = 1_795_399_200_001;
    bad.push(late);
    // A return time on a dossier not returned, or outside receipt..import.
    let mut not_returned = returned.clone();
    not_returned.status = Status::Ready;
    bad.push(not_returned);
    for at in [returned.received_at - 1, 1_795_399_200_001] {
        let mut outside = returned.clone();
        if let Some(marker) = &mut outside.imported {
            marker.returned_at = Some(at);
        }
        bad.push(outside);
    }
    // An empty or oversized external id.
    for id in [
        String::new(),
        "x".repeat(crate::record::MAX_EXTERNAL_ID + 1),
    ] {
        let mut app = imported(tablet, Status::Ready);
        if let Some(marker) = &mut app.imported {
            marker.external_id = id;
        }
        bad.push(app);
    }
    for app in bad {
        let code = refused_code(verdict(Vec::new(), created_as(app.clone(), tablet), tablet));
        assert!(
            matches!(code, RefusalCode::InvalidField | RefusalCode::TooLarge),
            "{app:?}: {code}"
        );
    }
}

#[test]
fn the_import_marker_is_never_added_changed_or_removed() {
    let tablet = DeviceId::new();
    let marker = imported(tablet, Status::Returned).imported;
    // Added to a dossier taken on the tablet, to skip its workflow.
    let mut doc = created(tablet);
    let root = all_changes(&mut doc);
    let forged = edit(&mut doc, |a| {
        a.imported = marker.clone();
        a.status = Status::Returned;
    });
    assert_eq!(
        refused_code(verdict(root.clone(), vec![forged], tablet)),
        RefusalCode::ImmutableField
    );
    let mut doc = created(tablet);
    let root = all_changes(&mut doc);
    let only_marker = edit(&mut doc, |a| a.imported = marker.clone());
    assert_eq!(
        refused_code(verdict(root, vec![only_marker], tablet)),
        RefusalCode::ImmutableField
    );
    // Changed or removed on an imported dossier.
    let app = imported(tablet, Status::InProgress);
    let mut pristine = RecordDoc::create(&Record::Application(app), tablet, "lan", 1).unwrap();
    let root = all_changes(&mut pristine);
    let mut doc = as_device(&mut pristine, tablet);
    let renamed = edit(&mut doc, |a| {
        if let Some(m) = &mut a.imported {
            m.external_id = "SK-0002".into();
        }
    });
    assert_eq!(
        refused_code(verdict(root.clone(), vec![renamed], tablet)),
        RefusalCode::ImmutableField
    );
    // Removed: a raw deletion (the typed edit never writes an absent marker).
    let mut raw = automerge::AutoCommit::load(&pristine.save())
        .unwrap()
        .with_actor(crate::record::doc::actor_for(tablet));
    automerge::transaction::Transactable::delete(&mut raw, automerge::ROOT, "imported").unwrap();
    raw.commit();
    let removed = raw.get_last_local_change().unwrap().clone();
    assert_eq!(
        refused_code(verdict(root.clone(), vec![removed], tablet)),
        RefusalCode::ImmutableField
    );
    // The workflow goes on from the imported state.
    let mut doc = as_device(&mut pristine, tablet);
    let ready = edit(&mut doc, |a| a.status = Status::Ready);
    assert!(matches!(
        verdict(root, vec![ready], tablet),
        Verdict::Accepted { .. }
    ));
}
