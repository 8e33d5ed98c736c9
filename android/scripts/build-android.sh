#!/usr/bin/env bash
# Builds the engine (bindings/, crate communesync-ffi) for Android with cargo-ndk into
# android/src/main/jniLibs/<abi>/libcommunesync_ffi.so, stripped.
#
# Needs a workstation with the Android NDK (r26 or newer; not obtainable on the CI machines, so
# CI does not run this):
#   export ANDROID_NDK_HOME=$HOME/Android/Sdk/ndk/<version>
#   cargo install cargo-ndk
#   rustup target add aarch64-linux-android armv7-linux-androideabi x86_64-linux-android
#   (perl and make for the vendored OpenSSL that SQLCipher builds with)
# Usage: android/scripts/build-android.sh [--debug]
# Then build the library with Gradle from android/. The Kotlin sources are already packaged;
# after changing bindings/, run scripts/bindings/generate.sh --update first.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
[ -n "${ANDROID_NDK_HOME:-}" ] || { echo "set ANDROID_NDK_HOME to the NDK directory" >&2; exit 1; }
command -v cargo-ndk >/dev/null || { echo "cargo install cargo-ndk" >&2; exit 1; }
PROFILE_ARGS=(--release)
[ "${1:-}" = --debug ] && PROFILE_ARGS=()
# API 24 (Android 7) is the library's minSdk.
cargo ndk --platform 24 -t arm64-v8a -t armeabi-v7a -t x86_64 \
    -o android/src/main/jniLibs build -p communesync-ffi --lib "${PROFILE_ARGS[@]}"
ls -l android/src/main/jniLibs/*/libcommunesync_ffi.so >&2
