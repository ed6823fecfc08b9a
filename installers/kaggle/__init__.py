"""The Kaggle installer behind installers/kaggle_setup.py: setup.py (the facts the steps share, the plan, the command
line), steps.py (each step's plan and run), venv.py (the isolated reference environment), pip.py (what an
interpreter has; pip's hold), wheelhouse.py (the offline wheelhouse), toolchain.py (what a MinkowskiEngine build
would find here), state.py (the step stamps), lock.py (`python -m installers.kaggle.lock WHEEL_DIR`)."""
