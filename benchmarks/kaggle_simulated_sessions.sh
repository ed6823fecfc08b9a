#!/usr/bin/env bash
# Two simulated Kaggle sessions with the real reference lock (torch 2.4.0+cu121 from PyPI, Python 3.12), inside the
# CUDA 12.4 root of cuda12_root.sh (issue 16's closing note). Not in CI: it downloads ~3 GB.
#   1. online: a notebook Python seeded like Kaggle's (numpy 2, pandas, scipy, tqdm, click); kaggle_setup.py with
#      --make-wheelhouse; the notebook's `pip freeze` is compared before and after;
#   2. offline: a fresh /kaggle with that wheelhouse attached under input/, run inside `unshare -n` (no network),
#      an empty MinkowskiEngine cache, no source flag.
#
#   sudo benchmarks/kaggle_simulated_sessions.sh [ARCHS]     # default 7.5; needs the wheel cuda12_minkowski_build.sh
#                                                           # built for ARCHS in $WORK/me-cache (else it compiles)
# SEED: a folder of the notebook's wheels (default $WORK/seed312: numpy 2.2.6, pandas 2.3.3, scipy, tqdm, click).
set -euo pipefail

ARCHS=${1:-7.5}
# shellcheck source=benchmarks/cuda12_root.sh
. "$(dirname "$0")/cuda12_root.sh"
SIM=$WORK/sim
SEED=${SEED:-$WORK/seed312}
rm -rf "$SIM" && mkdir -p "$SIM/online/working" "$SIM/offline/input" "$SIM/offline/working"
# this host's certificate bundle (a TLS-inspecting proxy here), for pip and urllib inside the root
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/host-ca-certificates.crt"
in_root() {
  chroot "$ROOT" env -i HOME=/root PATH=/usr/bin:/bin LANG=C.UTF-8 CC="gcc-$GCC" CXX="g++-$GCC" TMPDIR="$WORK/tmp" \
    PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/host-ca-certificates.crt "$@"
}
FREEZE="import json; from importlib import metadata as m; print(json.dumps(sorted((d.metadata['Name'], d.version) for d in m.distributions())))"

say "the notebook's Python: a $PYTHON312 venv seeded from $SEED"
mkdir -p "$WORK/tmp"
in_root "$PYTHON312" -m venv "$SIM/notebook"
in_root "$SIM/notebook/bin/python" -m pip install -q --no-index --find-links "$SEED" numpy pandas scipy tqdm click
in_root "$SIM/notebook/bin/python" -c "$FREEZE" >"$SIM/freeze-before.json"

say "session 1 (online, PyPI): setup + --make-wheelhouse"
started=$(date +%s)
in_root "$SIM/notebook/bin/python" /repo/installers/kaggle_setup.py --kaggle-root "$SIM/online" \
  --python "$SIM/notebook/bin/python" --archs "$ARCHS" --me-cache "$CACHE" \
  --make-wheelhouse "$SIM/online/working/rsna_phase0_wheelhouse"
say "session 1: $(($(date +%s) - started)) s"
in_root "$SIM/notebook/bin/python" -c "$FREEZE" >"$SIM/freeze-after.json"
cmp "$SIM/freeze-before.json" "$SIM/freeze-after.json" && say "the notebook's packages: unchanged"
in_root "$SIM/notebook/bin/python" -c "import pandas, numpy; print('notebook: pandas', pandas.__version__, 'numpy', numpy.__version__)"

say "session 2 (offline, unshare -n): the wheelhouse attached under input/"
mv "$SIM/online/working/rsna_phase0_wheelhouse" "$SIM/offline/input/previous-output"
started=$(date +%s)
in_root unshare -n "$SIM/notebook/bin/python" /repo/installers/kaggle_setup.py --kaggle-root "$SIM/offline" \
  --python "$SIM/notebook/bin/python" --archs "$ARCHS" --me-cache "$SIM/empty-me-cache"
say "session 2: $(($(date +%s) - started)) s"
