# histosearch, CPU image (the compose default): docker build -t histosearch:cpu .
# The GPU image has a file of its own, docker/Dockerfile.gpu, so that no builder (BuildKit or the
# classic one, which builds every stage before its target) ever fetches the CUDA base for this one.
# Runs as the unprivileged user `histosearch`, keeps its data in /data and serves on
# $HISTOSEARCH_PORT (8000 unless set). Build arguments, minimum versions and what was verified:
# docs/docker.md.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG NODE_IMAGE=node:22.12.0-bookworm-slim

# ---------------------------------------------------------------- the slide viewer
# OpenSeadragon at the version pinned in viewer/package-lock.json, from the npm registry (`npm ci`
# checks the lock file's integrity hashes), copied with its licence into the package's static
# files by the same script as `make install`; the copy is never committed.
FROM ${NODE_IMAGE} AS viewer
# Marks the builder stages, which the classic builder keeps as untagged images: cleaning up after
# a build, `docker image prune --filter label=io.histosearch.stage=builder` removes just these.
LABEL io.histosearch.stage=builder
WORKDIR /src
# Extra CA certificates (PEM, *.pem or *.crt) that npm and pip trust during the build, for
# networks behind a TLS-inspecting proxy: a file or folder inside the build context. Builder stages
# only: the final image holds neither the certificates nor the setting.
ARG BUILD_CA_CERTIFICATES=docker/build-ca
COPY ${BUILD_CA_CERTIFICATES} /tmp/build-ca/
COPY docker/with-build-ca docker/with-build-ca
COPY viewer/package.json viewer/package-lock.json viewer/
COPY scripts/vendor-viewer scripts/vendor-viewer
RUN docker/with-build-ca scripts/vendor-viewer

# ---------------------------------------------------------------- Python packages
FROM ${PYTHON_IMAGE} AS cpu-builder
LABEL io.histosearch.stage=builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
ARG BUILD_CA_CERTIFICATES=docker/build-ca
COPY ${BUILD_CA_CERTIFICATES} /tmp/build-ca/
COPY docker/with-build-ca docker/check_torch_build.py docker/constraints.txt docker/requirements.py \
     docker/
COPY pyproject.toml README.md ./
# The CPU wheel index keeps the image free of the multi-GB CUDA libraries; every version is pinned
# by the constraints file (torch==2.14.1 matches the CPU build 2.14.1+cpu). Where that index cannot
# be reached pip takes PyPI's CUDA build instead: the check after the install then stops the
# build, saying so, unless TORCH_BUILD=cuda accepts it (an image of about 6.5 GB instead of 2).
# TORCH_INDEX_URL="" skips the CPU index (and pip's minutes of retries on an unreachable one).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_BUILD=cpu
# HISTOSEARCH_EXTRAS=",ray" adds the Ray extra (the compose `ray` profile builds it so).
ARG HISTOSEARCH_EXTRAS=""
# The packages first, in a layer that only pyproject.toml and the constraints decide: a change of
# code reuses it and rebuilds in seconds, not the minutes of installing torch and the rest again.
# hadolint ignore=DL3013
RUN python docker/requirements.py pyproject.toml "cpu${HISTOSEARCH_EXTRAS}" > /tmp/requirements.txt \
    && docker/with-build-ca pip install --constraint docker/constraints.txt \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} --requirement /tmp/requirements.txt \
    && python docker/check_torch_build.py "$TORCH_BUILD" "$TORCH_INDEX_URL"
COPY model model
COPY indexer indexer
COPY service service
COPY --from=viewer /src/service/static/vendor service/static/vendor
# hadolint ignore=DL3013
RUN docker/with-build-ca pip install --no-deps --constraint docker/constraints.txt .

# ---------------------------------------------------------------- the image (the default target)
FROM ${PYTHON_IMAGE} AS cpu
# The torch build the image holds (cpu or cuda): the builder stage checked it, so the label is true.
ARG TORCH_BUILD=cpu
LABEL org.opencontainers.image.title="histosearch" \
      org.opencontainers.image.description="Content-based retrieval for H&E histopathology images" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.histosearch.variant="cpu" \
      io.histosearch.torch-build="${TORCH_BUILD}"
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 histosearch && mkdir -p /data && chown histosearch /data
COPY --from=cpu-builder /opt/venv /opt/venv
COPY --chown=histosearch docker/entrypoint.sh docker/ray-node.sh docker/healthcheck.py /app/docker/
COPY --chown=histosearch demo /app/demo
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HISTOSEARCH_DEVICE=cpu HISTOSEARCH_WORKDIR=/data \
    HISTOSEARCH_ARCHIVE=/app/demo/archive HISTOSEARCH_INDEX_DIR=/data/index
WORKDIR /app
USER 10001
VOLUME ["/data"]
# The default of HISTOSEARCH_PORT. No HEALTHCHECK in the image: its jobs (index, index-slides) and
# Ray nodes serve nothing; the compose file checks the service itself on its configured port, and
# `docker run` takes --health-cmd "python /app/docker/healthcheck.py /ready" (docs/docker.md).
EXPOSE 8000
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["serve"]
