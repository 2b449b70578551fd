# Backstory Generator. `make serve` runs the product; `make test` runs the whole suite.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV   ?= .venv
HOST   ?= 127.0.0.1
PORT   ?= 8000
BIN    := $(VENV)/bin

export HF_HUB_OFFLINE ?= 1
export BENTOML_DO_NOT_TRACK := true
export TOKENIZERS_PARALLELISM := false

.PHONY: serve test lint train train-gpu eval bench build clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

serve: $(VENV)/.runtime  ## the web UI and API on http://$(HOST):$(PORT), default model
	$(BIN)/bentoml serve service:Gateway --host $(HOST) --port $(PORT)

test: $(VENV)/.dev  ## lint, then the whole suite (unit, real servers, browser, training, bench)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .

train: $(VENV)/.runtime  ## retrain the default model on these CPUs (about an hour)
	$(BIN)/python -m training --preset cpu --output_dir runs/cpu

train-gpu: $(VENV)/.runtime  ## the `gpu` preset (about 5 minutes on one H100/H200)
	$(BIN)/python -m training --preset gpu --output_dir runs/gpu

eval: $(VENV)/.dev  ## quality report of the default model (see training/evaluate.py)
	$(BIN)/python -m training.evaluate --model models/backstory

bench: $(VENV)/.dev  ## serving benchmark against the naive baseline -> BENCHMARKS.md
	$(BIN)/python -m bench

build: $(VENV)/.runtime  ## the Bento (bentofile.yaml); containerize needs a Docker engine
	$(BIN)/bentoml build

clean:
	rm -rf .cache runs .pytest_cache .ruff_cache
