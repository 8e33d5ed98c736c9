# Shared helpers for scripts/toolchains/*.sh. Source it; do not run it.
# shellcheck shell=bash

TOOLCHAINS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$TOOLCHAINS_DIR/../.." && pwd)
CACHE_DIR=${CACHE_DIR:-$REPO_ROOT/target/toolchains}
mkdir -p "$CACHE_DIR"
CACHE_DIR=$(cd "$CACHE_DIR" && pwd)   # always absolute
export CACHE_DIR

_tc_name=$(basename "${0:-toolchains}" .sh)
log() { printf '[%s] %s\n' "$_tc_name" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$_tc_name" "$*" >&2; exit 1; }

# Run a command as root (directly, or through sudo when we are not root).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# apt_install PKG... : install Debian packages; run `apt-get update` once and
# retry if the first attempt fails (stale or missing package lists).
apt_install() {
    log "apt-get install $*"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2; then
        log "apt-get install failed; running apt-get update and retrying"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 \
            || die "apt-get install $* failed"
    fi
}
