//! Sync bodies as the server and the tablet receive them: `SyncRequest::decode` and
//! `SyncResponse::decode` must refuse anything malformed with an error (never a panic, never an
//! allocation beyond the limits), and what they accept must encode back to the same message.
//!
//! Input: one mode byte, then the body. Bit 0 picks a request (0) or a response (1); bit 1 wraps
//! the rest in a valid zstd frame first, so that the fuzzer reaches the message decoder behind
//! the decompressor; bit 2 reads a response in whatever layout it names
//! (`SyncResponse::decode_any`: protocol 2 or 3, what a tablet not yet upgraded reads during the
//! overlap).
#![no_main]

use std::cell::RefCell;

use communesync_core::codec::DocCodec;
use communesync_core::protocol::{Limits, SyncRequest, SyncResponse};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static CODEC: RefCell<DocCodec> = RefCell::new(DocCodec::new().expect("zstd codec"));
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Tighter than the server's defaults, so that a bomb is caught at fuzzing sizes.
    let limits = Limits {
        max_compressed: 1 << 20,
        max_body: 4 << 20,
        max_docs: 1_000,
        max_changes_per_doc: 1_000,
        max_changes: 10_000,
    };
    CODEC.with(|codec| {
        let codec = &mut *codec.borrow_mut();
        let body = if mode & 2 == 0 {
            rest.to_vec()
        } else {
            codec.encode(rest).expect("compressing")
        };
        if mode & 1 == 0 {
            if let Ok(request) = SyncRequest::decode(codec, &body, &limits) {
                let again = request.encode(codec).expect("encoding what was decoded");
                let decoded = SyncRequest::decode(codec, &again, &Limits::default());
                assert_eq!(
                    decoded.as_ref(),
                    Ok(&request),
                    "request does not round-trip"
                );
            }
        } else {
            let decode = if mode & 4 == 0 {
                SyncResponse::decode
            } else {
                SyncResponse::decode_any
            };
            if let Ok(response) = decode(codec, &body, &limits) {
                let again = response.encode(codec).expect("encoding what was decoded");
                let decoded = decode(codec, &again, &Limits::default());
                assert_eq!(
                    decoded.as_ref(),
                    Ok(&response),
                    "response does not round-trip"
                );
            }
        }
    });
});
