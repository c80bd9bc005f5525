#!/usr/bin/env bash
# How models share the cores: closed-loop wrk (64 connections) on one model, and on two models at
# once (a 50/50 split, so both are busy), with each worker's libtorch intra-op threads and each
# version's worker threads (batching.workers_per_model) set to 1, 2 and auto (0). One run, side by
# side.
# Usage: scripts/bench-threads.sh   Env: SECONDS_PER_POINT (10), PORT (18481)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${SECONDS_PER_POINT:-10}
PORT=${PORT:-18481}
source scripts/wrk-lib.sh
wrk_setup
WORK=$(mktemp -d)
SERVER=
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
for m in beauty-1l beauty-2l; do
    mkdir -p "$WORK/two/$m" "$WORK/one"
    ln -s "$PWD/models/$m" "$WORK/two/$m/1"
done
mkdir -p "$WORK/one/beauty-2l" && ln -s "$PWD/models/beauty-2l" "$WORK/one/beauty-2l/1"
# The bodies carry no "model": the default model, the split "ab", answers them.
CONN=64
URL="http://127.0.0.1:$PORT"
write_load_lua models/beauty-2l/items.txt 7
point() { # repo split threads label workers
    SEQSERVE__SPLITS__ab=$2 "$BIN" serve --repository "$WORK/$1" --default-model ab --threads "$3" \
        --workers-per-model "$5" --host 127.0.0.1 --port "$PORT" --log-format json 2>/dev/null &
    SERVER=$!
    wait_ready "$PORT" 60
    wrk_run 2 0 >/dev/null
    out=$(wrk_run "$DUR" 0)
    kill $SERVER; wait $SERVER 2>/dev/null || true; SERVER=
    echo "| $4 | $3 | $5 | $(echo "$out" | rate) | $(echo "$out" | p99) ms | $(echo "$out" | non2xx) |"
}
echo "| models busy | intra-op threads per worker | workers per model | req/s | p99 | non-2xx |"
echo "|---|---|---|---|---|---|"
for tw in "1 1" "2 1" "1 2" "0 0"; do
    read -r t w <<<"$tw"
    point one "beauty-2l=1" "$t" "beauty-2l alone" "$w"
done
for tw in "1 1" "2 1" "1 2" "0 0"; do
    read -r t w <<<"$tw"
    point two "beauty-1l=50,beauty-2l=50" "$t" "beauty-1l + beauty-2l (50/50)" "$w"
done
echo "(threads 0 = auto: (CPU quota - 1) / models at start, at least 1; workers 0 = auto: CPU quota /"
echo " models at start / threads, at least 1; CPU quota here: $(nproc))"
