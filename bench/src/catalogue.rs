//! The procedure catalogue on a tablet (issue 15): bytes on the wire of a full install of
//! 2,000 procedures (the whole catalogue in a sync response, as it travels today), the time to
//! install it, and procedure search latency on the tablet's store.

use std::time::Instant;

use communesync_core::codec::DocCodec;
use communesync_core::protocol::{CatalogueUpdate, Extensions, PROTOCOL_VERSION, SyncResponse};
use communesync_core::store::{DeviceStore, EncryptionKey, StoreConfig};
use communesync_tests::catalogue_gen::generated_catalogue;

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
    report.add("catalogue_json_bytes", json.len() as f64, "bytes", None);
    let response = SyncResponse {
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
    let wire = response.encode(&mut DocCodec::new()?)?;
    report.add(
        "catalogue_full_install_wire_bytes",
        wire.len() as f64,
        "bytes",
        None,
    );

    let dir = tempfile::tempdir()?;
    let mut store = DeviceStore::open(
        StoreConfig::new(dir.path().join("tablet.db")).encrypted(EncryptionKey::new([3; 32])),
    )?;
    let started = Instant::now();
    store.apply_catalogue(1, &json)?;
    report.add("catalogue_install_ms", ms(started.elapsed()), "ms", None);

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
