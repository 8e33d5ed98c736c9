//! Dossier numbers: a number the citizen reads out and quotes, unique across the province, given
//! at intake on a tablet with no link.
//!
//! Contract:
//! - The server hands each device blocks of sequence numbers ahead of need ([`GrantedBlock`]):
//!   ranges of one agency's counter, never overlapping another block of that agency, allocated
//!   in one database transaction. A device takes the next number of its oldest block in the same
//!   store transaction that creates the application, so a kill can neither give a number twice
//!   nor lose one without a trace: a block's numbers below its `next` are each held by exactly
//!   one record of that device, the rest are unused.
//! - A number is rendered by the province's [`NumberFormat`] (default
//!   `{agency}-{yymmdd}-{seq:6}`: `01234-261206-000042`), kept with each block so that a later
//!   change of format never re-renders a block's numbers.
//! - With no block left, intake never stops: a fallback number replaces the sequence with
//!   `D<serial>-<n>` (`01234-261206-D17-3`), where `<serial>` is the id of the first block the
//!   server ever granted this device (block ids are unique, so serials are) and `<n>` a counter
//!   of the device's store; before any grant, `U<device id, 32 hex>-<n>`. The record is flagged
//!   ([`crate::record::Application::dossier_number_fallback`]).
//! - The device reports its state at each sync ([`NumberState`], wire extension 1) and the
//!   server answers with blocks and the format ([`NumberGrant`], wire extension 2). A grant the
//!   device has not acknowledged (its answer was lost) is offered again, never re-allocated.
//!
//! Why two numbers never collide: blocks of one agency are disjoint ranges of one counter, a
//! device consumes each sequence once, fallback numbers carry a token unique to their device,
//! and every placeholder of a format is delimited by characters no value contains, so distinct
//! (agency, sequence) pairs render distinct strings (docs/RELIABILITY.md).

mod format;

pub use format::{NumberFormat, Sequence};

use serde::{Deserialize, Serialize};

use crate::protocol::WireExtension;

/// The format used until the server sends one.
pub const DEFAULT_FORMAT: &str = "{agency}-{yymmdd}-{seq:6}";

/// Longest dossier number a record may carry, in bytes.
pub const MAX_NUMBER_LEN: usize = 96;

/// Longest agency code, in bytes.
pub const MAX_AGENCY_LEN: usize = 16;

/// Most numbers one block holds.
pub const MAX_BLOCK_SIZE: u64 = 100_000;

/// Most blocks a device holds at once (a grant past it is ignored).
pub const MAX_HELD_BLOCKS: usize = 64;

/// The days of intake [`NumberState::recent_intake`] counts.
pub const INTAKE_WINDOW_DAYS: i64 = 7;

/// The agency code of a commune code: its ASCII letters and digits, at most
/// [`MAX_AGENCY_LEN`]; `"X"` when none is left. Agency codes never contain a delimiter, which is
/// what keeps rendered numbers apart.
pub fn agency_code(code: &str) -> String {
    let kept: String = code
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(MAX_AGENCY_LEN)
        .collect();
    if kept.is_empty() {
        "X".to_owned()
    } else {
        kept
    }
}

/// How far a device has used one block it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockUsage {
    /// The block's id (the server's).
    pub block: u64,
    /// The next sequence the device would take: `first..next` are used by records.
    pub next: u64,
}

/// What a device tells the server about its numbers at a sync (wire extension tag 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberState {
    /// Every block the device holds, with how far it has used it (also its acknowledgement
    /// of a grant).
    pub blocks: Vec<BlockUsage>,
    /// Numbers left in its blocks.
    pub remaining: u64,
    /// Applications it numbered in the last [`INTAKE_WINDOW_DAYS`] days.
    pub recent_intake: u32,
    /// Fallback numbers it has given so far.
    pub fallback_used: u64,
}

impl WireExtension for NumberState {
    const TAG: u16 = 1;
    // 256 block reports of at most 20 bytes and a few numbers.
    const MAX_BYTES: usize = 8 * 1024;
}

/// A block of sequence numbers the server granted a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantedBlock {
    /// Its id: unique across the province (the server's row id).
    pub id: u64,
    /// The agency whose counter it comes from.
    pub agency: String,
    /// The format its numbers are rendered with.
    pub format: String,
    /// First sequence of the block.
    pub first: u64,
    /// Last sequence of the block (inclusive).
    pub last: u64,
}

impl GrantedBlock {
    /// How many numbers it holds.
    pub fn size(&self) -> u64 {
        self.last.saturating_sub(self.first).saturating_add(1)
    }
}

/// What the server answers about numbers (wire extension tag 2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberGrant {
    /// The province's current format (for fallback numbers and the apps to show).
    pub format: String,
    /// The agency code fallback numbers use for this device.
    pub agency: String,
    /// Blocks the device does not hold yet: new ones and grants it has not acknowledged.
    pub blocks: Vec<GrantedBlock>,
}

impl WireExtension for NumberGrant {
    const TAG: u16 = 2;
    // A few blocks (each with its format and agency) and the format.
    const MAX_BYTES: usize = 16 * 1024;
}

/// How the server sizes blocks. A block covers [`NumberPolicy::days_ahead`] days of the
/// device's recent intake, within `min_block..=max_block`; the server grants one when the
/// device's numbers left fall below half a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumberPolicy {
    /// Smallest block.
    pub min_block: u64,
    /// Largest block.
    pub max_block: u64,
    /// Days of intake a block should last offline.
    pub days_ahead: u64,
}

impl Default for NumberPolicy {
    fn default() -> Self {
        NumberPolicy {
            min_block: 50,
            max_block: 2_000,
            days_ahead: 14,
        }
    }
}

impl NumberPolicy {
    /// The block size for a device that numbered `recent_intake` applications in the last
    /// [`INTAKE_WINDOW_DAYS`] days.
    pub fn block_size(&self, recent_intake: u32) -> u64 {
        let per_day = u64::from(recent_intake).div_ceil(INTAKE_WINDOW_DAYS as u64);
        per_day
            .saturating_mul(self.days_ahead)
            .clamp(self.min_block, self.max_block.max(self.min_block))
    }

    /// Whether a device with `remaining` numbers and this intake needs a new block.
    pub fn needs_block(&self, remaining: u64, recent_intake: u32) -> bool {
        remaining < self.block_size(recent_intake).div_ceil(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agency_codes_keep_letters_and_digits_only() {
        assert_eq!(agency_code("01234"), "01234");
        assert_eq!(agency_code("DB-MUONGPHANG"), "DBMUONGPHANG");
        assert_eq!(agency_code("--"), "X");
        assert_eq!(agency_code("Xã"), "X");
        assert_eq!(agency_code(&"9".repeat(40)).len(), MAX_AGENCY_LEN);
    }

    #[test]
    fn blocks_follow_the_intake_rate_within_bounds() {
        let policy = NumberPolicy::default();
        assert_eq!(policy.block_size(0), 50);
        assert_eq!(policy.block_size(70), 140);
        assert_eq!(policy.block_size(u32::MAX), 2_000);
        assert!(policy.needs_block(24, 0));
        assert!(!policy.needs_block(25, 0));
        assert!(policy.needs_block(69, 70));
    }
}
