//! Property: with many tablets taking dossiers offline, syncing now and then, answers lost between
//! the server's allocation and the tablet's use, apps killed and reopened, tablets reinstalled
//! (a new store and device id; the operator wipes the old one) and re-enrolled (same store), no two
//! dossiers ever share a number, and every number the server handed out is accounted for: used by
//! a record, or unused (held by a live tablet, or abandoned with a wiped one).
//!
//! The server side is the real storage (SQLite) and the real allocation ([`numbers::exchange`]);
//! the wire is left out (the HTTP path is `dossier_numbers.rs`).

// Test code: a failed step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use communesync_core::catalogue::Procedure;
use communesync_core::clock::ManualClock;
use communesync_core::record::{Applicant, DeviceId, NewApplication, RecordId};
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_server::numbers::{self, NumberConfig, check_new_number};
use communesync_server::storage::{self, Device, NumberBlock, Scope, ServerStorage};
use proptest::prelude::*;

const COMMUNE: &str = "01234";
const START: i64 = 1_796_526_000_000;
const DAY: i64 = 86_400_000;

#[derive(Debug, Clone)]
enum Step {
    /// Tablet `n` takes `count` dossiers.
    Intake(usize, u8),
    /// Tablet `n` syncs; `lose` drops the answer (the block was allocated, never received).
    Sync(usize, bool),
    /// Tablet `n`'s app is killed and reopened.
    Kill(usize),
    /// Tablet `n` is reinstalled: a new store; the operator wipes the old device.
    Reinstall(usize),
    /// Tablet `n` re-enrolls with its store.
    Reenroll(usize),
    /// A day passes.
    NextDay,
}

fn step(tablets: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..tablets, 1..12u8).prop_map(|(n, c)| Step::Intake(n, c)),
        4 => (0..tablets, proptest::bool::weighted(0.3)).prop_map(|(n, l)| Step::Sync(n, l)),
        2 => (0..tablets).prop_map(Step::Kill),
        1 => (0..tablets).prop_map(Step::Reinstall),
        1 => (0..tablets).prop_map(Step::Reenroll),
        1 => Just(Step::NextDay),
    ]
}

struct Tablet {
    dir: tempfile::TempDir,
    generation: u32,
    store: Option<DeviceStore>,
    device: Device,
}

impl Tablet {
    fn path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("store-{}.db", self.generation))
    }
    fn store(&mut self) -> &mut DeviceStore {
        self.store.as_mut().unwrap()
    }
}

struct World {
    storage: Arc<dyn ServerStorage>,
    config: NumberConfig,
    clock: ManualClock,
    tablets: Vec<Tablet>,
    /// Every dossier ever taken: number -> (device, record).
    dossiers: Vec<(String, DeviceId, RecordId)>,
    /// Devices whose store was destroyed.
    wiped: HashSet<DeviceId>,
    secrets: u64,
}

