"""The standard-library layer: what the installers, env/lock.py, check-env and the tests share, importable on a bare
Python before anything is installed (tests/test_check_env_probes.py imports it with torch blocked).

- versions.py: package names and version strings compared one way everywhere
- requirements_lock.py: the hashed-requirements format (env/requirements.lock, wheelhouse locks): one parser, one
  writer, one error type
- archs.py: CUDA arch lists and what a GPU of a capability can run
- probes.py: commands with a timeout, nvcc, usable cores, the MinkowskiEngine build record
Atomic writes and sha256 live in rsna_phase0/atomic.py (also standard library only).
"""
