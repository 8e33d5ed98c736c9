use std::sync::Arc;

use crate::catalogue::{Procedure, ProcessingTime};
use crate::clock::ManualClock;
use crate::record::{RecordKind, Status};
use crate::store::{DeviceStore, StoreConfig};

const OFFICER: &str = "lan.nguyen";
const COMMUNE: &str = "DB-MUONGPHANG";
// Monday 2026-11-23 09:00 in Vietnam.
const NOW: i64 = 1_795_399_200_000 - 7 * 3_600_000 + 9 * 3_600_000 - 2 * 3_600_000;

const REGISTER: &str = "\
external_id,procedure_code,applicant_name,status,received_at,due_date,original_reference,returned_at,applicant_village
SK-0001,1.001193,Lò Văn Pọm,returned,2025-03-14 09:30,2025-03-17,12/HT-2025,2025-03-17 15:00,Bản Phăng
SK-0002,1.001193,Lò Thị Xuân,in_progress,2026-11-18 08:00,,13/HT-2026,,Bản Noong Bua
SK-0003,1.001193,Quàng Văn Ún,rejected,2026-01-05,2026-01-08,,,
SK-0004,1.001193,,received,2026-11-20,,,,
SK-0005,9.999999,Tòng Thị Én,ready,2026-11-02,,,,
SK-0006,9.999999,Tòng Thị Én,ready,2026-11-02,2026-11-06,,,
SK-0007,1.001193,Cầm Văn Inh,in_progress,2026-11-20,,,2026-11-21,
";

fn open(dir: &tempfile::TempDir) -> DeviceStore {
    let clock = ManualClock::new(NOW);
    let config = StoreConfig::new(dir.path().join("store.db"));
    let mut store = DeviceStore::open_with_clock(config, Arc::new(clock)).unwrap();
    store
        .import_catalogue(&[Procedure::new(
            "1.001193",
            "Đăng ký khai sinh",
            ProcessingTime::WorkingDays(3),
        )])
        .unwrap();
    store
}

fn outbox_changes(store: &DeviceStore) -> i64 {
    store
        .connection()
        .query_row("SELECT count(*) FROM outbox_changes", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn entries_arrive_in_their_state_in_one_change_each_and_bad_ones_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let summary = store
        .import_register_file(OFFICER, Some(COMMUNE), REGISTER.as_bytes())
        .unwrap();
    assert_eq!((summary.imported, summary.already_present), (4, 0));
    let errors: Vec<(u64, &str)> = summary
        .errors
        .iter()
        .map(|e| (e.line, e.reason.as_str()))
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(errors[0].0, 5);
    assert!(errors[0].1.contains("applicant.name"), "{errors:?}");
    assert_eq!(errors[1].0, 6);
    assert!(errors[1].1.contains("give the due date"), "{errors:?}");
    assert_eq!(errors[2].0, 8);
    assert!(
        errors[2].1.contains("only a returned dossier"),
        "{errors:?}"
    );
    // One change per imported dossier, waiting in the outbox.
    assert_eq!(outbox_changes(&store), 4);

    let returned = store.imported_record(COMMUNE, "SK-0001").unwrap().unwrap();
    let app = store.get_application(returned).unwrap();
    assert_eq!(app.status, Status::Returned);
    assert_eq!(app.due_at.to_string(), "2025-03-17");
    assert_eq!(app.dossier_number, None);
    let marker = app.imported.clone().unwrap();
    assert_eq!(marker.external_id, "SK-0001");
    assert_eq!(marker.original_reference, "12/HT-2025");
    assert_eq!(marker.imported_at, NOW);
    // 2025-03-17 15:00 in Vietnam.
    assert_eq!(marker.returned_at, Some(1_742_198_400_000));
    let history = store.history(returned).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].fields, ["imported"]);
    assert_eq!(history[0].officer, OFFICER);

    // Without a due date, the procedure's: Wednesday 18 + 3 working days.
    let open_id = store.imported_record(COMMUNE, "SK-0002").unwrap().unwrap();
    let open = store.get_application(open_id).unwrap();
    assert_eq!(open.due_at.to_string(), "2026-11-23");
    assert_eq!(open.status, Status::InProgress);
    // And it goes on along the workflow from there.
    store.transition(open_id, OFFICER, Status::Ready).unwrap();
    let unknown = store.imported_record(COMMUNE, "SK-0006").unwrap().unwrap();
    assert_eq!(store.get_application(unknown).unwrap().procedure_version, 0);
}

#[test]
fn a_rerun_imports_nothing_and_makes_no_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store
        .import_register_file(OFFICER, Some(COMMUNE), REGISTER.as_bytes())
        .unwrap();
    let changes = outbox_changes(&store);
    let records = store
        .connection()
        .query_row("SELECT count(*) FROM documents", [], |r| r.get::<_, i64>(0))
        .unwrap();
    let again = store
        .import_register_file(OFFICER, Some(COMMUNE), REGISTER.as_bytes())
        .unwrap();
    assert_eq!((again.imported, again.already_present), (0, 4));
    assert_eq!(again.errors.len(), 3);
    assert_eq!(outbox_changes(&store), changes);
    let after: i64 = store
        .connection()
        .query_row("SELECT count(*) FROM documents", [], |r| r.get(0))
        .unwrap();
    assert_eq!(after, records);
    // Another commune's register may use the same keys.
    let other = store
        .import_register_file(OFFICER, Some("DB-THANHMINH"), REGISTER.as_bytes())
        .unwrap();
    assert_eq!(other.imported, 4);
}

