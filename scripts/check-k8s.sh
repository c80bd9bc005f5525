#!/usr/bin/env bash
# Verifies k8s/ (run by .ci/run): kubernetes-validate --strict against every supported Kubernetes
# version (1.29, the documented minimum, to 1.37), then checkov with zero failures (each skip is
# justified in a comment beside its annotation in the manifest).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(bash scripts/ops-tools.sh)
MIN=29 MAX=37
for minor in $(seq $MIN $MAX); do
    "$BIN/kubernetes-validate" --strict --quiet -k "1.$minor.0" k8s/*.yaml
done
echo "[k8s] kubernetes-validate --strict: $(ls k8s/*.yaml | wc -l) files valid for Kubernetes 1.$MIN to 1.$MAX"
# The one version below the minimum must fail (the preStop sleep action), or the documented
# minimum is out of date.
if "$BIN/kubernetes-validate" --strict --quiet -k "1.$((MIN - 1)).0" k8s/*.yaml >/dev/null 2>&1; then
    echo "[k8s] the manifests also validate for 1.$((MIN - 1)): lower the documented minimum" >&2
    exit 1
fi
# --skip-download: checkov otherwise asks a remote service for guideline links (no network here).
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
"$BIN/checkov" -d k8s --framework kubernetes --compact --quiet --skip-download -o cli | tee "$OUT" 
grep -q "Failed checks: 0," "$OUT" || { echo "[k8s] checkov found failures" >&2; exit 1; }
echo "[k8s] checkov: $(grep -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' "$OUT")"
