#!/usr/bin/env bash
# How much of a served request is the model: wrk (1 thread, 64 connections, closed loop, the bench's
# bodies of 1-50 random catalogue items, k 10) against `seqserve serve` with its defaults on MODEL,
# and on a near-free model trained on the spot (d 8, 1 layer, ffn 8, max_len 4, the first 300 Beauty
# users: its encoder and 2.8k-item scan cost a few µs), alternated RUNS times in one run. The
# near-free model's rate is the ceiling of everything but the model (HTTP, JSON, batching queue,
# wrk itself on the same cores); the difference of the two CPU costs per request is the model's.
# With perf on the PATH (Debian's linux-perf), one more MODEL point is profiled, and the share of
# the server's CPU spent in MKL's f32 GEMM (kernels and packing) gives the arithmetic's own cost per
# request, which no rearrangement of the other work removes. Run it on a quiet machine: the all-cores
# figure counts every process's CPU.
# Usage: scripts/bench-ceiling.sh [MODEL_DIR]   Env: RUNS (2), SECONDS_PER_POINT (8),
#   PORT (18491), TS_BEST (TorchServe's best req/s from scripts/bench.sh: prints what 4x it needs)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/beauty-2l}
RUNS=${RUNS:-2}
DUR=${SECONDS_PER_POINT:-8}
PORT=${PORT:-18491}
BEAUTY=../shared/data/amazon_s3rec/Beauty.txt
[ -f "$BEAUTY" ] || { echo "$BEAUTY is absent (../shared/data): the near-free model is trained on it" >&2; exit 1; }
source scripts/wrk-lib.sh
wrk_setup
ROOT=$(mktemp -d)
SERVER=
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$ROOT"' EXIT
CORES=$(nproc)
TICK=$(getconf CLK_TCK)

head -300 "$BEAUTY" >"$ROOT/tiny.txt"
"$BIN" train --data "$ROOT/tiny.txt" --out "$ROOT/tiny" --d-model 8 --layers 1 --heads 1 \
    --ffn-dim 8 --max-len 4 --epochs 1 --threads 1 --skip-test >/dev/null 2>&1
mkdir -p "$ROOT/load-model" "$ROOT/load-tiny"
LOAD_LENGTHS=1-50 WORK=$ROOT/load-model write_load_lua "$MODEL/items.txt" 7
LOAD_LENGTHS=1-50 WORK=$ROOT/load-tiny write_load_lua "$ROOT/tiny/items.txt" 7
CONN=64
URL="http://127.0.0.1:$PORT"

busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }  # user nice system irq softirq
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }              # utime + stime

start() { # model_dir
    "$BIN" serve --model "$1" --host 127.0.0.1 --port "$PORT" --device cpu --log-format json \
        2>"$ROOT/serve.log" &
    SERVER=$!
    wait_ready "$PORT" 60 "$ROOT/serve.log"
}
stop() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=; }

# measure MODEL_DIR LOAD [PERF_DATA]: serves MODEL_DIR, warms it for 2 s, then one closed-loop point
# of DUR s; sets OUT (wrk's output), N (requests answered), BUSY and SRV (CPU ticks of all cores and
# of the server during the point). With PERF_DATA, perf records the server during the point.
measure() {
    start "$1"
    WORK=$ROOT/$2 wrk_run 2 0 >/dev/null
    local b0 s0 perf=
    b0=$(busy); s0=$(proc_ticks "$SERVER")
    if [ -n "${3:-}" ]; then
        perf record -F 1999 -p "$SERVER" -o "$3" -- sleep "$DUR" >/dev/null 2>&1 &
        perf=$!
    fi
    OUT=$(WORK=$ROOT/$2 wrk_run "$DUR" 0)
    [ -z "$perf" ] || wait "$perf" || true
    BUSY=$(($(busy) - b0)); SRV=$(($(proc_ticks "$SERVER") - s0))
    stop
    N=$(echo "$OUT" | requests)
}
# us_per_request TICKS [PERCENT]: CPU µs per answered request (N) in TICKS, or PERCENT of it.
us_per_request() {
    awk -v d="$1" -v n="$N" -v t="$TICK" -v p="${2:-100}" 'BEGIN {printf "%.0f", d / t * 1e6 / n * p / 100}'
}

# point LABEL MODEL_DIR LOAD: one measured point as a table row; sets RATE, MACHINE_US (all cores'
# busy CPU per answered request: wrk, server, the rest) and SERVER_US.
point() {
    measure "$2" "$3"
    RATE=$(echo "$OUT" | rate)
    MACHINE_US=$(us_per_request "$BUSY")
    SERVER_US=$(us_per_request "$SRV")
    echo "| $1 | $RATE | $(echo "$OUT" | p99) ms | $(echo "$OUT" | non2xx) | $MACHINE_US | $SERVER_US |"
}

echo "| served model (wrk c=$CONN, ${DUR} s) | req/s | p99 | non-2xx | CPU µs/request, all $CORES cores | of it the server |"
echo "|---|---|---|---|---|---|"
m_sum=0; t_sum=0; m_rate=0; t_rate=0
for _ in $(seq "$RUNS"); do
    point "near-free (d 8, 1 layer, max_len 4)" "$ROOT/tiny" load-tiny
    t_sum=$((t_sum + MACHINE_US)); t_rate=$(awk -v a="$t_rate" -v b="$RATE" 'BEGIN {print a + b}')
    point "$MODEL" "$MODEL" load-model
    m_sum=$((m_sum + MACHINE_US)); m_rate=$(awk -v a="$m_rate" -v b="$RATE" 'BEGIN {print a + b}')
done
T_US=$((t_sum / RUNS)); M_US=$((m_sum / RUNS))
echo
echo "mean over $RUNS runs: near-free $(awk -v r="$t_rate" -v n="$RUNS" 'BEGIN {printf "%.0f", r / n}') req/s at $T_US µs a request (everything but the model);" \
    "$MODEL $(awk -v r="$m_rate" -v n="$RUNS" 'BEGIN {printf "%.0f", r / n}') req/s at $M_US µs: the model's own cost $((M_US - T_US)) µs a request"

GEMM_US=
if command -v perf >/dev/null; then
    measure "$MODEL" load-model "$ROOT/perf.data"
    share=$(perf report -i "$ROOT/perf.data" --no-children --sort sym -q -g none 2>/dev/null \
        | awk '/sgemm/ {s += $1} END {printf "%.1f", s}')
    GEMM_US=$(us_per_request "$SRV" "$share")
    echo "profiled point: $(echo "$OUT" | rate) req/s; MKL sgemm (kernels and packing) ${share}% of the server's CPU = $GEMM_US µs a request"
else
    echo "(perf is not on the PATH: the GEMM share is not measured; Debian's linux-perf has it)"
fi
if [ -n "${TS_BEST:-}" ]; then
    awk -v ts="$TS_BEST" -v c="$CORES" -v t="$T_US" -v m="$M_US" -v g="${GEMM_US:-}" 'BEGIN {
        need = c * 1e6 / (4 * ts)
        printf "4x TorchServe (%.0f req/s) on %d cores: at most %.0f µs of CPU a request; everything but the model takes %d, leaving %.0f for the model (today %d)", 4 * ts, c, need, t, need - t, m - t
        if (g != "") printf "; its GEMM arithmetic alone takes %d", g
        printf "\n"
    }'
fi
