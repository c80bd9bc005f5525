#!/usr/bin/env bash
# The first CUDA check, prepared here so that a session lent a GPU machine spends its minutes on the
# check, not on building. The GPU machine has no Rust and no registry, and its PyTorch is 2.11.0+cu130
# (we build against 2.13): so the binary is built HERE against torch 2.11.0's headers and libraries
# (the PyPI wheel, the one the GPU machine has), carried there with the test inputs, and run against
# that machine's own libtorch.
#
#   scripts/cuda-check.sh bundle    here: fetch torch 2.11.0 (cached), build seqserve against it in
#                                   the cache, and fill .cuda/ (a link into the cache; git ignores it)
#                                   with the binary and the holdouts
#   scripts/cuda-check.sh device    there: CPU against cuda:0 on the same binary and weights
#
# Then, from the agent: run(command="scripts/cuda-check.sh device", timeout_s=540,
#   carry=[".cuda/seqserve", ".cuda/beauty-loo.jsonl", ".cuda/ml1m-loo.jsonl", ".cuda/Beauty.txt"])
#
# What `device` proves (its log and JSON land in $OUT):
#   1. `seqserve recommend --device cuda:0` loads and answers (the binary found libtorch_cuda);
#   2. /recommend on cuda:0 against cpu, the same binary and weights, beauty-2l and ml1m-ctx (context
#      features), 2,000 cases each: the same top 20 beyond ties, every score within 1e-4
#      (scripts/compare_devices.py);
#   3. `seqserve evaluate --device cuda:0` against `--device cpu` on the whole Beauty holdout: the same
#      metrics (evaluation's path);
#   4. training on cuda:0: two epochs of the default Beauty recipe, and two with --exclude-history
#      (never run on a GPU before), with their s/epoch and losses beside one CPU epoch.
# Steps go on after a failure; the script's status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
say() { echo "[cuda-check] $*" >&2; }

