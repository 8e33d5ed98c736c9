//! Dossier numbers on the server: what a sync answers about numbers, and the check that a pushed
//! application's number is the pushing device's to give.
//!
//! Contract:
//! - [`exchange`] records the device's report (its blocks and how far it used them), offers
//!   again every block it was granted but has not acknowledged (an answer lost on the way), and
//!   grants one new block when the numbers it has left fall below half a block of its recent
//!   intake ([`NumberPolicy`]). It allocates at most one block per sync, and none while the
//!   device already holds [`MAX_OPEN_BLOCKS`] unused blocks: a device claiming a huge intake gets
//!   at most [`NumberPolicy::max_block`] numbers per sync.
//! - [`check_new_number`] accepts a new application's number only if it is a number of one of
//!   the pushing device's blocks (by that block's format and agency, within its range), or a
//!   fallback carrying that device's serial or id, flagged as a fallback; and only if no other
//!   record has it. So an enrolled tablet, however hostile, cannot take another device's number.
//!   An application without a number (an older app) is accepted as before.

use communesync_core::integrity::{Refusal, RefusalCode};
use communesync_core::numbering::{
    GrantedBlock, MAX_HELD_BLOCKS, NumberFormat, NumberGrant, NumberPolicy, NumberState, Sequence,
    agency_code,
};
use communesync_core::record::{Application, DeviceId, RecordId};

use crate::storage::{Device, NumberBlock, Result, ServerStorage};

/// Most block reports read from one request (a device holds far fewer).
pub const MAX_REPORTED_BLOCKS: usize = 256;

/// Unused blocks a device may hold before the server stops granting it more.
pub const MAX_OPEN_BLOCKS: usize = MAX_HELD_BLOCKS / 4;

/// The province's numbering settings.
#[derive(Debug, Clone)]
pub struct NumberConfig {
    /// The format new blocks are rendered with.
    pub format: NumberFormat,
    /// One agency code for every commune (one counter for the province); `None`: each commune's
    /// own code is its agency code.
    pub agency: Option<String>,
    /// The agency code of province-wide devices when [`NumberConfig::agency`] is not set.
    pub province_agency: String,
    /// Block sizing.
    pub policy: NumberPolicy,
}

impl Default for NumberConfig {
    fn default() -> Self {
        NumberConfig {
            format: NumberFormat::default(),
            agency: None,
            province_agency: "TINH".to_owned(),
            policy: NumberPolicy::default(),
        }
    }
}

impl NumberConfig {
    /// The agency whose counter `device`'s blocks come from.
    pub fn agency_for(&self, device: &Device) -> String {
        let code = match (&self.agency, device.scope.commune()) {
            (Some(agency), _) => agency.as_str(),
            (None, Some(commune)) => commune,
            (None, None) => self.province_agency.as_str(),
        };
        agency_code(code)
    }
}

fn granted(block: &NumberBlock) -> GrantedBlock {
    GrantedBlock {
        id: block.id,
        agency: block.agency.clone(),
        format: block.format.clone(),
        first: block.first,
        last: block.last,
    }
}

/// What to answer `device`, which reported `state`, about its numbers.
pub async fn exchange(
    storage: &dyn ServerStorage,
    config: &NumberConfig,
    device: &Device,
    state: &NumberState,
    now: i64,
) -> Result<NumberGrant> {
    let reported: Vec<(u64, u64)> = state
        .blocks
        .iter()
        .take(MAX_REPORTED_BLOCKS)
        .map(|usage| (usage.block, usage.next))
        .collect();
    if !reported.is_empty() {
        storage
            .report_number_usage(device.id, &reported, now)
            .await?;
    }
    let held: std::collections::HashSet<u64> = reported.iter().map(|(id, _)| *id).collect();
    let blocks = storage.number_blocks(Some(device.id)).await?;
    // Unused numbers by the server's account (the device's reports), offered grants included.
    let open: Vec<&NumberBlock> = blocks.iter().filter(|b| b.next <= b.last).collect();
    let remaining: u64 = open.iter().map(|b| b.last + 1 - b.next).sum();
    let mut offer: Vec<GrantedBlock> = blocks
        .iter()
        .filter(|b| !held.contains(&b.id) && !b.acknowledged)
        .map(granted)
        .collect();
    let agency = config.agency_for(device);
    if open.len() < MAX_OPEN_BLOCKS && config.policy.needs_block(remaining, state.recent_intake) {
        let size = config.policy.block_size(state.recent_intake);
        let block = storage
            .allocate_number_block(device.id, &agency, config.format.as_str(), size, now)
            .await?;
        tracing::info!(device = %device.id, block = block.id, first = block.first, last = block.last, "dossier number block granted");
        offer.push(granted(&block));
    }
    Ok(NumberGrant {
        format: config.format.as_str().to_owned(),
        agency,
        blocks: offer,
    })
}

