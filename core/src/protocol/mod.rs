//! The sync wire format, version 4 (spec: `docs/PROTOCOL.md`), and versions 3 and 2 for an overlap.
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
//! refused document is set aside by the tablet and every other one flows. Version 4 ends the
//! request and the response with [`Extensions`]: features add data under a tag of their own
//! instead of a new protocol version each. A server speaking 4 still accepts versions 3 and 2
//! ([`OLDEST_PROTOCOL_VERSION`]) for an overlap period and answers each in its own layout;
//! older versions get "upgrade required".

mod bounded;
mod chunk;
pub mod extensions;

pub use extensions::{Extensions, WireExtension};

use serde::{Deserialize, Serialize};

use crate::codec::DocCodec;
use crate::record::{RecordId, RecordKind};

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u16 = 4;
/// Content type of sync bodies.
pub const CONTENT_TYPE: &str = "application/x-communesync-v4";
/// Version 3: per-document verdicts, no extensions. A server still accepts it and answers in
/// its layout (extensions left out).
pub const PROTOCOL_V3: u16 = 3;
/// Content type of [`PROTOCOL_V3`] bodies.
pub const CONTENT_TYPE_V3: &str = "application/x-communesync-v3";
/// Version 2: a server still accepts it (tablets not yet upgraded keep syncing) and answers in
/// its layout, without per-document verdicts.
pub const PROTOCOL_V2: u16 = 2;
/// Content type of [`PROTOCOL_V2`] bodies.
pub const CONTENT_TYPE_V2: &str = "application/x-communesync-v2";
/// The oldest version a server of this build accepts; older ones must upgrade.
pub const OLDEST_PROTOCOL_VERSION: u16 = PROTOCOL_V2;

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
    /// Features' data (protocol 4; empty in 2 and 3).
    pub extensions: Extensions,
}

/// [`SyncRequest`] as protocols 2 and 3 lay it out (no extensions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SyncRequestV3 {
    protocol: u16,
    device_time: i64,
    #[serde(deserialize_with = "bounded::push_docs")]
    push: Vec<PushDoc>,
    pull: Option<PullRequest>,
    catalogue_version: u64,
    pending_docs: u64,
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
    /// Features' data (protocol 4; left out of a version 2 or 3 answer).
    pub extensions: Extensions,
}

/// [`SyncResponse`] as protocol 3 lays it out (no extensions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SyncResponseV3 {
    protocol: u16,
    server_time: i64,
    missing_deps: Vec<u32>,
    #[serde(deserialize_with = "bounded::refused")]
    refused: Vec<Refused>,
    #[serde(deserialize_with = "bounded::feed_docs")]
    feed: Vec<FeedDoc>,
    next_cursor: u64,
    more: bool,
    catalogue: Option<CatalogueUpdate>,
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
        "protocol version {0} is no longer accepted (this server speaks {OLDEST_PROTOCOL_VERSION} to {PROTOCOL_VERSION}); upgrade the app"
    )]
    UpgradeRequired(u16),
}

fn encode<T: Serialize>(codec: &mut DocCodec, message: &T) -> crate::Result<Vec<u8>> {
    let bytes = postcard::to_stdvec(message).map_err(|e| crate::Error::Document(e.to_string()))?;
    codec.encode_message(&bytes)
}

/// Decompresses `body` within `limits` (its size, then what it declares it decodes to).
fn decompress(codec: &mut DocCodec, body: &[u8], limits: &Limits) -> Result<Vec<u8>, WireError> {
    if body.len() > limits.max_compressed {
        return Err(WireError::TooLarge(format!("{} byte body", body.len())));
    }
    codec.decode_frame(body, limits.max_body).map_err(|e| {
        if e.contains("more than") {
            WireError::TooLarge(e)
        } else {
            WireError::Malformed(e)
        }
    })
}

/// Decodes a whole message of layout `T` from decompressed `bytes`, counting as it goes.
fn decode_bytes<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    limits: &Limits,
) -> Result<T, WireError> {
    let (message, rest) = bounded::with_limits(limits, || postcard::take_from_bytes::<T>(bytes))
        .map_err(
            |e| match (bounded::take_overflow(), bounded::take_malformed()) {
                (Some(what), _) => WireError::TooLarge(what),
                (None, Some(why)) => WireError::Malformed(why),
                (None, None) => WireError::Malformed(e.to_string()),
            },
        )?;
    if !rest.is_empty() {
        return Err(WireError::Malformed("trailing bytes".into()));
    }
    Ok(message)
}