if [ "$MODE" = bundle ]; then
    set -e
    source scripts/env.sh
    CACHE=${SEQSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/seqserve}/cuda-torch-2.11.0
    LT=$CACHE/libtorch
    mkdir -p "$CACHE/wheels" "$LT/lib" "$CACHE/bundle"
    if [ ! -f "$LT/.complete" ]; then
        say "fetching torch 2.11.0 (the GPU machine's PyTorch) and CUDA 13's runtime and CUPTI"
        "$SEQSERVE_PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$CACHE/wheels" \
            torch==2.11.0 'nvidia-cuda-runtime==13.0.96.*' 'nvidia-cuda-cupti==13.0.85.*'
        rm -rf "$CACHE/x" && mkdir -p "$CACHE/x"
        (cd "$CACHE/x" && unzip -q -o "$CACHE"/wheels/torch-2.11.0-*.whl 'torch/include/*' \
            'torch/lib/libc10.so' 'torch/lib/libc10_cuda.so' 'torch/lib/libtorch.so' \
            'torch/lib/libtorch_cpu.so' 'torch/lib/libtorch_cuda.so' 'torch/lib/libgomp.so.1')
        rm -rf "$LT/include" && mv "$CACHE/x/torch/include" "$LT/include"
        mv "$CACHE"/x/torch/lib/* "$LT/lib/"
        for w in "$CACHE"/wheels/nvidia_cuda_runtime-*.whl "$CACHE"/wheels/nvidia_cuda_cupti-*.whl; do
            unzip -q -o -j "$w" 'nvidia/cu13/lib/libcudart.so.13' 'nvidia/cu13/lib/libcupti.so.13' \
                -d "$LT/lib" 2>/dev/null || true
        done
        rm -rf "$CACHE/x"
        touch "$LT/.complete"
    fi
    # A copy of this checkout builds it, with a copy of torch-sys patched in (so neither this
    # checkout's Cargo.toml nor its Cargo.lock changes). tch 0.26's C++ wrappers are generated for
    # libtorch 2.13: the ops 2.11 lacks do not compile, so a failed build has those wrappers stubbed
    # (scripts/stub_missing_ops.py; seqserve calls none of them) and is tried again.
    SRC=$CACHE/src TS=$CACHE/torch-sys COMMIT=$(git rev-parse --short=12 HEAD)
    rm -rf "$SRC" && mkdir -p "$SRC"
    git ls-files -co --exclude-standard | grep -v '^models/' | tar -cf - -T - | tar -xf - -C "$SRC"
    if [ ! -f "$TS/.stubbed" ]; then
        rm -rf "$TS" && cp -r "$(dirname "$(cargo metadata --format-version 1 | "$SEQSERVE_PYTHON" -c \
            'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "torch-sys"))')")" "$TS"
    fi
    printf '\n[patch.crates-io]\ntorch-sys = { path = "%s" }\n' "$TS" >>"$SRC/Cargo.toml"
    build() {
        (cd "$SRC" && unset VIRTUAL_ENV LIBTORCH_USE_PYTORCH &&
         export LIBTORCH=$LT LIBTORCH_BYPASS_VERSION_CHECK=1 CARGO_TARGET_DIR=$CACHE/target \
                SEQSERVE_COMMIT="$COMMIT-torch2.11" \
                RUSTFLAGS="-C link-arg=-Wl,--allow-shlib-undefined" &&
         cargo build --release --bin seqserve)
    }
    # libtorch_cuda's own CUDA libraries (cuBLAS, cuDNN...) are not here: the link leaves them to the
    # GPU machine (--allow-shlib-undefined), where its PyTorch provides them.
    for try in 1 2 3; do
        say "building seqserve against torch 2.11.0 (try $try; target dir $CACHE/target)"
        if build >"$CACHE/build.log" 2>&1; then touch "$TS/.stubbed"; break; fi
        [ $try -lt 3 ] || { tail -30 "$CACHE/build.log"; exit 1; }
        stubbed=$("$SEQSERVE_PYTHON" scripts/stub_missing_ops.py "$TS/libtch/torch_api_generated.cpp" \
            "$CACHE/build.log") || { tail -30 "$CACHE/build.log"; exit 1; }
        say "stubbed: $stubbed"
    done
    B=$CACHE/bundle
    cp "$CACHE/target/release/seqserve" "$B/seqserve"
    readelf -d "$B/seqserve" | grep -q 'libtorch_cuda.so' \
        || { say "the binary does not link libtorch_cuda"; exit 1; }
    BEAUTY=../shared/data/amazon_s3rec/Beauty.txt
    ML=../shared/data/ml-1m_diffurec
    # The holdouts come from this checkout's own binary: the bundled one needs the GPU machine's
    # CUDA libraries to start.
    cargo build --release --quiet --bin seqserve
    target/release/seqserve holdout --data "$BEAUTY" --split leave-one-out --out "$B/beauty-loo.jsonl" >/dev/null
    target/release/seqserve holdout --data "$ML/ml-1m_seq.txt" --users "$ML/users.dat" --split leave-one-out \
        --out "$B/ml1m-loo.jsonl" >/dev/null
    cp "$BEAUTY" "$B/Beauty.txt"
    ln -sfn "$B" .cuda
    say "bundle ready in .cuda -> $B: $(du -shL .cuda | cut -f1)"
    exit 0
fi

[ "$MODE" = device ] || { echo "usage: scripts/cuda-check.sh bundle|device" >&2; exit 2; }
OUT=${OUT:-$PWD/target/cuda-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/cuda-check.log") 2>&1
# A dry run of this script without a GPU (it has been run so, here): CUDA_CHECK_BINARY=a CPU build,
# CUDA_CHECK_DEVICE=cpu, CUDA_CHECK_TRAIN="--limit-users 2000".
S=${CUDA_CHECK_BINARY:-.cuda/seqserve}
DEV=${CUDA_CHECK_DEVICE:-cuda:0}
read -r -a TRAIN_EXTRA <<<"${CUDA_CHECK_TRAIN:-}"
[ -x "$S" ] || { say "$S is missing: run 'scripts/cuda-check.sh bundle' here and carry .cuda/*"; exit 2; }
PY=$(command -v python3)
# The GPU machine's libtorch (and the CUDA libraries its wheels hold) for the bundled binary.
if TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null); then
    SITE=$(dirname "$(dirname "$TORCH_LIB")")
    NV=$(find "$SITE/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
    export LD_LIBRARY_PATH=$TORCH_LIB${NV:+:$NV}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    "$PY" -c 'import torch; print("python torch", torch.__version__, "cuda", torch.cuda.is_available())'
else
    say "$PY has no torch: the binary's own run path decides which libtorch it loads"
fi
nvidia-smi -L || true
status=0
fail() { say "FAILED: $*"; [ $status -ne 0 ] || status=1; }
# Runs a command and says how long it took.
t() { local s rc; s=$(date +%s%N); "$@"; rc=$?; say "$(( ($(date +%s%N) - s) / 1000000 )) ms: $*"; return $rc; }

say "1. recommend on $DEV"
ldd "$S" | grep -E 'torch|cudart|not found' || true
t "$S" recommend --model models/beauty-2l --history 12,45,77 --k 5 --device "$DEV" --json \
    || fail "recommend --device $DEV"

say "2. /recommend: cpu against $DEV"
for m in beauty-2l:.cuda/beauty-loo.jsonl ml1m-ctx:.cuda/ml1m-loo.jsonl; do
    t "$PY" scripts/compare_devices.py "$S" "models/${m%%:*}" "${m#*:}" --cases 2000 --k 20 \
        --devices "cpu,$DEV" --logs "$OUT" || fail "compare ${m%%:*}"
done

say "3. evaluate: cpu against $DEV (Beauty, all cases)"
n=0
for d in cpu "$DEV"; do
    n=$((n + 1))
    t "$S" evaluate --model models/beauty-2l --holdout .cuda/beauty-loo.jsonl --k 10,20 --device "$d" \
        --json "$OUT/evaluate-$n-${d/:/}.json" >/dev/null || fail "evaluate --device $d"
done
"$PY" - "$OUT/evaluate-1-cpu.json" "$OUT/evaluate-2-${DEV/:/}.json" <<'EOF' || fail "evaluate metrics differ"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
# Every figure of the two reports (the report holds no timings: two runs on one device give equal files).
def metrics(r, path=""):
    if isinstance(r, dict):
        for k, v in r.items():
            yield from metrics(v, f"{path}.{k}")
    elif isinstance(r, list):
        for i, v in enumerate(r):
            yield from metrics(v, f"{path}[{i}]")
    elif isinstance(r, float):
        yield path, r
ma, mb = dict(metrics(a)), dict(metrics(b))
worst = max(((abs(ma[k] - mb[k]), k) for k in ma if k in mb), default=(0.0, "-"))
print(f"evaluate cpu against {sys.argv[2]}: {len(ma)} figures, largest difference {worst[0]:.2e} at {worst[1]}")
sys.exit(0 if worst[0] <= 1e-3 else 1)
EOF

say "4. training on $DEV (two epochs each) beside one CPU epoch"
train() { # NAME DEVICE EPOCHS [TRAIN OPTIONS...]
    local name=$1 dev=$2 epochs=$3
    shift 3
    t "$S" train --data .cuda/Beauty.txt --device "$dev" --skip-test --stop-after "$epochs" \
        --out "$OUT/train-$name" "${TRAIN_EXTRA[@]}" "$@" >"$OUT/train-$name.log" 2>&1 || fail "train $name"
    grep -E '^epoch +[0-9]+ +loss' "$OUT/train-$name.log" | sed "s/^/$name: /"
    rm -rf "$OUT/train-$name" "$OUT/train-$name.checkpoint"
}
# One worker on the GPU (--threads splits every batch over data-parallel CPU workers).
train default "$DEV" 2 --threads 1
train exclude-history "$DEV" 2 --threads 1 --exclude-history
train default-cpu cpu 1
say "done, status $status"
exit $status
