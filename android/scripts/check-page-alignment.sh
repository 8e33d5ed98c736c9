#!/usr/bin/env bash
# Fails unless every LOAD segment of each given ELF shared library is aligned on at least 16 KB
# (0x4000): Android 15+ devices with 16 KB pages refuse to load a library linked for 4 KB pages.
# build-android.sh runs it on what it built; scripts/test.d/25-packaging.sh tests it on Linux.
# Usage: android/scripts/check-page-alignment.sh LIB.so...   (needs readelf: binutils, or the
# NDK's llvm-readelf through READELF=...)
set -euo pipefail
READELF=${READELF:-readelf}
command -v "$READELF" >/dev/null || { echo "no $READELF (apt-get install binutils, or READELF=llvm-readelf)" >&2; exit 2; }
[ $# -gt 0 ] || { echo "usage: $0 LIB.so..." >&2; exit 2; }
status=0
for lib in "$@"; do
    # Program headers, one per line: "LOAD 0x... 0x... 0x... 0x... 0x... R E 0x4000".
    aligns=$("$READELF" -lW "$lib" | awk '$1 == "LOAD" { print $NF }')
    if [ -z "$aligns" ]; then
        echo "$lib: no LOAD segment (not an ELF shared library?)" >&2
        status=1
        continue
    fi
    for align in $aligns; do
        if [ $((align)) -lt 16384 ]; then
            echo "$lib: a LOAD segment is aligned on $((align)) bytes, not 16 KB: link with -Wl,-z,max-page-size=16384" >&2
            status=1
            continue 2
        fi
    done
    echo "$lib: 16 KB aligned" >&2
done
exit $status
