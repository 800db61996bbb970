#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/kubernetes offline: renders the base and every overlay
# with ops/scripts/k8s-validate.py and checks each rendered document, and every plain manifest
# (deploy/kubernetes/*.yaml), against the Kubernetes schemas with kubernetes-validate --strict.
#
#   ops/scripts/k8s-validate.sh            install kubernetes-validate if missing, then validate
#   WIPAY_TOOLS_DIR=DIR ...                where its environment lives (default .build/tools)
#   K8S_VERSION=1.33.0 ...                 the Kubernetes version to validate against
#
# Kinds from API groups that are not Kubernetes' own (the CloudNativePG Cluster) have no schema there:
# they are checked for apiVersion, kind and metadata.name only, and listed. When kubectl is on PATH,
# `kubectl kustomize` must render the same kinds and names. Exits non-zero on any failure.
set -euo pipefail

prog="k8s-validate.sh"
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }

KUBERNETES_VALIDATE_VERSION="1.37.0"
K8S_VERSION="${K8S_VERSION:-1.33.0}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
tools="${WIPAY_TOOLS_DIR:-$REPO_ROOT/.build/tools}"
[[ "$tools" == /* ]] || tools="$PWD/$tools"
venv="$tools/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
exe="$venv/bin/kubernetes-validate"
renderer="ops/scripts/k8s-validate.py"
manifests="deploy/kubernetes"

# shellcheck source=ops/scripts/pyvenv.sh
source "$REPO_ROOT/ops/scripts/pyvenv.sh"
pyvenv_ensure "$venv" 'import kubernetes_validate, yaml' "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
[[ -x "$exe" ]] || die "$exe is missing after the install"
py="$venv/bin/python"
cd "$REPO_ROOT"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

failed=0
fail() { printf '%s: FAIL: %s\n' "$prog" "$*" >&2; failed=1; }

# Schema check of one file. kubernetes-validate only warns (exit 0) for a kind it has no schema for:
# here every document is one of Kubernetes' own kinds, so a warning is a failure (a misspelt kind).
validate() { # FILE LABEL
    local out rc=0
    out="$("$exe" --strict --quiet -k "$K8S_VERSION" "$1" 2>&1)" || rc=$?
    [[ -n "$out" ]] && printf '%s\n' "$out" | sed "s|$work/||"
    if [[ $rc -ne 0 ]] || grep -q '^WARN' <<<"$out"; then
        fail "$2 did not validate against Kubernetes $K8S_VERSION"
        return
    fi
    checked=$((checked + $("$py" -c 'import sys, yaml; print(sum(1 for d in yaml.safe_load_all(open(sys.argv[1])) if d))' "$1")))
}

checked=0
no_schema=0
have_kubectl=0
command -v kubectl >/dev/null 2>&1 && have_kubectl=1

dirs=("$manifests/base")
for d in "$manifests"/overlays/*/; do [[ -f "$d/kustomization.yaml" ]] && dirs+=("${d%/}"); done

for dir in "${dirs[@]}"; do
    rel="$dir"
    name="$(tr '/' '_' <<<"${dir#"$manifests"/}")"
    rendered="$work/$name.yaml"
    if ! "$py" "$renderer" render "$dir" "$rendered"; then fail "$rel does not render"; continue; fi
    if ! split_out="$("$py" "$renderer" split "$rendered" "$work/$name.core.yaml")"; then
        fail "$rel: a document without a schema lacks apiVersion, kind or metadata.name"
        continue
    fi
    if [[ -n "$split_out" ]]; then
        printf '%s\n' "$split_out" | sed "s|^|$rel: |"
        no_schema=$((no_schema + $(grep -c . <<<"$split_out")))
    fi
    validate "$work/$name.core.yaml" "$rel"
    if [[ $have_kubectl -eq 1 ]]; then
        if ! kubectl kustomize "$dir" >"$work/$name.kubectl.yaml" 2>"$work/kubectl.err"; then
            cat "$work/kubectl.err" >&2
            fail "kubectl kustomize $rel failed"
        elif ! cmp_out="$("$py" "$renderer" compare "$rendered" "$work/$name.kubectl.yaml")"; then
            fail "kubectl kustomize $rel renders other resources than k8s-validate.py"
        else
            printf '%s: kubectl kustomize: %s\n' "$rel" "$cmp_out"
        fi
    fi
done
[[ $have_kubectl -eq 1 ]] || printf '%s: kubectl not found: our renderer only\n' "$prog"

for f in "$manifests"/*.yaml; do
    [[ -e "$f" ]] || continue
    validate "$f" "$f"
done

if [[ $failed -ne 0 ]]; then
    printf '%s: FAILED (%d documents passed)\n' "$prog" "$checked" >&2
    exit 1
fi
printf '%s: OK: %d documents validated against Kubernetes %s (strict), %d without a schema checked for apiVersion/kind/name, %d kustomizations rendered\n' \
    "$prog" "$checked" "$K8S_VERSION" "$no_schema" "${#dirs[@]}"
