//! An honest tablet for end-to-end tests: a device store in a temporary directory, enrolled on a
//! test server with a code, and its sync client.

use std::sync::{Arc, Mutex, PoisonError};

use communesync_core::record::DeviceId;
use communesync_core::store::{DeviceStore, StoreConfig};
use communesync_core::sync::{ReqwestTransport, SyncClient, SyncConfig, enroll};

/// A tablet enrolled on a server.
pub struct Tablet {
    /// Its sync client.
    pub client: SyncClient<ReqwestTransport>,
    /// Its store, shared with the client.
    pub store: Arc<Mutex<DeviceStore>>,
    /// Its device id.
    pub device: DeviceId,
}

impl Tablet {
    /// A new store `dir/name.db`, enrolled at `url` with enrollment code `code`.
    pub async fn enroll(
        dir: &std::path::Path,
        name: &str,
        url: &str,
        code: &str,
    ) -> anyhow::Result<Self> {
        Self::enroll_with(dir, name, url, code, SyncConfig::default()).await
    }

    /// [`Tablet::enroll`] with a sync configuration of its own.
    pub async fn enroll_with(
        dir: &std::path::Path,
        name: &str,
        url: &str,
        code: &str,
        config: SyncConfig,
    ) -> anyhow::Result<Self> {
        let store = DeviceStore::open(StoreConfig::new(dir.join(format!("{name}.db"))))?;
        let device = store.device_id();
        let transport = ReqwestTransport::new(url)?;
        let credentials = enroll(&transport, code, device, name).await?;
        let store = Arc::new(Mutex::new(store));
        let client = SyncClient::new(transport, store.clone(), credentials.token, config)?;
        Ok(Tablet {
            client,
            store,
            device,
        })
    }

    /// Runs `f` on the store.
    pub fn with<T>(&self, f: impl FnOnce(&mut DeviceStore) -> T) -> T {
        f(&mut self.store.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
