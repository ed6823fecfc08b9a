"""The two set-up tools, standard library only, each behind its entry script (run them by path, on a bare Python):
`python installers/build_minkowski.py` (the `minkowski` package) and `python installers/kaggle_setup.py`."""
