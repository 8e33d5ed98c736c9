//! Inputs the fuzz targets (`tests/fuzz/`) found crashing, kept as regular tests: each must now
//! be refused with an error, leaving the document as it was.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use communesync_core::record::{
    Applicant, Application, Author, DeviceId, Record, RecordDoc, RecordId, RecordKind, Source,
    Status,
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
    assert!(
        doc.apply_changes(std::slice::from_ref(&input), Source::Untrusted)
            .is_err()
    );
    assert_eq!(doc.heads(), heads);
    assert_eq!(doc.record().unwrap(), before);
    // And as the first changes of a record nobody has seen.
    assert!(
        RecordDoc::from_changes(
            id,
            RecordKind::Application,
            &[input],
            device,
            Source::Untrusted
        )
        .is_err()
    );
}

/// Splits a `changes` target input: flags, record id, then (u16 little-endian length, bytes).
fn split_input(input: &[u8]) -> (u8, RecordId, Vec<Vec<u8>>) {
    let id = RecordId(uuid::Uuid::from_slice(&input[1..17]).unwrap());
    let mut rest = &input[17..];
    let mut changes = Vec::new();
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let take = len.min(rest.len() - 2);
        changes.push(rest[2..2 + take].to_vec());
        rest = &rest[2 + take..];
    }
    (input[0], id, changes)
}

/// FINDING (fixed), `changes` target, crash-b0c37f11: a change that applies and hydrates, but
/// that Automerge 0.12 rebuilds (it keeps operations, not bytes) with another hash: a
/// non-canonical encoding. Debug builds then panic in `collector.rs` with `MissingDep` on
/// `history()` and any `get_changes` (so pushes); release builds give the change another hash
/// there, which later changes do not depend on. Pushed by a hostile tablet, the server would
/// store it and every tablet of the commune would inherit it. `apply_decoded` on untrusted
/// changes now rebuilds them and refuses any that does not read back as sent, in every build.
#[test]
fn accepted_changes_always_have_a_readable_history() {
    let input = from_hex(concat!(
        "0a01a206ebe93c707ebfa099fe6fee635df001856f4a834ab6207101e50300101d7c5071a39d4493bbdfa1bf",
        "f822cf240101bcd2afb7a0341b7b226f223a226c616e222c2266223a5b2263726561746564225d7d00080104",
        "02041589013401420a561757e6017002000c0a00000c0204720861737369676e65650863617465676f72790c",
        "636f6d6d756e655f636f64650a637265617465645f62790b6465736372697074696f6e026964056e6f746573",
        "0b72656365697665645f6174107265706f727465725f636f6e746163740d7265706f727465725f6e616d6506",
        "7374617475730776696c6c61676506646576696365076f6666696365720e03017f0002017f040701720046d6",
        "0100960ac6040064a601e6018601b602c60436726f616444422d4d554f4e475048414e47c490c6b0e1bb9d6e",
        "672076c3a06f2062e1baa36e2062e1bb8b2073e1baa174206ce1bb9f20736175206dc6b061206ce1bb9b6e2c",
        "207865206d20c3a16b7968c3b46e6720c4916920c491c6b0e1bba3632e30316132303665622d653933632d37",
        "3037652d626661302d393966653666656536333564bcd2afb7a0343039343737313533313856c5a9204d696e",
        "682044c3ad6e68726563656976656442e1baa36e204e6f6f6e67204c75e1bb916e6731643763353037312d61",
        "3339642d343439332d626264662d6131626666383232636632346c616e0e00",
    ));
    let (flags, id, changes) = split_input(&input);
    assert_eq!(flags & 2, 2, "a citizen request");
    let device = DeviceId(uuid::Uuid::from_bytes([9; 16]));
    match RecordDoc::from_changes(
        id,
        RecordKind::CitizenRequest,
        &changes,
        device,
        Source::Untrusted,
    ) {
        Ok(_) => panic!("accepted a change that does not read back as it was sent"),
        // A clear error, not another hash (or a panic) later.
        Err(err) => assert!(
            matches!(err, communesync_core::Error::Corrupt { .. }),
            "{err}"
        ),
    }
}