/// The protocol version a decompressed message starts with (every layout starts with it), so
/// that the rest is read in that version's layout.
fn peek_protocol(bytes: &[u8]) -> Result<u16, WireError> {
    postcard::take_from_bytes::<u16>(bytes)
        .map(|(protocol, _)| protocol)
        .map_err(|e| WireError::Malformed(format!("no protocol version: {e}")))
}

impl SyncRequest {
    /// Encodes and compresses, in the layout of `self.protocol` (versions 2 and 3 have no
    /// extensions: they are left out).
    pub fn encode(&self, codec: &mut DocCodec) -> crate::Result<Vec<u8>> {
        if self.protocol < PROTOCOL_VERSION {
            encode(
                codec,
                &SyncRequestV3 {
                    protocol: self.protocol,
                    device_time: self.device_time,
                    push: self.push.clone(),
                    pull: self.pull,
                    catalogue_version: self.catalogue_version,
                    pending_docs: self.pending_docs,
                },
            )
        } else {
            encode(codec, self)
        }
    }

    /// Decompresses and decodes within `limits` (counts are checked while decoding), in the
    /// layout of the version the body names: [`PROTOCOL_VERSION`] down to
    /// [`OLDEST_PROTOCOL_VERSION`] are accepted.
    pub fn decode(codec: &mut DocCodec, body: &[u8], limits: &Limits) -> Result<Self, WireError> {
        let bytes = decompress(codec, body, limits)?;
        let protocol = peek_protocol(&bytes)?;
        check_version(protocol)?;
        if protocol == PROTOCOL_VERSION {
            return decode_bytes(&bytes, limits);
        }
        let old: SyncRequestV3 = decode_bytes(&bytes, limits)?;
        Ok(SyncRequest {
            protocol: old.protocol,
            device_time: old.device_time,
            push: old.push,
            pull: old.pull,
            catalogue_version: old.catalogue_version,
            pending_docs: old.pending_docs,
            extensions: Extensions::new(),
        })
    }
}

/// Whether a request of `protocol` is accepted.
fn check_version(protocol: u16) -> Result<(), WireError> {
    match protocol {
        OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION => Ok(()),
        older if older < OLDEST_PROTOCOL_VERSION => Err(WireError::UpgradeRequired(older)),
        newer => Err(WireError::UnsupportedVersion(newer)),
    }
}

/// The content type of bodies of `protocol`.
pub fn content_type_of(protocol: u16) -> &'static str {
    match protocol {
        PROTOCOL_V2 => CONTENT_TYPE_V2,
        PROTOCOL_V3 => CONTENT_TYPE_V3,
        _ => CONTENT_TYPE,
    }
}

/// The protocol a content type names, if this build speaks it.
pub fn protocol_of_content_type(content_type: &str) -> Option<u16> {
    match content_type {
        CONTENT_TYPE => Some(PROTOCOL_VERSION),
        CONTENT_TYPE_V3 => Some(PROTOCOL_V3),
        CONTENT_TYPE_V2 => Some(PROTOCOL_V2),
        _ => None,
    }
}

impl SyncResponse {
    /// Encodes and compresses, in the layout of `self.protocol` (a version 2 response leaves
    /// `refused` out: the server answers such a request whole, see `docs/PROTOCOL.md`; versions
    /// 2 and 3 leave the extensions out).
    pub fn encode(&self, codec: &mut DocCodec) -> crate::Result<Vec<u8>> {
        match self.protocol {
            PROTOCOL_V2 => encode(
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
            ),
            PROTOCOL_V3 => encode(
                codec,
                &SyncResponseV3 {
                    protocol: self.protocol,
                    server_time: self.server_time,
                    missing_deps: self.missing_deps.clone(),
                    refused: self.refused.clone(),
                    feed: self.feed.clone(),
                    next_cursor: self.next_cursor,
                    more: self.more,
                    catalogue: self.catalogue.clone(),
                },
            ),
            _ => encode(codec, self),
        }
    }

