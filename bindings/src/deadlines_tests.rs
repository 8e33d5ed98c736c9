//! Statutory time through the engine, as an app calls it.

use std::sync::Arc;

use communesync_core::catalogue::VIETNAM_OFFSET;
use communesync_core::store::{DeviceStore, EncryptionKey, StoreConfig};

use super::*;
use crate::types::{Applicant, ApplicationStatus, ApplicationUpdate, NewApplication};
use crate::{CommuneSyncError, EngineConfig};

const KEY: [u8; 32] = [9; 32];
const CALENDAR_2026: &str = include_str!("../../core/fixtures/calendar_vn_2026.json");

async fn engine(dir: &tempfile::TempDir) -> Arc<Engine> {
    let path = dir.path().join("tablet.db");
    drop(DeviceStore::open(StoreConfig::new(&path).encrypted(EncryptionKey::new(KEY))).unwrap());
    let engine = Engine::open(EngineConfig {
        store_path: path.display().to_string(),
        encryption_key: KEY.to_vec(),
        server_url: "http://127.0.0.1:9".into(),
        credential: None,
        background_policy: None,
        app_version: None,
        trusted_ca_pem: Vec::new(),
        pinned_keys: Vec::new(),
    })
    .await
    .unwrap();
    // The fixture is `{"calendar":[...]}`: the procedure goes in front.
    let catalogue = CALENDAR_2026.trim_start().replacen(
        '{',
        r#"{"procedures":[{"code":"1.001193","name":"Đăng ký khai sinh",
            "processing":{"working_days":5}}],"#,
        1,
    );
    engine.install_catalogue_file(catalogue).await.unwrap();
    engine
}

fn status(to: ApplicationStatus) -> ApplicationUpdate {
    ApplicationUpdate {
        status: Some(to),
        ..ApplicationUpdate::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplement_an_extension_and_the_return_through_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    // Received Thursday 12 February 2026 at 09:00: due 26 February, across Tết.
    let received = "2026-02-12"
        .parse::<CivilDate>()
        .unwrap()
        .0
        .with_hms(9, 0, 0)
        .unwrap()
        .assume_offset(VIETNAM_OFFSET);
    let app = engine
        .create_application(
            "lan".into(),
            NewApplication {
                commune_code: "DB-MUONGPHANG".into(),
                procedure_code: "1.001193".into(),
                applicant: Applicant {
                    name: "Lò Thị Mai".into(),
                    id_number: String::new(),
                    phone: String::new(),
                    address: String::new(),
                    village: "Bản Phăng".into(),
                },
                received_at: Some(SystemTime::from(received)),
                documents: Vec::new(),
                fees: Vec::new(),
                assignee: None,
                notes: String::new(),
            },
        )
        .await
        .unwrap();
    let id = app.id.clone();
    engine
        .update_application(
            "lan".into(),
            id.clone(),
            status(ApplicationStatus::InProgress),
        )
        .await
        .unwrap();
    let overdue = |engine: Arc<Engine>| async move {
        let page = engine.overdue(50, 0).await.unwrap();
        page.items.into_iter().map(|s| s.id).collect::<Vec<_>>()
    };
    assert_eq!(overdue(engine.clone()).await, vec![id.clone()]);

    // The supplement stops the clock: not overdue while it is awaited.
    let refused = engine
        .request_supplement("lan".into(), id.clone(), " ".into())
        .await;
    assert!(matches!(refused, Err(CommuneSyncError::InvalidInput(_))));
    let paused = engine
        .request_supplement("lan".into(), id.clone(), "Bản sao giấy chứng sinh".into())
        .await
        .unwrap();
    assert_eq!(paused.status, ApplicationStatus::SupplementRequested);
    assert!(overdue(engine.clone()).await.is_empty());
    let deadline = engine.dossier_deadline(id.clone()).await.unwrap();
    assert!(deadline.paused_since.is_some());
    assert_eq!(deadline.statutory_due, "2026-02-26".parse().unwrap());
    assert_eq!(deadline.events[0].kind, DeadlineEventKind::Pause);

    engine
        .mark_complete("lan".into(), id.clone())
        .await
        .unwrap();
    assert_eq!(overdue(engine.clone()).await, vec![id.clone()]);

    // The apology slip: a later appointment takes it off the overdue list.
    let appointment = CivilDate::today().plus_days(20);
    assert!(matches!(
        engine
            .extend_deadline("lan".into(), id.clone(), String::new(), appointment)
            .await,
        Err(CommuneSyncError::InvalidInput(_))
    ));
    engine
        .extend_deadline("lan".into(), id.clone(), "Chờ xác minh".into(), appointment)
        .await
        .unwrap();
    assert!(overdue(engine.clone()).await.is_empty());
    let deadline = engine.dossier_deadline(id.clone()).await.unwrap();
    assert_eq!(deadline.due_date, appointment);
    assert!(deadline.extended);

    engine
        .update_application("lan".into(), id.clone(), status(ApplicationStatus::Ready))
        .await
        .unwrap();
    let returned = engine
        .return_dossier("lan".into(), id.clone())
        .await
        .unwrap();
    assert_eq!(returned.status, ApplicationStatus::Returned);
    let deadline = engine.dossier_deadline(id.clone()).await.unwrap();
    assert_eq!(deadline.returned_on_time, Some(true));
    assert!(deadline.returned_at.is_some());
    let on_time = engine.returned_dossiers(true, 10, 0).await.unwrap();
    assert_eq!(on_time.len(), 1);
    assert_eq!(on_time[0].id, id);
    assert!(
        engine
            .returned_dossiers(false, 10, 0)
            .await
            .unwrap()
            .is_empty()
    );
}
