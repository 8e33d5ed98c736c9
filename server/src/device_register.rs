//! `communesync device register`: a commune's existing register brought into a tablet's store.
//!
//! `import FILE` reads a register exported from a spreadsheet as CSV (UTF-8, a header row; the
//! format is in docs/PROTOCOL.md, "Register import") and imports each entry in its current state
//! as one dossier marked as imported, into the commune the store is enrolled in (or
//! `--commune`). The file is bounded (`communesync_core::register_import::MAX_REGISTER_FILE`):
//! a file too large, not UTF-8 or without a required column imports nothing; a bad line is
//! reported with its number and skipped. A re-run imports nothing twice (the external id is the
//! key). Prints one JSON summary: imported, already present, errors with their lines; the next
//! `device sync` sends the dossiers to the server.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use communesync_core::register_import::MAX_REGISTER_FILE;

#[derive(Subcommand)]
pub enum RegisterTask {
    /// Import a register (CSV with a header row) with each dossier's state; prints a summary.
    Import {
        /// The CSV file (`-` for standard input).
        file: PathBuf,
        /// Officer recorded as the importer.
        #[arg(long, default_value = "import")]
        officer: String,
        /// The commune the register belongs to (default: the commune the store is enrolled in).
        #[arg(long)]
        commune: Option<String>,
    },
}

pub fn run(store: &Path, task: RegisterTask) -> anyhow::Result<()> {
    match task {
        RegisterTask::Import {
            file,
            officer,
            commune,
        } => {
            let bytes = read_bounded(&file)?;
            let mut store = super::device::open(store)?;
            let summary = store
                .import_register_file(&officer, commune.as_deref(), &bytes)
                .with_context(|| format!("importing {}", file.display()))?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{}", serde_json::to_string(&summary)?)?;
        }
    }
    Ok(())
}

fn read_bounded(file: &Path) -> anyhow::Result<Vec<u8>> {
    let reader: Box<dyn Read> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?)
    };
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_REGISTER_FILE).unwrap_or(u64::MAX);
    reader.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() > MAX_REGISTER_FILE {
        anyhow::bail!(
            "{} is larger than {MAX_REGISTER_FILE} bytes: split the register",
            file.display()
        );
    }
    Ok(bytes)
}
