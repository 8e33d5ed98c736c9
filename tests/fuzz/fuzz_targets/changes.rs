//! Automerge changes from another replica, as the server validates them and a tablet applies
//! them: `RecordDoc::from_changes` (a record not seen before), `RecordDoc::apply_changes` on an
//! existing record, and `DeviceStore::apply_remote_changes` (SQLite, projections, search).
//! Whatever the bytes, the result is a valid record or an error, never a panic; a refused batch
//! leaves an existing document as it was.
//!
//! Input: a flags byte, a 16-byte record id, then changes as (u16 little-endian length, bytes).
//! Flags: bit 0 recomputes each change's checksum (so that mutations reach the change parser
//! instead of failing the checksum), bit 1 reads the record as a citizen request, bit 2 applies
//! the changes on top of an existing application, bit 3 also goes through a device store.
#![no_main]

use std::sync::{Mutex, OnceLock};

use communesync_core::record::{
    Applicant, Application, Author, DeviceId, Record, RecordDoc, RecordId, RecordKind, Source,
    Status,
};
use communesync_core::store::{DeviceStore, StoreConfig};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// Rewrites an Automerge chunk's checksum to match its contents.
fn fix_checksum(change: &mut [u8]) {
    if change.len() < 9 || change[..4] != MAGIC {
        return;
    }
    // Type byte, LEB128 length, data: the checksum covers exactly those.
    let mut end = change.len();
    let (mut len, mut shift, mut i) = (0u64, 0u32, 9usize);
    while i < change.len() && shift < 63 {
        len |= u64::from(change[i] & 0x7f) << shift;
        shift += 7;
        i += 1;
        if change[i - 1] & 0x80 == 0 {
            if let Some(stop) = usize::try_from(len).ok().and_then(|l| i.checked_add(l)) {
                end = end.min(stop);
            }
            break;
        }
    }
    let digest = Sha256::digest(&change[8..end]);
    change[4..8].copy_from_slice(&digest[..4]);
}

fn base_document() -> &'static (RecordId, Vec<u8>) {
    static BASE: OnceLock<(RecordId, Vec<u8>)> = OnceLock::new();
    BASE.get_or_init(|| {
        let id = RecordId(uuid_from(&[7; 16]));
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
            due_at: "2025-06-17".parse().expect("date"),
            documents: Vec::new(),
            fees: Vec::new(),
            status: Status::Received,
            assignee: None,
            notes: "Đã nhận hồ sơ.".into(),
            created_by: Author {
                device: uuid_from(&[1; 16]),
                officer: "lan".into(),
            },
            dossier_number_fallback: false,
            attachments: Vec::new(),
            procedure_version: 0,
            form_values: Default::default(),
            clock_events: Vec::new(),
            returned_at: None,
            returned_on_time: None,
            imported: None,
        };
        let mut doc = RecordDoc::create(
            &Record::Application(app),
            DeviceId(uuid_from(&[1; 16])),
            "lan",
            0,
        )
        .expect("base document");
        (id, doc.save())
    })
}

fn uuid_from(bytes: &[u8; 16]) -> uuid::Uuid {
    uuid::Uuid::from_bytes(*bytes)
}

fn store() -> &'static Mutex<DeviceStore> {
    static STORE: OnceLock<Mutex<DeviceStore>> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        Mutex::new(DeviceStore::open(StoreConfig::new(dir.join("fuzz.db"))).expect("store"))
    })
}

/// libfuzzer-sys aborts at any panic, even one the code under test catches. Core catches
/// Automerge's panics on inconsistent changes (`RecordDoc::apply_decoded`) and refuses the
/// input: let those unwind to it (changes whose history Automerge cannot walk included, found
/// here and fixed: `core/tests/fuzz_regressions.rs::accepted_changes_always_have_a_readable_history`).
/// Any panic that escapes core, Automerge's included, aborts: a crash.
fn let_core_catch_automerge_panics() {
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(at) = info.location().filter(|l| l.file().contains("/automerge-")) {
            let message = info.payload_as_str().unwrap_or("");
            // Kept so that a panic core does not catch is named before the abort.
            *LAST_AUTOMERGE_PANIC
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((
                format!("{at}: {message}"),
                std::backtrace::Backtrace::force_capture(),
            ));
            if std::env::var_os("FUZZ_BACKTRACE").is_some() {
                eprintln!("automerge panicked at {at}: {message}");
                eprintln!("{}", std::backtrace::Backtrace::force_capture());
            }
            return;
        }
        abort(info);
    }));
}

