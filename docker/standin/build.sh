#!/bin/bash
# Build the image end to end on a machine that reaches Debian and PyPI but no Docker registry, conda channel,
# NVIDIA repository or GitHub (the development machines of this project). Stand-ins, each named in the log:
#   BASE_IMAGE       rsna-local/debian:trixie-minbase  (debootstrap trixie with non-free, docker import) for ubuntu:22.04
#   PYTHON_ENV_IMAGE rsna-local/python-standin:3.12.1  (docker/standin/bases.sh) for micromamba + conda-linux-64.lock
#   CUDA_SOURCE      distro-apt: Debian non-free nvidia-cuda-toolkit 12.4 for NVIDIA's pinned 12.1 packages
#   ME_SOURCE        sdist (PyPI, sha256-checked) for the fork's commit on GitHub
# Everything else is the users' path: `rsna-phase0 docker build` with the spec's other build arguments, the pip
# layer from env/requirements.lock (PIP_WHEELS: a local copy of the same wheels, hashes checked).
# Usage: DOCKER_HOST=unix://SOCK docker/standin/build.sh TAG [extra rsna-phase0 docker build options]
set -euo pipefail
tag=${1:?usage: build.sh TAG [options]}
shift
python=${PYTHON:-python}
exec "$python" -c 'import sys; from rsna_phase0.cli import main; sys.argv[0] = "rsna-phase0"; main()' \
    docker build --tag "$tag" --network host --me-source sdist --archs "${ARCHS:-7.5}" --max-jobs "${MAX_JOBS:-2}" \
    --build-arg BASE_IMAGE=rsna-local/debian:trixie-minbase \
    --build-arg PYTHON_ENV_IMAGE=rsna-local/python-standin:3.12.1 --build-arg PYTHON_ENV=prebuilt \
    --build-arg CUDA_SOURCE=distro-apt --build-arg CUDA_VERSION=12.4 \
    --build-arg "CUDA_APT_PACKAGES=nvidia-cuda-toolkit=12.4.131~12.4.1-2" \
    ${PIP_WHEELS:+--build-arg "PIP_WHEELS=$PIP_WHEELS"} "$@"
