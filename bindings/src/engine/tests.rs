use std::sync::mpsc;
use std::time::Duration;

use communesync_core::catalogue::CivilDate;
use communesync_core::catalogue::{Procedure as CoreProcedure, ProcessingTime};
use communesync_core::store;

use super::*;

const KEY: [u8; 32] = [7; 32];

fn config(dir: &tempfile::TempDir) -> EngineConfig {
    let path = dir.path().join("tablet.db");
    // The catalogue normally arrives with the first sync.
    let mut store =
        DeviceStore::open(StoreConfig::new(&path).encrypted(EncryptionKey::new(KEY))).unwrap();
    store
        .import_catalogue(&[CoreProcedure {
            withdrawal_allowed: true,
            ..CoreProcedure::new(
                "1.001193",
                "Đăng ký khai sinh",
                ProcessingTime::WorkingDays(1),
            )
        }])
        .unwrap();
    drop(store);
    EngineConfig {
        store_path: path.display().to_string(),
        encryption_key: KEY.to_vec(),
        server_url: "http://127.0.0.1:9".into(),
        credential: None,
        background_policy: None,
        app_version: None,
        trusted_ca_pem: Vec::new(),
        pinned_keys: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_trust_settings_are_an_invalid_input_not_a_weaker_trust() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig {
        server_url: "https://127.0.0.1:9".into(),
        trusted_ca_pem: vec!["not a certificate".into()],
        ..config(&dir)
    })
    .await
    .unwrap();
    let err = engine
        .enroll("7QK-2M9".into(), "tablet".into())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("CA certificate #1"), "{err}");
}

fn new_application(name: &str) -> NewApplication {
    NewApplication {
        commune_code: "DB-MUONGPHANG".into(),
        procedure_code: "1.001193".into(),
        applicant: Applicant {
            name: name.into(),
            id_number: String::new(),
            phone: String::new(),
            address: String::new(),
            village: "Bản Phăng".into(),
        },
        received_at: None,
        documents: Vec::new(),
        fees: Vec::new(),
        assignee: Some("Lò Văn Minh".into()),
        notes: String::new(),
    }
}

struct Forward(Mutex<mpsc::Sender<ChangeEvent>>);

impl SyncObserver for Forward {
    fn on_progress(&self, _: SyncProgress) {}
    fn on_changed(&self, event: ChangeEvent) {
        let _ = self.0.lock().unwrap().send(event);
    }
    fn on_wiped(&self, _: WipeEvent) {}
}

struct WipeWatcher(Mutex<mpsc::Sender<WipeEvent>>);

impl SyncObserver for WipeWatcher {
    fn on_progress(&self, _: SyncProgress) {}
    fn on_changed(&self, _: ChangeEvent) {}
    fn on_wiped(&self, event: WipeEvent) {
        let _ = self.0.lock().unwrap().send(event);
    }
}

