#!/usr/bin/env bash
# The ledger benchmark behind docs/benchmarks.md: a throwaway PostgreSQL (fsync and synchronous_commit
# on), the bus and one ledger in release mode, accounts seeded in SQL, then in one run:
#   pgbench's built-in TPC-B-like load (the single-transaction reference),
#   paybench ledger: hot mix flat out, the same with callers that batch (BATCH_MSG transfers per
#   transfer.post.batch message, as the payment-router sends them, and as many in flight in all),
#   uniform mix flat out, hot mix at a steady 5,000/s,
#   the same again after growing the book to BIG_WALLETS accounts.
# Usage: ops/scripts/bench-ledger.sh [DURATION_SECONDS]     (env: WALLETS, BIG_WALLETS, MERCHANTS, CONCURRENCY, BATCH_MSG,
#                                                              KEEP_LOGS=DIR keeps the logs)
#        AB_LEDGER=/path/to/another/ledger ops/scripts/bench-ledger.sh [DURATION_SECONDS]
#            A/B in one run: after pgbench, this build's ledger (A) and that one (B, e.g. built from an earlier
#            commit in a git worktree) take turns on the same database — hot mix flat out, then at 5,000/s —
#            twice each, A B A B, so both see the same machine (plus the batching callers when BATCH_MSG > 1).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
cd "$REPO_ROOT"
DURATION="${1:-15}"
WALLETS="${WALLETS:-10000}"
BIG_WALLETS="${BIG_WALLETS:-1000000}"
MERCHANTS="${MERCHANTS:-1000}"
CONCURRENCY="${CONCURRENCY:-2048}"
BATCH_MSG="${BATCH_MSG:-32}"
BATCH_CALLERS=$(( CONCURRENCY / BATCH_MSG > 0 ? CONCURRENCY / BATCH_MSG : 1 ))
say() { printf '\n== %s\n' "$*"; }

ops/scripts/deps.sh
swift build -c release >/dev/null
BIN="$(swift build -c release --show-bin-path)"

