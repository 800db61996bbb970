#!/usr/bin/env bash
# Installs what WiPay needs to build, test and run locally, and only what is missing.
#
#   ops/scripts/deps.sh            libzmq3-dev, libpq-dev, postgresql, jq (Debian packages)
#   ops/scripts/deps.sh --compose  the same, plus the Debian docker-compose client
#
# Quiet and idempotent when nothing is missing. Also checks that `swift` is on PATH.
set -euo pipefail

say() { printf 'deps: %s\n' "$*"; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

want_compose=0
for arg in "$@"; do
    case "$arg" in
        --compose) want_compose=1 ;;
        -h | --help)
            sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument '$arg' (usage: deps.sh [--compose])" ;;
    esac
done

command -v dpkg-query >/dev/null 2>&1 \
    || die "dpkg-query not found: this script expects a Debian-based system (Debian 12 / bookworm)"

# iproute2: `ip netns` for the shop-across-hosts test (ops/scripts/shop-net.sh); openssl: test certificates.
packages=(libzmq3-dev libpq-dev postgresql jq iproute2 openssl)
if [[ $want_compose -eq 1 ]]; then
    packages+=(docker-compose)
fi

is_installed() {
    # `dpkg -s` exits 0 for packages that were removed but not purged, so check the status field.
    [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null || true)" == ii* ]]
}

missing=()
for pkg in "${packages[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done

if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -eq 0 ]]; then
        sudo=()
    elif command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        die "missing Debian packages: ${missing[*]}; not root and sudo is not available. Install them as root: apt-get install -y --no-install-recommends ${missing[*]}"
    fi
    say "installing missing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq \
        || die "apt-get update failed"
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        || die "apt-get install failed for: ${missing[*]}"
    for pkg in "${missing[@]}"; do
        is_installed "$pkg" || die "package $pkg is still not installed after apt-get install"
    done
    say "installed: ${missing[*]}"
fi

# The PostgreSQL server binaries (initdb, pg_ctl) come with the postgresql package.
if ! compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null; then
    die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (is the 'postgresql' package installed correctly?)"
fi

if [[ $want_compose -eq 1 ]] && ! command -v docker-compose >/dev/null 2>&1; then
    die "docker-compose is not on PATH even though the docker-compose package is installed"
fi

command -v swift >/dev/null 2>&1 \
    || die "'swift' is not on PATH. Install a Swift 6 toolchain (https://www.swift.org/install/linux/) and add its usr/bin to PATH."

exit 0
