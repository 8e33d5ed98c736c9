//! `uniffi-bindgen` pinned to this crate's uniffi version: generates the Kotlin and Swift
//! bindings from the built cdylib (`generate --library ...`). Used by
//! `scripts/bindings/generate.sh`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
