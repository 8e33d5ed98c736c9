//! Extensions of a sync message (protocol 4): features that add data to a request or a response
//! without a new protocol version each.
//!
//! postcard lays out a struct's fields one after the other with nothing that names them, so a
//! field cannot be added to [`SyncRequest`](super::SyncRequest) or
//! [`SyncResponse`](super::SyncResponse) without breaking every peer. Since protocol 4 both end
//! with a list of extensions: a tag naming the feature and its own postcard bytes. A peer reads
//! the extensions it knows and keeps the others untouched (a newer tablet's extension reaches an
//! older server intact and is ignored); adding one is a new tag, registered in
//! `docs/PROTOCOL.md`, not a new protocol.
//!
//! Bounded: a message carries at most [`MAX_EXTENSIONS`] extensions, each tag at most once and
//! each at most [`MAX_EXTENSION_BYTES`] (checked while decoding, before anything is kept); an
//! extension's own payload is decoded only when asked for ([`Extensions::get`]), from bytes no
//! longer than its type's [`WireExtension::MAX_BYTES`], so what it allocates is bounded by that
//! and never by what the sender claims.

use serde::de::{DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::WireError;

/// Extensions one message may carry.
pub const MAX_EXTENSIONS: usize = 16;
/// Encoded bytes of one extension, whatever its tag (a type may set a smaller bound).
pub const MAX_EXTENSION_BYTES: usize = 1024 * 1024;

/// A value that travels as an extension of a sync message.
///
/// Collections inside a payload are bounded by [`Self::MAX_BYTES`]: a payload is decoded from
/// at most that many bytes, so keep it as small as the feature needs.
pub trait WireExtension: Serialize + DeserializeOwned {
    /// The tag that names it on the wire (registry: `docs/PROTOCOL.md`). Never reused.
    const TAG: u16;
    /// Most encoded bytes accepted for it (at most [`MAX_EXTENSION_BYTES`]).
    const MAX_BYTES: usize = 64 * 1024;
}

/// One extension as it travels: its tag and its postcard bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RawExtension {
    tag: u16,
    data: Vec<u8>,
}

/// The extensions of one message, at most one per tag, in the order they were added.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Extensions(Vec<RawExtension>);

impl Extensions {
    /// No extension.
    pub fn new() -> Self {
        Extensions(Vec::new())
    }

    /// Adds `value` (or replaces the one of the same tag).
    pub fn insert<E: WireExtension>(&mut self, value: &E) -> crate::Result<()> {
        let data = postcard::to_stdvec(value).map_err(|e| crate::Error::Document(e.to_string()))?;
        if data.len() > E::MAX_BYTES.min(MAX_EXTENSION_BYTES) {
            return Err(crate::Error::Document(format!(
                "extension {} is {} bytes (at most {})",
                E::TAG,
                data.len(),
                E::MAX_BYTES.min(MAX_EXTENSION_BYTES)
            )));
        }
        if let Some(raw) = self.0.iter_mut().find(|raw| raw.tag == E::TAG) {
            raw.data = data;
        } else if self.0.len() >= MAX_EXTENSIONS {
            return Err(crate::Error::Document(format!(
                "more than {MAX_EXTENSIONS} extensions"
            )));
        } else {
            self.0.push(RawExtension { tag: E::TAG, data });
        }
        Ok(())
    }

    /// Builder form of [`Self::insert`].
    pub fn with<E: WireExtension>(mut self, value: &E) -> crate::Result<Self> {
        self.insert(value)?;
        Ok(self)
    }

    /// The extension of `E`'s tag, decoded; `None` when the message has none. Bytes that do not
    /// decode as `E`, or more of them than `E` allows, are [`WireError::Malformed`] /
    /// [`WireError::TooLarge`]: the feature refuses them, the rest of the message stands.
    pub fn get<E: WireExtension>(&self) -> Result<Option<E>, WireError> {
        let Some(raw) = self.0.iter().find(|raw| raw.tag == E::TAG) else {
            return Ok(None);
        };
        let max = E::MAX_BYTES.min(MAX_EXTENSION_BYTES);
        if raw.data.len() > max {
            return Err(WireError::TooLarge(format!(
                "extension {} is {} bytes (at most {max})",
                E::TAG,
                raw.data.len()
            )));
        }
        let (value, rest) = postcard::take_from_bytes::<E>(&raw.data)
            .map_err(|e| WireError::Malformed(format!("extension {}: {e}", E::TAG)))?;
        if !rest.is_empty() {
            return Err(WireError::Malformed(format!(
                "extension {}: trailing bytes",
                E::TAG
            )));
        }
        Ok(Some(value))
    }

