#!/usr/bin/env bash
# Rolling restart under load: two seqserve replicas behind nginx configured as deploy/nginx.conf;
# wrk drives POST /recommend through nginx at half the maximum rate while the replicas are
# restarted one at a time (SIGTERM, wait for the exit, start again, wait until ready) RESTARTS
# times. Gate: every request answered 2xx, no socket error at the client. Compared with a run at
# the same rate without restarts.
#
# Replicas: the CPU image (localhost/seqserve:VERSION, built by scripts/build-image.sh if missing)
# run with `buildah run --isolation chroot`, which shares the host's network and process
# namespaces: each replica is the image's own entrypoint and command (the shipped model, the
# image's seqserve.toml) with SEQSERVE__SERVER__HOST/PORT set (127.0.0.1:N), and SIGTERM goes to
# its seqserve process as a container runtime's stop would. RUNNER=host runs target/release/seqserve instead.
#
# Usage: scripts/bench-rolling.sh
# Env: RESTARTS (5), STEADY_SECONDS (30), CONNECTIONS (64), READY_GAP_SECONDS (3: after a replica
#      is ready, before the next one stops; more than nginx's fail_timeout), PORT_BASE (18560),
#      RUNNER (image | host), RETRY_POST (1; 0 renders deploy/nginx.conf without `non_idempotent`,
#      to see what it is for: the gate then fails)
set -euo pipefail
cd "$(dirname "$0")/.."
RESTARTS=${RESTARTS:-5}
STEADY=${STEADY_SECONDS:-30}
CONN=${CONNECTIONS:-64}
GAP=${READY_GAP_SECONDS:-3}
PORT_BASE=${PORT_BASE:-18560}
RUNNER=${RUNNER:-image}
RETRY_POST=${RETRY_POST:-1}
NGINX_PORT=$PORT_BASE
PORTS=($((PORT_BASE + 1)) $((PORT_BASE + 2)))

source scripts/need-debian.sh
source scripts/wait-ready.sh
need_debian wrk wrk
need_debian nginx nginx
source scripts/image-lib.sh # listener_pid, and the image tools when RUNNER=image
case "$RUNNER" in
    image)
        IMAGE=$(image_tag cpu)
        image_exists "$IMAGE" || scripts/build-image.sh cpu >/dev/null
        mapfile -t SERVE < <(image_command "$IMAGE")
        ;;
    host)
        source scripts/env.sh
        cargo build --release --quiet
        SERVE=(target/release/seqserve serve --config deploy/seqserve.toml)
        ;;
    *) echo "RUNNER is image or host" >&2; exit 2 ;;
esac

