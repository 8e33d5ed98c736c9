use std::sync::Arc;

use super::*;
use crate::catalogue::Procedure;
use crate::clock::ManualClock;
use crate::record::{Applicant, NewApplication};
use crate::store::StoreConfig;

const OFFICER: &str = "lan";
// 2026-12-06 10:00 in Vietnam.
const NOW: i64 = 1_796_526_000_000;

fn open(path: &std::path::Path) -> DeviceStore {
    let mut store =
        DeviceStore::open_with_clock(StoreConfig::new(path), Arc::new(ManualClock::new(NOW)))
            .unwrap();
    store
        .import_catalogue(&[Procedure::new(
            "1.001193",
            "Đăng ký khai sinh",
            crate::catalogue::ProcessingTime::WorkingDays(3),
        )])
        .unwrap();
    store
}

fn intake(store: &mut DeviceStore, name: &str) -> Application {
    store
        .create_application(
            OFFICER,
            NewApplication {
                commune_code: "01234".into(),
                procedure_code: "1.001193".into(),
                applicant: Applicant {
                    name: name.into(),
                    ..Applicant::default()
                },
                ..NewApplication::default()
            },
        )
        .unwrap()
}

fn block(id: u64, first: u64, last: u64) -> GrantedBlock {
    GrantedBlock {
        id,
        agency: "01234".into(),
        format: crate::numbering::DEFAULT_FORMAT.into(),
        first,
        last,
    }
}

fn grant(blocks: Vec<GrantedBlock>) -> NumberGrant {
    NumberGrant {
        format: crate::numbering::DEFAULT_FORMAT.into(),
        agency: "01234".into(),
        blocks,
    }
}

#[test]
fn intake_takes_block_numbers_in_order_then_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir.path().join("s.db"));
    assert_eq!(
        store
            .apply_number_grant(&grant(vec![block(7, 41, 42)]))
            .unwrap(),
        1
    );
    let a = intake(&mut store, "Lò Thị Hương");
    let b = intake(&mut store, "Lò Văn Pọm");
    let c = intake(&mut store, "Quàng Thị Dung");
    let d = intake(&mut store, "Cà Văn Sơn");
    assert_eq!(a.dossier_number.as_deref(), Some("01234-261206-000041"));
    assert!(!a.dossier_number_fallback);
    assert_eq!(b.dossier_number.as_deref(), Some("01234-261206-000042"));
    // The block is used up: fallbacks carry the serial (the first block's id) and a counter.
    assert_eq!(c.dossier_number.as_deref(), Some("01234-261206-D7-0"));
    assert!(c.dossier_number_fallback);
    assert_eq!(d.dossier_number.as_deref(), Some("01234-261206-D7-1"));
    let state = store.number_state().unwrap();
    assert_eq!(state.blocks, vec![BlockUsage { block: 7, next: 43 }]);
    assert_eq!(state.remaining, 0);
    assert_eq!(state.recent_intake, 4);
    assert_eq!(state.fallback_used, 2);
    assert_eq!(store.number_uses().unwrap().len(), 4);
    // Found by exact lookup and by text search.
    assert_eq!(
        store.application_by_number("01234-261206-000042").unwrap(),
        Some(b.clone())
    );
    assert_eq!(
        store.application_by_number("01234-261206-000043").unwrap(),
        None
    );
    let hits = store.search("01234-261206-000042", 10).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, b.id);
    // Survives a reopen.
    drop(store);
    let mut store = open(&dir.path().join("s.db"));
    assert_eq!(store.get_application(a.id).unwrap(), a);
    assert_eq!(
        intake(&mut store, "x").dossier_number.as_deref(),
        Some("01234-261206-D7-2")
    );
}

#[test]
fn a_store_never_granted_a_block_falls_back_on_its_device_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir.path().join("s.db"));
    let a = intake(&mut store, "Lò Thị Hương");
    let expected = format!("01234-261206-U{}-0", store.device_id().0.simple());
    assert_eq!(a.dossier_number.as_deref(), Some(expected.as_str()));
    assert!(a.dossier_number_fallback);
}

#[test]
fn grants_are_idempotent_and_bad_or_overlapping_blocks_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir.path().join("s.db"));
    assert_eq!(
        store
            .apply_number_grant(&grant(vec![block(3, 1, 50)]))
            .unwrap(),
        1
    );
    // Offered again (the answer was lost): nothing added.
    assert_eq!(
        store
            .apply_number_grant(&grant(vec![block(3, 1, 50)]))
            .unwrap(),
        0
    );
    let bad = vec![
        block(4, 50, 60),                // overlaps block 3
        block(5, 70, 60),                // empty
        block(6, 1, MAX_BLOCK_SIZE + 1), // too large
        GrantedBlock {
            agency: "01-234".into(),
            ..block(8, 100, 110)
        },
        GrantedBlock {
            format: "{seq}".into(),
            ..block(9, 100, 110)
        },
    ];
    assert_eq!(store.apply_number_grant(&grant(bad)).unwrap(), 0);
    // Another agency's counter may hold the same range.
    let other = GrantedBlock {
        agency: "05678".into(),
        ..block(10, 1, 50)
    };
    assert_eq!(store.apply_number_grant(&grant(vec![other])).unwrap(), 1);
    assert_eq!(store.number_blocks().unwrap().len(), 2);
    assert_eq!(store.number_state().unwrap().remaining, 100);
}

#[test]
fn the_number_cannot_be_changed_on_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir.path().join("s.db"));
    let a = intake(&mut store, "Lò Thị Hương");
    for edit in [
        (|a: &mut Application| a.dossier_number = Some("01234-261206-999999".into()))
            as fn(&mut Application),
        |a| a.dossier_number = None,
        |a| a.dossier_number_fallback = false,
    ] {
        let err = store.update_application(a.id, OFFICER, edit).unwrap_err();
        assert!(err.to_string().contains("dossier_number"), "{err}");
    }
    assert_eq!(store.get_application(a.id).unwrap(), a);
}

#[test]
fn a_failed_intake_takes_no_number() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir.path().join("s.db"));
    store
        .apply_number_grant(&grant(vec![block(1, 1, 10)]))
        .unwrap();
    let err = store.create_application(
        OFFICER,
        NewApplication {
            commune_code: "01234".into(),
            procedure_code: "1.001193".into(),
            ..NewApplication::default()
        },
    );
    assert!(err.is_err());
    assert_eq!(store.number_state().unwrap().blocks[0].next, 1);
    assert!(store.number_uses().unwrap().is_empty());
    assert_eq!(
        intake(&mut store, "a").dossier_number.as_deref(),
        Some("01234-261206-000001")
    );
}
