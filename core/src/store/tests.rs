use super::*;
use crate::catalogue::{Procedure, ProcessingTime};
use crate::clock::ManualClock;
use crate::record::Applicant;

const OFFICER: &str = "lan.nguyen";
// Monday 2026-11-23 09:00 in Vietnam.
const MONDAY_9AM: i64 = 1_795_399_200_000 - 7 * 3_600_000 + 9 * 3_600_000 - 2 * 3_600_000;

fn catalogue() -> Vec<Procedure> {
    vec![
        Procedure {
            withdrawal_allowed: true,
            ..Procedure::new(
                "1.001193",
                "Đăng ký khai sinh",
                ProcessingTime::WorkingDays(3),
            )
        },
        Procedure {
            withdrawal_allowed: false,
            ..Procedure::new(
                "2.000908",
                "Chứng thực bản sao",
                ProcessingTime::WorkingDays(0),
            )
        },
    ]
}

fn open(dir: &tempfile::TempDir) -> DeviceStore {
    open_config(StoreConfig::new(dir.path().join("store.db")))
}

fn open_config(config: StoreConfig) -> DeviceStore {
    let clock = ManualClock::new(MONDAY_9AM);
    let mut store = DeviceStore::open_with_clock(config, Arc::new(clock)).unwrap();
    store.import_catalogue(&catalogue()).unwrap();
    store
}

fn new_app(name: &str, village: &str) -> NewApplication {
    NewApplication {
        commune_code: "DB-MUONGPHANG".into(),
        procedure_code: "1.001193".into(),
        applicant: Applicant {
            name: name.into(),
            id_number: "011190001234".into(),
            phone: "0912345678".into(),
            address: "Tổ 3".into(),
            village: village.into(),
        },
        notes: "Đã nhận tờ khai.".into(),
        ..Default::default()
    }
}

fn count(store: &DeviceStore, table: &str) -> i64 {
    store
        .connection()
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

#[test]
fn create_get_and_due_date_from_the_catalogue() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    assert_eq!(
        CivilDate::from_unix_millis(MONDAY_9AM).unwrap().to_string(),
        "2026-11-23"
    );
    let app = store
        .create_application(OFFICER, new_app("Nguyễn Thị Hương", "Bản Phăng"))
        .unwrap();
    assert_eq!(app.status, Status::Received);
    // Monday + 3 working days = Thursday.
    assert_eq!(app.due_at.to_string(), "2026-11-26");
    assert_eq!(app.created_by.device, store.device_id().0);
    assert_eq!(store.get_application(app.id).unwrap(), app);
    assert_eq!(count(&store, "outbox"), 1);

    let err = store
        .create_application(
            OFFICER,
            NewApplication {
                procedure_code: "9.999".into(),
                ..new_app("A", "B")
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::UnknownProcedure(_)), "{err}");
}

#[test]
fn data_survives_reopen_and_device_id_is_stable() {
    let dir = tempfile::tempdir().unwrap();
    let (id, device) = {
        let mut store = open(&dir);
        let app = store
            .create_application(OFFICER, new_app("Lò Văn Pọm", "Bản Che Căn"))
            .unwrap();
        for i in 0..10 {
            store
                .update_application(app.id, OFFICER, |a| a.notes.push_str(&format!(" #{i}")))
                .unwrap();
        }
        (app.id, store.device_id())
    };
    let mut store = open(&dir);
    assert_eq!(store.device_id(), device);
    let app = store.get_application(id).unwrap();
    assert!(app.notes.ends_with("#8 #9"), "{}", app.notes);
    assert_eq!(store.history(id).unwrap().len(), 11);
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

#[test]
fn compaction_folds_chunks_into_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let app = store
        .create_application(OFFICER, new_app("Quàng Thị Dung", "Bản Noong"))
        .unwrap();
    let chunks = |store: &DeviceStore| count(store, "document_chunks");
    store
        .update_application(app.id, OFFICER, |a| a.notes.push('1'))
        .unwrap();
    store
        .update_application(app.id, OFFICER, |a| a.notes.push('2'))
        .unwrap();
    assert_eq!(chunks(&store), 2);
    store
        .update_application(app.id, OFFICER, |a| a.notes.push('3'))
        .unwrap();
    // compact_after = 4: the fourth pending chunk is folded into the snapshot instead.
    store
        .update_application(app.id, OFFICER, |a| a.notes.push('4'))
        .unwrap();
    assert_eq!(chunks(&store), 0);
    drop(store);
    let mut store = open(&dir);
    assert!(
        store
            .get_application(app.id)
            .unwrap()
            .notes
            .ends_with("1234")
    );
}

