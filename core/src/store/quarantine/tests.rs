use std::sync::Arc;

use automerge::ReadDoc;
use automerge::transaction::Transactable;

use super::decisions::{application_path, request_path};
use super::*;
use crate::catalogue::{Procedure, ProcessingTime};
use crate::clock::ManualClock;
use crate::record::{Applicant, NewApplication, NewCitizenRequest, Record, RequestStatus, Status};
use crate::store::{PendingDoc, PullDoc, PullReport, StoreConfig};

const OFFICER: &str = "lan.nguyen";
const COMMUNE: &str = "DB-MUONGPHANG";
// Monday 2026-11-23 09:00 in Vietnam.
const MONDAY_9AM: i64 = 1_795_399_200_000 - 7 * 3_600_000 + 9 * 3_600_000 - 2 * 3_600_000;

fn open_at(dir: &tempfile::TempDir, name: &str, app_version: Option<&str>) -> DeviceStore {
    let mut config = StoreConfig::new(dir.path().join(name));
    config.app_version = app_version.map(str::to_owned);
    let mut store =
        DeviceStore::open_with_clock(config, Arc::new(ManualClock::new(MONDAY_9AM))).unwrap();
    store
        .import_catalogue(&[Procedure {
            withdrawal_allowed: true,
            ..Procedure::new(
                "1.001193",
                "Đăng ký khai sinh",
                ProcessingTime::WorkingDays(3),
            )
        }])
        .unwrap();
    store
}

fn open(dir: &tempfile::TempDir, name: &str) -> DeviceStore {
    open_at(dir, name, None)
}

fn new_app(name: &str, commune: &str) -> NewApplication {
    NewApplication {
        commune_code: commune.into(),
        procedure_code: "1.001193".into(),
        applicant: Applicant {
            name: name.into(),
            village: "Bản Phăng".into(),
            ..Default::default()
        },
        notes: "Đã nhận tờ khai.".into(),
        ..Default::default()
    }
}

fn refused(id: RecordId, code: &str) -> RefusedDoc {
    RefusedDoc {
        id,
        kind: RecordKind::Application,
        code: code.into(),
        message: format!("scripted {code}"),
    }
}

fn pending_ids(store: &mut DeviceStore) -> Vec<RecordId> {
    store
        .pending_push(usize::MAX)
        .unwrap()
        .iter()
        .map(|doc| doc.id)
        .collect()
}

/// Every change of `id` in `from`, as the feed would carry them.
fn pulled(from: &mut DeviceStore, id: RecordId, received_at: i64) -> PullDoc {
    PullDoc {
        id: Some(id),
        kind: RecordKind::Application,
        changes: from.changes_since(id, &[]).unwrap(),
        received_at,
    }
}

/// A change a newer app made on top of `changes`: it sets `key` to `value` at the top level,
/// as this device's actor never would.
fn newer_app_change(changes: &[Vec<u8>], key: &str, value: &str) -> Vec<u8> {
    let mut doc = automerge::AutoCommit::new();
    for change in changes {
        doc.load_incremental(change).unwrap();
    }
    let heads = doc.get_heads();
    doc.put(automerge::ROOT, key, value).unwrap();
    doc.commit();
    doc.get_changes(&heads)[0].raw_bytes().to_vec()
}

