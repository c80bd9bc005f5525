#!/usr/bin/env bash
# Reproduces the shipped models in models/ from ../shared/data (the exact command is also recorded in
# each model.json under training.command).
# Usage: scripts/train-models.sh [NAME ...]   (default: every model below, in order)
#        scripts/train-models.sh --print NAME   (NAME's train flags without --out/--force, for
#        scripts/bench-recipes.sh, which times an epoch of each recipe)
#        scripts/train-models.sh --list         (the models' names, one line)
set -euo pipefail
cd "$(dirname "$0")/.."
PRINT=""
if [ "${1:-}" = --list ]; then LIST=1; else LIST=""; fi
if [ "${1:-}" = --print ]; then PRINT=1; shift; [ $# -eq 1 ] || { echo "--print takes one NAME" >&2; exit 1; }; fi
if [ -z "$PRINT$LIST" ]; then
  source scripts/env.sh
  cargo build --release --quiet
fi
D=../shared/data
[ -d "$D" ] || { echo "../shared/data is absent: the shipped models are trained on it" >&2; exit 1; }
S=target/release/seqserve
# Beauty: the defaults of `seqserve train` are this recipe (README "Training recipe", row 10), with two
# data-parallel threads (faster than one; but only one-thread runs are bit-reproducible). beauty-2l,
# beauty-1l and the leave-last-3 pair were trained so; the ML-1M models have their own recipes below.
# The shipped models were trained before `--logits-precision` (f32); the option's default is bf16
# on CPUs that multiply it natively, so the full-softmax recipes name f32 to reproduce them.
BEAUTY="--data $D/amazon_s3rec/Beauty.txt --threads 2 --logits-precision f32"
# The leave-last-3 Beauty pair was retrained (2026-12-06) with today's defaults, the fused bf16 loss
# included (on a CPU without native bf16 libtorch emulates it: slower, the same arithmetic).
BEAUTY_BF16="--data $D/amazon_s3rec/Beauty.txt --threads 2 --logits-precision bf16"
# ML-1M (ml1m-ctx): the SASRec+ reference's code point by point (README, "ML-1M: the reference's
# code"): SASRec's original blocks, item embeddings x sqrt(d) on input, FFN 64 with ReLU, eps 1e-8,
# positions from the oldest item, dropout 0.1, batch 128 users with a target at every position of
# their last 201 items, random batches, Adam 1e-3 constant, the full softmax over 3,706 items; the
# context head started as the identity. ml1m-ctx retrained 2026-12-07 with --exclude-history (each
# row's softmax without its user's other items, as the reference's negatives), f32 (the CPU of that
# day had no native bf16), to its early stop (epoch 79, best 64); the f32 run of 2026-12-05 (ended
# with --finish at epoch 61, best 55) is models/ml1m-ctx-prev. ml1m-1l, the one-layer twin of that previous run for the
# seed's question, likewise f32 (--stop-after 61, then --finish; best 59).
ML1M_RECIPE="--data $D/ml-1m_diffurec/ml-1m_seq.txt --users $D/ml-1m_diffurec/users.dat --max-len 200 \
      --heads 1 --d-model 64 --ffn-dim 64 --activation relu --dropout 0.1 --norm sasrec \
      --layer-norm-eps 1e-8 --item-input-scale sqrt-d --positions from-oldest --embedding-norm false \
      --init normal-identity-head --targets all --loss full --batch-size 128 --lr 0.001 \
      --batches random --epochs 150 --patience 15"
ML1M="$ML1M_RECIPE --threads 2"
# The leave-last-3 ML-1M pair (retrained 2026-12-07): ml1m-ctx's recipe, --exclude-history
# included, on the leave-last-3 split, one thread each (the two trained side by side). Neither had
# stopped early by epoch 82 (validation F1@10 still creeping up); both were ended there by hand
# (kill, then the same command with --finish) so that the two layer counts had the same 82 epochs.
ML1M_LL3="$ML1M_RECIPE --threads 1 --split leave-last-3 --logits-precision f32 --exclude-history"
ALL="beauty-2l beauty-1l beauty-ll3-2l beauty-ll3-1l ml1m-ctx ml1m-1l ml1m-ll3-2l ml1m-ll3-1l"
if [ -n "$LIST" ]; then echo "$ALL"; exit; fi
[ $# -gt 0 ] || set -- $ALL
# Each model's flags (besides --out and --force).
recipe() {
  case $1 in
    # Leave-one-out (the published protocol): the service's models.
    beauty-2l) echo "$BEAUTY --layers 2" ;;
    beauty-1l) echo "$BEAUTY --layers 1" ;;
    ml1m-ctx)  echo "$ML1M --logits-precision f32 --exclude-history --layers 2" ;;
    ml1m-1l)   echo "$ML1M --logits-precision f32 --layers 1" ;;
    # Leave-last-3 (several relevant items per case, where F1 means something): the architecture
    # comparison of `seqserve evaluate` (README).
    beauty-ll3-2l) echo "$BEAUTY_BF16 --layers 2 --split leave-last-3" ;;
    beauty-ll3-1l) echo "$BEAUTY_BF16 --layers 1 --split leave-last-3" ;;
    ml1m-ll3-2l)   echo "$ML1M_LL3 --layers 2" ;;
    ml1m-ll3-1l)   echo "$ML1M_LL3 --layers 1" ;;
    *) echo "unknown model $1 (known: $ALL)" >&2; return 1 ;;
  esac
}
# Runs ended by hand at a fixed epoch (the pair compared for the seed's question had the same
# budget): trained to that epoch, then the checkpoint's best epoch becomes the model (--finish).
budget() {
  case $1 in
    ml1m-1l) echo 61 ;;
    ml1m-ll3-2l|ml1m-ll3-1l) echo 82 ;;
    *) echo "" ;;
  esac
}
if [ -n "$PRINT" ]; then recipe "$1"; exit; fi
for m in "$@"; do
  flags=$(recipe "$m")
  n=$(budget "$m")
  # shellcheck disable=SC2086 # the flags (and the budget's two words) are words
  $S train $flags --force --out "models/$m" ${n:+--stop-after $n}
  # A run that reached its budget left a checkpoint (an early stop before it has already written
  # the model, and left none): its best epoch becomes the model.
  if [ -n "$n" ] && [ -e "models/$m.checkpoint" ]; then
    $S train $flags --force --out "models/$m" --finish
  fi
done
