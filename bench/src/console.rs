//! The console suite: what the read model costs and how fast the dashboard is at province scale.
//!
//! - Projection cost, per backend: N real one-change application documents (a first sync's
//!   shape) ingested in batches of 500 through `ServerStorage::ingest`, which writes each
//!   document's read-model row in the same transaction: once as the push path does it (each
//!   document with the row it read from the checked document, `read_model::project_checked`),
//!   once without (storage projects from the stored changes, as the rebuild and a stale
//!   projection do); and `project_checked` alone (what the push path adds per document, on top
//!   of the check it runs anyway). What the read model costs a whole sync (S1) is measured with
//!   `communesync-bench sync --server-bin` against a server built with and without the
//!   `bench-no-read-model` feature (README, figures).
//! - Dashboard: 45 communes x 50,000 read-model rows written directly into a SQLite database
//!   (not through sync), then `GET /console` by a logged-in operator over HTTP on 127.0.0.1
//!   (median of 7, target < 300 ms) and the dashboard query alone.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use communesync_core::catalogue::CivilDate;
use communesync_core::record::{
    Application, Author, DeviceId, Record, RecordDoc, RecordId, RecordKind, Source, Status,
};
use communesync_core::sample::SampleData;
use communesync_server::storage::{
    self, IncomingChange, IncomingDoc, Scope, ServerStorage, read_model,
};

use crate::report::{Report, ms, percentile};

#[derive(clap::Args)]
pub struct ConsoleArgs {
    /// Documents ingested for the projection cost.
    #[arg(long, default_value_t = 5_000)]
    documents: usize,
    /// Communes of the dashboard database.
    #[arg(long, default_value_t = 45)]
    communes: usize,
    /// Read-model rows per commune of the dashboard database.
    #[arg(long, default_value_t = 50_000)]
    rows_per_commune: usize,
}

const COMMUNE: &str = "BENCH-C1";
const BATCH: usize = 500;

pub fn run(args: &ConsoleArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let mut report = Report::default();
    let dir = tempfile::tempdir()?;
    let docs = documents(args.documents)?;

    let sqlite_urls = ["projection.db", "projection-from-changes.db"]
        .map(|file| format!("sqlite:{}", dir.path().join(file).display()));
    runtime.block_on(projection(&mut report, "sqlite", &sqlite_urls, &docs))?;
    match std::env::var("COMMUNESYNC_BENCH_DATABASE_URL") {
        Ok(base) if !base.is_empty() => {
            let mut urls = Vec::new();
            for _ in 0..2 {
                urls.push(runtime.block_on(communesync_tests::fresh_postgres_database(
                    &base,
                    "console_bench",
                ))?);
            }
            runtime.block_on(projection(&mut report, "postgres", &urls, &docs))?;
        }
        _ => eprintln!("PostgreSQL skipped: set COMMUNESYNC_BENCH_DATABASE_URL"),
    }

    let path = dir.path().join("dashboard.db");
    runtime.block_on(dashboard(&mut report, &path, args))?;
    let missed = report.table("console");
    if missed > 0 {
        eprintln!("{missed} target(s) missed");
    }
    Ok(())
}

