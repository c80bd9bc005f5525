#!/usr/bin/env bash
# Zero-downtime swap measurement: wrk drives POST /recommend at half the maximum rate while the
# model's version is swapped SWAPS times (load beside, switch, retire the old one), and compares
# the answers and p99 with a steady run at the same rate.
#
# Usage: scripts/bench-swap.sh [MODEL_DIR]   (default models/beauty-2l; both versions are this model,
# so the only difference between the phases is the swapping)
# Env: SWAPS (10), STEADY_SECONDS (20), SWAP_GAP_SECONDS (2), CONNECTIONS (64), PORT (18480)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$(realpath "${1:-models/beauty-2l}")
SWAPS=${SWAPS:-10}
STEADY=${STEADY_SECONDS:-20}
GAP=${SWAP_GAP_SECONDS:-2}
CONN=${CONNECTIONS:-64}
PORT=${PORT:-18480}
TOKEN=bench-token

source scripts/wrk-lib.sh
wrk_setup

WORK=$(mktemp -d)
SERVER= WRK=
trap 'kill $WRK $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/repo/bench"
ln -s "$MODEL" "$WORK/repo/bench/1"
ln -s "$MODEL" "$WORK/repo/bench/2"

# Request bodies: histories of real catalogue ids.
write_load_lua "$MODEL/items.txt" 7 user

SEQSERVE__ADMIN__TOKEN=$TOKEN "$BIN" serve --repository "$WORK/repo" --host 127.0.0.1 --port "$PORT" \
    --log-format json 2>"$WORK/server.log" &
SERVER=$!
wait_ready "$PORT" 60 "$WORK/server.log"
URL="http://127.0.0.1:$PORT"


# 1. Maximum rate (closed loop), then each connection paced to half of it.
pace_to_half_rate
echo "max rate ${MAX} req/s; target ${TARGET} req/s; per-connection delay ${DELAY} ms, ${CONN} connections"

# 3. Steady state at that pace.
STEADY_OUT=$(wrk_run "$STEADY" "$DELAY")
# 4. The same pace while swapping.
SWAP_SECONDS=$(( SWAPS * (GAP + 2) + 6 ))
wrk_run "$SWAP_SECONDS" "$DELAY" >"$WORK/swap.txt" &
WRK=$!
sleep 3
current=2 # the newest version serves from the start
SWAP_TIMES=()
for i in $(seq "$SWAPS"); do
    next=$(( current == 1 ? 2 : 1 ))
    t0=$(date +%s.%N)
    code=$(curl -s -o "$WORK/swap-$i.json" -w '%{http_code}' -X POST \
        -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        -d '{"default": true, "retire_previous": true}' "$URL/models/bench/versions/$next")
    t1=$(date +%s.%N)
    [ "$code" = 201 ] || { echo "swap $i answered $code: $(cat "$WORK/swap-$i.json")"; exit 1; }
    SWAP_TIMES+=("$(python3 -c "print(round($t1 - $t0, 3))")")
    current=$next
    sleep "$GAP"
done
wait $WRK
SWAP_OUT=$(cat "$WORK/swap.txt")
LOADED=$(curl -s "$URL/models/bench" | python3 -c "import json,sys; m=json.load(sys.stdin); print([v['version'] for v in m['versions']], 'draining', m['draining_versions'])")

S_RATE=$(echo "$STEADY_OUT" | rate); S_P99=$(echo "$STEADY_OUT" | p99)
W_RATE=$(echo "$SWAP_OUT" | rate); W_P99=$(echo "$SWAP_OUT" | p99)
W_REQ=$(echo "$SWAP_OUT" | awk '/requests in/ {print $1}')
echo
echo "| phase | seconds | req/s | p99 ms | non-2xx | socket errors |"
echo "|---|---|---|---|---|---|"
echo "| steady | $STEADY | $S_RATE | $S_P99 | $(echo "$STEADY_OUT" | non2xx) | $(echo "$STEADY_OUT" | sockerr) |"
echo "| $SWAPS swaps | $SWAP_SECONDS | $W_RATE | $W_P99 | $(echo "$SWAP_OUT" | non2xx) | $(echo "$SWAP_OUT" | sockerr) |"
echo
echo "requests during swaps: $W_REQ; p99 ratio swaps/steady: $(python3 -c "print(round($W_P99 / $S_P99, 2))")"
echo "swap durations (load + warm-up + switch), s: ${SWAP_TIMES[*]}"
echo "after: loaded versions $LOADED"
echo "server-side, whole run (calibration included): $(curl -s "$URL/metrics" | grep -E '^seqserve_requests_total\{route="/recommend"|^seqserve_rejected_requests_total.* [1-9]' | tr '\n' ' ')"
