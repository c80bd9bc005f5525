#!/usr/bin/env bash
# Serving benchmark: raw in-process batch throughput vs the HTTP server under load, in one run.
# Usage: scripts/bench.sh [MODEL_DIR]   (BENCH_SECONDS=5 per measurement point by default;
#   BENCH_TORCHSERVE=0 skips the TorchServe anchor)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
MODEL=${1:-models/beauty-2l}
# The anchor first, alone on the machine: the same weights traced with TorchScript, batch 32, all
# cores (scripts/torchscript_anchor.py checks its scores against tests/python/reference.py).
# (Printed with echo, not `tee /dev/stderr`: tee truncates a stderr redirected to a file.)
ANCHOR=$(python scripts/torchscript_anchor.py "$MODEL" "${BENCH_SECONDS:-5}")
echo "$ANCHOR"
# TorchServe serving the same TorchScript module (scripts/torchserve-anchor.sh: its batching, 2
# workers of 1 thread); measured by the same client first, then idle. BENCH_TORCHSERVE=0 skips it.
TS_ENV=()
if [ "${BENCH_TORCHSERVE:-1}" != 0 ]; then
    TS_WORK=$(mktemp -d)
    trap 'scripts/torchserve-anchor.sh stop "$TS_WORK"; rm -rf "$TS_WORK"' EXIT
    scripts/torchserve-anchor.sh start "$MODEL" "$TS_WORK" 18600 2 1
    TS_ENV=(BENCH_TORCHSERVE_URL=http://127.0.0.1:18600/predictions/seq)
fi
env "${TS_ENV[@]}" \
    BENCH_TORCHSCRIPT="$(echo "$ANCHOR" | sed -n 's/^torchscript batch 32: \([0-9]*\) seq.*/\1/p')" \
    cargo bench --bench serve -- "$MODEL"
