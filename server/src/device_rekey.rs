//! `communesync device --store F rekey`: rotates a store's encryption key.
//!
//! The current key comes from `COMMUNESYNC_STORE_KEY` (as for every `device` command); the new
//! one from `--new-key-file FILE` (64 hex digits, e.g. `openssl rand -hex 32 > FILE`, mode
//! 0600) or from `COMMUNESYNC_NEW_STORE_KEY`; never from an argument, which other users see in
//! the process list. Key texts and bytes are overwritten once used. On success the store opens
//! with the new key only; on failure it keeps the old key (a kill at any instant leaves it
//! openable with exactly one of the two: see `DeviceStore::rekey`).

use std::path::PathBuf;

use anyhow::Context;
use communesync_core::store::{DeviceStore, EncryptionKey};
use zeroize::Zeroizing;

/// Where the new key comes from.
#[derive(clap::Args)]
pub struct RekeyArgs {
    /// File holding the new key as 64 hex digits (else `COMMUNESYNC_NEW_STORE_KEY`).
    #[arg(long)]
    new_key_file: Option<PathBuf>,
}

/// A 32-byte key from 64 hex digits (surrounding white space ignored); the decoded bytes are
/// overwritten once copied into the key.
pub fn key_from_hex(text: &str) -> anyhow::Result<EncryptionKey> {
    let bytes = Zeroizing::new(hex::decode(text.trim()).context("the key is not hex")?);
    Ok(EncryptionKey::from_slice(&bytes)?)
}

fn new_key(args: &RekeyArgs) -> anyhow::Result<EncryptionKey> {
    let text = Zeroizing::new(match &args.new_key_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the new key from {}", path.display()))?,
        None => std::env::var("COMMUNESYNC_NEW_STORE_KEY")
            .context("no new key: give --new-key-file FILE or set COMMUNESYNC_NEW_STORE_KEY")?,
    });
    key_from_hex(&text).context("the new key")
}

/// Re-encrypts `store` with the new key.
pub fn run(store: &mut DeviceStore, args: RekeyArgs) -> anyhow::Result<()> {
    let key = new_key(&args)?;
    store
        .rekey(&key)
        .context("rekey failed; the store keeps its old key")?;
    Ok(())
}