/// Real one-change application documents.
fn documents(n: usize) -> anyhow::Result<Vec<IncomingDoc>> {
    let mut sample = SampleData::new(18);
    let device = DeviceId::new();
    let now = 1_790_000_000_000;
    (0..n)
        .map(|_| {
            let new = sample.application(COMMUNE, Some(now));
            let app = Application {
                id: RecordId::new(),
                commune_code: COMMUNE.into(),
                procedure_code: new.procedure_code,
                applicant: new.applicant,
                received_at: now,
                due_at: CivilDate::from_unix_millis(now + 5 * 86_400_000)?,
                documents: new.documents,
                fees: new.fees,
                status: Status::Received,
                assignee: new.assignee,
                notes: new.notes,
                created_by: Author {
                    device: device.0,
                    officer: "bench".into(),
                },
                dossier_number: None,
                dossier_number_fallback: false,
                attachments: Vec::new(),
                procedure_version: 0,
                form_values: Default::default(),
                clock_events: Vec::new(),
                returned_at: None,
                returned_on_time: None,
                imported: None,
            };
            let record = Record::Application(app.clone());
            let mut doc = RecordDoc::create(&record, device, "bench", now)?;
            let changes = doc
                .changes_since(&[])
                .iter()
                .map(|c| IncomingChange {
                    hash: c.hash().0,
                    deps: c.deps().iter().map(|d| d.0).collect(),
                    bytes: c.raw_bytes().to_vec(),
                })
                .collect();
            Ok(IncomingDoc {
                id: app.id,
                kind: RecordKind::Application,
                commune: COMMUNE.into(),
                changes,
                projection: Some(Box::new(read_model::project_checked(
                    &mut doc,
                    &record,
                    COMMUNE,
                    0,
                    &read_model::no_deadline_rules(),
                ))),
            })
        })
        .collect()
}

async fn projection(
    report: &mut Report,
    backend: &str,
    urls: &[String],
    docs: &[IncomingDoc],
) -> anyhow::Result<()> {
    let prefix = format!("console.projection.{backend}");
    let n = docs.len() as f64;
    // As the push path ingests (with each document's row), then from the stored changes.
    for ((label, with_rows), url) in [("ingest", true), ("ingest_from_changes", false)]
        .into_iter()
        .zip(urls)
    {
        let s = storage::open(url).await?;
        s.create_commune(COMMUNE, "Bench").await?;
        let code = [1u8; 32];
        s.create_enrollment_code(&Scope::Commune(COMMUNE.into()), code, i64::MAX)
            .await?;
        let device = s
            .enroll(code, DeviceId::new(), [2u8; 32], "bench", 0)
            .await?;
        let batches: Vec<Vec<IncomingDoc>> = docs
            .chunks(BATCH)
            .map(|batch| {
                batch
                    .iter()
                    .cloned()
                    .map(|mut doc| {
                        if !with_rows {
                            doc.projection = None;
                        }
                        doc
                    })
                    .collect()
            })
            .collect();
        let started = Instant::now();
        for batch in batches {
            s.ingest(&device, batch, 1_790_000_000_000).await?;
        }
        let elapsed = started.elapsed();
        anyhow::ensure!(s.read_model_lag().await? == 0, "every document projected");
        report.add(
            &format!("{prefix}.{label}_ms_per_doc"),
            ms(elapsed) / n,
            "ms",
            None,
        );
    }
    // What the push path adds per document: reading the row from the document it checked.
    let mut checked: Vec<(RecordDoc, Record)> = docs
        .iter()
        .map(|doc| {
            let bytes: Vec<Vec<u8>> = doc.changes.iter().map(|c| c.bytes.clone()).collect();
            RecordDoc::from_changes(
                doc.id,
                RecordKind::Application,
                &bytes,
                DeviceId::new(),
                Source::Server,
            )
        })
        .collect::<Result<_, _>>()?;
    let rules = read_model::no_deadline_rules();
    let started = Instant::now();
    for (doc, record) in &mut checked {
        std::hint::black_box(read_model::project_checked(doc, record, COMMUNE, 0, &rules));
    }
    report.add(
        &format!("{prefix}.project_checked_ms_per_doc"),
        ms(started.elapsed()) / n,
        "ms",
        None,
    );
    Ok(())
}

