use std::sync::Arc;

use super::*;
use crate::catalogue::{Procedure, ProcessingTime};
use crate::clock::ManualClock;
use crate::record::{Applicant, NewApplication, Record, RecordKind};
use crate::store::{DeviceStore, EncryptionKey, StoreConfig};
use crate::{Error, record::RecordId};

const OFFICER: &str = "lan.nguyen";
const MONDAY_9AM: i64 = 1_795_399_200_000;

fn open_at(path: std::path::PathBuf, key: Option<EncryptionKey>) -> DeviceStore {
    open_with(path, key, ManualClock::new(MONDAY_9AM))
}

fn open_with(
    path: std::path::PathBuf,
    key: Option<EncryptionKey>,
    clock: ManualClock,
) -> DeviceStore {
    let mut config = StoreConfig::new(path);
    config.key = key;
    let mut store = DeviceStore::open_with_clock(config, Arc::new(clock)).unwrap();
    store
        .import_catalogue(&[Procedure::new(
            "1.001193",
            "Đăng ký khai sinh",
            ProcessingTime::WorkingDays(3),
        )])
        .unwrap();
    store
}

fn open(dir: &tempfile::TempDir, name: &str) -> DeviceStore {
    open_at(dir.path().join(name), None)
}

fn new_app(store: &mut DeviceStore) -> RecordId {
    store
        .create_application(
            OFFICER,
            NewApplication {
                commune_code: "DB-MUONGPHANG".into(),
                procedure_code: "1.001193".into(),
                applicant: Applicant {
                    name: "Nguyễn Thị Hương".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .unwrap()
        .id
}

fn jpeg(caption: &str) -> NewAttachment {
    NewAttachment {
        mime: "image/jpeg".into(),
        caption: caption.into(),
        document: Some("Tờ khai đăng ký khai sinh".into()),
        page: 1,
        category: AttachmentCategory::Document,
    }
}

/// Bytes that are not all alike, `len` long (more than one stored row for the tests that
/// need several).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn contents(store: &DeviceStore) -> i64 {
    store
        .connection()
        .query_row("SELECT count(*) FROM attachment_contents", [], |r| r.get(0))
        .unwrap()
}

fn open_bytes(store: &mut DeviceStore, sha256: &str) -> Vec<u8> {
    let mut out = Vec::new();
    store.open_attachment(sha256, &mut out).unwrap();
    out
}

#[test]
fn attach_list_open_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = pattern(3 * STORE_CHUNK + 123, 1);
    let (id, reference) = {
        let mut store = open(&dir, "a.db");
        let id = new_app(&mut store);
        let reference = store
            .attach_bytes(id, OFFICER, jpeg("Tờ khai trang 1"), &bytes)
            .unwrap();
        assert_eq!(reference.sha256, sha256_hex(&bytes));
        assert_eq!(reference.size, bytes.len() as u64);
        assert_eq!(store.attachments(id).unwrap(), vec![reference.clone()]);
        assert_eq!(open_bytes(&mut store, &reference.sha256), bytes);
        (id, reference)
    };
    // Reopened (as after a kill of the app): the reference and the bytes are there.
    let mut store = open(&dir, "a.db");
    assert_eq!(store.attachments(id).unwrap(), vec![reference.clone()]);
    let out = dir.path().join("out.jpg");
    store
        .open_attachment_to_path(&reference.sha256, &out)
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    let status = store.attachment_status(&reference.sha256).unwrap().unwrap();
    assert!(status.complete && !status.on_server);
    assert_eq!(status.present_bytes, bytes.len() as u64);
}

#[test]
fn attach_from_a_file_streams_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    let id = new_app(&mut store);
    let bytes = pattern(5 * STORE_CHUNK, 9);
    let path = dir.path().join("scan.png");
    std::fs::write(&path, &bytes).unwrap();
    let mut new = jpeg("scan");
    new.mime = "image/png".into();
    let reference = store.attach_file(id, OFFICER, new, &path).unwrap();
    assert_eq!(reference.sha256, sha256_hex(&bytes));
    assert_eq!(open_bytes(&mut store, &reference.sha256), bytes);
}

