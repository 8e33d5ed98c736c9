#!/usr/bin/env bash
# Builds the engine (bindings/, crate communesync-ffi) for Android with cargo-ndk into
# android/src/main/jniLibs/<abi>/libcommunesync_ffi.so for the four ABIs (arm64-v8a,
# armeabi-v7a, x86_64, x86), stripped and linked for 16 KB pages, then checks the alignment.
#
# Needs a workstation with the Android NDK (r27 or newer; not obtainable on the CI machines, so
# CI does not run this script, only check-page-alignment.sh):
#   export ANDROID_NDK_HOME=$HOME/Android/Sdk/ndk/<version>
#   cargo install cargo-ndk
#   rustup target add aarch64-linux-android armv7-linux-androideabi x86_64-linux-android i686-linux-android
#   (perl and make for the vendored OpenSSL that SQLCipher builds with)
# Usage: android/scripts/build-android.sh [--debug]
#        android/scripts/build-android.sh --print-rustflags   (the link flags, for the tests)
# Then, from android/: ./gradlew assembleRelease (the AAR) or publishToMavenLocal. The Kotlin
# sources are already packaged; after changing bindings/, run scripts/bindings/generate.sh
# --update first.
set -euo pipefail
# 16 KB pages: every Android target links with max-page-size=16384 (harmless on 4 KB devices).
PAGE_RUSTFLAGS="-C link-arg=-Wl,-z,max-page-size=16384"
if [ "${1:-}" = --print-rustflags ]; then
    echo "$PAGE_RUSTFLAGS"
    exit 0
fi
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
[ -n "${ANDROID_NDK_HOME:-}" ] || { echo "set ANDROID_NDK_HOME to the NDK directory" >&2; exit 1; }
command -v cargo-ndk >/dev/null || { echo "cargo install cargo-ndk" >&2; exit 1; }
PROFILE_ARGS=(--release)
[ "${1:-}" = --debug ] && PROFILE_ARGS=()

# Per-target variables, so that the host build (build scripts, proc macros) is left alone.
for triple in AARCH64_LINUX_ANDROID ARMV7_LINUX_ANDROIDEABI X86_64_LINUX_ANDROID I686_LINUX_ANDROID; do
    export "CARGO_TARGET_${triple}_RUSTFLAGS=$PAGE_RUSTFLAGS"
done

# API 24 (Android 7) is the library's minSdk.
cargo ndk --platform 24 -t arm64-v8a -t armeabi-v7a -t x86_64 -t x86 \
    -o android/src/main/jniLibs build -p communesync-ffi --lib "${PROFILE_ARGS[@]}"

READELF=${READELF:-$(ls "$ANDROID_NDK_HOME"/toolchains/llvm/prebuilt/*/bin/llvm-readelf 2>/dev/null | head -n 1)}
READELF=${READELF:-readelf} android/scripts/check-page-alignment.sh android/src/main/jniLibs/*/libcommunesync_ffi.so
ls -l android/src/main/jniLibs/*/libcommunesync_ffi.so >&2