#[test]
fn refused_documents_are_set_aside_and_every_other_one_flows() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a.db");
    // A tablet whose clock is an hour behind the server's: times are corrected.
    a.set_clock_offset(3_600_000).unwrap();
    let ids: Vec<RecordId> = (0..3)
        .map(|i| {
            a.create_application(OFFICER, new_app(&format!("Người {i}"), COMMUNE))
                .unwrap()
                .id
        })
        .collect();
    let batch = a.pending_push(usize::MAX).unwrap();
    a.quarantine_refused(&[refused(ids[1], "immutable_field")])
        .unwrap();
    let accepted: Vec<PendingDoc> = batch.into_iter().filter(|d| d.id != ids[1]).collect();
    a.acknowledge_push(&accepted, MONDAY_9AM).unwrap();
    assert_eq!(
        a.pending_count().unwrap(),
        0,
        "the refused one waits for the app"
    );
    assert_eq!(a.quarantined_count().unwrap(), 1);
    let listed = a.quarantined().unwrap();
    assert_eq!(listed.len(), 1);
    let entry = &listed[0];
    assert_eq!(
        (
            entry.record_id,
            entry.direction,
            entry.code.as_str(),
            entry.message.as_str()
        ),
        (
            ids[1],
            Direction::Outgoing,
            "immutable_field",
            "scripted immutable_field"
        )
    );
    assert_eq!(
        (entry.first_at, entry.attempts),
        (MONDAY_9AM + 3_600_000, 1)
    );
    assert!(entry.id_known && entry.changes_kept);

    // A later edit is kept and not pushed: the app decides.
    a.transition(ids[1], OFFICER, Status::InProgress).unwrap();
    assert!(pending_ids(&mut a).is_empty());
    assert_eq!(a.pending_count().unwrap(), 0);
    // Refused again: one attempt more.
    a.quarantine_refused(&[refused(ids[1], "immutable_field")])
        .unwrap();
    assert_eq!(a.quarantined().unwrap()[0].attempts, 2);

    // Retry: back in the outbox with every unacknowledged change, the edit included.
    assert!(a.retry_quarantined(ids[1]).unwrap());
    assert_eq!(a.quarantined_count().unwrap(), 0);
    let again = a.pending_push(usize::MAX).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].changes.len()), (ids[1], 2));
    assert!(matches!(
        a.retry_quarantined(ids[1]),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn a_discard_drops_unsynced_changes_keeps_colleagues_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a.db");
    let mut b = open(&dir, "b.db");

    // Never synced: discarding removes the record itself.
    let stray = a
        .create_application(OFFICER, new_app("Vi Văn Thắng", COMMUNE))
        .unwrap()
        .id;
    a.quarantine_refused(&[refused(stray, "second_root")])
        .unwrap();
    assert!(matches!(
        a.discard_quarantined(stray, OFFICER, "  "),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        a.discard_quarantined(stray, "", "typed twice"),
        Err(Error::InvalidInput { .. })
    ));
    a.discard_quarantined(stray, OFFICER, "typed twice")
        .unwrap();
    assert!(matches!(a.get(stray), Err(Error::NotFound(_))));
    assert!(a.search("vi van thang", 10).unwrap().is_empty());
    assert_eq!(
        (a.pending_count().unwrap(), a.quarantined_count().unwrap()),
        (0, 0)
    );

    // Synced, then edited here and refused, while a colleague's edit arrives: the discard
    // takes back this device's edit only.
    let id = a
        .create_application(OFFICER, new_app("Lò Thị Hoa", COMMUNE))
        .unwrap()
        .id;
    let batch = a.pending_push(usize::MAX).unwrap();
    a.acknowledge_push(&batch, MONDAY_9AM).unwrap();
    b.apply_pull(&[pulled(&mut a, id, MONDAY_9AM)], 1).unwrap();
    b.update_application(id, "minh.lo", |app| {
        app.assignee = Some("Lò Văn Minh".into())
    })
    .unwrap();
    a.transition(id, OFFICER, Status::InProgress).unwrap();
    a.quarantine_refused(&[refused(id, "illegal_transition")])
        .unwrap();
    let from_b = b.changes_since(id, &a.heads(id).unwrap()[..0]).unwrap();
    a.apply_pull(
        &[PullDoc {
            id: Some(id),
            kind: RecordKind::Application,
            changes: from_b,
            received_at: MONDAY_9AM + 1,
        }],
        2,
    )
    .unwrap();
    assert_eq!(a.history(id).unwrap().len(), 3);

    a.discard_quarantined(id, OFFICER, "status moved by mistake")
        .unwrap();
    let app = a.get_application(id).unwrap();
    assert_eq!(app.status, Status::Received);
    assert_eq!(app.assignee.as_deref(), Some("Lò Văn Minh"));
    let history = a.history(id).unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].officer, "minh.lo");
    assert_eq!(
        (a.pending_count().unwrap(), a.quarantined_count().unwrap()),
        (0, 0)
    );
    // The projection follows: queries see the record as it now is.
    let page = a
        .query_applications(&crate::store::ApplicationQuery {
            status: Some(Status::InProgress),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.total, 0);
    // Reopened: the same.
    drop(a);
    let mut a = open(&dir, "a.db");
    assert_eq!(a.get_application(id).unwrap().status, Status::Received);

    let log = a.audit_log().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (
            log[0].record_id,
            log[0].action,
            log[0].officer.as_str(),
            log[0].reason.as_str(),
            log[0].code.as_str()
        ),
        (
            stray,
            AuditAction::Discarded,
            OFFICER,
            "typed twice",
            "second_root"
        )
    );
    assert_eq!(log[0].at, MONDAY_9AM);
    assert_eq!(
        (log[1].record_id, log[1].code.as_str(), log[1].replacement),
        (id, "illegal_transition", None)
    );
    assert!(matches!(
        a.discard_quarantined(id, OFFICER, "again"),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn records_of_another_commune_are_refused_on_the_device_and_fixed_by_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a.db");
    // Offline, before enrollment: another commune's code, and the work went on.
    let stray = a
        .create_application(OFFICER, new_app("Quàng Văn Pọm", "DB-NATAU"))
        .unwrap();
    a.transition(stray.id, OFFICER, Status::InProgress).unwrap();
    let request = a
        .create_citizen_request(
            OFFICER,
            NewCitizenRequest {
                commune_code: "DB-NATAU".into(),
                category: "road".into(),
                description: "Đường sạt lở".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let ours = a
        .create_application(OFFICER, new_app("Lò Thị Dung", COMMUNE))
        .unwrap()
        .id;
    assert_eq!(a.enrolled_commune(), None);

    // Enrollment sets them aside at once: they never reach the server.
    assert_eq!(a.set_enrolled_commune(Some(COMMUNE)).unwrap(), 2);
    assert_eq!(a.enrolled_commune(), Some(COMMUNE));
    // Recorded again (at every open with the credential): nothing more is set aside or counted.
    assert_eq!(a.set_enrolled_commune(Some(COMMUNE)).unwrap(), 0);
    assert!(a.quarantined().unwrap().iter().all(|e| e.attempts == 1));
    assert_eq!(pending_ids(&mut a), vec![ours]);
    let listed = a.quarantined().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|e| e.code == "not_yours"
        && e.direction == Direction::Outgoing
        && e.message.contains("DB-NATAU")));

    // Creating or editing for another commune is refused here, with a clear error.
    let err = a
        .create_application(OFFICER, new_app("Lò Văn Khánh", "DB-NATAU"))
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput { field, reason } if field == "commune_code" && reason.contains(COMMUNE)),
        "{err}"
    );
    let err = a
        .update_application(stray.id, OFFICER, |app| app.notes.push('!'))
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput { field, .. } if field == "commune_code"),
        "{err}"
    );
    // The scope survives a restart.
    drop(a);
    let mut a = open(&dir, "a.db");
    assert_eq!(a.enrolled_commune(), Some(COMMUNE));
    assert!(
        a.create_citizen_request(
            OFFICER,
            NewCitizenRequest {
                commune_code: "DB-NATAU".into(),
                category: "road".into(),
                description: "x".into(),
                ..Default::default()
            },
        )
        .is_err()
    );

    // The fix: a copy for this commune, received at the same time, at the same status.
    let copy = match a.copy_quarantined_as_new(stray.id, "minh.lo").unwrap() {
        Record::Application(app) => app,
        other => panic!("{other:?}"),
    };
    assert_ne!(copy.id, stray.id);
    assert_eq!(copy.commune_code, COMMUNE);
    assert_eq!(copy.applicant, stray.applicant);
    assert_eq!(
        (copy.received_at, copy.due_at),
        (stray.received_at, stray.due_at)
    );
    assert_eq!(copy.status, Status::InProgress);
    assert_eq!(copy.created_by.device, a.device_id().0);
    assert!(matches!(a.get(stray.id), Err(Error::NotFound(_))));
    let copied_request = a.copy_quarantined_as_new(request.id, "minh.lo").unwrap();
    assert_eq!(copied_request.commune_code(), COMMUNE);
    assert_eq!(a.quarantined_count().unwrap(), 0);
    let mut pending = pending_ids(&mut a);
    pending.sort();
    let mut expected = vec![ours, copy.id, copied_request.id()];
    expected.sort();
    assert_eq!(pending, expected);

    let log = a.audit_log().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (
            log[0].action,
            log[0].record_id,
            log[0].replacement,
            log[0].officer.as_str()
        ),
        (AuditAction::CopiedAsNew, stray.id, Some(copy.id), "minh.lo")
    );
    assert_eq!(log[1].kind, RecordKind::CitizenRequest);
    assert!(log[0].reason.contains(&copy.id.to_string()));
}