/// Checks the number of a new application pushed by `device`, which holds `blocks`.
/// `taken_by_other` says whether another record already has the number.
pub fn check_new_number(
    app: &Application,
    device: DeviceId,
    blocks: &[NumberBlock],
    config: &NumberConfig,
    taken_by_other: bool,
) -> std::result::Result<(), Refusal> {
    let Some(number) = &app.dossier_number else {
        return Ok(());
    };
    let refuse = |why: &str| Err(Refusal::new(RefusalCode::DossierNumber, why));
    if taken_by_other {
        return refuse("this dossier number belongs to another record");
    }
    let of_a_block = blocks.iter().any(|block| {
        NumberFormat::parse(&block.format).is_ok_and(|format| {
            matches!(format.sequence_of(number, &block.agency),
                Some(Sequence::Block(seq)) if (block.first..=block.last).contains(&seq))
        })
    });
    if of_a_block {
        if app.dossier_number_fallback {
            return refuse("a number of a granted block is not a fallback");
        }
        return Ok(());
    }
    // A fallback: rendered with a format the device may hold (the province's, the default, or
    // one of its blocks') and an agency it may use, carrying its own serial or id.
    let mut formats = vec![config.format.clone(), NumberFormat::default()];
    formats.extend(
        blocks
            .iter()
            .filter_map(|b| NumberFormat::parse(&b.format).ok()),
    );
    let mut agencies = vec![agency_code(&app.commune_code)];
    agencies.extend(config.agency.as_deref().map(agency_code));
    agencies.push(agency_code(&config.province_agency));
    agencies.extend(blocks.iter().map(|b| b.agency.clone()));
    let own = |sequence: Sequence| match sequence {
        Sequence::Serial { serial, .. } => blocks.iter().any(|b| b.id == serial),
        Sequence::Device { device: named, .. } => named == device,
        Sequence::Block(_) => false,
    };
    let fallback = formats.iter().any(|format| {
        agencies
            .iter()
            .any(|agency| format.sequence_of(number, agency).is_some_and(own))
    });
    if !fallback {
        return refuse("this dossier number was not granted to this device");
    }
    if !app.dossier_number_fallback {
        return refuse("a fallback dossier number must be flagged as one");
    }
    Ok(())
}

/// The new numbered applications of one push: checked one by one, recorded once stored.
#[derive(Default)]
pub(crate) struct NewNumbers {
    /// The pushing device's blocks, read at the first numbered application.
    blocks: Option<Vec<NumberBlock>>,
    /// Numbers admitted in this push, with their record.
    admitted: Vec<(String, RecordId)>,
}

impl NewNumbers {
    /// Checks `app`'s number ([`check_new_number`]); an admitted number is remembered for
    /// [`NewNumbers::record`]. The outer error is storage's, the inner the refusal.
    pub(crate) async fn admit(
        &mut self,
        storage: &dyn ServerStorage,
        config: &NumberConfig,
        device: &Device,
        app: &Application,
    ) -> Result<std::result::Result<(), Refusal>> {
        let Some(number) = &app.dossier_number else {
            return Ok(Ok(()));
        };
        let blocks = match &self.blocks {
            Some(blocks) => blocks,
            None => self
                .blocks
                .insert(storage.number_blocks(Some(device.id)).await?),
        };
        let taken = self
            .admitted
            .iter()
            .any(|(other, id)| other == number && *id != app.id)
            || storage
                .dossier_number(number)
                .await?
                .is_some_and(|(doc, _)| doc != app.id);
        let verdict = check_new_number(app, device.id, blocks, config, taken);
        if verdict.is_ok() {
            self.admitted.push((number.clone(), app.id));
        }
        Ok(verdict)
    }

    /// Indexes the admitted numbers with their records (before the records are stored: a
    /// number stays with its record whatever happens to the request).
    pub(crate) async fn record(
        &self,
        storage: &dyn ServerStorage,
        device: DeviceId,
        now: i64,
    ) -> Result<()> {
        storage
            .record_dossier_numbers(device, &self.admitted, now)
            .await
    }
}
