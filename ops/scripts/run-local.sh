#!/usr/bin/env bash
# What `make run` runs: the whole WiPay network on this machine, supervised in the foreground.
#
#   ops/scripts/run-local.sh
#   WIPAY_SCALE=payment-router=2,ledger=2 ops/scripts/run-local.sh
#
# Steps: ops/scripts/deps.sh; swift build -c release (every product: the services, payctl and the
# reference clients pos-terminal and phone-wallet); the secrets in var/secrets (the ledger's PIN secret,
# the router's payload signing key, both created on first start); a private PostgreSQL in var/pg;
# the bus (broker) first, then every other service, each instance with its own log in
# var/log/<service>-<n>.log. An instance that exits is restarted (1 s, backing off up to
# 10 s while it keeps dying fast). Ctrl-C / SIGTERM stops everything: SIGTERM to every
# instance (the bus last), SIGKILL after 15 s, then PostgreSQL.
#
# Environment:
#   WIPAY_SCALE        service=count[,service=count...]; services: ledger, payment-router,
#                      notifier, pos-gateway, phone-gateway (0..10 each; default 1), bus (1 only)
#   WIPAY_BIN_DIR      use the executables in this folder and skip `swift build`
#   WIPAY_PG_PORT      PostgreSQL port (default 55432)
#   WIPAY_PG_DIR       PostgreSQL data folder (default var/pg)
#   WIPAY_BUS_PORT     bus base port (default 5550; the bus uses base..base+3)
#   WIPAY_BUS_HOST     where services find the bus (default 127.0.0.1)
#   WIPAY_POS_PORT     first pos-gateway HTTP port (default 8080; instance n gets 8080+n-1)
#   WIPAY_PHONE_PORT   first phone-gateway HTTP port (default 8090)
#   WIPAY_LOG_LEVEL    passed to the services (default info)
#   WIPAY_LOG_FORMAT   passed to the services (default text)
#   WIPAY_CURVE        on (default): CurveZMQ on every bus socket, keys made on first start in
#                      var/secrets/curve (give payctl WIPAY_CURVE_KEYS_DIR=var/secrets/curve);
#                      off: plain TCP on loopback
#   WIPAY_TLS_CERT_FILE, WIPAY_TLS_KEY_FILE
#                      PEM files: the gateways also serve HTTPS (the wallet page on a real phone,
#                      docs/pages.md), on WIPAY_POS_HTTPS_PORT (default 8443) and
#                      WIPAY_PHONE_HTTPS_PORT (default 8453), instance n on the port + n-1
set -euo pipefail

prog="run-local"
ts() { printf '%(%H:%M:%S)T' -1; }
say() { printf '%s %s: %s\n' "$(ts)" "$prog" "$*"; }
warn() { printf '%s %s: warning: %s\n' "$(ts)" "$prog" "$*" >&2; }
die() { printf '%s %s: error: %s\n' "$(ts)" "$prog" "$*" >&2; exit 1; }

((BASH_VERSINFO[0] >= 5)) || die "bash 5 or newer is needed (this is bash $BASH_VERSION)"

# Resolve WIPAY_BIN_DIR (and the TLS files) against the caller's folder before moving to the repo root.
TLS_CERT="${WIPAY_TLS_CERT_FILE:-}"
TLS_KEY="${WIPAY_TLS_KEY_FILE:-}"
if [[ -n "$TLS_CERT" || -n "$TLS_KEY" ]]; then
    [[ -f "$TLS_CERT" && -f "$TLS_KEY" ]] || die "HTTPS needs both WIPAY_TLS_CERT_FILE and WIPAY_TLS_KEY_FILE (readable PEM files)"
    TLS_CERT="$(cd "$(dirname "$TLS_CERT")" && pwd -P)/$(basename "$TLS_CERT")"
    TLS_KEY="$(cd "$(dirname "$TLS_KEY")" && pwd -P)/$(basename "$TLS_KEY")"
fi
bin_dir_arg="${WIPAY_BIN_DIR:-}"
if [[ -n "$bin_dir_arg" ]]; then
    [[ -d "$bin_dir_arg" ]] || die "WIPAY_BIN_DIR=$bin_dir_arg is not a folder"
    bin_dir_arg="$(cd "$bin_dir_arg" && pwd -P)"
