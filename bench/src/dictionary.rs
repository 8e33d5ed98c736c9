//! Trains the zstd dictionary that the device store compresses documents with
//! (`core/dict/records-v1.zdict`, see `docs/adr/0003-document-compression.md`).
//!
//! The training documents have the structure of real records (every field, the usual edits:
//! status, assignee, notes) but their text is random Vietnamese-like syllables, so the dictionary
//! learns the shape of a record and none of the phrases the benchmarks and demo generate.

use std::path::PathBuf;

use communesync_core::catalogue::CivilDate;
use communesync_core::record::{
    Application, Author, DeviceId, Record, RecordDoc, RecordId, Status,
};
use communesync_core::sample::SampleData;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(clap::Args)]
pub struct DictionaryArgs {
    /// Where to write the dictionary.
    #[arg(long, default_value = "core/dict/records-v1.zdict")]
    out: PathBuf,
    /// Training documents.
    #[arg(long, default_value_t = 6_000)]
    documents: usize,
    /// Dictionary size in bytes.
    #[arg(long, default_value_t = 32 * 1024)]
    size: usize,
}

const ONSETS: &[&str] = &[
    "b", "c", "ch", "d", "đ", "g", "gi", "h", "k", "kh", "l", "m", "n", "ng", "nh", "p", "ph",
    "qu", "r", "s", "t", "th", "tr", "v", "x", "",
];
const VOWELS: &str = "aàáảãạăằắẳẵặâầấẩẫậeèéẻẽẹêềếểễệiìíỉĩịoòóỏõọôồốổỗộơờớởỡợuùúủũụưừứửữựyỳýỷỹỵ";
const FINALS: &[&str] = &[
    "", "", "c", "ch", "m", "n", "ng", "nh", "p", "t", "i", "o", "u",
];

fn syllable(rng: &mut StdRng) -> String {
    let vowels: Vec<char> = VOWELS.chars().collect();
    let mut s = String::from(ONSETS[rng.random_range(0..ONSETS.len())]);
    s.push(vowels[rng.random_range(0..vowels.len())]);
    s.push_str(FINALS[rng.random_range(0..FINALS.len())]);
    s
}

fn words(rng: &mut StdRng, n: usize, capital: bool) -> String {
    (0..n)
        .map(|_| {
            let w = syllable(rng);
            if capital {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect())
                    .unwrap_or_default()
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn digits(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

pub fn run(args: &DictionaryArgs) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut samples: Vec<Vec<u8>> = Vec::new();
    // Held out of training, to measure what the dictionary buys on documents it has not seen.
    let held_out = 300;
    let mut eval_snapshots: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut eval_chunks: Vec<Vec<u8>> = Vec::new();
    let catalogue = SampleData::catalogue();
    let statuses = [
        Status::InProgress,
        Status::SupplementRequested,
        Status::InProgress,
        Status::Ready,
    ];
    for n in 0..args.documents + held_out {
        let training = n < args.documents;
        let device = DeviceId::new();
        let officer = words(&mut rng, 2, false).replace(' ', ".");
        let received_at = 1_760_000_000_000 + rng.random_range(0..40_000_000_000i64);
        let mut app = Application {
            id: RecordId::new(),
            // Applications carry a dossier number since they exist (shape of the default format).
            dossier_number: Some(format!(
                "{}-{}-{:06}",
                digits(&mut rng, 5),
                digits(&mut rng, 6),
                n
            )),
            commune_code: format!("{}-{}", digits(&mut rng, 2), words(&mut rng, 1, false)),
            procedure_code: catalogue[rng.random_range(0..catalogue.len())].code.clone(),
            applicant: communesync_core::record::Applicant {
                name: words(&mut rng, 3, true),
                id_number: digits(&mut rng, 12),
                phone: format!("0{}", digits(&mut rng, 9)),
                address: words(&mut rng, 4, true),
                village: words(&mut rng, 2, true),
            },
            received_at,
            due_at: CivilDate::from_unix_millis(received_at)?.plus_days(rng.random_range(0..40)),
            documents: vec![communesync_core::record::ReceivedDocument {
                name: words(&mut rng, 5, false),
                copies: 1,
                original: true,
            }],
            fees: Vec::new(),
            status: Status::Received,
            assignee: None,
            notes: {
                let n = rng.random_range(20..60);
                words(&mut rng, n, false)
            },
            created_by: Author {
                device: device.0,
                officer: officer.clone(),
            },
            attachments: Vec::new(),
            procedure_version: 0,
            form_values: Default::default(),
            dossier_number_fallback: false,
            clock_events: Vec::new(),
            returned_at: None,
            returned_on_time: None,
            imported: None,
        };
        let mut doc = RecordDoc::create(
            &Record::Application(app.clone()),
            device,
            &officer,
            received_at,
        )?;
        let edits = rng.random_range(0..7);
        for edit in 0..edits {
            let mut next = app.clone();
            match edit % 4 {
                0 if edit / 4 < statuses.len() => next.status = statuses[edit / 4],
                1 => next.assignee = Some(words(&mut rng, 2, false).replace(' ', ".")),
                _ => {
                    next.notes.push(' ');
                    let n = rng.random_range(5..12);
                    next.notes.push_str(&words(&mut rng, n, false));
                }
            }
            let heads = doc.heads();
            doc.edit(
                &app,
                &next,
                &officer,
                received_at + 60_000 * (edit as i64 + 1),
            )?;
            let chunk = doc.save_after(&heads);
            if training {
                samples.push(chunk);
            } else {
                eval_chunks.push(chunk);
            }
            app = next;
        }
        if training {
            samples.push(doc.save_uncompressed());
        } else {
            eval_snapshots.push((doc.save_uncompressed(), doc.save()));
        }
    }
    let dictionary = zstd::dict::from_samples(&samples, args.size)?;
    std::fs::write(&args.out, &dictionary)?;

    // How much it buys, on documents that were not in the training set.
    let average = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len().max(1) as f64;
    let mut with_dict = zstd::bulk::Compressor::with_dictionary(9, &dictionary)?;
    let mut plain = zstd::bulk::Compressor::new(9)?;
    let (mut raw, mut automerge, mut zstd_plain, mut zstd_dict) = (vec![], vec![], vec![], vec![]);
    for (uncompressed, saved) in &eval_snapshots {
        raw.push(uncompressed.len());
        automerge.push(saved.len());
        zstd_plain.push(plain.compress(uncompressed)?.len());
        zstd_dict.push(with_dict.compress(uncompressed)?.len());
    }
    let (mut chunk_raw, mut chunk_dict) = (vec![], vec![]);
    for chunk in &eval_chunks {
        chunk_raw.push(chunk.len());
        chunk_dict.push(with_dict.compress(chunk)?.len());
    }
    println!(
        "{}",
        serde_json::json!({
            "dictionary_bytes": dictionary.len(),
            "training_samples": samples.len(),
            "snapshot_automerge_save": average(&automerge),
            "snapshot_uncompressed": average(&raw),
            "snapshot_zstd_no_dictionary": average(&zstd_plain),
            "snapshot_zstd_dictionary": average(&zstd_dict),
            "chunk_automerge": average(&chunk_raw),
            "chunk_zstd_dictionary": average(&chunk_dict),
        })
    );
    Ok(())
}
