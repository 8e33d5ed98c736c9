//! Key rotation: [`Engine::rekey`] re-encrypts the store with a new key from the platform
//! keystore.
//!
//! Contract: after `Ok`, the store opens with the new key only (save it in the keystore and
//! delete the old one); after an error, the file keeps the old key and this engine is closed
//! (every call fails with `Storage`): open a new engine with the old key. A kill at any instant
//! leaves a store that opens with one of the two keys (keep both in the keystore until `rekey`
//! returns, then try the new one first at the next open). The key bytes are copied once into a
//! buffer overwritten after use, and the argument's copy is overwritten at once.

use zeroize::Zeroize;

use communesync_core::store::EncryptionKey;

use crate::engine::{Engine, blocking, lock_store};
use crate::error::CommuneSyncError;

#[uniffi::export(async_runtime = "tokio")]
impl Engine {
    /// Re-encrypts the store with `new_key` (32 bytes); takes time in proportion to the store's
    /// size (every page is read, re-encrypted and written, then checkpointed): run it when the
    /// tablet is idle, not during an intake.
    /// `InvalidInput` for a key that is not 32 bytes (nothing changes); on any other failure the
    /// store keeps its old key and this engine is closed (open it again with the old key).
    pub async fn rekey(&self, mut new_key: Vec<u8>) -> Result<(), CommuneSyncError> {
        let key = EncryptionKey::from_slice(&new_key);
        new_key.zeroize();
        let key = key?;
        self.check_open()?;
        let store = self.store.clone();
        let rekeyed = blocking(move || Ok(lock_store(&store).rekey(&key)?)).await;
        if let Err(err) = &rekeyed {
            self.close(CommuneSyncError::Storage(format!(
                "the key rotation failed ({err}): the store keeps its old key; open it again with it"
            )));
        }
        rekeyed
    }
}
