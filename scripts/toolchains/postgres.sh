#!/usr/bin/env bash
# PostgreSQL for the server's backend tests: installs PostgreSQL (Debian 12:
# version 15) if needed and runs private, throw-away clusters bound to
# 127.0.0.1 only, so tests never touch a system cluster.
#
# Usage:
#   scripts/toolchains/postgres.sh                  # install if missing; print PG_BIN=...
#   scripts/toolchains/postgres.sh start DIR [PORT] # initdb DIR (first time) and start it;
#                                                   # print DATABASE_URL=postgres://USER@127.0.0.1:PORT/communesync
#   scripts/toolchains/postgres.sh stop DIR         # pg_ctl stop -m fast (no-op if not running)
#   scripts/toolchains/postgres.sh status DIR       # exit 0 if running (prints its DATABASE_URL)
#   scripts/toolchains/postgres.sh standby DIR PRIMARY_DIR [PORT]
#       # pg_basebackup -R of the running cluster PRIMARY_DIR into DIR, started as its streaming
#       # standby; the primary then commits synchronously (synchronous_commit = on,
#       # synchronous_standby_names = '*'): a commit it acknowledges is on the standby too.
#       # Waits until the standby is in sync; prints the standby's DATABASE_URL.
#   scripts/toolchains/postgres.sh promote DIR      # pg_ctl promote: the standby becomes a primary
#
#   eval "$(scripts/toolchains/postgres.sh start "$PWD/target/pg" 55432)"
#   trap 'scripts/toolchains/postgres.sh stop "$PWD/target/pg"' EXIT
#
# PORT defaults to a free port in 55432-55531. DIR is the data directory; it
# also holds the unix socket and postgresql.log. initdb refuses to run as
# root: as root the cluster runs as the `postgres` user (or `communesync-pg`,
# created if `postgres` does not exist; COMMUNESYNC_PG_USER overrides), so DIR's parents must be traversable
# by that user. Auth is `trust` on 127.0.0.1 and the socket only; fsync is off
# (test data only). Stdout carries only KEY=VALUE lines; progress goes to stderr.
#
# TLS: with COMMUNESYNC_PG_SSL_CERT and COMMUNESYNC_PG_SSL_KEY (PEM files) set at
# start, the cluster serves TLS with that certificate (copied into DIR; `ssl = on`).
# Clients may still connect without TLS (the server's tests check which they got).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_lib.sh"

DB_NAME=communesync
FALLBACK_USER=communesync-pg

# --- binaries ---------------------------------------------------------------
# Use the versioned binaries directly: on Debian /usr/bin/psql is a wrapper
# (pg_wrapper) that picks a version/cluster from its own config, and
# /usr/local/bin/pg_ctl, if present, is just whatever someone symlinked there.
find_pg_bin() {
    local d best=
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/psql" ] || continue
        best=$d   # the glob sorts lexically; prefer 15 (the Debian 12 version) if present
        [ "$d" = /usr/lib/postgresql/15/bin ] && break
    done
    [ -n "$best" ] && printf '%s\n' "$best"
}

