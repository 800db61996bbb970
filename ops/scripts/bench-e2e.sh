#!/usr/bin/env bash
# The end-to-end benchmark behind docs/benchmarks.md: a throwaway PostgreSQL (fsync and synchronous_commit
# on), then the bus, ledger, payment-router, notifier, pos-gateway and phone-gateway from the release
# build as plain processes, and `paybench e2e` driving complete payments through the public HTTP APIs
# (terminal creates, phone verifies and instructs, both notices arrive):
#   (1) flat out with CONCURRENCY payers, (2) a fixed RATE per second (open loop),
# (optionally EXTRA_RATE first), each followed by the CPU seconds every process used (from /proc/<pid>/stat), then `payctl reconcile`.
#
# Usage: ops/scripts/bench-e2e.sh [DURATION_SECONDS] [--curve on|off]
# Env:   CURVE=on|off (default off; on = CurveZMQ on every bus socket, keys made in a temp folder)
#        WARMUP (s, default 3), CONCURRENCY (default 32), RATE (default 1000; 0 skips that run),
#        MERCHANTS (8), TERMINALS per merchant (4), WALLETS (64),
#        ROUTERS, LEDGERS, NOTIFIERS (instances of each, default 1),
#        EXTRA_RATE (a third run at this rate, e.g. one the system sustains), KEEP_LOGS=1,
#        PGSS=1 (load pg_stat_statements and print the statements that cost PostgreSQL most, per run),
#        BIN_DIR (run the executables of another build instead of building this checkout in release).
# Each run also prints the router's batch sizes and the services' CPU per complete payment against the
# Ed25519 floor (paybench crypto-floor, measured at the start).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
cd "$REPO_ROOT"
DURATION=15
CURVE="${CURVE:-off}"
while (($# > 0)); do
    case "$1" in
        --curve) CURVE="${2:-}"; shift 2 ;;
        --curve=*) CURVE="${1#--curve=}"; shift ;;
        [0-9]*) DURATION="$1"; shift ;;
        *) echo "usage: $0 [DURATION_SECONDS] [--curve on|off]" >&2; exit 2 ;;
    esac
done
[[ "$CURVE" == on || "$CURVE" == off ]] || { echo "CURVE must be on or off, not '$CURVE'" >&2; exit 2; }
[[ "$DURATION" =~ ^[0-9]+$ ]] || { echo "DURATION must be whole seconds" >&2; exit 2; }
WARMUP="${WARMUP:-3}"
CONCURRENCY="${CONCURRENCY:-32}"
RATE="${RATE:-1000}"
MERCHANTS="${MERCHANTS:-8}"
TERMINALS="${TERMINALS:-4}"
WALLETS="${WALLETS:-64}"
ROUTERS="${ROUTERS:-1}"
LEDGERS="${LEDGERS:-1}"
NOTIFIERS="${NOTIFIERS:-1}"
say() { printf '\n== %s\n' "$*"; }

ops/scripts/deps.sh
if [[ -n "${BIN_DIR:-}" ]]; then
    # Another build's executables (an A/B against an earlier commit, say), with this checkout's script.
    BIN="$BIN_DIR"
    [[ -x "$BIN/payment-router" ]] || { echo "BIN_DIR=$BIN holds no payment-router" >&2; exit 2; }
else
    swift build -c release >/dev/null
    BIN="$(swift build -c release --show-bin-path)"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/wipay-bench-e2e.XXXXXX")"
