# Sourced by the scripts that start a seqserve: `wait_ready PORT SECS [LOG...]` waits up to SECS
# for /health/ready on 127.0.0.1:PORT; if it never answers 200, prints the LOG files and exits 1.
wait_ready() {
    local port=$1 secs=$2
    shift 2
    for _ in $(seq $((secs * 10))); do
        curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && return 0
        sleep 0.1
    done
    echo "seqserve on port $port never became ready" >&2
    [ $# -eq 0 ] || cat "$@" >&2
    exit 1
}
