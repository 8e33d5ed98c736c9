//! `communesync verify-receipt PAYLOAD`: checks a scanned receipt, offline against the key list
//! a device store holds (`--store`), or online with the server (`--server`, authenticated with
//! the store's device credential or an operator token in `COMMUNESYNC_TOKEN`). Prints the
//! verdict as JSON: `{"valid":true,"receipt":{...}}` or `{"valid":false,"code":..,"message":..}`;
//! the exit status is 0 for a genuine receipt and 1 for a refused one.

use std::path::PathBuf;

use anyhow::Context;
use communesync_core::sync::{HttpRequest, ReqwestTransport, Transport};

use crate::device::{SavedCredential, credential_path, open};

#[derive(clap::Args)]
pub struct VerifyReceiptArgs {
    /// The QR payload as scanned.
    payload: String,
    /// A device store whose key list verifies the receipt offline (and, with `--server`, whose
    /// credential authenticates the online check).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Verify online with this server instead.
    #[arg(long)]
    server: Option<String>,
    /// Operator or device token for `--server` (else the store's credential).
    #[arg(long, env = "COMMUNESYNC_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Runs the check; `Ok(false)` for a refused receipt.
pub async fn run(args: VerifyReceiptArgs) -> anyhow::Result<bool> {
    let verdict = match (&args.server, &args.store) {
        (Some(server), store) => {
            let token = match (&args.token, store) {
                (Some(token), _) => token.clone(),
                (None, Some(store)) => {
                    let path = credential_path(store);
                    let saved: SavedCredential =
                        serde_json::from_slice(&std::fs::read(&path).with_context(|| {
                            format!("no credential at {}: enroll first", path.display())
                        })?)?;
                    saved.credentials.token
                }
                (None, None) => anyhow::bail!("--server needs --store or COMMUNESYNC_TOKEN"),
            };
            let transport = ReqwestTransport::new(server)?;
            let response = transport
                .send(HttpRequest {
                    path: "/v1/receipts/verify".into(),
                    bearer: Some(token),
                    content_type: "application/json".into(),
                    body: serde_json::to_vec(&serde_json::json!({ "payload": args.payload }))?,
                })
                .await?;
            if response.status != 200 {
                anyhow::bail!(
                    "server answered {}: {}",
                    response.status,
                    String::from_utf8_lossy(&response.body)
                );
            }
            serde_json::from_slice::<serde_json::Value>(&response.body)?
        }
        (None, Some(store)) => {
            let mut store = open(store)?;
            match store.verify_receipt(&args.payload)? {
                Ok(receipt) => serde_json::json!({ "valid": true, "receipt": receipt }),
                Err(refusal) => serde_json::json!({
                    "valid": false,
                    "code": refusal.code(),
                    "message": refusal.to_string(),
                }),
            }
        }
        (None, None) => anyhow::bail!("give --store (offline) or --server (online)"),
    };
    println!("{verdict}");
    Ok(verdict["valid"] == serde_json::Value::Bool(true))
}
