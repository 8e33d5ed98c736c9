//! How an Automerge change travels: without the 8 bytes every change chunk starts with.
//!
//! A change chunk is `magic (4) | checksum (4) | type (1) | length (LEB128) | data`, and the
//! checksum is the first 4 bytes of the SHA-256 of `type | length | data` (the change's hash).
//! The magic is a constant and the checksum follows from the rest, but both sit in every change:
//! 4 random bytes per change also break the compressor's matches between neighbouring changes
//! (10,000 new applications: 825 KB at zstd level 11 with them, 765 KB without). So the wire
//! carries `type | length | data` and the receiver puts the magic and the recomputed checksum
//! back before Automerge decodes the change, which checks everything as it always did.
//!
//! In memory (`PushDoc::changes`, `FeedDoc::changes`) changes stay whole chunks.

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::{Error as _, SerializeSeq, Serializer};
use sha2::{Digest, Sha256};

/// The first bytes of every Automerge chunk.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Magic and checksum: what the wire leaves out.
const HEADER: usize = 8;
/// No change is shorter on the wire (type, length, then at least its dependency count, actor,
/// sequence number, start operation, time, message and column count). Refusing shorter ones as
/// they are read bounds what a hostile body of tiny "changes" costs in memory to a few times its
/// decoded size (each becomes an allocation).
const MIN_WIRE: usize = 8;

/// The wire form of a whole change chunk, or `None` when `chunk` is not one.
pub(crate) fn strip(chunk: &[u8]) -> Option<&[u8]> {
    (chunk.len() >= HEADER && chunk[..4] == MAGIC).then(|| &chunk[HEADER..])
}

/// The whole change chunk of a wire form: magic, checksum, then the bytes as received.
pub(crate) fn restore(wire: &[u8]) -> Vec<u8> {
    let hash = Sha256::digest(wire);
    let mut chunk = Vec::with_capacity(HEADER + wire.len());
    chunk.extend_from_slice(&MAGIC);
    chunk.extend_from_slice(&hash[..4]);
    chunk.extend_from_slice(wire);
    chunk
}

/// `#[serde(with = "chunk")]` for a list of changes.
pub(crate) fn serialize<S: Serializer>(changes: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(changes.len()))?;
    for change in changes {
        let wire = strip(change)
            .ok_or_else(|| S::Error::custom("a change to send is not an Automerge change chunk"))?;
        seq.serialize_element(&Bytes(wire))?;
    }
    seq.end()
}

/// `#[serde(with = "chunk")]` for a list of changes.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
    struct Changes;
    impl<'de> Visitor<'de> for Changes {
        type Value = Vec<Vec<u8>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of changes")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            // The length comes from the peer: never reserve by it; each change is counted
            // against the decode's limits before it is read.
            let mut changes = Vec::new();
            super::bounded::check_claimed_changes::<A::Error>(seq.size_hint())?;
            while let Some(Restored(chunk)) = seq.next_element()? {
                super::bounded::count_change::<A::Error>(changes.len())?;
                changes.push(chunk);
            }
            Ok(changes)
        }
    }
    d.deserialize_seq(Changes)
}

/// Bytes written as one block (in postcard, the same as a `Vec<u8>`: a length, then the bytes).
struct Bytes<'a>(&'a [u8]);

impl serde::Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// A change read from the wire as one block of bytes, restored whole.
struct Restored(Vec<u8>);

impl<'de> serde::Deserialize<'de> for Restored {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Block;
        impl Visitor<'_> for Block {
            type Value = Restored;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a change's bytes")
            }

            fn visit_bytes<E: serde::de::Error>(self, wire: &[u8]) -> Result<Restored, E> {
                if wire.len() < MIN_WIRE {
                    return Err(E::custom("a change too short to be one"));
                }
                Ok(Restored(restore(wire)))
            }
        }
        d.deserialize_bytes(Block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::change;

    #[test]
    fn a_change_survives_the_round_trip_and_still_decodes() {
        let change = change("v");
        let wire = strip(&change).expect("a change chunk");
        assert_eq!(wire.len(), change.len() - HEADER);
        let back = restore(wire);
        assert_eq!(back, change);
        assert!(automerge::Change::from_bytes(back).is_ok());
    }

    #[test]
    fn a_tampered_wire_form_fails_automerge_s_own_checks() {
        let change = change("v");
        let mut wire = strip(&change).expect("a change chunk").to_vec();
        // A longer length than the data: the restored chunk is consistent but truncated.
        wire[1] = wire[1].wrapping_add(1);
        assert!(automerge::Change::from_bytes(restore(&wire)).is_err());
        assert!(automerge::Change::from_bytes(restore(b"junk")).is_err());
        assert!(automerge::Change::from_bytes(restore(&[])).is_err());
        // Whatever was received encodes back as it came (the fuzz target's round trip).
        for wire in [&b""[..], b"junk", &wire] {
            assert_eq!(strip(&restore(wire)), Some(wire));
        }
    }

    #[test]
    fn the_smallest_real_change_is_longer_than_the_minimum() {
        // An empty change by a one-byte actor, without message: nothing real is shorter.
        let mut doc = automerge::AutoCommit::new().with_actor(automerge::ActorId::from(&[1u8][..]));
        doc.empty_change(automerge::transaction::CommitOptions::default());
        let change = doc.get_changes(&[])[0].raw_bytes().to_vec();
        assert!(strip(&change).expect("a change chunk").len() >= MIN_WIRE);
    }

    #[test]
    fn too_short_a_change_is_refused_as_it_is_read() {
        let list = |sizes: &[usize]| {
            let changes: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![1u8; n]).collect();
            postcard::to_stdvec(&changes).expect("encodes")
        };
        let read = |bytes: &[u8]| -> Result<Vec<Vec<u8>>, postcard::Error> {
            deserialize(&mut postcard::Deserializer::from_bytes(bytes))
        };
        assert_eq!(read(&list(&[MIN_WIRE, 20])).expect("read").len(), 2);
        assert!(read(&list(&[20, MIN_WIRE - 1])).is_err());
        assert!(read(&list(&[0])).is_err());
    }

    #[test]
    fn what_is_not_a_chunk_is_not_stripped() {
        assert_eq!(strip(b"not a change"), None);
        assert_eq!(strip(&MAGIC), None);
        assert_eq!(strip(&[]), None);
    }
}
