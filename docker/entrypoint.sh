#!/bin/sh
# Every container proves its environment before it runs anything: `rsna-phase0 check-env` against the spec, now
# with the GPU and driver of this machine (the build-time report in $RSNA_PHASE0_IMAGE_REPORT had no GPU).
# A mismatch stops the container with check-env's explanation; RSNA_PHASE0_ALLOW_ENV_MISMATCH=1 runs anyway.
set -eu

# `rsna-phase0 docker train` runs as the calling user (files it writes are theirs); when that is not rsna (uid 1000)
# the image's home is not theirs to write: give them one in /tmp so pip, matplotlib and torch caches still work.
if [ ! -w "${HOME:-/nonexistent}" ]; then
    HOME="/tmp/home-$(id -u)"
    export HOME
    mkdir -p "$HOME"
fi

if [ "${1:-}" = "rsna-phase0" ] && [ "${2:-}" = "check-env" ]; then
    exec "$@"  # the command is the check itself
fi

if ! rsna-phase0 check-env; then
    if [ "${RSNA_PHASE0_ALLOW_ENV_MISMATCH:-0}" = "1" ]; then
        echo "entrypoint: environment differs from the reference (above); running anyway (RSNA_PHASE0_ALLOW_ENV_MISMATCH=1)" >&2
    else
        echo "entrypoint: environment differs from the reference (above); not running '$*'." >&2
        echo "entrypoint: rebuild the image (make docker-build), or set RSNA_PHASE0_ALLOW_ENV_MISMATCH=1 to run anyway." >&2
        exit 1
    fi
fi

# exec: the command becomes tini's child and receives docker stop's SIGTERM directly (training saves last.pt).
exec "$@"