/// A server on 127.0.0.1 that enrolls any code into `commune` and answers each sync with
/// the next of `syncs` (status, JSON body): the error cases a real server gives in the
/// end-to-end tests. Returns its URL and a handle that yields the paths it served.
fn scripted_server(
    commune: &'static str,
    syncs: Vec<(u16, &'static str)>,
) -> (String, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut served = Vec::new();
        let mut syncs = syncs.into_iter();
        // One enrollment and the scripted syncs, each on its own connection.
        for _ in 0..=syncs.len() {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let path = request_line.split(' ').nth(1).unwrap().to_owned();
            let (status, answer) = if path == "/v1/enroll" {
                let body = String::from_utf8(body).unwrap();
                let at = body.find("\"device_id\":\"").unwrap() + 13;
                let device = &body[at..at + 36];
                (
                    200,
                    format!(
                        r#"{{"device_id":"{device}","token":"t0k","scope":{{"commune":"{commune}"}}}}"#
                    ),
                )
            } else {
                let (status, body) = syncs.next().unwrap();
                (status, body.to_owned())
            };
            served.push(path);
            let mut stream = reader.into_inner();
            write!(
                stream,
                "HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            )
            .unwrap();
        }
        served
    });
    (url, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wipe_order_destroys_the_store_and_tells_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let (url, server) = scripted_server(
        "DB-MUONGPHANG",
        vec![(403, r#"{"error":"wiped","message":"stolen tablet"}"#)],
    );
    let engine = Engine::open(EngineConfig {
        server_url: url,
        ..config(&dir)
    })
    .await
    .unwrap();
    let (tx, rx) = mpsc::channel();
    engine
        .observe(Arc::new(WipeWatcher(Mutex::new(tx))))
        .unwrap();
    let app = engine
        .create_application("can-bo.lan".into(), new_application("Hà Thị Nga"))
        .await
        .unwrap();
    engine
        .enroll("7QK-2M9".into(), "tablet".into())
        .await
        .unwrap();

    let err = engine.sync_now().await.unwrap_err();
    assert!(
        matches!(&err, CommuneSyncError::Wiped(m) if m.contains("stolen tablet")),
        "{err}"
    );
    assert_eq!(server.join().unwrap(), vec!["/v1/enroll", "/v1/sync"]);
    let path = dir.path().join("tablet.db");
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        assert!(
            !std::path::Path::new(&name).exists(),
            "{suffix} left behind"
        );
    }
    let event = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(event.device_id, engine.device_id());
    assert_eq!(event.store_path, path.display().to_string());
    assert!(event.deleted_files.contains(&path.display().to_string()));
    assert!(event.message.contains("stolen tablet"));
    // Nothing works on a wiped engine, and nothing is scheduled.
    assert!(matches!(
        engine.get_application(app.id).await,
        Err(CommuneSyncError::Wiped(_))
    ));
    assert!(matches!(
        engine.sync_now().await,
        Err(CommuneSyncError::Wiped(_))
    ));
    assert_eq!(engine.credential(), None);
    assert_eq!(
        engine.next_sync_after(false).await.unwrap(),
        SyncDecision::Stop
    );
    drop(engine);
    assert!(!path.exists(), "closing the engine wrote nothing back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_required_stops_background_syncs_until_the_app_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (url, server) = scripted_server(
        "DB-MUONGPHANG",
        vec![(
            426,
            r#"{"error":"upgrade_required","message":"protocol 2 is no longer accepted"}"#,
        )],
    );
    let open = async |app_version: &str, credential: Option<DeviceCredential>| {
        Engine::open(EngineConfig {
            server_url: url.clone(),
            app_version: Some(app_version.into()),
            credential,
            ..config(&dir)
        })
        .await
        .unwrap()
    };
    let engine = open("1.0", None).await;
    let credential = engine
        .enroll("7QK-2M9".into(), "tablet".into())
        .await
        .unwrap();
    assert_eq!(credential.commune_code.as_deref(), Some("DB-MUONGPHANG"));
    let err = engine.sync_now().await.unwrap_err();
    assert!(
        matches!(&err, CommuneSyncError::UpgradeRequired(m) if m.contains("protocol 2")),
        "{err}"
    );
    assert_eq!(server.join().unwrap().len(), 2);
    assert_eq!(
        engine.next_sync_after(false).await.unwrap(),
        SyncDecision::Stop
    );
    let status = engine.sync_status().await.unwrap();
    assert!(status.upgrade_required);
    assert_eq!(status.last_error_kind, Some(ErrorKind::UpgradeRequired));
    drop(engine);

    // Restarted, the same version still stops; another version schedules again.
    let engine = open("1.0", Some(credential.clone())).await;
    assert_eq!(
        engine.next_sync_after(false).await.unwrap(),
        SyncDecision::Stop
    );
    drop(engine);
    let engine = open("1.1", Some(credential)).await;
    assert!(!engine.sync_status().await.unwrap().upgrade_required);
    assert_ne!(
        engine.next_sync_after(false).await.unwrap(),
        SyncDecision::Stop
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_records_are_listed_fixed_and_audited_through_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (url, server) = scripted_server("DB-MUONGPHANG", Vec::new());
    let engine = Engine::open(EngineConfig {
        server_url: url,
        ..config(&dir)
    })
    .await
    .unwrap();
    // Offline, before enrollment, two records typed with another commune's code.
    let other = |name: &str| NewApplication {
        commune_code: "DB-NATAU".into(),
        ..new_application(name)
    };
    let stray = engine
        .create_application("can-bo.lan".into(), other("Lò Văn Khánh"))
        .await
        .unwrap();
    let twice = engine
        .create_application("can-bo.lan".into(), other("Lò Văn Khánh"))
        .await
        .unwrap();
    let ours = engine
        .create_application("can-bo.lan".into(), new_application("Cầm Thị Lả"))
        .await
        .unwrap();
    engine
        .enroll("7QK-2M9".into(), "tablet".into())
        .await
        .unwrap();
    server.join().unwrap();
    assert_eq!(
        engine.enrolled_commune().await.unwrap().as_deref(),
        Some("DB-MUONGPHANG")
    );
    let listed = engine.quarantined().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|q| (q.record_id.clone(), q.code.as_str(), q.direction))
            .collect::<Vec<_>>(),
        vec![
            (stray.id.clone(), "not_yours", QuarantineDirection::Outgoing),
            (twice.id.clone(), "not_yours", QuarantineDirection::Outgoing)
        ]
    );
    let status = engine.sync_status().await.unwrap();
    assert_eq!((status.pending_changes, status.quarantined), (1, 2));
    assert!(matches!(
        engine.create_application("can-bo.lan".into(), other("Vi Thị Mai")).await,
        Err(CommuneSyncError::InvalidInput(m)) if m.contains("DB-MUONGPHANG")
    ));

    let copy = match engine
        .copy_quarantined_as_new("can-bo.minh".into(), stray.id.clone())
        .await
        .unwrap()
    {
        Record::Application { application } => application,
        other => panic!("{other:?}"),
    };
    assert_eq!(copy.commune_code, "DB-MUONGPHANG");
    assert_eq!(copy.applicant, stray.applicant);
    assert!(matches!(
        engine.get_application(stray.id.clone()).await,
        Err(CommuneSyncError::NotFound(_))
    ));
    engine
        .discard_quarantined(
            "can-bo.minh".into(),
            twice.id.clone(),
            "entered twice".into(),
        )
        .await
        .unwrap();
    assert!(engine.quarantined().await.unwrap().is_empty());
    let log = engine.audit_log().await.unwrap();
    assert_eq!(
        log.iter()
            .map(|e| (e.action, e.record_id.clone(), e.reason.as_str()))
            .collect::<Vec<_>>()[1],
        (AuditAction::Discarded, twice.id.clone(), "entered twice")
    );
    assert_eq!(log[0].action, AuditAction::CopiedAsNew);
    assert_eq!(log[0].replacement_id.as_deref(), Some(copy.id.as_str()));
    assert_eq!(log[0].officer, "can-bo.minh");

    // A refusal from the server: retried when the app decides.
    engine
        .store
        .lock()
        .unwrap()
        .quarantine_refused(&[store::RefusedDoc {
            id: ours.id.parse().unwrap(),
            kind: communesync_core::record::RecordKind::Application,
            code: "too_large".into(),
            message: "notes over the limit".into(),
        }])
        .unwrap();
    assert_eq!(engine.sync_status().await.unwrap().pending_changes, 1);
    assert!(engine.retry_quarantined(ours.id.clone()).await.unwrap());
    assert_eq!(engine.sync_status().await.unwrap().pending_changes, 2);
    assert!(matches!(
        engine.retry_quarantined(ours.id).await,
        Err(CommuneSyncError::NotFound(_))
    ));
    // History: no server time before the server has the change.
    assert_eq!(
        engine.history(copy.id).await.unwrap()[0].server_received_at,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_queries_and_events_go_through_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(&dir)).await.unwrap();
    let (tx, rx) = mpsc::channel();
    let handle = engine.observe(Arc::new(Forward(Mutex::new(tx)))).unwrap();

    let app = engine
        .create_application("can-bo.lan".into(), new_application("Nguyễn Thị Hương"))
        .await
        .unwrap();
    let event = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(event.origin, ChangeOrigin::Local);
    assert_eq!(event.record_ids, vec![app.id.clone()]);

    // A patch changes only what it sets: the assignee stays.
    let edited = engine
        .update_application(
            "can-bo.lan".into(),
            app.id.clone(),
            ApplicationUpdate {
                notes: Some("Giấy chứng sinh".into()),
                ..ApplicationUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(edited.assignee.as_deref(), Some("Lò Văn Minh"));
    assert_eq!(edited.notes, "Giấy chứng sinh");
    let unassigned = engine
        .update_application(
            "can-bo.lan".into(),
            app.id.clone(),
            ApplicationUpdate {
                unassign: true,
                ..ApplicationUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(unassigned.assignee, None);
    assert_eq!(engine.history(app.id.clone()).await.unwrap().len(), 3);
    assert!(engine.conflicts(app.id.clone()).await.unwrap().is_empty());

    let page = engine
        .query_applications(ApplicationQuery {
            status: Some(ApplicationStatus::Received),
            ..ApplicationQuery::default()
        })
        .await
        .unwrap();
    assert_eq!((page.total, page.items[0].id.clone()), (1, app.id.clone()));
    assert_eq!(
        engine.search("nguyen thi".into(), 10).await.unwrap()[0].id,
        app.id
    );

    // One event per edit, in order.
    for _ in 0..2 {
        let event = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(event.record_ids, vec![app.id.clone()]);
    }
    handle.stop();
    assert!(!handle.is_active());
    engine
        .create_application("can-bo.lan".into(), new_application("Đặng Văn Đức"))
        .await
        .unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_the_cases_an_app_acts_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad_key = config(&dir);
    bad_key.encryption_key = vec![1, 2, 3];
    assert!(matches!(
        Engine::open(bad_key).await,
        Err(CommuneSyncError::InvalidInput(_))
    ));
    let mut wrong_key = config(&dir);
    wrong_key.encryption_key = vec![8; 32];
    assert!(matches!(
        Engine::open(wrong_key).await,
        Err(CommuneSyncError::Storage(_))
    ));
    let mut foreign = config(&dir);
    foreign.credential = Some(DeviceCredential {
        device_id: DeviceId::new().to_string(),
        token: "t".into(),
        commune_code: None,
    });
    assert!(matches!(
        Engine::open(foreign).await,
        Err(CommuneSyncError::InvalidInput(_))
    ));

    let engine = Engine::open(config(&dir)).await.unwrap();
    assert!(matches!(
        engine.get_application("not-an-id".into()).await,
        Err(CommuneSyncError::InvalidInput(_))
    ));
    assert!(matches!(
        engine.get_application(RecordId::new().to_string()).await,
        Err(CommuneSyncError::NotFound(_))
    ));
    let app = engine
        .create_application("can-bo.lan".into(), new_application("Vi Thị Mai"))
        .await
        .unwrap();
    assert!(matches!(
        engine
            .update_application(
                "can-bo.lan".into(),
                app.id,
                ApplicationUpdate {
                    status: Some(ApplicationStatus::Returned),
                    ..ApplicationUpdate::default()
                }
            )
            .await,
        Err(CommuneSyncError::Conflict(_))
    ));
    // Not enrolled: nothing to schedule, and the status says so.
    assert_eq!(
        engine.next_sync_after(false).await.unwrap(),
        SyncDecision::Stop
    );
    let status = engine.sync_status().await.unwrap();
    assert!(!status.enrolled && status.pending_changes == 1);
}

struct StatusWatcher(Mutex<mpsc::Sender<SyncStatus>>);

impl crate::SyncStatusListener for StatusWatcher {
    fn on_status(&self, status: SyncStatus) {
        let _ = self.0.lock().unwrap().send(status);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_status_is_delivered_at_once_and_after_each_change() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(&dir)).await.unwrap();
    let (tx, rx) = mpsc::channel();
    let handle = engine
        .watch_sync_status(Arc::new(StatusWatcher(Mutex::new(tx))))
        .unwrap();
    let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((first.pending_changes, first.enrolled), (0, false));
    engine
        .create_application("can-bo.lan".into(), new_application("Nguyễn Thị Hương"))
        .await
        .unwrap();
    let after = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(after.pending_changes, 1);
    assert_eq!(after, engine.sync_status().await.unwrap());
    // A failed sync (not enrolled) is a change of status too.
    assert!(engine.sync_now().await.is_err());
    let failed = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(failed.last_error_kind, Some(ErrorKind::Unauthorized));
    assert_eq!(failed.consecutive_failures, 1);
    handle.stop();
    engine
        .create_application("can-bo.lan".into(), new_application("Đặng Văn Đức"))
        .await
        .unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_rotates_its_store_key() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(&dir)).await.unwrap();
    let app = engine
        .create_application("can-bo.lan".into(), new_application("Vi Thị Mai"))
        .await
        .unwrap();
    assert!(matches!(
        engine.rekey(vec![1; 16]).await,
        Err(CommuneSyncError::InvalidInput(_))
    ));
    engine.rekey(vec![9; 32]).await.unwrap();
    // The engine goes on, in the new key.
    assert_eq!(
        engine.get_application(app.id.clone()).await.unwrap().id,
        app.id
    );
    drop(engine);
    assert!(matches!(
        Engine::open(config_of(&dir, KEY.to_vec())).await,
        Err(CommuneSyncError::Storage(_))
    ));
    let engine = Engine::open(config_of(&dir, vec![9; 32])).await.unwrap();
    assert_eq!(engine.get_application(app.id).await.unwrap().notes, "");
}

/// The config of the store `config` made, opened with `key`.
fn config_of(dir: &tempfile::TempDir, key: Vec<u8>) -> EngineConfig {
    EngineConfig {
        store_path: dir.path().join("tablet.db").display().to_string(),
        encryption_key: key,
        server_url: "http://127.0.0.1:9".into(),
        credential: None,
        background_policy: None,
        app_version: None,
        trusted_ca_pem: Vec::new(),
        pinned_keys: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dates_cross_as_instants_and_civil_dates() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(&dir)).await.unwrap();
    let received = std::time::UNIX_EPOCH + Duration::from_millis(1_795_399_200_000);
    let app = engine
        .create_application(
            "can-bo.lan".into(),
            NewApplication {
                received_at: Some(received),
                ..new_application("Lò Thị Xuân")
            },
        )
        .await
        .unwrap();
    assert_eq!(app.received_at, received);
    let due = app.due_date;
    let query = |from: CivilDate| ApplicationQuery {
        due_from: Some(from),
        ..ApplicationQuery::default()
    };
    let page = engine.query_applications(query(due)).await.unwrap();
    assert_eq!(page.items[0].due_date, due);
    let later: CivilDate = "2099-01-01".parse().unwrap();
    assert_eq!(
        engine.query_applications(query(later)).await.unwrap().total,
        0
    );
    assert_eq!(ms_from_time(time_from_ms(-1_500)), -1_500);
    assert_eq!(ms_from_time(received), 1_795_399_200_000);
    // A Swift Date (a Double) sends 0.251 s as 0.250999999 s: the nearest millisecond is meant.
    let swift_like = std::time::UNIX_EPOCH + Duration::from_nanos(1_795_399_200_250_999_999);
    assert_eq!(ms_from_time(swift_like), 1_795_399_200_251);
    assert_eq!(
        ms_from_time(time_from_ms(-1_500) - Duration::from_nanos(1)),
        -1_500
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_is_found_by_its_dossier_number() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(&dir)).await.unwrap();
    let app = engine
        .create_application("lan".into(), new_application("Lò Thị Hương"))
        .await
        .unwrap();
    // Never synced: a flagged fallback number.
    let number = app.dossier_number.clone().unwrap();
    assert!(app.dossier_number_fallback);
    let found = engine
        .application_by_number(format!(" {number} "))
        .await
        .unwrap();
    assert_eq!(found, Some(app.clone()));
    assert_eq!(
        engine
            .application_by_number("DBMUONGPHANG-000000-000001".into())
            .await
            .unwrap(),
        None
    );
    assert!(
        engine
            .search(number.clone(), 5)
            .await
            .unwrap()
            .iter()
            .any(|hit| hit.id == app.id)
    );
    let state = engine.dossier_number_state().await.unwrap();
    assert_eq!(state.format, "{agency}-{yymmdd}-{seq:6}");
    assert_eq!(
        (state.remaining, state.blocks, state.fallback_used),
        (0, 0, 1)
    );
}
