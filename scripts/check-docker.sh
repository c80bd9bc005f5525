#!/usr/bin/env bash
# Checks the Dockerfile without building it (fast, on every CI run; run by .ci/run):
#   1. hadolint (warnings fail; each ignore is justified beside it in the Dockerfile);
#   2. every RUN step, continuation lines joined, parses under the shell its stage declares
#      (SHELL [...]; /bin/sh by default), and scripts it sources parse under that shell too;
#   3. the CPU variant's runtime: a SEQSERVE_CPU_ONLY=1 binary, given exactly the libraries
#      scripts/runtime-libs.sh copies into the image (nothing else of the venv reachable), serves
#      the same rankings and scores as the normal build, and maps no library outside that set and
#      the system's, on the current sources (scripts/check-image.sh builds the image itself, and
#      rebuilds it only when its inputs change).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(bash scripts/ops-tools.sh)
"$BIN/hadolint" --no-color --failure-threshold warning Dockerfile
python3 - Dockerfile <<'EOF_PY'
import json, re, subprocess, sys
lines = open(sys.argv[1]).read().split("\n")
steps, buf = [], ""
for line in lines:
    if not buf and (line.lstrip().startswith("#") or not line.strip()):
        continue
    if line.lstrip().startswith("#"):  # comments inside a continued instruction
        continue
    buf += line[:-1] + " " if line.endswith("\\") else line
    if not line.endswith("\\"):
        steps.append(buf.strip())
        buf = ""
shell, checked = ["/bin/sh", "-c"], 0
for s in steps:
    word, _, rest = s.partition(" ")
    word = word.upper()
    if word == "FROM":
        shell = ["/bin/sh", "-c"]
    elif word == "SHELL":
        shell = json.loads(rest)
    elif word == "RUN":
        exe = shell[0].rsplit("/", 1)[-1]
        r = subprocess.run([exe, "-n", "-c", rest], capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"RUN step does not parse under {exe}: {rest}\n{r.stderr}")
        # A sourced project script must parse under the same shell.
        for src in re.findall(r"(?:source|\.)\s+(scripts/[\w./-]+)", rest):
            r = subprocess.run([exe, "-n", src], capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"{src} (sourced in a RUN step) does not parse under {exe}\n{r.stderr}")
            if exe != "bash" and "BASH_SOURCE" in open(src).read():
                sys.exit(f"{src} uses BASH_SOURCE but is sourced under {exe}")
        checked += 1
print(f"[docker] hadolint clean; {checked} RUN steps parse under their stage's shell")
EOF_PY

# 3. The CPU variant's library set, run for real.
source scripts/env.sh
source scripts/wait-ready.sh
SITE=$("$SEQSERVE_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
WORK=$(mktemp -d)
FULL= CPU=
trap 'kill $FULL $CPU 2>/dev/null || true; rm -rf "$WORK"' EXIT
cargo build --quiet --bin seqserve
cp target/debug/seqserve "$WORK/seqserve-full"
SEQSERVE_CPU_ONLY=1 cargo build --quiet --bin seqserve
cp target/debug/seqserve "$WORK/seqserve-cpu"
cargo build --quiet --bin seqserve # back to the normal build for what follows
if readelf -d "$WORK/seqserve-cpu" | grep -q 'libtorch_cuda'; then
    echo "[docker] the SEQSERVE_CPU_ONLY=1 binary still links libtorch_cuda"; exit 1
fi
bash scripts/runtime-libs.sh cpu "$WORK/seqserve-cpu" "$SITE" "$WORK/rt" 2>"$WORK/libs.txt"
cat "$WORK/libs.txt"
FULL_BYTES=$(du -sb "$SITE/torch/lib" "$SITE/nvidia" | awk '{s += $1} END {printf "%.0f", s}')
CPU_BYTES=$(du -sb "$WORK/rt" | cut -f1)
for MODEL in beauty-2l ml1m-ctx; do
    "$WORK/seqserve-full" serve --host 127.0.0.1 --port 18620 --model "models/$MODEL" --device cpu \
        --threads 1 2>"$WORK/full.log" &
    FULL=$!
    LD_LIBRARY_PATH="$WORK/rt$SITE/torch/lib" "$WORK/seqserve-cpu" serve --host 127.0.0.1 \
        --port 18621 --model "models/$MODEL" --device cpu --threads 1 2>"$WORK/cpu.log" &
    CPU=$!
    wait_ready 18620 30 "$WORK/full.log"
    wait_ready 18621 30 "$WORK/cpu.log"
    # Every library the CPU build mapped is from the copied set or the system.
    if grep -oE '/[^ ]+\.so[.0-9]*' "/proc/$CPU/maps" | sort -u | grep -vE "^$WORK/rt/|^/(usr/)?lib"; then
        echo "[docker] the CPU build loaded libraries outside the image's set (above)"; exit 1
    fi
    python3 - "models/$MODEL" <<'EOF_PY'
import json, random, sys, urllib.request
model = sys.argv[1]
items = [l.strip() for l in open(f"{model}/items.txt") if l.strip()]
manifest = json.load(open(f"{model}/model.json"))
rng = random.Random(3)
def ask(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/recommend", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return [(i["item"], i["score"]) for i in json.load(r)["items"]]
for n in range(20):
    body = {"history": rng.sample(items, rng.randint(0, 30)), "k": 20}
    for f in manifest.get("context", []):
        if f["kind"] == "categorical":
            body.setdefault("context", {})[f["name"]] = rng.choice(f["values"])
    a, b = ask(18620, body), ask(18621, body)
    assert a == b, f"{model} request {n}: CPU build answers {b[:3]}..., full build {a[:3]}..."
print(f"[docker] {model}: CPU build = full build on 20 requests (items and scores)")
EOF_PY
    kill $FULL $CPU; wait $FULL $CPU 2>/dev/null || true; FULL= CPU=
done
echo "[docker] CPU variant: $((CPU_BYTES / 1000000)) MB of venv libraries in the image, against $((FULL_BYTES / 1000000)) MB for CUDA"