#[test]
fn pulled_documents_this_build_cannot_read_are_kept_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a.db");
    let mut b = open(&dir, "b.db");
    let good = a
        .create_application(OFFICER, new_app("Tòng Văn Sinh", COMMUNE))
        .unwrap()
        .id;
    let newer = a
        .create_application(OFFICER, new_app("Cầm Thị Lả", COMMUNE))
        .unwrap()
        .id;
    // A newer app gave the record a status this build does not know.
    let mut changes = a.changes_since(newer, &[]).unwrap();
    changes.push(newer_app_change(&changes, "status", "archived"));
    let unreadable = PullDoc {
        id: Some(newer),
        kind: RecordKind::Application,
        changes: changes.clone(),
        received_at: MONDAY_9AM + 5,
    };
    let junk = PullDoc {
        id: None,
        kind: RecordKind::CitizenRequest,
        changes: vec![b"not a change".to_vec()],
        received_at: MONDAY_9AM + 5,
    };
    let report = b
        .apply_pull(&[pulled(&mut a, good, 3), unreadable, junk.clone()], 3)
        .unwrap();
    // The rest flows and the cursor moves on; nothing is skipped silently.
    assert_eq!((report.created, report.rejected.len()), (1, 2));
    assert_eq!(b.sync_cursor().unwrap(), 3);
    assert!(b.contains(good).unwrap());
    assert!(!b.contains(newer).unwrap());
    let listed = b.quarantined().unwrap();
    assert_eq!(listed.len(), 2);
    let kept = listed.iter().find(|e| e.record_id == newer).unwrap();
    assert_eq!(
        (
            kept.direction,
            kept.code.as_str(),
            kept.attempts,
            kept.changes_kept
        ),
        (Direction::Incoming, UNREADABLE, 1, true)
    );
    assert!(kept.message.contains("archived"), "{}", kept.message);
    assert_eq!(
        kept.kept_bytes,
        changes.iter().map(|c| c.len() as u64).sum::<u64>()
    );
    // A document without a readable id is kept under one made from its changes, once.
    let anonymous = listed.iter().find(|e| e.record_id != newer).unwrap();
    assert!(!anonymous.id_known);
    b.apply_pull(&[junk], 4).unwrap();
    assert_eq!(b.quarantined_count().unwrap(), 2);

    // Its later changes join it and are tried with it.
    let mut later = changes.clone();
    later.push(newer_app_change(&later, "note_v2", "x"));
    let report = b
        .apply_pull(
            &[PullDoc {
                id: Some(newer),
                kind: RecordKind::Application,
                changes: later[changes.len()..].to_vec(),
                received_at: MONDAY_9AM + 6,
            }],
            5,
        )
        .unwrap();
    assert_eq!(report.rejected.len(), 1);
    let kept = b
        .quarantined()
        .unwrap()
        .into_iter()
        .find(|e| e.record_id == newer)
        .unwrap();
    assert_eq!(kept.attempts, 2);
    assert_eq!(
        kept.kept_bytes,
        later.iter().map(|c| c.len() as u64).sum::<u64>()
    );

    // The same build gains nothing by trying again at every sync; another build tries.
    assert_eq!(
        b.retry_incoming_quarantine().unwrap(),
        PullReport::default()
    );
    let attempts = |store: &DeviceStore| {
        store
            .quarantined()
            .unwrap()
            .into_iter()
            .find(|e| e.record_id == newer)
            .unwrap()
            .attempts
    };
    assert_eq!(attempts(&b), 2);
    drop(b);
    let mut b = open_at(&dir, "b.db", Some("2.0"));
    b.retry_incoming_quarantine().unwrap();
    assert_eq!(attempts(&b), 3, "an upgraded app tries again");
    b.retry_incoming_quarantine().unwrap();
    assert_eq!(attempts(&b), 3, "once per build");
    assert!(!b.retry_quarantined(newer).unwrap(), "still unreadable");
    assert_eq!(attempts(&b), 4);

    // Changes that lacked their base apply once it is there: here the base comes from
    // elsewhere, and a retry applies the kept ones.
    let id = a
        .create_application(OFFICER, new_app("Lường Văn Ón", COMMUNE))
        .unwrap()
        .id;
    a.transition(id, OFFICER, Status::InProgress).unwrap();
    let all = a.changes_since(id, &[]).unwrap();
    b.apply_pull(
        &[PullDoc {
            id: Some(id),
            kind: RecordKind::Application,
            changes: all[1..].to_vec(),
            received_at: MONDAY_9AM + 7,
        }],
        6,
    )
    .unwrap();
    let kept = b
        .quarantined()
        .unwrap()
        .into_iter()
        .find(|e| e.record_id == id)
        .unwrap();
    assert_eq!(kept.code, MISSING_DEPENDENCIES);
    b.apply_remote_changes(id, RecordKind::Application, &all[..1])
        .unwrap();
    assert!(b.retry_quarantined(id).unwrap());
    assert_eq!(b.get_application(id).unwrap().status, Status::InProgress);
    assert!(b.quarantined().unwrap().iter().all(|e| e.record_id != id));
    // ... and the history has the server's receive time of the kept change.
    assert_eq!(
        b.history(id).unwrap()[1].server_received_at,
        Some(MONDAY_9AM + 7)
    );

    // Discarding an incoming one drops its kept changes, with an audit entry.
    b.discard_quarantined(newer, OFFICER, "obsolete app data")
        .unwrap();
    assert!(
        b.quarantined()
            .unwrap()
            .iter()
            .all(|e| e.record_id != newer)
    );
    assert_eq!(b.audit_log().unwrap()[0].direction, Direction::Incoming);
    // An incoming record cannot be copied: it cannot be read.
    let other = b.quarantined().unwrap()[0].record_id;
    assert!(matches!(
        b.copy_quarantined_as_new(other, OFFICER),
        Err(Error::InvalidInput { .. })
    ));
}