async fn dashboard(
    report: &mut Report,
    path: &std::path::Path,
    args: &ConsoleArgs,
) -> anyhow::Result<()> {
    // Migrate, then write rows with a plain connection.
    let s = storage::SqliteStorage::open(path).await?;
    drop(s);
    let started = Instant::now();
    {
        let mut conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        // Rows without documents or changes: only the read model is measured.
        conn.pragma_update(None, "foreign_keys", false)?;
        let tx = conn.transaction()?;
        {
            let mut commune = tx.prepare("INSERT INTO communes (code, name) VALUES (?1, ?2)")?;
            let mut row = tx.prepare(
                "INSERT INTO read_model (id, commune, kind, status, procedure_code, received_at, \
                 due_on, returned_at, on_time, has_conflicts, applicant_name, name_folded, \
                 changes, first_received_at, last_received_at) VALUES \
                 (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, 0, 'Nguyễn Văn A', 'nguyen van a', 3, ?5, ?5)",
            )?;
            let statuses = [
                "received",
                "in_progress",
                "ready",
                "returned",
                "returned",
                "returned",
            ];
            // Received over the past year up to today: the week's and month's counts have rows.
            let now = communesync_core::clock::Clock::now_ms(&communesync_core::clock::SystemClock);
            for c in 0..args.communes {
                let code = format!("DB-{c:02}");
                commune.execute(rusqlite::params![code, format!("Xã {c}")])?;
                for i in 0..args.rows_per_commune {
                    let received = now - (i as i64 % 365) * 86_400_000;
                    let status = statuses[i % statuses.len()];
                    let due = CivilDate::from_unix_millis(received + 7 * 86_400_000)?.to_string();
                    let returned =
                        (status == "returned").then_some(received + (i as i64 % 10) * 86_400_000);
                    let on_time = returned.map(|_| i % 10 < 7);
                    row.execute(rusqlite::params![
                        RecordId::new().as_bytes(),
                        code,
                        status,
                        ["1.001193", "1.000894", "2.000001"][i % 3],
                        received,
                        due,
                        returned,
                        on_time,
                    ])?;
                }
            }
        }
        tx.commit()?;
        conn.execute_batch("ANALYZE")?;
    }
    eprintln!("dashboard database written in {:?}", started.elapsed());
    let rows = (args.communes * args.rows_per_commune) as f64;
    report.add("console.dashboard.sqlite.rows", rows, "", None);

    let storage: Arc<dyn ServerStorage> = Arc::new(storage::SqliteStorage::open(path).await?);
    let now = communesync_core::clock::Clock::now_ms(&communesync_core::clock::SystemClock);
    let started = Instant::now();
    let lines = communesync_server::http::dashboard(storage.as_ref(), now).await?;
    report.add(
        "console.dashboard.sqlite.query_ms",
        ms(started.elapsed()),
        "ms",
        None,
    );
    anyhow::ensure!(lines.len() == args.communes, "dashboard lines");

    // An operator and a session, then the page over HTTP.
    storage
        .create_operator(
            "bench",
            &communesync_server::console::hash_password("bench password")
                .map_err(anyhow::Error::msg)?,
            "viewer",
            now,
        )
        .await?;
    let token = "bench-session-token";
    storage
        .create_session(
            communesync_server::http::hash_secret(token),
            "bench",
            "csrf",
            now,
            now + 3_600_000,
        )
        .await?;
    let state = communesync_server::http::AppState::new(storage, Default::default());
    let listener = communesync_server::serve::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(communesync_server::serve::serve(
        listener,
        communesync_server::http::router(state),
        Default::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let mut samples = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        let page = tokio::task::spawn_blocking(move || get_page(addr, token)).await??;
        samples.push(ms(started.elapsed()));
        anyhow::ensure!(
            page.contains("DB-44") || args.communes < 45,
            "the page lists the communes"
        );
    }
    report.add(
        "console.dashboard.sqlite.page_ms",
        percentile(&mut samples, 50.0),
        "ms",
        Some(("<", 300.0)),
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    Ok(())
}

fn get_page(addr: SocketAddr, token: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "GET /console HTTP/1.1\r\nHost: {addr}\r\nCookie: cs_session={token}\r\nConnection: close\r\n\r\n"
    )?;
    let mut page = String::new();
    stream.read_to_string(&mut page)?;
    anyhow::ensure!(
        page.starts_with("HTTP/1.1 200"),
        "GET /console: {}",
        page.lines().next().unwrap_or("")
    );
    Ok(page)
}
