//! The sync wire format, version 3 (spec: `docs/PROTOCOL.md`), and version 2 for an overlap.
//!
//! One request moves many documents: the tablet pushes the changes the server lacks and pulls the
//! commune's change feed after its cursor, in the same round trip. Bodies are postcard-encoded
//! messages in one zstd frame compressed with the record dictionary ([`crate::codec`]). Decoding
//! is bounded: a body may not declare more than [`Limits::max_body`] decoded bytes, and counts of
//! documents and changes are checked while decoding, before anything is allocated for them
//! ([`bounded`]). Changes travel without the magic bytes and checksum of their chunk, which the
//! receiver restores ([`chunk`]).
//!
//! Version 3 answers each pushed document with its own verdict ([`SyncResponse::refused`]): a
//! refused document is set aside by the tablet and every other one flows. A server speaking 3
//! still accepts version 2 requests for an overlap period ([`PREVIOUS_PROTOCOL_VERSION`]) and
//! answers them in version 2's layout; older versions get "upgrade required".

mod bounded;
mod chunk;

use serde::{Deserialize, Serialize};

use crate::codec::DocCodec;
use crate::record::{RecordId, RecordKind};

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u16 = 3;
/// Content type of sync bodies.
pub const CONTENT_TYPE: &str = "application/x-communesync-v3";
/// The version before: a server still accepts it (tablets not yet upgraded keep syncing) and
/// answers in its layout, without per-document verdicts.
pub const PREVIOUS_PROTOCOL_VERSION: u16 = 2;
/// Content type of [`PREVIOUS_PROTOCOL_VERSION`] bodies.
pub const PREVIOUS_CONTENT_TYPE: &str = "application/x-communesync-v2";

/// Response header of every sync answer: the server store's epoch (at most
/// [`MAX_STORE_EPOCH_LEN`] ASCII letters and digits), which changes only when the server's
/// database is restored from a backup. A tablet that sees it change re-sends what the server may
/// lack and re-reads the feed from the start. A header, not a body field: older tablets ignore
/// it, and no protocol version changes.
pub const STORE_EPOCH_HEADER: &str = "communesync-store-epoch";

/// Longest store epoch a tablet takes (a longer or non-alphanumeric value is ignored).
pub const MAX_STORE_EPOCH_LEN: usize = 64;

/// The store epoch carried by a header value, if it is a well-formed one.
pub fn parse_store_epoch(value: &[u8]) -> Option<String> {
    (!value.is_empty()
        && value.len() <= MAX_STORE_EPOCH_LEN
        && value.iter().all(u8::is_ascii_alphanumeric))
    .then(|| String::from_utf8_lossy(value).into_owned())
}

/// A document's changes pushed by a tablet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushDoc {
    /// Record id; left out (`None`) when `changes` is the document's whole history, whose first
    /// change writes the id into the record (16 incompressible bytes saved per new record).
    pub id: Option<RecordId>,
    /// Record kind.
    pub kind: RecordKind,
    /// Raw Automerge changes, each one whole (a chunk as `Change::raw_bytes` gives it); they
    /// travel without the chunk's magic bytes and checksum.
    #[serde(with = "chunk")]
    pub changes: Vec<Vec<u8>>,
}

/// What the tablet wants from the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// The last feed position the tablet has applied (0 at first).
    pub cursor: u64,
    /// Upper bound on change bytes in the response.
    pub max_bytes: u32,
}

/// A sync request: push and pull in one round trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// [`PROTOCOL_VERSION`].
    pub protocol: u16,
    /// The tablet's clock (ms since epoch), informative only.
    pub device_time: i64,
    /// Changes the server lacks, by document. At most one entry per record.
    #[serde(deserialize_with = "bounded::push_docs")]
    pub push: Vec<PushDoc>,
    /// Feed to pull, if any.
    pub pull: Option<PullRequest>,
    /// Version of the procedure catalogue the tablet has (0 = none).
    pub catalogue_version: u64,
    /// Documents the tablet still holds unacknowledged besides this request's batch (shown to
    /// operators).
    pub pending_docs: u64,
}

