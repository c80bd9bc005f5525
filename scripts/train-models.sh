#!/usr/bin/env bash
# Reproduces the shipped models in models/ from ../shared/data (the exact commands are also recorded
# in each model.json under training.command). Usage: scripts/train-models.sh [beauty-1l|beauty-2l|ml1m-ctx ...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --quiet
D=../shared/data
[ -d "$D" ] || { echo "../shared/data is absent: the shipped models are trained on it" >&2; exit 1; }
[ $# -gt 0 ] || set -- beauty-2l beauty-1l ml1m-ctx
for m in "$@"; do
  case $m in
    beauty-2l) target/release/seqserve train --data $D/amazon_s3rec/Beauty.txt --out models/beauty-2l \
                 --layers 2 --max-len 50 --d-model 64 --epochs 40 --patience 4 ;;
    beauty-1l) target/release/seqserve train --data $D/amazon_s3rec/Beauty.txt --out models/beauty-1l \
                 --layers 1 --max-len 50 --d-model 64 --epochs 40 --patience 4 ;;
    ml1m-ctx)  target/release/seqserve train --data $D/ml-1m_diffurec/ml-1m_seq.txt --users $D/ml-1m_diffurec/users.dat \
                 --out models/ml1m-ctx --layers 2 --max-len 200 --d-model 64 --dropout 0.2 --batch-size 64 \
                 --epochs 25 --patience 3 ;;
    *) echo "unknown model $m" >&2; exit 1 ;;
  esac
done
