# Sourced by the scripts that start a seqserve.
# `poll_ready PORT SECS [PID]` polls /health/ready on 127.0.0.1:PORT for up to SECS: returns 0 once
# it answers 200, 1 as soon as PID (when given) has ended without that, 2 when SECS run out.
poll_ready() {
    local port=$1 secs=$2 pid=${3:-}
    for _ in $(seq $((secs * 10))); do
        curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && return 0
        [ -z "$pid" ] || kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 2
}
# `wait_ready PORT SECS [LOG...]` waits up to SECS for /health/ready on 127.0.0.1:PORT; if it never
# answers 200, prints the LOG files and exits 1.
wait_ready() {
    local port=$1 secs=$2
    shift 2
    poll_ready "$port" "$secs" && return 0
    echo "seqserve on port $port never became ready" >&2
    [ $# -eq 0 ] || cat "$@" >&2
    exit 1
}