[[ $(id -u) -eq 0 ]] && chown postgres:postgres "$work"
chmod 755 "$work"
pids=()
bus_pid=""
cleanup() {
    set +e
    # The services first, the bus last; each by its own pid.
    for pid in "${pids[@]}"; do [[ "$pid" != "$bus_pid" ]] && kill "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do [[ "$pid" != "$bus_pid" ]] && wait "$pid" 2>/dev/null; done
    [[ -n "$bus_pid" ]] && { kill "$bus_pid" 2>/dev/null; wait "$bus_pid" 2>/dev/null; }
    ops/scripts/pg.sh stop "$work/pg" >/dev/null 2>&1
    if [[ "${KEEP_LOGS:-0}" == 1 ]]; then echo "logs kept in $work"; else rm -rf -- "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
PGPORT="$(free_port)"
# Four consecutive free ports for the bus.
BUSPORT="$(python3 -c '
import random, socket
for _ in range(200):
    base = random.randint(20000, 50000)
    try:
        socks = []
        for p in range(base, base + 4):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
        for s in socks: s.close()
        print(base); break
    except OSError:
        for s in socks: s.close()
')"
POSPORT="$(free_port)"
PHONEPORT="$(free_port)"
ops/scripts/pg.sh start "$work/pg" "$PGPORT" >/dev/null
if [[ "${PGSS:-0}" == 1 ]]; then
    psql -X -q -h 127.0.0.1 -p "$PGPORT" -U wipay -d wipay -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
    ops/scripts/pg.sh stop "$work/pg" >/dev/null
    ops/scripts/pg.sh start "$work/pg" "$PGPORT" >/dev/null
    psql -X -q -h 127.0.0.1 -p "$PGPORT" -U wipay -d wipay -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"
fi
export WIPAY_DATABASE_URL="host=127.0.0.1 port=$PGPORT dbname=wipay user=wipay"
export WIPAY_BUS_HOST=127.0.0.1 WIPAY_BUS_PORT="$BUSPORT" WIPAY_LOG_LEVEL=warning WIPAY_LOG_FORMAT=text
export WIPAY_PIN_SECRET="bench-secret-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
export WIPAY_HTTP_PORT=0
# paybench is one client address driving a few terminals and devices flat out: the gateways' rate limits off.
export WIPAY_RATE_TERMINAL=off WIPAY_RATE_DEVICE=off WIPAY_RATE_ADDRESS=off
(umask 077 && "$BIN/payctl" keys payload "$work/payload-key" >/dev/null)
if [[ "$CURVE" == on ]]; then
    (umask 077 && mkdir -p "$work/curve" && "$BIN/paybench" curve-keys "$work/curve" >/dev/null)
    export WIPAY_CURVE_KEYS_DIR="$work/curve"
else
    unset WIPAY_CURVE_KEYS_DIR
fi
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U wipay -d wipay)

declare -A PID_OF=()
names=()
start() { # name executable [VAR=value...]
    local name="$1" exe="$2"; shift 2
    env WIPAY_INSTANCE="$name" "$@" "$BIN/$exe" >"$work/$name.log" 2>&1 </dev/null &
    pids+=($!)
    PID_OF[$name]=$!
    names+=("$name")
}
start bus bus
bus_pid="${PID_OF[bus]}"
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$BUSPORT") 2>/dev/null && break; sleep 0.1; done
for i in $(seq 1 "$LEDGERS"); do start "ledger-$i" ledger; done
ROUTER_METRICS="$(free_port)"
for i in $(seq 1 "$ROUTERS"); do
    port=0
    ((i == 1)) && port="$ROUTER_METRICS"
    start "payment-router-$i" payment-router WIPAY_PAYLOAD_KEY_FILE="$work/payload-key" WIPAY_HTTP_PORT="$port"
done
for i in $(seq 1 "$NOTIFIERS"); do start "notifier-$i" notifier; done
start pos-gateway pos-gateway WIPAY_HTTP_PORT="$POSPORT"
start phone-gateway phone-gateway WIPAY_HTTP_PORT="$PHONEPORT"

for url in "http://127.0.0.1:$POSPORT/healthz" "http://127.0.0.1:$PHONEPORT/healthz"; do
    ok=0
    for _ in $(seq 1 100); do
        if curl -fs -o /dev/null "$url"; then ok=1; break; fi
        sleep 0.2
    done
    if ((ok == 0)); then
        echo "not healthy: $url" >&2
        for n in "${names[@]}"; do echo "--- $n"; tail -n 15 "$work/$n.log"; done >&2
        exit 1
    fi
done
for n in "${names[@]}"; do
    kill -0 "${PID_OF[$n]}" 2>/dev/null || { echo "$n exited:" >&2; tail -n 30 "$work/$n.log" >&2; exit 1; }
done

