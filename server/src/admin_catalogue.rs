//! `communesync admin catalogue publish FILE | export FILE`: the province catalogue.
//!
//! Publishing checks the file (every procedure, codes unique, bounds), compares it with the
//! published catalogue and records only what changed as a new catalogue version; a file that
//! changes a published procedure version in place, or lowers one, is refused whole and changes
//! nothing. Exporting writes the published catalogue with its version and the versions no longer
//! current (pinned-only, for the dossiers pinning them): a tablet that installs it
//! (`communesync device catalogue import`) then receives only what changed after it.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use communesync_server::storage::ServerStorage;

/// What to do with the catalogue.
#[derive(Subcommand)]
pub(crate) enum CatalogueAdminTask {
    /// Publish a catalogue file to every tablet (by delta).
    Publish {
        /// `{"procedures":[...],"calendar":[...],"holidays":[...]}`.
        file: PathBuf,
    },
    /// Write the published catalogue, with its version, for tablets to install before their
    /// first sync.
    Export {
        /// Where to write it.
        file: PathBuf,
    },
}

/// Runs `task` on `storage`; prints one JSON line.
pub(crate) async fn run(
    storage: &dyn ServerStorage,
    task: CatalogueAdminTask,
) -> anyhow::Result<()> {
    match task {
        CatalogueAdminTask::Publish { file } => {
            let version = publish_file(storage, &file).await?;
            println!("{}", serde_json::json!({ "catalogue_version": version }));
        }
        CatalogueAdminTask::Export { file } => {
            let catalogue = communesync_server::catalogue::export(storage)
                .await?
                .context("no catalogue was published")?;
            let version = catalogue.version.unwrap_or_default();
            let text = serde_json::to_string(&catalogue)?;
            std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
            println!(
                "{}",
                serde_json::json!({
                    "catalogue_version": version,
                    "procedures": catalogue.procedures.len(),
                    "pinned_versions": catalogue.pinned.len(),
                })
            );
        }
    }
    Ok(())
}

/// Publishes the catalogue file at `file`; its new version.
pub(crate) async fn publish_file(
    storage: &dyn ServerStorage,
    file: &std::path::Path,
) -> anyhow::Result<u64> {
    let json =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    communesync_server::http::validate_catalogue(&json).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(storage.put_catalogue(&json).await?)
}
