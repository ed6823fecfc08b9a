# rsna_phase0 — every command a user or CI runs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The reference torch (env/reference.toml) is 2.4.0+cu121, installed by the Dockerfile and the Kaggle installer.
# On a CPU development or CI machine the declared stand-in [dev_torch] (a CPU build) takes its place; check-env says
# "development stand-in" (exit 3). Another DEV_TORCH installs, but check-env then reports torch as a MISMATCH.
DEV_TORCH ?= 2.13.0
# Where pip looks for torch. Empty: pip's own configuration (on this project's machines a local folder holding the
# CPU wheel). On a machine with only PyPI, torch==2.13.0 is the CUDA build (~20 nvidia packages, several GB):
# make setup refuses it before downloading; pass DEV_TORCH_INDEX=https://download.pytorch.org/whl/cpu there.
DEV_TORCH_INDEX ?=
ME_CACHE ?= $(HOME)/.cache/rsna_phase0/wheels
# make demo: DEMO is the folder (a new one starts a new run), RESUME=auto continues the run in it, EPOCHS sets the
# total epochs (raise it with RESUME=auto to train on), DEMO_ARGS adds train options.
DEMO ?= runs/demo
RESUME ?=
EPOCHS ?= 25
DEMO_ARGS ?=
DEMO_FLAG = $(if $(filter-out runs/demo,$(DEMO)), DEMO=$(DEMO))
# make test-fast: what is left out (the full suite is make test, what CI runs)
FAST_MARKERS ?= not slow and not docker and not gpu

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.ready: pyproject.toml env/reference.toml env/requirements.lock installers/build_minkowski.py installers/minkowski/build.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# refuse a CUDA torch before pip downloads gigabytes of it (see DEV_TORCH_INDEX above)
	$(BIN)/pip install -q --dry-run --no-deps --ignore-installed --report $(VENV)/torch-plan.json \
		torch==$(DEV_TORCH) $(TORCH_INDEX)
	$(BIN)/python -c "$$CPU_TORCH_ONLY" $(VENV)/torch-plan.json
	$(BIN)/pip install -q torch==$(DEV_TORCH) $(TORCH_INDEX)
	# hold torch: a package that wants another torch must fail here, not silently replace it
	echo "torch==$(DEV_TORCH)" > $(VENV)/constraints.txt
	$(PYTHON) -m rsna_phase0.check_env.spec requirements --no-torch --dev > $(VENV)/requirements.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -r $(VENV)/requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	# the lock's Triton beside the venv, not in it (the CPU torch must not pick it up): tests/test_norm_gelu.py runs
	# the fused kernels in Triton's interpreter on the CPU
	$(BIN)/pip install -q --no-deps --target $(VENV)/triton-interpreter \
		"$$(sed -n 's/^\(triton==[0-9.]*\).*/\1/p' env/requirements.lock)"
	$(BIN)/python installers/build_minkowski.py --cpu-only --cache $(ME_CACHE)
	touch $@

TORCH_INDEX = $(if $(DEV_TORCH_INDEX),--index-url $(DEV_TORCH_INDEX))
define CPU_TORCH_ONLY
import json, sys
version = json.load(open(sys.argv[1]))["install"][0]["metadata"]["version"]
if "+cpu" not in version:
    sys.exit(f"make setup: pip would install torch {version}, not a CPU build (from PyPI that is the CUDA wheel with "
             "~20 nvidia packages, several GB). Run: make setup DEV_TORCH_INDEX=https://download.pytorch.org/whl/cpu")
endef
export CPU_TORCH_ONLY

setup: $(VENV)/.ready ## create .venv with the pinned packages, rsna_phase0 and MinkowskiEngine (CPU)

