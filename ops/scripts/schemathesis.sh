#!/usr/bin/env bash
# Installs Schemathesis (and the `cryptography` package its WiPay hooks sign phone calls with) in a
# virtual environment of its own, only when missing, and prints the path of its `schemathesis`.
#
#   ops/scripts/schemathesis.sh            install if missing; print the executable's path
#   WIPAY_TOOLS_DIR=DIR ...                where the environment lives (default .build/tools)
#
# Quiet when it is there already. Needs python3 with the venv module (Debian: python3-venv, installed
# when missing) and PyPI. Exits non-zero, saying why, when it cannot install.
set -euo pipefail

prog="schemathesis.sh"
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }

SCHEMATHESIS_VERSION="4.32.5"
CRYPTOGRAPHY_VERSION="50.0.2"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
tools="${WIPAY_TOOLS_DIR:-$REPO_ROOT/.build/tools}"
venv="$tools/schemathesis-$SCHEMATHESIS_VERSION"
exe="$venv/bin/schemathesis"

if [[ -x "$exe" ]] && "$venv/bin/python" -c 'import schemathesis, cryptography' >/dev/null 2>&1; then
    printf '%s\n' "$exe"
    exit 0
fi

command -v python3 >/dev/null 2>&1 || die "python3 is not on PATH (Debian: apt-get install python3 python3-venv)"
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
        printf '%s: installing python3-venv\n' "$prog" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >&2 \
            || die "apt-get install python3-venv failed"
    else
        die "python3 has no venv/ensurepip module (Debian: apt-get install python3-venv)"
    fi
fi

printf '%s: installing schemathesis %s in %s\n' "$prog" "$SCHEMATHESIS_VERSION" "${venv#"$REPO_ROOT"/}" >&2
rm -rf "$venv"
mkdir -p "$tools"
python3 -m venv "$venv" >&2 || die "python3 -m venv $venv failed"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION" "cryptography==$CRYPTOGRAPHY_VERSION" >&2 \
    || { rm -rf "$venv"; die "pip install schemathesis==$SCHEMATHESIS_VERSION failed (is PyPI reachable?)"; }
[[ -x "$exe" ]] || die "$exe is missing after the install"
printf '%s\n' "$exe"
