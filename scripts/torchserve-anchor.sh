#!/usr/bin/env bash
# The TorchServe anchor of scripts/bench.sh: the model's weights as the TorchScript module that
# scripts/torchscript_anchor.py traces and checks against tests/python/reference.py, served by
# TorchServe 0.12 (scripts/ops-tools.sh torchserve; Java from Debian) with its dynamic batching
# (batch 32, 5 ms) and WORKERS Python workers of THREADS torch threads each.
# Usage: scripts/torchserve-anchor.sh start MODEL_DIR WORK_DIR PORT [WORKERS] [THREADS]
#        scripts/torchserve-anchor.sh stop WORK_DIR
# `start` returns once POST http://127.0.0.1:PORT/predictions/seq answers.
set -euo pipefail
cd "$(dirname "$0")/.."
TS=$(bash scripts/ops-tools.sh torchserve)
case "${1:-}" in
stop)
    "$TS/torchserve" --stop >/dev/null 2>&1 || true
    exit 0 ;;
start) ;;
*) echo "usage: $0 start MODEL_DIR WORK_DIR PORT [WORKERS] [THREADS] | stop WORK_DIR" >&2; exit 2 ;;
esac
MODEL=$2 WORK=$3 PORT=$4 WORKERS=${5:-2} THREADS=${6:-1}
source scripts/env.sh
mkdir -p "$WORK/store" "$WORK/logs"
python scripts/torchscript_anchor.py "$MODEL" 0.1 "$THREADS" "$WORK/model.pt" >/dev/null
"$TS/torch-model-archiver" --model-name seq --version 1.0 --serialized-file "$WORK/model.pt" \
    --handler scripts/torchserve_handler.py --extra-files "$MODEL/items.txt,$MODEL/model.json" \
    --export-path "$WORK/store" --force
cat >"$WORK/config.properties" <<CFG
inference_address=http://127.0.0.1:$PORT
management_address=http://127.0.0.1:$((PORT + 1))
metrics_address=http://127.0.0.1:$((PORT + 2))
model_store=$WORK/store
disable_token_authorization=true
enable_model_api=false
default_workers_per_model=$WORKERS
number_of_netty_threads=2
job_queue_size=4096
install_py_dep_per_model=false
models={"seq": {"1.0": {"defaultVersion": true, "marName": "seq.mar", "minWorkers": $WORKERS, "maxWorkers": $WORKERS, "batchSize": 32, "maxBatchDelay": 5, "responseTimeout": 120}}}
CFG
export SEQSERVE_TS_THREADS=$THREADS LOG_LOCATION=$WORK/logs METRICS_LOCATION=$WORK/logs
"$TS/torchserve" --stop >/dev/null 2>&1 || true
(cd "$WORK" && PATH="$TS:$PATH" "$TS/torchserve" --start --ncs --disable-token-auth \
    --model-store "$WORK/store" --ts-config "$WORK/config.properties" --models seq=seq.mar \
    >"$WORK/logs/start.out" 2>&1)
for _ in $(seq 1 240); do
    if curl -fsS -m 5 -H 'Content-Type: application/json' -d '{"history": [], "k": 10}' \
        "http://127.0.0.1:$PORT/predictions/seq" >/dev/null 2>&1; then
        echo "[torchserve] ready on port $PORT ($WORKERS workers x $THREADS threads)" >&2
        exit 0
    fi
    sleep 0.5
done
echo "[torchserve] did not answer within 120 s; its logs: $WORK/logs" >&2
tail -20 "$WORK/logs/"*.log >&2 || true
exit 1
