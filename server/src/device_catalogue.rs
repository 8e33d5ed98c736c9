//! `communesync device catalogue`: the procedure catalogue of a tablet's store.
//!
//! `import FILE` installs a catalogue file (version 1 or 2, as the province publishes it)
//! before the first sync, so a tablet can take applications for every procedure from its first
//! day; it claims no province catalogue version, so the first sync still brings what changed
//! since. The file is bounded ([`MAX_CATALOGUE_FILE`]) and installed in one transaction: a bad
//! file changes nothing. `search` and `sectors` print JSON lines.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

/// Largest catalogue file accepted (2,000 procedures with forms take about 3 MiB).
pub const MAX_CATALOGUE_FILE: u64 = 64 * 1024 * 1024;

#[derive(Subcommand)]
pub enum CatalogueTask {
    /// Install a catalogue file (JSON, version 1 or 2) before the first sync.
    Import {
        /// The catalogue file (`-` for standard input).
        file: PathBuf,
    },
    /// Search procedures by name without diacritics ("khai sinh") or by code.
    Search {
        /// What to look for.
        query: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// The sectors and how many procedures each has.
    Sectors,
}

pub fn run(store: &Path, task: CatalogueTask) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match task {
        CatalogueTask::Import { file } => {
            let json = read_bounded(&file)?;
            let mut store = super::device::open(store)?;
            let procedures = store
                .install_catalogue_file(&json)
                .with_context(|| format!("installing {}", file.display()))?;
            writeln!(
                stdout,
                "{}",
                serde_json::json!({ "procedures": procedures, "installed": store.procedure_count()? })
            )?;
        }
        CatalogueTask::Search { query, limit } => {
            let store = super::device::open(store)?;
            for p in store.search_procedures(&query, limit)? {
                writeln!(
                    stdout,
                    "{}",
                    serde_json::json!({ "code": p.code, "name": p.name, "sector": p.sector, "version": p.version })
                )?;
            }
        }
        CatalogueTask::Sectors => {
            let store = super::device::open(store)?;
            for (sector, count) in store.procedure_sectors()? {
                writeln!(
                    stdout,
                    "{}",
                    serde_json::json!({ "sector": sector, "procedures": count })
                )?;
            }
        }
    }
    Ok(())
}

fn read_bounded(file: &Path) -> anyhow::Result<String> {
    let reader: Box<dyn Read> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?)
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_CATALOGUE_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CATALOGUE_FILE {
        anyhow::bail!(
            "{} is larger than {MAX_CATALOGUE_FILE} bytes",
            file.display()
        );
    }
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", file.display()))
}