#[test]
fn status_workflow_is_enforced_and_a_refusal_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let app = store
        .create_application(OFFICER, new_app("Lường Văn Sơn", "Bản Mển"))
        .unwrap();
    let err = store
        .transition(app.id, OFFICER, Status::Returned)
        .unwrap_err();
    assert!(matches!(err, Error::IllegalTransition { .. }), "{err}");
    assert_eq!(store.get_application(app.id).unwrap(), app);
    assert_eq!(store.history(app.id).unwrap().len(), 1);

    for to in [
        Status::InProgress,
        Status::SupplementRequested,
        Status::InProgress,
        Status::Ready,
        Status::Returned,
    ] {
        store.transition(app.id, OFFICER, to).unwrap();
    }
    assert_eq!(
        store.get_application(app.id).unwrap().status,
        Status::Returned
    );

    // Procedure 2.000908 cannot be withdrawn.
    let other = store
        .create_application(
            OFFICER,
            NewApplication {
                procedure_code: "2.000908".into(),
                ..new_app("Vì Văn Thắng", "Bản Xôm")
            },
        )
        .unwrap();
    assert!(matches!(
        store.transition(other.id, OFFICER, Status::Withdrawn),
        Err(Error::IllegalTransition { .. })
    ));
}

#[test]
fn invalid_values_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let app = store
        .create_application(OFFICER, new_app("Cà Thị Lả", "Bản Pa Pốm"))
        .unwrap();
    type Edit = Box<dyn Fn(&mut Application)>;
    let cases: Vec<Edit> = vec![
        Box::new(|a| a.applicant.phone = "12ab".into()),
        Box::new(|a| a.applicant.id_number = "123".into()),
        Box::new(|a| a.applicant.name = "  ".into()),
        Box::new(|a| a.commune_code = "OTHER".into()),
        Box::new(|a| a.received_at += 1),
        Box::new(|a| a.due_at = a.due_at.plus_days(30)),
        Box::new(|a| a.notes = "x\u{0}y".into()),
        Box::new(|a| a.procedure_code = "nope".into()),
    ];
    for edit in cases {
        let err = store
            .update_application(app.id, OFFICER, |a| edit(a))
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { .. } | Error::UnknownProcedure(_)),
            "{err}"
        );
    }
    assert_eq!(store.get_application(app.id).unwrap(), app);
    assert_eq!(store.history(app.id).unwrap().len(), 1);
    assert!(matches!(
        store.create_application("", new_app("A", "B")),
        Err(Error::InvalidInput { .. })
    ));
    assert_eq!(count(&store, "documents"), 1);
}

#[test]
fn unknown_ids_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let id = RecordId::new();
    assert!(matches!(store.get(id), Err(Error::NotFound(x)) if x == id));
    assert!(matches!(
        store.transition(id, OFFICER, Status::InProgress),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(store.history(id), Err(Error::NotFound(_))));
    assert!(!store.contains(id).unwrap());
}

#[test]
fn corrupt_document_bytes_are_a_typed_error_and_other_records_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let (bad, good) = {
        let mut store = open(&dir);
        let bad = store
            .create_application(OFFICER, new_app("Lò Thị Xuân", "Bản Ten"))
            .unwrap();
        let good = store
            .create_application(OFFICER, new_app("Lò Văn Hặc", "Bản Ten"))
            .unwrap();
        store
            .connection()
            .execute(
                "UPDATE documents SET snapshot = x'856f4a83deadbeef' WHERE id = ?1",
                [bad.id.as_bytes().as_slice()],
            )
            .unwrap();
        (bad.id, good.id)
    };
    let mut store = open(&dir);
    assert!(matches!(store.get(bad), Err(Error::Corrupt { .. })));
    assert!(matches!(
        store.transition(bad, OFFICER, Status::InProgress),
        Err(Error::Corrupt { .. })
    ));
    store.transition(good, OFFICER, Status::InProgress).unwrap();
}

#[test]
fn a_full_disk_is_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path().join("store.db"));
    config.max_size_bytes = Some(300 * 1024);
    let mut store = open_config(config);
    let first = store
        .create_application(OFFICER, new_app("Hoàng Văn Nam", "Bản Phủ"))
        .unwrap();
    let mut created = 1;
    let full = loop {
        let mut new = new_app("Hoàng Thị Mai", "Bản Phủ");
        new.notes = "Ghi chú dài ".repeat(200);
        match store.create_application(OFFICER, new) {
            Ok(_) => created += 1,
            Err(err) => break err,
        }
        assert!(created < 10_000, "the size limit never triggered");
    };
    assert!(matches!(full, Error::StorageFull), "{full}");
    assert_eq!(count(&store, "documents"), created);
    assert_eq!(count(&store, "applications"), created);

    // An edit that does not fit is refused and the record reads as before, from cache and disk.
    let before = store.get_application(first.id).unwrap();
    let err = store
        .update_application(first.id, OFFICER, |a| {
            a.notes = (0..6000).map(|i| format!("từ{i} ")).collect();
        })
        .unwrap_err();
    assert!(matches!(err, Error::StorageFull), "{err}");
    assert_eq!(store.get_application(first.id).unwrap(), before);
    assert_eq!(store.history(first.id).unwrap().len(), 1);
    assert_eq!(store.integrity_check().unwrap(), "ok");
    // Once space returns, edits go through again.
    drop(store);
    let mut store = open_config(StoreConfig::new(dir.path().join("store.db")));
    store
        .transition(first.id, OFFICER, Status::InProgress)
        .unwrap();
    assert_eq!(count(&store, "documents"), created);
}

