//! The main job's demo: the provincial server on 127.0.0.1 with an embedded store, tablets in two
//! communes taking applications offline, the same application edited on two tablets, and every
//! tablet syncing through an emulated 2G link that cuts connections; then what converged.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use communesync_core::catalogue::CivilDate;
use communesync_core::record::{ConflictValue, RecordId, Status};
use communesync_core::sample::SampleData;
use communesync_core::store::{ApplicationQuery, DeviceStore, EncryptionKey, StoreConfig};
use communesync_core::sync::{
    ReqwestTransport, SyncClient, SyncConfig, SyncProgress, enroll_with_key,
};
use communesync_server::http::{self, AppState, ServerConfig};
use communesync_server::link::{Cut, LinkProfile, PoorLink};
use communesync_server::serve::ServeConfig;
use communesync_server::storage::{self, Scope};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Folder for the server database and the tablets' stores (temporary by default).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Applications each tablet of the first commune takes in offline.
    #[arg(long, default_value_t = 60)]
    applications: usize,
    /// Use a fast loopback link instead of the emulated 2G one.
    #[arg(long)]
    fast: bool,
}

const MUONG_PHANG: &str = "DB-MUONGPHANG";
const NA_TAU: &str = "DB-NATAU";

struct Tablet {
    name: &'static str,
    store: Arc<Mutex<DeviceStore>>,
    client: SyncClient<ReqwestTransport>,
}

impl Tablet {
    fn with<T>(&self, f: impl FnOnce(&mut DeviceStore) -> T) -> anyhow::Result<T> {
        let mut store = self
            .store
            .lock()
            .map_err(|_| anyhow::anyhow!("store lock poisoned"))?;
        Ok(f(&mut store))
    }

    fn total(&self) -> anyhow::Result<u64> {
        Ok(self
            .with(|s| s.counts_by_status())??
            .iter()
            .map(|c| c.count)
            .sum())
    }
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(demo(args))
}

async fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!("communesync demo (files in {})\n", dir.display());

    // The province: server on loopback with its embedded SQLite store.
    let database = format!("sqlite:{}", dir.join("province.db").display());
    let storage = storage::open(&database).await?;
    storage
        .create_commune(MUONG_PHANG, "Xã Mường Phăng")
        .await?;
    storage.create_commune(NA_TAU, "Xã Nà Tấu").await?;
    let catalogue = serde_json::json!({
        "procedures": SampleData::catalogue(),
        "holidays": SampleData::holidays(),
    });
    storage.put_catalogue(&catalogue.to_string()).await?;
    let listener = communesync_server::serve::bind(([127, 0, 0, 1], 0).into())?;
    let server_addr = listener.local_addr()?;
    let app = http::router(AppState::new(storage.clone(), ServerConfig::default()));
    let server = tokio::spawn(communesync_server::serve::serve(
        listener,
        app,
        ServeConfig::default(),
        std::future::pending(),
    ));
    println!("province server listening on http://{server_addr} (embedded SQLite)");

    let profile = if args.fast {
        LinkProfile::loopback()
    } else {
        LinkProfile::edge_2g()
    };
    let link = PoorLink::start(server_addr, profile).await?;
    let url = format!("http://{}", link.addr());
    println!(
        "tablets reach it through an emulated {} link at {url}\n",
        if args.fast {
            "loopback"
        } else {
            "2G/EDGE (100 kbit/s, 400 ms RTT)"
        }
    );

    let mut tablets = Vec::new();
    for (name, commune, key) in [
        ("lan", MUONG_PHANG, 1u8),
        ("minh", MUONG_PHANG, 2),
        ("hoa", NA_TAU, 3),
    ] {
        let now = communesync_core::clock::Clock::now_ms(&communesync_core::clock::SystemClock);
        let (code, _) = http::issue_enrollment_code(
            storage.as_ref(),
            &Scope::Commune(commune.to_owned()),
            Duration::from_secs(3600),
            now,
        )
        .await?;
        let mut store = DeviceStore::open(
            StoreConfig::new(dir.join(format!("tablet-{name}.db")))
                .encrypted(EncryptionKey::new([key; 32])),
        )?;
        let transport = ReqwestTransport::new(&url)?;
        let public_key = store.public_key()?;
        let credentials =
            enroll_with_key(&transport, &code, store.device_id(), name, Some(public_key)).await?;
        println!("tablet {name:<4} enrolled in {commune} with code {code}");
        let store = Arc::new(Mutex::new(store));
        let client = SyncClient::new(
            transport,
            store.clone(),
            credentials.token,
            SyncConfig::default(),
        )?;
        tablets.push(Tablet {
            name,
            store,
            client,
        });
    }

    // First contact: the tablets receive the province's catalogue.
    for tablet in &tablets {
        tablet.client.sync(&|_| {}).await?;
    }
    println!(
        "catalogue version {} reached every tablet\n",
        tablets[0].with(|s| s.catalogue_version())??
    );

    // Village visits: no signal. Intake offline.
    let mut sample = SampleData::new(2025);
    let mut shared: Option<RecordId> = None;
    for tablet in &tablets {
        let commune = if tablet.name == "hoa" {
            NA_TAU
        } else {
            MUONG_PHANG
        };
        let n = if tablet.name == "hoa" {
            args.applications / 3
        } else {
            args.applications
        };
        let started = Instant::now();
        tablet.with(|s| -> anyhow::Result<()> {
            for i in 0..n {
                let app = s.create_application(tablet.name, sample.application(commune, None))?;
                if i % 3 == 0 {
                    s.transition(app.id, tablet.name, Status::InProgress)?;
                }
                if tablet.name == "lan" && shared.is_none() {
                    shared = Some(app.id);
                }
            }
            for _ in 0..3 {
                s.create_citizen_request(tablet.name, sample.citizen_request(commune))?;
            }
            Ok(())
        })??;
        println!(
            "tablet {:<4} took in {n} applications and 3 citizen requests offline ({:.2} s)",
            tablet.name,
            started.elapsed().as_secs_f64()
        );
    }
    let shared = shared.context("no shared application")?;

    // lan syncs, minh pulls the application, then both edit it offline.
    println!("\nsyncing lan and minh once so both hold application {shared} ...");
    for tablet in &tablets[..2] {
        sync(tablet, &link, None).await?;
    }
    tablets[0].with(|s| {
        s.update_application(shared, "lan", |a| {
            a.assignee = Some("lan".into());
            a.notes.push_str(" Lan: đã gọi điện cho công dân.");
        })
    })??;
    tablets[1].with(|s| {
        s.update_application(shared, "minh", |a| {
            a.assignee = Some("minh".into());
            a.notes.insert_str(0, "Minh: hồ sơ ưu tiên. ");
        })
    })??;
    println!("lan and minh both edited it offline (assignee and notes)\n");

    // Back in signal range, on a link that drops: every tablet syncs, cut mid-transfer first.
    println!("syncing every tablet; the first attempt of each is cut mid-transfer:");
    for (i, tablet) in tablets.iter().enumerate() {
        let cut = if i % 2 == 0 {
            Cut::upstream(200 + 900 * i as u64)
        } else {
            Cut::downstream(300)
        };
        sync(tablet, &link, Some(cut)).await?;
    }
    for tablet in &tablets {
        sync(tablet, &link, None).await?;
    }

    // What converged.
    println!("\nwhat each side holds:");
    let stats = http::stats(storage.as_ref()).await?;
    for commune in &stats {
        println!(
            "  server  {:<14} {:>4} records, {:>4} changes",
            commune.code, commune.documents, commune.changes
        );
    }
    for tablet in &tablets {
        println!(
            "  tablet  {:<14} {:>4} applications, {} waiting to sync",
            tablet.name,
            tablet.total()?,
            tablet.with(|s| s.pending_count())??
        );
    }
    let lan_app = tablets[0].with(|s| s.get_application(shared))??;
    let minh_app = tablets[1].with(|s| s.get_application(shared))??;
    anyhow::ensure!(lan_app == minh_app, "lan and minh did not converge");
    println!("\napplication {shared} on lan and minh is identical:");
    println!("  notes merged character by character: {:?}", lan_app.notes);
    let conflicts = tablets[0].with(|s| s.conflicts(shared))??;
    for conflict in &conflicts {
        let values: Vec<String> = conflict
            .values
            .iter()
            .map(|c| format!("{:?} (by {})", c.value, c.officer.as_deref().unwrap_or("?")))
            .collect();
        println!(
            "  conflict surfaced on {}: {}",
            conflict.field,
            values.join(" vs ")
        );
    }
    anyhow::ensure!(
        !conflicts.is_empty(),
        "the concurrent assignee should be a conflict"
    );
    tablets[0].with(|s| {
        s.resolve(
            shared,
            "lan",
            "assignee",
            &ConflictValue::Str("minh".into()),
        )
    })??;
    sync(&tablets[0], &link, None).await?;
    sync(&tablets[1], &link, None).await?;
    println!(
        "  lan resolved it (assignee = minh); after sync minh sees {} conflict(s)",
        tablets[1].with(|s| s.conflicts(shared))??.len()
    );
    println!("  history:");
    for entry in tablets[1].with(|s| s.history(shared))?? {
        println!(
            "    officer {:<5} fields {}",
            entry.officer,
            entry.fields.join(", ")
        );
    }
    let hoa_sees_lan = tablets[2].with(|s| s.contains(shared))??;
    println!("\ncommune scope: hoa (Nà Tấu) holds Mường Phăng's application: {hoa_sees_lan}");
    receipt_story(
        &tablets,
        &storage,
        &dir,
        &link,
        sample.application(MUONG_PHANG, None),
    )
    .await?;
    let today = CivilDate::today();
    let due = tablets[1].with(|s| s.due_soon(today, 3, 5, 0))??;
    println!(
        "minh's list of applications due within 3 working days: {}",
        due.total
    );
    let search = tablets[1]
        .with(|s| s.search(&communesync_core::search::fold(&lan_app.applicant.name), 3))??;
    println!(
        "minh searches {:?} without diacritics: {} hit(s)",
        communesync_core::search::fold(&lan_app.applicant.name),
        search.len()
    );
    let page = tablets[1].with(|s| {
        s.query_applications(&ApplicationQuery {
            status: Some(Status::InProgress),
            limit: 1,
            ..Default::default()
        })
    })??;
    println!(
        "in progress across the commune, as minh sees it: {}",
        page.total
    );
    println!(
        "\nlink totals: {} connections, {} cut, {} KB up, {} KB down",
        link.connections(),
        link.cuts(),
        link.bytes_up() / 1024,
        link.bytes_down() / 1024
    );
    server.abort();
    Ok(())
}

