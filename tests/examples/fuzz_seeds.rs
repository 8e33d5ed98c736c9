//! Writes the seed inputs of the fuzz targets (`tests/fuzz/seeds/<target>/`): valid sync bodies,
//! real Automerge changes of records, and import lines, in each target's input layout (see the
//! doc comment of each target in `tests/fuzz/fuzz_targets/`).
//!
//! `cargo run -p communesync-tests --example fuzz_seeds -- tests/fuzz/seeds`

// A generator run by hand: a failure should stop it where it happened.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use communesync_core::codec::DocCodec;
use communesync_core::protocol::{
    FeedDoc, PROTOCOL_V2, PROTOCOL_VERSION, PullRequest, PushDoc, SyncRequest, SyncResponse,
};
use communesync_core::record::{
    Applicant, Application, Author, DeviceId, Record, RecordDoc, RecordId, RecordKind, Status,
};
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, StoreConfig};

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// The same base application the `changes` target builds.
fn base() -> (RecordId, RecordDoc) {
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
    let doc = RecordDoc::create(&Record::Application(app), device, "lan", 0).unwrap();
    (id, doc)
}

fn changes_input(flags: u8, id: RecordId, changes: &[Vec<u8>]) -> Vec<u8> {
    let mut input = vec![flags];
    input.extend_from_slice(id.as_bytes());
    for change in changes {
        input.extend_from_slice(&u16::try_from(change.len()).unwrap().to_le_bytes());
        input.extend_from_slice(change);
    }
    input
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tests/fuzz/seeds".into());
    let out = Path::new(&out);
    let dir = tempfile::tempdir().unwrap();
    let mut store = DeviceStore::open(StoreConfig::new(dir.path().join("seeds.db"))).unwrap();
    store.import_catalogue(&SampleData::catalogue()).unwrap();
    let mut sample = SampleData::new(2024);
    let mut codec = DocCodec::new().unwrap();

    // Records with histories: created, transitioned, notes edited, assigned.
    let app = store
        .create_application("lan", sample.application("DB-MUONGPHANG", None))
        .unwrap();
    store.transition(app.id, "lan", Status::InProgress).unwrap();
    store
        .update_application(app.id, "lan", |a| {
            a.notes.push_str(" Đã thu phí.");
            a.assignee = Some("minh".into());
        })
        .unwrap();
    let request = store
        .create_citizen_request("lan", sample.citizen_request("DB-MUONGPHANG"))
        .unwrap();
    let app_changes = store.changes_since(app.id, &[]).unwrap();
    let request_changes = store.changes_since(request.id, &[]).unwrap();

    // wire: mode byte (bit 0: response; bit 1: the message inside the body; bit 2: protocol 2's
    // response layout), then a body or the message inside it.
    let sync_request = SyncRequest {
        protocol: PROTOCOL_VERSION,
        device_time: 1_750_000_000_000,
        push: vec![
            PushDoc {
                id: None,
                kind: RecordKind::Application,
                changes: app_changes.clone(),
            },
            PushDoc {
                id: Some(request.id),
                kind: RecordKind::CitizenRequest,
                changes: request_changes.clone(),
            },
        ],
        pull: Some(PullRequest {
            cursor: 17,
            max_bytes: 512 * 1024,
        }),
        catalogue_version: 2,
        pending_docs: 3,
        extensions: Default::default(),
    };
    let response = SyncResponse {
        protocol: PROTOCOL_VERSION,
        server_time: 1_750_000_000_000,
        missing_deps: vec![1],
        refused: vec![communesync_core::protocol::Refused {
            position: 0,
            code: "sequence".to_owned(),
            message: "change 3 of its author does not follow its author's change 1".to_owned(),
        }],
        feed: vec![FeedDoc {
            id: Some(app.id),
            kind: RecordKind::Application,
            changes: app_changes.clone(),
            received_delta: 1_750_000_000_123,
        }],
        next_cursor: 42,
        more: true,
        catalogue: Some(communesync_core::protocol::CatalogueUpdate {
            version: 3,
            json: r#"{"procedures":[{"code":"1.001193","name":"Đăng ký khai sinh","processing_days":1}],"holidays":["2025-09-02"]}"#.into(),
        }),
        extensions: Default::default(),
    };
    let empty = SyncRequest {
        push: Vec::new(),
        ..sync_request.clone()
    };
    // Protocol 2 (accepted for an overlap: its requests share version 3's layout, its responses
    // have no refusals) and protocol 1 (refused: upgrade required).
    let request_v2 = SyncRequest {
        protocol: PROTOCOL_V2,
        ..sync_request.clone()
    };
    let request_v1 = SyncRequest {
        protocol: 1,
        ..empty.clone()
    };
    let response_v2 = SyncResponse {
        protocol: PROTOCOL_V2,
        refused: Vec::new(),
        ..response.clone()
    };
    for (name, mode, body) in [
        ("request", 0u8, sync_request.encode(&mut codec).unwrap()),
        ("request-empty", 0, empty.encode(&mut codec).unwrap()),
        ("request-v2", 0, request_v2.encode(&mut codec).unwrap()),
        ("request-v1", 0, request_v1.encode(&mut codec).unwrap()),
        ("response", 1, response.encode(&mut codec).unwrap()),
        (
            "response-v2",
            1 | 4,
            response_v2.encode(&mut codec).unwrap(),
        ),
    ] {
        let mut framed = vec![mode];
        framed.extend_from_slice(&body);
        write(out, "wire", name, &framed);
        let mut inner = vec![mode | 2];
        inner.extend_from_slice(&codec.decode_frame(&body, 1 << 24).unwrap());
        write(out, "wire", &format!("{name}-message"), &inner);
    }

    // changes: new records (flags 0 and 1: with checksum repair), an application read as the
    // other kind, and edits on top of the target's base application (flag 4), also through a
    // store (flag 8).
    write(
        out,
        "changes",
        "application",
        &changes_input(0, app.id, &app_changes),
    );
    write(
        out,
        "changes",
        "application-fix",
        &changes_input(1, app.id, &app_changes),
    );
    write(
        out,
        "changes",
        "request",
        &changes_input(2, request.id, &request_changes),
    );
    write(
        out,
        "changes",
        "request-store",
        &changes_input(8 | 2, request.id, &request_changes),
    );
    let (base_id, mut base_doc) = base();
    let base_heads = base_doc.heads();
    let before = base_doc.application().unwrap();
    let mut after = before.clone();
    after.status = Status::InProgress;
    after.notes.push_str(" Chờ bổ sung.");
    after.assignee = Some("minh".into());
    base_doc.edit(&before, &after, "minh", 5).unwrap();
    let edits: Vec<Vec<u8>> = base_doc
        .changes_since(&base_heads)
        .into_iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect();
    write(
        out,
        "changes",
        "edit-base",
        &changes_input(4, base_id, &edits),
    );
    write(
        out,
        "changes",
        "edit-base-store",
        &changes_input(4 | 8 | 1, base_id, &edits),
    );

    // import: JSON lines as a commune's register would have them.
    let mut lines = String::new();
    for _ in 0..3 {
        let new = sample.application("DB-MUONGPHANG", Some(1_750_000_000_000));
        lines.push_str(&serde_json::to_string(&new).unwrap());
        lines.push('\n');
    }
    write(out, "import", "register", lines.as_bytes());
    let one = serde_json::to_string(&sample.application("DB-NATAU", None)).unwrap();
    write(out, "import", "one", one.as_bytes());
    write(
        out,
        "import",
        "minimal",
        r#"{"commune_code":"DB-MUONGPHANG","procedure_code":"1.001193","applicant":{"name":"Lò Văn Pọm","id_number":"","phone":"","address":"","village":""}}"#
            .as_bytes(),
    );
    eprintln!("seeds written to {}", out.display());
}
