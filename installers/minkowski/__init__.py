"""MinkowskiEngine built, cached, installed and verified one way everywhere (installers/build_minkowski.py).

build.py (the steps and the command line), source.py (fork, sdist or local tree), toolchain.py (what this machine
builds with), fixes.py (source fixes per toolchain), wheel.py (the build record inside the wheel), progress.py (the
compile heartbeat), selftest.py (run as a script in the target Python), errors.py.
"""
