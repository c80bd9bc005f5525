#!/usr/bin/env bash
# Sets up everything (idempotent; see scripts/setup.sh), builds the release binary and runs seqserve.
# With no arguments: serves the shipped default model (models/beauty-2l) on 0.0.0.0:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --quiet
if [ $# -eq 0 ]; then
  set -- serve
fi
exec target/release/seqserve "$@"
