# `make test`, `make lint`, `make train` build .venv from pyproject.toml when missing or stale.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: test test-fast lint train gpu-check clean-venv

$(STAMP): pyproject.toml setup.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	@# Build the compiled CPU kernels into the user's cache now (a few seconds), not on first use.
	$(VENV)/bin/python -c "from xlstm_rl.kernels.cpu import load_library; load_library()"
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/pytest -q

# The suite without the learning tests (an agent must learn a task): quick local iterations.
test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow and not learning"

# ruff and mypy (configured in pyproject.toml); both run, and either failing fails the target.
lint: $(STAMP)
	@status=0; \
	$(VENV)/bin/ruff check . || status=1; \
	$(VENV)/bin/mypy || status=1; \
	exit $$status

train: $(STAMP)
	$(VENV)/bin/xlstm-rl train

# No venv build here: a GPU machine brings its own torch/triton (the script picks .venv if present).
gpu-check:
	bash scripts/gpu_check.sh $(or $(OUT),gpu-check-out)

clean-venv:
	rm -rf $(VENV)
