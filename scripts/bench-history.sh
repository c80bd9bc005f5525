#!/usr/bin/env bash
# User-history benchmark: /recommend by user id (Redis) against the same requests with the history
# inline, POST /events into Redis, and the memory store's bytes per user, in one run.
# Usage: scripts/bench-history.sh [MODEL_DIR]   (BENCH_SECONDS=5 per point by default)
# Starts its own redis-server (Debian's, installed when missing) on a free port; stops it after.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
source scripts/need-debian.sh
need_debian redis-server redis-server
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
trap 'kill "$(cat "$dir/redis.pid")" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
echo "redis-server $(redis-server --version | grep -o 'v=[0-9.]*') on port $port (no persistence)"
BENCH_REDIS_URL="redis://127.0.0.1:$port" cargo bench --bench history -- "${1:-models/beauty-2l}"
