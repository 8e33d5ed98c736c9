//! Conformance of the read model (`server/src/storage/read_model.rs`) on both backends: rows
//! written in the ingest transaction from real records, queries, the dashboard figures, the
//! periodic report, and a rebuild that equals the incremental projection after a long random
//! run of several tablets creating, editing and merging records.

use std::collections::HashMap;

use communesync_core::catalogue::CivilDate;
use communesync_core::record::{
    Applicant, Application, Author, Record, RecordDoc, RecordId, RecordKind, Source, Status,
};
use communesync_server::storage::{
    Device, IncomingChange, IncomingDoc, ReadModelRow, RecordQuery, Scope, ServerStorage,
    read_model,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Fixture, communes_c1_c2, enroll, postgres_fixture, sqlite_fixture};

conformance!(
    read_model_projects_in_the_ingest_transaction,
    read_model_writes_the_push_path_projection_only_when_current,
    read_model_queries,
    read_model_summaries_and_report,
    read_model_rebuild_equals_incremental_after_a_random_run,
    console_operators_sessions_and_audit,
);

const DAY: i64 = 86_400_000;
/// 2026-09-01 00:00 in Vietnam (UTC+7).
const SEPT_1: i64 = 1_788_195_600_000;

fn day(s: &str) -> CivilDate {
    s.parse().unwrap()
}

fn application(
    commune: &str,
    name: &str,
    id_number: &str,
    procedure: &str,
    received_at: i64,
    due: &str,
) -> Application {
    Application {
        id: RecordId::new(),
        commune_code: commune.to_owned(),
        procedure_code: procedure.to_owned(),
        applicant: Applicant {
            name: name.to_owned(),
            id_number: id_number.to_owned(),
            ..Applicant::default()
        },
        received_at,
        due_at: day(due),
        documents: Vec::new(),
        fees: Vec::new(),
        status: Status::Received,
        assignee: None,
        notes: String::new(),
        created_by: Author {
            device: uuid::Uuid::nil(),
            officer: "cb".into(),
        },
        dossier_number: None,
        dossier_number_fallback: false,
        attachments: Vec::new(),
        procedure_version: 0,
        form_values: Default::default(),
        clock_events: Vec::new(),
        returned_at: None,
        returned_on_time: None,
        imported: None,
    }
}

/// A tablet's copy of records, pushing what the server lacks.
struct Tablet {
    device: Device,
    commune: String,
    docs: HashMap<RecordId, RecordDoc>,
}

impl Tablet {
    fn new(device: Device, commune: &str) -> Self {
        Tablet {
            device,
            commune: commune.to_owned(),
            docs: HashMap::new(),
        }
    }

    fn create(&mut self, app: &Application, now: i64) -> RecordId {
        let doc = RecordDoc::create(&Record::Application(app.clone()), self.device.id, "cb", now)
            .unwrap();
        self.docs.insert(app.id, doc);
        app.id
    }

    fn edit(&mut self, id: RecordId, now: i64, f: impl FnOnce(&mut Application)) {
        let doc = self.docs.get_mut(&id).unwrap();
        let before = doc.application().unwrap();
        let mut after = before.clone();
        f(&mut after);
        doc.edit(&before, &after, "cb", now).unwrap();
    }

    /// Takes every change of `other`'s copy of `id`.
    fn merge_from(&mut self, other: &mut Tablet, id: RecordId) {
        let bytes: Vec<Vec<u8>> = other
            .docs
            .get_mut(&id)
            .unwrap()
            .changes_since(&[])
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        match self.docs.get_mut(&id) {
            Some(doc) => {
                doc.apply_changes(&bytes, Source::Untrusted).unwrap();
            }
            None => {
                let (doc, _) = RecordDoc::from_changes(
                    id,
                    RecordKind::Application,
                    &bytes,
                    self.device.id,
                    Source::Untrusted,
                )
                .unwrap();
                self.docs.insert(id, doc);
            }
        }
    }

