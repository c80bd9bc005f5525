#!/usr/bin/env bash
# Catalogue-scale benchmark: matmul floor, exact and ANN retrieval, start-up, RSS and HTTP load at
# several catalogue sizes, in one run (see benches/scale.rs).
# Usage: scripts/bench-scale.sh   (SCALE_SIZES=12101,100000,1000000 BENCH_SECONDS=5 SCALE_ANN_MAX=1000000
#   SCALE_NOISE=0.5 SCALE_ANN=ivf[,hnsw] SCALE_PROBES=40,80 SCALE_EFS=32,64,128,256 SCALE_MAX_BATCH=32)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo bench --bench scale
