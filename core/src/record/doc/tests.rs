use super::*;
use crate::catalogue::CivilDate;
use crate::record::{Applicant, Author, Status};

fn sample(device: DeviceId) -> Application {
    Application {
        id: RecordId::new(),
        dossier_number: None,
        commune_code: "DB-MUONGPHANG".into(),
        procedure_code: "1.001193".into(),
        applicant: Applicant {
            name: "Nguyễn Thị Hương".into(),
            id_number: "011190001234".into(),
            phone: "0912345678".into(),
            address: "Tổ 3".into(),
            village: "Bản Phăng".into(),
        },
        received_at: 1_795_377_600_000,
        due_at: CivilDate::from_ymd(2026, 11, 26).unwrap(),
        documents: vec![],
        fees: vec![],
        status: Status::Received,
        assignee: None,
        notes: "Hồ sơ đủ.".into(),
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

fn fork_to(doc: &mut RecordDoc, device: DeviceId) -> RecordDoc {
    let bytes = doc.save();
    RecordDoc::load(doc.id(), doc.kind(), &bytes, device).unwrap()
}

fn merge(into: &mut RecordDoc, from: &mut RecordDoc) {
    let changes: Vec<Vec<u8>> = from
        .changes_since(&[])
        .into_iter()
        .map(|mut c| c.bytes().into_owned())
        .collect();
    into.apply_changes(&changes, Source::Untrusted).unwrap();
}

#[test]
fn concurrent_notes_merge_character_by_character() {
    let (a_dev, b_dev) = (DeviceId::new(), DeviceId::new());
    let app = sample(a_dev);
    let mut a = RecordDoc::create(&Record::Application(app.clone()), a_dev, "lan", 1).unwrap();
    let mut b = fork_to(&mut a, b_dev);

    let mut on_a = a.application().unwrap();
    on_a.notes = "Hồ sơ đủ. Đã thu phí.".into();
    a.edit(&app, &on_a, "lan", 2).unwrap();
    let mut on_b = b.application().unwrap();
    on_b.notes = "Gọi lại: Hồ sơ đủ.".into();
    b.edit(&app, &on_b, "minh", 3).unwrap();

    merge(&mut a, &mut b);
    merge(&mut b, &mut a);
    let merged = a.application().unwrap();
    assert_eq!(merged.notes, "Gọi lại: Hồ sơ đủ. Đã thu phí.");
    assert_eq!(merged, b.application().unwrap());
    assert!(a.conflicts().is_empty());
}

#[test]
fn concurrent_status_is_a_conflict_until_resolved() {
    let (a_dev, b_dev) = (DeviceId::new(), DeviceId::new());
    let app = sample(a_dev);
    let mut a = RecordDoc::create(&Record::Application(app.clone()), a_dev, "lan", 1).unwrap();
    let mut b = fork_to(&mut a, b_dev);

    let mut on_a = app.clone();
    on_a.status = Status::InProgress;
    on_a.assignee = Some("lan".into());
    a.edit(&app, &on_a, "lan", 2).unwrap();
    let mut on_b = app.clone();
    on_b.status = Status::Rejected;
    b.edit(&app, &on_b, "minh", 3).unwrap();

    merge(&mut a, &mut b);
    let conflicts = a.conflicts();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].field, "status");
    let mut values: Vec<_> = conflicts[0]
        .values
        .iter()
        .map(|c| (c.value.clone(), c.officer.clone().unwrap()))
        .collect();
    values.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(
        values,
        vec![
            (ConflictValue::Str("in_progress".into()), "lan".into()),
            (ConflictValue::Str("rejected".into()), "minh".into()),
        ]
    );
    // The winner shown by reads is the first candidate.
    let shown = a.application().unwrap().status.as_str().to_owned();
    assert_eq!(conflicts[0].values[0].value, ConflictValue::Str(shown));

    // A value that is not a status is refused and changes nothing.
    let err = a
        .resolve("status", &ConflictValue::Str("done".into()), "lan", 4)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert_eq!(a.conflicts().len(), 1);

    a.resolve(
        "status",
        &ConflictValue::Str("in_progress".into()),
        "lan",
        5,
    )
    .unwrap();
    assert!(a.conflicts().is_empty());
    assert_eq!(a.application().unwrap().status, Status::InProgress);
    // The resolution travels to the other replica and settles it there too.
    merge(&mut b, &mut a);
    assert!(b.conflicts().is_empty());
    assert_eq!(b.application().unwrap().status, Status::InProgress);
}

#[test]
fn resolving_a_field_without_conflict_is_refused() {
    let dev = DeviceId::new();
    let mut a = RecordDoc::create(&Record::Application(sample(dev)), dev, "lan", 1).unwrap();
    assert!(matches!(
        a.resolve("status", &ConflictValue::Str("ready".into()), "lan", 2),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        a.resolve("nope[x", &ConflictValue::Null, "lan", 2),
        Err(Error::InvalidInput { .. })
    ));
}

#[test]
fn nested_field_conflicts_are_found() {
    let (a_dev, b_dev) = (DeviceId::new(), DeviceId::new());
    let app = sample(a_dev);
    let mut a = RecordDoc::create(&Record::Application(app.clone()), a_dev, "lan", 1).unwrap();
    let mut b = fork_to(&mut a, b_dev);
    let mut on_a = app.clone();
    on_a.applicant.phone = "0911111111".into();
    a.edit(&app, &on_a, "lan", 2).unwrap();
    let mut on_b = app.clone();
    on_b.applicant.phone = "0922222222".into();
    b.edit(&app, &on_b, "minh", 3).unwrap();
    merge(&mut a, &mut b);
    let fields: Vec<_> = a.conflicts().into_iter().map(|c| c.field).collect();
    assert_eq!(fields, vec!["applicant.phone".to_owned()]);
    a.resolve(
        "applicant.phone",
        &ConflictValue::Str("0922222222".into()),
        "lan",
        4,
    )
    .unwrap();
    assert_eq!(a.application().unwrap().applicant.phone, "0922222222");
}

