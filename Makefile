# rsna_phase0 — every command a user or CI runs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The reference torch (env/reference.toml) is 2.4.0+cu121, installed by the Dockerfile and the Kaggle installer.
# On a CPU development or CI machine the local CPU wheel stands in; check-env reports the difference.
DEV_TORCH ?= 2.13.0
ME_CACHE ?= $(HOME)/.cache/rsna_phase0/wheels
DEMO ?= runs/demo

.PHONY: help setup demo test lint check-env

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.ready: pyproject.toml env/reference.toml installers/build_minkowski.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(DEV_TORCH)
	# hold torch: a package that wants another torch must fail here, not silently replace it
	echo "torch==$(DEV_TORCH)" > $(VENV)/constraints.txt
	$(PYTHON) -m rsna_phase0.env.spec requirements --no-torch --dev > $(VENV)/requirements.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -r $(VENV)/requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python installers/build_minkowski.py --cpu-only --cache $(ME_CACHE)
	touch $@

setup: $(VENV)/.ready ## create .venv with the pinned packages, rsna_phase0 and MinkowskiEngine (CPU)

demo: setup ## generate the synthetic data set and pre-train the smoke preset on the CPU
	$(BIN)/rsna-phase0 data synth $(DEMO)/data --mri 8 --ct 4 --seed 0
	$(BIN)/rsna-phase0 train --preset smoke --mri-dir $(DEMO)/data/OpenMind_processed \
		--ct-dir $(DEMO)/data/NIH_deeplesion/CT --out $(DEMO)/run --epochs 25 --time-budget 5m --allow-env-mismatch

test: setup ## run the test suite (GPU tests skip on CPU machines with the reason)
	$(BIN)/python -m pytest -q

lint: setup ## ruff (and hadolint on the Dockerfile)
	$(BIN)/ruff check rsna_phase0 installers tests benchmarks env
	$(BIN)/ruff format --check rsna_phase0 installers tests benchmarks env
	$(BIN)/hadolint Dockerfile

check-env: setup ## prove this environment equals the reference one
	$(BIN)/rsna-phase0 check-env

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

.PHONY: docker-build docker-train docker-shell docker-check-env lock

docker-build: setup ## build the reference image (CUDA 12.1, locked env, MinkowskiEngine for the spec's archs)
	$(BIN)/rsna-phase0 docker build --tag $(IMAGE) $(DOCKER_ARGS)

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
