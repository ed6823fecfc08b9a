#!/bin/sh
# The CUDA compiler and headers MinkowskiEngine builds with (the runtime libraries come from torch's wheels).
#   CUDA_SOURCE=nvidia-apt (default): NVIDIA's apt repository CUDA_APT_REPO, its key checked against
#     CUDA_APT_KEY_FINGERPRINT, then CUDA_APT_PACKAGES, each pinned to an exact version (the repository keeps them all).
#   CUDA_SOURCE=distro-apt: CUDA_APT_PACKAGES from the base image's own apt sources (e.g. Debian non-free's
#     nvidia-cuda-toolkit: the stand-in used where NVIDIA's repository cannot be reached).
#   CUDA_SOURCE=base: the base image has the toolkit already (e.g. CUDA_BASE=nvidia/cuda:12.1.1-devel-ubuntu22.04).
# In every case nvcc must then be on PATH with torch's CUDA major (CUDA_MAJOR), or the build stops here.
set -eu
mode=${CUDA_SOURCE:-nvidia-apt}
export DEBIAN_FRONTEND=noninteractive

case "$mode" in
nvidia-apt)
    apt-get update
    apt-get install -y --no-install-recommends ca-certificates curl gnupg
    curl -fsSL "$CUDA_APT_REPO/3bf863cc.pub" -o /tmp/cuda-repo.pub
    found=$(gpg --show-keys --with-colons /tmp/cuda-repo.pub | awk -F: '$1 == "fpr" { print $10; exit }')
    if [ "$found" != "$CUDA_APT_KEY_FINGERPRINT" ]; then
        echo "cuda_toolkit: $CUDA_APT_REPO/3bf863cc.pub has fingerprint '$found', not $CUDA_APT_KEY_FINGERPRINT" >&2
        exit 1
    fi
    gpg --dearmor < /tmp/cuda-repo.pub > /usr/share/keyrings/cuda-archive-keyring.gpg
    echo "deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] $CUDA_APT_REPO/ /" > /etc/apt/sources.list.d/cuda.list
    apt-get update
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $CUDA_APT_PACKAGES
    apt-get purge -y --auto-remove curl gnupg
    rm -f /tmp/cuda-repo.pub
    ;;
distro-apt)
    echo "cuda_toolkit: STAND-IN: $CUDA_APT_PACKAGES from the base image's own apt sources, not NVIDIA's repository"
    apt-get update
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $CUDA_APT_PACKAGES
    ;;
base)
    echo "cuda_toolkit: using the toolkit of the base image"
    ;;
*)
    echo "cuda_toolkit: CUDA_SOURCE must be nvidia-apt, distro-apt or base, not '$mode'" >&2
    exit 1
    ;;
esac
rm -rf /var/lib/apt/lists/*

# NVIDIA's packages install under /usr/local/cuda-X.Y; give it the usual /usr/local/cuda name (PATH has its bin).
if [ ! -e /usr/local/cuda ] && [ -d "/usr/local/cuda-$CUDA_VERSION" ]; then
    ln -s "cuda-$CUDA_VERSION" /usr/local/cuda
fi
if ! command -v nvcc >/dev/null; then
    echo "cuda_toolkit: no nvcc on PATH after CUDA_SOURCE=$mode ($PATH)" >&2
    exit 1
fi
release=$(nvcc --version | sed -nE 's/.*release ([0-9]+\.[0-9]+).*/\1/p')
if [ "${release%%.*}" != "$CUDA_MAJOR" ]; then
    echo "cuda_toolkit: nvcc is CUDA $release; torch's CUDA major is $CUDA_MAJOR (MinkowskiEngine must match it)" >&2
    exit 1
fi
echo "cuda_toolkit: nvcc $release at $(command -v nvcc) (pinned: CUDA $CUDA_VERSION)"