/// Changes of one document from the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedDoc {
    /// Record id; left out (`None`) when `changes` start with the document's first change, which
    /// writes the id into the record.
    pub id: Option<RecordId>,
    /// Record kind.
    pub kind: RecordKind,
    /// Raw Automerge changes in feed order, each one whole; they travel without the chunk's magic
    /// bytes and checksum.
    #[serde(with = "chunk")]
    pub changes: Vec<Vec<u8>>,
    /// Server receive time of the newest of them (ms since epoch, server clock), as the
    /// difference from the previous feed document's (from 0 for the first): documents stored by
    /// one push share a time, so this is mostly a zero byte.
    pub received_delta: i64,
}

/// The province's reference data, sent when the tablet's version is older.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogueUpdate {
    /// Version number.
    pub version: u64,
    /// JSON: `{"procedures":[...],"holidays":["YYYY-MM-DD",...]}`.
    pub json: String,
}

/// Why the server refused one pushed document (protocol 3). The tablet sets the document aside
/// (quarantine) with this reason; every other document of the request was handled normally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Position of the document in the request's `push`.
    pub position: u32,
    /// Machine-readable reason, one of [`crate::integrity::RefusalCode`]'s names (a string, so
    /// that a newer server's codes reach an older tablet intact).
    pub code: String,
    /// Readable explanation for the app and operators.
    pub message: String,
}

/// The server's answer to a [`SyncRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// [`PROTOCOL_VERSION`].
    pub protocol: u16,
    /// The server's clock (ms since epoch).
    pub server_time: i64,
    /// Positions in the request's `push` of the documents whose changes depend on changes the
    /// server lacks: the tablet should send their whole history. Every other pushed document is
    /// stored (its changes are new or were already there).
    pub missing_deps: Vec<u32>,
    /// Documents of the push that were refused, each with its reason; the others were stored
    /// (or are listed in `missing_deps`).
    #[serde(deserialize_with = "bounded::refused")]
    pub refused: Vec<Refused>,
    /// Feed changes after the request's cursor, minus the tablet's own (unless the server saw
    /// that the tablet lost them: a store restored from a backup gets its own changes back).
    #[serde(deserialize_with = "bounded::feed_docs")]
    pub feed: Vec<FeedDoc>,
    /// Cursor to send next time (covers everything examined, including the tablet's own changes).
    pub next_cursor: u64,
    /// Whether more of the feed is waiting.
    pub more: bool,
    /// Newer reference data, if any.
    pub catalogue: Option<CatalogueUpdate>,
}

/// [`SyncResponse`] as protocol 2 lays it out (no per-document verdicts): what a server
/// answers a tablet that has not upgraded yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SyncResponseV2 {
    protocol: u16,
    server_time: i64,
    missing_deps: Vec<u32>,
    #[serde(deserialize_with = "bounded::feed_docs")]
    feed: Vec<FeedDoc>,
    next_cursor: u64,
    more: bool,
    catalogue: Option<CatalogueUpdate>,
}

/// Bounds on what a peer may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Compressed body size.
    pub max_compressed: usize,
    /// Decoded body size.
    pub max_body: usize,
    /// Documents per request.
    pub max_docs: usize,
    /// Changes per document per request.
    pub max_changes_per_doc: usize,
    /// Changes in one request, all documents together.
    pub max_changes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_compressed: 8 * 1024 * 1024,
            max_body: 8 * 1024 * 1024,
            max_docs: 20_000,
            max_changes_per_doc: 10_000,
            max_changes: 100_000,
        }
    }
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Over a size or count limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// Not a valid body.
    #[error("malformed body: {0}")]
    Malformed(String),
    /// A protocol version this build does not speak.
    #[error("unsupported protocol version {0} (this server speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u16),
    /// A protocol version older than any this build accepts: the peer must upgrade.
    #[error(
        "protocol version {0} is no longer accepted (this server speaks {PREVIOUS_PROTOCOL_VERSION} and {PROTOCOL_VERSION}); upgrade the app"
    )]
    UpgradeRequired(u16),
}

