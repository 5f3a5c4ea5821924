#!/usr/bin/env bash
# One prepared GPU check of the triton backend, in at most 8 minutes on one H200 (torch 2.11,
# Triton 3.6), most valuable measurement first. Every step runs under its own timeout and
# writes its table under $OUT after every row, so a step cut short still leaves its rows:
#
#   1. tiles.md  every kept conv tile config on VGG-16 conv1_2/conv3_2/conv4_2/conv5_2 next to
#                cuDNN conv alone, cuDNN conv+bias+ReLU and a cuBLAS GEMM of the same M x N x K
#   2. e2e.md    VGG-16 bf16 batch 64 images/s: eager (torch backend), triton, torch.compile;
#                eager and triton also as CUDA-graph replays, each against torch.compile
#   3. lrn.md    AlexNet's LRN1 in bf16, NCHW and channels_last, forward and backward, as
#                CUDA-graph replays, as a share of a copy kernel measured in the same run
#   4. conv.md   the VGG-16 layers of bench_conv (Triton, cuDNN conv+bias+ReLU, cuDNN conv,
#                torch.compile)
#
#   OUT=/path/to/results benchmarks/gpu_check.sh          # on the GPU machine
#   benchmarks/gpu_check.sh --smoke                       # every step on the CPU, tiny shapes
#
# The triton compile cache is shared by the steps, so step 4 reuses step 1's compiled tiles.
# On the GPU machine (no network) lark comes from a wheel carried in .whl/, and the package is
# installed from this checkout if it does not import (first step, "setup"). Exit status: the
# first failing step's.
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=""
if [[ "${1:-}" == "--smoke" ]]; then
    SMOKE="--smoke"
fi
OUT="${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}"
export OUT
mkdir -p "$OUT"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$OUT/triton-cache}"
PY="${PYTHON:-python}"
status=0

# step NAME SECONDS COMMAND...: run it under `timeout`, log it, remember the first failure.
step() {
    local name="$1" seconds="$2"
    shift 2
    local t0=$SECONDS
    echo "== $name (limit ${seconds}s): $*" | tee -a "$OUT/gpu_check.log"
    timeout --signal=INT --kill-after=10 "$seconds" "$@" >>"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$OUT/gpu_check.log"
    if [[ $rc -ne 0 && $status -eq 0 ]]; then
        status=$rc
        tail -n 20 "$OUT/$name.log"
    fi
}

# Setup: lark (from .whl/ offline), then the package: as installed, else from this checkout on
# PYTHONPATH, else installed from it (a layout PYTHONPATH cannot serve).
importable() { timeout 60 "$PY" -c "import lark, archdsl.codegen.triton.support" 2>/dev/null; }
timeout 60 "$PY" -c "import lark" 2>/dev/null \
    || timeout 120 "$PY" -m pip install -q --no-index --find-links .whl lark >>"$OUT/setup.log" 2>&1
if ! importable; then
    if PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" importable; then
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    else
        timeout 180 "$PY" -m pip install -q --no-deps --no-build-isolation . >>"$OUT/setup.log" 2>&1
    fi
fi
if ! importable; then
    echo "gpu_check.sh: archdsl (with lark) does not import; see $OUT/setup.log" >&2
    exit 2
fi

# Limits add up to 450 s; each script's own --budget-s ends it earlier with its table written.
# A smoke run (the CPU, Triton's interpreter) is slower per shape: its limits are scaled.
# It also validates every tile config first, which the GPU run leaves to bench_conv --validate.
SCALE=1
NO_VALIDATE="--no-validate"
if [[ -n "$SMOKE" ]]; then
    SCALE=4
    NO_VALIDATE=""
fi
step tiles $((150 * SCALE)) "$PY" benchmarks/bench_tiles.py --budget-s $((110 * SCALE)) $SMOKE
step e2e $((130 * SCALE)) "$PY" benchmarks/bench_e2e.py --nets vgg16 --lrn-nets "" --no-max-autotune \
    --budget-s $((100 * SCALE)) $SMOKE
step lrn $((60 * SCALE)) "$PY" benchmarks/bench_lrn.py --quick --dtypes bf16 $NO_VALIDATE --budget-s $((45 * SCALE)) $SMOKE
step conv $((110 * SCALE)) "$PY" benchmarks/bench_conv.py --nets VGG-16 $NO_VALIDATE --budget-s $((80 * SCALE)) $SMOKE

echo "tables in $OUT:" && ls "$OUT"/*.md 2>/dev/null
exit $status
