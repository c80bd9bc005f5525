#!/usr/bin/env bash
# Seconds per epoch of each shipped model's recipe (scripts/train-models.sh --print NAME) with this
# checkout's trainer on this machine, beside what the model's manifest recorded when it was trained
# (often while other work shared the cores). EPOCHS epochs of each, the test split not read.
# Usage: scripts/bench-recipes.sh [NAME ...]   Env: EPOCHS (2)
# Run it on a quiet machine (pause any training: kill -STOP PID).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
EPOCHS=${EPOCHS:-2}
[ -d ../shared/data ] || { echo "bench-recipes: no ../shared/data (the recipes train on it)" >&2; exit 1; }
cargo build --release --quiet
S=target/release/seqserve
# shellcheck disable=SC2046 # the names are words
[ $# -gt 0 ] || set -- $(scripts/train-models.sh --list)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "# s/epoch of each shipped recipe: $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes'), $(nproc) CPUs, $EPOCHS epochs each"
echo
echo "| model | train s per epoch (this run) | epoch s with validation (this run) | manifest train s/epoch (as trained) |"
echo "|---|---|---|---|"
for m in "$@"; do
    flags=$(scripts/train-models.sh --print "$m")
    # shellcheck disable=SC2086 # the flags are words
    $S train $flags --stop-after "$EPOCHS" --skip-test --out "$WORK/$m" >"$WORK/$m.log" 2>&1 ||
        { tail -5 "$WORK/$m.log" >&2; exit 1; }
    # One pass over the epoch lines: "train/train total/total".
    read -r train total < <(sed -nE 's/^epoch +[0-9]+ +loss .* train ([0-9.]+)s +total ([0-9.]+)s.*/\1 \2/p' \
        "$WORK/$m.log" | awk '{t = t sep $1; v = v sep $2; sep = "/"} END {print t, v}')
    recorded=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["training"]["seconds_per_epoch"])' \
        "models/$m/model.json" 2>/dev/null || echo "-")
    echo "| $m | $train | $total | $recorded |"
done