#[test]
fn same_content_on_two_dossiers_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    let first = new_app(&mut store);
    let second = new_app(&mut store);
    let card = pattern(2 * STORE_CHUNK, 3);
    let mut new = jpeg("CCCD");
    new.category = AttachmentCategory::IdentityCard;
    let a = store
        .attach_bytes(first, OFFICER, new.clone(), &card)
        .unwrap();
    let b = store.attach_bytes(second, OFFICER, new, &card).unwrap();
    assert_eq!(a.sha256, b.sha256);
    assert_ne!(a.id, b.id);
    assert_eq!(contents(&store), 1);
    let rows: i64 = store
        .connection()
        .query_row("SELECT count(*) FROM attachment_chunks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 2);
    // Sent once too: one pending upload for both references.
    assert_eq!(
        store.pending_attachment_uploads(10).unwrap(),
        vec![(a.sha256.clone(), card.len() as u64)]
    );
    // Removing one reference keeps the content the other names.
    store.remove_attachment(first, OFFICER, &a.id).unwrap();
    assert_eq!(contents(&store), 1);
    store.remove_attachment(second, OFFICER, &b.id).unwrap();
    assert_eq!(contents(&store), 0);
}

#[test]
fn removal_is_a_tombstone_in_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    let id = new_app(&mut store);
    let reference = store
        .attach_bytes(id, OFFICER, jpeg("p1"), &pattern(100, 1))
        .unwrap();
    store.remove_attachment(id, OFFICER, &reference.id).unwrap();
    assert!(store.attachments(id).unwrap().is_empty());
    let Record::Application(app) = store.get(id).unwrap() else {
        panic!("an application")
    };
    assert_eq!(app.attachments.len(), 1);
    assert!(app.attachments[0].removed);
    assert!(matches!(
        store.open_attachment(&reference.sha256, &mut Vec::new()),
        Err(Error::ContentMissing(_))
    ));
    // Removing it again is an error that changes nothing.
    assert!(store.remove_attachment(id, OFFICER, &reference.id).is_err());
}

#[test]
fn bad_input_is_refused_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    let id = new_app(&mut store);
    let mut exe = jpeg("x");
    exe.mime = "application/x-msdownload".into();
    assert!(matches!(
        store.attach_bytes(id, OFFICER, exe, b"MZ"),
        Err(Error::InvalidInput { .. })
    ));
    assert!(store.attach_bytes(id, OFFICER, jpeg("empty"), b"").is_err());
    let mut long = jpeg(&"x".repeat(501));
    long.page = 1;
    assert!(matches!(
        store.attach_bytes(id, OFFICER, long, b"abc"),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        store.attach_bytes(RecordId::new(), OFFICER, jpeg("x"), b"abc"),
        Err(Error::NotFound(_))
    ));
    assert_eq!(contents(&store), 0);
    assert!(store.attachments(id).unwrap().is_empty());
}

#[test]
fn contents_are_encrypted_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.db");
    let key = EncryptionKey::new([7; 32]);
    // A recognisable run that would show in a plain file.
    let marker: Vec<u8> = b"CCCD-011190001234-NGUYEN-THI-HUONG|"
        .iter()
        .copied()
        .cycle()
        .take(40_000)
        .collect();
    {
        let mut store = open_at(path.clone(), Some(key.clone()));
        let id = new_app(&mut store);
        store
            .attach_bytes(id, OFFICER, jpeg("CCCD"), &marker)
            .unwrap();
    }
    for suffix in ["", "-wal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        if let Ok(raw) = std::fs::read(std::path::PathBuf::from(name)) {
            assert!(
                !raw.windows(20).any(|w| w == &marker[..20]),
                "plain bytes in the file{suffix}"
            );
        }
    }
    let mut store = open_at(path, Some(key));
    let sha = sha256_hex(&marker);
    assert_eq!(open_bytes(&mut store, &sha), marker);
}

