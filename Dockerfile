# seqserve image: the service on the shipped default model (models/beauty-2l).
# CPU (default): docker build -t seqserve:0.1.0 .
# CUDA:          docker build --build-arg VARIANT=cuda -t seqserve:0.1.0-cuda .
# Run:           docker run -p 8080:8080 seqserve:0.1.0
#
# libtorch comes from PyPI (torch==2.13.0) through the project's own set-up script. The binary finds
# libtorch through an rpath to the venv's torch/lib, so the runtime stage keeps the libraries at the
# same absolute path. The CPU variant links libtorch_cpu alone (SEQSERVE_CPU_ONLY=1, see build.rs) and
# keeps only what it needs (scripts/runtime-libs.sh: 445 MB of libraries instead of 3.9 GB; no cuBLAS,
# cuDNN or NCCL). Checked in CI by scripts/check-docker.sh (hadolint, every RUN step parsed by its
# shell, the CPU variant's binary served from exactly the library set this image copies) and built
# with buildah and run by scripts/check-image.sh (scripts/build-image.sh builds it without a daemon).
FROM rust:1-bookworm AS build
# The project's scripts are bash (env.sh reads BASH_SOURCE): RUN steps run under bash, not dash.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# PIP_NO_CACHE_DIR: pip would otherwise keep the 4.7 GB of downloaded wheels in the set-up layer.
ENV SEQSERVE_CACHE=/opt/seqserve SEQSERVE_NO_TEST_PACKAGES=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Set-up first (slow, rarely changes) so the layer is cached across source edits; the test-only
# Python packages are left out.
COPY scripts/setup.sh scripts/env.sh scripts/
# Debian package versions follow the pinned base image's release (pinning exact versions breaks the
# build whenever the archive moves on).
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && bash scripts/setup.sh && rm -rf /var/lib/apt/lists/*
# Dependencies alone, against placeholder sources (one per [[bench]] that Cargo.toml declares): this
# layer is rebuilt only when Cargo.toml, Cargo.lock or build.rs change, not on every source edit.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && awk '/^\[\[bench\]\]/ {t = 1; next} t && /^name *=/ {gsub(/^name *= *"|"$/, ""); print; t = 0}' Cargo.toml \
       | while read -r b; do echo 'fn main() {}' > "benches/$b.rs"; done \
    && . scripts/env.sh && cargo build --release --locked \
    && rm -rf src benches target/release/seqserve target/release/deps/seqserve-* \
       target/release/deps/libseqserve-* target/release/.fingerprint/seqserve-*
COPY . .
# Declared here, not at the top of the stage: a build argument declared before a RUN step is part
# of that step's cache key, so VARIANT=cuda would otherwise redo the set-up (torch) and the
# dependency build that both variants share. SEQSERVE_COMMIT: the commit seqserve_build_info
# reports (.git is not in the build context); scripts/build-image.sh passes it.
ARG VARIANT=cpu
ARG SITE=/opt/seqserve/venv-torch-2.13.0/lib/python3.11/site-packages
ARG SEQSERVE_COMMIT=unknown
RUN . scripts/env.sh \
    && if [ "$VARIANT" = cpu ]; then export SEQSERVE_CPU_ONLY=1; fi \
    && cargo build --release --locked \
    && cp target/release/seqserve /usr/local/bin/seqserve \
    && bash scripts/runtime-libs.sh "$VARIANT" /usr/local/bin/seqserve "$SITE" /runtime

FROM debian:bookworm-slim
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /runtime/ /
COPY --from=build /usr/local/bin/seqserve /usr/local/bin/seqserve
WORKDIR /app
COPY models ./models
COPY deploy/seqserve.toml ./seqserve.toml
USER 65532:65532
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s CMD ["curl", "-fsS", "localhost:8080/health/ready"]
# SIGTERM drains in-flight requests (server.drain_timeout_secs) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["seqserve"]
# k8s/deployment.yaml replaces these arguments (its ConfigMap is mounted at /etc/seqserve).
CMD ["serve", "--config", "/app/seqserve.toml"]
