//! `communesync admin record-by-number NUMBER` and `communesync admin number-blocks`: dossier
//! numbers from the operator's shell, straight from the database (JSON, one line per item).

use std::sync::Arc;

use communesync_core::record::DeviceId;
use communesync_server::http;
use communesync_server::storage::ServerStorage;

/// Prints the application with dossier number `number`; an error if none has it.
pub(crate) async fn record_by_number(
    storage: &Arc<dyn ServerStorage>,
    number: &str,
) -> anyhow::Result<()> {
    match http::record_by_number(storage.as_ref(), number).await {
        Ok(found) => println!("{}", serde_json::to_string(&found)?),
        Err(communesync_server::storage::StorageError::NotFound) => {
            anyhow::bail!("no application has dossier number {number}")
        }
        Err(other) => return Err(other.into()),
    }
    Ok(())
}

/// Prints the granted number blocks (of one device, or all), with their accounting.
pub(crate) async fn number_blocks(
    storage: &Arc<dyn ServerStorage>,
    device: Option<uuid::Uuid>,
) -> anyhow::Result<()> {
    for block in http::number_blocks(storage.as_ref(), device.map(DeviceId)).await? {
        println!("{}", serde_json::to_string(&block)?);
    }
    Ok(())
}
