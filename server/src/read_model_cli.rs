//! `communesync admin` subcommands over the read model: `rebuild-read-model`, `records`,
//! `dashboard`, `report` and `export-records`. Output is JSON lines, or CSV where a format is
//! asked; the queries are those of the admin API (`http::admin_read_model`).

use clap::Subcommand;
use communesync_server::http::{self, RecordFilters};
use communesync_server::reports::{self, Format};
use communesync_server::storage::ServerStorage;

/// Read-model tasks.
#[derive(Subcommand)]
pub enum ReadModelTask {
    /// Rebuild the read model (what operators query) from the stored changes.
    RebuildReadModel,
    /// Records from the read model, newest received first (JSON lines).
    Records(Filters),
    /// Per-commune figures: this week, this month, open, overdue, on-time rate (JSON lines).
    Dashboard,
    /// The periodic report per commune and procedure for a date range.
    Report {
        /// First day, YYYY-MM-DD.
        #[arg(long)]
        from: String,
        /// Last day (inclusive), YYYY-MM-DD.
        #[arg(long)]
        to: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
    },
    /// Export records with the filters of `records`.
    ExportRecords {
        #[command(flatten)]
        filters: Filters,
        /// Output format.
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
    },
}

/// Record filters.
#[derive(clap::Args)]
pub struct Filters {
    /// Commune code.
    #[arg(long)]
    commune: Option<String>,
    /// Status name.
    #[arg(long)]
    status: Option<String>,
    /// Procedure code.
    #[arg(long)]
    procedure: Option<String>,
    /// Part of the applicant's name, with or without diacritics.
    #[arg(long)]
    name: Option<String>,
    /// Identity number.
    #[arg(long)]
    id_number: Option<String>,
    /// Dossier number.
    #[arg(long)]
    dossier_number: Option<String>,
    /// Only overdue records.
    #[arg(long)]
    overdue: bool,
    /// Most records.
    #[arg(long)]
    limit: Option<usize>,
    /// Records to skip.
    #[arg(long)]
    offset: Option<usize>,
}

impl Filters {
    fn to_api(&self) -> RecordFilters {
        RecordFilters {
            commune: self.commune.clone(),
            kind: None,
            status: self.status.clone(),
            procedure: self.procedure.clone(),
            name: self.name.clone(),
            id_number: self.id_number.clone(),
            dossier_number: self.dossier_number.clone(),
            overdue: Some(self.overdue),
            offset: self.offset,
            limit: self.limit,
            format: None,
        }
    }
}

/// Runs a read-model task.
pub async fn run(storage: &dyn ServerStorage, task: ReadModelTask, now: i64) -> anyhow::Result<()> {
    match task {
        ReadModelTask::RebuildReadModel => {
            let rules =
                communesync_server::catalogue::CatalogueRules::load_deadline_rules(storage).await?;
            let rows = storage.rebuild_read_model(rules).await?;
            println!("{}", serde_json::json!({ "read_model_rows": rows }));
        }
        ReadModelTask::Records(filters) => {
            let query = filters.to_api().to_query(now).map_err(anyhow::Error::msg)?;
            for row in storage.records(&query).await? {
                println!("{}", serde_json::to_string(&row)?);
            }
        }
        ReadModelTask::Dashboard => {
            for line in http::dashboard(storage, now).await? {
                println!("{}", serde_json::to_string(&line)?);
            }
        }
        ReadModelTask::Report { from, to, format } => {
            let range = http::parse_range(&from, &to).map_err(anyhow::Error::msg)?;
            let report = reports::report(storage, range, now).await?;
            match format {
                Format::Csv => print!("{}", reports::report_csv(&report)),
                Format::Json => println!("{}", serde_json::to_string(&report)?),
            }
        }
        ReadModelTask::ExportRecords { filters, format } => {
            let query = filters.to_api().to_query(now).map_err(anyhow::Error::msg)?;
            let rows = storage.records(&query).await?;
            match format {
                Format::Csv => print!("{}", reports::records_csv(&rows)),
                Format::Json => println!("{}", serde_json::to_string(&rows)?),
            }
        }
    }
    Ok(())
}
