//! Inputs the fuzz targets (`tests/fuzz/`) found crashing, kept as regular tests: each must now
//! be refused with an error, leaving the document as it was.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use communesync_core::record::{
    Applicant, Application, Author, DeviceId, Record, RecordDoc, RecordId, RecordKind, Status,
};

fn from_hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// The base application of the `changes` fuzz target.
fn base_document() -> (RecordId, Vec<u8>) {
    let id = RecordId(uuid::Uuid::from_bytes([7; 16]));
    let app = Application {
        id,
        commune_code: "DB-MUONGPHANG".into(),
        procedure_code: "1.001193".into(),
        applicant: Applicant {
            name: "Lò Thị Hương".into(),
            village: "Bản Phăng".into(),
            ..Applicant::default()
        },
        received_at: 1_750_000_000_000,
        due_at: "2025-06-17".parse().unwrap(),
        documents: Vec::new(),
        fees: Vec::new(),
        status: Status::Received,
        assignee: None,
        notes: "Đã nhận hồ sơ.".into(),
        created_by: Author {
            device: uuid::Uuid::from_bytes([1; 16]),
            officer: "lan".into(),
        },
    };
    let device = DeviceId(uuid::Uuid::from_bytes([1; 16]));
    let mut doc = RecordDoc::create(&Record::Application(app), device, "lan", 0).unwrap();
    (id, doc.save())
}

/// `changes` target, crash-0dfb74c4: a change whose operations name an actor index past its
/// actor table made Automerge 0.12 panic (`InvalidActorIndex`) inside `apply_changes`. A hostile
/// tablet could send it: the server answered 500 instead of refusing it.
#[test]
fn a_change_with_an_out_of_range_actor_index_is_refused() {
    let input = from_hex(concat!(
        "856f4a8369d4573e01df0101880ccbdb7f164e5007f0f6275fa2ea1cb510a4ace51c32a04bf7ae4df37554",
        "c310010101010101010101010101010101010222052e7b226f223a226d696e68222c2266223a5b22617373",
        "69676e6565222c226e6f746573222c22737461747573225d7d000c0104020411041307151334024202560e",
        "572070047102730300020d0000020d0900020d0000027e21030b017e067374617475730861737369676e65",
        "65000d020d0f017eb6014603167f3602167f360616696e5f70726f67726573736d696e027e21030b017e06",
        "737461747573086e672e02010d0002020d0000",
    ));
    let (id, saved) = base_document();
    let device = DeviceId(uuid::Uuid::from_bytes([9; 16]));
    let mut doc = RecordDoc::load(id, RecordKind::Application, &saved, device).unwrap();
    let before = doc.record().unwrap();
    let heads = doc.heads();
    assert!(doc.apply_changes(std::slice::from_ref(&input)).is_err());
    assert_eq!(doc.heads(), heads);
    assert_eq!(doc.record().unwrap(), before);
    // And as the first changes of a record nobody has seen.
    assert!(RecordDoc::from_changes(id, RecordKind::Application, &[input], device).is_err());
}
