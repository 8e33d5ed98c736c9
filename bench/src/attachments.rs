//! The attachments suite: a dossier of 10 camera photos of papers (generated 12 MP images with
//! text-like content, JPEG) prepared for 2G and uploaded over the emulated EDGE link
//! (100 kbit/s, 400 ms round trip) with 3 cuts; then the tablet's peak RSS increase while it
//! uploads 50 MB over an unshaped loopback link.
//!
//! The server runs in this process (SQLite), so the RSS figure is the tablet's and the server's
//! together: an upper bound of the tablet's.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Args;
use communesync_core::attachment::prepare::{PrepareOptions, prepare_bytes, sample_page_photo};
use communesync_core::attachment::{AttachmentCategory, NewAttachment};
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_core::sync::attachments::AttachmentPolicy;
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, enroll};
use communesync_server::link::{Cut, LinkProfile, PoorLink};
use communesync_tests::TestServer;

use crate::report::{Report, peak_rss_mb, reset_peak_rss, rss_mb_of};

const COMMUNE: &str = "DB-MUONGPHANG";

/// Options of the attachments suite.
#[derive(Args)]
pub struct AttachmentArgs {
    /// Pages in the dossier.
    #[arg(long, default_value_t = 10)]
    pages: usize,
    /// Cuts during the 2G upload.
    #[arg(long, default_value_t = 3)]
    cuts: u64,
    /// Megabytes uploaded for the memory figure.
    #[arg(long, default_value_t = 50)]
    rss_megabytes: usize,
}

struct Tablet {
    client: SyncClient<ReqwestTransport>,
    store: Arc<Mutex<DeviceStore>>,
}

async fn tablet(
    dir: &std::path::Path,
    name: &str,
    url: &str,
    code: &str,
) -> anyhow::Result<Tablet> {
    let mut store = DeviceStore::open(StoreConfig::new(dir.join(format!("{name}.db"))))?;
    store.import_catalogue(&SampleData::catalogue())?;
    let transport = ReqwestTransport::new(url)?;
    let credentials = enroll(&transport, code, store.device_id(), name).await?;
    let store = Arc::new(Mutex::new(store));
    let client = SyncClient::new(
        transport,
        store.clone(),
        credentials.token,
        SyncConfig::default(),
    )?;
    Ok(Tablet { client, store })
}

fn with<T>(tablet: &Tablet, f: impl FnOnce(&mut DeviceStore) -> T) -> T {
    f(&mut tablet.store.lock().unwrap_or_else(|p| p.into_inner()))
}

