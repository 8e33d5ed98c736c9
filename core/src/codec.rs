//! Document and message bytes, compressed with zstd and a dictionary.
//!
//! Used for rows in the device store and for sync request and response bodies.
//!
//! A record document is small (1-2 KB) and every one repeats the same structure: field names,
//! column headers, status names. Compressed alone it barely shrinks; with a dictionary trained on
//! that structure it roughly halves (see `docs/adr/0003-document-compression.md`). The dictionary
//! was trained on documents whose text is random syllables, so it knows the shape of a record and
//! none of its content. It is part of the on-disk format: a new dictionary gets a new id and the
//! old one stays here so old rows still decode.
//!
//! Rows written raw (Automerge magic `85 6f 4a 83`) are read as they are.

use crate::{Error, Result};

/// The dictionary every new row is written with.
const DICTIONARY_V1: &[u8] = include_bytes!("../dict/records-v1.zdict");
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Upper bound on one decoded document or chunk: a corrupt or hostile frame cannot make us
/// allocate more than this.
const MAX_DECODED: usize = 64 * 1024 * 1024;
/// Level for stored rows: with the dictionary, level 3 makes a new application's snapshot 662 B
/// against 621 B at level 9, in a fifth of the time (10 µs against 50 µs on the build machine), and
/// a tablet writes one for every edit and every record it pulls.
const ROW_LEVEL: i32 = 3;
/// Level for small sync messages: they cross a 2G link, where bytes cost more than CPU.
const MESSAGE_LEVEL: i32 = 9;
/// Messages above this size are compressed without the dictionary: past a few hundred
/// kilobytes a batch finds more in itself than in the dictionary, which then only costs (measured
/// on 11.8 MB of new applications' changes in 4 MB batches: 1,105 KB with it, 1,035 KB without).
const LARGE_MESSAGE: usize = 64 * 1024;
/// Level for large messages: level 11 is ~6% smaller than 9 for half the speed (~20 MB/s on one
/// core of the build machine), still far faster than any link a tablet has.
const LARGE_LEVEL: i32 = 11;

/// Compressor and decompressor with the dictionary loaded once. Not `Sync`: one per thread.
pub struct DocCodec {
    compressor: zstd::bulk::Compressor<'static>,
    message: zstd::bulk::Compressor<'static>,
    decompressor: zstd::bulk::Decompressor<'static>,
    large: zstd::bulk::Compressor<'static>,
    plain: zstd::bulk::Decompressor<'static>,
}

impl std::fmt::Debug for DocCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DocCodec")
    }
}

