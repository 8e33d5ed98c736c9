use crate::engine::Engine;
use crate::error::CommuneSyncError;
use crate::types::EngineConfig;

const REGISTER: &str = "\
external_id,procedure_code,applicant_name,status,received_at,returned_at,original_reference
SK-1,1.001193,Lò Văn Pọm,returned,2025-03-14 09:30,2025-03-17 15:00,12/HT-2025
SK-2,1.001193,Lò Thị Xuân,in_progress,2025-11-03,,
SK-3,1.001193,,received,2025-11-03,,
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_is_imported_through_the_engine_and_a_rerun_imports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig {
        store_path: dir.path().join("tablet.db").display().to_string(),
        encryption_key: vec![3; 32],
        server_url: "http://127.0.0.1:9".into(),
        credential: None,
        app_version: None,
        background_policy: None,
        trusted_ca_pem: Vec::new(),
        pinned_keys: Vec::new(),
    })
    .await
    .unwrap();
    engine
        .with_store(|store| {
            Ok(store.import_catalogue(&communesync_core::sample::SampleData::catalogue())?)
        })
        .await
        .unwrap();
    let import = || {
        engine.import_register(
            "can-bo.lan".into(),
            Some("DB-MUONGPHANG".into()),
            REGISTER.as_bytes().to_vec(),
        )
    };
    let summary = import().await.unwrap();
    assert_eq!((summary.imported, summary.already_present), (2, 0));
    assert_eq!(summary.errors.len(), 1);
    assert_eq!(summary.errors[0].line, 4);
    assert_eq!(summary.errors[0].external_id.as_deref(), Some("SK-3"));
    let again = import().await.unwrap();
    assert_eq!((again.imported, again.already_present), (0, 2));

    let id = engine
        .imported_application_id("DB-MUONGPHANG".into(), "SK-1".into())
        .await
        .unwrap()
        .unwrap();
    let marker = engine.import_marker(id).await.unwrap().unwrap();
    assert_eq!(marker.original_reference, "12/HT-2025");
    assert_eq!(
        marker.returned_at,
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_742_198_400_000))
    );

    // A file that is not a register is an invalid input and imports nothing.
    let err = engine
        .import_register("can-bo.lan".into(), None, b"name\nx\n".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommuneSyncError::InvalidInput { .. }),
        "{err:?}"
    );
}
