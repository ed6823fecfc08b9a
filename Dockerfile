# The reference environment as an image (env/reference.toml), from inputs that are all pinned by version in sources
# that keep old versions: a plain OS base (Docker's official images keep their tags), the CUDA 12.1 compiler and
# headers by exact version from NVIDIA's apt repository (key checked by fingerprint), Python + pip from
# env/conda-linux-64.lock (conda-forge, md5-checked), every Python package from env/requirements.lock (sha256-checked,
# the same file the Kaggle installer uses), MinkowskiEngine built for the GPUs in TORCH_CUDA_ARCH_LIST, rsna_phase0.
# Stages: python-env (/opt/env from the conda lock) -> runtime (user, runtime libraries, /opt/env, every locked
# package) -> builder (runtime + GCC + CUDA toolkit: MinkowskiEngine's wheel) -> the image (runtime + that wheel +
# the project). The image carries one copy of CUDA (torch's nvidia-* wheels) and only a C compiler (Triton's).
# Build: `make docker-build` (= rsna-phase0 docker build, which passes the spec's values as build arguments).
# The ARG defaults equal the spec; tests/test_docker_files.py fails when they drift. Layers run from slowest to
# most often changed: a code change rebuilds only the last layer, in seconds. Works with the legacy builder (the
# Docker SDK's) and BuildKit alike.
ARG BASE_IMAGE=ubuntu:22.04
ARG PYTHON_ENV_IMAGE=mambaorg/micromamba:2.0.5

# --- Python: /opt/env from the conda lock (or, with PYTHON_ENV=prebuilt, from a base that has it) --------------
# Tags are in the ARG defaults above (hadolint cannot see through ARGs).
# hadolint ignore=DL3006
FROM ${PYTHON_ENV_IMAGE} AS python-env
ARG PYTHON_ENV=conda
ARG PYTHON_MINOR=3.12
# micromamba's image runs as mambauser; conda writes the final prefix into its files, so it must be /opt/env.
# hadolint ignore=DL3002
USER 0
COPY env/conda-linux-64.lock env/requirements.lock docker/python_env.sh /tmp/lock/
RUN sh /tmp/lock/python_env.sh /tmp/lock "${PYTHON_MINOR}"