work="$(mktemp -d "${TMPDIR:-/tmp}/wipay-bench.XXXXXX")"
[[ $(id -u) -eq 0 ]] && chown postgres:postgres "$work"
chmod 755 "$work"
pids=()
cleanup() {
    set +e
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
    ops/scripts/pg.sh stop "$work/pg" >/dev/null 2>&1
    if [[ -n "${KEEP_LOGS:-}" ]]; then mkdir -p "$KEEP_LOGS" && cp "$work"/*.log "$KEEP_LOGS"/; cp "$work"/pg/log "$KEEP_LOGS"/postgres.log 2>/dev/null; fi
    rm -rf -- "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
PGPORT="$(free_port)"
BUSPORT=$(( 20000 + RANDOM % 30000 ))
ops/scripts/pg.sh start "$work/pg" "$PGPORT" >/dev/null
export WIPAY_DATABASE_URL="host=127.0.0.1 port=$PGPORT dbname=wipay user=wipay"
export WIPAY_BUS_PORT="$BUSPORT" WIPAY_LOG_LEVEL=warning WIPAY_LOG_FORMAT=text
export WIPAY_PIN_SECRET="bench-secret-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
export WIPAY_HTTP_PORT=0
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U wipay -d wipay)

"$BIN/bus" >"$work/bus.log" 2>&1 &
BUS_PID=$!
pids+=($!)
sleep 0.5
LEDGER_PID=""
start_ledger() { # binary: (re)starts the one ledger and waits until payctl sees it
    if [[ -n "$LEDGER_PID" ]]; then kill "$LEDGER_PID" 2>/dev/null; wait "$LEDGER_PID" 2>/dev/null || true; fi
    "$1" >>"$work/ledger.log" 2>&1 &
    LEDGER_PID=$!
    pids+=($!)
    for _ in $(seq 1 60); do
        "$BIN/payctl" status --listen-ms 1200 --expect ledger >/dev/null 2>&1 && break
        sleep 0.5
    done
    "$BIN/payctl" status --listen-ms 1200 --expect ledger >/dev/null || { cat "$work/ledger.log"; exit 1; }
}
start_ledger "$BIN/ledger"

seed_wallets() { # FROM TO (exclusive)
    "${PSQL[@]}" -v from="$1" -v to="$2" -v secret="$WIPAY_PIN_SECRET" <<'SQL'
CREATE EXTENSION IF NOT EXISTS pgcrypto;
INSERT INTO ledger.accounts (id, kind, currency, name) VALUES ('funding-CNY', 3, 'CNY', 'funding CNY')
    ON CONFLICT (id) DO NOTHING;
INSERT INTO ledger.accounts (id, kind, currency, name, credits, pin_hash)
    SELECT 'bw-' || i, 1, 'CNY', 'bench wallet ' || i, 1000000000, hmac('bw-' || i || ':1234', :'secret', 'sha256')
    FROM generate_series(:from, :to - 1) AS i;
INSERT INTO ledger.transfers (id, kind, debit_account_id, credit_account_id, amount, currency,
                              debit_balance_after, credit_balance_after, posted_at)
    SELECT 'seed-bw-' || i, 3, 'funding-CNY', 'bw-' || i, 1000000000, 'CNY', 0, 1000000000, now()
    FROM generate_series(:from, :to - 1) AS i;
UPDATE ledger.accounts SET debits = debits + (:to - :from)::bigint * 1000000000 WHERE id = 'funding-CNY';
ANALYZE ledger.accounts;
ANALYZE ledger.transfers;
SQL
}
"${PSQL[@]}" -v m="$MERCHANTS" -c "INSERT INTO ledger.accounts (id, kind, currency, name)
    SELECT 'bm-' || j, 2, 'CNY', 'bench merchant ' || j FROM generate_series(0, $MERCHANTS - 1) AS j"
seed_wallets 0 "$WALLETS"

say "machine"
echo "$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(uname -sr); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
"${PSQL[@]}" -At -c "SELECT version()" | cut -d, -f1
"${PSQL[@]}" -At -c "SELECT 'fsync=' || current_setting('fsync') || ' synchronous_commit=' || current_setting('synchronous_commit')"

say "pgbench TPC-B-like, scale 10, 16 clients, ${DURATION}s (single-transaction reference)"
pgbench -i -q -s 10 -h 127.0.0.1 -p "$PGPORT" -U wipay wipay >/dev/null 2>&1
pgbench -n -c 16 -j 2 -T "$DURATION" -h 127.0.0.1 -p "$PGPORT" -U wipay wipay 2>/dev/null | grep -E "^tps|latency average"

batch_stats() {
    local url
    url="$("$BIN/payctl" status --json --listen-ms 1200 | python3 -c 'import json,sys; print([i["http_endpoint"] for i in json.load(sys.stdin)["instances"] if i["service"]=="ledger"][0])')"
    curl -s "$url/metrics" | python3 -c '
import sys
s = c = d = 0.0
for line in sys.stdin:
    if line.startswith("wipay_ledger_batch_size_sum"): s = float(line.split()[-1])
    if line.startswith("wipay_ledger_batch_size_count"): c = float(line.split()[-1])
    if line.startswith("wipay_ledger_batch_duration_seconds_sum"): d = float(line.split()[-1])
print(f"ledger since start: {int(c)} batches, mean batch size {s / c if c else 0:.0f}, mean batch time {1000 * d / c if c else 0:.2f} ms")'
}

# CPU seconds used so far (user + system, from /proc) by a process, or by PostgreSQL's whole tree.
cpu_of() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
cpu_postgres() {
    local pm total=0 c
    pm="$(head -n 1 "$work/pg/postmaster.pid")"
    for pid in "$pm" $(pgrep -P "$pm"); do c="$(cpu_of "$pid")"; total="$(echo "$total + $c" | bc)"; done
    echo "$total"
}

run() { # label, paybench args...
    local label="$1"; shift
    say "$label"
    local l0 b0 p0 t0 start
    l0="$(cpu_of "$LEDGER_PID")"; b0="$(cpu_of "$BUS_PID")"; p0="$(cpu_postgres)"; start="$(date +%s.%N)"
    "$BIN/paybench" ledger --wallets "$WALLETS_NOW" --merchants "$MERCHANTS" --duration "$DURATION" "$@" &
    local bench=$!
    t0=0
    while kill -0 "$bench" 2>/dev/null; do t0="$(cpu_of "$bench")"; sleep 0.2; done
    wait "$bench"
    local wall; wall="$(echo "$(date +%s.%N) - $start" | bc)"
    printf 'CPU over %.1f s wall (cores busy): ledger %.2f, bus %.2f, postgres %.2f, paybench %.2f\n' "$wall" \
        "$(echo "($(cpu_of "$LEDGER_PID") - $l0) / $wall" | bc -l)" "$(echo "($(cpu_of "$BUS_PID") - $b0) / $wall" | bc -l)" \
        "$(echo "($(cpu_postgres) - $p0) / $wall" | bc -l)" "$(echo "$t0 / $wall" | bc -l)"
    batch_stats
}

WALLETS_NOW="$WALLETS"
if [[ -n "${AB_LEDGER:-}" ]]; then
    [[ -x "$AB_LEDGER" ]] || { echo "AB_LEDGER=$AB_LEDGER is not an executable" >&2; exit 1; }
    for round in 1 2; do
        for side in A B; do
            if [[ $side == A ]]; then start_ledger "$BIN/ledger"; else start_ledger "$AB_LEDGER"; fi
            run "$side (round $round): paybench hot mix, flat out, $WALLETS wallets" --mix hot --concurrency "$CONCURRENCY" --prefix "ab$round$side"
            if (( BATCH_MSG > 1 )); then
                run "$side (round $round): paybench hot mix, flat out, $BATCH_CALLERS callers × $BATCH_MSG per message, $WALLETS wallets" \
                    --mix hot --concurrency "$BATCH_CALLERS" --batch "$BATCH_MSG" --prefix "ad$round$side"
            fi
            run "$side (round $round): paybench hot mix at 5,000/s, $WALLETS wallets" --mix hot --rate 5000 --prefix "ac$round$side"
        done
    done
    say "reconcile"
    "$BIN/payctl" reconcile
    exit 0
fi
run "paybench hot mix, flat out, $WALLETS wallets" --mix hot --concurrency "$CONCURRENCY" --prefix a
if (( BATCH_MSG > 1 )); then
    run "paybench hot mix, flat out, $BATCH_CALLERS callers × $BATCH_MSG per message, $WALLETS wallets" \
        --mix hot --concurrency "$BATCH_CALLERS" --batch "$BATCH_MSG" --prefix f
fi
run "paybench uniform mix, flat out, $WALLETS wallets" --mix uniform --concurrency "$CONCURRENCY" --prefix b
run "paybench hot mix at 5,000/s, $WALLETS wallets" --mix hot --rate 5000 --prefix c

say "growing the book to $BIG_WALLETS wallets"
seed_wallets "$WALLETS" "$BIG_WALLETS"
WALLETS_NOW="$BIG_WALLETS"
run "paybench hot mix, flat out, $BIG_WALLETS wallets" --mix hot --concurrency "$CONCURRENCY" --prefix d
run "paybench hot mix at 5,000/s, $BIG_WALLETS wallets" --mix hot --rate 5000 --prefix e

say "reconcile"
"$BIN/payctl" reconcile