    /// Every document with all its changes (the server dedupes).
    fn outbox(&mut self) -> Vec<IncomingDoc> {
        let mut ids: Vec<RecordId> = self.docs.keys().copied().collect();
        ids.sort();
        ids.into_iter()
            .map(|id| {
                let changes = self.docs.get_mut(&id).unwrap().changes_since(&[]);
                IncomingDoc {
                    id,
                    kind: RecordKind::Application,
                    commune: self.commune.clone(),
                    changes: changes
                        .iter()
                        .map(|c| IncomingChange {
                            hash: c.hash().0,
                            deps: c.deps().iter().map(|d| d.0).collect(),
                            bytes: c.raw_bytes().to_vec(),
                        })
                        .collect(),
                    projection: None,
                }
            })
            .collect()
    }

    async fn push(&mut self, s: &dyn ServerStorage, now: i64) {
        let outbox = self.outbox();
        let out = s.ingest(&self.device, outbox, now).await.unwrap();
        assert!(out.missing_deps.is_empty());
    }

    /// The outbox with the projection of each document the push path would hand storage: the
    /// record read from the server's stored changes with the pushed ones applied.
    async fn projected_outbox(&mut self, s: &dyn ServerStorage) -> Vec<IncomingDoc> {
        let mut outbox = self.outbox();
        let ids: Vec<RecordId> = outbox.iter().map(|doc| doc.id).collect();
        let known = s.known_docs(&ids).await.unwrap();
        for doc in &mut outbox {
            let stored: Vec<Vec<u8>> = known
                .get(&doc.id)
                .map(|known| known.changes.clone())
                .unwrap_or_default();
            let mut all = stored.clone();
            all.extend(doc.changes.iter().map(|c| c.bytes.clone()));
            let (mut checked, record) = RecordDoc::from_changes(
                doc.id,
                RecordKind::Application,
                &all,
                self.device.id,
                Source::Server,
            )
            .unwrap();
            doc.projection = Some(Box::new(read_model::project_checked(
                &mut checked,
                &record,
                &doc.commune,
                stored.len(),
                &read_model::no_deadline_rules(),
            )));
        }
        outbox
    }

    /// Pushes as the HTTP push path does: with projections.
    async fn push_projected(&mut self, s: &dyn ServerStorage, now: i64) {
        let outbox = self.projected_outbox(s).await;
        let out = s.ingest(&self.device, outbox, now).await.unwrap();
        assert!(out.missing_deps.is_empty());
    }
}

async fn tablet(s: &dyn ServerStorage, commune: &str, label: &str) -> Tablet {
    let (device, _) = enroll(s, Scope::Commune(commune.into()), label).await;
    Tablet::new(device, commune)
}

async fn all_rows(s: &dyn ServerStorage) -> Vec<ReadModelRow> {
    let mut rows = s.records(&RecordQuery::default()).await.unwrap();
    rows.sort_by_key(|row| row.id);
    rows
}