#[test]
fn encrypted_store_needs_its_key_and_holds_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.db");
    let key = EncryptionKey::new([7; 32]);
    {
        let mut store = open_config(StoreConfig::new(&path).encrypted(key.clone()));
        for _ in 0..20 {
            store
                .create_application(OFFICER, new_app("Nguyễn Thị Hương", "Bản Mường Phăng"))
                .unwrap();
        }
    }
    let raw = std::fs::read(&path).unwrap();
    let needles: [&[u8]; 4] = [
        b"SQLite format 3",
        "Nguyễn".as_bytes(),
        b"nguyen thi huong",
        b"0912345678",
    ];
    for needle in needles {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle),
            "plaintext {:?} in the file",
            String::from_utf8_lossy(needle)
        );
    }
    let wrong = DeviceStore::open(StoreConfig::new(&path).encrypted(EncryptionKey::new([8; 32])))
        .unwrap_err();
    assert!(matches!(wrong, Error::WrongKey), "{wrong}");
    let none = DeviceStore::open(StoreConfig::new(&path)).unwrap_err();
    assert!(matches!(none, Error::WrongKey), "{none}");
    let store = DeviceStore::open(StoreConfig::new(&path).encrypted(key)).unwrap();
    assert_eq!(store.search("nguyen thi huong", 50).unwrap().len(), 20);
    assert!(EncryptionKey::from_slice(&[1; 16]).is_err());
}

