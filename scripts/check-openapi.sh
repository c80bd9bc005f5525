#!/usr/bin/env bash
# Verifies GET /openapi.json against the running server with schemathesis (run by .ci/run): every
# operation, every check (server errors, status codes, content types, headers, response schema
# conformance, negative data rejected, positive data accepted, auth, methods), in every phase
# (examples, coverage, fuzzing, stateful via the document's links). Any failure fails. The server
# runs a repository of one model (ml1m-ctx: context features) at two versions, so loading,
# switching, splitting and unloading are exercised for real; see scripts/schemathesis.toml.
# Usage: scripts/check-openapi.sh [SEQSERVE_BINARY]   (default target/debug/seqserve, built if missing)
# Env: OPENAPI_EXAMPLES (per operation, default 100), OPENAPI_SEED (default fixed: reproducible).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/debug/seqserve}
PORT=${OPENAPI_PORT:-18590}
EXAMPLES=${OPENAPI_EXAMPLES:-100}
SEED=${OPENAPI_SEED:-20261202}
TOOLS=$(bash scripts/ops-tools.sh api)
if [ ! -x "$BIN" ]; then
    source scripts/env.sh
    cargo build --quiet
fi

WORK=$(mktemp -d)
SEQ=
trap 'kill $SEQ 2>/dev/null || true; rm -rf "$WORK"' EXIT
MODEL=ml1m-ctx
mkdir -p "$WORK/repo/$MODEL" "$WORK/holdouts"
ln -s "$PWD/models/$MODEL" "$WORK/repo/$MODEL/1"
ln -s "$PWD/models/$MODEL" "$WORK/repo/$MODEL/2"
cp scripts/schemathesis.toml "$WORK/"
python3 - "models/$MODEL/items.txt" "$WORK/holdouts/small.jsonl" "$WORK/items.dict" <<'PY'
import json, random, sys
items = [l.strip() for l in open(sys.argv[1]) if l.strip()]
with open(sys.argv[3], "w") as f:
    f.writelines(json.dumps(i) + "\n" for i in items)
rng = random.Random(7)
with open(sys.argv[2], "w") as f:
    for _ in range(20):
        f.write(json.dumps({"history": rng.sample(items, 5), "relevant": rng.sample(items, 1)}) + "\n")
PY

# Evaluations of more than 2 cases become jobs (202), so the stateful phase follows the links to
# poll and cancel them.
SEQSERVE__ADMIN__TOKEN=openapi SEQSERVE__ADMIN__HOLDOUT_DIR="$WORK/holdouts" \
    SEQSERVE__ADMIN__MAX_INLINE_CASES=2 "$BIN" serve \
    --host 127.0.0.1 --port "$PORT" --repository "$WORK/repo" --device cpu --log-format json \
    2>"$WORK/seqserve.log" &
SEQ=$!
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null || { cat "$WORK/seqserve.log"; exit 1; }


set +e
# From the work directory: schemathesis' and hypothesis' example databases start empty each run,
# so a run is what its seed makes it, here as in CI.
cd "$WORK"
"$TOOLS/schemathesis" --config-file "$WORK/schemathesis.toml" run \
    "http://127.0.0.1:$PORT/openapi.json" --url "http://127.0.0.1:$PORT" \
    -H "Authorization: Bearer openapi" --checks all --max-examples "$EXAMPLES" \
    --seed "$SEED" --workers "${OPENAPI_WORKERS:-1}" --no-color >"$WORK/schemathesis.log" 2>&1
RC=$?
set -e
if [ $RC -ne 0 ]; then
    cat "$WORK/schemathesis.log"
    echo "--- seqserve log (last 40 lines)"; tail -40 "$WORK/seqserve.log"
    echo "[openapi] schemathesis FAILED (rc $RC)"; exit 1
fi
cd - >/dev/null
kill -0 $SEQ || { echo "[openapi] seqserve died during the run"; tail -40 "$WORK/seqserve.log"; exit 1; }
cat "$WORK/schemathesis.log"
CASES=$(grep -oE '[0-9]+ generated' "$WORK/schemathesis.log" | tail -1)
OPS=$(grep -oE 'Tested: [0-9]+' "$WORK/schemathesis.log" | tail -1)
echo "[openapi] schemathesis passed: $OPS operations, $CASES test cases, all checks, seed $SEED"
