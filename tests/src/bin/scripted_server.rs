//! `scripted-server <listen address>`: a sync server for the bindings stories
//! (`scripts/test.d/20-bindings.sh`) that answers, on purpose, what a tablet must survive: a
//! refused document, "upgrade required" and a wipe order. It stores nothing and sends no feed.
//!
//! Enrollment accepts any code and binds the device to a behaviour by the code:
//! - `upgrade`: every sync answers 426 `upgrade_required`;
//! - `wipe`: every sync answers 403 `wiped`;
//! - `commune:CODE`: the credential is for commune `CODE`, and each sync acknowledges every
//!   pushed document except those it refuses, per document (protocol 3), as the provincial server
//!   does: a record of another commune (`not_yours`) and a record whose notes contain `#refuse`
//!   (`invalid_field`). Only whole histories are read; other pushes are acknowledged.
//!
//! With `--tls DIR` it serves HTTPS instead: it makes a test CA and writes `DIR/ca.pem` (what
//! the HTTPS stories pass in `EngineConfig.trustedCaPem`), `DIR/other-ca.pem` (a CA that did
//! not sign anything of this server: the wrong-CA case), and a certificate for 127.0.0.1
//! signed by the first, served by the server's own accept loop.
//!
//! It prints `listening on ADDR` once bound, and runs until killed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use communesync_core::codec::DocCodec;
use communesync_core::protocol::{CONTENT_TYPE, Limits, Refused, SyncRequest, SyncResponse};
use communesync_core::record::{DeviceId, Record, RecordDoc, Source, decode_changes};

#[derive(Clone)]
enum Behaviour {
    UpgradeRequired,
    Wiped,
    Commune(String),
}

type Tokens = Arc<Mutex<HashMap<String, Behaviour>>>;

const USAGE: &str = "usage: scripted-server <listen address> [--tls DIR]";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().context(USAGE)?;
    let tls_dir = match (args.next().as_deref(), args.next()) {
        (None, _) => None,
        (Some("--tls"), Some(dir)) => Some(std::path::PathBuf::from(dir)),
        _ => anyhow::bail!(USAGE),
    };
    let tls = tls_dir.map(|dir| make_tls(&dir)).transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        println!("listening on {}", listener.local_addr()?);
        let tokens: Tokens = Arc::default();
        let app = axum::Router::new()
            .route("/v1/enroll", post(enroll))
            .route("/v1/sync", post(sync))
            .with_state(tokens);
        let config = communesync_server::serve::ServeConfig {
            tls,
            ..Default::default()
        };
        communesync_server::serve::serve(listener, app, config, std::future::pending()).await?;
        Ok(())
    })
}

/// The test CAs and the server's certificate, in `dir`.
fn make_tls(dir: &std::path::Path) -> anyhow::Result<Arc<communesync_server::tls::ServerTls>> {
    use communesync_tests::tls::TestCa;
    std::fs::create_dir_all(dir)?;
    let ca = TestCa::new("communesync bindings test CA")?;
    let other = TestCa::new("a CA the server does not use")?;
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
    std::fs::write(dir.join("other-ca.pem"), &other.cert_pem)?;
    let (cert, key) = ca.server_cert(&["127.0.0.1"])?.write(dir, "server")?;
    Ok(Arc::new(communesync_server::tls::ServerTls::load(
        &cert, &key,
    )?))
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": code, "message": message });
    (status, axum::Json(body)).into_response()
}

async fn enroll(State(tokens): State<Tokens>, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return json_error(StatusCode::BAD_REQUEST, "malformed", "not JSON");
    };
    let (Some(code), Some(device)) = (request["code"].as_str(), request["device_id"].as_str())
    else {
        return json_error(StatusCode::BAD_REQUEST, "malformed", "code and device_id");
    };
    let (behaviour, scope) = match code {
        "upgrade" => (Behaviour::UpgradeRequired, serde_json::json!("province")),
        "wipe" => (Behaviour::Wiped, serde_json::json!("province")),
        other => match other.strip_prefix("commune:") {
            Some(commune) if !commune.is_empty() => (
                Behaviour::Commune(commune.to_owned()),
                serde_json::json!({ "commune": commune }),
            ),
            _ => return json_error(StatusCode::UNAUTHORIZED, "unauthorized", "unknown code"),
        },
    };
    let token = format!("scripted-{}", uuid::Uuid::new_v4());
    tokens
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(token.clone(), behaviour);
    axum::Json(serde_json::json!({ "device_id": device, "token": token, "scope": scope }))
        .into_response()
}

async fn sync(State(tokens): State<Tokens>, headers: HeaderMap, body: Bytes) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let behaviour = tokens
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(token)
        .cloned();
    let commune = match behaviour {
        None => return json_error(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token"),
        Some(Behaviour::UpgradeRequired) => {
            return json_error(
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                "this version of the app is no longer accepted",
            );
        }
        Some(Behaviour::Wiped) => {
            return json_error(
                StatusCode::FORBIDDEN,
                "wiped",
                "the province ordered this device wiped",
            );
        }
        Some(Behaviour::Commune(commune)) => commune,
    };
    let Ok(mut codec) = DocCodec::new() else {
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "codec");
    };
    let request = match SyncRequest::decode(&mut codec, &body, &Limits::default()) {
        Ok(request) => request,
        Err(err) => return json_error(StatusCode::BAD_REQUEST, "malformed", &err.to_string()),
    };
    let mut refused = Vec::new();
    for (position, doc) in request.push.iter().enumerate() {
        let Some(record) = whole_record(doc.kind, &doc.changes) else {
            continue;
        };
        let notes = match &record {
            Record::Application(app) => &app.notes,
            Record::CitizenRequest(request) => &request.notes,
        };
        let verdict = if record.commune_code() != commune {
            Some((
                "not_yours",
                "this record does not exist in this device's commune",
            ))
        } else if notes.contains("#refuse") {
            Some(("invalid_field", "notes: refused by the scripted server"))
        } else {
            None
        };
        if let Some((code, message)) = verdict {
            refused.push(Refused {
                position: u32::try_from(position).unwrap_or(u32::MAX),
                code: code.to_owned(),
                message: message.to_owned(),
            });
        }
    }
    let cursor = request.pull.map_or(0, |pull| pull.cursor);
    let response = SyncResponse {
        protocol: request.protocol,
        server_time: communesync_tests::now_ms(),
        missing_deps: Vec::new(),
        refused,
        feed: Vec::new(),
        next_cursor: cursor,
        more: false,
        catalogue: None,
        extensions: Default::default(),
    };
    match response.encode(&mut codec) {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(err) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &err.to_string(),
        ),
    }
}

/// The record a whole history makes, if these changes are one.
fn whole_record(kind: communesync_core::record::RecordKind, changes: &[Vec<u8>]) -> Option<Record> {
    let decoded = decode_changes(communesync_core::record::RecordId::new(), changes).ok()?;
    if decoded.first()?.deps().is_empty() {
        RecordDoc::from_decoded(None, kind, decoded, DeviceId::new(), Source::Untrusted)
            .ok()
            .map(|(_, record)| record)
    } else {
        None
    }
}
