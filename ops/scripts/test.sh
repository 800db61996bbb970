#!/usr/bin/env bash
# What `make test` runs: the whole test suite against a throwaway PostgreSQL.
#
#   ops/scripts/test.sh                       swift build --build-tests, then swift test (all but the
#                                             end-to-end suites, then those)
#   TEST_ARGS="--filter LedgerTests" make test extra arguments for `swift test` (word-split)
#   ops/scripts/test.sh --filter FaultE2ETests  arguments are passed on to `swift test` too
#                                             (the fault suite also needs WIPAY_FAULT_TESTS=1: make test-faults)
#   ops/scripts/test.sh --shop                only the shop-across-hosts suite (make test-shop)
#
# The whole run ends with ShopNetworkE2ETests: two tills, a neighbour and a phone as hosts made of network
# namespaces (ops/scripts/shop-net.sh), the system and the test process in a "bank" namespace that reaches
# the test PostgreSQL by its unix socket. Where namespaces cannot be made (not root, a locked-down
# container) that suite is skipped with the reason; the same scenario on loopback always runs.
#
# Starts a private PostgreSQL in a mktemp folder on a free port, exports
#   WIPAY_TEST_DATABASE_URL="host=127.0.0.1 port=PORT dbname=wipay user=wipay"
# and removes everything again on exit. Exits with swift test's status.
set -euo pipefail