fn encode<T: Serialize>(codec: &mut DocCodec, message: &T) -> crate::Result<Vec<u8>> {
    let bytes = postcard::to_stdvec(message).map_err(|e| crate::Error::Document(e.to_string()))?;
    codec.encode_message(&bytes)
}

fn decode<T: for<'de> Deserialize<'de>>(
    codec: &mut DocCodec,
    body: &[u8],
    limits: &Limits,
) -> Result<T, WireError> {
    if body.len() > limits.max_compressed {
        return Err(WireError::TooLarge(format!("{} byte body", body.len())));
    }
    let bytes = codec.decode_frame(body, limits.max_body).map_err(|e| {
        if e.contains("more than") {
            WireError::TooLarge(e)
        } else {
            WireError::Malformed(e)
        }
    })?;
    let (message, rest) = bounded::with_limits(limits, || postcard::take_from_bytes::<T>(&bytes))
        .map_err(|e| {
        match (bounded::take_overflow(), bounded::take_malformed()) {
            (Some(what), _) => WireError::TooLarge(what),
            (None, Some(why)) => WireError::Malformed(why),
            (None, None) => WireError::Malformed(e.to_string()),
        }
    })?;
    if !rest.is_empty() {
        return Err(WireError::Malformed("trailing bytes".into()));
    }
    Ok(message)
}

impl SyncRequest {
    /// Encodes and compresses.
    pub fn encode(&self, codec: &mut DocCodec) -> crate::Result<Vec<u8>> {
        encode(codec, self)
    }

    /// Decompresses and decodes within `limits` (counts are checked while decoding), then checks
    /// the version: [`PROTOCOL_VERSION`] and [`PREVIOUS_PROTOCOL_VERSION`] are accepted.
    pub fn decode(codec: &mut DocCodec, body: &[u8], limits: &Limits) -> Result<Self, WireError> {
        let request: SyncRequest = decode(codec, body, limits)?;
        check_version(request.protocol)?;
        Ok(request)
    }
}

/// Whether a request of `protocol` is accepted.
fn check_version(protocol: u16) -> Result<(), WireError> {
    match protocol {
        PROTOCOL_VERSION | PREVIOUS_PROTOCOL_VERSION => Ok(()),
        older if older < PREVIOUS_PROTOCOL_VERSION => Err(WireError::UpgradeRequired(older)),
        newer => Err(WireError::UnsupportedVersion(newer)),
    }
}

/// The content type of bodies of `protocol`.
pub fn content_type_of(protocol: u16) -> &'static str {
    if protocol == PREVIOUS_PROTOCOL_VERSION {
        PREVIOUS_CONTENT_TYPE
    } else {
        CONTENT_TYPE
    }
}

/// The protocol a content type names, if this build speaks it.
pub fn protocol_of_content_type(content_type: &str) -> Option<u16> {
    match content_type {
        CONTENT_TYPE => Some(PROTOCOL_VERSION),
        PREVIOUS_CONTENT_TYPE => Some(PREVIOUS_PROTOCOL_VERSION),
        _ => None,
    }
}

impl SyncResponse {
    /// Encodes and compresses, in the layout of `self.protocol` (a version 2 response leaves
    /// `refused` out: the server answers such a request whole, see `docs/PROTOCOL.md`).
    pub fn encode(&self, codec: &mut DocCodec) -> crate::Result<Vec<u8>> {
        if self.protocol == PREVIOUS_PROTOCOL_VERSION {
            encode(
                codec,
                &SyncResponseV2 {
                    protocol: self.protocol,
                    server_time: self.server_time,
                    missing_deps: self.missing_deps.clone(),
                    feed: self.feed.clone(),
                    next_cursor: self.next_cursor,
                    more: self.more,
                    catalogue: self.catalogue.clone(),
                },
            )
        } else {
            encode(codec, self)
        }
    }