impl World {
    fn secret(&mut self) -> [u8; 32] {
        self.secrets += 1;
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&self.secrets.to_le_bytes());
        bytes[8..24].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        bytes
    }

    fn open(&self, path: &std::path::Path) -> DeviceStore {
        let mut store =
            DeviceStore::open_with_clock(StoreConfig::new(path), Arc::new(self.clock.clone()))
                .unwrap();
        store
            .import_catalogue(&[Procedure::new(
                "1.001193",
                "Đăng ký khai sinh",
                communesync_core::catalogue::ProcessingTime::WorkingDays(3),
            )])
            .unwrap();
        store
    }

    async fn enroll(&mut self, store: &mut DeviceStore, reenroll: bool) -> Device {
        let code = self.secret();
        let token = self.secret();
        let now = communesync_core::clock::Clock::now_ms(&self.clock);
        if reenroll {
            self.storage
                .create_reenrollment_code(store.device_id(), code, now + DAY)
                .await
                .unwrap();
        } else {
            self.storage
                .create_enrollment_code(&Scope::Commune(COMMUNE.into()), code, now + DAY)
                .await
                .unwrap();
        }
        let device = self
            .storage
            .enroll(code, store.device_id(), token, "tablet", now)
            .await
            .unwrap();
        store.set_enrolled_commune(Some(COMMUNE)).unwrap();
        device
    }

    async fn add_tablet(&mut self) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = self.open(&dir.path().join("store-0.db"));
        let device = self.enroll(&mut store, false).await;
        self.tablets.push(Tablet {
            dir,
            generation: 0,
            store: Some(store),
            device,
        });
    }

    async fn sync(&mut self, n: usize, lose: bool) {
        let now = communesync_core::clock::Clock::now_ms(&self.clock);
        let tablet = &mut self.tablets[n];
        let state = tablet.store().number_state().unwrap();
        let grant = numbers::exchange(&*self.storage, &self.config, &tablet.device, &state, now)
            .await
            .unwrap();
        if !lose {
            tablet.store().apply_number_grant(&grant).unwrap();
            tablet.store().mark_numbers_reported(&state).unwrap();
        }
    }

    async fn run(&mut self, step: Step) {
        match step {
            Step::Intake(n, count) => {
                for i in 0..count {
                    let tablet = &mut self.tablets[n];
                    let device = tablet.store().device_id();
                    let app = tablet
                        .store()
                        .create_application(
                            "lan",
                            NewApplication {
                                commune_code: COMMUNE.into(),
                                procedure_code: "1.001193".into(),
                                applicant: Applicant {
                                    name: format!("Người nộp {i}"),
                                    ..Applicant::default()
                                },
                                ..NewApplication::default()
                            },
                        )
                        .unwrap();
                    let number = app.dossier_number.clone().unwrap();
                    self.dossiers.push((number, device, app.id));
                }
            }
            Step::Sync(n, lose) => self.sync(n, lose).await,
            Step::Kill(n) => {
                let tablet = &mut self.tablets[n];
                drop(tablet.store.take());
                let path = tablet.path();
                self.tablets[n].store = Some(self.open(&path));
            }
            Step::Reinstall(n) => {
                let old = self.tablets[n].device.id;
                let mut store = self.tablets[n].store.take().unwrap();
                store.wipe().unwrap();
                self.storage.revoke_and_wipe_device(old).await.unwrap();
                self.wiped.insert(old);
                self.tablets[n].generation += 1;
                let path = self.tablets[n].path();
                let mut store = self.open(&path);
                assert_ne!(store.device_id(), old, "a new store has a new device id");
                self.tablets[n].device = self.enroll(&mut store, false).await;
                self.tablets[n].store = Some(store);
            }
            Step::Reenroll(n) => {
                let mut store = self.tablets[n].store.take().unwrap();
                let before = store.number_blocks().unwrap();
                let device = self.enroll(&mut store, true).await;
                assert_eq!(device.id, store.device_id());
                assert_eq!(store.number_blocks().unwrap(), before, "blocks are kept");
                self.tablets[n].device = device;
                self.tablets[n].store = Some(store);
            }
            Step::NextDay => self.clock.advance(DAY),
        }
    }

    /// Checks the two properties.
    async fn check(&mut self) {
        // 1. No two dossiers share a number.
        let mut seen: HashMap<&str, RecordId> = HashMap::new();
        for (number, _, id) in &self.dossiers {
            if let Some(other) = seen.insert(number.as_str(), *id) {
                panic!("{number} given to {other} and {id}");
            }
        }
        // Every live tablet reports, receives what is offered and reports again: the server's
        // account is then current for them.
        for n in 0..self.tablets.len() {
            self.sync(n, false).await;
            self.sync(n, false).await;
        }
        // 2. Accounting, block by block.
        let blocks: Vec<NumberBlock> = self.storage.number_blocks(None).await.unwrap();
        let mut by_device: HashMap<DeviceId, Vec<&NumberBlock>> = HashMap::new();
        for block in &blocks {
            by_device.entry(block.device).or_default().push(block);
        }
        let live: HashMap<DeviceId, usize> = self
            .tablets
            .iter()
            .enumerate()
            .map(|(n, t)| (t.device.id, n))
            .collect();
        for (device, blocks) in by_device {
            match live.get(&device) {
                Some(&n) => {
                    let store = self.tablets[n].store();
                    let held: HashMap<u64, u64> = store
                        .number_blocks()
                        .unwrap()
                        .into_iter()
                        .map(|h| (h.block.id, h.next))
                        .collect();
                    let uses = store.number_uses().unwrap();
                    for block in blocks {
                        assert!(block.acknowledged, "block {} held", block.id);
                        assert_eq!(held.get(&block.id), Some(&block.next), "block {}", block.id);
                        // first..next: each used by exactly one record of the store; the rest
                        // unused.
                        let mut used: Vec<u64> = uses
                            .iter()
                            .filter_map(|u| u.block.filter(|(b, _)| *b == block.id))
                            .map(|(_, seq)| seq)
                            .collect();
                        used.sort_unstable();
                        let expected: Vec<u64> = (block.first..block.next).collect();
                        assert_eq!(used, expected, "block {}", block.id);
                        for record in uses.iter().filter(|u| u.block.is_some()) {
                            assert!(store.contains(record.record).unwrap());
                        }
                    }
                    // What the server would accept from it: every number it gave.
                    let own_blocks: Vec<NumberBlock> =
                        self.storage.number_blocks(Some(device)).await.unwrap();
                    for (number, _, id) in self.dossiers.iter().filter(|d| d.1 == device) {
                        let app = store.get_application(*id).unwrap();
                        assert_eq!(app.dossier_number.as_deref(), Some(number.as_str()));
                        check_new_number(&app, device, &own_blocks, &self.config, false)
                            .unwrap_or_else(|r| panic!("{number}: {}", r.message));
                    }
                }
                None => {
                    // A wiped tablet: what the server counts as used was used by its records;
                    // the rest of the block is abandoned with it (no live device holds it).
                    assert!(self.wiped.contains(&device));
                    let numbers: HashSet<&str> = self
                        .dossiers
                        .iter()
                        .filter(|d| d.1 == device)
                        .map(|d| d.0.as_str())
                        .collect();
                    let format = communesync_core::numbering::NumberFormat::default();
                    let mut counted = 0;
                    for number in &numbers {
                        if let Some(communesync_core::numbering::Sequence::Block(seq)) =
                            format.sequence_of(number, COMMUNE)
                            && blocks.iter().any(|b| (b.first..b.next).contains(&seq))
                        {
                            counted += 1;
                        }
                    }
                    let reported: u64 = blocks.iter().map(|b| b.next - b.first).sum();
                    assert_eq!(counted, reported, "device {device}");
                }
            }
        }
        // Blocks of one agency never overlap.
        let mut ranges: Vec<(u64, u64)> = blocks.iter().map(|b| (b.first, b.last)).collect();
        ranges.sort_unstable();
        assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0), "{ranges:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn dossier_numbers_stay_unique_and_accounted(
        tablets in 2..6usize,
        steps in proptest::collection::vec(step(5), 1..70),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let storage = storage::open(&format!("sqlite:{}", dir.path().join("server.db").display()))
                .await
                .unwrap();
            storage.create_commune(COMMUNE, "Xã Mường Phăng").await.unwrap();
            let mut world = World {
                storage,
                config: NumberConfig {
                    // Small blocks, so that they run out and fallbacks happen.
                    policy: communesync_core::numbering::NumberPolicy {
                        min_block: 4,
                        max_block: 40,
                        days_ahead: 2,
                    },
                    ..NumberConfig::default()
                },
                clock: ManualClock::new(START),
                tablets: Vec::new(),
                dossiers: Vec::new(),
                wiped: HashSet::new(),
                secrets: 0,
            };
            for _ in 0..tablets {
                world.add_tablet().await;
            }
            for step in steps {
                let step = match step {
                    Step::Intake(n, c) => Step::Intake(n % tablets, c),
                    Step::Sync(n, l) => Step::Sync(n % tablets, l),
                    Step::Kill(n) => Step::Kill(n % tablets),
                    Step::Reinstall(n) => Step::Reinstall(n % tablets),
                    Step::Reenroll(n) => Step::Reenroll(n % tablets),
                    other => other,
                };
                world.run(step).await;
            }
            world.check().await;
        });
    }
}
