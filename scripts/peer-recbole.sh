#!/usr/bin/env bash
# A peer from elsewhere: RecBole's SASRec with its documented defaults (sasrec.yaml and RecBole's
# overall defaults: 2 layers, 2 heads, hidden 64, inner 256, dropout 0.5/0.5, GELU, max length 50,
# Adam 1e-3, batch 2048, CE loss over all items, up to 300 epochs, early stop after 10 without a
# better validation MRR@10), trained on the full Beauty file with seqserve's leave-one-out split
# (RecBole's LS split ordered by time: the last item of each user is test, the one before it
# validation; each event's place in its user's line is its timestamp), imported with `seqserve import
# recbole`, and compared with the shipped models/beauty-2l by `seqserve evaluate` on the holdout
# `seqserve holdout --split leave-one-out` cuts (paired tests). Outside CI: RecBole's epochs took
# 275-410 s each on a shared 2-core machine, so a run to its early stop takes many hours. It can be
# stopped at any time (Ctrl-C, kill, `timeout`) and run again with the same OUT: the training goes on
# from its last finished epoch (recbole_tool.py train --resumable, OUT/saved/last.pth). Nothing is
# committed; everything lands in $OUT.
#
# Usage: scripts/peer-recbole.sh [OUT]   (default target/peer-recbole)
#   SEQSERVE=path/to/seqserve   a built binary (default: cargo build --release)
#   PEER_EPOCHS=N               fewer epochs than RecBole's 300 (a quick look)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
OUT=${1:-target/peer-recbole}
BEAUTY=../shared/data/amazon_s3rec/Beauty.txt
[ -f "$BEAUTY" ] || { echo "$BEAUTY is absent (../shared/data)" >&2; exit 1; }
if [ -z "${SEQSERVE:-}" ]; then cargo build --release --quiet; SEQSERVE=target/release/seqserve; fi
RECBOLE=$(bash scripts/ops-tools.sh recbole)/python
export SEQSERVE_RECBOLE_PYTHON=$RECBOLE
TOOL=$PWD/tests/python/recbole_tool.py
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
say() { echo "[peer-recbole] $*" >&2; }

"$RECBOLE" "$TOOL" atomic "$BEAUTY" "$OUT/data" beauty >/dev/null
EPOCHS=()
[ -n "${PEER_EPOCHS:-}" ] && EPOCHS=(--set "epochs=$PEER_EPOCHS")
# A finished training in OUT is reused (the import and evaluation can be rerun alone).
if ! grep -q checkpoint "$OUT/recbole-result.json" 2>/dev/null; then
    say "training RecBole SASRec (log: $OUT/train.log)"
    # Only the data, the split and the metric list are set; RecBole's defaults otherwise (its
    # default validation metric MRR@10 picks the epoch).
    start=$(date +%s)
    (cd "$OUT" && nice "$RECBOLE" "$TOOL" train data beauty saved \
        --set 'metrics=["Recall","MRR","NDCG","Hit","Precision"]' --set 'valid_metric="MRR@10"' \
        --set 'topk=[10,20]' "${EPOCHS[@]}" --resumable \
        >"$OUT/recbole-result.json.tmp" 2>>"$OUT/train.log")
    mv "$OUT/recbole-result.json.tmp" "$OUT/recbole-result.json"
    say "trained in $(( $(date +%s) - start )) s (this sitting)"
fi
say "RecBole's own result: $(cat "$OUT/recbole-result.json")"
CKPT=$OUT/$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["checkpoint"])' "$OUT/recbole-result.json")

"$SEQSERVE" import recbole --checkpoint "$CKPT" --dataset-dir "$OUT/data/beauty" \
    --out "$OUT/recbole-sasrec" --force
"$SEQSERVE" holdout --data "$BEAUTY" --split leave-one-out --out "$OUT/beauty-loo.jsonl"
# Our protocol (seen items masked) for the paired comparison; RecBole's (nothing masked but its
# padding item) for the one comparison with the figures RecBole reports itself.
"$SEQSERVE" evaluate --model models/beauty-2l --model "$OUT/recbole-sasrec" \
    --holdout "$OUT/beauty-loo.jsonl" --k 5,10,20 --json "$OUT/evaluate-masked.json" \
    | tee "$OUT/evaluate-masked.txt"
"$SEQSERVE" evaluate --model models/beauty-2l --model "$OUT/recbole-sasrec" \
    --holdout "$OUT/beauty-loo.jsonl" --k 5,10,20 --no-mask-seen --json "$OUT/evaluate-unmasked.json" \
    | tee "$OUT/evaluate-unmasked.txt"
say "done: $OUT"
