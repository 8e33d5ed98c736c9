#!/usr/bin/env bash
# Builds ios/CommuneSyncFFI.xcframework on a Mac: the Rust engine (bindings/, crate
# communesync-ffi) as a static library for iOS devices (arm64), the iOS simulator (arm64 +
# x86_64) and macOS (arm64 + x86_64, for `swift test`), with the uniffi-generated C header and
# module map. With --zip, also CommuneSyncFFI.xcframework.zip and its SwiftPM checksum, for a
# release whose Package.swift names the zip by URL (ios/README.md).
#
# Needs: macOS with Xcode (xcodebuild, lipo), Rust with the targets
#   rustup target add aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin
# Usage: ios/scripts/build-xcframework.sh [--debug] [--zip]
# Then: cd ios && swift build && swift test  (or add the ios/ package to an Xcode project).
# The header and module map come from ios/Generated (checked by the test command against a fresh
# generation); run scripts/bindings/generate.sh --update after changing bindings/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
[ "$(uname -s)" = Darwin ] || { echo "build-xcframework.sh runs on macOS (Xcode) only" >&2; exit 1; }
PROFILE=release
ZIP=
for arg in "$@"; do
    case $arg in
        --debug) PROFILE=debug ;;
        --zip) ZIP=1 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done
# The package's minimum platforms (Package.swift): object files built for the same.
export IPHONEOS_DEPLOYMENT_TARGET=15.0 MACOSX_DEPLOYMENT_TARGET=12.0
CARGO_PROFILE_ARGS=()
[ "$PROFILE" = release ] && CARGO_PROFILE_ARGS=(--release)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$ROOT/ios/CommuneSyncFFI.xcframework
WORK=$TARGET_DIR/xcframework
rm -rf "$WORK" "$OUT"
mkdir -p "$WORK/headers"

# One static library per target (crate-type staticlib only here; the workspace builds lib+cdylib).
for target in aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin; do
    echo "==> $target" >&2
    cargo rustc -p communesync-ffi --lib --crate-type staticlib --target "$target" "${CARGO_PROFILE_ARGS[@]}"
done
lib() { echo "$TARGET_DIR/$1/$PROFILE/libcommunesync_ffi.a"; }

# Fat libraries for the simulator and macOS slices.
mkdir -p "$WORK/ios-sim" "$WORK/macos"
lipo -create "$(lib aarch64-apple-ios-sim)" "$(lib x86_64-apple-ios)" -output "$WORK/ios-sim/libcommunesync_ffi.a"
lipo -create "$(lib aarch64-apple-darwin)" "$(lib x86_64-apple-darwin)" -output "$WORK/macos/libcommunesync_ffi.a"

# Headers: the generated header, and its module map under the name Xcode looks for.
cp ios/Generated/CommuneSyncFFI.h "$WORK/headers/"
cp ios/Generated/CommuneSyncFFI.modulemap "$WORK/headers/module.modulemap"

xcodebuild -create-xcframework \
    -library "$(lib aarch64-apple-ios)" -headers "$WORK/headers" \
    -library "$WORK/ios-sim/libcommunesync_ffi.a" -headers "$WORK/headers" \
    -library "$WORK/macos/libcommunesync_ffi.a" -headers "$WORK/headers" \
    -output "$OUT"
echo "built $OUT" >&2
if [ -n "$ZIP" ]; then
    (cd "$(dirname "$OUT")" && rm -f CommuneSyncFFI.xcframework.zip \
        && ditto -c -k --sequesterRsrc --keepParent CommuneSyncFFI.xcframework CommuneSyncFFI.xcframework.zip)
    echo "built $OUT.zip, checksum $(swift package --package-path "$ROOT/ios" compute-checksum "$OUT.zip")" >&2
fi