/// An intake at the desk: a dossier number, the citizen's signed receipt (PDF), checked offline
/// by a tablet of another commune and online by the server; the history's signatures.
async fn receipt_story(
    tablets: &[Tablet],
    storage: &Arc<dyn storage::ServerStorage>,
    dir: &std::path::Path,
    link: &PoorLink,
    new: communesync_core::record::NewApplication,
) -> anyhow::Result<()> {
    let (lan, hoa) = (&tablets[0], &tablets[2]);
    let signed = lan.with(|s| -> anyhow::Result<_> {
        // The dossier number is given at intake, offline, from the block of numbers the
        // server granted this tablet at its last sync.
        let app = s.create_application(lan.name, new)?;
        Ok(s.issue_receipt(app.id)?)
    })??;
    let pdf = dir.join(format!("receipt-{}.pdf", signed.receipt.dossier_number));
    std::fs::write(
        &pdf,
        communesync_core::receipt::pdf::render(&signed, Some("Xã Mường Phăng"))?,
    )?;
    println!(
        "\nintake at the desk: dossier {} for {}, receipt signed by lan ({} QR bytes)\n  printed: {}",
        signed.receipt.dossier_number,
        signed.receipt.applicant_name,
        signed.payload.len(),
        pdf.display()
    );
    sync(lan, link, None).await?;
    sync(hoa, link, None).await?;
    match hoa.with(|s| s.verify_receipt(&signed.payload))?? {
        Ok(r) => println!(
            "  hoa (another commune) verifies it offline: genuine, due {}",
            r.due_date().map(|d| d.to_string()).unwrap_or_default()
        ),
        Err(refusal) => println!("  hoa refuses it: {refusal}"),
    }
    let mut altered = signed.payload.clone().into_bytes();
    altered[40] = if altered[40] == b'0' { b'1' } else { b'0' };
    if let Err(refusal) = hoa.with(|s| s.verify_receipt(&String::from_utf8_lossy(&altered)))?? {
        println!(
            "  an altered copy is refused: {} ({})",
            refusal.code(),
            refusal
        );
    }
    let (entries, version) = storage.device_keys_since(0, 100_000).await?;
    let online = communesync_core::receipt::verify_payload(
        &signed.payload,
        &communesync_core::keys::KeyList::new(entries, version),
    );
    println!(
        "  the server verifies it online: {}",
        if online.is_ok() { "genuine" } else { "refused" }
    );
    let history = http::record_history(storage.as_ref(), signed.receipt.record_id).await?;
    println!(
        "  its history on the server: {} change(s), signatures: {}",
        history.len(),
        history
            .iter()
            .map(|h| h.signature.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

async fn sync(tablet: &Tablet, link: &PoorLink, cut: Option<Cut>) -> anyhow::Result<()> {
    if let Some(cut) = cut {
        // Drop pooled connections so the cut lands on this sync's connection.
        link.cut_active();
        link.cut_next(cut);
    }
    let name = tablet.name;
    let progress = move |p: SyncProgress| {
        println!(
            "    {name:<4} request {:>2}: pushed {:>3} docs, pulled {:>3} docs, {:>6} B up, {:>6} B down",
            p.requests, p.pushed_docs, p.pulled_docs, p.bytes_up, p.bytes_down
        );
    };
    let started = Instant::now();
    match tablet.client.sync(&progress).await {
        Ok(report) => println!(
            "  {name:<4} synced in {:.1} s: {} request(s), pushed {} / pulled {} docs, {} conflict(s), {} retries",
            started.elapsed().as_secs_f64(),
            report.requests,
            report.pushed_docs,
            report.pulled_docs,
            report.conflicts,
            report.retries
        ),
        Err(err) => println!("  {name:<4} sync interrupted: {err} (will resume)"),
    }
    link.clear_pending_cuts();
    Ok(())
}
