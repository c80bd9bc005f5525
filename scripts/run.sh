#!/usr/bin/env bash
# Sets up everything (idempotent; see scripts/setup.sh), builds the release binary and runs seqserve.
# With no arguments: recommends for an example history from the shipped default model.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --quiet
if [ $# -eq 0 ]; then
  set -- recommend --model models/beauty-2l --history 1,2,3 --k 10
fi
exec target/release/seqserve "$@"
