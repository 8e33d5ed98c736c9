#!/usr/bin/env bash
# Provides Swift on Linux (for the uniffi-generated Swift bindings and their
# tests). Debian 12 has no Swift and swift.org is unreachable, so this builds a
# Debian 13 (trixie) chroot with debootstrap and installs Debian's `swiftlang`
# (6.0.x) inside it.
#
# Usage:
#   scripts/toolchains/swift.sh                # create/update the chroot (idempotent), print SWIFT_ROOT=...
#   scripts/toolchains/swift.sh --self-test    # ... then compile+run an async Swift program and a
#                                              #     Swift program calling a C shared library
#   scripts/toolchains/swift.sh run CMD [ARG...]
#                                              # run CMD inside the chroot (as root, cwd /), with /proc
#                                              # mounted for the duration only; exit status is CMD's
#   eval "$(scripts/toolchains/swift.sh)"      # sets SWIFT_ROOT in the caller
#
# Inside the chroot (`run`), PATH is the standard one and LD_LIBRARY_PATH is
# /usr/libexec/swift/lib/swift/linux (the Swift runtime), followed by
# $SWIFT_LD_LIBRARY_PATH if the caller sets it (chroot paths, ':'-separated),
# e.g. the directory holding the Rust cdylib. Files the chroot needs (cdylib,
# generated .swift, FFI .h and .modulemap) must be copied under $SWIFT_ROOT;
# pass swiftc ABSOLUTE chroot paths for -module-cache-path, -I, -L and
# -Xcc -fmodule-map-file= (relative ones fail).
#
# Needs root (debootstrap, chroot, mount). The chroot takes ~3 GB under
# $CACHE_DIR/swift-root (default <repo>/target/toolchains). Stdout carries only
# the SWIFT_ROOT= line (or CMD's output in `run` mode); progress goes to stderr.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_lib.sh"

SUITE=trixie
MIRROR=${SWIFT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES="swiftlang libc6-dev libstdc++-14-dev"
SWIFT_ROOT=$CACHE_DIR/swift-root
STAMP_BOOT=$CACHE_DIR/swift-root.debootstrap.stamp
STAMP_PKGS=$CACHE_DIR/swift-root.packages.stamp
LOCK_FILE=$CACHE_DIR/swift-root.lock
DEB_CACHE=$CACHE_DIR/debootstrap-debs
SWIFT_RUNTIME_DIR=/usr/libexec/swift/lib/swift/linux
MIN_FREE_KB=$((4 * 1024 * 1024))

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot and mount need it)"

# --- running commands inside the chroot -----------------------------------
# Mounts /proc only for the duration of the command. Preferred: a private mount
# namespace (unshare), so the mount vanishes with the namespace even if we are
# killed with SIGKILL; the trap unmounts it explicitly as well. Fallback (no
# unshare, or SWIFT_NO_UNSHARE=1): mount in the host namespace under a lock,
# unmount in a trap.
have_unshare() {
    [ -z "${SWIFT_NO_UNSHARE:-}" ] || return 1
    command -v unshare >/dev/null 2>&1 && unshare --mount --propagation private true 2>/dev/null
}

# The inner script: $1 = root, rest = command (already wrapped in env -i ...).
# The command runs as a background child so that a TERM/INT/HUP sent to this
# shell is handled at once (forwarded as TERM; background children ignore INT)
# and /proc is unmounted only after the command has really exited.
# shellcheck disable=SC2016
INNER='
set -uo pipefail
root=$1; shift
child=
cleanup() {
    if mountpoint -q "$root/proc"; then
        umount "$root/proc" 2>/dev/null || umount -l "$root/proc"
    fi
}
forward() { [ -n "$child" ] && kill -TERM "$child" 2>/dev/null; }
trap cleanup EXIT
trap forward TERM INT HUP
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc" || exit 1
chroot "$root" "$@" <&0 &
child=$!
while :; do
    wait "$child"; rc=$?
    kill -0 "$child" 2>/dev/null || break   # still there: wait was cut short by a signal
done
exit $rc
'

