//! A tablet that speaks the protocol by hand, for the tests written as the attacker: a sync
//! request built field by field (any pushed changes, any extensions, any cursor), posted over
//! real HTTP, and the answer decoded.

use communesync_core::codec::DocCodec;
use communesync_core::protocol::{
    CONTENT_TYPE, Extensions, Limits, PROTOCOL_VERSION, PullRequest, PushDoc, SyncRequest,
    SyncResponse,
};

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
