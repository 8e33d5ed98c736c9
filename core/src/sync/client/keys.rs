//! Keeping the province's key list on the tablet, and the first-use registration of this
//! device's key.
//!
//! The sync response carries the key list (protocol 4, tag 4). Besides it, this asks
//! `POST /v1/device-keys` for the entries after the version held, in pages (each applied in one
//! transaction): for a tablet that wants the list at once, without a sync. A device enrolled before keys existed finds its own key missing
//! from the list and registers it once (`POST /v1/device/key`, trust on first use over its
//! authenticated channel); a device whose registered key is another one is told so and must be
//! re-enrolled.

use serde::{Deserialize, Serialize};

use super::{Counters, RetryPolicy, SyncClient, SyncError, exchange};
use crate::keys::DeviceKeyEntry;
use crate::protocol::WireError;
use crate::sync::{HttpRequest, Transport};

/// Path of the key list endpoint.
pub const DEVICE_KEYS_PATH: &str = "/v1/device-keys";
/// Path of the first-use key registration.
pub const DEVICE_KEY_PATH: &str = "/v1/device/key";
/// Pages asked for in one refresh (each at most the server's page size).
const MAX_PAGES: usize = 64;

/// What a key list refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRefresh {
    /// The version of the list held now.
    pub version: u64,
    /// Entries applied.
    pub entries: usize,
    /// Whether this device's key was registered now (trust on first use).
    pub registered_own_key: bool,
}

#[derive(Deserialize)]
struct KeysOut {
    version: u64,
    entries: Vec<DeviceKeyEntry>,
    more: bool,
}

impl<T: Transport> SyncClient<T> {
    /// Brings the province's key list up to date (what receipts are verified against offline),
    /// and registers this device's key if the province has none for it.
    pub async fn refresh_device_keys(&self) -> Result<KeyRefresh, SyncError> {
        let retry = RetryPolicy {
            max_attempts: 3,
            initial_backoff: std::time::Duration::from_secs(1),
            max_backoff: std::time::Duration::from_secs(4),
            retry_rate_limited: false,
        };
        let mut counters = Counters::default();
        let mut applied = 0;
        let (device, own) = {
            let mut store = self.lock_store();
            (store.device_id(), store.public_key()?)
        };
        let mut own_listed = false;
        let mut own_device_listed = false;
        for _ in 0..MAX_PAGES {
            #[derive(Serialize)]
            struct Since {
                since: u64,
            }
            let since = self.lock_store().device_keys_version()?;
            let response = exchange(
                &self.transport,
                &retry,
                HttpRequest {
                    path: DEVICE_KEYS_PATH.to_owned(),
                    bearer: Some(self.token.clone()),
                    content_type: "application/json".to_owned(),
                    body: serde_json::to_vec(&Since { since })
                        .map_err(|e| crate::Error::Document(e.to_string()))?,
                },
                &mut counters,
            )
            .await?;
            let page: KeysOut = serde_json::from_slice(&response.body).map_err(|e| {
                SyncError::Protocol(WireError::Malformed(format!("device keys: {e}")))
            })?;
            own_listed |= page
                .entries
                .iter()
                .any(|e| e.device == device && e.public_key == own);
            own_device_listed |= page.entries.iter().any(|e| e.device == device);
            applied += page.entries.len();
            self.lock_store()
                .apply_device_keys(&page.entries, page.version)?;
            if !page.more {
                break;
            }
        }
        let held = self.lock_store().key_list()?;
        own_listed |= held
            .keys_of(device)
            .iter()
            .any(|e| e.public_key == own && e.version > 0);
        own_device_listed |= held.keys_of(device).iter().any(|e| e.version > 0);
        let mut registered_own_key = false;
        if !own_listed && !own_device_listed {
            #[derive(Serialize)]
            struct KeyRequest {
                public_key: String,
            }
            exchange(
                &self.transport,
                &retry,
                HttpRequest {
                    path: DEVICE_KEY_PATH.to_owned(),
                    bearer: Some(self.token.clone()),
                    content_type: "application/json".to_owned(),
                    body: serde_json::to_vec(&KeyRequest {
                        public_key: own.to_hex(),
                    })
                    .map_err(|e| crate::Error::Document(e.to_string()))?,
                },
                &mut counters,
            )
            .await?;
            registered_own_key = true;
        }
        Ok(KeyRefresh {
            version: self.lock_store().device_keys_version()?,
            entries: applied,
            registered_own_key,
        })
    }
}