say "machine"
echo "$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(uname -sr); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
"${PSQL[@]}" -At -c "SELECT version()" | cut -d, -f1
"${PSQL[@]}" -At -c "SELECT 'fsync=' || current_setting('fsync') || ' synchronous_commit=' || current_setting('synchronous_commit')"
floor_json="$("$BIN/paybench" crypto-floor --json)"
FLOOR_US="$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["floor_us"])' "$floor_json")"
python3 -c 'import json, sys; f = json.loads(sys.argv[1]); print("Ed25519: sign %s µs, verify %s µs; floor per payment (one of each) %s µs" % (f["sign_us"], f["verify_us"], f["floor_us"]))' "$floor_json"
echo "CURVE $CURVE; instances: ledger $LEDGERS, payment-router $ROUTERS, notifier $NOTIFIERS, one of each gateway"

# CPU seconds used so far (user + system, from /proc) by a process, or by PostgreSQL's whole tree.
cpu_of() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
cpu_postgres() {
    local pm total=0 c
    pm="$(head -n 1 "$work/pg/postmaster.pid")"
    for pid in "$pm" $(pgrep -P "$pm"); do c="$(cpu_of "$pid")"; total="$(echo "$total + $c" | bc)"; done
    echo "$total"
}

outbox_pending() {
    curl -fs "http://127.0.0.1:$ROUTER_METRICS/metrics" 2>/dev/null \
        | awk '/^wipay_router_outbox_pending[ {]/ { v = $NF } END { printf "%d", v + 0 }'
}

# Every service's CPU seconds and PostgreSQL's, summed (paybench not included).
cpu_services() {
    local n sum=0
    for n in "${names[@]}"; do sum="$(echo "$sum + $(cpu_of "${PID_OF[$n]}")" | bc)"; done
    echo "$sum + $(cpu_postgres)" | bc
}

