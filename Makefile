# `make test`, `make lint`, `make train` build .venv from pyproject.toml when missing or stale.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: test test-fast lint train gpu-check clean-venv install-clang test-kernels-clang \
	test-kernels-sanitized

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

# The compiled-kernel tests again, each run building the library afresh in a temporary cache:
# once with clang, once with UBSan (CI runs both after `make test`). Left out of both, as they
# do not depend on the C compiler or its flags (`make test` runs them): the loader's own tests
# (test_cpu_build.py, and those building other libraries: the cache, the fallbacks, refused
# ABIs) and torch.compile's tracing of the kernels' operators (test_cpu_compile.py).
KERNEL_TESTS := $(filter-out tests/test_cpu_build.py tests/test_cpu_compile.py, \
	$(wildcard tests/test_cpu_*.py))
KERNEL_LOADER_TESTS := $(addprefix --deselect tests/, \
	test_cpu_kernels.py::test_the_library_is_cached_and_a_damaged_or_untrusted_copy_is_rebuilt \
	test_cpu_kernels.py::test_a_compiler_without_openmp_gets_posix_threads \
	test_cpu_kernels.py::test_switched_off_or_without_a_working_compiler_the_torch_path_runs \
	test_cpu_abi.py::test_a_ test_cpu_abi.py::test_python_expectations)
# Exits 1 unless the library loads and its build line (why_unavailable) holds every argument.
KERNELS_BUILT_WITH := import sys; from xlstm_rl.kernels.cpu import build; \
	lib = build.load_library(); how = build.why_unavailable(); print('compiled CPU kernels:', how); \
	sys.exit(lib is None or not all(word in how for word in sys.argv[1:]))

# clang from the distribution when missing (as root with apt-get; else it stays missing).
install-clang:
	@command -v clang >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -qq clang >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && \
	    apt-get install -y -qq clang >/dev/null 2>&1; }; }; } || true

# Built by clang (without OpenMP where it lacks libomp: the test that the library shares torch's
# libgomp threads is left out, clang's libomp would be a second runtime anyway).
test-kernels-clang: $(STAMP) install-clang
	@if ! command -v clang >/dev/null 2>&1; then \
	  echo "test-kernels-clang: SKIPPED: no clang here, and apt-get could not install it"; exit 0; fi; \
	cache=$$(mktemp -d); trap 'rm -rf "$$cache"' EXIT; export CC=clang XLSTM_RL_CACHE=$$cache; \
	$(VENV)/bin/python -c "$(KERNELS_BUILT_WITH)" clang && \
	$(VENV)/bin/pytest -q $(KERNEL_TESTS) $(KERNEL_LOADER_TESTS) \
	  --deselect tests/test_cpu_kernels.py::test_the_library_runs_on_torchs_openmp_threads

# Built by gcc with UBSan (XLSTM_RL_CPU_SANITIZE=1: -fsanitize=undefined,bounds
# -fno-sanitize-recover=undefined): the first report aborts the process, failing the run. gcc's
# libubsan comes in as the library's own dependency, so dlopen needs no LD_PRELOAD.
test-kernels-sanitized: $(STAMP)
	@cache=$$(mktemp -d); trap 'rm -rf "$$cache"' EXIT; \
	export CC=gcc XLSTM_RL_CACHE=$$cache XLSTM_RL_CPU_SANITIZE=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1; \
	$(VENV)/bin/python -c "$(KERNELS_BUILT_WITH)" -fsanitize=undefined && \
	$(VENV)/bin/pytest -q $(KERNEL_TESTS) $(KERNEL_LOADER_TESTS)

train: $(STAMP)
	$(VENV)/bin/xlstm-rl train

# No venv build here: a GPU machine brings its own torch/triton (the script picks .venv if present).
gpu-check:
	bash scripts/gpu_check.sh $(or $(OUT),gpu-check-out)

clean-venv:
	rm -rf $(VENV)