pub fn run(args: &AttachmentArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: &AttachmentArgs) -> anyhow::Result<()> {
    let mut report = Report::default();
    let dir = tempfile::tempdir()?;

    // The dossier: camera photos, then prepared pages.
    let mut originals = 0usize;
    let mut prepared = Vec::new();
    // 130 KB a page (under the 150 KB default) leaves room in the 1.5 MB dossier target for
    // the chunks re-sent after the cuts and the request heads.
    let options = PrepareOptions {
        grayscale: true,
        target_bytes: 130_000,
        ..Default::default()
    };
    let started = Instant::now();
    for page in 0..args.pages {
        let photo = sample_page_photo(4000, 3000, page as u64 + 1);
        let mut jpeg = Vec::new();
        image_jpeg(&photo, &mut jpeg)?;
        originals += jpeg.len();
        prepared.push(prepare_bytes(&jpeg, &options)?.bytes);
    }
    let prepare_seconds = started.elapsed().as_secs_f64();
    let prepared_total: usize = prepared.iter().map(Vec::len).sum();
    report.add(
        "attach_original_mb_per_page",
        originals as f64 / args.pages as f64 / 1e6,
        "MB",
        None,
    );
    report.add(
        "attach_prepared_kb_per_page",
        prepared_total as f64 / args.pages as f64 / 1e3,
        "KB",
        None,
    );
    report.add(
        "attach_prepare_s_per_page",
        prepare_seconds / args.pages as f64,
        "s",
        None,
    );

    // The 2G upload with cuts.
    let url = format!("sqlite:{}", dir.path().join("server.db").display());
    let server = TestServer::start(&url).await?;
    let codes = server.commune_with_codes(COMMUNE, 2).await?;
    let link = PoorLink::start(server.addr, LinkProfile::edge_2g()).await?;
    let link_url = format!("http://{}", link.addr());
    let lan = tablet(dir.path(), "lan", &link_url, &codes[0]).await?;
    let mut sample = SampleData::new(3);
    with(&lan, |store| -> anyhow::Result<()> {
        let id = store
            .create_application("lan", sample.application(COMMUNE, None))?
            .id;
        for (page, bytes) in prepared.iter().enumerate() {
            let new = NewAttachment {
                mime: "image/jpeg".into(),
                caption: format!("Trang {}", page + 1),
                page: page as u32 + 1,
                category: if page == 0 {
                    AttachmentCategory::IdentityCard
                } else {
                    AttachmentCategory::Document
                },
                ..Default::default()
            };
            store.attach_bytes(id, "lan", new, bytes)?;
        }
        Ok(())
    })?;
    let records_started = Instant::now();
    lan.client.sync(&|_| {}).await?;
    report.add(
        "attach_2g_records_s",
        records_started.elapsed().as_secs_f64(),
        "s",
        None,
    );

    let policy = AttachmentPolicy {
        metered: false,
        ..Default::default()
    };
    let (up0, down0, cuts0) = (link.bytes_up(), link.bytes_down(), link.cuts());
    let started = Instant::now();
    // Cut each of the first connections a third of the way into the dossier.
    let cut_at = (prepared_total as u64 / (args.cuts + 1)).max(1);
    let mut failed_runs = 0;
    let mut remaining_cuts = args.cuts;
    for _ in 0..(args.cuts + 20) {
        if remaining_cuts > 0 {
            // A fresh connection for the cut to apply to (the pooled one would dodge it).
            link.cut_active();
            link.cut_next(Cut::upstream(cut_at));
            remaining_cuts -= 1;
        }
        match lan.client.upload_attachments(&policy, &|_| {}).await {
            Ok(_) => {
                if with(&lan, |s| s.pending_attachment_uploads(1))?.is_empty() {
                    break;
                }
            }
            Err(_) => failed_runs += 1,
        }
    }
    // Cuts the link made (a run may also fail on a pooled connection the link had dropped).
    let cuts = link.cuts() - cuts0;
    let seconds = started.elapsed().as_secs_f64();
    let up = link.bytes_up() - up0;
    let down = link.bytes_down() - down0;
    anyhow::ensure!(
        with(&lan, |s| s.pending_attachment_uploads(1))?.is_empty(),
        "the dossier was not uploaded"
    );
    report.add(
        "attach_dossier_prepared_mb",
        prepared_total as f64 / 1e6,
        "MB",
        None,
    );
    report.add(
        "attach_dossier_wire_mb",
        (up + down) as f64 / 1e6,
        "MB",
        Some(("<", 1.5)),
    );
    report.add("attach_2g_upload_s", seconds, "s", Some(("<", 150.0)));
    report.add("attach_2g_cuts", cuts as f64, "", None);
    report.add("attach_2g_failed_runs", failed_runs as f64, "", None);
    // Upper bound: everything sent beyond the payload (request heads included), per cut.
    let extra = up.saturating_sub(prepared_total as u64) as f64;
    report.add(
        "attach_resent_kb_per_cut",
        extra / (cuts.max(1) as f64) / 1e3,
        "KB",
        Some(("<=", 65.536)),
    );

    // Peak RSS while uploading 50 MB (unshaped loopback).
    let fast = tablet(dir.path(), "minh", &server.url(), &codes[1]).await?;
    let file = dir.path().join("scan.bin");
    let per_file = 5 * 1024 * 1024;
    let files = (args.rss_megabytes * 1024 * 1024).div_ceil(per_file);
    with(&fast, |store| -> anyhow::Result<()> {
        let id = store
            .create_application("minh", sample.application(COMMUNE, None))?
            .id;
        for n in 0..files {
            // Written to a file in pieces and attached from the file: never whole in memory.
            {
                use std::io::Write;
                let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
                let mut piece = vec![0u8; 64 * 1024];
                for k in 0..per_file / piece.len() {
                    for (i, b) in piece.iter_mut().enumerate() {
                        *b = ((i * 131 + k * 7 + n * 13) % 251) as u8;
                    }
                    out.write_all(&piece)?;
                }
            }
            let new = NewAttachment {
                mime: "application/pdf".into(),
                ..Default::default()
            };
            store.attach_file(id, "minh", new, &file)?;
        }
        Ok(())
    })?;
    fast.client.sync(&|_| {}).await?;
    let reset = reset_peak_rss(None);
    let before = rss_mb_of(None);
    fast.client.upload_attachments(&policy, &|_| {}).await?;
    let peak = peak_rss_mb();
    report.add(
        "attach_upload_50mb_rss_increase_mb",
        peak - before,
        "MB",
        Some(("<", 30.0)),
    );
    let missed = report.table(&format!(
        "attachments: {} pages 4000x3000, gray, target 130 KB; EDGE 100 kbit/s 400 ms RTT, {} cuts; \
         RSS = VmHWM - VmRSS before (tablet and in-process server{})",
        args.pages,
        args.cuts,
        if reset { "" } else { ", cumulative: clear_refs refused" }
    ));
    if missed > 0 {
        eprintln!("{missed} target(s) missed");
    }
    server.stop().await;
    Ok(())
}

/// The camera's JPEG of a generated page (quality 90, as phone cameras write).
fn image_jpeg(photo: &image::RgbImage, out: &mut Vec<u8>) -> anyhow::Result<()> {
    use image::ImageEncoder;
    image::codecs::jpeg::JpegEncoder::new_with_quality(out, 90).write_image(
        photo.as_raw(),
        photo.width(),
        photo.height(),
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(())
}
