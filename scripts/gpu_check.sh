#!/usr/bin/env bash
# GPU check: the gpu-marked tests and the kernel benchmark, one command (< ~8 min on an H200).
#
#   scripts/gpu_check.sh OUT_DIR
#
# Writes OUT_DIR/gpu_check.log (everything), OUT_DIR/pytest_gpu.xml and
# OUT_DIR/bench_kernels.json. Exit status: 0 when the tests pass and the benchmark ran.
# Environment: PYTHON (interpreter to use).
#
# Works on a bare machine with only torch + triton + pytest (the repository copied, no network):
# the repository root goes first on PYTHONPATH, so this checkout's code is what runs (never an
# older install). That is enough because xlstm_rl/{kernels,agents,envs,configs} are committed
# symlinks to the top-level folders (which refuse to import under their bare names).
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
LOG="$OUT/gpu_check.log"
: >"$LOG"
export PYTHONUNBUFFERED=1
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python
else PY=$(command -v python3); fi

log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
importable() {
    (cd "$OUT" && "$PY" -c "import xlstm_rl.kernels as k; print('xlstm_rl.kernels from', k.__file__)" \
        >>"$LOG" 2>&1)
}

log "repo $REPO, python $PY, out $OUT"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true) | tee -a "$LOG"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$LOG"

# Pure-python dependencies missing on a bare GPU machine (tensordict for the core tests) may
# travel as wheels in $REPO/.whl (see the device tool's notes); install them into a side folder.
if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
    log "installing carried wheels from $REPO/.whl into /tmp/xlstm_rl_site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/xlstm_rl_site "$REPO"/.whl/*.whl >>"$LOG" 2>&1 \
        && export PYTHONPATH="/tmp/xlstm_rl_site${PYTHONPATH:+:$PYTHONPATH}"
fi

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
importable || { log "FAILED: xlstm_rl.kernels is not importable"; exit 1; }

# pytest from the repo root, for its config (pyproject.toml) and conftest.
if [ -x "$(dirname "$PY")/pytest" ]; then PYTEST=("$(dirname "$PY")/pytest")
else PYTEST=("$PY" -m pytest); fi
mapfile -t GPU_FILES < <(cd "$REPO" && grep -l "mark.gpu" tests/test_*.py)
log "pytest -m gpu on: ${GPU_FILES[*]}"
(cd "$REPO" && "${PYTEST[@]}" -m gpu -p no:cacheprovider -ra --continue-on-collection-errors \
    --junitxml="$OUT/pytest_gpu.xml" \
    "${GPU_FILES[@]}") 2>&1 | tee -a "$LOG"
TESTS=${PIPESTATUS[0]}
log "pytest exit status $TESTS"

BENCH_JSON="$OUT/bench_kernels.json"
if command -v xlstm-rl >/dev/null && (cd "$OUT" && xlstm-rl bench kernels --help >/dev/null 2>&1); then
    log "xlstm-rl bench kernels --device cuda --out $BENCH_JSON"
    (cd "$OUT" && xlstm-rl bench kernels --device cuda --out "$BENCH_JSON") 2>&1 | tee -a "$LOG"
    BENCH=${PIPESTATUS[0]}
else
    log "the xlstm-rl CLI is unavailable here: calling xlstm_rl.kernels.bench.bench_kernels"
    (cd "$OUT" && "$PY" -c "import json, sys; from xlstm_rl.kernels.bench import bench_kernels; \
print(json.dumps(bench_kernels('cuda', sys.argv[1]), indent=2))" "$BENCH_JSON") 2>&1 | tee -a "$LOG"
    BENCH=${PIPESTATUS[0]}
fi
log "bench exit status $BENCH"
if [ "$TESTS" -ne 0 ] || [ "$BENCH" -ne 0 ]; then
    log "FAILED (tests $TESTS, bench $BENCH)"
    exit 1
fi
log "OK"
