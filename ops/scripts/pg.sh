#!/usr/bin/env bash
# A private PostgreSQL server for local runs and tests (not the system cluster).
#
#   ops/scripts/pg.sh start  DATADIR PORT   initdb if needed, start, ensure role+db "wipay"
#   ops/scripts/pg.sh stop   DATADIR        fast shutdown if running
#   ops/scripts/pg.sh status DATADIR        exit 0 if running, 3 if not
#   ops/scripts/pg.sh crash  DATADIR        immediate shutdown (no checkpoint: like a power cut for the
#                                           clients; crash recovery on the next start)
#   ops/scripts/pg.sh restart DATADIR       immediate shutdown, then start again on the same port
#
# The server listens on 127.0.0.1:PORT and on a unix socket in DATADIR/socket, logs to
# DATADIR/log, and trusts local connections (development only). On start it prints the
# libpq conninfo: host=127.0.0.1 port=PORT dbname=wipay user=wipay
#
# PostgreSQL refuses to run as root: when run as root, DATADIR is owned by the `postgres`
# user and initdb/pg_ctl run through runuser. Otherwise they run as the current user.
# The server binaries are taken from the highest /usr/lib/postgresql/*/bin, or from $PG_BIN.
set -euo pipefail

prog="pg.sh"
say() { printf '%s: %s\n' "$prog" "$*"; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }
usage() {
    cat >&2 <<'EOF'
usage: pg.sh start DATADIR PORT
       pg.sh stop DATADIR
       pg.sh status DATADIR
       pg.sh crash DATADIR
       pg.sh restart DATADIR
EOF
    exit 2
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"

[[ $# -ge 2 ]] || usage
cmd="$1"
datadir_arg="$2"
port=""
case "$cmd" in
    start)
        [[ $# -eq 3 ]] || usage
        port="$3"
        if ! [[ "$port" =~ ^[0-9]+$ ]] || ((10#$port < 1 || 10#$port > 65535)); then
            die "PORT must be a number between 1 and 65535, got '$port'"
        fi
        ;;
    stop | status | crash | restart) [[ $# -eq 2 ]] || usage ;;
    *) usage ;;
esac
[[ -n "$datadir_arg" ]] || die "DATADIR must not be empty"

# --- where the PostgreSQL binaries are --------------------------------------------------------
find_pg_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        [[ -x "$PG_BIN/pg_ctl" ]] || die "PG_BIN=$PG_BIN has no pg_ctl"
        printf '%s\n' "$PG_BIN"
        return
    fi
    local candidates=() d
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/pg_ctl" && -x "$d/initdb" ]] && candidates+=("$d")
    done
    [[ ${#candidates[@]} -gt 0 ]] \
        || die "no PostgreSQL server binaries found under /usr/lib/postgresql/*/bin; run ops/scripts/deps.sh (installs the 'postgresql' package)"
    printf '%s\n' "${candidates[@]}" | sort -V | tail -n 1
}
PG_BIN="$(find_pg_bin)"

# --- who runs the server ------------------------------------------------------------------------
as_root=0
if [[ $(id -u) -eq 0 ]]; then
    as_root=1
    getent passwd postgres >/dev/null 2>&1 \
        || die "running as root, but there is no 'postgres' user to run the server as (install the 'postgresql' package)"
    command -v runuser >/dev/null 2>&1 || die "running as root, but 'runuser' (util-linux) is missing"
fi

# Runs a command as the server's owner, from a folder that user can enter.
as_pg() {
    if [[ $as_root -eq 1 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# DATADIR as an absolute path (it may not exist yet).
abs_path() {
    local p="$1"
    [[ "$p" == /* ]] || p="$PWD/$p"
    # Normalise the existing part; keep the rest as given.
    local dir="$p" rest=""
    while [[ ! -d "$dir" ]]; do
        rest="/$(basename "$dir")$rest"
        dir="$(dirname "$dir")"
    done
    printf '%s%s\n' "$(cd "$dir" && pwd -P)" "$rest"
}
DATADIR="$(abs_path "$datadir_arg")"
DATADIR="${DATADIR%/}"
SOCKDIR="$DATADIR/socket"
LOGFILE="$DATADIR/log"

# 0 = running, 3 = not running, other = no usable data directory.
pg_status() {
    [[ -f "$DATADIR/PG_VERSION" ]] || return 4
    local rc=0
    as_pg "$PG_BIN/pg_ctl" status -D "$DATADIR" >/dev/null 2>&1 || rc=$?
    return "$rc"
}

# The port a running server was started with (line 4 of postmaster.pid).
running_port() {
    sed -n '4p' "$DATADIR/postmaster.pid" 2>/dev/null || true
}

# Makes sure the postgres user can reach DATADIR: fixes parents inside the repo, fails otherwise.
ensure_traversable() {
    local dir parent
    parent="$(dirname "$DATADIR")"
    # Inside the repo: give "others" the x bit on each parent up to and including the repo root.
    if [[ "$DATADIR" == "$REPO_ROOT"/* ]]; then
        dir="$parent"
        while :; do
            if ! runuser -u postgres -- test -x "$dir" 2>/dev/null; then
                say "chmod o+x $dir (so the postgres user can reach $DATADIR)"
                chmod o+x "$dir"
            fi
            [[ "$dir" == "$REPO_ROOT" || "$dir" == / ]] && break
            dir="$(dirname "$dir")"
        done
    fi
    # Every parent from / down must be traversable by postgres.
    dir=""
    local part
    IFS='/' read -r -a parts <<<"${parent#/}"
    for part in "${parts[@]}"; do
        [[ -n "$part" ]] || continue
        dir="$dir/$part"
        runuser -u postgres -- test -x "$dir" 2>/dev/null \
            || die "the postgres user cannot enter $dir, so it cannot reach $DATADIR. PostgreSQL cannot run as root; use a DATADIR under a folder that 'postgres' can traverse (e.g. under /tmp), or run: chmod o+x $dir"
    done
}

write_config() {
    local sockdirs="$SOCKDIR"
    # A unix socket path is limited to 107 bytes; without a socket the server still serves TCP.
    if [[ ${#SOCKDIR} -gt 90 ]]; then
        say "warning: $SOCKDIR is too long for a unix socket path; serving TCP (127.0.0.1:$port) only"
        sockdirs=""
    fi
    # Regenerated on every start so the port and paths follow the arguments.
    cat >"$DATADIR/wipay.conf" <<EOF
# Written by ops/scripts/pg.sh on every start; edit the script, not this file.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sockdirs'
max_connections = 200

# Durability stays on: this is a ledger.
fsync = on
synchronous_commit = on
full_page_writes = on

# Sized for a 2-core machine with a few GB to spare.
shared_buffers = 256MB
effective_cache_size = 1GB
work_mem = 8MB
maintenance_work_mem = 128MB
wal_buffers = 16MB
wal_compression = on
checkpoint_timeout = 15min
checkpoint_completion_target = 0.9
max_wal_size = 2GB
min_wal_size = 256MB
max_worker_processes = 4
max_parallel_workers = 2
max_parallel_workers_per_gather = 1
random_page_cost = 1.1

log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = 1000
log_lock_waits = on
EOF
    if ! grep -q "^include_if_exists = 'wipay.conf'" "$DATADIR/postgresql.conf"; then
        printf "\n# WiPay settings (ops/scripts/pg.sh)\ninclude_if_exists = 'wipay.conf'\n" >>"$DATADIR/postgresql.conf"
    fi
}

psql_admin() {
    PGCONNECT_TIMEOUT=10 "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"
}

ensure_role_and_db() {
    local has_role has_db
    has_role="$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'wipay'")" \
        || die "cannot connect to the server on 127.0.0.1:$port as postgres (see $LOGFILE)"
    if [[ "$has_role" != "1" ]]; then
        psql_admin -c "CREATE ROLE wipay LOGIN SUPERUSER PASSWORD 'wipay'" \
            || die "could not create role wipay"
        say "created role wipay"
    fi
    has_db="$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = 'wipay'")" \
        || die "could not query databases"
    if [[ "$has_db" != "1" ]]; then
        psql_admin -c "CREATE DATABASE wipay OWNER wipay ENCODING 'UTF8' TEMPLATE template0" \
            || die "could not create database wipay"
        say "created database wipay"
    fi
}

conninfo() { printf 'host=127.0.0.1 port=%s dbname=wipay user=wipay\n' "$1"; }

do_start() {
    local rc=0
    pg_status || rc=$?
    if [[ $rc -eq 0 ]]; then
        local rport
        rport="$(running_port)"
        if [[ -n "$rport" && "$rport" != "$port" ]]; then
            die "the server for $DATADIR is already running on port $rport, not $port; stop it first: ops/scripts/pg.sh stop $datadir_arg"
        fi
        say "already running ($DATADIR, port $port)"
        ensure_role_and_db
        say "conninfo: $(conninfo "$port")"
        return 0
    fi

    mkdir -p "$DATADIR" || die "cannot create $DATADIR"
    if [[ $as_root -eq 1 ]]; then
        chown postgres:postgres "$DATADIR"
        ensure_traversable
    fi
    chmod 700 "$DATADIR"

    if [[ ! -f "$DATADIR/PG_VERSION" ]]; then
        if [[ -n "$(ls -A "$DATADIR")" ]]; then
            die "$DATADIR is not empty but holds no PostgreSQL data (no PG_VERSION); remove it or pick another DATADIR"
        fi
        say "initdb $DATADIR ($("$PG_BIN/postgres" --version))"
        local initlog
        initlog="$(mktemp)"
        if ! as_pg "$PG_BIN/initdb" -D "$DATADIR" --auth=trust --username=postgres \
            -E UTF8 --locale=C >"$initlog" 2>&1; then
            cat "$initlog" >&2
            rm -f "$initlog"
            die "initdb failed for $DATADIR"
        fi
        rm -f "$initlog"
    fi

    mkdir -p "$SOCKDIR"
    write_config
    if [[ $as_root -eq 1 ]]; then
        # Everything in DATADIR belongs to postgres (the log, the socket folder, our config).
        find "$DATADIR" ! -user postgres -exec chown postgres:postgres {} +
    fi

    say "starting PostgreSQL on 127.0.0.1:$port (data $DATADIR, log $LOGFILE)"
    if ! as_pg "$PG_BIN/pg_ctl" start -w -t 60 -D "$DATADIR" -l "$LOGFILE" >/dev/null; then
        printf '%s: last lines of %s:\n' "$prog" "$LOGFILE" >&2
        tail -n 20 "$LOGFILE" >&2 2>/dev/null || true
        die "PostgreSQL did not start (is port $port already in use?)"
    fi
    ensure_role_and_db
    say "ready; conninfo: $(conninfo "$port")"
}

do_stop() {
    local rc=0
    pg_status || rc=$?
    case $rc in
        0)
            say "stopping PostgreSQL ($DATADIR)"
            as_pg "$PG_BIN/pg_ctl" stop -D "$DATADIR" -m fast -w -t 60 >/dev/null \
                || die "pg_ctl stop failed for $DATADIR (see $LOGFILE)"
            say "stopped"
            ;;
        3) say "not running ($DATADIR)" ;;
        *) say "no PostgreSQL data in $DATADIR; nothing to stop" ;;
    esac
}

do_status() {
    local rc=0
    pg_status || rc=$?
    case $rc in
        0)
            local rport
            rport="$(running_port)"
            say "running ($DATADIR, port ${rport:-?}); conninfo: $(conninfo "${rport:-?}")"
            return 0
            ;;
        3)
            say "not running ($DATADIR)"
            return 3
            ;;
        *)
            say "no PostgreSQL data in $DATADIR"
            return 3
            ;;
    esac
}

# For fault tests: PostgreSQL ends every session at once, without a checkpoint.
do_crash() {
    local rc=0
    pg_status || rc=$?
    [[ $rc -eq 0 ]] || die "PostgreSQL is not running in $DATADIR"
    say "crashing PostgreSQL ($DATADIR): immediate shutdown"
    as_pg "$PG_BIN/pg_ctl" stop -D "$DATADIR" -m immediate -w -t 60 >/dev/null \
        || die "pg_ctl stop -m immediate failed for $DATADIR (see $LOGFILE)"
}

do_restart() {
    local rc=0
    pg_status || rc=$?
    [[ $rc -eq 0 ]] || die "PostgreSQL is not running in $DATADIR"
    say "restarting PostgreSQL ($DATADIR): immediate shutdown, then start"
    as_pg "$PG_BIN/pg_ctl" restart -D "$DATADIR" -m immediate -w -t 60 -l "$LOGFILE" >/dev/null \
        || die "pg_ctl restart -m immediate failed for $DATADIR (see $LOGFILE)"
    say "ready again"
}

case "$cmd" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    crash) do_crash ;;
    restart) do_restart ;;
esac
