//! The demo: a commune's two tablets take applications offline, query and search them, edit the
//! same application concurrently, exchange changes and settle the conflict.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use communesync_core::catalogue::CivilDate;
use communesync_core::record::{ConflictValue, RecordKind, Status};
use communesync_core::sample::SampleData;
use communesync_core::store::{ApplicationQuery, DeviceStore, EncryptionKey, StoreConfig};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Folder for the two tablets' stores (a temporary one by default).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Applications to take in on the first tablet.
    #[arg(long, default_value_t = 300)]
    applications: usize,
}

const COMMUNE: &str = "DB-MUONGPHANG";

fn open(path: PathBuf, key: u8) -> anyhow::Result<DeviceStore> {
    let mut store =
        DeviceStore::open(StoreConfig::new(path).encrypted(EncryptionKey::new([key; 32])))?;
    store.import_catalogue(&SampleData::catalogue())?;
    store.set_holidays(&SampleData::holidays())?;
    Ok(store)
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!(
        "communesync demo: commune {COMMUNE}, stores in {}",
        dir.display()
    );

    let mut lan = open(dir.join("tablet-lan.db"), 1)?;
    let mut minh = open(dir.join("tablet-minh.db"), 2)?;
    let mut sample = SampleData::new(2025);

    // Field intake in a village, no signal.
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..args.applications {
        let app = lan.create_application("lan", sample.application(COMMUNE, None))?;
        if i % 3 == 0 {
            lan.transition(app.id, "lan", Status::InProgress)?;
        }
        if i % 7 == 0 {
            lan.transition(app.id, "lan", Status::Rejected)?;
        }
        ids.push(app.id);
        if (i + 1) % 100 == 0 {
            println!("  taken in {} applications offline ...", i + 1);
        }
    }
    for _ in 0..20 {
        lan.create_citizen_request("lan", sample.citizen_request(COMMUNE))?;
    }
    println!(
        "tablet lan: {} applications and 20 citizen requests recorded offline in {:.2} s",
        args.applications,
        started.elapsed().as_secs_f64()
    );

    println!("\napplications by status:");
    for count in lan.counts_by_status()? {
        println!("  {:<22} {}", count.status.as_str(), count.count);
    }
    let today = CivilDate::today();
    println!(
        "due within 3 working days of {today}: {}",
        lan.due_soon(today, 3, 50, 0)?.total
    );
    let page = lan.query_applications(&ApplicationQuery {
        status: Some(Status::InProgress),
        descending: true,
        limit: 3,
        ..Default::default()
    })?;
    println!("newest in progress ({} in all):", page.total);
    for item in &page.items {
        println!(
            "  {}  {:<26} {}  due {}",
            item.id, item.applicant_name, item.village, item.due_at
        );
    }

    let target = lan.get_application(ids[0])?;
    let typed = communesync_core::search::fold(&target.applicant.name);
    let hits = lan.search(&typed, 5)?;
    println!(
        "\nsearch {typed:?} (typed without diacritics): {} hit(s)",
        hits.len()
    );
    for hit in &hits {
        println!("  {} {}", hit.title, hit.status);
    }

    // The second tablet receives the application (as sync will carry it), then both edit it.
    let changes = lan.changes_since(target.id, &[])?;
    minh.apply_remote_changes(target.id, RecordKind::Application, &changes)?;
    let base = lan.heads(target.id)?;
    lan.update_application(target.id, "lan", |a| {
        a.assignee = Some("lan".into());
        a.notes.push_str(" Lan: đã gọi điện cho công dân.");
    })?;
    minh.update_application(target.id, "minh", |a| {
        a.assignee = Some("minh".into());
        a.notes.insert_str(0, "Minh: hồ sơ ưu tiên. ");
    })?;
    let from_lan = lan.changes_since(target.id, &base)?;
    let from_minh = minh.changes_since(target.id, &base)?;
    lan.apply_remote_changes(target.id, RecordKind::Application, &from_minh)?;
    minh.apply_remote_changes(target.id, RecordKind::Application, &from_lan)?;

    let merged = lan.get_application(target.id)?;
    anyhow::ensure!(
        merged == minh.get_application(target.id)?,
        "the tablets did not converge"
    );
    println!(
        "\nconcurrent edit of {} on both tablets, then exchanged:",
        target.id
    );
    println!("  notes merged character by character: {:?}", merged.notes);
    let conflicts = lan.conflicts(target.id)?;
    for conflict in &conflicts {
        let values: Vec<String> = conflict
            .values
            .iter()
            .map(|c| format!("{:?} by {}", c.value, c.officer.as_deref().unwrap_or("?")))
            .collect();
        println!("  conflict on {}: {}", conflict.field, values.join(" / "));
    }
    anyhow::ensure!(!conflicts.is_empty(), "expected a conflict on assignee");
    lan.resolve(
        target.id,
        "lan",
        "assignee",
        &ConflictValue::Str("minh".into()),
    )?;
    println!(
        "  resolved by lan: assignee = minh; conflicts left: {}",
        lan.conflicts(target.id)?.len()
    );

    println!("\nhistory of {}:", target.id);
    for entry in lan.history(target.id)? {
        println!(
            "  {} officer {:<5} device {} fields {}",
            &entry.hash[..12],
            entry.officer,
            entry
                .device
                .map(|d| d.to_string()[..8].to_owned())
                .unwrap_or_default(),
            entry.fields.join(",")
        );
    }
    let size: u64 = ["tablet-lan.db", "tablet-lan.db-wal"]
        .iter()
        .filter_map(|name| std::fs::metadata(dir.join(name)).ok())
        .map(|meta| meta.len())
        .sum();
    println!(
        "\ntablet lan store: {} KB with its journal (encrypted), integrity {}",
        size / 1024,
        lan.integrity_check()?
    );
    Ok(())
}