WORK=$(mktemp -d)
CTR=() JOB=() WRK= NGINX=
cleanup() {
    [ -z "$WRK" ] || kill "$WRK" 2>/dev/null || true
    for i in 0 1; do
        pid=$(listener_pid "${PORTS[$i]}")
        [ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null || true
    done
    [ -z "$NGINX" ] || kill -QUIT "$NGINX" 2>/dev/null || true
    wait 2>/dev/null || true
    for c in "${CTR[@]}"; do bah rm "$c" >/dev/null 2>&1 || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
if [ "$RUNNER" = image ]; then
    for i in 0 1; do CTR[i]=$(bah from --pull=never --name "seqserve-rolling-$$-$i" "$IMAGE"); done
fi

start_replica() { # INDEX
    local i=$1
    if [ "$RUNNER" = image ]; then
        # As `docker run -e ...`: the image's own command, configured through the environment layer.
        bah run --isolation chroot -e SEQSERVE__SERVER__HOST=127.0.0.1 -e SEQSERVE__SERVER__PORT="${PORTS[$i]}" \
            "${CTR[$i]}" -- "${SERVE[@]}" >>"$WORK/replica-$i.log" 2>&1 &
    else
        "${SERVE[@]}" --host 127.0.0.1 --port "${PORTS[$i]}" >>"$WORK/replica-$i.log" 2>&1 &
    fi
    JOB[i]=$!
}
STOP_TIMES=() START_TIMES=()
restart_replica() { # INDEX
    local i=$1 pid t0 t1 t2 rc=0
    pid=$(listener_pid "${PORTS[$i]}")
    [ -n "$pid" ] || { echo "replica $i has no listener" >&2; exit 1; }
    t0=$(date +%s.%N)
    kill -TERM "$pid"
    wait "${JOB[$i]}" || rc=$?
    t1=$(date +%s.%N)
    [ "$rc" = 0 ] || { echo "replica $i exited $rc after SIGTERM" >&2; tail -20 "$WORK/replica-$i.log" >&2; exit 1; }
    start_replica "$i"
    wait_ready "${PORTS[$i]}" 120 "$WORK/replica-$i.log"
    t2=$(date +%s.%N)
    STOP_TIMES+=("$(python3 -c "print(f'{$t1 - $t0:.2f}')")")
    START_TIMES+=("$(python3 -c "print(f'{$t2 - $t1:.2f}')")")
}

for i in 0 1; do start_replica "$i"; done
for i in 0 1; do wait_ready "${PORTS[$i]}" 120 "$WORK/replica-$i.log"; done

# nginx with deploy/nginx.conf, its placeholders filled in.
python3 - deploy/nginx.conf "$WORK/nginx.conf" "$NGINX_PORT" "$WORK" "$RETRY_POST" "${PORTS[@]}" <<'EOF'
import sys
src, dst, listen, logdir, retry_post, *ports = sys.argv[1:]
out = []
for line in open(src):
    if "@SEQSERVE_REPLICA@" in line:
        out += [line.replace("@SEQSERVE_REPLICA@", f"127.0.0.1:{p}") for p in ports]
        continue
    line = line.replace("@LISTEN@", f"127.0.0.1:{listen}").replace("@LOG_DIR@", logdir)
    if retry_post == "0" and not line.lstrip().startswith("#"):
        line = line.replace(" non_idempotent", "")
    out.append(line)
open(dst, "w").writelines(out)
EOF
nginx -t -q -c "$WORK/nginx.conf" -p "$WORK" -e "$WORK/error.log" -g "pid $WORK/nginx.pid;"
nginx -c "$WORK/nginx.conf" -p "$WORK" -e "$WORK/error.log" -g "daemon off; pid $WORK/nginx.pid;" &
NGINX=$!
wait_ready "$NGINX_PORT" 10 "$WORK/error.log"
URL="http://127.0.0.1:$NGINX_PORT"

# Request bodies: small histories of real catalogue ids of the image's model.
source scripts/wrk-lib.sh
write_load_lua models/beauty-2l/items.txt 11


# 1. Maximum rate through nginx (closed loop), then pace to half of it.
pace_to_half_rate
echo "runner $RUNNER; max rate through nginx ${MAX} req/s; target ${TARGET} req/s; per-connection delay ${DELAY} ms, ${CONN} connections"

# 2. Steady, no restarts.
STEADY_OUT=$(wrk_run "$STEADY" "$DELAY")
sleep 1.5 # the access log's flush=1s
LOG_MARK=$(wc -l <"$WORK/access.log")
# 3. The same pace while each replica in turn is restarted; wrk is stopped (SIGINT: it prints its
#    summary) a few seconds after the last restart.
# exec: $! is wrk itself, so that the SIGINT below reaches it (sent to a subshell, it would wait
# for wrk's hour to end).
(exec env WRK_DELAY_MS="$DELAY" wrk -t1 -c"$CONN" -d3600s --latency -s "$WORK/load.lua" "$URL") >"$WORK/rolling.txt" 2>&1 &
WRK=$!
W0=$(date +%s.%N)
sleep 3
T0=$(date +%s.%N)
for r in $(seq "$RESTARTS"); do
    restart_replica $(((r - 1) % 2))
    # nginx marked the replica failed when it went away: let fail_timeout (2 s) pass and a request
    # reach it again before the other one goes (what minReadySeconds does in a Deployment).
    sleep "$GAP"
done
T1=$(date +%s.%N)
kill -INT "$WRK"
wait "$WRK" || true
W1=$(date +%s.%N)
WRK=
ROLL_OUT=$(cat "$WORK/rolling.txt")
sleep 1.5 # the access log's flush=1s

S_RATE=$(echo "$STEADY_OUT" | rate); S_P99=$(echo "$STEADY_OUT" | p99)
R_RATE=$(echo "$ROLL_OUT" | rate); R_P99=$(echo "$ROLL_OUT" | p99)
R_SECONDS=$(python3 -c "print(round($W1 - $W0, 1))")
echo
echo "| phase | seconds | requests | req/s | p99 ms | non-2xx | socket errors |"
echo "|---|---|---|---|---|---|---|"
echo "| steady | $STEADY | $(echo "$STEADY_OUT" | requests) | $S_RATE | $S_P99 | $(echo "$STEADY_OUT" | non2xx) | $(echo "$STEADY_OUT" | sockerr) |"
echo "| $RESTARTS restarts | $R_SECONDS | $(echo "$ROLL_OUT" | requests) | $R_RATE | $R_P99 | $(echo "$ROLL_OUT" | non2xx) | $(echo "$ROLL_OUT" | sockerr) |"
echo
echo "p99 ratio restarts/steady: $(python3 -c "print(round($R_P99 / $S_P99, 2))"); restarts took $(python3 -c "print(round($T1 - $T0, 1))") s"
echo "SIGTERM to exit, s: ${STOP_TIMES[*]}"
echo "exit to ready again, s: ${START_TIMES[*]}"
# What nginx saw during the restarts: each attempt's upstream status ("503, 200" = retried).
tail -n +"$((LOG_MARK + 1))" "$WORK/access.log" | python3 -c '
import collections, re, sys
seen = collections.Counter(); retried = 0; total = 0; client = collections.Counter()
for line in sys.stdin:
    m = re.search(r"\" (\d+) .*upstream_status=\"([^\"]*)\"", line)
    if not m:
        continue
    total += 1
    client[m.group(1)] += 1
    attempts = [s.strip() for s in m.group(2).replace(":", ",").split(",")]
    retried += len(attempts) > 1
    for s in attempts[:-1]:
        seen[s] += 1
print(f"nginx during the restarts: {total} requests, client statuses {dict(client)}; {retried} retried on "
      f"the other replica, after {dict(seen) or {}} (502 = connection error or refused; 499 = wrk "
      f"closed the connection when it was stopped, nginx\x27s code, never sent to a client)")'
count() { grep -ciE "$1" "$2" || true; }
E=$WORK/error.log
echo "nginx error log: $(count 'Connection refused' "$E") refused, $(count 'prematurely closed|reset by peer' "$E") closed under a request, $(count 'no live upstreams' "$E") 'no live upstreams'"
for i in 0 1; do
    echo "replica $i log: $(count 'WARN|ERROR' "$WORK/replica-$i.log") warning/error lines"
done

NON2XX=$(echo "$ROLL_OUT" | non2xx)
ERRS=$(echo "$ROLL_OUT" | sockerr)
if [ "$NON2XX" != 0 ] || [ "$ERRS" != none ] || [ "$(echo "$STEADY_OUT" | non2xx)" != 0 ]; then
    echo "FAILED: requests lost during the rolling restart (non-2xx $NON2XX, socket errors: $ERRS)"
    exit 1
fi
echo "PASSED: every request during $RESTARTS restarts answered 2xx, no socket errors"
