#!/usr/bin/env bash
# Installs what the browser tests need, only when missing, and prints the path of the Python that runs them:
#   - Debian's chromium and chromium-driver (apt-get, as root or with sudo);
#   - Selenium in a virtual environment of its own (PyPI), driving that system Chromium (never a
#     downloaded browser: Selenium Manager is not used, the driver is /usr/bin/chromedriver).
#
#   ops/scripts/browser-tools.sh           install if missing; print the venv's python
#   WIPAY_TOOLS_DIR=DIR ...                where the environment lives (default .build/tools)
#
# Exits non-zero, saying why, when it cannot install.
set -euo pipefail

prog="browser-tools.sh"
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }

SELENIUM_VERSION="4.50.0"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
tools="${WIPAY_TOOLS_DIR:-$REPO_ROOT/.build/tools}"
venv="$tools/selenium-$SELENIUM_VERSION"

apt_install() {
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root or sudo to install: $*"
        sudo=(sudo)
    fi
    printf '%s: installing %s\n' "$prog" "$*" >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 \
        || { "${sudo[@]}" apt-get update -qq >&2 && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2; } \
        || die "apt-get install $* failed"
}

missing=()
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
[[ -x /usr/bin/chromedriver ]] || missing+=(chromium-driver)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install ${missing[*]} (Debian packages) by hand"
    apt_install "${missing[@]}"
fi

# shellcheck source=ops/scripts/pyvenv.sh
source "$REPO_ROOT/ops/scripts/pyvenv.sh"
pyvenv_ensure "$venv" 'import selenium' "selenium==$SELENIUM_VERSION"
printf '%s\n' "$venv/bin/python"
