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

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import selenium' >/dev/null 2>&1; then
    printf '%s\n' "$venv/bin/python"
    exit 0
fi

command -v python3 >/dev/null 2>&1 || die "python3 is not on PATH (Debian: apt-get install python3 python3-venv)"
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "python3 has no venv/ensurepip module (Debian: apt-get install python3-venv)"
    apt_install python3-venv
fi
printf '%s: installing selenium %s in %s\n' "$prog" "$SELENIUM_VERSION" "${venv#"$REPO_ROOT"/}" >&2
rm -rf "$venv"
mkdir -p "$tools"
python3 -m venv "$venv" >&2 || die "python3 -m venv $venv failed"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "selenium==$SELENIUM_VERSION" >&2 \
    || { rm -rf "$venv"; die "pip install selenium==$SELENIUM_VERSION failed (is PyPI reachable?)"; }
printf '%s\n' "$venv/bin/python"