fi
pg_dir_arg="${WIPAY_PG_DIR:-}"
if [[ -n "$pg_dir_arg" && "$pg_dir_arg" != /* ]]; then
    pg_dir_arg="$PWD/$pg_dir_arg"
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
cd "$REPO_ROOT"
rel() { case "$1" in "$REPO_ROOT"/*) printf '%s\n' "${1#"$REPO_ROOT"/}" ;; *) printf '%s\n' "$1" ;; esac; }

PG_SH=(bash "$REPO_ROOT/ops/scripts/pg.sh")
VAR_DIR="$REPO_ROOT/var"
LOG_DIR="$VAR_DIR/log"
SECRETS_DIR="$VAR_DIR/secrets"
PIN_SECRET_FILE="$SECRETS_DIR/pin-secret"
PAYLOAD_KEY_FILE="$SECRETS_DIR/payload-key"
CURVE_DIR="$SECRETS_DIR/curve"
CURVE="${WIPAY_CURVE:-on}"
[[ "$CURVE" == on || "$CURVE" == off ]] || die "WIPAY_CURVE must be on or off, got '$CURVE'"
PG_DIR="${pg_dir_arg:-$VAR_DIR/pg}"
LOCK_FILE="$VAR_DIR/run-local.pid"

is_port() { [[ "$1" =~ ^[0-9]+$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }

PG_PORT="${WIPAY_PG_PORT:-55432}"
BUS_PORT="${WIPAY_BUS_PORT:-5550}"
BUS_HOST="${WIPAY_BUS_HOST:-127.0.0.1}"
POS_PORT="${WIPAY_POS_PORT:-8080}"
PHONE_PORT="${WIPAY_PHONE_PORT:-8090}"
POS_HTTPS_PORT="${WIPAY_POS_HTTPS_PORT:-8443}"
PHONE_HTTPS_PORT="${WIPAY_PHONE_HTTPS_PORT:-8453}"
LOG_LEVEL="${WIPAY_LOG_LEVEL:-info}"
LOG_FORMAT="${WIPAY_LOG_FORMAT:-text}"
for var in PG_PORT BUS_PORT POS_PORT PHONE_PORT POS_HTTPS_PORT PHONE_HTTPS_PORT; do
    is_port "${!var}" || die "WIPAY_$var must be a TCP port number (1-65535), got '${!var}'"
    printf -v "$var" '%d' $((10#${!var}))
done
((BUS_PORT <= 65532)) || die "WIPAY_BUS_PORT must leave room for base+3, got $BUS_PORT"
DATABASE_URL="host=127.0.0.1 port=$PG_PORT dbname=wipay user=wipay"

# --- WIPAY_SCALE ---------------------------------------------------------------------------------
SERVICES=(bus ledger payment-router notifier pos-gateway phone-gateway)
declare -A SCALE=([bus]=1 [ledger]=1 [payment-router]=1 [notifier]=1 [pos-gateway]=1 [phone-gateway]=1)
MAX_SCALE=10

if [[ -n "${WIPAY_SCALE:-}" ]]; then
    declare -A seen=()
    IFS=',' read -r -a scale_items <<<"${WIPAY_SCALE//[[:space:]]/}"
    for item in "${scale_items[@]}"; do
        [[ -n "$item" ]] || continue
        [[ "$item" =~ ^([a-z-]+)=([0-9]+)$ ]] \
            || die "WIPAY_SCALE: '$item' is not service=count (example: WIPAY_SCALE=payment-router=2,ledger=2)"
        name="${BASH_REMATCH[1]}"
        count=$((10#${BASH_REMATCH[2]}))
        [[ -v "SCALE[$name]" ]] \
            || die "WIPAY_SCALE: unknown service '$name' (known: ${SERVICES[*]})"
        [[ -z "${seen[$name]:-}" ]] || die "WIPAY_SCALE: '$name' is given twice"
        seen[$name]=1
        if [[ "$name" == bus ]]; then
            ((count == 1)) || die "WIPAY_SCALE: the bus is a single broker on fixed ports; bus=1 only (got bus=$count)"
        fi
        ((count <= MAX_SCALE)) || die "WIPAY_SCALE: $name=$count is more than $MAX_SCALE"
        SCALE[$name]=$count
    done
fi

# Gateway ports: pos-gateway-n listens on POS_PORT+n-1, phone-gateway-n on PHONE_PORT+n-1.
http_port_of() { # service index
    case "$1" in
        pos-gateway) printf '%s\n' $((POS_PORT + $2 - 1)) ;;
        phone-gateway) printf '%s\n' $((PHONE_PORT + $2 - 1)) ;;
        *) printf '0\n' ;;
    esac
}

# Every fixed port we are going to use, and what for; they must be distinct.
declare -A PLANNED_PORTS=()
plan_port() {
    local p="$1" what="$2"
    is_port "$p" || die "$what would use port $p, which is not a valid port"
    if [[ -n "${PLANNED_PORTS[$p]:-}" ]]; then
        die "port $p would be used by both ${PLANNED_PORTS[$p]} and $what; change WIPAY_SCALE, WIPAY_POS_PORT, WIPAY_PHONE_PORT or WIPAY_BUS_PORT"
    fi
    PLANNED_PORTS[$p]="$what"
}
for ((i = 0; i < 4; i++)); do plan_port $((BUS_PORT + i)) "the bus"; done
for svc in pos-gateway phone-gateway; do
    for ((n = 1; n <= SCALE[$svc]; n++)); do plan_port "$(http_port_of "$svc" "$n")" "$svc-$n"; done
done
[[ -z "${PLANNED_PORTS[$PG_PORT]:-}" ]] \
    || die "WIPAY_PG_PORT=$PG_PORT collides with ${PLANNED_PORTS[$PG_PORT]}"

port_in_use() {
    if command -v ss >/dev/null 2>&1; then
        [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# --- state, and cleanup on any exit ---------------------------------------------------------------------
declare -a KEYS=()         # instance keys in start order: bus-1 ledger-1 ...
declare -A SVC_OF=()       # key -> service
declare -A PID=()          # key -> pid while running, "" otherwise
declare -A STARTED_MS=()   # key -> when it was last started
declare -A DELAY_S=()      # key -> last restart delay after a fast death (0: none)
declare -A RESTART_AT_MS=() # key -> when to start it again (after it died)
pg_started=0
build_pid=""
stopping=0
force_kill=0
BIN_DIR=""

now_ms() {
    local t="${EPOCHREALTIME//[!0-9]/}"
    printf '%s\n' $((10#$t / 1000))
}

alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

# Waits until none of the given pids is alive, or the deadline (ms) passes; returns 1 on timeout.
wait_gone() {
    local deadline="$1"
    shift
    local p any
    while :; do
        any=0
        for p in "$@"; do
            if alive "$p"; then any=1; break; fi
        done
        ((any == 0)) && return 0
        (($(now_ms) >= deadline)) && return 1
        ((force_kill == 1)) && return 1
        sleep 0.2
    done
}

stop_instances() {
    local key p grace_end others=() buses=()
    for key in "${KEYS[@]}"; do
        p="${PID[$key]:-}"
        alive "$p" || continue
        if [[ "${SVC_OF[$key]}" == bus ]]; then buses+=("$p"); else others+=("$p"); fi
    done
    ((${#others[@]} + ${#buses[@]} > 0)) || return 0
    say "stopping $((${#others[@]} + ${#buses[@]})) instance(s): SIGTERM (SIGKILL after 15 s; Ctrl-C again to kill now)"
    grace_end=$(($(now_ms) + 15000))
    # The services first, so they can still talk to the bus while they shut down; the bus last.
    if ((${#others[@]} > 0)); then
        kill -TERM "${others[@]}" 2>/dev/null || true
        wait_gone $((grace_end - 3000)) "${others[@]}" || true
    fi
    if ((${#buses[@]} > 0)); then
        kill -TERM "${buses[@]}" 2>/dev/null || true
    fi
    if ! wait_gone "$grace_end" "${others[@]}" "${buses[@]}"; then
        for key in "${KEYS[@]}"; do
            p="${PID[$key]:-}"
            if alive "$p"; then
                warn "$key (pid $p) did not stop in time; SIGKILL"
                kill -KILL "$p" 2>/dev/null || true
            fi
        done
    fi
    for key in "${KEYS[@]}"; do
        p="${PID[$key]:-}"
        [[ -n "$p" ]] && { wait "$p" 2>/dev/null || true; }
        PID[$key]=""
    done
}

cleanup() {
    local rc=$?
    set +e
    stopping=1
    # A second Ctrl-C while stopping skips the rest of the grace period.
    trap 'force_kill=1' INT TERM
    if [[ -n "$build_pid" ]] && kill -0 "$build_pid" 2>/dev/null; then
        kill -TERM "$build_pid" 2>/dev/null
        wait "$build_pid" 2>/dev/null
    fi
    stop_instances
    if ((pg_started == 1)); then
        "${PG_SH[@]}" stop "$PG_DIR" || warn "could not stop PostgreSQL in $(rel "$PG_DIR")"
    fi
    if [[ "$(cat "$LOCK_FILE" 2>/dev/null)" == "$$" ]]; then rm -f "$LOCK_FILE"; fi
    if ((pg_started == 1 || ${#KEYS[@]} > 0 || rc == 130 || rc == 143)); then say "stopped"; fi
    # Stopped on request: that is a clean exit.
    if ((rc == 130 || rc == 143)); then rc=0; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- only one supervisor per checkout ----------------------------------------------------------------
mkdir -p "$VAR_DIR" "$LOG_DIR"
if [[ -f "$LOCK_FILE" ]]; then
    other="$(cat "$LOCK_FILE" 2>/dev/null || true)"
    if [[ "$other" =~ ^[0-9]+$ ]] && kill -0 "$other" 2>/dev/null \
        && tr '\0' ' ' <"/proc/$other/cmdline" 2>/dev/null | grep -q run-local; then
        die "run-local is already running here (pid $other); stop it first (Ctrl-C in its terminal, or kill $other)"
    fi
fi
echo $$ >"$LOCK_FILE"

# --- dependencies and executables ----------------------------------------------------------------------
bash "$REPO_ROOT/ops/scripts/deps.sh"

if [[ -n "$bin_dir_arg" ]]; then
    BIN_DIR="$bin_dir_arg"
    say "using executables in $(rel "$BIN_DIR") (WIPAY_BIN_DIR; not building)"
else
    say "swift build -c release"
    # In the background and waited for, so that a SIGTERM to this script is handled at once.
    swift build -c release &
    build_pid=$!
    build_rc=0
    wait "$build_pid" || build_rc=$?
    build_pid=""
    ((build_rc == 0)) || die "swift build -c release failed (status $build_rc)"
    BIN_DIR="$(swift build -c release --show-bin-path)" || die "swift build --show-bin-path failed"
fi
for svc in "${SERVICES[@]}"; do
    ((SCALE[$svc] > 0)) || continue
    [[ -x "$BIN_DIR/$svc" ]] || die "executable $(rel "$BIN_DIR")/$svc not found"
done
PAYCTL="$BIN_DIR/payctl"
[[ -x "$PAYCTL" ]] || die "$(rel "$PAYCTL") not found (the ops tool; it also creates the payload signing key)"
for client in pos-terminal phone-wallet; do
    [[ -x "$BIN_DIR/$client" ]] || warn "$(rel "$BIN_DIR")/$client not found (a reference client)"
done

# --- secrets ------------------------------------------------------------------------------------------------
mkdir -p "$SECRETS_DIR"
chmod 700 "$SECRETS_DIR"
if [[ ! -s "$PIN_SECRET_FILE" ]]; then
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$PIN_SECRET_FILE") \
        || die "cannot write $(rel "$PIN_SECRET_FILE")"
    say "generated the PIN secret in $(rel "$PIN_SECRET_FILE")"
fi
chmod 600 "$PIN_SECRET_FILE"
[[ "$(tr -d '\n' <"$PIN_SECRET_FILE")" =~ ^[0-9a-f]{64}$ ]] \
    || die "$(rel "$PIN_SECRET_FILE") does not hold 64 hex characters; delete it to have a new one generated"
# The payment-router signs payment payloads with this Ed25519 key; phones verify them with its public key.
# payctl creates it (mode 600) when missing and otherwise only reads it.
payload_key_existed=0
[[ -s "$PAYLOAD_KEY_FILE" ]] && payload_key_existed=1
(umask 077 && "$PAYCTL" keys payload "$PAYLOAD_KEY_FILE" --json >/dev/null) \
    || die "cannot create or read the payload signing key $(rel "$PAYLOAD_KEY_FILE"); delete it to have a new one generated"
chmod 600 "$PAYLOAD_KEY_FILE"
((payload_key_existed == 1)) || say "generated the payload signing key in $(rel "$PAYLOAD_KEY_FILE")"
# CurveZMQ: one key pair per service plus ops (payctl); authorized/ holds what the bus admits.
if [[ "$CURVE" == on ]]; then
    curve_created="$("$PAYCTL" keys generate --dir "$CURVE_DIR" --json)" \
        || die "cannot create or read the CURVE keys in $(rel "$CURVE_DIR")"
    [[ "$curve_created" == *'"created":[]'* ]] || say "generated CURVE keys in $(rel "$CURVE_DIR")"
fi

# --- ports must be free -------------------------------------------------------------------------------------
busy=()
for p in "${!PLANNED_PORTS[@]}"; do
    port_in_use "$p" && busy+=("$p (${PLANNED_PORTS[$p]})")
done
if ((${#busy[@]} > 0)); then
    die "port(s) already in use: ${busy[*]}. Is another WiPay running? Stop it, or move ports with WIPAY_BUS_PORT, WIPAY_POS_PORT, WIPAY_PHONE_PORT"
fi

# --- PostgreSQL -------------------------------------------------------------------------------------------------
pg_started=1
"${PG_SH[@]}" start "$PG_DIR" "$PG_PORT" || die "PostgreSQL did not start (data $(rel "$PG_DIR"), port $PG_PORT); see $(rel "$PG_DIR")/log"

# --- instances -------------------------------------------------------------------------------------------------
SETSID=()
if command -v setsid >/dev/null 2>&1; then SETSID=(setsid); fi
start_instance() {
    local key="$1" svc="${SVC_OF[$1]}" n="${1##*-}" log="$LOG_DIR/$1.log"
    local envs=(
        "WIPAY_INSTANCE=$key"
        "WIPAY_BUS_HOST=$BUS_HOST"
        "WIPAY_BUS_PORT=$BUS_PORT"
        "WIPAY_HTTP_PORT=$(http_port_of "$svc" "$n")"
        "WIPAY_LOG_LEVEL=$LOG_LEVEL"
        "WIPAY_LOG_FORMAT=$LOG_FORMAT"
    )
    [[ "$CURVE" == on ]] && envs+=("WIPAY_CURVE_KEYS_DIR=$CURVE_DIR")
    # HTTPS for the gateways only (and never inherited by the others from the caller's environment).
    local https=""
    if [[ -n "$TLS_CERT" ]]; then
        case "$svc" in
            pos-gateway) https=$((POS_HTTPS_PORT + n - 1)) ;;
            phone-gateway) https=$((PHONE_HTTPS_PORT + n - 1)) ;;
        esac
    fi
    envs+=("WIPAY_HTTPS_PORT=$https")
    [[ -n "$https" ]] && envs+=("WIPAY_TLS_CERT_FILE=$TLS_CERT" "WIPAY_TLS_KEY_FILE=$TLS_KEY")
    case "$svc" in
        ledger) envs+=("WIPAY_DATABASE_URL=$DATABASE_URL" "WIPAY_PIN_SECRET_FILE=$PIN_SECRET_FILE") ;;
        payment-router) envs+=("WIPAY_DATABASE_URL=$DATABASE_URL" "WIPAY_PAYLOAD_KEY_FILE=$PAYLOAD_KEY_FILE") ;;
        notifier) envs+=("WIPAY_DATABASE_URL=$DATABASE_URL") ;;
    esac
    printf '\n=== %s run-local: starting %s ===\n' "$(date '+%Y-%m-%dT%H:%M:%S%z')" "$key" >>"$log"
    # In a session of its own, so a Ctrl-C in the terminal reaches only this supervisor, which
    # then stops the instances in order. (setsid does not fork here: an asynchronous child of a
    # shell without job control is no process-group leader; so $! is the service's own pid.)
    env "${envs[@]}" "${SETSID[@]}" "$BIN_DIR/$svc" >>"$log" 2>&1 </dev/null &
    PID[$key]=$!
    STARTED_MS[$key]=$(now_ms)
    RESTART_AT_MS[$key]=""
}

for svc in "${SERVICES[@]}"; do
    for ((n = 1; n <= SCALE[$svc]; n++)); do
        KEYS+=("$svc-$n")
        SVC_OF[$svc-$n]="$svc"
        PID[$svc-$n]=""
        DELAY_S[$svc-$n]=0
    done
done

# The bus first, and wait until it listens on its four ports.
start_instance bus-1
say "started bus-1 (pid ${PID[bus-1]}); waiting for ports $BUS_PORT-$((BUS_PORT + 3))"
deadline=$(($(now_ms) + 30000))
while :; do
    open=0
    for ((i = 0; i < 4; i++)); do port_in_use $((BUS_PORT + i)) && open=$((open + 1)); done
    ((open == 4)) && break
    if ! alive "${PID[bus-1]}"; then
        tail -n 20 "$LOG_DIR/bus-1.log" >&2 || true
        die "the bus exited during startup; see $(rel "$LOG_DIR")/bus-1.log"
    fi
    if (($(now_ms) >= deadline)); then
        if port_in_use "$BUS_PORT"; then
            warn "the bus listens on $BUS_PORT but only $open of ports $BUS_PORT-$((BUS_PORT + 3)) are open after 30 s; going on"
            break
        fi
        tail -n 20 "$LOG_DIR/bus-1.log" >&2 || true
        die "the bus does not listen on port $BUS_PORT after 30 s; see $(rel "$LOG_DIR")/bus-1.log"
    fi
    sleep 0.2
done
say "bus is up"

for key in "${KEYS[@]}"; do
    [[ "$key" == bus-1 ]] && continue
    start_instance "$key"
    say "started $key (pid ${PID[$key]})"
done

# --- summary -------------------------------------------------------------------------------------------------------
payctl_cmd="$(rel "$PAYCTL")"
[[ "$payctl_cmd" == /* ]] || payctl_cmd="./$payctl_cmd"
if [[ "$BUS_PORT" != 5550 ]]; then payctl_cmd="WIPAY_BUS_PORT=$BUS_PORT $payctl_cmd"; fi
if [[ "$CURVE" == on ]]; then payctl_cmd="WIPAY_CURVE_KEYS_DIR=$(rel "$CURVE_DIR") $payctl_cmd"; fi
{
    echo
    echo "WiPay is running (supervisor pid $$). Ctrl-C stops everything."
    for svc in pos-gateway phone-gateway; do
        for ((n = 1; n <= SCALE[$svc]; n++)); do
            printf '  %-16s http://%s:%s\n' "$svc-$n" "${WIPAY_HTTP_HOST:-127.0.0.1}" "$(http_port_of "$svc" "$n")"
        done
    done
    printf '  %-16s %s:%s-%s\n' "bus" "${WIPAY_BUS_BIND_HOST:-127.0.0.1}" "$BUS_PORT" $((BUS_PORT + 3))
    for svc in ledger payment-router notifier; do
        ((SCALE[$svc] > 0)) && printf '  %-16s %s instance(s)\n' "$svc" "${SCALE[$svc]}"
    done
    printf '  %-16s %s\n' "database" "$DATABASE_URL"
    printf '  %-16s %s/<service>-<n>.log\n' "logs" "$(rel "$LOG_DIR")"
    printf '  %-16s %s\n' "PIN secret" "$(rel "$PIN_SECRET_FILE")"
    printf '  %-16s %s\n' "payload key" "$(rel "$PAYLOAD_KEY_FILE")"
    printf '  %-16s %s\n' "CURVE" "$CURVE$([[ "$CURVE" == on ]] && echo " (keys in $(rel "$CURVE_DIR"))")"
    printf '  %-16s %s\n' "binaries" "$(rel "$BIN_DIR") (payctl, pos-terminal, phone-wallet, ...)"
    echo
    echo "try: $payctl_cmd status"
    echo
} || true

# --- supervise ---------------------------------------------------------------------------------------------------------
while :; do
    now=$(now_ms)
    for key in "${KEYS[@]}"; do
        p="${PID[$key]}"
        if [[ -n "$p" ]]; then
            alive "$p" && continue
            rc=0
            wait "$p" 2>/dev/null || rc=$?
            PID[$key]=""
            ((stopping == 1)) && continue
            ran_ms=$((now - STARTED_MS[$key]))
            if ((ran_ms < 10000)); then
                # Died fast: 1 s, then 2, 4, 8, 10, 10... while it keeps dying fast.
                d=$((DELAY_S[$key] == 0 ? 1 : DELAY_S[$key] * 2))
                ((d > 10)) && d=10
                DELAY_S[$key]=$d
            else
                d=1
                DELAY_S[$key]=0
            fi
            RESTART_AT_MS[$key]=$((now + d * 1000))
            warn "$key (pid $p) exited with status $rc after $((ran_ms / 1000)) s; restarting in $d s (log: $(rel "$LOG_DIR")/$key.log)"
        elif [[ -n "${RESTART_AT_MS[$key]}" ]] && ((now >= RESTART_AT_MS[$key])); then
            start_instance "$key"
            say "restarted $key (pid ${PID[$key]})"
        fi
    done
    # Sleep in the background so that a signal interrupts `wait` at once.
    sleep 0.5 &
    wait $! || true
done