# exec_in_root CMD...: replaces the current process with the runner.
exec_in_root() {
    [ $# -gt 0 ] || die "run: missing command"
    local ld=$SWIFT_RUNTIME_DIR${SWIFT_LD_LIBRARY_PATH:+:$SWIFT_LD_LIBRARY_PATH}
    local envcmd=(/usr/bin/env -i
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
        HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" DEBIAN_FRONTEND=noninteractive
        LD_LIBRARY_PATH="$ld")
    if have_unshare; then
        exec unshare --mount --propagation private -- bash -c "$INNER" swift-run "$SWIFT_ROOT" "${envcmd[@]}" "$@"
    else
        # Shared /proc mount in the host namespace: serialize users so one run
        # cannot unmount /proc under another. The lock (fd 8) is inherited.
        exec 8>"$CACHE_DIR/swift-root.run.lock"
        flock 8
        exec bash -c "$INNER" swift-run "$SWIFT_ROOT" "${envcmd[@]}" "$@"
    fi
}

# run_in_root CMD...: runs it in a subshell and returns its exit status.
run_in_root() { ( exec_in_root "$@" ); }

# --- creating the chroot ----------------------------------------------------
unmount_under_root() {
    # Anything left mounted inside the chroot (e.g. after a crash) must go
    # before we delete it; deepest mount points first.
    local m
    findmnt -rn -o TARGET 2>/dev/null | awk -v r="$SWIFT_ROOT/" 'index($0, r) == 1' | sort -r |
        while read -r m; do
            log "unmounting stale $m"
            umount "$m" 2>/dev/null || umount -l "$m"
        done
}

remove_root() {
    unmount_under_root
    rm -rf --one-file-system "$SWIFT_ROOT"
}

check_disk() {
    local avail
    avail=$(df -Pk "$CACHE_DIR" | awk 'NR == 2 {print $4}')
    log "free space in $CACHE_DIR: $((avail / 1024)) MB"
    [ "$avail" -ge "$MIN_FREE_KB" ] \
        || die "need ~4 GB free for the Swift chroot in $CACHE_DIR; set CACHE_DIR elsewhere"
}

ensure_root() {
    if [ -f "$STAMP_PKGS" ] && [ "$(cat "$STAMP_PKGS")" = "$PACKAGES" ] && [ -x "$SWIFT_ROOT/usr/bin/swiftc" ]; then
        log "Swift chroot ready: $SWIFT_ROOT"
        return
    fi
    # One setup at a time (a second concurrent run waits, then sees the stamp).
    exec 9>"$LOCK_FILE"
    flock 9
    if [ -f "$STAMP_PKGS" ] && [ "$(cat "$STAMP_PKGS")" = "$PACKAGES" ] && [ -x "$SWIFT_ROOT/usr/bin/swiftc" ]; then
        exec 9>&-
        log "Swift chroot ready: $SWIFT_ROOT"
        return
    fi

    if [ ! -f "$STAMP_BOOT" ] || [ ! -x "$SWIFT_ROOT/usr/bin/apt-get" ]; then
        check_disk
        command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
        if [ -e "$SWIFT_ROOT" ]; then
            log "removing incomplete chroot $SWIFT_ROOT"
            remove_root
        fi
        rm -f "$STAMP_BOOT" "$STAMP_PKGS"
        mkdir -p "$DEB_CACHE"
        log "debootstrap --variant=minbase $SUITE $SWIFT_ROOT $MIRROR (~1-2 min)"
        local t0=$SECONDS
        if ! debootstrap --variant=minbase --cache-dir="$DEB_CACHE" "$SUITE" "$SWIFT_ROOT" "$MIRROR" \
                > "$CACHE_DIR/swift-root.debootstrap.log" 2>&1; then
            tail -n 30 "$CACHE_DIR/swift-root.debootstrap.log" >&2
            [ -f "$SWIFT_ROOT/debootstrap/debootstrap.log" ] && tail -n 30 "$SWIFT_ROOT/debootstrap/debootstrap.log" >&2
            die "debootstrap failed (full log: $CACHE_DIR/swift-root.debootstrap.log)"
        fi
        log "debootstrap done in $((SECONDS - t0)) s"
        touch "$STAMP_BOOT"
    fi

    [ -c "$SWIFT_ROOT/dev/null" ] || die "$SWIFT_ROOT/dev/null is not a device node (debootstrap could not mknod?)"
    cp -L /etc/resolv.conf "$SWIFT_ROOT/etc/resolv.conf" 2>/dev/null || true

    log "installing $PACKAGES in the chroot (~1-2 min)"
    local t0=$SECONDS
    local apt_log=$CACHE_DIR/swift-root.apt.log
    : > "$apt_log"
    # shellcheck disable=SC2086
    if ! { run_in_root apt-get update -q && \
           run_in_root apt-get install -y -q --no-install-recommends $PACKAGES; } >> "$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        die "apt-get install $PACKAGES failed inside the chroot (full log: $apt_log)"
    fi
    run_in_root apt-get clean >> "$apt_log" 2>&1 || true
    [ -x "$SWIFT_ROOT/usr/bin/swiftc" ] || die "swiftc missing after installing swiftlang"
    log "packages installed in $((SECONDS - t0)) s: $(run_in_root swiftc --version 2>&1 | head -n 1)"
    printf '%s' "$PACKAGES" > "$STAMP_PKGS"
    exec 9>&-
}

# --- self-test --------------------------------------------------------------
self_test() {
    command -v gcc >/dev/null 2>&1 || apt_install gcc libc6-dev
    local rel host_dir
    host_dir=$(mktemp -d "$SWIFT_ROOT/tmp/swift-selftest.XXXXXX")
    rel=/tmp/$(basename "$host_dir")   # the same directory as seen inside the chroot
    chmod 755 "$host_dir"
    # shellcheck disable=SC2064
    trap "rm -rf --one-file-system '$host_dir'" EXIT

    # 1. async/await with an @main struct.
    cat > "$host_dir/async.swift" <<'SWIFT'
@main
struct AsyncMain {
    static func slowDouble(_ x: Int) async -> Int {
        try? await Task.sleep(nanoseconds: 20_000_000)
        return 2 * x
    }
    static func main() async {
        async let a = slowDouble(20)
        async let b = slowDouble(1)
        let sum = await a + b
        precondition(sum == 42, "expected 42, got \(sum)")
        print("swift async self-test ok: \(sum)")
    }
}
SWIFT
    log "self-test 1/2: compiling async.swift"
    local t0=$SECONDS
    run_in_root swiftc -parse-as-library -module-cache-path "$rel/module-cache" \
        "$rel/async.swift" -o "$rel/async-test" >&2 || die "self-test: swiftc failed on async.swift"
    log "self-test 1/2: compiled in $((SECONDS - t0)) s; running"
    local out
    out=$(run_in_root "$rel/async-test") || die "self-test: async-test failed"
    log "$out"
    [ "$out" = "swift async self-test ok: 42" ] || die "self-test: unexpected output: $out"

    # 2. A C shared library built on the host, called from Swift through a
    #    module map, exactly as the uniffi-generated bindings are linked.
    cat > "$host_dir/selftestffi.h" <<'H'
#pragma once
#include <stdint.h>
int32_t selftest_add(int32_t a, int32_t b);
const char *selftest_greeting(void);
H
    cat > "$host_dir/selftestffi.c" <<'C'
#include "selftestffi.h"
int32_t selftest_add(int32_t a, int32_t b) { return a + b; }
const char *selftest_greeting(void) { return "hello from C"; }
C
    gcc -shared -fPIC -O2 -o "$host_dir/libselftestffi.so" "$host_dir/selftestffi.c" \
        || die "self-test: gcc failed to build the C shared library"
    cat > "$host_dir/SelfTestFFI.modulemap" <<'MM'
module SelfTestFFI {
    header "selftestffi.h"
    export *
}
MM
    cat > "$host_dir/ffi.swift" <<'SWIFT'
import SelfTestFFI

@main
struct FFIMain {
    static func add(_ a: Int32, _ b: Int32) async -> Int32 {
        await Task.yield()
        return selftest_add(a, b)
    }
    static func main() async {
        let sum = await add(40, 2)
        let greeting = String(cString: selftest_greeting())
        precondition(sum == 42, "expected 42, got \(sum)")
        print("swift ffi self-test ok: \(sum), \(greeting)")
    }
}
SWIFT
    log "self-test 2/2: compiling ffi.swift against libselftestffi.so"
    t0=$SECONDS
    run_in_root swiftc -parse-as-library -module-cache-path "$rel/module-cache" \
        -I "$rel" -Xcc "-fmodule-map-file=$rel/SelfTestFFI.modulemap" \
        -L "$rel" -lselftestffi \
        "$rel/ffi.swift" -o "$rel/ffi-test" >&2 || die "self-test: swiftc failed on ffi.swift"
    log "self-test 2/2: compiled in $((SECONDS - t0)) s; running"
    out=$(SWIFT_LD_LIBRARY_PATH=$rel run_in_root "$rel/ffi-test") || die "self-test: ffi-test failed"
    log "$out"
    [ "$out" = "swift ffi self-test ok: 42, hello from C" ] || die "self-test: unexpected output: $out"
    log "self-test passed"
}

case "${1:-}" in
    "")
        ensure_root
        printf 'SWIFT_ROOT=%s\n' "$SWIFT_ROOT" ;;
    --self-test)
        ensure_root
        self_test
        printf 'SWIFT_ROOT=%s\n' "$SWIFT_ROOT" ;;
    run)
        shift
        [ $# -gt 0 ] || die "usage: swift.sh run CMD [ARG...]"
        ensure_root
        exec_in_root "$@" ;;
    -h|--help)
        sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//' >&2 ;;
    *)
        die "unknown argument: $1 (expected nothing, --self-test, run CMD...)" ;;
esac
