//! Kotlin and Swift bindings for communesync (uniffi): filled by the bindings issue.
