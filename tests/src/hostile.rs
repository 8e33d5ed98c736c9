//! A tablet that speaks the protocol by hand, for the tests written as the attacker: a sync
//! request built field by field (any pushed changes, any extensions, any cursor), posted over
//! real HTTP, and the answer decoded; an enrolled device that sends them ([`Hostile`]); the
//! server's copy of a record to craft changes on ([`server_copy`]).

use communesync_core::codec::DocCodec;
use communesync_core::protocol::{
    CONTENT_TYPE, Extensions, Limits, PROTOCOL_VERSION, PullRequest, PushDoc, SyncRequest,
    SyncResponse,
};
use communesync_core::record::{DeviceId, RecordDoc, RecordId, RecordKind, Source};
use communesync_core::sync::{ReqwestTransport, enroll};

use crate::TestServer;

/// The answer to a hand-made sync request.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body decoded as a sync response, when it is one.
    pub response: Option<SyncResponse>,
    /// The body as text (a JSON error, for a refused request).
    pub text: String,
}

/// A hand-made sync request: what a modified tablet sends.
pub struct RawSync {
    /// Documents pushed.
    pub push: Vec<PushDoc>,
    /// The pull, if any (default: from cursor 0, up to 1 MiB).
    pub pull: Option<PullRequest>,
    /// The catalogue version the request says the tablet holds (default: `u64::MAX`, so that no
    /// catalogue comes back).
    pub catalogue_version: u64,
    /// Protocol extensions.
    pub extensions: Extensions,
}

impl RawSync {
    /// A push of `push` with a pull from 0 and no catalogue.
    pub fn push(push: Vec<PushDoc>) -> Self {
        RawSync {
            push,
            pull: Some(PullRequest {
                cursor: 0,
                max_bytes: 1 << 20,
            }),
            catalogue_version: u64::MAX,
            extensions: Extensions::default(),
        }
    }

    /// Posts the request to `url`'s `/v1/sync` with bearer `token`.
    pub async fn send(self, url: &str, token: &str) -> anyhow::Result<Answer> {
        let mut codec = DocCodec::new()?;
        let body = SyncRequest {
            protocol: PROTOCOL_VERSION,
            device_time: 0,
            push: self.push,
            pull: self.pull,
            catalogue_version: self.catalogue_version,
            pending_docs: 0,
            extensions: self.extensions,
        }
        .encode(&mut codec)?;
        let response = reqwest::Client::new()
            .post(format!("{url}/v1/sync"))
            .bearer_auth(token)
            .header("content-type", CONTENT_TYPE)
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok(Answer {
            status,
            response: SyncResponse::decode(&mut codec, &bytes, &Limits::default()).ok(),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// [`RawSync::send`], expecting a sync response (HTTP 200): an error otherwise.
    pub async fn answer(self, url: &str, token: &str) -> anyhow::Result<SyncResponse> {
        let answer = self.send(url, token).await?;
        match (answer.status, answer.response) {
            (200, Some(response)) => Ok(response),
            (status, _) => anyhow::bail!("HTTP {status}: {}", answer.text),
        }
    }
}

/// A device enrolled like any tablet that then speaks the protocol by hand.
pub struct Hostile {
    /// Its device id (the actor an attributed change must carry).
    pub device: DeviceId,
    /// Its bearer token.
    pub token: String,
    /// The server's base URL.
    pub url: String,
}

impl Hostile {
    /// A new device enrolled at `url` with enrollment code `code`.
    pub async fn enroll(url: &str, code: &str) -> anyhow::Result<Self> {
        let device = DeviceId::new();
        let transport = ReqwestTransport::new(url)?;
        let token = enroll(&transport, code, device, "hostile").await?.token;
        Ok(Hostile {
            device,
            token,
            url: url.to_owned(),
        })
    }

    /// Pushes `push` (with a pull from 0): whatever the server answers.
    pub async fn send(&self, push: Vec<PushDoc>) -> anyhow::Result<Answer> {
        RawSync::push(push).send(&self.url, &self.token).await
    }

    /// Pushes `push`, expecting a sync response.
    pub async fn answer(&self, push: Vec<PushDoc>) -> anyhow::Result<SyncResponse> {
        RawSync::push(push).answer(&self.url, &self.token).await
    }
}

/// Record `id` as `server` holds it, opened as `actor` would to edit it (to craft changes on top).
pub async fn server_copy(
    server: &TestServer,
    id: RecordId,
    actor: DeviceId,
) -> anyhow::Result<RecordDoc> {
    let changes = server.storage.doc_changes(id).await?;
    Ok(RecordDoc::from_changes(id, RecordKind::Application, &changes, actor, Source::Server)?.0)
}
