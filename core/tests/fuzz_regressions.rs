//! Inputs the fuzz targets (`tests/fuzz/`) found crashing, kept as regular tests: each must now
//! be refused with an error, leaving the document as it was.

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use communesync_core::record::{
    Applicant, Application, Author, DeviceId, Record, RecordDoc, RecordId, RecordKind, Source,
    Status, decode_change,
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
        dossier_number: None,
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
        attachments: Vec::new(),
        procedure_version: 0,
        form_values: Default::default(),
        dossier_number_fallback: false,
        clock_events: Vec::new(),
        returned_at: None,
        returned_on_time: None,
        imported: None,
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
    // A clear error, not another hash (or a panic) later.
    assert_refused_as_corrupt(id, RecordKind::CitizenRequest, &changes);
}

/// FINDING (fixed), `changes` target, crash-fbc3ad3b (2026-11-23, from a corpus grown over two
/// runs): a change whose operation counters overflow `u32`; Automerge 0.12 panics while
/// *decoding* it (`OpId::new`, `TryFromIntError`), before anything is applied: the server's push
/// decoding answered 500 and a tablet would panic. Decoding now goes through
/// `record::decode_change`, which catches that panic and refuses the change as corrupt.
#[test]
fn a_change_whose_operation_counter_overflows_is_refused() {
    let input = from_hex(concat!(
        "0101a206ebe9207221adc54d0eb6f6d07ca704856f4a8356958745019c0900101d7c5071a39d4493bbdfa1bf",
        "f822cf240101a0d2afb7a0351b7b226f223a226c616e222c2266223a5b2263726561746564225d7d000a0105",
        "0213110b130d15e4013404421256cd0157d3047003000ce10100000c0501020402057f07ce01090314031503",
        "1600147f000002cd0100000900137b00faffffffcc010100096d096170706c6963616e740861737369676e65",
        "650c636f6d6d756e655f636f64650a637265617465645f627909646f63756d656e7473066475655f61740466",
        "656573026964056e6f7465730e70726f6365647572655f636f64650b72656365697665645f61740673746174",
        "757307616464726573730969645f6e756d626572046e616d650570686f6e650776696c6c6167650664657669",
        "6365076f66666963657200d1017706636f70696573046e616d65086f726967696e616c06636f70696573046e",
        "616d65086f726967696e616c0a616d6f756e745f766e64046e616d65047061696413d101097f0002017a0002",
        "010201040a010300d7010102007fd601020076a60100c6040086016486018603c601c60202a6017ec6043703",
        "00022602167e263604167f3603167f3607167f3607167f2603167e263603167f2604167f260316022606167f",
        "3603167f2604167f2607167f360a16022606167f3603167f2604167f2607167f360b167f2604167f2602167e",
        "263604167f3603167f3603167f3604167f3606167f2602167d2616360316022602167f3602167d2616360316",
        "7f2603167f2604167f2602167e263604167f3603167f36041675361613d60902139604013396010144422d4d",
        "554f4e475048414e47323032372d30312d303430316132303665622d653932302d373232312d616463352d34",
        "6430656236663664303763312e303033303035a0d2afb7a03472656365697665644e68c3a02073e1bb912035",
        "352c2042e1baa36e2043616e67383735343635323031313139c490e1bab76e67204d696e6820436869e1babf",
        "6e3039323930313633373242e1baa36e2043616e6731643763353037312d613339642d343439332d62626466",
        "2d6131626666383232636632346c616ec490c3a32068c6b0e1bb9b6e672064e1baab6e2062e1bb952069756e",
        "672062e1baa36e2073616f2063c4836e2063c6b0e1bb9b632063c3b46e672064c3a26e2e20c490c3a3207468",
        "75206ce1bb87207068c3ad2c206269c3aa6e206c61692073e1bb9120303031323334352e20c490c3a3207468",
        "75206ce1bb87207068c3ad2c206269c3aa6e206c61692073e1bb9120303031323334352e2043c3b46e672064",
        "c3a26e20c491e1bb81206e6768e1bb8b206e68e1baad6e206be1babf74207175e1baa3207175612062c6b075",
        "20c49169e1bb876e2e20c490c3a32067e1bb8d6920c49169e1bb876e2062c3a16f2063c3b46e672064c3a26e",
        "20c491e1babf6e206e68e1baad6e206be1babf74207175e1baa32e0154e1bb9d206b6861692063e1baa57020",
        "6769e1baa579206368e1bba96e67206e68e1baad6e20717579e1bb816e2073e1bbad2064e1bba56e6720c491",
        "e1baa574206ce1baa76e20c491e1baa7750242e1baa36e2073616f2063c4836e2063c6b0e1bb9b632063c3b4",
        "6e672064c3a26eb0ea014ce1bb87207068c3aded01009200856f4a837082f80f0187010156958745399a1b81",
        "340c88da5cd5080695b6c0c1352bb7d654cfb746f77b015a101d7c5071a39d4493bbdfa1bff822cf2402ee01",
        "a5d2afb7a0341a7b226f223a226c616e222c2266223a5b22737461747573225d7d0008150834014202560357",
        "0b7002710273027f06737461747573017f017fb601696e5f70726f67726573737f017f007f0cce00856f4a83",
        "eecad3ed01c301017082f80f075780d8f5051af77b20fcec9eaba61bcdfb246182cd42c092a8ee33101d7c50",
        "71a39d4493bbdfa1bff822cf2403ef01b4d2afb7a034247b226f223a226c616e222c2266223a5b2261737369",
        "676e6565222c226e6f746573225d7d000c0104020411041308150c34024202560a571370047102730200010c",
        "0000010c0900010c0000017ee4010c0a017f0861737369676e6565000c010c0d017e4616022607167e26166d",
        "696e6820c490c3a320746875207068c3ad2e7f010c007f007f02",
    ));
    let (flags, id, changes) = split_input(&input);
    assert_eq!(flags & 6, 0, "a new application");
    assert_refused_as_corrupt(id, RecordKind::Application, &changes);
    assert!(changes.iter().any(|c| decode_change(c).is_err()));
}

