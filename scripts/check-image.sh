#!/usr/bin/env bash
# Checks the built container image as a platform team would (run by .ci/run):
#   1. its configuration: a non-root USER, the entrypoint and command, the port, a HEALTHCHECK;
#   2. it runs: the image's own command (buildah run --isolation chroot, which shares the host's
#      network and process namespaces; SEQSERVE__SERVER__HOST/PORT set through the environment,
#      as `docker run -e` would) as a non-root process, /health/ready turns 200, the README's curl
#      example is answered, the image's HEALTHCHECK command passes inside it, /metrics names the
#      commit the image was built from, its RSS; then SIGTERM: readiness turns 503 while it
#      drains, and it exits 0 within server.drain_timeout_secs;
#   3. the CPU image's size (goal <= 700 MB; the sum of its layers, uncompressed, as `docker
#      images` shows) and no CUDA library in it but the two libtorch_cpu itself links (libcudart,
#      libcupti: scripts/runtime-libs.sh); its largest files and layers;
#   4. the CUDA variant (VARIANT=cuda) builds, and its size (it is not run: no GPU here).
#
# Building takes long on 2 cores (a cold build compiles libtorch's bindings and every dependency in
# release mode), so the images are rebuilt only when what they are made of changes: a stamp in
# ~/.cache/seqserve/image/ (outside the clone) keys the last checked image by the hash of the
# Dockerfile, .dockerignore, Cargo.toml, Cargo.lock, build.rs and the set-up and image scripts. When
# the key matches and that image is still in buildah's storage, the cached image is checked again
# (built from an earlier commit's sources: a source-only change does not rebuild it); otherwise
# both variants are built first (scripts/build-image.sh; the layer cache keeps that short unless
# the set-up or the dependencies changed). CHECK_IMAGE_REBUILD=1 always rebuilds.
# Under pipefail, never `| head` after a producer of many lines (SIGPIPE fails the pipeline).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/image-lib.sh
source scripts/wait-ready.sh
PORT=${PORT:-18540}
GOAL_MB=700

KEY=$(cat Dockerfile .dockerignore Cargo.toml Cargo.lock build.rs scripts/setup.sh scripts/env.sh \
    scripts/runtime-libs.sh scripts/build-image.sh scripts/image-lib.sh | sha256sum | cut -c1-16)