async fn read_model_projects_in_the_ingest_transaction(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let mut a = tablet(s, "c1", "a").await;
    let mut b = tablet(s, "c1", "b").await;
    let app = application(
        "c1",
        "Nguyễn Thị Hương",
        "001234567890",
        "khai_sinh",
        SEPT_1,
        "2026-09-04",
    );
    let id = a.create(&app, SEPT_1);
    assert_eq!(s.record_row(id).await.unwrap(), None);
    a.push(s, SEPT_1 + 5).await;

    let row = s
        .record_row(id)
        .await
        .unwrap()
        .expect("projected with its changes");
    assert_eq!(row.commune, "c1");
    assert_eq!(row.kind, RecordKind::Application);
    assert_eq!(row.status.as_deref(), Some("received"));
    assert_eq!(row.procedure_code.as_deref(), Some("khai_sinh"));
    assert_eq!(row.received_at, Some(SEPT_1));
    assert_eq!(row.due_on.as_deref(), Some("2026-09-04"));
    assert_eq!(row.applicant_name.as_deref(), Some("Nguyễn Thị Hương"));
    assert_eq!(row.name_folded.as_deref(), Some("nguyen thi huong"));
    assert_eq!(row.id_number.as_deref(), Some("001234567890"));
    assert_eq!((row.returned_at, row.on_time), (None, None));
    assert!(!row.has_conflicts);
    assert_eq!(
        (row.changes, row.first_received_at, row.last_received_at),
        (1, SEPT_1 + 5, SEPT_1 + 5)
    );
    assert_eq!(row.projection_error, None);
    // Fields records do not carry yet stay empty.
    assert_eq!(
        (row.dossier_number, row.procedure_version, row.attachments),
        (None, None, None)
    );

    // Concurrent assignees from two tablets: a conflict; then the workflow to "returned" late.
    b.merge_from(&mut a, id);
    a.edit(id, SEPT_1 + DAY, |x| x.assignee = Some("Lò Văn An".into()));
    b.edit(id, SEPT_1 + DAY, |x| {
        x.assignee = Some("Quàng Thị Bình".into())
    });
    a.push(s, SEPT_1 + DAY).await;
    b.push(s, SEPT_1 + DAY + 1).await;
    let row = s.record_row(id).await.unwrap().unwrap();
    assert!(row.has_conflicts);
    assert_eq!(row.changes, 3);
    assert_eq!(row.last_received_at, SEPT_1 + DAY + 1);
    a.merge_from(&mut b, id);
    a.edit(id, SEPT_1 + DAY, |x| x.status = Status::InProgress);
    a.edit(id, SEPT_1 + 2 * DAY, |x| x.status = Status::Ready);
    a.edit(id, SEPT_1 + 5 * DAY, |x| x.status = Status::Returned);
    a.push(s, SEPT_1 + 5 * DAY).await;
    let row = s.record_row(id).await.unwrap().unwrap();
    assert_eq!(row.status.as_deref(), Some("returned"));
    assert_eq!(row.returned_at, Some(SEPT_1 + 5 * DAY));
    assert_eq!(row.on_time, Some(false), "returned on 09-06, due 09-04");

    // A document whose changes are not a record (the suite's fake changes) still gets a row,
    // with its reason, and does not stop the record pushed beside it.
    let fake = RecordId::new();
    let other = application("c1", "Lường Văn Cường", "", "ket_hon", SEPT_1, "2026-09-10");
    let other_id = a.create(&other, SEPT_1);
    let mut batch = a.outbox();
    batch.push(super::doc(fake, "c1", super::chain("fake", 2, 0)));
    s.ingest(&a.device, batch, SEPT_1 + 6 * DAY).await.unwrap();
    let row = s.record_row(fake).await.unwrap().unwrap();
    assert!(row.projection_error.is_some());
    assert_eq!((row.status, row.changes), (None, 2));
    let row = s.record_row(other_id).await.unwrap().unwrap();
    assert_eq!(row.id_number, None, "an empty identity number is no number");
    assert_eq!(s.read_model_lag().await.unwrap(), 0);
}

