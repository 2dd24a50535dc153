# syntax=docker/dockerfile:1
# histosearch images, one Dockerfile, two variants:
#   CPU (default): docker build -t histosearch:cpu .
#   GPU (CUDA):    docker build --target gpu -t histosearch:gpu .
# Both run as the unprivileged user `histosearch`, keep their data in /data and serve on port 8000.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu22.04
ARG NODE_IMAGE=node:22.12.0-bookworm-slim

# ---------------------------------------------------------------- the slide viewer (both variants)
# OpenSeadragon at the version pinned in viewer/package-lock.json, from the npm registry (`npm ci`
# checks the lock file's integrity hashes), copied with its licence into the package's static
# files by the same script as `make install`; the copy is never committed.
FROM ${NODE_IMAGE} AS viewer
WORKDIR /src
COPY viewer/package.json viewer/package-lock.json viewer/
COPY scripts/vendor-viewer scripts/vendor-viewer
RUN scripts/vendor-viewer

# ---------------------------------------------------------------- GPU variant: CUDA runtime base
FROM ${CUDA_IMAGE} AS gpu-base
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu 22.04 ships Python 3.10; histosearch is built and tested on 3.11.
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libgomp1 \
    && apt-get purge -y software-properties-common gpg-agent && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*

FROM gpu-base AS gpu-builder
WORKDIR /src
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY model model
COPY indexer indexer
COPY service service
COPY --from=viewer /src/service/static/vendor service/static/vendor
COPY docker/constraints.txt docker/constraints.txt
# PyPI's torch wheels are CUDA builds and faiss-gpu brings its CUDA libraries from pip; every
# version is pinned by the constraints file.
# hadolint ignore=DL3013
RUN pip install --constraint docker/constraints.txt ".[gpu]"

FROM gpu-base AS gpu
RUN useradd --create-home --uid 10001 histosearch && mkdir -p /data && chown histosearch /data
COPY --from=gpu-builder /opt/venv /opt/venv
COPY --chown=histosearch docker /app/docker
COPY --chown=histosearch demo /app/demo
ENV PATH=/opt/venv/bin:$PATH HISTOSEARCH_DEVICE=cuda HISTOSEARCH_WORKDIR=/data \
    HISTOSEARCH_ARCHIVE=/app/demo/archive HISTOSEARCH_INDEX_DIR=/data/index
WORKDIR /app
USER 10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3.11", "/app/docker/healthcheck.py", "http://127.0.0.1:8000/health"]
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["serve"]

# ---------------------------------------------------------------- CPU variant (the default target)
FROM ${PYTHON_IMAGE} AS cpu-builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY model model
COPY indexer indexer
COPY service service
COPY --from=viewer /src/service/static/vendor service/static/vendor
COPY docker/constraints.txt docker/constraints.txt
# The CPU wheel index keeps the image free of the multi-GB CUDA libraries; every version is pinned
# by the constraints file (torch==2.14.1 matches the CPU build 2.14.1+cpu).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# hadolint ignore=DL3013
# HISTOSEARCH_EXTRAS=",ray" adds the Ray extra (the compose `ray` profile builds it so).
ARG HISTOSEARCH_EXTRAS=""
RUN pip install --constraint docker/constraints.txt --extra-index-url "${TORCH_INDEX_URL}" \
    ".[cpu${HISTOSEARCH_EXTRAS}]"

FROM ${PYTHON_IMAGE} AS cpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 histosearch && mkdir -p /data && chown histosearch /data
COPY --from=cpu-builder /opt/venv /opt/venv
COPY --chown=histosearch docker /app/docker
COPY --chown=histosearch demo /app/demo
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HISTOSEARCH_DEVICE=cpu HISTOSEARCH_WORKDIR=/data \
    HISTOSEARCH_ARCHIVE=/app/demo/archive HISTOSEARCH_INDEX_DIR=/data/index
WORKDIR /app
USER 10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/docker/healthcheck.py", "http://127.0.0.1:8000/health"]
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["serve"]