#[test]
fn history_names_device_officer_time_and_fields() {
    let dev = DeviceId::new();
    let app = sample(dev);
    let mut doc = RecordDoc::create(&Record::Application(app.clone()), dev, "lan", 1_000).unwrap();
    let mut next = app.clone();
    next.status = Status::InProgress;
    next.applicant.phone = "0900000000".into();
    assert!(doc.edit(&app, &next, "minh", 2_000).unwrap());
    // Writing the same values again is no change at all.
    assert!(!doc.edit(&next, &next, "minh", 3_000).unwrap());

    let history = doc.history();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].fields, vec!["created"]);
    assert_eq!(history[0].officer, "lan");
    assert_eq!(history[0].device, Some(dev.0));
    assert_eq!(history[0].device_time, 1_000);
    assert_eq!(history[1].officer, "minh");
    assert_eq!(history[1].device_time, 2_000);
    let mut fields = history[1].fields.clone();
    fields.sort();
    assert_eq!(fields, vec!["applicant.phone", "status"]);
}

#[test]
fn corrupt_bytes_are_a_typed_error() {
    let id = RecordId::new();
    let err = RecordDoc::load(
        id,
        RecordKind::Application,
        b"not automerge",
        DeviceId::new(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");

    let dev = DeviceId::new();
    let mut doc = RecordDoc::create(&Record::Application(sample(dev)), dev, "lan", 1).unwrap();
    let before = doc.application().unwrap();
    let err = doc
        .apply_changes(&[vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3]], Source::Untrusted)
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert_eq!(doc.application().unwrap(), before);
}

#[test]
fn a_citizen_request_is_not_an_application() {
    let dev = DeviceId::new();
    let mut doc = RecordDoc::create(&Record::Application(sample(dev)), dev, "lan", 1).unwrap();
    let bytes = doc.save();
    // Loading an application's bytes as a citizen request fails to hydrate: corrupt for that kind.
    let err = RecordDoc::load(doc.id(), RecordKind::CitizenRequest, &bytes, dev).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(matches!(
        doc.citizen_request(),
        Err(Error::WrongKind { .. })
    ));
}

#[test]
fn the_cached_reader_reads_what_the_document_holds() {
    use crate::record::{Fee, ReceivedDocument};
    let (a_dev, b_dev) = (DeviceId::new(), DeviceId::new());
    let mut app = sample(a_dev);
    let doc = |name: &str, copies| ReceivedDocument {
        name: name.into(),
        copies,
        original: false,
    };
    app.documents = vec![doc("Tờ khai", 1), doc("CCCD", 2), doc("Giấy hẹn", 1)];
    app.fees = vec![Fee {
        name: "Lệ phí".into(),
        amount_vnd: 50_000,
        paid: false,
    }];
    let mut a = RecordDoc::create(&Record::Application(app.clone()), a_dev, "lan", 1).unwrap();
    let mut b = fork_to(&mut a, b_dev);
    // Concurrent edits of a scalar, a nested field and a list element; a list element removed
    // on one side and one inserted on the other; a field cleared.
    let mut on_a = app.clone();
    on_a.status = Status::InProgress;
    on_a.applicant.phone = "0911111111".into();
    on_a.documents.remove(1);
    on_a.fees[0].paid = true;
    on_a.assignee = Some("lan".into());
    a.edit(&app, &on_a, "lan", 2).unwrap();
    let mut on_b = app.clone();
    on_b.status = Status::Rejected;
    on_b.applicant.phone = "0922222222".into();
    on_b.documents.insert(0, doc("Ảnh 4x6", 2));
    on_b.fees[0].amount_vnd = 70_000;
    b.edit(&app, &on_b, "minh", 3).unwrap();
    merge(&mut a, &mut b);
    merge(&mut b, &mut a);
    assert!(!a.conflicts().is_empty());

    for replica in [&a, &b] {
        let plain: Application = hydrate(&replica.doc).unwrap();
        let cached: Application =
            hydrate(&super::super::read::MapCached::new(&replica.doc)).unwrap();
        assert_eq!(cached, plain);
        assert_eq!(replica.application().unwrap(), plain);
    }
    let merged = a.application().unwrap();
    assert_eq!(merged.documents.len(), 3, "{:?}", merged.documents);
    assert!(merged.fees[0].paid);
    assert_eq!(merged.fees[0].amount_vnd, 70_000);
    assert_eq!(merged.assignee.as_deref(), Some("lan"));

    // A citizen request reads the same both ways too.
    let request = CitizenRequest {
        id: RecordId::new(),
        commune_code: "DB-MUONGPHANG".into(),
        category: "infrastructure".into(),
        village: "Bản Phăng".into(),
        description: "Đường vào bản bị sạt lở.".into(),
        reporter_name: "Lò Văn Pọm".into(),
        reporter_contact: "0912000111".into(),
        received_at: 1_795_377_600_000,
        status: crate::record::RequestStatus::Received,
        assignee: None,
        notes: "Đã ghi nhận.".into(),
        created_by: Author {
            device: a_dev.0,
            officer: "lan".into(),
        },
        attachments: Vec::new(),
    };
    let request = RecordDoc::create(&Record::CitizenRequest(request), a_dev, "lan", 4).unwrap();
    let plain: CitizenRequest = hydrate(&request.doc).unwrap();
    let cached: CitizenRequest =
        hydrate(&super::super::read::MapCached::new(&request.doc)).unwrap();
    assert_eq!(cached, plain);
}
