# Sourced by the wrk benchmarks (bench-swap.sh, bench-rolling.sh, bench-threads.sh, bench-ceiling.sh,
# bench.sh's TorchServe comparison). Needs CONN (connections), WORK (where write_load_lua puts
# load.lua) and URL.

# wrk_setup: what a wrk benchmark starts with, from the repository root: wrk installed, wait_ready,
# the project's environment, and a release build in BIN.
wrk_setup() {
    source scripts/need-debian.sh
    source scripts/wait-ready.sh
    need_debian wrk wrk
    source scripts/env.sh
    cargo build --release --quiet
    BIN=target/release/seqserve
}

# write_load_lua ITEMS_FILE SEED [user]: $WORK/load.lua posts 200 bodies (histories of 3 to 20
# distinct catalogue ids, k 10, each with "user": "u<i>" when asked) to WRK_PATH (/recommend unless
# set when wrk runs), pausing WRK_DELAY_MS between a connection's requests. LOAD_LENGTHS=1-50 draws
# 512 histories of 1 to 50 ids with repeats instead, the bench serve binary's load.
write_load_lua() {
    python3 - "$1" "$WORK/load.lua" "$2" "${3:-}" "${LOAD_LENGTHS:-}" <<'EOF'
import json, random, sys
items = [l.strip() for l in open(sys.argv[1]) if l.strip()]
rng = random.Random(int(sys.argv[3]))
bodies = []
lengths = tuple(map(int, sys.argv[5].split("-"))) if sys.argv[5] else None
for i in range(512 if lengths else 200):
    if lengths:
        history = [rng.choice(items) for _ in range(rng.randint(*lengths))]
    else:
        history = rng.sample(items, rng.randint(3, 20))
    body = {"history": history, "k": 10}
    if sys.argv[4] == "user":
        body["user"] = f"u{i}"
    bodies.append(json.dumps(body))
with open(sys.argv[2], "w") as f:
    f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
    f.write("local bodies = {\n" + ",\n".join("[==[%s]==]" % b for b in bodies) + "\n}\n")
    f.write("local n = 0\nlocal pause = tonumber(os.getenv('WRK_DELAY_MS') or '0')\n")
    f.write("local path = os.getenv('WRK_PATH') or '/recommend'\n")
    f.write("request = function()\n  n = n + 1\n  return wrk.format(nil, path, nil, bodies[(n % #bodies) + 1])\nend\n")
    # wrk truncates delays to whole ms: carry the fraction so the mean delay is exact.
    f.write("local carry = 0\ndelay = function()\n  carry = carry + pause\n  local d = math.floor(carry)\n  carry = carry - d\n  return d\nend\n")
EOF
}

wrk_run() { # seconds delay_ms -> wrk output
    WRK_DELAY_MS=$2 wrk -t1 -c"$CONN" -d"$1"s --latency -s "$WORK/load.lua" "$URL" 2>&1
}
rate() { awk '/^Requests\/sec/ {print $2}'; }
p99() { awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub("us","",v); v/=1000} else if (v ~ /ms$/) {sub("ms","",v)} else if (v ~ /s$/) {sub("s","",v); v*=1000}; print v}'; }
non2xx() { awk '/Non-2xx/ {print $NF; f=1} END {if (!f) print 0}'; }
sockerr() { awk '/Socket errors/ {sub(/^ +/, ""); print; f=1} END {if (!f) print "none"}'; }
requests() { awk '/requests in/ {print $1}'; }

# Sets MAX (the closed-loop rate), TARGET (half of it) and DELAY (the per-connection pause that paces
# CONN connections to TARGET: a request every CONN/TARGET s, less the latency seen at the last pace,
# as rate = CONN / (delay + latency)), calibrated in four 5-second steps.
pace_to_half_rate() {
    wrk_run 2 0 >/dev/null
    MAX=$(wrk_run 10 0 | rate)
    TARGET=$(python3 -c "print($MAX / 2)")
    DELAY=$(python3 -c "print(round($CONN / $TARGET * 1000, 3))")
    local got
    for _ in 1 2 3 4; do
        got=$(wrk_run 5 "$DELAY" | rate)
        echo "calibration: delay ${DELAY} ms -> ${got} req/s" >&2
        DELAY=$(python3 -c "lat = $CONN / $got * 1000 - $DELAY; print(round(max(0.0, $CONN / $TARGET * 1000 - lat), 3))")
    done
}