ensure_postgres() {
    PG_BIN=$(find_pg_bin || true)
    if [ -z "$PG_BIN" ]; then
        # Installing the Debian package creates (and would start) a system
        # cluster on 5432; we do not need it, so keep services from starting.
        local tmp_policy=
        if [ "$(id -u)" -eq 0 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
            tmp_policy=/usr/sbin/policy-rc.d
            printf '#!/bin/sh\nexit 101\n' > "$tmp_policy"
            chmod 755 "$tmp_policy"
            trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        fi
        apt_install postgresql
        if [ -n "$tmp_policy" ]; then rm -f "$tmp_policy"; trap - EXIT; fi
        PG_BIN=$(find_pg_bin || true)
        [ -n "$PG_BIN" ] || die "postgresql installed but no /usr/lib/postgresql/*/bin/{initdb,pg_ctl,psql}"
    fi
    log "PostgreSQL: $("$PG_BIN/postgres" --version) ($PG_BIN)"
}

# --- users ----------------------------------------------------------------
# Sets PG_USER and as_pg (a command prefix running as that user).
pick_user() {
    if [ "$(id -u)" -ne 0 ]; then
        PG_USER=$(id -un)
        as_pg=()
        return
    fi
    if [ -n "${COMMUNESYNC_PG_USER:-}" ]; then
        PG_USER=$COMMUNESYNC_PG_USER
    elif id -u postgres >/dev/null 2>&1; then
        PG_USER=postgres
    else
        PG_USER=$FALLBACK_USER
    fi
    if ! id -u "$PG_USER" >/dev/null 2>&1; then
        [ "$PG_USER" = "$FALLBACK_USER" ] || die "user $PG_USER does not exist"
        log "creating system user $PG_USER (initdb refuses to run as root)"
        useradd --system --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$PG_USER"
    fi
    as_pg=(runuser -u "$PG_USER" --)
}

# Run as the owner of an existing data directory.
owner_of() {
    local owner
    owner=$(stat -c %U "$1")
    if [ "$(id -u)" -eq 0 ]; then
        [ "$owner" != root ] || die "$1 is owned by root; expected the cluster's user"
        as_pg=(runuser -u "$owner" --)
    else
        [ "$owner" = "$(id -un)" ] || die "$1 is owned by $owner; run this as $owner or root"
        as_pg=()
    fi
    PG_USER=$owner
}

abs_dir() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$PWD" "$1" ;;
    esac
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
    local p
    for p in $(seq 55432 55531); do
        port_in_use "$p" || { printf '%s\n' "$p"; return 0; }
    done
    die "no free port in 55432-55531; pass PORT explicitly"
}

is_running() {
    [ -f "$1/postmaster.pid" ] && (cd / && "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$1" status >/dev/null 2>&1)
}

running_port() {
    sed -n '4p' "$1/postmaster.pid"
}

url() {
    printf 'DATABASE_URL=postgres://%s@127.0.0.1:%s/%s\n' "$PG_USER" "$1" "$DB_NAME"
}