/// Untrusted changes that must be refused as corrupt (not accepted, not a panic).
fn assert_refused_as_corrupt(id: RecordId, kind: RecordKind, changes: &[Vec<u8>]) {
    let device = DeviceId(uuid::Uuid::from_bytes([9; 16]));
    match RecordDoc::from_changes(id, kind, changes, device, Source::Untrusted) {
        Ok(_) => panic!("accepted changes that should be refused"),
        Err(err) => assert!(
            matches!(err, communesync_core::Error::Corrupt { .. }),
            "{err}"
        ),
    }
}

/// A change by another device on top of the base application's head, with these operation
/// counters and no operations.
fn crafted_empty_change(base: &mut RecordDoc, start_op: u64) -> Vec<u8> {
    let heads = base.heads();
    let change = automerge::ExpandedChange {
        operations: Vec::new(),
        actor_id: automerge::ActorId::from(&[9u8; 16][..]),
        hash: None,
        seq: 1,
        start_op: std::num::NonZeroU64::new(start_op).unwrap(),
        time: 0,
        message: None,
        deps: heads,
        extra_bytes: Vec::new(),
        author: None,
    };
    automerge::Change::from(change).raw_bytes().to_vec()
}

/// FINDING (fixed), `changes` target, crash-d1f0ff82 (2026-12-06, a corpus grown over several
/// runs; the crashing input itself was empty, the store kept an earlier one): a change whose
/// first operation counter is not one past its dependencies' last. Automerge applies it in
/// memory, but its saved document cannot represent it: the store wrote a snapshot that then
/// failed to load (`max_op is lower than start_op`), so the record read as corrupt on the
/// tablet from then on. Untrusted changes now have their counters checked before they apply
/// (`integrity::history::op_counters_follow`, the server's rule too).
#[test]
fn a_change_whose_operation_counters_do_not_follow_its_dependencies_is_refused() {
    let (id, saved) = base_document();
    let device = DeviceId(uuid::Uuid::from_bytes([9; 16]));
    let mut doc = RecordDoc::load(id, RecordKind::Application, &saved, device).unwrap();
    let last_op = doc
        .changes_since(&[])
        .iter()
        .map(automerge::Change::max_op)
        .max()
        .unwrap();
    for start_op in [1, last_op, last_op + 2, last_op + 1000] {
        let crafted = crafted_empty_change(&mut doc, start_op);
        let before = doc.record().unwrap();
        let heads = doc.heads();
        assert!(
            doc.apply_changes(std::slice::from_ref(&crafted), Source::Untrusted)
                .is_err(),
            "start_op {start_op} after {last_op}"
        );
        assert_eq!(doc.heads(), heads);
        assert_eq!(doc.record().unwrap(), before);
    }
    // The same change with the counter Automerge itself would give it applies, and the
    // document saved with it loads and reads.
    let honest = crafted_empty_change(&mut doc, last_op + 1);
    doc.apply_changes(std::slice::from_ref(&honest), Source::Untrusted)
        .unwrap();
    let reloaded = RecordDoc::load(id, RecordKind::Application, &doc.save(), device).unwrap();
    assert_eq!(reloaded.record().unwrap(), doc.record().unwrap());
}

