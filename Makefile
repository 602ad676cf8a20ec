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
ARGS ?=
RUNS ?= runs

.PHONY: install test test-fast demo data tokenizer train bench-train bench-prep clean help

help:
	@echo "make install   create $(VENV) and install codegpt with dev extras"
	@echo "make test      run the test suite on CPU"
	@echo "make demo      run the pipeline end to end on CPU (what is built so far)"
	@echo "make data      data prep with DATA_CONFIG=$(DATA_CONFIG) ARGS='section.field=value ...'"
	@echo "make train     train with TRAIN_CONFIG=$(TRAIN_CONFIG) ARGS='section.field=value ...'"
	@echo "make bench-train   training-step throughput vs transformers' GPT-2"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
ifneq ($(HAS_CUDA),1)
	$(PIP) install "torch==$(TORCH_CPU_VERSION)"
endif
	$(PIP) install -e ".[dev,data]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

data: install
	$(VENV)/bin/codegpt prep $(DATA_CONFIG) $(ARGS)

tokenizer: install
	$(VENV)/bin/codegpt tokenizer configs/tokenizer/default.yaml $(ARGS)

# The demo: data prep on the interpreter's own files, then (until the BPE tokenizer stage
# lands) byte-level token shards of the kept documents, the smoke training run and its plot.
$(RUNS)/demo/data/stats.json: | install
	$(VENV)/bin/codegpt prep configs/data/default.yaml output.dir=$(RUNS)/demo/data

$(RUNS)/demo/tokens/meta.json: $(RUNS)/demo/data/stats.json
	$(VENV)/bin/codegpt shards-bytes --parquet $(RUNS)/demo/data/data --out $(RUNS)/demo/tokens --max-mb 8

demo: install $(RUNS)/demo/tokens/meta.json
	$(VENV)/bin/codegpt train configs/train/smoke.yaml data.dir=$(RUNS)/demo/tokens run.dir=$(RUNS)/demo/train $(ARGS)
	$(VENV)/bin/codegpt plot $(RUNS)/demo/train

train: install
	$(VENV)/bin/accelerate launch train.py $(TRAIN_CONFIG) $(ARGS)

bench-train: install
	$(PY) bench/bench_train_step.py $(ARGS)

bench-prep: install
	$(PY) bench/bench_prep.py

clean:
	rm -rf $(RUNS)