#[test]
fn what_the_incoming_quarantine_keeps_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(&dir, "b.db");
    b.quarantine_bounds = Bounds {
        docs: 3,
        bytes: 64,
        listed: 5,
    };
    let junk = |i: usize, len: usize| PullDoc {
        id: Some(RecordId::new()),
        kind: RecordKind::Application,
        changes: vec![vec![b'a' + (i % 26) as u8; len]],
        received_at: 1,
    };
    // Bytes: 40 + 20 fit, 10 more do not.
    let docs = vec![
        junk(0, 40),
        junk(1, 20),
        junk(2, 10),
        junk(3, 1),
        junk(4, 1),
        junk(5, 1),
        junk(6, 1),
    ];
    let report = b.apply_pull(&docs, 7).unwrap();
    assert_eq!(report.rejected.len(), 7);
    assert_eq!(b.sync_cursor().unwrap(), 7);
    let listed = b.quarantined().unwrap();
    assert_eq!(listed.len(), 5, "at most 5 listed");
    let kept: Vec<bool> = listed.iter().map(|e| e.changes_kept).collect();
    // 40 and 20 kept; 10 is over the bytes; 1 fits (3 documents); the next is over the count.
    assert_eq!(kept, vec![true, true, false, true, false]);
    assert!(
        listed[2].message.contains("not kept"),
        "{}",
        listed[2].message
    );
    let bytes: u64 = listed.iter().map(|e| e.kept_bytes).sum();
    assert_eq!(bytes, 61);
    // An entry without its changes stays so: its later changes alone cannot apply.
    let dropped = listed[2].record_id;
    b.apply_pull(
        &[PullDoc {
            id: Some(dropped),
            kind: RecordKind::Application,
            changes: vec![b"more".to_vec()],
            received_at: 2,
        }],
        8,
    )
    .unwrap();
    let entry = b
        .quarantined()
        .unwrap()
        .into_iter()
        .find(|e| e.record_id == dropped)
        .unwrap();
    assert_eq!((entry.changes_kept, entry.attempts), (false, 2));
}

