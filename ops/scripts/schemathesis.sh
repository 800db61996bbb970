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

# shellcheck source=ops/scripts/pyvenv.sh
source "$REPO_ROOT/ops/scripts/pyvenv.sh"
pyvenv_ensure "$venv" 'import schemathesis, cryptography' \
    "schemathesis==$SCHEMATHESIS_VERSION" "cryptography==$CRYPTOGRAPHY_VERSION"
[[ -x "$exe" ]] || die "$exe is missing after the install"
printf '%s\n' "$exe"
