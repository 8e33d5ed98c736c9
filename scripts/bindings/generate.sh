#!/usr/bin/env bash
# Generates the Kotlin and Swift bindings from the current build of bindings/ (uniffi library
# mode: the metadata is read from the unstripped cdylib), with the uniffi-bindgen binary pinned
# in the bindings crate.
#
# Usage:
#   scripts/bindings/generate.sh OUT_DIR   # write OUT_DIR/kotlin/... and OUT_DIR/swift/...
#   scripts/bindings/generate.sh --update  # write the packaged copies in android/ and ios/
#   scripts/bindings/generate.sh --check   # exit 1 if the packaged copies differ from a fresh run
#
# Packaged copies (never edit them by hand):
#   android/src/main/kotlin/org/communesync/communesync_ffi.kt
#   ios/Sources/CommuneSync/CommuneSync.swift
#   ios/Generated/CommuneSyncFFI.h, ios/Generated/CommuneSyncFFI.modulemap
# Builds in debug (the metadata, hence the generated code, does not depend on the profile).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
log() { printf '[bindings] %s\n' "$*" >&2; }
die() { printf '[bindings] ERROR: %s\n' "$*" >&2; exit 1; }

KOTLIN_FILE=org/communesync/communesync_ffi.kt
PACKAGED=(
    "kotlin/$KOTLIN_FILE:android/src/main/kotlin/$KOTLIN_FILE"
    "swift/CommuneSync.swift:ios/Sources/CommuneSync/CommuneSync.swift"
    "swift/CommuneSyncFFI.h:ios/Generated/CommuneSyncFFI.h"
    "swift/CommuneSyncFFI.modulemap:ios/Generated/CommuneSyncFFI.modulemap"
)

# generate OUT: build the cdylib and the bindgen, then generate both languages into OUT.
generate() {
    local out=$1
    # The whole workspace with every target: the same feature set as `cargo test --workspace`,
    # so after the test build this compiles only the bindgen binary (a `-p` build would unify
    # features differently and rebuild much of the dependency tree).
    (cd "$ROOT" && cargo build -q --workspace --all-targets)
    local lib=$TARGET_DIR/debug/libcommunesync_ffi.so
    [ -f "$lib" ] || die "no $lib after the build"
    rm -rf "$out/kotlin" "$out/swift"
    mkdir -p "$out"
    local lang
    for lang in kotlin swift; do
        # --no-format: ktlint / swift-format may or may not be installed; the output must not
        # depend on the machine.
        (cd "$ROOT" && "$TARGET_DIR/debug/uniffi-bindgen" generate --no-format --library "$lib" \
            --language "$lang" --out-dir "$out/$lang" >&2) \
            || die "uniffi-bindgen failed for $lang"
    done
    local pair
    for pair in "${PACKAGED[@]}"; do
        [ -f "$out/${pair%%:*}" ] || die "uniffi-bindgen did not write ${pair%%:*}"
    done
}

case "${1:-}" in
    --update)
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        generate "$tmp"
        for pair in "${PACKAGED[@]}"; do
            mkdir -p "$(dirname "$ROOT/${pair#*:}")"
            cp "$tmp/${pair%%:*}" "$ROOT/${pair#*:}"
            log "wrote ${pair#*:}"
        done ;;
    --check)
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        generate "$tmp"
        status=0
        for pair in "${PACKAGED[@]}"; do
            if ! diff -u "$ROOT/${pair#*:}" "$tmp/${pair%%:*}" > "$tmp/diff" 2>&1; then
                head -n 40 "$tmp/diff" >&2
                log "${pair#*:} differs from what the current bindings/ generates"
                status=1
            fi
        done
        [ "$status" -eq 0 ] || die "packaged bindings are stale: run scripts/bindings/generate.sh --update and commit the result"
        log "packaged bindings match the current build" ;;
    ""|-h|--help)
        sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
        [ -n "${1:-}" ] ;;
    -*)
        die "unknown option $1" ;;
    *)
        generate "$1"
        log "generated into $1" ;;
esac
