#!/usr/bin/env bash
# The packaging scripts' parts that run without the Android NDK or Xcode: the 16 KB page
# alignment check that android/scripts/build-android.sh applies to the .so files it builds,
# tried on libraries linked here (16 KB pages, 4 KB pages: it must refuse that one), and the
# script's own link flags, given to rustc for a Rust cdylib on this host's linker.
# The Swift package manifest is evaluated by scripts/test.d/20-bindings.sh (in the Swift chroot).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
WORK=${CARGO_TARGET_DIR:-$ROOT/target}/packaging-test
log() { printf '[packaging-test] %s\n' "$*" >&2; }
die() { printf '[packaging-test] FAILED: %s\n' "$*" >&2; exit 1; }
command -v readelf >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q binutils >&2
command -v cc >/dev/null || die "no C compiler (cc)"
rm -rf "$WORK"
mkdir -p "$WORK"
echo 'int communesync_probe(void) { return 16384; }' > "$WORK/probe.c"
cc -shared -fPIC -Wl,-z,max-page-size=16384 -o "$WORK/lib16k.so" "$WORK/probe.c"
cc -shared -fPIC -Wl,-z,max-page-size=4096 -Wl,-z,common-page-size=4096 -o "$WORK/lib4k.so" "$WORK/probe.c"
CHECK=android/scripts/check-page-alignment.sh
"$CHECK" "$WORK/lib16k.so" 2>/dev/null || die "a library linked for 16 KB pages was refused"
if "$CHECK" "$WORK/lib4k.so" 2>"$WORK/4k.err"; then
    die "a library linked for 4 KB pages was accepted"
fi
grep -q 'not 16 KB' "$WORK/4k.err" || die "the refusal does not say why: $(cat "$WORK/4k.err")"
if "$CHECK" "$WORK/probe.c" 2>/dev/null; then die "a file that is not ELF was accepted"; fi
log "16 KB alignment check: accepts 16 KB, refuses 4 KB and non-ELF"

# The flags build-android.sh gives every Android target, through rustc to the linker.
FLAGS=$(android/scripts/build-android.sh --print-rustflags)
echo '#[unsafe(no_mangle)] pub extern "C" fn communesync_probe() -> u32 { 16384 }' > "$WORK/probe.rs"
# shellcheck disable=SC2086 # the flags are words
rustc --edition 2024 --crate-type cdylib -C opt-level=0 $FLAGS -o "$WORK/librust16k.so" "$WORK/probe.rs"
"$CHECK" "$WORK/librust16k.so" 2>/dev/null || die "build-android.sh's flags ($FLAGS) did not give a 16 KB-aligned library"
log "build-android.sh's link flags give a 16 KB-aligned Rust cdylib ($FLAGS)"