impl DocCodec {
    /// A codec with the current dictionary.
    pub fn new() -> Result<Self> {
        let io = |e: std::io::Error| Error::Document(format!("zstd: {e}"));
        let compressor = |level| {
            if DICTIONARY_V1.is_empty() {
                zstd::bulk::Compressor::new(level)
            } else {
                zstd::bulk::Compressor::with_dictionary(level, DICTIONARY_V1)
            }
        };
        let decompressor = if DICTIONARY_V1.is_empty() {
            zstd::bulk::Decompressor::new()
        } else {
            zstd::bulk::Decompressor::with_dictionary(DICTIONARY_V1)
        };
        // Message frames carry zstd's content checksum (4 bytes), which decompression verifies:
        // changes travel without their own checksums (`protocol::chunk`), so a body damaged on
        // the way is still refused as a whole. Stored rows need none (SQLCipher authenticates
        // every page).
        let checksummed = |mut compressor: zstd::bulk::Compressor<'static>| {
            compressor.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
            Ok::<_, std::io::Error>(compressor)
        };
        Ok(DocCodec {
            compressor: compressor(ROW_LEVEL).map_err(io)?,
            message: compressor(MESSAGE_LEVEL)
                .and_then(checksummed)
                .map_err(io)?,
            decompressor: decompressor.map_err(io)?,
            large: zstd::bulk::Compressor::new(LARGE_LEVEL)
                .and_then(checksummed)
                .map_err(io)?,
            plain: zstd::bulk::Decompressor::new().map_err(io)?,
        })
    }

    /// Compresses a sync message: small ones with the dictionary, large ones without it and
    /// harder (see [`LARGE_MESSAGE`]). Either decodes with [`DocCodec::decode_frame`].
    pub fn encode_message(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        let compressor = if bytes.len() <= LARGE_MESSAGE {
            &mut self.message
        } else {
            &mut self.large
        };
        compressor
            .compress(bytes)
            .map_err(|e| Error::Document(format!("zstd: {e}")))
    }

    /// Compresses a stored row (one zstd frame with the dictionary, recording its size).
    pub fn encode(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        self.compressor
            .compress(bytes)
            .map_err(|e| Error::Document(format!("zstd: {e}")))
    }

    /// Appends the Automerge bytes of a stored row to `out` (rows without the zstd magic are
    /// raw Automerge bytes, appended as they are).
    pub fn decode_into(
        &mut self,
        stored: &[u8],
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), String> {
        if !stored.starts_with(&ZSTD_MAGIC) {
            out.extend_from_slice(stored);
            return Ok(());
        }
        let decoded = self.decode_frame(stored, MAX_DECODED)?;
        out.extend_from_slice(&decoded);
        Ok(())
    }

    /// The decoded size a frame declares in its header (`None` when it is not a frame that
    /// declares one): what decoding it will allocate, known before anything is decompressed.
    pub fn declared_size(frame: &[u8]) -> Option<u64> {
        if !frame.starts_with(&ZSTD_MAGIC) {
            return None;
        }
        zstd::zstd_safe::get_frame_content_size(frame)
            .ok()
            .flatten()
    }

    /// Decompresses one frame that must declare its size, at most `limit` bytes: a hostile
    /// frame (a decompression bomb, a lie about its size) is an error, never a large allocation.
    pub fn decode_frame(
        &mut self,
        frame: &[u8],
        limit: usize,
    ) -> std::result::Result<Vec<u8>, String> {
        if !frame.starts_with(&ZSTD_MAGIC) {
            return Err("not a zstd frame".to_owned());
        }
        let size = zstd::zstd_safe::get_frame_content_size(frame)
            .map_err(|_| "bad zstd frame header".to_owned())?
            .ok_or_else(|| "zstd frame without content size".to_owned())?;
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size > limit {
            return Err(format!(
                "frame declares {size} bytes, more than the {limit} allowed"
            ));
        }
        // A frame names its dictionary; one that names none was written without it.
        let decompressor = match zstd::zstd_safe::get_dict_id_from_frame(frame) {
            Some(_) => &mut self.decompressor,
            None => &mut self.plain,
        };
        let decoded = decompressor
            .decompress(frame, size)
            .map_err(|e| format!("zstd: {e}"))?;
        if decoded.len() != size {
            return Err("frame is shorter than it declares".to_owned());
        }
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_passes_raw_rows_through() {
        let mut codec = DocCodec::new().unwrap();
        let data = b"\x85\x6f\x4a\x83 some automerge bytes".repeat(20);
        let stored = codec.encode(&data).unwrap();
        assert!(stored.starts_with(&ZSTD_MAGIC));
        let mut out = Vec::new();
        codec.decode_into(&stored, &mut out).unwrap();
        assert_eq!(out, data);
        let mut raw = Vec::new();
        codec.decode_into(&data, &mut raw).unwrap();
        assert_eq!(raw, data);
    }

    #[test]
    fn messages_small_and_large_round_trip() {
        let mut codec = DocCodec::new().unwrap();
        let small = b"application ".repeat(100);
        let large: Vec<u8> = (0..LARGE_MESSAGE * 3).map(|i| (i % 251) as u8).collect();
        for message in [&small[..], &large[..]] {
            let frame = codec.encode_message(message).unwrap();
            assert_eq!(
                codec.decode_frame(&frame, message.len()).unwrap(),
                message,
                "{} bytes",
                message.len()
            );
        }
        // The small one names the dictionary, the large one none.
        let named = |frame: &[u8]| zstd::zstd_safe::get_dict_id_from_frame(frame).is_some();
        assert!(named(&codec.encode_message(&small).unwrap()));
        assert!(!named(&codec.encode_message(&large).unwrap()));
    }

    #[test]
    fn corrupt_frames_are_errors_not_panics() {
        let mut codec = DocCodec::new().unwrap();
        let mut stored = codec.encode(&[7u8; 1000]).unwrap();
        let mut out = Vec::new();
        assert!(
            codec
                .decode_into(&stored[..stored.len() / 2], &mut out)
                .is_err()
        );
        stored[4] ^= 0xff;
        assert!(codec.decode_into(&stored, &mut out).is_err());
        assert!(codec.decode_into(&ZSTD_MAGIC, &mut out).is_err());
    }
}