label_n=0
run() { # title, paybench args...
    local title="$1"; shift
    say "$title"
    label_n=$((label_n + 1))
    declare -A before=()
    local n pg0 start bench t=0 rc=0
    for n in "${names[@]}"; do before[$n]="$(cpu_of "${PID_OF[$n]}")"; done
    [[ "${PGSS:-0}" == 1 ]] && "${PSQL[@]}" -At -c "SELECT pg_stat_statements_reset()" >/dev/null
    # "kind sum count ..." of the router's batch sizes before the run.
    router_batches="$(curl -fs "http://127.0.0.1:$ROUTER_METRICS/metrics" 2>/dev/null | awk '
        /^wipay_router_batch_size_(sum|count)[ {]/ {
            kind = $0; sub(/.*kind="/, "", kind); sub(/".*/, "", kind)
            if ($1 ~ /_sum/) s[kind] = $NF; else c[kind] = $NF
        }
        END { for (k in c) printf "%s %s %s ", k, s[k] + 0, c[k] }' || true)"
    pg0="$(cpu_postgres)"
    start="$(date +%s.%N)"
    local window="$work/window-$label_n" out="$work/paybench-$label_n.out" m0="" m1=""
    "$BIN/paybench" e2e --pos-url "http://127.0.0.1:$POSPORT" --phone-url "http://127.0.0.1:$PHONEPORT" \
        --merchants "$MERCHANTS" --terminals "$TERMINALS" --wallets "$WALLETS" \
        --duration "$DURATION" --warmup "$WARMUP" --label "b$$-$label_n" --window-file "$window" "$@" > >(tee "$out") &
    bench=$!
    # The router's outbox backlog (rows committed, not yet handed to the notifier), sampled every ~second.
    local pending max_pending=0 tick=0
    while kill -0 "$bench" 2>/dev/null; do
        t="$(cpu_of "$bench")"
        # The services' CPU (PostgreSQL included) over exactly the measured window (sampled every 0.2 s).
        if [[ -z "$m0" ]] && grep -qs '^measure' "$window"; then m0="$(cpu_services)"; fi
        if [[ -z "$m1" ]] && grep -qs '^end' "$window"; then m1="$(cpu_services)"; fi
        if ((tick++ % 5 == 0)); then
            pending="$(outbox_pending)"
            ((pending > max_pending)) && max_pending="$pending"
        fi
        sleep 0.2
    done
    wait "$bench" || rc=$?
    local wall; wall="$(echo "$(date +%s.%N) - $start" | bc)"
    ((rc == 0)) || echo "paybench exited with status $rc (2 = payments lost)"
    printf 'CPU seconds over %.1f s wall (setup included; cores busy = seconds / wall):\n' "$wall"
    for n in "${names[@]}"; do
        printf '  %-18s %7.2f s  %5.2f cores\n' "$n" "$(echo "$(cpu_of "${PID_OF[$n]}") - ${before[$n]}" | bc)" \
            "$(echo "($(cpu_of "${PID_OF[$n]}") - ${before[$n]}) / $wall" | bc -l)"
    done
    printf '  %-18s %7.2f s  %5.2f cores\n' postgres "$(echo "$(cpu_postgres) - $pg0" | bc)" "$(echo "($(cpu_postgres) - $pg0) / $wall" | bc -l)"
    printf '  %-18s %7.2f s  %5.2f cores\n' paybench "$t" "$(echo "$t / $wall" | bc -l)"
    echo "router outbox backlog: at most $max_pending rows during the run, $(outbox_pending) after it"
    # The router's batch sizes over this run (from its /metrics: sum and count of each kind since start).
    local metrics_now
    metrics_now="$(curl -fs "http://127.0.0.1:$ROUTER_METRICS/metrics" 2>/dev/null || true)"
    printf '%s\n' "$metrics_now" | awk -v before="$router_batches" '
        BEGIN { n = split(before, b, " "); for (i = 1; i + 2 <= n; i += 3) { s0[b[i]] = b[i + 1]; c0[b[i]] = b[i + 2] } }
        /^wipay_router_batch_size_(sum|count)[ {]/ {
            kind = $0; sub(/.*kind="/, "", kind); sub(/".*/, "", kind)
            if ($1 ~ /_sum/) s[kind] = $NF; else c[kind] = $NF
        }
        END { for (k in c) { dc = c[k] - c0[k]; if (dc > 0) printf "router batches (%s): %d, mean size %.2f\n", k, dc, (s[k] - s0[k]) / dc } }'
    local complete
    complete="$(grep -o '[0-9]* complete in' "$out" | head -1 | cut -d' ' -f1)"
    if [[ -n "$m0" && -n "$m1" && -n "$complete" ]] && ((complete > 0)); then
        local per; per="$(echo "($m1 - $m0) * 1000000 / $complete" | bc)"
        printf 'services CPU per complete payment (measured window, PostgreSQL included, paybench excluded): %s µs = %.1f× the Ed25519 floor (%s µs)\n' \
            "$per" "$(echo "$per / $FLOOR_US" | bc -l)" "$FLOOR_US"
    fi
    if [[ "${PGSS:-0}" == 1 ]]; then
        echo "PostgreSQL's costliest statements (pg_stat_statements: calls, total and mean execution ms, rows):"
        "${PSQL[@]}" -At -F ' | ' -c "SELECT calls, round(total_exec_time::numeric, 1), round(mean_exec_time::numeric, 3), rows,
            left(regexp_replace(query, '\s+', ' ', 'g'), 110) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 14"
    fi
}

# Each run starts once the router has handed every earlier outcome to the notifier.
drain() {
    local i
    for i in $(seq 1 600); do
        (( $(outbox_pending) == 0 )) && return 0
        ((i == 1)) && echo "waiting for the router's outbox backlog ($(outbox_pending) rows) to drain"
        sleep 0.5
    done
    echo "the outbox backlog did not drain in 300 s: $(outbox_pending) rows"
}

run "paybench e2e flat out, $CONCURRENCY payers, ${DURATION}s (+${WARMUP}s warm-up), CURVE $CURVE" --concurrency "$CONCURRENCY"
if [[ -n "${EXTRA_RATE:-}" ]]; then
    drain
    run "paybench e2e at $EXTRA_RATE/s, ${DURATION}s (+${WARMUP}s warm-up), CURVE $CURVE" --rate "$EXTRA_RATE"
fi
if ((RATE > 0)); then
    drain
    run "paybench e2e at $RATE/s, ${DURATION}s (+${WARMUP}s warm-up), CURVE $CURVE" --rate "$RATE"
    drain
fi

say "reconcile"
"$BIN/payctl" reconcile || { echo "payctl reconcile failed (status $?)"; exit 1; }
