#!/usr/bin/env bash
# Attack and operations probes (benches/attack.rs) against a seqserve binary on loopback: heavy
# bodies, an evaluation flood, half-open connections, drain timeout, readiness during drain, log
# volume under a 429 flood; and round 2 (benches/attack/round2.rs): manifests that lie about their
# sizes, 1,000 load/unload cycles, stalled uploads and headers, overload goodput, small findings.
# Every loop is bounded; the whole run takes about 8 minutes.
# Usage: scripts/attack.sh [BINARY]   (default: target/release/seqserve, built first)
#        ATTACK_ONLY=heavy,drain scripts/attack.sh   (a subset: heavy eval-flood half-open drain
#            drain-ready log-flood bad-manifest swap-leak stalled overload small)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --quiet
BIN=${1:-target/release/seqserve}
exec cargo bench --quiet --bench attack -- "$BIN"
