#!/usr/bin/env bash
# Builds the container image from the project's Dockerfile with buildah (no container daemon needed).
# Usage: scripts/build-image.sh [cpu|cuda]   (default cpu)
#   cpu  -> localhost/seqserve:VERSION       (k8s/deployment.yaml's seqserve:VERSION)
#   cuda -> localhost/seqserve:VERSION-cuda  (--build-arg VARIANT=cuda)
# Where docker.io does not answer, the base images the Dockerfile names are first made from Debian's
# packages under those names (scripts/image-lib.sh; once per machine). Every step is cached
# (--layers, in buildah's storage shared by every clone): a source edit rebuilds only the last
# build step (seqserve itself) and the runtime stage, never the torch set-up or the dependencies.
# Images and layers no tag leads to any more (the previous build's) are pruned after each build.
# Prints the image's tag on stdout; buildah's output goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANT=${1:-cpu}
source scripts/image-lib.sh
TAG=$(image_tag "$VARIANT")
ensure_base_images
COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

# One build at a time per machine (clones share the storage; the prune below must not race a build).
exec 7>"$IMAGE_CACHE/.build-lock"
flock 7
# A step that redoes the torch set-up writes about 5 GB twice (the container, then the committed
# layer) and the dependency build a few more: on a full disk the commit fails late, after the 15-20
# minutes of the step (seen here). Warn below 14 GB free; refuse below SEQSERVE_IMAGE_MIN_FREE_GB (4).
STORAGE=/var/lib/containers/storage
mkdir -p "$STORAGE"
FREE_GB=$(df -P --block-size=1G "$STORAGE" | awk 'NR == 2 {print $4}')
if [ "$FREE_GB" -lt "${SEQSERVE_IMAGE_MIN_FREE_GB:-4}" ]; then
    echo "[image] only $FREE_GB GB free under $STORAGE: not building" >&2
    exit 1
elif [ "$FREE_GB" -lt 14 ]; then
    echo "[image] warning: $FREE_GB GB free under $STORAGE; a build that redoes the set-up needs about 14 GB" >&2
fi
T0=$(date +%s)
build() { # extra bud arguments...
    # --force-rm: a failed step's container (up to 5 GB) is removed, not left behind.
    nice -n 10 buildah --storage-driver overlay bud --isolation chroot --pull=never --layers --force-rm \
        --format docker --build-arg VARIANT="$VARIANT" --build-arg SEQSERVE_COMMIT="$COMMIT" "$@" \
        -f Dockerfile . >&2
}
# docker format, not OCI: OCI image configs have no SHELL or HEALTHCHECK (buildah drops them).
# The build stage is tagged too, so that the prune below keeps its cached layers (torch, the
# dependency build): an untagged chain would be pruned as dangling.
build --target build -t "localhost/seqserve-build:$VARIANT"
build --label org.opencontainers.image.revision="$COMMIT" \
    --label org.opencontainers.image.version="$SEQSERVE_VERSION" -t "$TAG"
T1=$(date +%s)
bah rmi --prune >/dev/null 2>&1 || true
echo "[image] built $TAG in $((T1 - T0)) s; buildah storage now $(du -sh /var/lib/containers/storage 2>/dev/null | cut -f1)" >&2
echo "$TAG"
