#!/usr/bin/env bash
# Sourced by the scripts that install a Python test tool (schemathesis.sh, browser-tools.sh,
# k8s-validate.sh): one way to make a virtual environment with pinned PyPI packages.
#
#   source ops/scripts/pyvenv.sh
#   pyvenv_ensure VENV 'import a, b' 'a==1.0' 'b==2.0'
#
# Does nothing when VENV's python already imports what the check names. Otherwise installs python3-venv
# when missing (apt-get, as root), makes VENV afresh and pip-installs the packages; on failure it removes
# VENV and exits non-zero with the reason. Messages go to stderr, prefixed with $prog.

pyvenv_die() { printf '%s: error: %s\n' "${prog:-pyvenv}" "$*" >&2; exit 1; }

pyvenv_ensure() {
    local venv="$1" check="$2"
    shift 2
    if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || pyvenv_die "python3 is not on PATH (Debian: apt-get install python3 python3-venv)"
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
            printf '%s: installing python3-venv\n' "${prog:-pyvenv}" >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >&2 \
                || pyvenv_die "apt-get install python3-venv failed"
        else
            pyvenv_die "python3 has no venv/ensurepip module (Debian: apt-get install python3-venv)"
        fi
    fi
    printf '%s: installing %s in %s\n' "${prog:-pyvenv}" "$*" "${venv#"${REPO_ROOT:-}"/}" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" >&2 || pyvenv_die "python3 -m venv $venv failed"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" >&2 \
        || { rm -rf "$venv"; pyvenv_die "pip install $* failed (is PyPI reachable?)"; }
    "$venv/bin/python" -c "$check" >/dev/null 2>&1 || pyvenv_die "$venv cannot '$check' after the install"
}