#[test]
fn rules_keep_references_accountable() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    let id = new_app(&mut store);
    let reference = store
        .attach_bytes(id, OFFICER, jpeg("p1"), &pattern(100, 1))
        .unwrap();
    // The content of a reference is fixed.
    let err = store
        .update_application(id, OFFICER, |a| a.attachments[0].sha256 = "0".repeat(64))
        .unwrap_err();
    assert!(err.to_string().contains("cannot be changed"), "{err}");
    // A reference is not taken out, only tombstoned.
    assert!(
        store
            .update_application(id, OFFICER, |a| a.attachments.clear())
            .is_err()
    );
    store.remove_attachment(id, OFFICER, &reference.id).unwrap();
    // A removal is never undone.
    assert!(
        store
            .update_application(id, OFFICER, |a| a.attachments[0].removed = false)
            .is_err()
    );
    // A caption may change.
    let other = store
        .attach_bytes(id, OFFICER, jpeg("p2"), &pattern(100, 2))
        .unwrap();
    let described = store
        .describe_attachment(id, OFFICER, &other.id, "Trang 2".into(), None, 2)
        .unwrap();
    assert_eq!((described.caption.as_str(), described.page), ("Trang 2", 2));
    // Bounded count: the rule refuses the reference past the limit (tombstones count).
    let limit = crate::integrity::rules::MAX_ATTACHMENTS;
    store
        .update_application(id, OFFICER, |a| {
            while a.attachments.len() < limit {
                let mut copy = other.clone();
                copy.id = format!("copy-{}", a.attachments.len());
                a.attachments.push(copy);
            }
        })
        .unwrap();
    let err = store
        .attach_bytes(id, OFFICER, jpeg("one too many"), &pattern(100, 3))
        .unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
    // The refused content was dropped again.
    assert!(
        store
            .attachment_status(&sha256_hex(&pattern(100, 3)))
            .unwrap()
            .is_none()
    );
}

#[test]
fn concurrent_attachments_on_two_tablets_merge() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a.db");
    let mut b = open(&dir, "b.db");
    let id = new_app(&mut a);
    let created = a.changes_since(id, &[]).unwrap();
    b.apply_remote_changes(id, RecordKind::Application, &created)
        .unwrap();
    let heads = a.heads(id).unwrap();
    let from_a = a
        .attach_bytes(id, OFFICER, jpeg("a"), &pattern(10, 1))
        .unwrap();
    let from_b = b
        .attach_bytes(id, OFFICER, jpeg("b"), &pattern(10, 2))
        .unwrap();
    let a_changes = a.changes_since(id, &heads).unwrap();
    let b_changes = b.changes_since(id, &heads).unwrap();
    a.apply_remote_changes(id, RecordKind::Application, &b_changes)
        .unwrap();
    b.apply_remote_changes(id, RecordKind::Application, &a_changes)
        .unwrap();
    let on_a = a.attachments(id).unwrap();
    assert_eq!(on_a, b.attachments(id).unwrap());
    assert_eq!(on_a.len(), 2);
    assert!(on_a.contains(&from_a) && on_a.contains(&from_b));
    // Each tablet holds its own content and knows the other's is missing.
    assert!(matches!(
        a.open_attachment(&from_b.sha256, &mut Vec::new()),
        Err(Error::ContentMissing(_))
    ));
    assert_eq!(
        a.missing_attachments(10).unwrap(),
        vec![(from_b.sha256.clone(), 10)]
    );
    // A removal on one tablet syncs to the other.
    let heads = a.heads(id).unwrap();
    a.remove_attachment(id, OFFICER, &from_a.id).unwrap();
    b.apply_remote_changes(
        id,
        RecordKind::Application,
        &a.changes_since(id, &heads).unwrap(),
    )
    .unwrap();
    assert_eq!(b.attachments(id).unwrap(), vec![from_b]);
}

