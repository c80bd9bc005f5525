#!/usr/bin/env bash
# Serving benchmark: raw in-process batch throughput vs the HTTP server under load, in one run.
# Usage: scripts/bench.sh [MODEL_DIR]   (BENCH_SECONDS=5 per measurement point by default;
#   BENCH_TORCHSERVE=0 skips the TorchServe anchor, BENCH_WRK=0 its wrk comparison)
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
    SQ_PID=
    trap '[ -z "$SQ_PID" ] || kill "$SQ_PID" 2>/dev/null; scripts/torchserve-anchor.sh stop "$TS_WORK"; rm -rf "$TS_WORK"' EXIT
    scripts/torchserve-anchor.sh start "$MODEL" "$TS_WORK" 18600 2 1
    TS_ENV=(BENCH_TORCHSERVE_URL=http://127.0.0.1:18600/predictions/seq)
fi
env "${TS_ENV[@]}" \
    BENCH_TORCHSCRIPT="$(echo "$ANCHOR" | sed -n 's/^torchscript batch 32: \([0-9]*\) seq.*/\1/p')" \
    cargo bench --bench serve -- "$MODEL"
# The same comparison with wrk, a lighter load generator than the bench binary's reqwest client (at
# seqserve's rate the client's own CPU is ~14% of a request's cost on these shared cores, against
# ~6% of TorchServe's): closed loop, 1 thread, 32/64/128 connections, 5 s a point, the same bodies
# to both servers (random catalogue items, 1-50 of them, k 10), TorchServe first while seqserve is
# not running, then seqserve with its defaults while TorchServe idles. BENCH_WRK=0 skips it.
if [ "${BENCH_WRK:-1}" != 0 ] && [ "${BENCH_TORCHSERVE:-1}" != 0 ]; then
    source scripts/wrk-lib.sh
    wrk_setup
    WORK=$TS_WORK
    LOAD_LENGTHS=1-50 write_load_lua "$MODEL/items.txt" 7
    # wrk_point URL_ROOT PATH CONC: "req/s p99_ms errors" (errors: non-2xx answers + socket errors)
    wrk_point() {
        local out sock=0
        out=$(URL=$1 CONN=$3 WRK_PATH=$2 wrk_run "${BENCH_SECONDS:-5}" 0)
        [ "$(echo "$out" | sockerr)" = none ] || sock=1
        echo "$(echo "$out" | rate) $(echo "$out" | p99) $(( $(echo "$out" | non2xx) + sock ))"
    }
    echo
    echo "| wrk closed loop | concurrency | TorchServe req/s | p99 ms | errors | seqserve req/s | p99 ms | errors |"
    echo "|---|---|---|---|---|---|---|---|"
    declare -A TS_R SQ_R
    for c in 32 64 128; do TS_R[$c]=$(wrk_point http://127.0.0.1:18600 /predictions/seq "$c"); done
    WRK_PORT=18611  # TorchServe holds 18600-18602
    "$BIN" serve --model "$MODEL" --host 127.0.0.1 --port "$WRK_PORT" --device cpu \
        --log-format json 2>"$TS_WORK/seqserve.log" &
    SQ_PID=$!
    wait_ready "$WRK_PORT" 60 "$TS_WORK/seqserve.log"
    URL=http://127.0.0.1:$WRK_PORT CONN=64 wrk_run 2 0 >/dev/null
    for c in 32 64 128; do SQ_R[$c]=$(wrk_point "http://127.0.0.1:$WRK_PORT" /recommend "$c"); done
    kill "$SQ_PID"; wait "$SQ_PID" 2>/dev/null || true; SQ_PID=
    ts_best=0; sq_best=0
    for c in 32 64 128; do
        read -r tr tp te <<<"${TS_R[$c]}"; read -r sr sp se <<<"${SQ_R[$c]}"
        echo "| | $c | $tr | $tp | $te | $sr | $sp | $se |"
        # The rates print with decimals: compare them in awk.
        if [ "$te" = 0 ] && awk -v a="$tr" -v b="$ts_best" 'BEGIN {exit !(a > b)}'; then ts_best=$tr; fi
        if [ "$se" = 0 ] && awk -v a="$sr" -v b="$sq_best" -v p="$sp" 'BEGIN {exit !(p <= 25 && a > b)}'; then
            sq_best=$sr
        fi
    done
    awk -v s="$sq_best" -v t="$ts_best" 'BEGIN {printf "wrk: seqserve best at p99 <= 25 ms / TorchServe best at any p99 = %.0f / %.0f = %.2f (target >= 4)\n", s, t, (t > 0 ? s / t : 0)}'
fi