    /// Decompresses and decodes within `limits` (a version 4 response).
    pub fn decode(codec: &mut DocCodec, body: &[u8], limits: &Limits) -> Result<Self, WireError> {
        let response = Self::decode_any(codec, body, limits)?;
        if response.protocol != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion(response.protocol));
        }
        Ok(response)
    }

    /// Decompresses and decodes a response of any version this build reads (2, 3 or 4), in the
    /// layout the body names: what an older client reads, for tests and tools.
    pub fn decode_any(
        codec: &mut DocCodec,
        body: &[u8],
        limits: &Limits,
    ) -> Result<Self, WireError> {
        let bytes = decompress(codec, body, limits)?;
        match peek_protocol(&bytes)? {
            PROTOCOL_VERSION => decode_bytes(&bytes, limits),
            PROTOCOL_V3 => {
                let v3: SyncResponseV3 = decode_bytes(&bytes, limits)?;
                Ok(SyncResponse {
                    protocol: v3.protocol,
                    server_time: v3.server_time,
                    missing_deps: v3.missing_deps,
                    refused: v3.refused,
                    feed: v3.feed,
                    next_cursor: v3.next_cursor,
                    more: v3.more,
                    catalogue: v3.catalogue,
                    extensions: Extensions::new(),
                })
            }
            PROTOCOL_V2 => {
                let v2: SyncResponseV2 = decode_bytes(&bytes, limits)?;
                Ok(SyncResponse {
                    protocol: v2.protocol,
                    server_time: v2.server_time,
                    missing_deps: v2.missing_deps,
                    refused: Vec::new(),
                    feed: v2.feed,
                    next_cursor: v2.next_cursor,
                    more: v2.more,
                    catalogue: v2.catalogue,
                    extensions: Extensions::new(),
                })
            }
            other => Err(WireError::UnsupportedVersion(other)),
        }
    }

    /// Decompresses and decodes a version 2 response (what an old client reads; tests).
    pub fn decode_v2(
        codec: &mut DocCodec,
        body: &[u8],
        limits: &Limits,
    ) -> Result<Self, WireError> {
        let response = Self::decode_any(codec, body, limits)?;
        if response.protocol != PROTOCOL_V2 {
            return Err(WireError::UnsupportedVersion(response.protocol));
        }
        Ok(response)
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
            extensions: Extensions::new(),
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
            req.extensions.clone(),
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
        bytes.extend(
            postcard::to_stdvec(&(None::<PullRequest>, 0u64, 0u64, Extensions::new())).unwrap(),
        );
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
    fn protocols_two_and_three_are_accepted_and_older_ones_must_upgrade() {
        let mut codec = DocCodec::new().unwrap();
        let limits = Limits::default();
        let mut with_extension = request();
        with_extension.extensions = Extensions::new().with(&TestExtension(7)).unwrap();
        for (protocol, accepted) in [
            (4, true),
            (3, true),
            (2, true),
            (1, false),
            (0, false),
            (5, false),
        ] {
            let sent = SyncRequest {
                protocol,
                ..with_extension.clone()
            };
            let body = sent.encode(&mut codec).unwrap();
            let decoded = SyncRequest::decode(&mut codec, &body, &limits);
            assert_eq!(decoded.is_ok(), accepted, "{protocol}");
            if protocol < 2 {
                assert_eq!(decoded, Err(WireError::UpgradeRequired(protocol)));
            }
            if let Ok(decoded) = decoded {
                // Versions before 4 have no extensions; everything else travels in each.
                let extension = decoded.extensions.get::<TestExtension>().unwrap();
                assert_eq!(extension, (protocol == 4).then_some(TestExtension(7)));
                assert_eq!(decoded.push, sent.push);
                assert_eq!(decoded.pull, sent.pull);
            }
        }
        // A version 2 response leaves the refusals and extensions out, and reads back as version 2.
        let response = SyncResponse {
            protocol: PROTOCOL_V2,
            server_time: 5,
            missing_deps: vec![1],
            refused: Vec::new(),
            feed: Vec::new(),
            next_cursor: 9,
            more: false,
            catalogue: None,
            extensions: Extensions::new(),
        };
        let body = response.encode(&mut codec).unwrap();
        assert_eq!(
            SyncResponse::decode_v2(&mut codec, &body, &limits).unwrap(),
            response
        );
        assert!(SyncResponse::decode(&mut codec, &body, &limits).is_err());
        let v3 = SyncResponse {
            protocol: PROTOCOL_V3,
            refused: vec![Refused {
                position: 0,
                code: "not_yours".into(),
                message: "no".into(),
            }],
            extensions: Extensions::new().with(&TestExtension(1)).unwrap(),
            ..response
        };
        let body = v3.encode(&mut codec).unwrap();
        let back = SyncResponse::decode_any(&mut codec, &body, &limits).unwrap();
        assert_eq!(back.refused, v3.refused);
        assert!(back.extensions.is_empty());
        assert!(SyncResponse::decode(&mut codec, &body, &limits).is_err());
        let v4 = SyncResponse {
            protocol: PROTOCOL_VERSION,
            ..v3
        };
        let body = v4.encode(&mut codec).unwrap();
        assert_eq!(
            SyncResponse::decode(&mut codec, &body, &limits).unwrap(),
            v4
        );
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct TestExtension(u32);
    impl WireExtension for TestExtension {
        const TAG: u16 = 60_100;
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