#[test]
fn history_holds_the_server_receive_time_of_each_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a.db");
    let mut b = open(&dir, "b.db");
    let id = a
        .create_application(OFFICER, new_app("Hà Thị Nga", COMMUNE))
        .unwrap()
        .id;
    assert_eq!(a.history(id).unwrap()[0].server_received_at, None);
    let batch = a.pending_push(usize::MAX).unwrap();
    a.acknowledge_push(&batch, MONDAY_9AM + 42).unwrap();
    // Acknowledged again (pushed again after a lost answer): the first time learnt stays.
    a.acknowledge_push(&batch, MONDAY_9AM + 99).unwrap();
    a.transition(id, OFFICER, Status::InProgress).unwrap();
    let history = a.history(id).unwrap();
    assert_eq!(
        history
            .iter()
            .map(|h| h.server_received_at)
            .collect::<Vec<_>>(),
        vec![Some(MONDAY_9AM + 42), None]
    );
    // The edit goes through the fallback (read from the document), still with its time.
    a.conn.execute("DELETE FROM outbox_changes", []).unwrap();
    let batch = a.pending_push(usize::MAX).unwrap();
    a.acknowledge_push(&batch, MONDAY_9AM + 50).unwrap();
    assert_eq!(
        a.history(id).unwrap()[1].server_received_at,
        Some(MONDAY_9AM + 50)
    );

    // Pulled: the feed document's receive time.
    b.apply_pull(&[pulled(&mut a, id, MONDAY_9AM + 60)], 1)
        .unwrap();
    let history = b.history(id).unwrap();
    assert!(
        history
            .iter()
            .all(|h| h.server_received_at == Some(MONDAY_9AM + 60))
    );
    assert_eq!(history[0].device_time, MONDAY_9AM);
}

