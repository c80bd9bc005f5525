#!/usr/bin/env bash
# Verifies GET /openapi.json against the running server with schemathesis (run by .ci/run): every
# operation, every check (server errors, status codes, content types, headers, response schema
# conformance, negative data rejected, positive data accepted, auth, methods, use after delete),
# in every phase (examples, coverage, fuzzing, stateful via the document's links). Any failure
# fails. Once per shipped model kind (the document changes with the default model): ml1m-ctx
# (context features) and beauty-2l (none), each served from a repository at two versions, so
# loading, switching, splitting and unloading are exercised for real; see scripts/schemathesis.toml.
# Usage: scripts/check-openapi.sh [SEQSERVE_BINARY]   (default target/debug/seqserve, built if missing)
# Env: OPENAPI_MODELS (default "ml1m-ctx beauty-2l"), OPENAPI_EXAMPLES (per operation, default 100),
#      OPENAPI_SEED (default fixed, so a run is reproducible).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$(realpath -m "${1:-target/debug/seqserve}")
PORT=${OPENAPI_PORT:-18590}
EXAMPLES=${OPENAPI_EXAMPLES:-100}
SEED=${OPENAPI_SEED:-20261202}
TOOLS=$(bash scripts/ops-tools.sh api)
source scripts/wait-ready.sh
if [ ! -x "$BIN" ]; then
    source scripts/env.sh
    cargo build --quiet
fi

WORK=$(mktemp -d)
SEQ=
trap 'kill $SEQ 2>/dev/null || true; rm -rf "$WORK"' EXIT
TOTAL=0
for MODEL in ${OPENAPI_MODELS:-ml1m-ctx beauty-2l}; do
    W=$WORK/$MODEL
    mkdir -p "$W/repo/$MODEL" "$W/holdouts"
    ln -s "$ROOT/models/$MODEL" "$W/repo/$MODEL/1"
    ln -s "$ROOT/models/$MODEL" "$W/repo/$MODEL/2"
    sed "s/@MODEL@/$MODEL/" scripts/schemathesis.toml >"$W/schemathesis.toml"
    python3 - "models/$MODEL/items.txt" "$W/holdouts/small.jsonl" "$W/items.dict" <<'PY'
import json, random, sys
items = [l.strip() for l in open(sys.argv[1]) if l.strip()]
with open(sys.argv[3], "w") as f:
    f.writelines(json.dumps(i) + "\n" for i in items)
rng = random.Random(7)
with open(sys.argv[2], "w") as f:
    for _ in range(20):
        f.write(json.dumps({"history": rng.sample(items, 5), "relevant": rng.sample(items, 1)}) + "\n")
PY
    # Evaluations of more than 2 cases become jobs (202), so the stateful phase follows the links
    # to poll, cancel and delete them.
    SEQSERVE__ADMIN__TOKEN=openapi SEQSERVE__ADMIN__HOLDOUT_DIR="$W/holdouts" \
        SEQSERVE__ADMIN__MAX_INLINE_CASES=2 "$BIN" serve \
        --host 127.0.0.1 --port "$PORT" --repository "$W/repo" --device cpu --log-format json \
        2>"$W/seqserve.log" &
    SEQ=$!
    wait_ready "$PORT" 60 "$W/seqserve.log"

    # From the work directory: schemathesis' and hypothesis' example databases start empty each
    # run, so a run is what its seed makes it, here as in CI.
    set +e
    (cd "$W" && "$TOOLS/schemathesis" --config-file "$W/schemathesis.toml" run \
        "http://127.0.0.1:$PORT/openapi.json" --url "http://127.0.0.1:$PORT" \
        -H "Authorization: Bearer openapi" --checks all --max-examples "$EXAMPLES" \
        --seed "$SEED" --workers 1 --no-color) >"$W/schemathesis.log" 2>&1
    RC=$?
    set -e
    if [ $RC -ne 0 ]; then
        cat "$W/schemathesis.log"
        echo "--- seqserve log (last 40 lines)"; tail -40 "$W/seqserve.log"
        echo "[openapi] $MODEL: schemathesis FAILED (rc $RC)"; exit 1
    fi
    kill -0 $SEQ || { echo "[openapi] $MODEL: seqserve died during the run"; tail -40 "$W/seqserve.log"; exit 1; }
    kill $SEQ; wait $SEQ 2>/dev/null || true; SEQ=
    grep -E 'Operations:|Coverage|Fuzzing|Stateful|Scenarios|API Links|generated|Warnings|⚠' "$W/schemathesis.log" || true
    CASES=$(grep -oE '[0-9]+ generated' "$W/schemathesis.log" | tail -1 | cut -d' ' -f1)
    OPS=$(grep -oE 'Tested: [0-9]+' "$W/schemathesis.log" | tail -1 | cut -d' ' -f2)
    TOTAL=$((TOTAL + CASES))
    echo "[openapi] $MODEL: schemathesis passed: $OPS operations, $CASES test cases, all checks, 0 failures (seed $SEED)"
done
echo "[openapi] all models: $TOTAL test cases, 0 failures"
