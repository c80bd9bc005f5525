#!/usr/bin/env bash
# Serving benchmark: raw in-process batch throughput vs the HTTP server under load, in one run.
# Usage: scripts/bench.sh [MODEL_DIR]   (BENCH_SECONDS=5 per measurement point by default)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
MODEL=${1:-models/beauty-2l}
# The anchor first, alone on the machine: the same weights traced with TorchScript, batch 32, all
# cores (scripts/torchscript_anchor.py checks its scores against tests/python/reference.py).
ANCHOR=$(python scripts/torchscript_anchor.py "$MODEL" "${BENCH_SECONDS:-5}" | tee /dev/stderr)
BENCH_TORCHSCRIPT=$(echo "$ANCHOR" | sed -n 's/^torchscript batch 32: \([0-9]*\) seq.*/\1/p') \
    cargo bench --bench serve -- "$MODEL"
