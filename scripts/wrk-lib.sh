# Sourced by the wrk benchmarks (bench-swap.sh, bench-rolling.sh). Needs CONN (connections), WORK
# (holding load.lua, which reads WRK_DELAY_MS) and URL.
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