async fn read_model_writes_the_push_path_projection_only_when_current(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let mut a = tablet(s, "c1", "a").await;
    let mut b = tablet(s, "c1", "b").await;
    let app = Application {
        dossier_number: Some("C1-260901-000001".into()),
        ..application(
            "c1",
            "Lò Thị Xuân",
            "011",
            "khai_sinh",
            SEPT_1,
            "2026-09-10",
        )
    };
    let id = a.create(&app, SEPT_1);
    a.push_projected(s, SEPT_1 + 5).await;
    let row = s.record_row(id).await.unwrap().unwrap();
    assert_eq!(row.dossier_number.as_deref(), Some("C1-260901-000001"));
    assert_eq!(row.name_folded.as_deref(), Some("lo thi xuan"));
    assert_eq!(
        (row.changes, row.first_received_at, row.last_received_at),
        (1, SEPT_1 + 5, SEPT_1 + 5)
    );

    // a computes its projection on the one stored change; b's edit is stored first.
    b.merge_from(&mut a, id);
    a.edit(id, SEPT_1 + DAY, |x| x.assignee = Some("cb-a".into()));
    b.edit(id, SEPT_1 + DAY, |x| x.status = Status::InProgress);
    let stale = a.projected_outbox(s).await;
    assert_eq!(
        stale[0].projection.as_ref().unwrap().row.status.as_deref(),
        Some("received")
    );
    b.push_projected(s, SEPT_1 + DAY).await;
    s.ingest(&a.device, stale, SEPT_1 + DAY + 1).await.unwrap();
    let row = s.record_row(id).await.unwrap().unwrap();
    assert_eq!(
        row.status.as_deref(),
        Some("in_progress"),
        "b's edit is not lost"
    );
    assert_eq!(row.assignee.as_deref(), Some("cb-a"));
    assert_eq!(
        (row.changes, row.first_received_at, row.last_received_at),
        (3, SEPT_1 + 5, SEPT_1 + DAY + 1)
    );

    // A projection that claims a history the document does not have (a new record said to
    // have stored changes, a known one said to have none) is not written either.
    let other = application("c1", "Cầm Văn Sơn", "012", "ket_hon", SEPT_1, "2026-09-12");
    let other_id = a.create(&other, SEPT_1);
    let mut outbox = a.projected_outbox(s).await;
    for doc in &mut outbox {
        let projected = doc.projection.as_mut().unwrap();
        projected.row.status = Some("rejected".into());
        projected.base_changes = if doc.id == other_id { 1 } else { 0 };
    }
    a.edit(id, SEPT_1 + 2 * DAY, |x| x.notes = "đủ giấy tờ".into());
    let extra = a.outbox().into_iter().find(|doc| doc.id == id).unwrap();
    for doc in &mut outbox {
        if doc.id == id {
            doc.changes = extra.changes.clone();
        }
    }
    s.ingest(&a.device, outbox, SEPT_1 + 2 * DAY).await.unwrap();
    assert_eq!(
        s.record_row(other_id)
            .await
            .unwrap()
            .unwrap()
            .status
            .as_deref(),
        Some("received")
    );
    let row = s.record_row(id).await.unwrap().unwrap();
    assert_eq!(row.status.as_deref(), Some("in_progress"));
    assert_eq!(row.changes, 4);

    // Every row equals the projection from the stored changes.
    let incremental = all_rows(s).await;
    s.rebuild_read_model(read_model::no_deadline_rules())
        .await
        .unwrap();
    assert_eq!(all_rows(s).await, incremental);
}

