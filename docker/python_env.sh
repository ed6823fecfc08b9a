#!/bin/sh
# The image's Python prefix /opt/env (first stage of the Dockerfile).
#   PYTHON_ENV=conda (default): micromamba creates it from env/conda-linux-64.lock (conda-forge, url#md5 per package),
#     then forgets the conda packages that env/requirements.lock installs with pip (today setuptools, wheel,
#     packaging), so conda's records never describe files that pip replaced.
#   PYTHON_ENV=prebuilt: the stage's base image already holds /opt/env (a stand-in where no conda channel can be
#     reached); it is only checked.
# Usage: python_env.sh LOCK_DIR PYTHON_MINOR    |    python_env.sh --overlap LOCK_DIR (prints the shared names)
set -eu

# Python packages both locks install (lower case, '-' for '_'): conda's are the lock's files whose build string
# starts with "py" (tzdata-...-h151e31d_0 is the time zone database, not PyPI's tzdata), pip's are `name==` lines.
overlap() {
    grep -E '^[A-Za-z0-9._-]+==' "$1/requirements.lock" | sed -E 's/==.*//' | tr 'A-Z_.' 'a-z--' | sort -u > /tmp/pip-names
    grep -E '^https?://' "$1/conda-linux-64.lock" | sed -E 's#.*/##; s/#.*//; s/\.(conda|tar\.bz2)$//' \
        | sed -nE 's/^(.+)-[^-]+-py[^-]*$/\1/p' | tr 'A-Z_' 'a-z-' | sort -u | grep -Fx -f /tmp/pip-names || true
    rm -f /tmp/pip-names
}

if [ "${1:-}" = "--overlap" ]; then
    overlap "$2"
    exit 0
fi
lock_dir=$1
minor=$2
mode=${PYTHON_ENV:-conda}

case "$mode" in
conda)
    command -v micromamba >/dev/null || { echo "python_env: PYTHON_ENV=conda needs micromamba in the base image (MICROMAMBA_IMAGE)" >&2; exit 1; }
    micromamba create --yes --prefix /opt/env --file "$lock_dir/conda-linux-64.lock"
    shared=$(overlap "$lock_dir")
    if [ -n "$shared" ]; then
        echo "python_env: pip's lock installs $(echo $shared): removing conda's copies first"
        # shellcheck disable=SC2086
        micromamba remove --yes --force --prefix /opt/env $shared
    fi
    micromamba clean --all --yes
    ;;
prebuilt)
    [ -x /opt/env/bin/python ] || { echo "python_env: PYTHON_ENV=prebuilt but the base image has no /opt/env/bin/python" >&2; exit 1; }
    echo "python_env: STAND-IN: /opt/env comes prebuilt with the base image ($(/opt/env/bin/python -V)), not from conda-linux-64.lock"
    ;;
*)
    echo "python_env: PYTHON_ENV must be conda or prebuilt, not '$mode'" >&2
    exit 1
    ;;
esac

found=$(/opt/env/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$found" = "$minor" ] || { echo "python_env: /opt/env has Python $found; the spec wants $minor" >&2; exit 1; }