demo: setup ## synthetic data + the smoke preset on the CPU; again: RESUME=auto [EPOCHS=50] continues, DEMO=runs/demo2 starts anew
	$(BIN)/rsna-phase0 data synth $(DEMO)/data --mri 8 --ct 4 --seed 0  # ~1 s; the same files every time
	$(BIN)/rsna-phase0 train --preset smoke --mri-dir $(DEMO)/data/OpenMind_processed \
		--ct-dir $(DEMO)/data/NIH_deeplesion/CT --out $(DEMO)/run --epochs $(EPOCHS) --time-budget 5m \
		--allow-env-mismatch $(if $(RESUME),--resume $(RESUME)) $(DEMO_ARGS)
	@echo "[demo] results in $(DEMO)/run: loss_curve.png, reconstruction.png, metrics.jsonl, best_model.pt"
	@echo "[demo] again: make demo RESUME=auto$(DEMO_FLAG) continues this run (add EPOCHS=$$(( $(EPOCHS) + 25 )) to" \
		"train past $(EPOCHS) epochs); make demo DEMO=runs/demo2 starts a new one"

test: setup ## the whole suite, what CI runs (GPU tests skip on CPU machines with the reason); lists the 15 slowest
	$(BIN)/python -m pytest -q --durations=15

test-fast: setup ## the suite without slow, Docker and GPU tests (a few minutes); lists the 15 slowest
	$(BIN)/python -m pytest -q -m "$(FAST_MARKERS)" --durations=15

lint: setup ## ruff (and hadolint on the Dockerfile)
	$(BIN)/ruff check rsna_phase0 installers tools tests benchmarks env
	$(BIN)/ruff format --check rsna_phase0 installers tools tests benchmarks env
	$(BIN)/hadolint Dockerfile

check-env: setup ## prove this environment equals the reference one (exit 3, a dev stand-in, is not an error here)
	$(BIN)/rsna-phase0 check-env || test $$? -eq 3

# --- Docker and locks (issue 8) ---------------------------------------------------------------------------------
IMAGE ?= rsna-phase0:latest
PRESET ?= dev
DATA ?= data
OUT ?= runs/docker
MRI_DIR ?= $(DATA)/OpenMind_processed
CT_DIR ?= $(DATA)/NIH_deeplesion/CT
CONDA ?= solve
DOCKER_ARGS ?=
ARGS ?=

.PHONY: docker-build docker-train docker-shell docker-check-env docker-test-e2e lock

docker-build: setup ## build the reference image (CUDA 12.1, locked env, MinkowskiEngine for the spec's archs)
	$(BIN)/rsna-phase0 docker build --tag $(IMAGE) $(DOCKER_ARGS)

docker-test-e2e: setup ## build the image here with docker/standin's stand-ins and test it (root, dockerd, patchelf; ~35 min cold)
	RSNA_PHASE0_DOCKER_E2E=1 $(BIN)/python -m pytest -q tests/test_docker_image_e2e.py

docker-train: setup ## train in the image: make docker-train DATA=/data OUT=runs/x PRESET=dev [ARGS="--time-budget 8h"]
	$(BIN)/rsna-phase0 docker train --image $(IMAGE) $(if $(MRI_DIR),--mri-dir $(MRI_DIR)) $(if $(CT_DIR),--ct-dir $(CT_DIR)) --out $(OUT) \
		--preset $(PRESET) $(DOCKER_ARGS) $(ARGS)

docker-shell: setup ## interactive bash in the image (DATA mounted read-only, OUT read-write)
	$(BIN)/rsna-phase0 docker shell --image $(IMAGE) --mount $(DATA) --mount-rw $(OUT) $(DOCKER_ARGS)

docker-check-env: setup ## prove the image on this machine's GPU equals the reference environment
	$(BIN)/rsna-phase0 docker check-env --image $(IMAGE) $(DOCKER_ARGS)

lock: setup ## regenerate environment.yml, conda-lock.yml, env/requirements.lock (CONDA=solve|keep|FILE)
	$(BIN)/python env/lock.py lock --conda $(CONDA)
	$(BIN)/python env/lock.py verify
