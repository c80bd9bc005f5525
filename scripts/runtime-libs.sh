#!/usr/bin/env bash
# Copies the shared libraries a seqserve binary needs at run time from the torch venv into DEST,
# at the same absolute paths (the binary's rpath and libtorch's $ORIGIN rpaths name them), for the
# runtime image (Dockerfile) and for scripts/check-docker.sh, which runs the binary on exactly this
# set. Usage: scripts/runtime-libs.sh cpu|cuda BINARY SITE_PACKAGES DEST
#   cuda: torch/lib and every nvidia library (cuBLAS, cuDNN, NCCL...: about 3 GB).
#   cpu:  only what the binary's NEEDED entries reach, followed through the venv: libtorch_cpu,
#         libc10, libgomp, and the two small CUDA runtime libraries libtorch_cpu itself links
#         (libcudart, libcupti: 5 MB). Build the binary with SEQSERVE_CPU_ONLY=1 (see build.rs).
set -euo pipefail
VARIANT=$1 BIN=$2 SITE=$3 DEST=$4
case "$VARIANT" in
    cuda)
        mkdir -p "$DEST$SITE/torch"
        cp -a "$SITE/torch/lib" "$DEST$SITE/torch/"
        cp -a "$SITE/nvidia" "$DEST$SITE/"
        ;;
    cpu)
        python3 - "$BIN" "$SITE" "$DEST" <<'PY'
import os, re, shutil, subprocess, sys
binary, site, dest = sys.argv[1:]
# Where the venv's libraries live: torch/lib and nvidia/*/lib (what libtorch's rpaths name).
dirs = [os.path.join(site, "torch", "lib")]
nv = os.path.join(site, "nvidia")
if os.path.isdir(nv):
    dirs += [os.path.join(nv, d, "lib") for d in sorted(os.listdir(nv))]
def needed(path):
    out = subprocess.run(["readelf", "-d", path], check=True, capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
seen, todo, copied = set(), needed(binary), []
while todo:
    name = todo.pop()
    if name in seen:
        continue
    seen.add(name)
    for d in dirs:
        p = os.path.join(d, name)
        if os.path.exists(p):
            target = dest + p
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.realpath(p), target)
            copied.append(p)
            todo += needed(p)
            break
    # Not in the venv: a system library (libc, libstdc++...), which the base image has.
total = sum(os.path.getsize(p) for p in copied)
for p in sorted(copied):
    print(f"{os.path.getsize(p) / 1e6:9.1f} MB  {os.path.relpath(p, site)}", file=sys.stderr)
print(f"{total / 1e6:9.1f} MB  in {len(copied)} libraries", file=sys.stderr)
if any("libtorch_cuda" in p or "cublas" in p or "cudnn" in p for p in copied):
    sys.exit("the binary needs libtorch_cuda: build it with SEQSERVE_CPU_ONLY=1")
PY
        ;;
    *) echo "usage: $0 cpu|cuda BINARY SITE_PACKAGES DEST" >&2; exit 2 ;;
esac
