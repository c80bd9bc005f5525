#!/usr/bin/env bash
# Verifies deploy/prometheus and deploy/grafana against real tools (run by .ci/run):
#   1. promtool check config, check rules, test rules (a unit test per alert);
#   2. a real Prometheus (Debian's package, installed if missing) scrapes a running seqserve on the
#      shipped default model under light load (recommendations, a refusal, an evaluation);
#   3. every Grafana panel's PromQL and every alert expression is evaluated through Prometheus' HTTP
#      API: any query error fails, and so does an empty panel result.
# Usage: scripts/check-monitoring.sh [SEQSERVE_BINARY]   (default target/debug/seqserve, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/debug/seqserve}
PORT=${MONITORING_PORT:-18580}
ADMIN=$((PORT + 1))
PROM=$((PORT + 2))

source scripts/need-debian.sh
source scripts/wait-ready.sh
need_debian prometheus prometheus
need_debian promtool prometheus
# The package may start its own server (port 9090) where an init system runs: not ours to keep.
if [ ! -x "$BIN" ]; then
    source scripts/env.sh
    cargo build --quiet
fi

promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml
ALERT_TESTS=$(grep -c '^  - name:' deploy/prometheus/alerts_test.yml)

WORK=$(mktemp -d)
SEQ= PROMPID=
trap 'kill $SEQ $PROMPID 2>/dev/null || true; rm -rf "$WORK"' EXIT

SEQSERVE__ADMIN__TOKEN=monitoring SEQSERVE__ADMIN__PORT=$ADMIN "$BIN" serve --host 127.0.0.1 \
    --port "$PORT" --model models/beauty-2l --device cpu --log-format json 2>"$WORK/seqserve.log" &
SEQ=$!
wait_ready "$PORT" 60 "$WORK/seqserve.log"

cat >"$WORK/prometheus.yml" <<EOF
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ["$PWD/deploy/prometheus/alerts.yml"]
scrape_configs:
  - job_name: seqserve
    static_configs: [{targets: ["127.0.0.1:$ADMIN"]}]
EOF
promtool check config "$WORK/prometheus.yml" >/dev/null
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PROM" >"$WORK/prometheus.log" 2>&1 &
PROMPID=$!

# Light load for ~10 s: recommendations, a refused request, an evaluation (evaluation gauges).
python3 - "$PORT" "$ADMIN" models/beauty-2l/items.txt <<'EOF'
import json, random, sys, time, urllib.request, urllib.error
port, admin, items_file = sys.argv[1], sys.argv[2], sys.argv[3]
items = [l.strip() for l in open(items_file) if l.strip()]
rng = random.Random(1)
def post(url, body, token=None):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
cases = [{"history": rng.sample(items, 5), "relevant": rng.sample(items, 2)} for _ in range(50)]
assert post(f"http://127.0.0.1:{admin}/evaluate", {"cases": cases, "k": [10]}, "monitoring") == 200
assert post(f"http://127.0.0.1:{port}/recommend", {"history": [], "k": 0}) == 422
t0, n = time.time(), 0
while time.time() - t0 < 10:
    assert post(f"http://127.0.0.1:{port}/recommend", {"history": rng.sample(items, 8), "k": 10}) == 200
    n += 1
    time.sleep(0.01)
print(f"[monitoring] load: {n} recommendations, 1 refusal, 1 evaluation of {len(cases)} cases")
EOF

# Every panel query and alert expression through Prometheus' HTTP API.
python3 - "$PROM" deploy/grafana/seqserve.json deploy/prometheus/alerts.yml <<'EOF'
import json, re, sys, time, urllib.parse, urllib.request
prom, dash_file, rules_file = sys.argv[1], sys.argv[2], sys.argv[3]
def query(expr):
    url = f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)
# Prometheus must have scraped the service for a while (rates need several samples).
for _ in range(120):
    r = query('count_over_time(up{job="seqserve"}[1m])')
    if r.get("data", {}).get("result") and float(r["data"]["result"][0]["value"][1]) >= 8:
        break
    time.sleep(0.5)
else:
    sys.exit("prometheus never scraped seqserve 8 times")
assert query('up{job="seqserve"}')["data"]["result"][0]["value"][1] == "1", "target down"
failures, panels = [], 0
dash = json.load(open(dash_file))
for p in dash["panels"]:
    for t in p.get("targets", []):
        panels += 1
        expr = t["expr"].replace("$__rate_interval", "1m")
        r = query(expr)
        if r.get("status") != "success":
            failures.append(f"panel {p['title']!r}: {r.get('error')}")
        elif not r["data"]["result"]:
            failures.append(f"panel {p['title']!r}: empty result for {expr}")
# Alert expressions must evaluate (an alert that is quiet returns nothing, which is fine).
alerts = 0
rules = open(rules_file).read()
with urllib.request.urlopen(f"http://127.0.0.1:{prom}/api/v1/rules", timeout=10) as r:
    loaded = json.load(r)["data"]["groups"]
for g in loaded:
    for rule in g["rules"]:
        alerts += 1
        if rule.get("health") not in ("ok", "unknown"):
            failures.append(f"alert {rule['name']}: {rule.get('lastError')}")
        r = query(rule["query"])
        if r.get("status") != "success":
            failures.append(f"alert {rule['name']}: {r.get('error')}")
if failures:
    print("\n".join(failures))
    sys.exit(f"{len(failures)} of {panels} panel queries / {alerts} alerts failed")
print(f"[monitoring] {panels} panel queries answered with data, {alerts} alert expressions evaluate")
EOF
echo "[monitoring] promtool: config and rules valid, $ALERT_TESTS alert unit tests passed"