# --- subcommands ------------------------------------------------------------
cmd_start() {
    [ $# -ge 1 ] && [ $# -le 2 ] || die "usage: postgres.sh start DIR [PORT]"
    local dir port
    dir=$(abs_dir "$1")
    port=${2:-}
    ensure_postgres

    if [ -f "$dir/PG_VERSION" ]; then
        owner_of "$dir"
        if is_running "$dir"; then
            local rp
            rp=$(running_port "$dir")
            if [ -z "$port" ] || [ "$port" = "$rp" ]; then
                log "cluster in $dir already running on port $rp"
                url "$rp"
                return
            fi
            die "cluster in $dir is already running on port $rp (not $port); stop it first"
        fi
    fi
    # Check what can fail before initdb, so a bad PORT leaves nothing behind.
    [ -n "$port" ] || port=$(free_port)
    case "$port" in ''|*[!0-9]*) die "PORT must be a number, got '$port'" ;; esac
    port_in_use "$port" && die "port $port on 127.0.0.1 is already in use"
    # A unix socket path is limited to 107 bytes.
    [ ${#dir} -le 90 ] || die "DIR path too long for a unix socket ($dir); use a shorter one"

    if [ -f "$dir/PG_VERSION" ]; then
        log "reusing existing cluster in $dir"
    else
        pick_user
        if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
            die "$dir exists, is not empty and is not a PostgreSQL data directory"
        fi
        mkdir -p "$dir"
        if [ "$(id -u)" -eq 0 ]; then
            chown "$PG_USER:" "$dir"
            "${as_pg[@]}" test -w "$dir" \
                || die "user $PG_USER cannot reach $dir (a parent directory is not traversable?)"
        fi
        chmod 700 "$dir"
        log "initdb $dir (as $PG_USER)"
        (cd / && "${as_pg[@]}" "$PG_BIN/initdb" -D "$dir" -U "$PG_USER" \
            --auth-local=trust --auth-host=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null) \
            || die "initdb failed"
        # Only the unix socket and 127.0.0.1 (no ::1, nothing else).
        cat > "$dir/pg_hba.conf" <<'HBA'
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   trust
host    replication all 127.0.0.1/32   trust
HBA
        printf "\n# Written by scripts/toolchains/postgres.sh\ninclude_if_exists = 'communesync.conf'\n" \
            >> "$dir/postgresql.conf"
    fi

    # Rewritten at every start so the port can change between runs.
    local conf=$dir/communesync.conf
    cat > "$conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
    if [ -n "${COMMUNESYNC_PG_SSL_CERT:-}" ] || [ -n "${COMMUNESYNC_PG_SSL_KEY:-}" ]; then
        [ -r "${COMMUNESYNC_PG_SSL_CERT:-}" ] && [ -r "${COMMUNESYNC_PG_SSL_KEY:-}" ] \
            || die "COMMUNESYNC_PG_SSL_CERT and COMMUNESYNC_PG_SSL_KEY must both name readable files"
        install -m 644 "$COMMUNESYNC_PG_SSL_CERT" "$dir/server.crt"
        # PostgreSQL refuses a key readable by others.
        install -m 600 "$COMMUNESYNC_PG_SSL_KEY" "$dir/server.key"
        chown --reference="$dir" "$dir/server.crt" "$dir/server.key"
        cat >> "$conf" <<CONF
ssl = on
ssl_cert_file = '$dir/server.crt'
ssl_key_file = '$dir/server.key'
CONF
        log "TLS on with $COMMUNESYNC_PG_SSL_CERT"
    fi
    chown --reference="$dir" "$conf"

    log "starting PostgreSQL on 127.0.0.1:$port (log: $dir/postgresql.log)"
    if ! (cd / && "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/postgresql.log" -w -t 60 start >/dev/null); then
        tail -n 20 "$dir/postgresql.log" >&2 || true
        die "pg_ctl start failed"
    fi

    local exists
    exists=$("$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U "$PG_USER" -d postgres -tAc \
        "select 1 from pg_database where datname = '$DB_NAME'") || die "cannot connect to the new cluster"
    if [ "$exists" != 1 ]; then
        log "creating database $DB_NAME"
        "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U "$PG_USER" -d postgres \
            -c "create database $DB_NAME" >/dev/null || die "create database $DB_NAME failed"
    fi
    url "$port"
}

cmd_stop() {
    [ $# -eq 1 ] || die "usage: postgres.sh stop DIR"
    local dir
    dir=$(abs_dir "$1")
    PG_BIN=$(find_pg_bin || true)
    [ -n "$PG_BIN" ] || die "PostgreSQL is not installed"
    if [ ! -f "$dir/PG_VERSION" ]; then
        log "$dir is not a PostgreSQL data directory; nothing to stop"
        return
    fi
    owner_of "$dir"
    if ! is_running "$dir"; then
        log "cluster in $dir is not running"
        return
    fi
    log "stopping cluster in $dir"
    (cd / && "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$dir" -m fast -w -t 60 stop >/dev/null) || die "pg_ctl stop failed"
}

cmd_status() {
    [ $# -eq 1 ] || die "usage: postgres.sh status DIR"
    local dir
    dir=$(abs_dir "$1")
    PG_BIN=$(find_pg_bin || true)
    [ -n "$PG_BIN" ] && [ -f "$dir/PG_VERSION" ] || { log "no cluster in $dir"; exit 3; }
    owner_of "$dir"
    if is_running "$dir"; then
        log "running"
        url "$(running_port "$dir")"
    else
        log "not running"
        exit 3
    fi
}

psql_at() {
    "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$1" -U "$PG_USER" -d postgres -tAc "$2"
}

cmd_standby() {
    [ $# -ge 2 ] && [ $# -le 3 ] || die "usage: postgres.sh standby DIR PRIMARY_DIR [PORT]"
    local dir primary port primary_port
    dir=$(abs_dir "$1")
    primary=$(abs_dir "$2")
    port=${3:-}
    ensure_postgres
    [ -f "$primary/PG_VERSION" ] || die "$primary is not a PostgreSQL data directory"
    owner_of "$primary"
    is_running "$primary" || die "the primary in $primary is not running"
    primary_port=$(running_port "$primary")
    [ ! -e "$dir" ] || [ -z "$(ls -A "$dir" 2>/dev/null)" ] || die "$dir exists and is not empty"
    [ -n "$port" ] || port=$(free_port)
    case "$port" in ''|*[!0-9]*) die "PORT must be a number, got '$port'" ;; esac
    port_in_use "$port" && die "port $port on 127.0.0.1 is already in use"
    [ ${#dir} -le 90 ] || die "DIR path too long for a unix socket ($dir); use a shorter one"

    # Clusters made before replication was allowed in pg_hba.conf.
    if ! grep -q '^host *replication' "$primary/pg_hba.conf"; then
        printf 'host    replication all 127.0.0.1/32   trust\n' >> "$primary/pg_hba.conf"
        psql_at "$primary_port" "select pg_reload_conf()" >/dev/null || die "reload of the primary failed"
    fi
    mkdir -p "$dir"
    [ "$(id -u)" -ne 0 ] || chown "$PG_USER:" "$dir"
    chmod 700 "$dir"
    log "pg_basebackup of 127.0.0.1:$primary_port into $dir"
    (cd / && "${as_pg[@]}" "$PG_BIN/pg_basebackup" -D "$dir" -R -X stream -c fast --no-sync \
        -h 127.0.0.1 -p "$primary_port" -U "$PG_USER") || die "pg_basebackup failed"
    cat > "$dir/communesync.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = on
full_page_writes = off
CONF
    chown --reference="$dir" "$dir/communesync.conf"
    log "starting the standby on 127.0.0.1:$port (log: $dir/postgresql.log)"
    if ! (cd / && "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/postgresql.log" -w -t 60 start >/dev/null); then
        tail -n 20 "$dir/postgresql.log" >&2 || true
        die "pg_ctl start of the standby failed"
    fi
    # Set after the base backup, so the standby does not inherit it (once promoted it has no
    # standby of its own to wait for).
    psql_at "$primary_port" "alter system set synchronous_commit = 'on'" >/dev/null \
        && psql_at "$primary_port" "alter system set synchronous_standby_names = '*'" >/dev/null \
        && psql_at "$primary_port" "select pg_reload_conf()" >/dev/null \
        || die "could not turn on synchronous replication on the primary"
    local i state=
    for i in $(seq 1 600); do
        state=$(psql_at "$primary_port" "select string_agg(sync_state, ',') from pg_stat_replication") || true
        [ "$state" = sync ] && break
        sleep 0.1
    done
    [ "$state" = sync ] || die "the standby did not reach synchronous replication (state: '$state')"
    log "standby in sync with the primary"
    url "$port"
}

cmd_promote() {
    [ $# -eq 1 ] || die "usage: postgres.sh promote DIR"
    local dir
    dir=$(abs_dir "$1")
    PG_BIN=$(find_pg_bin || true)
    [ -n "$PG_BIN" ] && [ -f "$dir/PG_VERSION" ] || die "no cluster in $dir"
    owner_of "$dir"
    (cd / && "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$dir" -w -t 60 promote >/dev/null) || die "pg_ctl promote failed"
    log "promoted $dir"
}

case "${1:-}" in
    "") ensure_postgres; printf 'PG_BIN=%s\n' "$PG_BIN" ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    status) shift; cmd_status "$@" ;;
    standby) shift; cmd_standby "$@" ;;
    promote) shift; cmd_promote "$@" ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//' >&2 ;;
    *) die "unknown subcommand: $1 (expected start, stop, status, standby, promote)" ;;
esac