#[test]
fn queries_filter_sort_and_paginate_from_projections() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(MONDAY_9AM);
    let mut store = DeviceStore::open_with_clock(
        StoreConfig::new(dir.path().join("q.db")),
        Arc::new(clock.clone()),
    )
    .unwrap();
    store.import_catalogue(&catalogue()).unwrap();
    let mut ids = Vec::new();
    for i in 0..30 {
        clock.advance(60_000);
        let village = if i % 3 == 0 {
            "Bản Phăng"
        } else {
            "Bản Ten"
        };
        let app = store
            .create_application(OFFICER, new_app(&format!("Người {i}"), village))
            .unwrap();
        ids.push(app.id);
    }
    for id in &ids[..5] {
        store.transition(*id, OFFICER, Status::InProgress).unwrap();
    }
    store
        .update_application(ids[7], "minh", |a| a.assignee = Some("minh".into()))
        .unwrap();

    let page = store
        .query_applications(&ApplicationQuery {
            status: Some(Status::Received),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.total, 25);
    assert_eq!(page.items.len(), 10);
    assert_eq!(page.next_offset, Some(10));
    assert_eq!(page.items[0].id, ids[5]);
    let last = store
        .query_applications(&ApplicationQuery {
            status: Some(Status::Received),
            limit: 10,
            offset: 20,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(last.items.len(), 5);
    assert_eq!(last.next_offset, None);

    let newest = store
        .query_applications(&ApplicationQuery {
            descending: true,
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(newest.items[0].id, ids[29]);
    let village = store
        .query_applications(&ApplicationQuery {
            village: Some("Bản Phăng".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(village.total, 10);
    let mine = store
        .query_applications(&ApplicationQuery {
            assignee: Some("minh".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        mine.items.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![ids[7]]
    );
    assert!(
        store
            .query_applications(&ApplicationQuery {
                limit: 501,
                ..Default::default()
            })
            .is_err()
    );

    let counts = store.counts_by_status().unwrap();
    let get = |s: Status| counts.iter().find(|c| c.status == s).unwrap().count;
    assert_eq!(
        (
            get(Status::Received),
            get(Status::InProgress),
            get(Status::Ready)
        ),
        (25, 5, 0)
    );
}

#[test]
fn overdue_and_due_soon_follow_working_days_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    // Received Monday 2026-11-23, 3 working days: due Thursday 2026-11-26.
    let a = store
        .create_application(OFFICER, new_app("A Páo", "Bản Phăng"))
        .unwrap();
    let b = store
        .create_application(OFFICER, new_app("Giàng A Chu", "Bản Phăng"))
        .unwrap();
    store.transition(b.id, OFFICER, Status::InProgress).unwrap();
    store.transition(b.id, OFFICER, Status::Ready).unwrap();
    let day = |s: &str| s.parse::<CivilDate>().unwrap();

    assert_eq!(store.overdue(day("2026-11-26"), 50, 0).unwrap().total, 0);
    let overdue = store.overdue(day("2026-11-27"), 50, 0).unwrap();
    // b is ready: the statutory clock stopped.
    assert_eq!(
        overdue.items.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![a.id]
    );
    // Friday 2026-11-20 + 3 working days reaches Wednesday: not yet due soon, Thursday is.
    assert_eq!(
        store.due_soon(day("2026-11-20"), 3, 50, 0).unwrap().total,
        0
    );
    assert_eq!(
        store.due_soon(day("2026-11-20"), 4, 50, 0).unwrap().total,
        1
    );
    // A holiday on Wednesday moves the open dossier's effective due date to Friday (the store
    // recomputes open dossiers when the calendar changes) and the window by one working day.
    store.set_holidays(&[day("2026-11-25")]).unwrap();
    assert_eq!(
        store.due_soon(day("2026-11-20"), 3, 50, 0).unwrap().total,
        0
    );
    assert_eq!(
        store.due_soon(day("2026-11-20"), 4, 50, 0).unwrap().total,
        1
    );
    assert_eq!(store.overdue(day("2026-11-27"), 50, 0).unwrap().total, 0);
}

#[test]
fn search_ignores_case_and_vietnamese_diacritics() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let huong = store
        .create_application(OFFICER, new_app("Nguyễn Thị Hương", "Bản Phăng"))
        .unwrap();
    store
        .create_application(OFFICER, new_app("Nguyễn Văn Hùng", "Bản Phăng"))
        .unwrap();
    let duc = store
        .create_application(OFFICER, new_app("Đặng Văn Đức", "Bản Ten"))
        .unwrap();
    let req = store
        .create_citizen_request(
            OFFICER,
            NewCitizenRequest {
                commune_code: "DB-MUONGPHANG".into(),
                category: "road".into(),
                village: "Bản Ten".into(),
                description: "Đường vào bản bị sạt lở".into(),
                reporter_name: "Lò Văn Đông".into(),
                ..Default::default()
            },
        )
        .unwrap();

    for q in [
        "nguyen thi huong",
        "Nguyen Thi Huong",
        "NGUYỄN THỊ HƯƠNG",
        "huong nguyen",
        "nguyen thi huo",
    ] {
        let hits: Vec<_> = store
            .search(q, 10)
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(hits, vec![huong.id], "query {q:?}");
    }
    assert_eq!(store.search("nguyen", 10).unwrap().len(), 2);
    let hits = store.search("dang van duc", 10).unwrap();
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![duc.id]);
    assert_eq!(hits[0].title, "Đặng Văn Đức");
    let hits = store.search("sat lo", 10).unwrap();
    assert_eq!(hits[0].id, req.id);
    assert_eq!(hits[0].kind, RecordKind::CitizenRequest);
    assert!(store.search("\" OR *", 10).unwrap().is_empty());

    // Notes are indexed, and edits re-index.
    store
        .update_application(duc.id, OFFICER, |a| {
            a.notes = "Cần bổ sung giấy chứng nhận".into()
        })
        .unwrap();
    assert_eq!(store.search("giay chung nhan", 10).unwrap()[0].id, duc.id);
    assert!(store.search("da nhan to khai dang", 10).unwrap().is_empty());
}

#[test]
fn the_cache_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path().join("cache.db"));
    config.cache_capacity = NonZeroUsize::new(8).unwrap();
    let mut store = open_config(config);
    let ids: Vec<_> = (0..40)
        .map(|i| {
            store
                .create_application(OFFICER, new_app(&format!("Người {i}"), "Bản"))
                .unwrap()
                .id
        })
        .collect();
    for id in &ids {
        store.get_application(*id).unwrap();
    }
    assert_eq!(store.cached_documents(), 8);
}

#[test]
fn citizen_requests_follow_their_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let req = store
        .create_citizen_request(
            OFFICER,
            NewCitizenRequest {
                commune_code: "DB-MUONGPHANG".into(),
                category: "water".into(),
                village: "Bản Ten".into(),
                description: "Xin hỗ trợ nước sạch".into(),
                reporter_name: "Lò Thị Ngọc".into(),
                reporter_contact: "0987654321".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(matches!(
        store.update_citizen_request(req.id, OFFICER, |r| r.status = RequestStatus::Closed),
        Err(Error::IllegalTransition { .. })
    ));
    store
        .update_citizen_request(req.id, OFFICER, |r| r.status = RequestStatus::InProgress)
        .unwrap();
    assert!(matches!(
        store.get_application(req.id),
        Err(Error::WrongKind { .. })
    ));
    assert!(matches!(
        store.create_citizen_request(OFFICER, NewCitizenRequest::default()),
        Err(Error::InvalidInput { .. })
    ));
}

#[test]
fn a_frozen_v1_store_upgrades_to_the_fresh_schema() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("v1.db");
    {
        let conn = Connection::open(&old).unwrap();
        conn.execute_batch(include_str!("../../tests/fixtures/schema_v1.sql"))
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute("INSERT INTO holidays(day) VALUES ('2026-09-02')", [])
            .unwrap();
    }
    let upgraded = DeviceStore::open(StoreConfig::new(&old)).unwrap();
    let fresh = DeviceStore::open(StoreConfig::new(dir.path().join("fresh.db"))).unwrap();
    let schema = |store: &DeviceStore| -> Vec<(String, String)> {
        let mut stmt = store
            .connection()
            .prepare("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    assert_eq!(schema(&upgraded), schema(&fresh));
    let version = |store: &DeviceStore| -> i64 {
        store
            .connection()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(version(&upgraded), SCHEMA_VERSION);
    assert_eq!(upgraded.calendar().holidays().count(), 1);

    // A file from a newer build is refused, not damaged.
    drop(upgraded);
    Connection::open(&old)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    assert!(matches!(
        DeviceStore::open(StoreConfig::new(&old)),
        Err(Error::SchemaTooNew { found: 99, .. })
    ));
}

#[test]
fn the_journal_is_wal() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mode: String = store
        .connection()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn concurrent_edits_from_two_stores_surface_and_resolve_conflicts() {
    // Two tablets: b receives a's document bytes, both edit, then they exchange changes.
    let dir = tempfile::tempdir().unwrap();
    let mut a = open_config(StoreConfig::new(dir.path().join("a.db")));
    let app = a
        .create_application(OFFICER, new_app("Nguyễn Thị Hương", "Bản Phăng"))
        .unwrap();
    let mut doc_a = load_document(
        &a.conn,
        &mut DocCodec::new().unwrap(),
        app.id,
        a.device_id(),
    )
    .unwrap()
    .doc;
    let mut doc_b = RecordDoc::load(
        app.id,
        RecordKind::Application,
        &doc_a.save(),
        DeviceId::new(),
    )
    .unwrap();
    let mut on_b = app.clone();
    on_b.status = Status::Rejected;
    doc_b.edit(&app, &on_b, "minh", 5).unwrap();
    a.transition(app.id, OFFICER, Status::InProgress).unwrap();
    // Bring b's change into a's store the way sync will.
    let changes: Vec<Vec<u8>> = doc_b
        .changes_since(&doc_a.heads())
        .into_iter()
        .map(|mut c| c.bytes().into_owned())
        .collect();
    a.apply_remote_changes(app.id, RecordKind::Application, &changes)
        .unwrap();
    // Applying the same changes again is a no-op.
    a.apply_remote_changes(app.id, RecordKind::Application, &changes)
        .unwrap();

    let conflicts = a.conflicts(app.id).unwrap();
    assert_eq!(
        conflicts
            .iter()
            .map(|c| c.field.as_str())
            .collect::<Vec<_>>(),
        vec!["status"]
    );
    let flagged = a
        .query_applications(&ApplicationQuery {
            with_conflicts: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(flagged.total, 1);
    a.resolve(
        app.id,
        OFFICER,
        "status",
        &ConflictValue::Str("in_progress".into()),
    )
    .unwrap();
    assert!(a.conflicts(app.id).unwrap().is_empty());
    let flagged = a
        .query_applications(&ApplicationQuery {
            with_conflicts: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(flagged.total, 0);
    let history = a.history(app.id).unwrap();
    assert_eq!(history.last().unwrap().fields, vec!["status"]);
    assert_eq!(history.len(), 4);
}

#[test]
fn remote_changes_create_records_and_bad_ones_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open_config(StoreConfig::new(dir.path().join("a.db")));
    let mut b = open_config(StoreConfig::new(dir.path().join("b.db")));
    let app = a
        .create_application(OFFICER, new_app("Tòng Văn Sinh", "Bản Ten"))
        .unwrap();
    a.transition(app.id, OFFICER, Status::InProgress).unwrap();
    let mut doc = load_document(
        &a.conn,
        &mut DocCodec::new().unwrap(),
        app.id,
        a.device_id(),
    )
    .unwrap()
    .doc;
    let changes: Vec<Vec<u8>> = doc
        .changes_since(&[])
        .into_iter()
        .map(|mut c| c.bytes().into_owned())
        .collect();
    assert_eq!(changes.len(), 2);

    // The second change alone lacks its dependency: refused, nothing stored.
    let err = b
        .apply_remote_changes(app.id, RecordKind::Application, &changes[1..])
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(!b.contains(app.id).unwrap());
    // Garbage is refused.
    let err = b
        .apply_remote_changes(app.id, RecordKind::Application, &[b"junk".to_vec()])
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    // The wrong kind is refused.
    assert!(
        b.apply_remote_changes(app.id, RecordKind::CitizenRequest, &changes)
            .is_err()
    );
    assert!(!b.contains(app.id).unwrap());

    b.apply_remote_changes(app.id, RecordKind::Application, &changes)
        .unwrap();
    assert_eq!(
        b.get_application(app.id).unwrap().status,
        Status::InProgress
    );
    assert_eq!(b.search("tong van sinh", 10).unwrap().len(), 1);
    // Remote changes are not local edits: nothing to push back.
    assert_eq!(count(&b, "outbox"), 0);
    // History keeps the author's device and officer.
    let history = b.history(app.id).unwrap();
    assert_eq!(history[0].device, Some(a.device_id().0));
    // Changes for a different record id are refused.
    let other = RecordId::new();
    assert!(
        b.apply_remote_changes(other, RecordKind::Application, &changes)
            .is_err()
    );
}

#[test]
fn outbox_batches_acknowledgements_and_pulls_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open_config(StoreConfig::new(dir.path().join("a.db")));
    let mut b = open_config(StoreConfig::new(dir.path().join("b.db")));
    let ids: Vec<_> = (0..3)
        .map(|i| {
            a.create_application(OFFICER, new_app(&format!("Người {i}"), "Bản"))
                .unwrap()
                .id
        })
        .collect();
    assert_eq!(a.pending_count().unwrap(), 3);
    // A tiny byte budget still yields one document per batch.
    assert_eq!(a.pending_push(1).unwrap().len(), 1);
    let batch = a.pending_push(1 << 20).unwrap();
    assert_eq!(batch.len(), 3);

    // An edit made while the batch is in flight keeps its document in the outbox.
    a.transition(ids[0], OFFICER, Status::InProgress).unwrap();
    a.acknowledge_push(&batch, MONDAY_9AM).unwrap();
    assert_eq!(a.pending_count().unwrap(), 1);
    let next = a.pending_push(1 << 20).unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, ids[0]);
    assert_eq!(
        next[0].changes.len(),
        1,
        "only the change after the acknowledged heads"
    );

    // The server lost the base: the whole history goes next time.
    a.forget_server_heads(&[ids[0]]).unwrap();
    assert_eq!(a.pending_push(1 << 20).unwrap()[0].changes.len(), 2);
    let all = a.pending_push(1 << 20).unwrap();
    a.acknowledge_push(&all, MONDAY_9AM).unwrap();
    assert_eq!(a.pending_count().unwrap(), 0);

    // b pulls everything, with one corrupt document in the batch.
    let mut pulled: Vec<PullDoc> = ids
        .iter()
        .enumerate()
        // The first goes without id, as a whole history may: the record holds it.
        .map(|(i, id)| PullDoc {
            id: (i > 0).then_some(*id),
            kind: RecordKind::Application,
            changes: a.changes_since(*id, &[]).unwrap(),
            received_at: 5,
        })
        .collect();
    pulled.push(PullDoc {
        id: Some(RecordId::new()),
        kind: RecordKind::Application,
        changes: vec![b"junk".to_vec()],
        received_at: 5,
    });
    let report = b.apply_pull(&pulled, 17).unwrap();
    assert_eq!(
        (report.created, report.updated, report.rejected.len()),
        (3, 0, 1)
    );
    assert_eq!(b.sync_cursor().unwrap(), 17);
    assert_eq!(
        b.get_application(ids[0]).unwrap().status,
        Status::InProgress
    );
    // Pulled records are not b's own edits and the server has them: nothing to push.
    assert_eq!(b.pending_count().unwrap(), 0);
    // Applying the same batch again changes nothing.
    let again = b.apply_pull(&pulled[..3], 17).unwrap();
    assert_eq!((again.created, again.updated), (0, 0));
    assert_eq!(b.history(ids[0]).unwrap().len(), 2);

    // An edit on b after the pull pushes only b's change.
    b.transition(ids[1], "minh", Status::InProgress).unwrap();
    let from_b = b.pending_push(1 << 20).unwrap();
    assert_eq!(from_b.len(), 1);
    assert_eq!(from_b[0].changes.len(), 1);
}

#[test]
fn a_pull_of_many_chunks_writes_every_document_once_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open_config(StoreConfig::new(dir.path().join("a.db")));
    let mut b = open_config(StoreConfig::new(dir.path().join("b.db")));
    // Enough documents for several build chunks; b already has every seventh one, at an older
    // state (the pull merges those), and one document late in the batch is corrupt.
    let total = 2 * super::sync_state::PULL_CHUNK + 37;
    let ids: Vec<_> = (0..total)
        .map(|i| {
            a.create_application(OFFICER, new_app(&format!("Người {i}"), "Bản"))
                .unwrap()
                .id
        })
        .collect();
    for id in ids.iter().step_by(7) {
        let changes = a.changes_since(*id, &[]).unwrap();
        b.apply_remote_changes(*id, RecordKind::Application, &changes)
            .unwrap();
        a.transition(*id, OFFICER, Status::InProgress).unwrap();
    }
    let mut pulled: Vec<PullDoc> = ids
        .iter()
        .map(|id| PullDoc {
            id: Some(*id),
            kind: RecordKind::Application,
            changes: a.changes_since(*id, &[]).unwrap(),
            received_at: 9,
        })
        .collect();
    let corrupt = RecordId::new();
    pulled.insert(
        total - 3,
        PullDoc {
            id: Some(corrupt),
            kind: RecordKind::Application,
            changes: vec![b"junk".to_vec()],
            received_at: 9,
        },
    );
    let known = ids.iter().step_by(7).count();
    let before = count(&b, "documents");

    // A storage failure in the middle (a full disk) rolls the whole batch back, cursor included.
    b.conn
        .execute_batch(&format!(
            "CREATE TEMP TRIGGER fail AFTER INSERT ON main.documents
             WHEN (SELECT count(*) FROM main.documents) > {}
             BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
            known + super::sync_state::PULL_CHUNK + 10
        ))
        .unwrap();
    assert!(b.apply_pull(&pulled, 40).is_err());
    assert_eq!(count(&b, "documents"), before);
    assert_eq!(count(&b, "applications"), before);
    assert_eq!(b.sync_cursor().unwrap(), 0);
    b.conn.execute_batch("DROP TRIGGER fail").unwrap();

    let report = b.apply_pull(&pulled, 40).unwrap();
    assert_eq!(
        (report.created, report.updated, report.rejected.len()),
        (total - known, known, 1)
    );
    assert_eq!(report.rejected[0].0, corrupt);
    assert_eq!(b.sync_cursor().unwrap(), 40);
    assert_eq!(count(&b, "documents"), i64::try_from(total).unwrap());
    for (i, id) in ids.iter().enumerate() {
        let app = b.get_application(*id).unwrap();
        assert_eq!(app.applicant.name, format!("Người {i}"));
        let expected = if i % 7 == 0 {
            Status::InProgress
        } else {
            Status::Received
        };
        assert_eq!(app.status, expected, "record {i}");
    }
    // Again: nothing new.
    let again = b.apply_pull(&pulled, 40).unwrap();
    assert_eq!((again.created, again.updated), (0, 0));
}

#[test]
fn pushed_changes_are_the_kept_edits_and_older_stores_fall_back_to_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open_config(StoreConfig::new(dir.path().join("a.db")));
    let id = a
        .create_application(OFFICER, new_app("Lò Thị Hoa", "Bản Mé"))
        .unwrap()
        .id;
    a.transition(id, OFFICER, Status::InProgress).unwrap();
    a.update_application(id, OFFICER, |app| app.notes.push_str(" Đã gọi điện."))
        .unwrap();
    // Three edits kept at edit time: exactly the document's history, in order, with its heads.
    let batch = a.pending_push(1 << 20).unwrap();
    assert_eq!(batch[0].changes, a.changes_since(id, &[]).unwrap());
    assert_eq!(batch[0].heads, a.heads(id).unwrap());
    assert_eq!(count(&a, "outbox_changes"), 3);
    a.acknowledge_push(&batch, MONDAY_9AM).unwrap();
    assert_eq!(count(&a, "outbox_changes"), 0);

    // A store written before the kept changes existed has outbox entries without them: the
    // push reads the document from the acknowledged heads instead.
    a.transition(id, OFFICER, Status::Ready).unwrap();
    a.conn.execute("DELETE FROM outbox_changes", []).unwrap();
    let acked = batch[0].heads.clone();
    let fallback = a.pending_push(1 << 20).unwrap();
    assert_eq!(fallback[0].changes, a.changes_since(id, &acked).unwrap());
    assert_eq!(fallback[0].changes.len(), 1);

    // Kept bytes that do not decode are a typed error, not a panic or a silent skip.
    a.transition(id, OFFICER, Status::Returned).unwrap();
    a.conn
        .execute("UPDATE outbox_changes SET change = x'28b52ffd0000'", [])
        .unwrap();
    assert!(matches!(
        a.pending_push(1 << 20),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn the_catalogue_arrives_as_versioned_reference_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = DeviceStore::open(StoreConfig::new(dir.path().join("c.db"))).unwrap();
    assert_eq!(store.catalogue_version().unwrap(), 0);
    let json = r#"{"procedures":[{"code":"1.001193","name":"Đăng ký khai sinh","processing_days":1}],"holidays":["2026-12-31"]}"#;
    store.apply_catalogue(3, json).unwrap();
    assert_eq!(store.catalogue_version().unwrap(), 3);
    assert!(store.procedure("1.001193").unwrap().withdrawal_allowed);
    assert!(
        !store
            .calendar()
            .is_working_day("2026-12-31".parse().unwrap())
    );
    assert!(matches!(
        store.apply_catalogue(4, "{"),
        Err(Error::InvalidInput { .. })
    ));
    assert_eq!(store.catalogue_version().unwrap(), 3);
}

#[test]
fn acknowledged_changes_free_their_space_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let plain = StoreConfig::new(dir.path().join("plain.db"));
    let encrypted =
        StoreConfig::new(dir.path().join("encrypted.db")).encrypted(EncryptionKey::new([9; 32]));
    for config in [plain, encrypted] {
        acknowledged_changes_free_their_space(config);
    }
}

fn acknowledged_changes_free_their_space(config: StoreConfig) {
    let mut store = open_config(config);
    let empty = store.used_bytes().unwrap();
    for i in 0..300 {
        let id = store
            .create_application(OFFICER, new_app(&format!("Người {i}"), "Bản"))
            .unwrap()
            .id;
        store.transition(id, OFFICER, Status::InProgress).unwrap();
    }
    let unsynced = store.used_bytes().unwrap();
    assert!(
        unsynced > empty,
        "{unsynced} bytes after 300 records, {empty} before"
    );
    // Whole pages: the pages not on the free list, times one SQLite page size.
    let pragma = |name: &str| -> u64 {
        store
            .connection()
            .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    };
    let in_use = pragma("page_count") - pragma("freelist_count");
    assert_eq!(unsynced % in_use, 0, "{unsynced} bytes in {in_use} pages");
    let page_size = unsynced / in_use;
    assert!(
        page_size.is_power_of_two() && (512..=65_536).contains(&page_size),
        "page size {page_size}"
    );

    // The server acknowledges everything: the kept changes are deleted, their pages are free.
    for _ in 0..300 {
        let batch = store.pending_push(64 * 1024).unwrap();
        if batch.is_empty() {
            break;
        }
        store.acknowledge_push(&batch, MONDAY_9AM).unwrap();
    }
    assert_eq!(store.pending_count().unwrap(), 0);
    assert_eq!(count(&store, "outbox_changes"), 0);
    let synced = store.used_bytes().unwrap();
    assert!(
        synced < unsynced,
        "{synced} bytes in use after the acknowledgement, {unsynced} before"
    );
    // Every record is still there.
    assert_eq!(count(&store, "documents"), 300);
}

#[test]
fn a_restored_server_gets_back_every_own_change_and_the_feed_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open_config(StoreConfig::new(dir.path().join("a.db")));
    let mut b = open_config(StoreConfig::new(dir.path().join("b.db")));
    let ids: Vec<_> = (0..2)
        .map(|i| {
            a.create_application(OFFICER, new_app(&format!("Người {i}"), "Bản"))
                .unwrap()
                .id
        })
        .collect();
    let batch = a.pending_push(1 << 20).unwrap();
    a.acknowledge_push(&batch, MONDAY_9AM).unwrap();
    let pulled: Vec<PullDoc> = ids
        .iter()
        .map(|id| PullDoc {
            id: Some(*id),
            kind: RecordKind::Application,
            changes: a.changes_since(*id, &[]).unwrap(),
            received_at: 5,
        })
        .collect();
    b.apply_pull(&pulled, 40).unwrap();
    b.update_application(ids[0], OFFICER, |app| app.notes.push_str(" b"))
        .unwrap();
    let batch = b.pending_push(1 << 20).unwrap();
    b.acknowledge_push(&batch, MONDAY_9AM).unwrap();
    assert_eq!(b.pending_count().unwrap(), 0);
    b.set_server_store_epoch("e1").unwrap();

    b.server_restored("e2").unwrap();
    assert_eq!(b.sync_cursor().unwrap(), 0, "the feed is read again");
    assert_eq!(b.server_store_epochs().unwrap(), vec!["e2", "e1"]);
    assert_eq!(b.pending_count().unwrap(), 2);
    // Only b's own change goes (the server takes a change only from its author), with the id;
    // the record that holds none of b's changes leaves the outbox unsent.
    let again = b.pending_push(1 << 20).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, ids[0]);
    assert_eq!(again[0].changes.len(), 1);
    assert!(!again[0].whole);
    assert_eq!(b.pending_count().unwrap(), 1);

    // The author sends its whole history again.
    a.server_restored("e2").unwrap();
    let again = a.pending_push(1 << 20).unwrap();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|doc| doc.whole && doc.changes.len() == 1));
}
