//! Receipts: intake with its signed receipt (creation, receipt, signature), receipt
//! verification, the QR payload's size, and what base45 saves in QR modules over base64url.

use std::sync::Arc;
use std::time::Instant;

use communesync_core::clock::ManualClock;
use communesync_core::keys::{DeviceKeyEntry, KeyList};
use communesync_core::receipt::{self, base45};
use communesync_core::record::Applicant;
use communesync_core::sample::SampleData;
use communesync_core::store::{DeviceStore, EncryptionKey, StoreConfig};

use crate::report::{Report, ms, percentile};

#[derive(clap::Args)]
pub struct ReceiptArgs {
    /// Intakes measured.
    #[arg(long, default_value_t = 2_000)]
    intakes: usize,
}

const COMMUNE: &str = "DB-MUONGPHANG";

pub fn run(args: &ReceiptArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(1_767_574_800_000);
    let mut store = DeviceStore::open_with_clock(
        StoreConfig::new(dir.path().join("receipts.db")).encrypted(EncryptionKey::new([42; 32])),
        Arc::new(clock.clone()),
    )?;
    store.import_catalogue(&SampleData::catalogue())?;
    let mut sample = SampleData::new(11);
    let mut report = Report::default();
    // The key is made once, at the first intake of the device's life: not an intake's cost.
    store.public_key()?;

    let mut intake = Vec::with_capacity(args.intakes);
    let mut payloads = Vec::with_capacity(args.intakes);
    for i in 0..args.intakes {
        clock.advance(17_000);
        let mut new = sample.application(COMMUNE, None);
        if i % 10 == 0 {
            // Worst cases: a long name and many papers.
            new.applicant = Applicant {
                name: "Hoàng Thị Phương Thảo Nguyễn Lê Minh Khuê Trần Đình Quốc Bảo".repeat(2),
                ..new.applicant
            };
            let paper = new.documents.first().cloned();
            if let Some(paper) = paper {
                new.documents = (0..30)
                    .map(|n| communesync_core::record::ReceivedDocument {
                        name: format!("{} {n}", paper.name),
                        ..paper.clone()
                    })
                    .collect();
            }
        }
        let t = Instant::now();
        let app = store.create_application("can.bo.mot.cua", new)?;
        let signed = store.issue_receipt(app.id)?;
        intake.push(ms(t.elapsed()));
        payloads.push(signed.payload);
    }
    report.add(
        "receipt.intake_with_receipt_p50",
        percentile(&mut intake, 50.0),
        "ms",
        None,
    );
    report.add(
        "receipt.intake_with_receipt_p99",
        percentile(&mut intake, 99.0),
        "ms",
        Some(("<", 10.0)),
    );

    let keys = KeyList::new(
        [DeviceKeyEntry {
            device: store.device_id(),
            commune: COMMUNE.into(),
            public_key: store.public_key()?,
            valid_from: 0,
            valid_until: None,
            revoked_at: None,
            version: 1,
        }],
        1,
    );
    let mut verify = Vec::with_capacity(payloads.len());
    for payload in &payloads {
        let t = Instant::now();
        let ok = receipt::verify_payload(payload, &keys).is_ok();
        verify.push(ms(t.elapsed()));
        anyhow::ensure!(ok, "a receipt did not verify");
    }
    report.add(
        "receipt.verify_p99",
        percentile(&mut verify, 99.0),
        "ms",
        Some(("<", 2.0)),
    );
    let longest = payloads.iter().map(String::len).max().unwrap_or(0);
    report.add(
        "receipt.qr_payload_bytes_max",
        longest as f64,
        "bytes",
        Some(("<=", 600.0)),
    );
    let mut typical: Vec<f64> = payloads.iter().map(|p| p.len() as f64).collect();
    report.add(
        "receipt.qr_payload_bytes_p50",
        percentile(&mut typical, 50.0),
        "bytes",
        None,
    );
    // The same bytes as base64url in byte mode: modules per side (EC level M).
    let longest_payload = payloads
        .iter()
        .max_by_key(|p| p.len())
        .cloned()
        .unwrap_or_default();
    let bytes = base45::decode(&longest_payload).map_err(anyhow::Error::msg)?;
    let modules = |text: &str| {
        qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M)
            .map(|c| c.width() as f64)
            .unwrap_or(f64::NAN)
    };
    report.add(
        "receipt.qr_modules_base45",
        modules(&longest_payload),
        "modules",
        None,
    );
    report.add(
        "receipt.qr_modules_base64url",
        modules(&base64url(&bytes)),
        "modules",
        None,
    );
    report.table("receipts");
    Ok(())
}

fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}