prog="test.sh"
say() { printf '%s: %s\n' "$prog" "$*"; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
cd "$REPO_ROOT"
PG_SH=(bash "$REPO_ROOT/ops/scripts/pg.sh")

bash "$REPO_ROOT/ops/scripts/deps.sh"

# Schemathesis (Tests/EndToEndTests/SchemathesisE2ETests.swift runs it against both gateways). Under CI a
# missing tool is an error; elsewhere that one test is skipped with a warning.
if [[ -z "${WIPAY_SCHEMATHESIS:-}" ]]; then
    if WIPAY_SCHEMATHESIS="$(bash "$REPO_ROOT/ops/scripts/schemathesis.sh")"; then
        export WIPAY_SCHEMATHESIS
    elif [[ "${CI:-}" == "true" ]]; then
        die "could not install Schemathesis (ops/scripts/schemathesis.sh)"
    else
        printf '%s: warning: Schemathesis is not available; its end-to-end test is skipped\n' "$prog" >&2
    fi
fi

# Chromium, chromedriver and Selenium (Tests/EndToEndTests/BrowserE2ETests.swift drives the pages in a real
# browser). As with Schemathesis: under CI a missing tool is an error; elsewhere that test is skipped.
if [[ -z "${WIPAY_BROWSER_PYTHON:-}" ]]; then
    if WIPAY_BROWSER_PYTHON="$(bash "$REPO_ROOT/ops/scripts/browser-tools.sh")"; then
        export WIPAY_BROWSER_PYTHON
    elif [[ "${CI:-}" == "true" ]]; then
        die "could not install Chromium and Selenium (ops/scripts/browser-tools.sh)"
    else
        printf '%s: warning: Chromium/Selenium are not available; the browser test is skipped\n' "$prog" >&2
    fi
fi

# The Kubernetes manifests (deploy/kubernetes), rendered and validated offline against the Kubernetes
# schemas (kubernetes-validate from PyPI): a few seconds; a failure fails the run. Only when the whole suite
# runs (no arguments).
k8s_check() {
    if bash "$REPO_ROOT/ops/scripts/k8s-validate.sh"; then
        return 0
    fi
    if [[ "${CI:-}" == "true" ]]; then
        say "the Kubernetes manifests do not validate (ops/scripts/k8s-validate.sh)"
        return 1
    fi
    printf '%s: warning: the Kubernetes manifests did not validate (or kubernetes-validate could not be installed)\n' "$prog" >&2
    return 1
}

shop_only=0
if [[ "${1:-}" == "--shop" ]]; then
    shop_only=1
    shift
fi
read -r -a extra_args <<<"${TEST_ARGS:-}"
extra_args+=("$@")

tmpdir=""
pgdir=""
child=""
shop_prefix=""
# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
    local rc=$?
    set +e
    trap '' INT TERM
    # Interrupted while swift was running: stop it before pulling the database away.
    if [[ -n "$child" ]] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null
        wait "$child" 2>/dev/null
    fi
    if [[ -n "$shop_prefix" ]]; then
        bash "$REPO_ROOT/ops/scripts/shop-net.sh" down "$shop_prefix" >/dev/null 2>&1
    fi
    if [[ -n "$pgdir" && -f "$pgdir/PG_VERSION" ]]; then
        "${PG_SH[@]}" stop "$pgdir" >/dev/null 2>&1 \
            || printf '%s: warning: could not stop the test PostgreSQL in %s\n' "$prog" "$pgdir" >&2
    fi
    if [[ -n "$tmpdir" && -d "$tmpdir" ]]; then
        rm -rf -- "$tmpdir"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

tmpdir="$(mktemp -d "${TMPDIR:-/tmp}/wipay-test.XXXXXX")" || die "mktemp -d failed"
if [[ $(id -u) -eq 0 ]]; then
    # PostgreSQL runs as the postgres user: it must own (and so traverse) this folder.
    chown postgres:postgres "$tmpdir" || die "cannot chown $tmpdir to postgres"
fi
chmod 755 "$tmpdir"
pgdir="$tmpdir/pg"

# Runs a command in the background and waits for it, so that INT/TERM reach our trap at once.
run() {
    "$@" &
    child=$!
    local rc=0
    wait "$child" || rc=$?
    child=""
    return "$rc"
}

port_in_use() {
    if command -v ss >/dev/null 2>&1; then
        [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# A free TCP port on 127.0.0.1: ask the kernel when python3 is there, otherwise probe a range.
pick_port() {
    local p
    if command -v python3 >/dev/null 2>&1; then
        p="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null)" || p=""
        if [[ -n "$p" ]] && ! port_in_use "$p"; then
            printf '%s\n' "$p"
            return 0
        fi
    fi
    local i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 30000))
        if ! port_in_use "$p"; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    return 1
}

# The port could be taken between picking and binding: try a few.
port=""
for attempt in 1 2 3; do
    candidate="$(pick_port)" || die "could not find a free TCP port on 127.0.0.1"
    if "${PG_SH[@]}" start "$pgdir" "$candidate"; then
        port="$candidate"
        break
    fi
    say "PostgreSQL did not start on port $candidate (attempt $attempt of 3)"
done
[[ -n "$port" ]] || die "could not start the test PostgreSQL (see $pgdir/log above)"

export WIPAY_TEST_DATABASE_URL="host=127.0.0.1 port=$port dbname=wipay user=wipay"
# The fault suite crashes and restarts this server (pg.sh crash / start): it is ours alone.
export WIPAY_TEST_PG_DATADIR="$pgdir" WIPAY_TEST_PG_PORT="$port"
say "WIPAY_TEST_DATABASE_URL=\"$WIPAY_TEST_DATABASE_URL\""

say "swift build --build-tests"
run swift build --build-tests || die "swift build --build-tests failed"

# The shop across hosts: the suite runs inside the bank namespace (see the top of this file).
shop_suite() {
    local reason rc=0
    if ! reason="$(bash "$REPO_ROOT/ops/scripts/shop-net.sh" check 2>&1)"; then
        say "SKIPPED ShopNetworkE2ETests (the shop across hosts): $reason; ShopLoopbackE2ETests ran the same scenario on loopback"
        return 0
    fi
    shop_prefix="wp$(printf '%04x' $((RANDOM % 65536)))"
    bash "$REPO_ROOT/ops/scripts/shop-net.sh" up "$shop_prefix" || { say "could not make the shop network"; return 1; }
    say "swift test --filter ShopNetworkE2ETests (in network namespace $shop_prefix-bank)"
    WIPAY_SHOP_NETNS="$shop_prefix" \
        WIPAY_TEST_DATABASE_URL="host=$pgdir/socket port=$port dbname=wipay user=wipay" \
        run ip netns exec "$shop_prefix-bank" swift test --skip-build --filter ShopNetworkE2ETests || rc=$?
    bash "$REPO_ROOT/ops/scripts/shop-net.sh" down "$shop_prefix" || true
    shop_prefix=""
    return "$rc"
}

status=0
if ((shop_only)); then
    shop_suite || status=$?
elif ((${#extra_args[@]} == 0)); then
    k8s_check || status=1
    # Two passes: the end-to-end suites start six processes each, so on a small machine they run
    # after the rest rather than competing with the timing-sensitive bus and ledger tests.
    say "swift test --skip EndToEndTests"
    run swift test --skip-build --skip EndToEndTests || status=$?
    # One suite at a time: seven whole systems (42 processes) at once on 2 cores starve the test
    # process itself, and its 15 s waits then fail for want of CPU, not for a fault of the system.
    say "swift test --filter EndToEndTests --no-parallel"
    run swift test --skip-build --filter EndToEndTests --no-parallel || status=$?
    shop_suite || status=$?
else
    say "swift test ${extra_args[*]}"
    run swift test "${extra_args[@]}" || status=$?
fi
if [[ $status -ne 0 ]]; then
    say "swift test failed with status $status"
fi
exit "$status"