#[test]
fn a_record_received_by_sync_counts_as_present() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = open(&dir_a);
    let mut b = open(&dir_b);
    a.import_register_file(OFFICER, Some(COMMUNE), REGISTER.as_bytes())
        .unwrap();
    let id = a.imported_record(COMMUNE, "SK-0003").unwrap().unwrap();
    let changes = a.changes_since(id, &[]).unwrap();
    b.apply_remote_changes(id, RecordKind::Application, &changes)
        .unwrap();
    assert_eq!(b.imported_record(COMMUNE, "SK-0003").unwrap(), Some(id));
    let summary = b
        .import_register_file(OFFICER, Some(COMMUNE), REGISTER.as_bytes())
        .unwrap();
    assert_eq!((summary.imported, summary.already_present), (3, 1));
}

#[test]
fn the_marker_cannot_be_added_changed_or_removed_by_an_edit() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store
        .import_register_file(OFFICER, Some(COMMUNE), REGISTER.as_bytes())
        .unwrap();
    let id = store.imported_record(COMMUNE, "SK-0002").unwrap().unwrap();
    let err = store
        .update_application(id, OFFICER, |app| {
            if let Some(marker) = &mut app.imported {
                marker.external_id = "SK-9999".into();
            }
        })
        .unwrap_err();
    assert!(err.to_string().contains("imported"), "{err}");
    let err = store
        .update_application(id, OFFICER, |app| app.imported = None)
        .unwrap_err();
    assert!(err.to_string().contains("imported"), "{err}");
    let ordinary = store
        .create_application(
            OFFICER,
            crate::record::NewApplication {
                commune_code: COMMUNE.into(),
                procedure_code: "1.001193".into(),
                applicant: crate::record::Applicant {
                    name: "Lò Văn Pọm".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .unwrap();
    let marker = store.get_application(id).unwrap().imported;
    let err = store
        .update_application(ordinary.id, OFFICER, |app| {
            app.imported = marker;
            app.status = Status::Returned;
        })
        .unwrap_err();
    assert!(err.to_string().contains("imported"), "{err}");
}

#[test]
fn an_enrolled_device_imports_into_its_commune_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    assert!(
        store
            .import_register_file(OFFICER, None, REGISTER.as_bytes())
            .is_err()
    );
    store.set_enrolled_commune(Some(COMMUNE)).unwrap();
    let summary = store
        .import_register_file(OFFICER, None, REGISTER.as_bytes())
        .unwrap();
    assert_eq!(summary.imported, 4);
    assert!(
        store
            .import_register_file(OFFICER, Some("DB-THANHMINH"), REGISTER.as_bytes())
            .is_err()
    );
}

#[test]
fn a_returned_entry_carries_its_verdict_like_a_return_made_here() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let register = "\
external_id,procedure_code,applicant_name,status,received_at,due_date,original_reference,returned_at
SK-0101,1.001193,Lò Văn Pọm,returned,2025-03-14 09:30,2025-03-17,,2025-03-17 15:00
SK-0102,1.001193,Lò Thị Xuân,returned,2025-04-01 08:00,2025-04-04,,2025-04-07 10:00
SK-0103,1.001193,Quàng Văn Ún,returned,2025-05-05 08:00,2025-05-08,,
";
    let summary = store
        .import_register_file(OFFICER, Some(COMMUNE), register.as_bytes())
        .unwrap();
    assert_eq!(summary.imported, 3, "{:?}", summary.errors);
    let mut app = |key: &str| {
        let id = store.imported_record(COMMUNE, key).unwrap().unwrap();
        store.get_application(id).unwrap()
    };
    // Returned on its due date: on time; three days after it: late; no return time: no verdict.
    let on_time = app("SK-0101");
    assert_eq!(on_time.returned_at, Some(1_742_198_400_000));
    assert_eq!(on_time.returned_on_time, Some(true));
    let late = app("SK-0102");
    // 2025-04-07 10:00 in Vietnam.
    assert_eq!(late.returned_at, Some(1_743_994_800_000));
    assert_eq!(late.returned_on_time, Some(false));
    let unknown = app("SK-0103");
    assert_eq!(
        (unknown.returned_at, unknown.returned_on_time),
        (None, None)
    );
    // The verdict lists find them with the returns made on a tablet.
    let listed = |verdict: bool| -> Vec<_> {
        store
            .returned_by_verdict(verdict, 10, 0)
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect()
    };
    assert_eq!(listed(true), [on_time.id]);
    assert_eq!(listed(false), [late.id]);
}
