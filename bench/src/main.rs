//! `communesync-bench`: benchmark suites that print one JSON line per figure
//! (`{"bench":"...","value":N,"unit":"..."}`) followed by a readable table.
//!
//! `cargo run --release -p communesync-bench -- store` runs the device-store suite;
//! `cargo run --release -p communesync-bench -- sync` the tablet/server sync suite (it needs
//! `cargo build --release -p communesync-server` first), `-- load` the province-wide load suite
//! (the same), `-- hostile` the server under attack (idle connections and hostile requests)
//! while an honest tablet syncs (the same), `-- failover` a PostgreSQL primary lost under
//! syncing tablets and its standby promoted (the same, and PostgreSQL installed);
//! `-- receipts` intake with a signed receipt and receipt verification; `-- attachments` a
//! dossier of photos over 2G; `-- console` the read model's cost and the dashboard at province
//! scale; `-- register-import` a register of 10,000 dossiers with their states imported and
//! synced.

mod attachments;
mod catalogue;
mod console;
mod dictionary;
mod failover;
mod hostile;
mod load;
mod receipts;
mod register_import;
mod report;
mod store;
mod sync;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "communesync benchmarks")]
struct Cli {
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand)]
enum Suite {
    /// Procedure catalogue: install bytes and time, search latency (issue 15).
    Catalogue(catalogue::CatalogueArgs),
    /// Device store: create, update, open, queries, search, size, memory.
    Store(store::StoreArgs),
    /// Sync: tablets and the server over HTTP on SQLite and PostgreSQL (bytes, time, memory).
    Sync(sync::SyncArgs),
    /// Load: 45 communes x 8 tablets doing a day's work and syncing at once, on SQLite and
    /// PostgreSQL (syncs/s, latency, server memory, errors, lost changes).
    Load(load::LoadArgs),
    /// Hostile: 2,000 idle connections and 10 concurrent hostile requests of each shape against
    /// the server while an honest tablet syncs (server memory, honest latency and failures).
    Hostile(hostile::HostileArgs),
    /// Attachments: a 10-page dossier of camera photos prepared and uploaded over 2G with cuts
    /// (bytes, time, re-sent per cut), and memory while uploading 50 MB.
    Attachments(attachments::AttachmentArgs),
    /// Failover: a PostgreSQL primary SIGKILLed under replicas and syncing tablets, its
    /// synchronous standby promoted (pause seen by tablets, changes lost).
    Failover(failover::FailoverArgs),
    /// Receipts: intake with a signed receipt, verification, QR payload size.
    Receipts(receipts::ReceiptArgs),
    /// Console: read-model projection cost per pushed document, dashboard page time with 45
    /// communes x 50,000 records.
    Console(console::ConsoleArgs),
    /// Register import: 10,000 dossiers with their states into a tablet (time, changes per
    /// dossier, a re-run), then the first sync (bytes on the wire).
    RegisterImport(register_import::RegisterImportArgs),
    /// Train the zstd dictionary for stored documents (writes core/dict/records-v1.zdict).
    Dictionary(dictionary::DictionaryArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().suite {
        Suite::Catalogue(args) => catalogue::run(&args),
        Suite::Store(args) => store::run(&args),
        Suite::Sync(args) => sync::run(&args),
        Suite::Load(args) => load::run(&args),
        Suite::Hostile(args) => hostile::run(&args),
        Suite::Failover(args) => failover::run(&args),
        Suite::Receipts(args) => receipts::run(&args),
        Suite::Console(args) => console::run(&args),
        Suite::RegisterImport(args) => register_import::run(&args),
        Suite::Dictionary(args) => dictionary::run(&args),
        Suite::Attachments(args) => attachments::run(&args),
    }
}
