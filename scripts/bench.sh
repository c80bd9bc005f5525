#!/usr/bin/env bash
# Serving benchmark: raw in-process batch throughput vs the HTTP server under load, in one run.
# Usage: scripts/bench.sh [MODEL_DIR]   (BENCH_SECONDS=5 per measurement point by default)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo bench --bench serve -- "${1:-models/beauty-2l}"
