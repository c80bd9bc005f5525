#!/usr/bin/env bash
# Trainer speed, before and after, side by side in one run: seconds per epoch of the default Beauty
# recipe (README defaults, nothing but --data) for the trainer at BEFORE (a commit, built in
# target/bench-train/) and at this checkout, alternating, RUNS times each, EPOCHS epochs per run.
# Also the validation metrics of those epochs, so "faster" can be seen not to cost the curve.
# Usage: scripts/bench-train.sh   Env: BEFORE (2990826, the trainer before round 3), RUNS (2),
#        EPOCHS (2), DATA (../shared/data/amazon_s3rec/Beauty.txt), EXTRA (more train flags for both)
# Run it on a quiet machine (pause any training: kill -STOP PID).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
BEFORE=${BEFORE:-2990826}
RUNS=${RUNS:-2}
EPOCHS=${EPOCHS:-2}
DATA=${DATA:-../shared/data/amazon_s3rec/Beauty.txt}
[ -f "$DATA" ] || { echo "bench-train: no $DATA (see ../shared/data/README)" >&2; exit 1; }
cargo build --release --quiet
AFTER_BIN=target/release/seqserve
SRC=target/bench-train/src-$BEFORE
if [ ! -x "target/bench-train/seqserve-$BEFORE" ]; then
    rm -rf "$SRC"
    mkdir -p "$SRC"
    git archive "$BEFORE" | tar -x -C "$SRC"
    # Its own target dir (shared across runs), so the checkout's build is not disturbed.
    (cd "$SRC" && CARGO_TARGET_DIR="$PWD/../target" cargo build --release --quiet --bin seqserve)
    cp target/bench-train/target/release/seqserve "target/bench-train/seqserve-$BEFORE"
    rm -rf "$SRC"
fi
BEFORE_BIN=target/bench-train/seqserve-$BEFORE
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
run() { # label binary n -> prints one row per epoch
    local label=$1 bin=$2 n=$3
    "$bin" train --data "$DATA" ${EXTRA:-} --stop-after "$EPOCHS" --skip-test --out "$WORK/$label-$n" \
        > "$WORK/$label-$n.log" 2>&1 || { tail -5 "$WORK/$label-$n.log" >&2; exit 1; }
    grep -E '^epoch +[0-9]+ +loss' "$WORK/$label-$n.log" | sed -E \
        's/^epoch +([0-9]+) +loss ([0-9.]+) +train ([0-9.]+)s.*hr@10 ([0-9.]+) +ndcg@10 ([0-9.]+).*/\1 \2 \3 \4 \5/' |
        while read -r e loss secs hr ndcg; do
            echo "| $label | $n | $e | $secs | $loss | $hr | $ndcg |"
        done
}
echo "# trainer speed: $BEFORE vs $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes'), $(nproc) CPUs, $DATA"
echo
echo "| trainer | run | epoch | train s | loss | valid HR@10 | valid NDCG@10 |"
echo "|---|---|---|---|---|---|---|"
for n in $(seq "$RUNS"); do
    run before "$BEFORE_BIN" "$n" | tee -a "$WORK/rows"
    run after "$AFTER_BIN" "$n" | tee -a "$WORK/rows"
done
python3 - "$WORK/rows" <<'PY'
import statistics, sys
rows = [l.strip("|\n ").split(" | ") for l in open(sys.argv[1])]
secs = {k: [float(r[3]) for r in rows if r[0] == k] for k in ("before", "after")}
b, a = statistics.median(secs["before"]), statistics.median(secs["after"])
print(f"\nmedian s/epoch: before {b:.1f} (min {min(secs['before']):.1f}, max {max(secs['before']):.1f}), "
      f"after {a:.1f} (min {min(secs['after']):.1f}, max {max(secs['after']):.1f}): {b / a:.2f}x faster (target >= 3x)")
PY
