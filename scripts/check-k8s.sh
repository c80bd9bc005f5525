#!/usr/bin/env bash
# Verifies k8s/ (run by .ci/run):
#   1. kubectl kustomize k8s/ renders what `kubectl apply -k k8s/` applies, and every manifest in
#      k8s/ is one of its resources (a new file cannot be left out of the kustomization);
#   2. kubernetes-validate --strict, the files and the rendered output, against every supported
#      Kubernetes version (1.29, the documented minimum, to 1.37), and 1.28 must fail;
#   3. checkov with zero failures on the directory and on the rendered output (each skip is
#      justified in a comment beside its annotation in the manifest);
#   4. the rollout and shutdown settings agree with the ConfigMap's server.drain_timeout_secs and
#      drain_announce_ms, and the Redis URL comes from a key the Secret has.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(bash scripts/ops-tools.sh)
MIN=29 MAX=37
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
mapfile -t FILES < <(ls k8s/*.yaml | grep -v '/kustomization.yaml$')

"$BIN/kubectl" kustomize k8s >"$OUT/rendered.yaml"
python3 - "$OUT/rendered.yaml" "${FILES[@]}" <<'EOF_PY'
import sys
rendered, files = sys.argv[1], sys.argv[2:]
listed = [l.strip()[2:] for l in open("k8s/kustomization.yaml") if l.strip().startswith("- ")]
missing = [f for f in files if f.split("/", 1)[1] not in listed]
if missing:
    sys.exit(f"[k8s] not in k8s/kustomization.yaml's resources: {missing}")
docs = [d for d in open(rendered).read().split("\n---\n") if d.strip()]
print(f"[k8s] kubectl kustomize k8s: {len(docs)} resources from {len(files)} files")
EOF_PY

for minor in $(seq $MIN $MAX); do
    "$BIN/kubernetes-validate" --strict --quiet -k "1.$minor.0" "${FILES[@]}" "$OUT/rendered.yaml"
done
echo "[k8s] kubernetes-validate --strict: ${#FILES[@]} files and the kustomize output valid for Kubernetes 1.$MIN to 1.$MAX"
# The one version below the minimum must fail (the preStop sleep action), or the documented
# minimum is out of date.
if "$BIN/kubernetes-validate" --strict --quiet -k "1.$((MIN - 1)).0" "$OUT/rendered.yaml" >/dev/null 2>&1; then
    echo "[k8s] the manifests also validate for 1.$((MIN - 1)): lower the documented minimum" >&2
    exit 1
fi
# --skip-download: checkov otherwise asks a remote service for guideline links (no network here).
for target in "-d k8s" "-f $OUT/rendered.yaml"; do
    # shellcheck disable=SC2086
    "$BIN/checkov" $target --framework kubernetes --compact --quiet --skip-download -o cli | tee "$OUT/checkov.txt"
    grep -q "Failed checks: 0," "$OUT/checkov.txt" || { echo "[k8s] checkov found failures ($target)" >&2; exit 1; }
    echo "[k8s] checkov ${target%% *}: $(grep -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' "$OUT/checkov.txt")"
done

# 4. Consistency of what the rendered manifests say (read with checkov's own PyYAML).
"$BIN/python" - "$OUT/rendered.yaml" <<'EOF_PY'
import sys, tomllib, yaml
docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
dep = docs[("Deployment", "seqserve")]
cfg = tomllib.loads(docs[("ConfigMap", "seqserve-config")]["data"]["seqserve.toml"])
secret = docs[("Secret", "seqserve-admin")]
server = cfg.get("server", {})
drain = server.get("drain_timeout_secs", 30)
announce_ms = server.get("drain_announce_ms", 1000)
ru = dep["spec"]["strategy"]["rollingUpdate"]
pod = dep["spec"]["template"]["spec"]
c = next(c for c in pod["containers"] if c["name"] == "seqserve")
pre = c["lifecycle"]["preStop"]["sleep"]["seconds"]
grace = pod["terminationGracePeriodSeconds"]
problems = []
if (ru.get("maxUnavailable"), ru.get("maxSurge")) != (0, 1):
    problems.append(f"rollingUpdate is {ru}, not maxUnavailable 0 / maxSurge 1")
# SIGKILL must never cut a drain that is within its own bound, with a few seconds to spare.
if grace < pre + drain + 5:
    problems.append(f"terminationGracePeriodSeconds {grace} < preStop {pre} + drain_timeout_secs {drain} + 5")
# The 503 announcement must fit in the drain bound.
if announce_ms / 1000 >= drain:
    problems.append(f"drain_announce_ms {announce_ms} does not fit in drain_timeout_secs {drain}")
if pre < 1:
    problems.append("preStop sleep < 1 s: endpoints cannot drop the pod before SIGTERM")
env = {e["name"]: e for e in c.get("env", [])}
ref = env.get("SEQSERVE__HISTORY__URL", {}).get("valueFrom", {}).get("secretKeyRef", {})
keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
if ref.get("name") != "seqserve-admin" or ref.get("key") not in keys:
    problems.append(f"SEQSERVE__HISTORY__URL must come from a key of Secret seqserve-admin ({ref}, keys {keys})")
if problems:
    sys.exit("[k8s] " + "\n[k8s] ".join(problems))
print(f"[k8s] shutdown: preStop {pre} s + drain_timeout_secs {drain} s (announce {announce_ms} ms) "
      f"< grace {grace} s; rollout maxUnavailable 0 / maxSurge 1; history URL from the Secret")
EOF_PY
