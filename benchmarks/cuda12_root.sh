# The throw-away Debian trixie root with a real CUDA 12.4 toolkit (non-free nvidia-cuda-toolkit), and a Python 3.12
# venv with the reference torch 2.4.0+cu121 from env/requirements.lock (--require-hashes); sourced by
# cuda12_minkowski_build.sh and kaggle_simulated_sessions.sh. Sets REPO, WORK, ROOT, VENV, CACHE, LOGS, PYTHON312,
# GCC; `bind SRC DEST` mounts SRC at DEST inside the root (undone on exit). Needs root and debootstrap.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${WORK:-/work/cache/cuda12}
JOBS=${JOBS:-2}
GCC=${CXX_VERSION:-12}
ROOT=$WORK/root
VENV=$WORK/venv312
WHEELS=$WORK/wheels-cp312
CACHE=$WORK/me-cache
LOGS=$WORK/logs
PYTHON312=${PYTHON312:-$(ls /root/.pyenv/versions/3.12.*/bin/python3.12 2>/dev/null | tail -1 || true)}
PYTHON312=${PYTHON312:-$(command -v python3.12 || true)}
[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap, chroot, mounts)" >&2; exit 1; }
[ -x "$PYTHON312" ] || { echo "no Python 3.12 found: set PYTHON312=/path/to/python3.12" >&2; exit 1; }
mkdir -p "$LOGS" "$CACHE"
say() { echo "[$(date +%H:%M:%S)] $*"; }

# 1. the throw-away trixie root with the CUDA 12.4 toolkit, g++-$GCC and OpenBLAS
if [ ! -e "$ROOT/.rsna-base" ]; then
  say "debootstrap trixie into $ROOT"
  debootstrap --variant=minbase --components=main,contrib,non-free trixie "$ROOT" http://deb.debian.org/debian
  touch "$ROOT/.rsna-base"
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mounted=()
cleanup() { for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[i]}" || true; done; }
trap cleanup EXIT
bind() { mkdir -p "$ROOT$2"; mount --bind "$1" "$ROOT$2"; mounted+=("$ROOT$2"); }
mountpoint -q "$ROOT/proc" || { mount -t proc proc "$ROOT/proc"; mounted+=("$ROOT/proc"); }
mountpoint -q "$ROOT/dev" || bind /dev /dev
if [ ! -e "$ROOT/.rsna-cuda" ]; then
  say "apt: nvidia-cuda-toolkit (trixie non-free), g++-$GCC, libopenblas-dev"
  chroot "$ROOT" apt-get update -q
  # the runtime libraries a host-built Python needs (ssl, ffi, sqlite, ...), since the host's Python runs inside
  chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    nvidia-cuda-toolkit nvidia-cuda-dev "g++-$GCC" "gcc-$GCC" libopenblas-dev ca-certificates git \
    libssl3t64 libffi8 zlib1g libbz2-1.0 liblzma5 libsqlite3-0 libreadline8t64 libncursesw6 libuuid1
  touch "$ROOT/.rsna-cuda"
fi

# 2. the reference torch and pins, hash-checked, in a Python 3.12 venv (wheels downloaded once)
if [ ! -e "$VENV/.rsna-ready" ]; then
  say "venv $VENV: env/requirements.lock with --require-hashes (torch 2.4.0+cu121 and its nvidia wheels, ~2.9 GB)"
  PIP_CONFIG_FILE=/dev/null "$PYTHON312" -m pip download --isolated --no-deps --require-hashes \
    -r "$REPO/env/requirements.lock" -d "$WHEELS" -q
  "$PYTHON312" -m venv "$VENV"
  PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip install --isolated -q --no-index --find-links "$WHEELS" \
    --require-hashes -r "$REPO/env/requirements.lock"
  touch "$VENV/.rsna-ready"
fi

# the host's Python prefix, $WORK and the repo appear at the same paths inside the root (the repo at /repo)
PYPREFIX=$("$PYTHON312" -c 'import sys; print(sys.base_prefix)')
bind "$PYPREFIX" "$PYPREFIX"
bind "$WORK" "$WORK"
bind "$REPO" /repo
