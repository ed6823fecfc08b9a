# The reference environment as an image (env/reference.toml): the CUDA 12.1 toolkit, Python + pip from
# conda-lock.yml (conda-forge, md5-checked), every Python package from env/requirements.lock (sha256-checked, the
# same file the Kaggle installer uses), MinkowskiEngine built for the GPUs in TORCH_CUDA_ARCH_LIST, rsna_phase0.
# Build: `make docker-build` (= rsna-phase0 docker build, which passes the spec's values as build arguments).
# The ARG defaults equal the spec; tests/test_docker_files.py fails when they drift. Layers run from slowest to
# most often changed: a code change rebuilds only the last layers, in seconds.
ARG CUDA_BASE=nvidia/cuda:12.1.1-devel-ubuntu22.04
ARG MICROMAMBA_IMAGE=mambaorg/micromamba:2.0.5

# Tags are in the ARG defaults above (hadolint cannot see through ARGs).
# hadolint ignore=DL3006
FROM ${MICROMAMBA_IMAGE} AS micromamba

# hadolint ignore=DL3006
FROM ${CUDA_BASE}
ARG TORCH_CUDA_ARCH_LIST="6.0;7.0;7.5;8.0;8.6;8.9;9.0"
ARG ME_SOURCE=git
ARG MAX_JOBS=""

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/env/bin:${PATH} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    RSNA_PHASE0_SPEC=/opt/rsna_phase0/env/reference.toml \
    RSNA_PHASE0_IMAGE_REPORT=/opt/rsna_phase0/reports/image-env.json \
    HOME=/home/rsna

# OpenBLAS headers and git for MinkowskiEngine (the pinned fork commit). The OS layer is fixed by the base tag;
# Ubuntu's archive drops superseded versions, so apt pins would only break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libopenblas-dev git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Python and pip: the conda part of conda-lock.yml, as conda-lock renders it (url#md5 per package).
COPY --from=micromamba /bin/micromamba /usr/local/bin/micromamba
COPY env/conda-linux-64.lock /tmp/lock/conda-linux-64.lock
RUN micromamba create --yes --prefix /opt/env --file /tmp/lock/conda-linux-64.lock \
    && micromamba clean --all --yes

# Every Python package, by hash, nothing beyond the lock (--no-deps): torch 2.4.0+cu121 and its nvidia-* wheels.
COPY env/requirements.lock /tmp/lock/requirements.lock
RUN pip install --no-deps --require-hashes -r /tmp/lock/requirements.lock

# MinkowskiEngine, from the build module and the spec only (code changes do not rebuild it). No GPU is visible
# during `docker build`: the module builds with --force_cuda for the archs given.
COPY env/reference.toml /opt/rsna_phase0/env/reference.toml
COPY rsna_phase0/__init__.py rsna_phase0/atomic.py /opt/rsna_phase0/rsna_phase0/
COPY rsna_phase0/env/__init__.py rsna_phase0/env/spec.py /opt/rsna_phase0/rsna_phase0/env/
COPY rsna_phase0/core /opt/rsna_phase0/rsna_phase0/core
COPY installers /opt/rsna_phase0/installers
RUN python /opt/rsna_phase0/installers/build_minkowski.py --source "${ME_SOURCE}" --archs "${TORCH_CUDA_ARCH_LIST}" \
        ${MAX_JOBS:+--jobs "${MAX_JOBS}"} --cache /tmp/me-cache --wheel-out /opt/wheels --log /opt/wheels/build.log \
    && rm -rf /tmp/me-cache

# The project, editable from /opt/rsna_phase0 (so the spec is found beside it), and a user to run it.
COPY pyproject.toml README.md /opt/rsna_phase0/
COPY rsna_phase0 /opt/rsna_phase0/rsna_phase0
COPY docker /opt/rsna_phase0/docker
# hadolint ignore=DL3013
RUN pip install --no-deps --no-build-isolation -e /opt/rsna_phase0 \
    && chmod 0755 /opt/rsna_phase0/docker/entrypoint.sh \
    && useradd --uid 1000 --create-home --home-dir /home/rsna --shell /bin/bash rsna \
    && chmod 1777 /home/rsna \
    && mkdir -p /opt/rsna_phase0/reports \
    && { rsna-phase0 check-env --write-report "${RSNA_PHASE0_IMAGE_REPORT}" \
         || echo "check-env at build time sees no GPU: GPU lines are checked when a container starts"; } \
    && test -s "${RSNA_PHASE0_IMAGE_REPORT}"

USER rsna
WORKDIR /opt/rsna_phase0
ENTRYPOINT ["/opt/rsna_phase0/docker/entrypoint.sh"]
CMD ["rsna-phase0", "--help"]