#[test]
fn a_field_written_by_a_newer_app_survives_an_edit_by_this_build() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a.db");
    let mut b = open(&dir, "b.db");
    let id = a
        .create_application(OFFICER, new_app("Lò Văn Pọm", COMMUNE))
        .unwrap()
        .id;
    let mut changes = a.changes_since(id, &[]).unwrap();
    // A top-level field and one inside the applicant, unknown to this build.
    changes.push(newer_app_change(
        &changes,
        "dossier_number",
        "000.00.12.H09-261123-0001",
    ));
    let mut doc = automerge::AutoCommit::new();
    for change in &changes {
        doc.load_incremental(change).unwrap();
    }
    let heads = doc.get_heads();
    let applicant = match doc.get(automerge::ROOT, "applicant").unwrap() {
        Some((automerge::Value::Object(_), obj)) => obj,
        other => panic!("{other:?}"),
    };
    doc.put(&applicant, "ethnicity", "Thái").unwrap();
    doc.commit();
    changes.push(doc.get_changes(&heads)[0].raw_bytes().to_vec());
    b.apply_remote_changes(id, RecordKind::Application, &changes)
        .unwrap();

    // This build edits every field it knows.
    b.update_application(id, "minh.lo", |app| {
        app.applicant.name = "Lò Văn Pọm (bố)".into();
        app.applicant.village = "Bản Co Mị".into();
        app.notes.push_str(" Đã gọi điện.");
        app.assignee = Some("Lò Văn Minh".into());
        app.status = Status::InProgress;
    })
    .unwrap();
    let mut after = automerge::AutoCommit::new();
    for change in b.changes_since(id, &[]).unwrap() {
        after.load_incremental(&change).unwrap();
    }
    let text = |doc: &automerge::AutoCommit, obj: &automerge::ObjId, key: &str| match doc
        .get(obj, key)
        .unwrap()
    {
        Some((automerge::Value::Scalar(s), _)) => s.to_string(),
        other => panic!("{key}: {other:?}"),
    };
    assert_eq!(
        text(&after, &automerge::ROOT, "dossier_number"),
        "\"000.00.12.H09-261123-0001\""
    );
    let applicant = match after.get(automerge::ROOT, "applicant").unwrap() {
        Some((automerge::Value::Object(_), obj)) => obj,
        other => panic!("{other:?}"),
    };
    assert_eq!(text(&after, &applicant, "ethnicity"), "\"Thái\"");
    assert_eq!(
        b.get_application(id).unwrap().applicant.village,
        "Bản Co Mị"
    );
}

