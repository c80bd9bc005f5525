# seqserve image: the service on the shipped default model (models/beauty-2l), CPU or CUDA.
# Build: docker build -t seqserve .      Run: docker run -p 8080:8080 seqserve
#
# libtorch comes from PyPI (torch==2.13.0) through the project's own set-up script. The binary finds
# libtorch through an rpath to the venv's torch/lib, so the runtime stage keeps the venv's torch and
# nvidia libraries at the same absolute path.
FROM rust:1-bookworm AS build
ENV SEQSERVE_CACHE=/opt/seqserve
WORKDIR /src
# Set-up first (slow, rarely changes) so the layer is cached across source edits.
COPY scripts/setup.sh scripts/env.sh scripts/
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && bash scripts/setup.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN . scripts/env.sh && cargo build --release --locked \
    && cp target/release/seqserve /usr/local/bin/seqserve

FROM debian:bookworm-slim
ARG SITE=/opt/seqserve/venv-torch-2.13.0/lib/python3.11/site-packages
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build ${SITE}/torch/lib ${SITE}/torch/lib
COPY --from=build ${SITE}/nvidia ${SITE}/nvidia
COPY --from=build /usr/local/bin/seqserve /usr/local/bin/seqserve
WORKDIR /app
COPY models ./models
COPY deploy/seqserve.toml ./seqserve.toml
USER 65532:65532
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s CMD curl -fsS localhost:8080/health/ready || exit 1
# SIGTERM drains in-flight requests (server.drain_timeout_secs) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["seqserve"]
# k8s/deployment.yaml replaces these arguments (its ConfigMap is mounted at /etc/seqserve).
CMD ["serve", "--config", "/app/seqserve.toml"]