# --- Runtime base: the user, Python and every locked package; both stages below start from it ---------------------
# hadolint ignore=DL3006
FROM ${BASE_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/env/bin:${PATH} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    RSNA_PHASE0_SPEC=/opt/rsna_phase0/env/reference.toml \
    RSNA_PHASE0_IMAGE_REPORT=/opt/rsna_phase0/reports/image-env.json

# The user first, before anything can write into its home: all of /home/rsna is rsna's (pip --user, jupyter, caches).
RUN useradd --uid 1000 --user-group --create-home --home-dir /home/rsna --shell /bin/bash rsna \
    && install -d -o rsna -g rsna -m 0755 /home/rsna/.local /home/rsna/.cache /home/rsna/.config

# MinkowskiEngine's runtime libraries: OpenBLAS and GCC's OpenMP; and a C compiler, with which Triton builds each
# kernel's launcher at first use (the decoder's fused norm + GELU, speed-up fused_norm_gelu: without one it runs
# eagerly, slower, and the train report says why). Versions are those of the base's release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libopenblas0 libgomp1 gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# The GPU contract for the NVIDIA Container Toolkit: the driver rule is the spec's [driver] (check-env uses it too).
ARG MIN_DRIVER=525.60.13
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="driver>=${MIN_DRIVER}"

COPY --from=python-env /opt/env /opt/env

# Every Python package, by hash, nothing beyond the lock (--no-deps): torch 2.4.0+cu121 and its nvidia-* wheels,
# the image's only CUDA runtime libraries. PIP_WHEELS: optionally a folder or URL of the same wheels (find-links),
# to build offline or without downloading 2.9 GB again; the hashes are checked all the same.
ARG PIP_WHEELS=""
COPY env/requirements.lock /tmp/lock/requirements.lock
RUN pip install --no-deps --require-hashes ${PIP_WHEELS:+--find-links "${PIP_WHEELS}"} -r /tmp/lock/requirements.lock \
    && rm -rf /tmp/lock

# --- Build stage: the compiler and the CUDA toolkit, to build MinkowskiEngine's wheel (none of it is shipped) -----
FROM runtime AS builder

# The compiler, asked for by name (GCC 12: the newest CUDA 12.1 accepts; nvcc gets it as -ccbin through CC),
# OpenBLAS headers and git for MinkowskiEngine.
ARG GCC_VERSION=12
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends "gcc-${GCC_VERSION}" "g++-${GCC_VERSION}" libopenblas-dev git \
    && rm -rf /var/lib/apt/lists/*
ENV CC=gcc-${GCC_VERSION} \
    CXX=g++-${GCC_VERSION} \
    PATH=/opt/env/bin:/usr/local/cuda/bin:${PATH}

# The CUDA compiler and headers, pinned (docker/cuda_toolkit.sh: nvidia-apt | distro-apt | base).
ARG CUDA_SOURCE=nvidia-apt
ARG CUDA_VERSION=12.1
ARG CUDA_MAJOR=12
ARG CUDA_APT_REPO=https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64
ARG CUDA_APT_KEY_FINGERPRINT=EB693B3035CD5710E231E123A4B469963BF863CC
ARG CUDA_APT_PACKAGES="cuda-nvcc-12-1=12.1.105-1 cuda-cudart-dev-12-1=12.1.105-1 cuda-cccl-12-1=12.1.109-1 cuda-driver-dev-12-1=12.1.105-1 cuda-nvtx-12-1=12.1.105-1 libcublas-dev-12-1=12.1.3.1-1 libcusparse-dev-12-1=12.1.0.106-1 libcusolver-dev-12-1=11.4.5.107-1 libcurand-dev-12-1=10.3.2.106-1"
COPY docker/cuda_toolkit.sh /tmp/docker/cuda_toolkit.sh
RUN sh /tmp/docker/cuda_toolkit.sh && rm -rf /tmp/docker

# MinkowskiEngine, from the build module and the spec only (code changes do not rebuild it). No GPU is visible
# during `docker build`: the module builds with --force_cuda for the archs given.
COPY env/reference.toml /opt/rsna_phase0/env/reference.toml
COPY rsna_phase0/__init__.py rsna_phase0/atomic.py /opt/rsna_phase0/rsna_phase0/
COPY rsna_phase0/check_env/__init__.py rsna_phase0/check_env/spec.py /opt/rsna_phase0/rsna_phase0/check_env/
COPY rsna_phase0/core /opt/rsna_phase0/rsna_phase0/core
COPY installers /opt/rsna_phase0/installers
ARG TORCH_CUDA_ARCH_LIST="6.0;7.0;7.5;8.0;8.6;8.9;9.0"
ARG ME_SOURCE=git
ARG MAX_JOBS=""
RUN HOME=/root python /opt/rsna_phase0/installers/build_minkowski.py --source "${ME_SOURCE}" \
        --archs "${TORCH_CUDA_ARCH_LIST}" ${MAX_JOBS:+--jobs "${MAX_JOBS}"} --cache /tmp/me-cache \
        --wheel-out /opt/wheels --log /opt/wheels/build.log \
    && rm -rf /tmp/me-cache

# --- The image: the runtime base plus MinkowskiEngine's wheel and the project -------------------------------------
FROM runtime

# The wheel (with its build record, rsna_build.json) and its build log, then the build module's self-test (CUDA
# support compiled in; the GPU comparison waits for a GPU: check-env runs it when a container starts).
COPY --from=builder /opt/wheels /opt/wheels
COPY installers/minkowski/selftest.py /tmp/minkowski_selftest.py
RUN pip install --no-deps /opt/wheels/*.whl \
    && HOME=/root python /tmp/minkowski_selftest.py --expect-cuda --no-gpu-ok \
    && rm /tmp/minkowski_selftest.py

# The project, editable from /opt/rsna_phase0 (so the spec is found beside it), and the build-time report.
COPY pyproject.toml README.md /opt/rsna_phase0/
COPY env/reference.toml /opt/rsna_phase0/env/reference.toml
COPY installers /opt/rsna_phase0/installers
COPY rsna_phase0 /opt/rsna_phase0/rsna_phase0
COPY docker /opt/rsna_phase0/docker
# hadolint ignore=DL3013
RUN pip install --no-deps --no-build-isolation -e /opt/rsna_phase0 \
    && chmod 0755 /opt/rsna_phase0/docker/entrypoint.sh \
    && mkdir -p /opt/rsna_phase0/reports \
    && { HOME=/root rsna-phase0 check-env --write-report "${RSNA_PHASE0_IMAGE_REPORT}" \
         || echo "check-env at build time sees no GPU: GPU lines are checked when a container starts"; } \
    && test -s "${RSNA_PHASE0_IMAGE_REPORT}" \
    && rm -rf /root/.cache

ENV HOME=/home/rsna
USER 1000:1000
WORKDIR /opt/rsna_phase0
ENTRYPOINT ["/opt/rsna_phase0/docker/entrypoint.sh"]
CMD ["rsna-phase0", "--help"]