image_id() { bah inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true; }
fresh() { # VARIANT: the stamp's key and image are current
    local stamp=$IMAGE_CACHE/checked-$1 id
    id=$(image_id "$(image_tag "$1")")
    [ -z "${CHECK_IMAGE_REBUILD:-}" ] && [ -n "$id" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$KEY $id" ]
}
for variant in cpu cuda; do
    if fresh "$variant"; then
        echo "[image] $(image_tag $variant): cached image $(image_id "$(image_tag $variant)" | cut -c1-12) (key $KEY unchanged; built from $(image_label "$(image_tag $variant)" org.opencontainers.image.revision))"
    else
        echo "[image] building $(image_tag $variant) (key $KEY: no image checked with it yet)"
        t0=$(date +%s)
        scripts/build-image.sh "$variant" >/dev/null
        echo "[image] $(image_tag $variant) built in $(($(date +%s) - t0)) s"
    fi
done
IMAGE=$(image_tag cpu)
CUDA_IMAGE=$(image_tag cuda)

WORK=$(mktemp -d)
CTR= JOB=
cleanup() {
    local pid
    pid=$(listener_pid "$PORT")
    [ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null || true
    [ -z "$JOB" ] || wait "$JOB" 2>/dev/null || true
    if [ -n "$CTR" ]; then
        bah umount "$CTR" >/dev/null 2>&1 || true
        bah rm "$CTR" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "[image] FAILED: $*" >&2; exit 1; }

# 1. Configuration.
bah inspect --type image "$IMAGE" | python3 -c 'import json, sys; json.dump(json.load(sys.stdin)["Docker"]["config"], sys.stdout)' >"$WORK/config.json"
python3 - "$WORK/config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
user = c.get("User", "")
assert user and user.split(":")[0] not in ("", "0", "root"), f"USER is {user!r}: the image must not run as root"
assert c.get("Entrypoint") == ["seqserve"], c.get("Entrypoint")
assert "8080/tcp" in (c.get("ExposedPorts") or {}), c.get("ExposedPorts")
hc = (c.get("Healthcheck") or {}).get("Test")
assert hc, "no HEALTHCHECK (an OCI-format build drops it: build with --format docker)"
print(f"[image] config: USER {user}, ENTRYPOINT {c['Entrypoint']} CMD {c['Cmd']}, EXPOSE 8080, HEALTHCHECK {hc[1:]}")
EOF

# 2. Run it.
CTR=$(bah from --pull=never --name "seqserve-check-$$" "$IMAGE")
mapfile -t SERVE < <(image_command "$IMAGE")
# buildah's chroot run once failed to start the command at all (CI, 2026-12-07: "Close_Fd sealing
# memfd copy: Device or resource busy", then nothing listened for 120 s). A run that ends before the
# server is ready is started again, up to 3 times; a server that runs but never gets ready fails.
READY=""
for attempt in 1 2 3; do
    T0=$(date +%s.%N)
    bah run --isolation chroot -e SEQSERVE__SERVER__HOST=127.0.0.1 -e SEQSERVE__SERVER__PORT="$PORT" \
        "$CTR" -- "${SERVE[@]}" >"$WORK/server.log" 2>&1 &
    JOB=$!
    rc=0
    poll_ready "$PORT" 120 "$JOB" || rc=$?
    if [ "$rc" = 0 ]; then READY=1; break; fi
    if [ "$rc" = 2 ]; then
        cat "$WORK/server.log" >&2
        fail "seqserve on port $PORT never became ready"
    fi
    wait "$JOB" 2>/dev/null || true
    echo "[image] attempt $attempt: buildah run ended before seqserve was ready:" >&2
    cat "$WORK/server.log" >&2
done
[ -n "$READY" ] || fail "buildah run ended before seqserve was ready, 3 times"
READY_S=$(python3 -c "print(f'{$(date +%s.%N) - $T0:.1f}')")
PID=$(listener_pid "$PORT")
UID_RUN=$(awk '/^Uid:/ {print $2}' "/proc/$PID/status")
[ "$UID_RUN" != 0 ] || fail "seqserve runs as root inside the image"
echo "[image] ${SERVE[*]} (pid $PID, uid $UID_RUN) ready in $READY_S s"
# The README's curl example (section "Two commands"), against this port.
EXAMPLE=$(python3 - <<'EOF'
import re
readme = open("README.md").read()
m = re.search(r"<!-- tested: models/beauty-2l[^>]*-->\n```sh\n(curl -s localhost:8080/recommend.*?)\n```", readme, re.S)
print(m.group(1).replace("\\\n", " "))
EOF
)
ANSWER=$(eval "${EXAMPLE/localhost:8080/127.0.0.1:$PORT}")
python3 -c 'import json, sys
a = json.loads(sys.argv[1])
assert len(a["items"]) == 5 and a["model"], a
n, model, version, first = len(a["items"]), a["model"], a["version"], a["items"][0]
print(f"[image] README example answered: {n} items from {model} version {version}, first {first}")' "$ANSWER"
# The HEALTHCHECK's own command, run inside the image (its port replaced by this run's).
mapfile -t HC < <(python3 -c 'import json, sys; [print(a) for a in json.load(open(sys.argv[1]))["Healthcheck"]["Test"][1:]]' "$WORK/config.json")
bah run --isolation chroot "$CTR" -- "${HC[@]/localhost:8080/localhost:$PORT}" >/dev/null ||
    fail "the HEALTHCHECK command failed inside the image"
echo "[image] HEALTHCHECK (${HC[*]}) passes inside the image"
REVISION=$(image_label "$IMAGE" org.opencontainers.image.revision)
# Read whole first: `curl | grep -q` under pipefail fails when grep stops early (curl gets SIGPIPE).
METRICS=$(curl -s "127.0.0.1:$PORT/metrics")
grep -q "^seqserve_build_info{.*commit=\"$REVISION\"" <<<"$METRICS" ||
    fail "seqserve_build_info does not name commit $REVISION: $(grep build_info <<<"$METRICS")"
for _ in $(seq 200); do eval "${EXAMPLE/localhost:8080/127.0.0.1:$PORT}" >/dev/null; done
RSS=$(awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$PID/status")
HWM=$(awk '/^VmHWM:/ {printf "%.0f", $2 / 1024}' "/proc/$PID/status")
echo "[image] RSS after 200 requests: $RSS MB (peak $HWM MB); seqserve_build_info commit $REVISION"
# SIGTERM: readiness 503 while draining, then exit 0 within server.drain_timeout_secs.
DRAIN=$(bah run --isolation chroot "$CTR" -- sed -n 's/^drain_timeout_secs = //p' /app/seqserve.toml)
T0=$(date +%s.%N)
kill -TERM "$PID"
sleep 0.1
DURING=$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$PORT/health/ready" || true)
RC=0
wait "$JOB" || RC=$?
JOB=
STOP_S=$(python3 -c "print(f'{$(date +%s.%N) - $T0:.2f}')")
[ "$RC" = 0 ] || { cat "$WORK/server.log" >&2; fail "exit status $RC after SIGTERM"; }
[ "$DURING" = 503 ] || fail "/health/ready answered $DURING during the drain, not 503"
python3 -c "import sys; sys.exit(not $STOP_S < $DRAIN)" || fail "took $STOP_S s to exit, over drain_timeout_secs $DRAIN"
echo "[image] SIGTERM: /health/ready 503 while draining, exit 0 after $STOP_S s (drain_timeout_secs $DRAIN)"

# 3. Size, CUDA libraries, largest files and layers.
MNT=$(bah mount "$CTR")
layers() { # IMAGE: one line per history entry that made a layer: bytes, then the instruction
    bah inspect --type image "$1" >"$WORK/image.json"
    python3 - "$WORK/image.json" /var/lib/containers/storage/overlay-layers/layers.json <<'EOF'
import json, sys
img = json.load(open(sys.argv[1]))["Docker"]
size = {l["diff-digest"]: l.get("diff-size", 0) for l in json.load(open(sys.argv[2])) if "diff-digest" in l}
diffs = img["rootfs"]["diff_ids"]
steps = [h.get("created_by", "") for h in img["history"] if not h.get("empty_layer")]
for d, step in zip(diffs, steps[-len(diffs):] if len(steps) >= len(diffs) else [""] * len(diffs)):
    if step in ("", "/bin/sh"):  # a base image made by `buildah commit` records no instruction
        step = "(base image layer)"
    step = step.replace("/bin/bash -o pipefail -c ", "").replace("/bin/sh -c ", "").replace("#(nop) ", "")
    print(size.get(d, 0), " ".join(step.split())[:110])
EOF
}
layers "$IMAGE" >"$WORK/layers.txt"
SIZE_MB=$(awk '{s += $1} END {printf "%.0f", s / 1e6}' "$WORK/layers.txt")
echo "[image] $IMAGE: $SIZE_MB MB (goal <= $GOAL_MB MB), $(wc -l <"$WORK/layers.txt") layers; largest:"
sort -rn "$WORK/layers.txt" | awk 'NR <= 5' | awk '{printf "%9.1f MB  ", $1 / 1e6; $1 = ""; print}'
echo "[image] largest files:"
find "$MNT" -xdev -type f -printf '%s %P\n' | sort -rn | awk 'NR <= 8' | awk '{printf "%9.1f MB  /%s\n", $1 / 1e6, $2}'
[ "$SIZE_MB" -le "$GOAL_MB" ] || fail "the CPU image is $SIZE_MB MB, over $GOAL_MB MB"
CUDA_FILES=$(find "$MNT" -xdev \( -type f -o -type l \) \( -iname '*cuda*' -o -iname '*cublas*' -o -iname '*cudnn*' \
    -o -iname '*nccl*' -o -iname '*cufft*' -o -iname '*curand*' -o -iname '*cusparse*' -o -iname '*cusolver*' \
    -o -iname '*nvrtc*' -o -iname '*nvjitlink*' -o -iname '*cupti*' -o -iname 'libnv*' -o -iname '*cufile*' \) -printf '%P\n' | sort)
LIBTORCH_CPU=$(find "$MNT" -xdev -name 'libtorch_cpu.so' -printf '%p\n' -quit)
NEEDED=$(readelf -d "$LIBTORCH_CPU" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
while read -r f; do
    [ -n "$f" ] || continue
    base=$(basename "$f")
    case "$base" in libcudart.so.*|libcupti.so.*) ;; *) fail "CUDA library in the CPU image: /$f" ;; esac
    grep -qx "$base" <<<"$NEEDED" || fail "/$f is in the image but libtorch_cpu does not link it"
done <<<"$CUDA_FILES"
echo "[image] CUDA libraries: only what libtorch_cpu links: $(echo "$CUDA_FILES" | xargs -n1 basename | tr '\n' ' ')($(echo "$CUDA_FILES" | sed "s|^|$MNT/|" | xargs du -cb | tail -1 | awk '{printf "%.1f MB", $1 / 1e6}'))"

# 4. The CUDA variant: built above; its size.
layers "$CUDA_IMAGE" >"$WORK/cuda-layers.txt"
echo "[image] $CUDA_IMAGE: $(awk '{s += $1} END {printf "%.0f", s / 1e6}' "$WORK/cuda-layers.txt") MB (not run: no GPU here); largest layer: $(sort -rn "$WORK/cuda-layers.txt" | awk 'NR == 1' | awk '{printf "%.0f MB ", $1 / 1e6; $1 = ""; print}')"

for variant in cpu cuda; do echo "$KEY $(image_id "$(image_tag $variant)")" >"$IMAGE_CACHE/checked-$variant"; done
echo "[image] passed; buildah storage: $(du -sh /var/lib/containers/storage 2>/dev/null | cut -f1)"
