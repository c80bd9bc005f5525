#!/usr/bin/env bash
# Sets up everything (idempotent; see scripts/setup.sh) and runs the whole test suite.
# Tests that need the real datasets in ../shared/data say so and skip when they are absent.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo test --lib --bins --tests "$@"
