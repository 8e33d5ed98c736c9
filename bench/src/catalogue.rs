//! The procedure catalogue on a tablet (issue 15), over real HTTP on 127.0.0.1 against an
//! in-process server (SQLite): bytes on the wire of a full install of 2,000 procedures by
//! delta (every page of the tablet's first sync), of a 20-procedure delta (the next sync after
//! a publication that changes 18 procedures, removes 2 and adds a calendar day), the whole
//! catalogue as protocol 2/3 tablets still receive it, and procedure search latency on the
//! tablet's store.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use communesync_core::codec::DocCodec;
use communesync_core::protocol::{CatalogueUpdate, Extensions, PROTOCOL_VERSION, SyncResponse};
use communesync_core::store::{DeviceStore, EncryptionKey, StoreConfig};
use communesync_core::sync::{SyncClient, SyncConfig, enroll};
use communesync_tests::TestServer;
use communesync_tests::catalogue_gen::{generated_catalogue, twenty_changes};

use crate::report::{Report, ms, percentile};

#[derive(clap::Args)]
pub struct CatalogueArgs {
    /// Procedures in the catalogue.
    #[arg(long, default_value_t = 2_000)]
    procedures: usize,
    /// Searches timed.
    #[arg(long, default_value_t = 2_000)]
    searches: usize,
}

pub fn run(args: &CatalogueArgs) -> anyhow::Result<()> {
    let mut report = Report::default();
    let file = generated_catalogue(args.procedures, 15);
    let json = serde_json::to_string(&file)?;
    let (next, _) = twenty_changes(file.clone());
    let next_json = serde_json::to_string(&next)?;
    report.add("catalogue_json_bytes", json.len() as f64, "bytes", None);

    // What a protocol 2/3 tablet still receives: the whole catalogue in one response.
    let whole = SyncResponse {
        protocol: PROTOCOL_VERSION,
        server_time: 0,
        missing_deps: Vec::new(),
        refused: Vec::new(),
        feed: Vec::new(),
        next_cursor: 0,
        more: false,
        catalogue: Some(CatalogueUpdate {
            version: 1,
            json: json.clone(),
        }),
        extensions: Extensions::new(),
    };
    let wire = whole.encode(&mut DocCodec::new()?)?;
    report.add(
        "catalogue_whole_wire_bytes",
        wire.len() as f64,
        "bytes",
        None,
    );

    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let store = runtime.block_on(async {
        let server =
            TestServer::start(&communesync_tests::sqlite_url(dir.path(), "server")).await?;
        server.storage.put_catalogue(&json).await?;
        let code = server
            .commune_with_codes("DB-MUONGPHANG", 1)
            .await?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no enrollment code"))?;
        let store = DeviceStore::open(
            StoreConfig::new(dir.path().join("tablet.db")).encrypted(EncryptionKey::new([3; 32])),
        )?;
        let transport = server.transport();
        let credentials = enroll(&transport, &code, store.device_id(), "bench").await?;
        let store = Arc::new(Mutex::new(store));
        let client = SyncClient::new(
            transport,
            store.clone(),
            credentials.token,
            SyncConfig::default(),
        )?;
        let started = Instant::now();
        let full = client.sync(&|_| {}).await?;
        report.add(
            "catalogue_full_install_wire_bytes",
            full.bytes_down as f64,
            "bytes",
            None,
        );
        report.add(
            "catalogue_full_install_requests",
            full.requests as f64,
            "requests",
            None,
        );
        report.add(
            "catalogue_full_install_ms",
            ms(started.elapsed()),
            "ms",
            None,
        );
        server.storage.put_catalogue(&next_json).await?;
        let delta = client.sync(&|_| {}).await?;
        report.add(
            "catalogue_delta_20_wire_bytes",
            delta.bytes_down as f64,
            "bytes",
            Some(("<", 5_000.0)),
        );
        let idle = client.sync(&|_| {}).await?;
        report.add(
            "catalogue_idle_sync_wire_bytes",
            idle.bytes_down as f64,
            "bytes",
            None,
        );
        server.stop().await;
        anyhow::Ok(store)
    })?;
    let store = store.lock().map_err(|_| anyhow::anyhow!("store lock"))?;
    anyhow::ensure!(
        store.procedure_count()? as usize == next.procedures.len(),
        "the tablet does not hold the published catalogue"
    );

    let queries = [
        "khai sinh",
        "dang ky",
        "cap lai giay",
        "ho tro",
        "dat",
        "xac nhan tinh trang hon nhan",
        "1.0012",
        "trợ cấp",
        "giay phep xay dung",
        "thu tuc 1999",
        "ket hon",
        "rung",
    ];
    let mut samples = Vec::with_capacity(args.searches);
    let mut found = 0usize;
    for i in 0..args.searches {
        let started = Instant::now();
        found += store
            .search_procedures(queries[i % queries.len()], 20)?
            .len();
        samples.push(ms(started.elapsed()));
    }
    anyhow::ensure!(found > 0, "searches found nothing");
    report.add(
        "procedure_search_p99_ms",
        percentile(&mut samples, 99.0),
        "ms",
        Some(("<", 20.0)),
    );
    report.table("catalogue");
    Ok(())
}
