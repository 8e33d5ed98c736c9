//! The bulk import format (`communesync device import`): each line goes through
//! `parse_import_line` and, when it parses, `DeviceStore::create_application`. Whatever the
//! bytes, a line is imported or refused with an error, never a panic; an imported application
//! reads back as it was created, and search over it works.
#![no_main]

use std::sync::{Mutex, OnceLock};

use communesync_core::import::parse_import_line;
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, StoreConfig};
use libfuzzer_sys::fuzz_target;

fn store() -> &'static Mutex<DeviceStore> {
    static STORE: OnceLock<Mutex<DeviceStore>> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        let mut store = DeviceStore::open(StoreConfig::new(dir.join("fuzz.db"))).expect("store");
        store
            .import_catalogue(&SampleData::catalogue())
            .expect("catalogue");
        store
            .set_holidays(&SampleData::holidays())
            .expect("holidays");
        Mutex::new(store)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut store = store().lock().expect("store lock");
    for line in text.lines().take(16) {
        let Ok(Some(new)) = parse_import_line(line) else {
            continue;
        };
        if let Ok(app) = store.create_application("import", new) {
            assert_eq!(store.get_application(app.id).expect("reads back"), app);
            let _ = store.search(&app.applicant.name, 5).expect("search");
        }
    }
});