#[test]
fn download_in_chunks_resumes_and_refuses_a_corrupt_content() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    let bytes = pattern(5 * STORE_CHUNK + 7, 4);
    let sha = sha256_hex(&bytes);
    let size = bytes.len() as u64;
    let chunk = 2 * STORE_CHUNK;
    assert_eq!(store.attachment_resume_offset(&sha, chunk).unwrap(), 0);
    assert!(
        !store
            .store_attachment_range(&sha, size, 0, &bytes[..chunk])
            .unwrap()
    );
    // A cut here: the download resumes at the next chunk.
    assert_eq!(
        store.attachment_resume_offset(&sha, chunk).unwrap(),
        chunk as u64
    );
    assert!(
        !store
            .store_attachment_range(&sha, size, chunk as u64, &bytes[chunk..2 * chunk])
            .unwrap()
    );
    assert!(
        store
            .store_attachment_range(&sha, size, 2 * chunk as u64, &bytes[2 * chunk..])
            .unwrap()
    );
    assert_eq!(open_bytes(&mut store, &sha), bytes);

    // A content whose bytes do not match its hash is refused and starts again.
    let lie = sha256_hex(b"something else");
    let mut wrong = bytes.clone();
    wrong[10] ^= 1;
    assert!(
        !store
            .store_attachment_range(&lie, size, 0, &wrong[..chunk])
            .unwrap()
    );
    assert!(
        !store
            .store_attachment_range(&lie, size, chunk as u64, &wrong[chunk..2 * chunk])
            .unwrap()
    );
    assert!(
        store
            .store_attachment_range(&lie, size, 2 * chunk as u64, &wrong[2 * chunk..])
            .is_err()
    );
    assert_eq!(store.attachment_resume_offset(&lie, chunk).unwrap(), 0);
    assert!(store.open_attachment(&lie, &mut Vec::new()).is_err());
    // Misaligned or out-of-bounds pieces are refused.
    assert!(
        store
            .store_attachment_range(&lie, size, 5, &wrong[..10])
            .is_err()
    );
    assert!(
        store
            .store_attachment_range(&lie, 10, 0, &wrong[..STORE_CHUNK])
            .is_err()
    );
}

#[test]
fn eviction_keeps_what_only_this_tablet_holds() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(MONDAY_9AM);
    let mut store = open_with(dir.path().join("a.db"), None, clock.clone());
    let id = new_app(&mut store);
    let mut refs = Vec::new();
    for seed in 0..3u8 {
        refs.push(
            store
                .attach_bytes(id, OFFICER, jpeg("p"), &pattern(1000, seed))
                .unwrap(),
        );
    }
    // Nothing uploaded: nothing evicted, whatever the bound.
    assert_eq!(store.evict_attachments(0).unwrap(), 0);
    assert_eq!(contents(&store), 3);
    store.mark_attachment_on_server(&refs[0].sha256).unwrap();
    store.mark_attachment_on_server(&refs[1].sha256).unwrap();
    // Opening refs[0] makes refs[1] the least recently used.
    clock.advance(1000);
    open_bytes(&mut store, &refs[0].sha256);
    assert_eq!(store.evict_attachments(1000).unwrap(), 1000);
    assert!(store.attachment_status(&refs[1].sha256).unwrap().is_none());
    assert!(store.attachment_status(&refs[0].sha256).unwrap().is_some());
    assert!(store.attachment_status(&refs[2].sha256).unwrap().is_some());
    // The evicted one is listed for download again.
    assert_eq!(
        store.missing_attachments(10).unwrap(),
        vec![(refs[1].sha256.clone(), 1000)]
    );
}

#[cfg(feature = "image")]
#[test]
fn a_photo_is_prepared_and_the_original_kept_only_if_asked() {
    use super::prepare::{PrepareOptions, sample_page_photo};
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    let id = new_app(&mut store);
    let path = dir.path().join("camera.jpg");
    sample_page_photo(1000, 750, 1).save(&path).unwrap();
    let original = std::fs::read(&path).unwrap();
    let options = PrepareOptions {
        max_long_side: 600,
        target_bytes: 60_000,
        grayscale: true,
        ..Default::default()
    };
    let only = store
        .attach_photo(id, OFFICER, jpeg("Tờ khai"), &path, &options, false)
        .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].mime, "image/jpeg");
    assert!(only[0].size <= 60_000 && (only[0].size as usize) < original.len());
    let both = store
        .attach_photo(id, OFFICER, jpeg("Tờ khai"), &path, &options, true)
        .unwrap();
    assert_eq!(both.len(), 2);
    // The same prepared bytes again: one content for both references.
    assert_eq!(both[0].sha256, only[0].sha256);
    assert_eq!(both[1].sha256, sha256_hex(&original));
    assert_eq!(both[1].caption, "Tờ khai (original)");
    assert_eq!(open_bytes(&mut store, &both[1].sha256), original);
    assert_eq!(store.attachments(id).unwrap().len(), 3);
    assert_eq!(contents(&store), 2);
}