    /// Decompresses and decodes within `limits` (a version 3 response).
    pub fn decode(codec: &mut DocCodec, body: &[u8], limits: &Limits) -> Result<Self, WireError> {
        let response: SyncResponse = decode(codec, body, limits)?;
        if response.protocol != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion(response.protocol));
        }
        Ok(response)
    }

    /// Decompresses and decodes a version 2 response (what an old client reads; tests).
    pub fn decode_v2(
        codec: &mut DocCodec,
        body: &[u8],
        limits: &Limits,
    ) -> Result<Self, WireError> {
        let v2: SyncResponseV2 = decode(codec, body, limits)?;
        if v2.protocol != PREVIOUS_PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion(v2.protocol));
        }
        Ok(SyncResponse {
            protocol: v2.protocol,
            server_time: v2.server_time,
            missing_deps: v2.missing_deps,
            refused: Vec::new(),
            feed: v2.feed,
            next_cursor: v2.next_cursor,
            more: v2.more,
            catalogue: v2.catalogue,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_epochs_are_short_alphanumeric_values_only() {
        assert_eq!(parse_store_epoch(b"0af3"), Some("0af3".to_owned()));
        assert_eq!(
            parse_store_epoch(&[b'a'; MAX_STORE_EPOCH_LEN]).map(|e| e.len()),
            Some(64)
        );
        assert_eq!(parse_store_epoch(&[b'a'; MAX_STORE_EPOCH_LEN + 1]), None);
        assert_eq!(parse_store_epoch(b""), None);
        assert_eq!(parse_store_epoch(b"a b"), None);
        assert_eq!(parse_store_epoch("é".as_bytes()), None);
    }

    /// A real change: changes travel as Automerge chunks.
    pub(super) fn change(value: &str) -> Vec<u8> {
        let mut doc = automerge::AutoCommit::new();
        automerge::transaction::Transactable::put(&mut doc, automerge::ROOT, "k", value)
            .expect("put");
        doc.get_changes(&[])[0].raw_bytes().to_vec()
    }

    fn request() -> SyncRequest {
        SyncRequest {
            protocol: PROTOCOL_VERSION,
            device_time: 1,
            push: vec![PushDoc {
                id: Some(RecordId::new()),
                kind: RecordKind::Application,
                changes: vec![change("a"), change("b"), change("c")],
            }],
            pull: Some(PullRequest {
                cursor: 42,
                max_bytes: 1 << 16,
            }),
            catalogue_version: 3,
            pending_docs: 0,
        }
    }

    #[test]
    fn round_trips() {
        let mut codec = DocCodec::new().unwrap();
        let req = request();
        let body = req.encode(&mut codec).unwrap();
        assert_eq!(
            SyncRequest::decode(&mut codec, &body, &Limits::default()).unwrap(),
            req
        );
    }

    #[test]
    fn changes_travel_without_magic_and_checksum() {
        let req = request();
        let on_wire = postcard::to_stdvec(&req).unwrap();
        let whole: usize = req.push[0].changes.iter().map(Vec::len).sum();
        let as_v1 = postcard::to_stdvec(&(
            req.protocol,
            req.device_time,
            vec![(
                req.push[0].id,
                req.push[0].kind,
                req.push[0].changes.clone(),
            )],
            req.pull,
            req.catalogue_version,
            req.pending_docs,
        ))
        .unwrap();
        assert!(whole > 24);
        assert_eq!(as_v1.len() - on_wire.len(), 3 * 8);
        let back: SyncRequest = postcard::from_bytes(&on_wire).unwrap();
        assert_eq!(back, req);
        // Not a change chunk: nothing to send.
        let junk = SyncRequest {
            push: vec![PushDoc {
                changes: vec![b"not a change".to_vec()],
                ..req.push[0].clone()
            }],
            ..req
        };
        assert!(junk.encode(&mut DocCodec::new().unwrap()).is_err());
    }

    #[test]
    fn a_body_damaged_on_the_way_is_refused_not_misread() {
        // Changes carry no checksum of their own on the wire: the frame's covers them.
        let mut codec = DocCodec::new().unwrap();
        let req = request();
        let body = req.encode(&mut codec).unwrap();
        let mut refused = 0;
        for position in 12..body.len() {
            let mut damaged = body.clone();
            damaged[position] ^= 0x20;
            match SyncRequest::decode(&mut codec, &damaged, &Limits::default()) {
                Ok(decoded) => panic!("byte {position} damaged, read as {decoded:?}"),
                Err(_) => refused += 1,
            }
        }
        assert!(refused > 100);
    }

    #[test]
    fn an_empty_sync_is_small() {
        let mut codec = DocCodec::new().unwrap();
        let req = SyncRequest {
            push: vec![],
            ..request()
        };
        assert!(req.encode(&mut codec).unwrap().len() < 64);
    }

    #[test]
    fn bad_bodies_are_refused_with_reasons() {
        let mut codec = DocCodec::new().unwrap();
        let limits = Limits::default();
        let body = request().encode(&mut codec).unwrap();
        assert!(matches!(
            SyncRequest::decode(&mut codec, b"garbage", &limits),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            SyncRequest::decode(&mut codec, &body[..body.len() - 2], &limits),
            Err(WireError::Malformed(_))
        ));
        let tight = Limits {
            max_body: 10,
            ..limits
        };
        assert!(matches!(
            SyncRequest::decode(&mut codec, &body, &tight),
            Err(WireError::TooLarge(_))
        ));
        let few = Limits {
            max_changes_per_doc: 2,
            ..limits
        };
        assert!(matches!(
            SyncRequest::decode(&mut codec, &body, &few),
            Err(WireError::TooLarge(_))
        ));
        let next = SyncRequest {
            protocol: PROTOCOL_VERSION + 1,
            ..request()
        };
        let body = next.encode(&mut codec).unwrap();
        assert_eq!(
            SyncRequest::decode(&mut codec, &body, &limits),
            Err(WireError::UnsupportedVersion(PROTOCOL_VERSION + 1))
        );
    }

    /// postcard bytes of a request pushing `docs` empty documents (no id, application, no
    /// changes: 3 bytes each) and nothing else.
    fn empty_docs_request(docs: u64) -> Vec<u8> {
        let mut bytes = postcard::to_stdvec(&(PROTOCOL_VERSION, 0i64, docs)).unwrap();
        for _ in 0..docs {
            bytes.extend_from_slice(&[0, 0, 0]);
        }
        bytes.extend(postcard::to_stdvec(&(None::<PullRequest>, 0u64, 0u64)).unwrap());
        bytes
    }

    #[test]
    fn counts_are_refused_while_decoding_before_the_elements_are_allocated() {
        let mut codec = DocCodec::new().unwrap();
        let limits = Limits::default();
        // Two and a half million empty documents: 7.5 MB decoded (under the body limit), a few
        // KB on the wire. Refused at the list's length, before a single PushDoc is made.
        let bomb = codec
            .encode_message(&empty_docs_request(2_500_000))
            .unwrap();
        assert!(bomb.len() < 8 * 1024, "{} bytes", bomb.len());
        match SyncRequest::decode(&mut codec, &bomb, &limits) {
            Err(WireError::TooLarge(what)) => assert!(what.contains("documents"), "{what}"),
            other => panic!("{other:?}"),
        }
        // Within the limit: decodes.
        let fine = codec.encode_message(&empty_docs_request(100)).unwrap();
        assert_eq!(
            SyncRequest::decode(&mut codec, &fine, &limits)
                .unwrap()
                .push
                .len(),
            100
        );
        // Changes: per document and per message.
        let per_doc = Limits {
            max_changes_per_doc: 2,
            ..limits
        };
        let body = request().encode(&mut codec).unwrap();
        assert!(matches!(
            SyncRequest::decode(&mut codec, &body, &per_doc),
            Err(WireError::TooLarge(_))
        ));
        let per_message = Limits {
            max_changes: 5,
            ..limits
        };
        let mut two = request();
        two.push.push(PushDoc {
            id: Some(RecordId::new()),
            ..two.push[0].clone()
        });
        let body = two.encode(&mut codec).unwrap();
        assert!(matches!(
            SyncRequest::decode(&mut codec, &body, &per_message),
            Err(WireError::TooLarge(_))
        ));
        assert!(SyncRequest::decode(&mut codec, &body, &limits).is_ok());
    }

    #[test]
    fn a_record_named_twice_stops_the_decoding_at_its_second_entry() {
        let mut codec = DocCodec::new().unwrap();
        let mut twice = request();
        twice.push = vec![twice.push[0].clone(); 20_000];
        let body = twice.encode(&mut codec).unwrap();
        match SyncRequest::decode(&mut codec, &body, &Limits::default()) {
            Err(WireError::Malformed(what)) => assert!(what.contains("more than once"), "{what}"),
            other => panic!("{other:?}"),
        }
        // Documents sent whole name no id: they are told apart later, by the record they make.
        let mut whole = request();
        whole.push[0].id = None;
        whole.push.push(whole.push[0].clone());
        let body = whole.encode(&mut codec).unwrap();
        assert!(SyncRequest::decode(&mut codec, &body, &Limits::default()).is_ok());
    }

    #[test]
    fn protocol_two_is_accepted_and_older_ones_must_upgrade() {
        let mut codec = DocCodec::new().unwrap();
        let limits = Limits::default();
        for (protocol, accepted) in [(3, true), (2, true), (1, false), (0, false), (4, false)] {
            let body = SyncRequest {
                protocol,
                ..request()
            }
            .encode(&mut codec)
            .unwrap();
            let decoded = SyncRequest::decode(&mut codec, &body, &limits);
            assert_eq!(decoded.is_ok(), accepted, "{protocol}");
            if protocol < 2 {
                assert_eq!(decoded, Err(WireError::UpgradeRequired(protocol)));
            }
        }
        // A version 2 response leaves the refusals out, and reads back as version 2.
        let response = SyncResponse {
            protocol: PREVIOUS_PROTOCOL_VERSION,
            server_time: 5,
            missing_deps: vec![1],
            refused: Vec::new(),
            feed: Vec::new(),
            next_cursor: 9,
            more: false,
            catalogue: None,
        };
        let body = response.encode(&mut codec).unwrap();
        assert_eq!(
            SyncResponse::decode_v2(&mut codec, &body, &limits).unwrap(),
            response
        );
        assert!(SyncResponse::decode(&mut codec, &body, &limits).is_err());
        let v3 = SyncResponse {
            protocol: PROTOCOL_VERSION,
            refused: vec![Refused {
                position: 0,
                code: "not_yours".into(),
                message: "no".into(),
            }],
            ..response
        };
        let body = v3.encode(&mut codec).unwrap();
        assert_eq!(
            SyncResponse::decode(&mut codec, &body, &limits).unwrap(),
            v3
        );
    }

    #[test]
    fn a_decompression_bomb_is_refused_without_allocating_it() {
        let mut codec = DocCodec::new().unwrap();
        let bomb = codec.encode(&vec![0u8; 64 * 1024 * 1024]).unwrap();
        assert!(bomb.len() < 64 * 1024);
        assert!(matches!(
            SyncRequest::decode(&mut codec, &bomb, &Limits::default()),
            Err(WireError::TooLarge(_))
        ));
    }
}