/// The store path of the same finding: a refused change leaves the stored record readable.
#[test]
fn a_store_never_keeps_a_record_it_cannot_read_back() {
    use communesync_core::store::{DeviceStore, StoreConfig};
    let dir = tempfile::tempdir().unwrap();
    let (id, saved) = base_document();
    let device = DeviceId(uuid::Uuid::from_bytes([9; 16]));
    let mut base = RecordDoc::load(id, RecordKind::Application, &saved, device).unwrap();
    let all: Vec<Vec<u8>> = base
        .changes_since(&[])
        .into_iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect();
    let crafted = crafted_empty_change(&mut base, 1);
    let path = dir.path().join("store.db");
    {
        let mut store = DeviceStore::open(StoreConfig::new(&path)).unwrap();
        store
            .apply_remote_changes(id, RecordKind::Application, &all)
            .unwrap();
        assert!(
            store
                .apply_remote_changes(id, RecordKind::Application, &[crafted])
                .is_err()
        );
    }
    // Reopened, so that the record is read from its stored snapshot, not a cache.
    let mut store = DeviceStore::open(StoreConfig::new(&path)).unwrap();
    assert_eq!(store.get(id).unwrap(), base.record().unwrap());
}

/// A change by another device on top of `base` that adds a field holding `depth` maps nested in
/// each other.
fn nested_maps(base: &[u8], depth: usize) -> Vec<u8> {
    use automerge::transaction::Transactable;
    let mut doc = automerge::AutoCommit::load(base)
        .unwrap()
        .with_actor(automerge::ActorId::from(&[9u8; 16][..]));
    let heads = doc.get_heads();
    let mut obj = doc
        .put_object(automerge::ROOT, "x", automerge::ObjType::Map)
        .unwrap();
    for _ in 1..depth {
        obj = doc.put_object(&obj, "x", automerge::ObjType::Map).unwrap();
    }
    doc.commit();
    let changes = doc.get_changes(&heads);
    assert_eq!(changes.len(), 1);
    changes[0].raw_bytes().to_vec()
}

/// FINDING (fixed), `changes` target, CI run of 2026-12-06 (`deadly signal` without a message:
/// a stack overflow, which libFuzzer reports as a signal): a record reads only the fields it
/// knows, so a change could add a field holding maps nested thousands deep (2 KB for a
/// thousand), and `RecordDoc::conflicts`, which walks the whole document, recursed into them
/// until the stack overflowed. On the server the read model calls it for every push: one
/// crafted push aborted the whole server. A record's document shape is now bounded
/// (`integrity::shape`, checked when untrusted changes apply), and the walk stops at that depth.
#[test]
fn objects_nested_past_the_records_shape_are_refused() {
    use communesync_core::integrity::shape::MAX_DEPTH;
    let (id, saved) = base_document();
    let device = DeviceId(uuid::Uuid::from_bytes([9; 16]));
    for depth in [MAX_DEPTH + 1, 1_000, 20_000] {
        let crafted = nested_maps(&saved, depth);
        let mut doc = RecordDoc::load(id, RecordKind::Application, &saved, device).unwrap();
        let before = doc.record().unwrap();
        let heads = doc.heads();
        let err = doc
            .apply_changes(std::slice::from_ref(&crafted), Source::Untrusted)
            .unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{depth}: {err}");
        assert_eq!(doc.heads(), heads);
        assert_eq!(doc.record().unwrap(), before);
        assert!(doc.conflicts().is_empty());
    }
    // Up to the bound, an unknown field is kept (a newer app's), and the document walks.
    let within = nested_maps(&saved, MAX_DEPTH);
    let mut doc = RecordDoc::load(id, RecordKind::Application, &saved, device).unwrap();
    doc.apply_changes(std::slice::from_ref(&within), Source::Untrusted)
        .unwrap();
    assert!(doc.conflicts().is_empty());
    // The same change from the server's feed (trusted: the server checked it) still cannot make
    // the walk recurse without bound.
    let deep = nested_maps(&saved, 20_000);
    let mut doc = RecordDoc::load(id, RecordKind::Application, &saved, device).unwrap();
    doc.apply_changes(std::slice::from_ref(&deep), Source::Server)
        .unwrap();
    assert!(doc.conflicts().is_empty());

    // Through a device store, as a pull would bring it: refused, the record stays as it was.
    use communesync_core::store::{DeviceStore, StoreConfig};
    let dir = tempfile::tempdir().unwrap();
    let mut store = DeviceStore::open(StoreConfig::new(dir.path().join("store.db"))).unwrap();
    let mut base = RecordDoc::load(id, RecordKind::Application, &saved, device).unwrap();
    let all: Vec<Vec<u8>> = base
        .changes_since(&[])
        .into_iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect();
    store
        .apply_remote_changes(id, RecordKind::Application, &all)
        .unwrap();
    let crafted = nested_maps(&saved, 1_000);
    assert!(
        store
            .apply_remote_changes(id, RecordKind::Application, &[crafted])
            .is_err()
    );
    assert_eq!(store.get(id).unwrap(), base.record().unwrap());
    assert!(store.conflicts(id).unwrap().is_empty());
}
