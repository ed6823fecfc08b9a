"""The one place that imports MinkowskiEngine: a missing or broken build fails loudly with the fix."""

from __future__ import annotations

import warnings

INSTALL_HINT = (
    "MinkowskiEngine 0.5.4 is required for the sparse encoder stages and there is no dense fallback. "
    "Build it for this torch with `python installers/build_minkowski.py` (see README, Start here); "
    "`rsna-phase0 check-env` says what else differs from the reference environment."
)


def import_minkowski():
    """Return the MinkowskiEngine module, or raise ImportError naming the install command."""
    try:
        with warnings.catch_warnings():
            # a CPU-only build warns on import; the CPU build is intended on CI and CPU machines
            warnings.filterwarnings("ignore", message="The MinkowskiEngine was compiled with CPU_ONLY flag")
            import MinkowskiEngine as ME
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} (import failed: {error})") from error
    return ME
