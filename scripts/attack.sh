#!/usr/bin/env bash
# Attack and operations probes (benches/attack.rs) against a seqserve binary on loopback: heavy
# bodies, an evaluation flood, half-open connections, drain timeout, readiness during drain, log
# volume under a 429 flood. Every loop is bounded; the whole run takes about 2 minutes.
# Usage: scripts/attack.sh [BINARY]   (default: target/release/seqserve, built first)
#        ATTACK_ONLY=heavy,drain scripts/attack.sh   (a subset: heavy eval-flood half-open drain drain-ready log-flood)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --quiet
BIN=${1:-target/release/seqserve}
exec cargo bench --quiet --bench attack -- "$BIN"
