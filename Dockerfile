# syntax=docker/dockerfile:1
# promptd container images (README: "Docker").
#   GPU (default target): docker build -t promptd:0.1.0 .
#   CPU (laptops):        docker build --target runtime-cpu -t promptd:0.1.0-cpu .
# Run: the model directory is mounted read-only at /models, prompts at /prompts (read-write,
# shared by replicas); HTTP on 8080, gRPC on 50051.

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm
ARG TORCH_VERSION=2.11.0

# ---- build: provision libtorch exactly as `make` does, then compile ---------------------------
FROM rust:${RUST_VERSION}-${DEBIAN} AS build-base
# scripts/provision-libtorch.sh fetches libtorch from PyPI's torch wheel with pip.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# libtorch first, in its own layer: it changes only with the torch version.
COPY Makefile ./
COPY scripts/provision-libtorch.sh scripts/
RUN make libtorch
COPY . .

FROM build-base AS build-cpu
RUN make build && cp target/release/promptd /usr/local/bin/promptd

FROM build-base AS build-cuda
RUN make build-cuda && cp target/release/promptd /usr/local/bin/promptd

# ---- the CUDA libraries libtorch_cuda loads: torch's own nvidia-* wheels, pinned by torch -------
FROM python:3.11-slim-${DEBIAN} AS cuda-libs
ARG TORCH_VERSION
# Only torch/lib and nvidia/ are kept; libtorch_cuda finds nvidia/*/lib through its own
# RUNPATH ($ORIGIN/../../nvidia/...), so the site-packages layout is preserved.
RUN pip install --no-cache-dir --target /opt/site "torch==${TORCH_VERSION}" \
    && mkdir -p /opt/promptd/torch \
    && mv /opt/site/torch/lib /opt/promptd/torch/lib \
    && mv /opt/site/nvidia /opt/promptd/nvidia \
    && rm -rf /opt/site /opt/promptd/torch/lib/libtorch_python.so

# ---- runtime common to both variants -----------------------------------------------------------
FROM debian:${DEBIAN}-slim AS runtime-base
# curl: the HEALTHCHECK. libstdc++ and libgcc come with the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 promptd \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin promptd \
    && mkdir -p /models /prompts \
    && chown promptd:promptd /prompts
ENV PROMPTD_MODEL=/models \
    PROMPTD_PROMPTS=/prompts \
    PROMPTD_ADDR=0.0.0.0:8080 \
    PROMPTD_GRPC_ADDR=0.0.0.0:50051 \
    RUST_LOG=info
VOLUME ["/prompts"]
EXPOSE 8080 50051
# Liveness: /healthz answers as soon as the server listens, also while a large model loads.
# It probes port 8080: change it together with PROMPTD_ADDR.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["promptd"]
CMD ["serve"]

# ---- CPU image ---------------------------------------------------------------------------------
FROM runtime-base AS runtime-cpu
# The CPU binary needs libtorch_cpu, libc10, libgomp and, at load time, the CUDA runtime and
# CUPTI stubs that libtorch_cpu links (no GPU is used).
COPY --from=build-cpu /src/.libtorch/torch/lib/libc10.so /src/.libtorch/torch/lib/libtorch.so \
     /src/.libtorch/torch/lib/libtorch_cpu.so /src/.libtorch/torch/lib/libgomp.so.1 \
     /opt/promptd/torch/lib/
COPY --from=build-cpu /src/.libtorch/nvidia/cu13/lib/ /opt/promptd/nvidia/cu13/lib/
COPY --from=build-cpu /usr/local/bin/promptd /usr/local/bin/promptd
ENV LD_LIBRARY_PATH=/opt/promptd/torch/lib:/opt/promptd/nvidia/cu13/lib \
    PROMPTD_DEVICE=cpu
USER 10001:10001

# ---- GPU image (default) -----------------------------------------------------------------------
FROM runtime-base AS runtime-cuda
COPY --from=cuda-libs /opt/promptd/ /opt/promptd/
COPY --from=build-cuda /usr/local/bin/promptd /usr/local/bin/promptd
# The NVIDIA container toolkit mounts the driver (libcuda) for these capabilities.
ENV LD_LIBRARY_PATH=/opt/promptd/torch/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PROMPTD_DEVICE=cuda
USER 10001:10001
