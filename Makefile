# `make test` and `make train` build .venv from pyproject.toml when it is missing or stale.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: test train test-fast gpu-check clean-venv

$(STAMP): pyproject.toml setup.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/pytest -q

train: $(STAMP)
	$(VENV)/bin/xlstm-rl train

# No venv build here: a GPU machine brings its own torch/triton (the script picks .venv if present).
gpu-check:
	bash scripts/gpu_check.sh $(or $(OUT),gpu-check-out)

clean-venv:
	rm -rf $(VENV)