/// The last Automerge panic the hook let unwind, with its backtrace.
static LAST_AUTOMERGE_PANIC: Mutex<Option<(String, std::backtrace::Backtrace)>> = Mutex::new(None);

fuzz_target!(init: let_core_catch_automerge_panics(), |data: &[u8]| {
    *LAST_AUTOMERGE_PANIC
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    if std::panic::catch_unwind(|| run(data)).is_err() {
        if let Some((at, backtrace)) = LAST_AUTOMERGE_PANIC
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            eprintln!("an Automerge panic escaped core: {at}\n{backtrace}");
        }
        std::process::abort();
    }
});

fn run(data: &[u8]) {
    if data.len() < 17 {
        return;
    }
    let flags = data[0];
    let mut id_bytes = [0u8; 16];
    id_bytes.copy_from_slice(&data[1..17]);
    let mut rest = &data[17..];
    let mut changes: Vec<Vec<u8>> = Vec::new();
    while rest.len() >= 2 && changes.len() < 64 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let take = len.min(rest.len() - 2);
        let mut change = rest[2..2 + take].to_vec();
        if flags & 1 == 1 {
            fix_checksum(&mut change);
        }
        changes.push(change);
        rest = &rest[2 + take..];
    }
    let kind = if flags & 2 == 0 {
        RecordKind::Application
    } else {
        RecordKind::CitizenRequest
    };
    let device = DeviceId(uuid_from(&[9; 16]));
    let id = if flags & 4 == 0 {
        let id = RecordId(uuid_from(&id_bytes));
        if let Ok((mut doc, record)) =
            RecordDoc::from_changes(id, kind, &changes, device, Source::Untrusted)
        {
            assert_eq!(record.id(), id);
            assert_eq!(doc.record().expect("accepted record reads"), record);
            let _ = doc.conflicts();
            let _ = doc.history();
            // Saved and loaded, it is the same record.
            let saved = doc.save();
            let loaded = RecordDoc::load(id, kind, &saved, device).expect("accepted record loads");
            assert_eq!(loaded.record().expect("loaded record reads"), record);
        }
        id
    } else {
        let (id, saved) = base_document();
        let mut doc = RecordDoc::load(*id, RecordKind::Application, saved, device).expect("base");
        let before = doc.record().expect("base reads");
        let heads = doc.heads();
        match doc.apply_changes(&changes, Source::Untrusted) {
            Ok(record) => {
                assert_eq!(doc.record().expect("accepted record reads"), record);
                let _ = doc.conflicts();
            }
            Err(_) => {
                // Refused: the document is as it was.
                assert_eq!(doc.heads(), heads);
                assert_eq!(doc.record().expect("base still reads"), before);
            }
        }
        *id
    };
    if flags & 8 == 8 {
        let mut store = store()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if flags & 4 == 4 && !store.contains(id).expect("contains") {
            let (_, saved) = base_document();
            let base = RecordDoc::load(id, RecordKind::Application, saved, device).expect("base");
            let mut base = base;
            let all: Vec<Vec<u8>> = base
                .changes_since(&[])
                .into_iter()
                .map(|c| c.raw_bytes().to_vec())
                .collect();
            store
                .apply_remote_changes(id, RecordKind::Application, &all)
                .expect("base record applies");
        }
        if store.apply_remote_changes(id, kind, &changes).is_ok()
            && store.contains(id).expect("contains")
        {
            let record = store.get(id).expect("an applied record reads");
            let _ = store.conflicts(id).expect("conflicts");
            let _ = store.history(id).expect("history");
            if let Record::Application(app) = record {
                let _ = store.search(&app.applicant.name, 5).expect("search");
            }
        }
    }
}