#[test]
fn a_wipe_deletes_the_files_and_leaves_nothing_to_write_to() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let mut store = open(&dir, "w.db");
    let id = store
        .create_application(OFFICER, new_app("Mùa A Páo", COMMUNE))
        .unwrap()
        .id;
    assert!(path.exists());
    let deleted = store.wipe().unwrap();
    assert!(deleted.contains(&path), "{deleted:?}");
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        assert!(!std::path::Path::new(&name).exists(), "{suffix} left");
    }
    assert!(store.is_wiped());
    assert!(matches!(store.get(id), Err(Error::NotFound(_))));
    assert!(
        store
            .create_application(OFFICER, new_app("X", COMMUNE))
            .is_err()
    );
    assert!(store.wipe().unwrap().is_empty(), "idempotent");
    drop(store);
    assert!(!path.exists(), "closing a wiped store writes nothing back");
}

#[test]
fn upgrade_required_holds_for_the_build_that_got_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_at(&dir, "u.db", Some("1.4"));
    assert!(
        store.build_id().ends_with("app 1.4"),
        "{}",
        store.build_id()
    );
    assert!(!store.upgrade_required().unwrap());
    store.set_upgrade_required(true).unwrap();
    assert!(store.upgrade_required().unwrap());
    drop(store);
    assert!(
        open_at(&dir, "u.db", Some("1.4"))
            .upgrade_required()
            .unwrap()
    );
    let mut upgraded = open_at(&dir, "u.db", Some("1.5"));
    assert!(!upgraded.upgrade_required().unwrap());
    upgraded.set_upgrade_required(false).unwrap();
    drop(upgraded);
    assert!(
        !open_at(&dir, "u.db", Some("1.4"))
            .upgrade_required()
            .unwrap()
    );
}

#[test]
fn shortest_workflow_paths() {
    assert_eq!(application_path(Status::Received, true), Some(vec![]));
    assert_eq!(
        application_path(Status::Returned, true),
        Some(vec![Status::InProgress, Status::Ready, Status::Returned])
    );
    assert_eq!(
        application_path(Status::Withdrawn, true),
        Some(vec![Status::Withdrawn])
    );
    assert_eq!(application_path(Status::Withdrawn, false), None);
    assert_eq!(
        request_path(RequestStatus::Closed),
        Some(vec![
            RequestStatus::InProgress,
            RequestStatus::Resolved,
            RequestStatus::Closed
        ])
    );
}