async fn read_model_queries(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let mut t1 = tablet(s, "c1", "t1").await;
    let mut t2 = tablet(s, "c2", "t2").await;
    let huong = t1.create(
        &application(
            "c1",
            "Nguyễn Thị Hương",
            "001",
            "khai_sinh",
            SEPT_1,
            "2026-09-04",
        ),
        SEPT_1,
    );
    let dung = t1.create(
        &Application {
            dossier_number: Some("C1-260902-000042".into()),
            ..application(
                "c1",
                "Đặng Văn Dũng",
                "002",
                "ket_hon",
                SEPT_1 + DAY,
                "2026-09-20",
            )
        },
        SEPT_1,
    );
    let hoa = t2.create(
        &application(
            "c2",
            "Nguyễn Thị Hoa",
            "003",
            "khai_sinh",
            SEPT_1 + 2 * DAY,
            "2026-09-03",
        ),
        SEPT_1,
    );
    // A literal "%" in a query matches only itself.
    let percent = t2.create(
        &application("c2", "100% Lò", "004", "khai_sinh", SEPT_1, "2026-09-30"),
        SEPT_1,
    );
    t1.edit(dung, SEPT_1 + DAY, |x| x.status = Status::InProgress);
    t1.push(s, SEPT_1 + 3 * DAY).await;
    t2.push(s, SEPT_1 + 3 * DAY).await;
    let ids = |rows: Vec<ReadModelRow>| rows.into_iter().map(|row| row.id).collect::<Vec<_>>();
    let q = |f: fn(&mut RecordQuery)| {
        let mut query = RecordQuery::default();
        f(&mut query);
        query
    };

    // Newest received first.
    assert_eq!(
        ids(s.records(&RecordQuery::default()).await.unwrap()),
        vec![hoa, dung, huong, percent]
    );
    assert_eq!(
        ids(s
            .records(&q(|q| q.name = Some("nguyen thi".into())))
            .await
            .unwrap()),
        vec![hoa, huong]
    );
    assert_eq!(
        ids(s
            .records(&q(|q| q.name = Some("DANG van".into())))
            .await
            .unwrap()),
        vec![dung]
    );
    assert_eq!(
        ids(s
            .records(&q(|q| q.name = Some("Hương".into())))
            .await
            .unwrap()),
        vec![huong]
    );
    assert_eq!(
        ids(s.records(&q(|q| q.name = Some("0%".into()))).await.unwrap()),
        vec![percent]
    );
    assert_eq!(
        ids(s.records(&q(|q| q.name = Some("_".into()))).await.unwrap()),
        Vec::<RecordId>::new()
    );
    assert_eq!(
        ids(s
            .records(&q(|q| q.id_number = Some("002".into())))
            .await
            .unwrap()),
        vec![dung]
    );
    assert_eq!(
        ids(s
            .records(&q(|q| q.commune = Some("c2".into())))
            .await
            .unwrap()),
        vec![hoa, percent]
    );
    assert_eq!(
        ids(s
            .records(&q(|q| q.status = Some("in_progress".into())))
            .await
            .unwrap()),
        vec![dung]
    );
    assert_eq!(
        ids(s
            .records(&q(|q| q.procedure_code = Some("khai_sinh".into())))
            .await
            .unwrap()),
        vec![hoa, huong, percent]
    );
    assert_eq!(
        ids(s
            .records(&q(|q| q.kind = Some(RecordKind::CitizenRequest)))
            .await
            .unwrap()),
        Vec::<RecordId>::new()
    );
    assert_eq!(
        ids(s
            .records(&q(|q| q.dossier_number = Some("x".into())))
            .await
            .unwrap()),
        Vec::<RecordId>::new()
    );
    // The dossier number the application carries (issue 16) is projected and found.
    assert_eq!(
        ids(s
            .records(&q(|q| q.dossier_number = Some("C1-260902-000042".into())))
            .await
            .unwrap()),
        vec![dung]
    );
    assert_eq!(
        s.record_row(dung).await.unwrap().unwrap().dossier_number,
        Some("C1-260902-000042".into())
    );
    // Overdue on 09-05: open with a due date before it.
    assert_eq!(
        ids(s
            .records(&q(|q| q.overdue_on = Some("2026-09-05".into())))
            .await
            .unwrap()),
        vec![hoa, huong]
    );
    assert_eq!(
        ids(s
            .records(&q(|q| {
                q.received_from = Some(SEPT_1 + DAY);
                q.received_until = Some(SEPT_1 + 2 * DAY);
            }))
            .await
            .unwrap()),
        vec![dung]
    );
    // Paging.
    assert_eq!(
        ids(s
            .records(&q(|q| {
                q.limit = 2;
                q.offset = 1;
            }))
            .await
            .unwrap()),
        vec![dung, huong]
    );
}