    /// Removes the extension of `E`'s tag; whether there was one.
    pub fn remove<E: WireExtension>(&mut self) -> bool {
        let before = self.0.len();
        self.0.retain(|raw| raw.tag != E::TAG);
        self.0.len() != before
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The tags present, in order (known to this build or not).
    pub fn tags(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().map(|raw| raw.tag)
    }
}

impl<'de> Deserialize<'de> for Extensions {
    /// At most [`MAX_EXTENSIONS`], each tag once, each at most [`MAX_EXTENSION_BYTES`]: a list
    /// past a bound stops the decoding at the element that passes it.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Extensions;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of extensions")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                use serde::de::Error;
                if let Some(claimed) = seq.size_hint()
                    && claimed > MAX_EXTENSIONS
                {
                    return Err(super::bounded::overflow(format!("{claimed} extensions")));
                }
                let mut list: Vec<RawExtension> = Vec::new();
                while let Some(raw) = seq.next_element::<Bounded>()? {
                    let raw = raw.0;
                    if list.len() >= MAX_EXTENSIONS {
                        return Err(super::bounded::overflow(format!(
                            "more than {MAX_EXTENSIONS} extensions"
                        )));
                    }
                    if list.iter().any(|seen| seen.tag == raw.tag) {
                        return Err(A::Error::custom(format!(
                            "extension {} appears twice",
                            raw.tag
                        )));
                    }
                    list.push(raw);
                }
                Ok(Extensions(list))
            }
        }
        d.deserialize_seq(List)
    }
}

/// A [`RawExtension`] whose bytes are checked against [`MAX_EXTENSION_BYTES`] before they are
/// copied.
struct Bounded(RawExtension);

impl<'de> Deserialize<'de> for Bounded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire<'a> {
            tag: u16,
            #[serde(borrow)]
            data: BorrowedBytes<'a>,
        }
        let wire = Wire::deserialize(d)?;
        Ok(Bounded(RawExtension {
            tag: wire.tag,
            data: wire.data.0.to_vec(),
        }))
    }
}

/// Bytes read in place (postcard lends them from the decoded body), refused past the bound
/// before any copy; `Vec<u8>` would be read element by element into a growing vector.
struct BorrowedBytes<'a>(&'a [u8]);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedBytes<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = BorrowedBytes<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an extension's bytes")
            }

            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                bytes: &'de [u8],
            ) -> Result<Self::Value, E> {
                if bytes.len() > MAX_EXTENSION_BYTES {
                    return Err(super::bounded::overflow(format!(
                        "an extension of {} bytes (at most {MAX_EXTENSION_BYTES})",
                        bytes.len()
                    )));
                }
                Ok(BorrowedBytes(bytes))
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Greeting {
        text: String,
    }
    impl WireExtension for Greeting {
        const TAG: u16 = 60_000;
        const MAX_BYTES: usize = 32;
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Count(u64);
    impl WireExtension for Count {
        const TAG: u16 = 60_001;
    }

    #[test]
    fn known_extensions_are_read_and_unknown_ones_kept() {
        let mut ext = Extensions::new();
        ext.insert(&Greeting {
            text: "xin chào".into(),
        })
        .unwrap();
        ext.insert(&Count(7)).unwrap();
        ext.insert(&Count(8)).unwrap();
        let bytes = postcard::to_stdvec(&ext).unwrap();
        let back: Extensions = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, ext);
        assert_eq!(back.get::<Count>().unwrap(), Some(Count(8)));
        assert_eq!(back.tags().collect::<Vec<_>>(), vec![60_000, 60_001]);
        // A reader that knows only Count still carries the greeting along.
        let mut only_count = back.clone();
        assert!(only_count.remove::<Greeting>());
        assert_eq!(only_count.get::<Greeting>().unwrap(), None);
    }

    #[test]
    fn an_extension_over_its_bound_or_undecodable_is_refused_alone() {
        let long = Greeting {
            text: "a".repeat(40),
        };
        assert!(Extensions::new().insert(&long).is_err());
        // A peer sends it anyway, under Count's tag too.
        let raw = Extensions(vec![
            RawExtension {
                tag: Greeting::TAG,
                data: postcard::to_stdvec(&long).unwrap(),
            },
            RawExtension {
                tag: Count::TAG,
                data: vec![0xff, 0xff],
            },
        ]);
        let back: Extensions = postcard::from_bytes(&postcard::to_stdvec(&raw).unwrap()).unwrap();
        assert!(matches!(
            back.get::<Greeting>(),
            Err(WireError::TooLarge(_))
        ));
        assert!(matches!(back.get::<Count>(), Err(WireError::Malformed(_))));
    }

    #[test]
    fn too_many_repeated_or_huge_extensions_stop_the_decoding() {
        let many = Extensions(
            (0..=MAX_EXTENSIONS as u16)
                .map(|tag| RawExtension { tag, data: vec![] })
                .collect(),
        );
        assert!(postcard::from_bytes::<Extensions>(&postcard::to_stdvec(&many).unwrap()).is_err());
        let twice = Extensions(vec![
            RawExtension {
                tag: 1,
                data: vec![1],
            },
            RawExtension {
                tag: 1,
                data: vec![2],
            },
        ]);
        assert!(postcard::from_bytes::<Extensions>(&postcard::to_stdvec(&twice).unwrap()).is_err());
        let huge = Extensions(vec![RawExtension {
            tag: 1,
            data: vec![0; MAX_EXTENSION_BYTES + 1],
        }]);
        assert!(postcard::from_bytes::<Extensions>(&postcard::to_stdvec(&huge).unwrap()).is_err());
        // A count claiming millions costs nothing: refused at the count.
        let claim = postcard::to_stdvec(&(u32::MAX as usize)).unwrap();
        assert!(postcard::from_bytes::<Extensions>(&claim).is_err());
    }
}
