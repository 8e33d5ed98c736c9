//! Register import (issue 15): a commune's register of 10,000 dossiers in their states imported
//! into an encrypted tablet store (time, changes per dossier), a re-run (which must write
//! nothing), and the first sync afterwards to a server over HTTP on 127.0.0.1 (bytes on the
//! wire, time; SQLite storage, server in this process).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use communesync_core::record::Status;
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, EncryptionKey, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, enroll};
use communesync_tests::TestServer;

use crate::report::{Report, ms};

#[derive(clap::Args)]
pub struct RegisterImportArgs {
    /// Dossiers in the register.
    #[arg(long, default_value_t = 10_000)]
    dossiers: usize,
}

const COMMUNE: &str = "DB-MUONGPHANG";
const DAY_MS: i64 = 86_400_000;
// 2026-12-01 00:00 in Vietnam: the day of the import.
const IMPORT_DAY: i64 = 1_796_058_000_000;

/// A register as a spreadsheet exports it: statuses in the proportions of a year's register
/// (most returned), received over the past year, returned a few days after.
fn register(dossiers: usize) -> String {
    let mut sample = SampleData::new(15);
    let mut csv = String::from(
        "external_id,procedure_code,applicant_name,applicant_id_number,applicant_phone,\
         applicant_address,applicant_village,status,received_at,due_date,original_reference,\
         returned_at,notes\n",
    );
    let time = |ms: i64| {
        let at = time::OffsetDateTime::from_unix_timestamp(ms / 1000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
            .to_offset(communesync_core::catalogue::VIETNAM_OFFSET);
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute()
        )
    };
    let quote = |text: &str| {
        if text.contains([',', '"', '\n']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text.to_owned()
        }
    };
    for i in 0..dossiers {
        let app = sample.application(COMMUNE, None);
        let status = match i % 20 {
            0..=11 => Status::Returned,
            12 => Status::Rejected,
            13 => Status::Withdrawn,
            14 => Status::Ready,
            15 | 16 => Status::InProgress,
            17 => Status::SupplementRequested,
            _ => Status::Received,
        };
        let age_days = i64::try_from((i * 7919) % 360).unwrap_or(0) + 1;
        let received = IMPORT_DAY - age_days * DAY_MS + 8 * 3_600_000 + (i as i64 % 480) * 60_000;
        let returned = (status == Status::Returned)
            .then(|| (received + 4 * DAY_MS).min(IMPORT_DAY - 3_600_000));
        let row = [
            format!("SK-{i:06}"),
            app.procedure_code,
            quote(&app.applicant.name),
            app.applicant.id_number,
            app.applicant.phone,
            quote(&app.applicant.address),
            quote(&app.applicant.village),
            status.as_str().to_owned(),
            time(received),
            String::new(),
            format!("{}/HT-2026", i + 1),
            returned.map(time).unwrap_or_default(),
            quote(&app.notes),
        ];
        csv.push_str(&row.join(","));
        csv.push('\n');
    }
    csv
}

pub fn run(args: &RegisterImportArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: &RegisterImportArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut report = Report::default();
    let csv = register(args.dossiers);
    report.add("register_import.file", csv.len() as f64 / 1e6, "MB", None);

    let clock = communesync_core::clock::ManualClock::new(IMPORT_DAY + 9 * 3_600_000);
    let mut store = DeviceStore::open_with_clock(
        StoreConfig::new(dir.path().join("tablet.db")).encrypted(EncryptionKey::new([42; 32])),
        Arc::new(clock),
    )?;
    store.import_catalogue(&SampleData::catalogue())?;

    let t = Instant::now();
    let summary = store.import_register_file("can.bo.mot.cua", Some(COMMUNE), csv.as_bytes())?;
    let took = t.elapsed();
    anyhow::ensure!(
        summary.imported as usize == args.dossiers && summary.errors.is_empty(),
        "import: {} imported, errors {:?}",
        summary.imported,
        summary.errors.first()
    );
    report.add("register_import.total", took.as_secs_f64(), "s", None);
    report.add(
        "register_import.per_dossier",
        ms(took) / args.dossiers as f64,
        "ms",
        None,
    );
    let pending = store.pending_count()?;
    report.add(
        "register_import.pending_docs",
        pending as f64,
        "docs",
        Some(("==", args.dossiers as f64)),
    );

    let t = Instant::now();
    let again = store.import_register_file("can.bo.mot.cua", Some(COMMUNE), csv.as_bytes())?;
    report.add(
        "register_import.rerun_total",
        t.elapsed().as_secs_f64(),
        "s",
        None,
    );
    report.add(
        "register_import.rerun_imported",
        again.imported as f64,
        "docs",
        Some(("==", 0.0)),
    );
    report.add(
        "register_import.rerun_new_pending",
        (store.pending_count()? - pending) as f64,
        "docs",
        Some(("==", 0.0)),
    );

    // The first sync afterwards.
    let server = TestServer::start(&communesync_tests::sqlite_url(dir.path(), "server.db")).await?;
    let codes = server.commune_with_codes(COMMUNE, 1).await?;
    let transport = ReqwestTransport::new(&server.url())?;
    let credentials = enroll(&transport, &codes[0], store.device_id(), "bench").await?;
    store.set_enrolled_commune(credentials.commune())?;
    let store = Arc::new(Mutex::new(store));
    let client = SyncClient::new(
        transport,
        store.clone(),
        credentials.token,
        SyncConfig::default(),
    )?;
    let t = Instant::now();
    let sync = client.sync(&|_| {}).await?;
    let took = t.elapsed();
    anyhow::ensure!(
        sync.pushed_docs as usize == args.dossiers && sync.refused == 0,
        "sync: {sync:?}"
    );
    report.add(
        "register_import.changes_per_dossier",
        sync.pushed_changes as f64 / sync.pushed_docs.max(1) as f64,
        "changes",
        Some(("==", 1.0)),
    );
    report.add(
        "register_import.first_sync_time",
        took.as_secs_f64(),
        "s",
        None,
    );
    report.add(
        "register_import.first_sync_up",
        sync.bytes_up as f64 / 1e6,
        "MB",
        None,
    );
    report.add(
        "register_import.first_sync_up_per_dossier",
        sync.bytes_up as f64 / args.dossiers as f64,
        "B",
        None,
    );
    report.add(
        "register_import.first_sync_down",
        sync.bytes_down as f64 / 1e3,
        "KB",
        None,
    );
    report.add(
        "register_import.first_sync_requests",
        sync.requests as f64,
        "requests",
        None,
    );
    let missed = report.table("register import");
    anyhow::ensure!(missed == 0, "{missed} target(s) missed");
    Ok(())
}