async fn read_model_summaries_and_report(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    s.create_commune("c3", "Xã Thanh Nưa").await.unwrap();
    let mut t1 = tablet(s, "c1", "t1").await;
    let mut t2 = tablet(s, "c2", "t2").await;
    // c1: one returned on time, one returned late, one open overdue, one open not due, one
    // received before the range.
    let on_time = t1.create(
        &application("c1", "A", "", "khai_sinh", SEPT_1, "2026-09-10"),
        SEPT_1,
    );
    let late = t1.create(
        &application("c1", "B", "", "khai_sinh", SEPT_1, "2026-09-03"),
        SEPT_1,
    );
    t1.create(
        &application("c1", "C", "", "ket_hon", SEPT_1 + DAY, "2026-09-05"),
        SEPT_1,
    );
    t1.create(
        &application("c1", "D", "", "ket_hon", SEPT_1 + 8 * DAY, "2026-09-30"),
        SEPT_1,
    );
    t1.create(
        &application("c1", "E", "", "ket_hon", SEPT_1 - 40 * DAY, "2026-07-30"),
        SEPT_1,
    );
    for (id, at) in [(on_time, SEPT_1 + 3 * DAY), (late, SEPT_1 + 6 * DAY)] {
        t1.edit(id, at, |x| x.status = Status::InProgress);
        t1.edit(id, at, |x| x.status = Status::Ready);
        t1.edit(id, at, |x| x.status = Status::Returned);
    }
    // c2: one rejected on time (a result given), one withdrawn (no result).
    let rejected = t2.create(
        &application("c2", "F", "", "khai_sinh", SEPT_1, "2026-09-10"),
        SEPT_1,
    );
    let withdrawn = t2.create(
        &application("c2", "G", "", "khai_sinh", SEPT_1, "2026-09-02"),
        SEPT_1,
    );
    t2.edit(rejected, SEPT_1 + DAY, |x| x.status = Status::Rejected);
    t2.edit(withdrawn, SEPT_1 + DAY, |x| x.status = Status::Withdrawn);
    t1.push(s, SEPT_1 + 9 * DAY).await;
    t2.push(s, SEPT_1 + 9 * DAY).await;

    // Dashboard on 09-10: week from 09-07, month from 09-01.
    let summaries = s
        .commune_summaries("2026-09-10", SEPT_1 + 6 * DAY, SEPT_1)
        .await
        .unwrap();
    let codes: Vec<&str> = summaries.iter().map(|x| x.commune.as_str()).collect();
    assert_eq!(codes, ["c1", "c2", "c3"]);
    let c1 = &summaries[0];
    assert_eq!(c1.received_this_month, 4);
    assert_eq!(c1.received_this_week, 1);
    assert_eq!(c1.open, 3);
    assert_eq!(c1.overdue, 2, "C due 09-05 and E due 07-30");
    assert_eq!((c1.on_time, c1.late), (1, 1));
    assert_eq!(c1.on_time_rate(), Some(0.5));
    assert_eq!(c1.by_status.get("returned"), Some(&2));
    assert_eq!(c1.by_status.get("received"), Some(&3));
    let c2 = &summaries[1];
    assert_eq!((c2.open, c2.overdue, c2.on_time, c2.late), (0, 0, 1, 0));
    assert_eq!(c2.by_status.get("withdrawn"), Some(&1));
    assert_eq!(summaries[2].on_time_rate(), None);
    assert_eq!(summaries[2].by_status.len(), 0);

    // Report for September 1-9, overdue judged on 09-09.
    let report = s
        .report(SEPT_1, SEPT_1 + 9 * DAY, "2026-09-09")
        .await
        .unwrap();
    let lines: Vec<(&str, &str, [u64; 4])> = report
        .iter()
        .map(|r| {
            (
                r.commune.as_str(),
                r.procedure_code.as_str(),
                [r.received, r.processed_on_time, r.processed_late, r.overdue],
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            ("c1", "ket_hon", [2, 0, 0, 2]),
            ("c1", "khai_sinh", [2, 1, 1, 0]),
            ("c2", "khai_sinh", [2, 1, 0, 0]),
        ]
    );
}

async fn read_model_rebuild_equals_incremental_after_a_random_run(f: &Fixture) {
    let s = f.s();
    communes_c1_c2(s).await;
    let mut tablets = vec![
        tablet(s, "c1", "c1-a").await,
        tablet(s, "c1", "c1-b").await,
        tablet(s, "c1", "c1-c").await,
        tablet(s, "c2", "c2-a").await,
        tablet(s, "c2", "c2-b").await,
    ];
    let mut rng = StdRng::seed_from_u64(18);
    let names = [
        "Nguyễn Thị Hương",
        "Lò Văn Đức",
        "Quàng Thị Mai",
        "Đèo Văn Long",
    ];
    let mut now = SEPT_1;
    for step in 0..240 {
        now += rng.random_range(0..DAY / 4);
        let t = rng.random_range(0..tablets.len());
        let ids: Vec<RecordId> = tablets[t].docs.keys().copied().collect();
        match rng.random_range(0..10) {
            0..=2 => {
                let commune = tablets[t].commune.clone();
                let due = CivilDate::from_unix_millis(now + rng.random_range(1..10) * DAY)
                    .unwrap()
                    .to_string();
                let app = application(
                    &commune,
                    names[rng.random_range(0..names.len())],
                    &format!("{step:03}"),
                    ["khai_sinh", "ket_hon"][rng.random_range(0..2)],
                    now,
                    &due,
                );
                tablets[t].create(&app, now);
            }
            3..=6 if !ids.is_empty() => {
                let id = ids[rng.random_range(0..ids.len())];
                let choice = rng.random_range(0..4);
                let name = names[rng.random_range(0..names.len())];
                tablets[t].edit(id, now, |x| match choice {
                    0 => x.assignee = Some(format!("cb{}", step % 3)),
                    1 => x.applicant.name = name.to_owned(),
                    _ => {
                        let next = match x.status {
                            Status::Received => Status::InProgress,
                            Status::InProgress => Status::Ready,
                            Status::Ready => Status::Returned,
                            other => other,
                        };
                        x.status = next;
                    }
                });
            }
            7..=8 => {
                // Merge a record from another tablet of the same commune.
                let peers: Vec<usize> = (0..tablets.len())
                    .filter(|&p| p != t && tablets[p].commune == tablets[t].commune)
                    .collect();
                let p = peers[rng.random_range(0..peers.len())];
                let theirs: Vec<RecordId> = tablets[p].docs.keys().copied().collect();
                if !theirs.is_empty() {
                    let id = theirs[rng.random_range(0..theirs.len())];
                    let (mine, peer) = if t < p {
                        let (left, right) = tablets.split_at_mut(p);
                        (&mut left[t], &mut right[0])
                    } else {
                        let (left, right) = tablets.split_at_mut(t);
                        (&mut right[0], &mut left[p])
                    };
                    mine.merge_from(peer, id);
                }
            }
            _ => match rng.random_range(0..3) {
                0 => tablets[t].push(s, now).await,
                1 => tablets[t].push_projected(s, now).await,
                _ => {
                    // Projections computed, then a peer of the commune pushes first: those of
                    // the records they share are stale and must not be written.
                    let outbox = tablets[t].projected_outbox(s).await;
                    let peers: Vec<usize> = (0..tablets.len())
                        .filter(|&p| p != t && tablets[p].commune == tablets[t].commune)
                        .collect();
                    let p = peers[rng.random_range(0..peers.len())];
                    tablets[p].push_projected(s, now).await;
                    let out = s.ingest(&tablets[t].device, outbox, now + 1).await.unwrap();
                    assert!(out.missing_deps.is_empty());
                }
            },
        }
    }
    // A concurrent edit for certain (the random run makes some, depending on record ids).
    let shared = tablets[0].create(
        &application("c1", "Lò Văn Chung", "999", "khai_sinh", now, "2026-12-01"),
        now,
    );
    let (first, rest) = tablets.split_at_mut(1);
    rest[0].merge_from(&mut first[0], shared);
    first[0].edit(shared, now, |x| x.assignee = Some("cb-a".into()));
    rest[0].edit(shared, now, |x| x.assignee = Some("cb-b".into()));
    for status in [Status::InProgress, Status::Ready, Status::Returned] {
        first[0].edit(shared, now, |x| x.status = status);
    }
    for tablet in &mut tablets {
        tablet.push(s, now).await;
    }
    let incremental = all_rows(s).await;
    assert!(
        incremental.len() > 40,
        "the run made {} records",
        incremental.len()
    );
    assert!(
        incremental.iter().any(|row| row.has_conflicts),
        "the run made conflicts"
    );
    assert!(
        incremental
            .iter()
            .any(|row| row.status.as_deref() == Some("returned"))
    );
    assert!(incremental.iter().all(|row| row.projection_error.is_none()));
    // The dashboard's maintained counts (kept by triggers with every row written) equal
    // figures counted from the rows, before and after the rebuild; a week that starts before
    // the month (rows received between the two count for the week only).
    let figures = || async {
        let mut all = Vec::new();
        for (today, week, month) in [
            ("2026-09-20", SEPT_1 + 10 * DAY, SEPT_1 + 12 * DAY),
            ("2026-10-05", SEPT_1 + 20 * DAY, SEPT_1 + 15 * DAY),
        ] {
            all.push(s.commune_summaries(today, week, month).await.unwrap());
        }
        all
    };
    let summaries = figures().await;
    let rows = all_rows(s).await;
    for (summary, (today, week, month)) in summaries.iter().zip([
        ("2026-09-20", SEPT_1 + 10 * DAY, SEPT_1 + 12 * DAY),
        ("2026-10-05", SEPT_1 + 20 * DAY, SEPT_1 + 15 * DAY),
    ]) {
        for line in summary {
            let mine: Vec<&ReadModelRow> =
                rows.iter().filter(|r| r.commune == line.commune).collect();
            let open = |r: &&&ReadModelRow| {
                communesync_server::storage::OPEN_STATUSES
                    .contains(&r.status.as_deref().unwrap_or(""))
            };
            let count =
                |f: &dyn Fn(&&ReadModelRow) -> bool| mine.iter().filter(|r| f(r)).count() as u64;
            assert_eq!(line.open, count(&|r| open(&r)), "{}", line.commune);
            assert_eq!(
                line.overdue,
                count(&|r| open(&r) && r.due_on.as_deref().is_some_and(|d| d < today)),
            );
            assert_eq!(line.on_time, count(&|r| r.on_time == Some(true)));
            assert_eq!(line.late, count(&|r| r.on_time == Some(false)));
            assert_eq!(
                line.received_this_week,
                count(&|r| r.received_at.is_some_and(|at| at >= week))
            );
            assert_eq!(
                line.received_this_month,
                count(&|r| r.received_at.is_some_and(|at| at >= month))
            );
        }
    }
    assert!(
        summaries[0]
            .iter()
            .any(|line| line.overdue > 0 && line.on_time + line.late > 0),
        "{summaries:?}"
    );
    let rebuilt = s
        .rebuild_read_model(read_model::no_deadline_rules())
        .await
        .unwrap();
    assert_eq!(rebuilt, incremental.len() as u64);
    assert_eq!(all_rows(s).await, incremental);
    assert_eq!(figures().await, summaries);
    assert_eq!(s.read_model_lag().await.unwrap(), 0);
}

async fn console_operators_sessions_and_audit(f: &Fixture) {
    use communesync_server::storage::StorageError;
    let s = f.s();
    let now = SEPT_1;
    s.create_operator("lan", "$argon2id$x", "viewer", now)
        .await
        .unwrap();
    assert!(matches!(
        s.create_operator("lan", "$argon2id$y", "admin", now).await,
        Err(StorageError::AlreadyExists)
    ));
    let lan = s.operator("lan").await.unwrap().unwrap();
    assert_eq!(
        (lan.role.as_str(), lan.password_hash.as_str(), lan.disabled),
        ("viewer", "$argon2id$x", false)
    );
    assert_eq!(s.operator("nobody").await.unwrap(), None);

    let token = [7u8; 32];
    assert!(matches!(
        s.create_session([1u8; 32], "nobody", "c", now, now + 10)
            .await,
        Err(StorageError::NotFound)
    ));
    s.create_session(token, "lan", "csrf-1", now, now + 1_000)
        .await
        .unwrap();
    let session = s.session(token, now + 999).await.unwrap().unwrap();
    assert_eq!(
        (session.operator.username.as_str(), session.csrf.as_str()),
        ("lan", "csrf-1")
    );
    assert_eq!(
        s.session(token, now + 1_000).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(s.session([8u8; 32], now).await.unwrap(), None);
    // A later login deletes expired sessions; logout deletes its own.
    s.create_session([9u8; 32], "lan", "csrf-2", now + 2_000, now + 3_000)
        .await
        .unwrap();
    assert_eq!(
        s.session(token, now).await.unwrap(),
        None,
        "expired sessions are deleted"
    );
    s.delete_session([9u8; 32]).await.unwrap();
    assert_eq!(s.session([9u8; 32], now + 2_001).await.unwrap(), None);

    s.append_audit("lan", "login", "", now).await.unwrap();
    s.append_audit("lan", "issue_code", "commune c1", now + 1)
        .await
        .unwrap();
    let log = s.audit_log(10).await.unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (log[0].action.as_str(), log[0].detail.as_str(), log[0].at),
        ("issue_code", "commune c1", now + 1)
    );
    assert_eq!(s.audit_log(1).await.unwrap().len(), 1);
}
