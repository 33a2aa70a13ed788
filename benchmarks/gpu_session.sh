#!/usr/bin/env bash
# Everything a session on a GPU machine should run for the cuda backend, in one go (issue 5, section 4):
#   1. the machine (nvidia-smi, library versions), 2. an offline editable install,
#   3. the cuda tests on the real GPU (PURERIGL_TEST_REAL_GPU=1: the simulator off),
#   4. `purerigl check --backend cuda` (every product against SciPy, every method's update against
#      the reference backend), 5. `purerigl bench gpu` (kernels against cuBLAS/cuSPARSE through
#      PyTorch/CuPy, training step and update against the cpu backend).
# Each step has its own time limit so that one slow step cannot eat the others' time. Two parts, each
# well inside one 10-minute command: "verify" (steps 1-4, about 6 minutes at most) and "bench" (steps
# 1, 2 and 5, about 6 minutes at most); "all" runs both. Output in OUT_DIR (default: $OUT when the
# device tool runs it, else benchmarks/results/gpu-session): session-PART.log, tests.log,
# check-cuda.json, bench-gpu.json, bench-gpu.md.
#
# Usage, from the repository root on the GPU machine:  bash benchmarks/gpu_session.sh verify|bench|all [OUT_DIR]
set -uo pipefail
part="${1:-all}"
case "$part" in verify|bench|all) ;; *) echo "usage: $0 verify|bench|all [OUT_DIR]" >&2; exit 2;; esac
out="${2:-${OUT:-benchmarks/results/gpu-session}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cli=(python3 -m purerigl.cli.main)
step() { echo; echo "== $1 ($(date -u +%H:%M:%S))"; }
{
    step "machine"
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv || echo "nvidia-smi failed"
    python3 -c "import sys, numpy, scipy, numba; print('python', sys.version.split()[0], '| numpy', numpy.__version__, '| scipy', scipy.__version__, '| numba', numba.__version__)"
    python3 -c "import numba_cuda; print('numba-cuda', numba_cuda.__version__)" || echo "numba-cuda not importable"

    step "install (offline, editable)"
    python3 -m pip install -q --no-deps --no-build-isolation -e . \
        || python3 -c "import purerigl.cli" || { echo "install failed and purerigl is not importable"; exit 2; }

    if [ "$part" != bench ]; then
    step "cuda tests on the GPU (limit 240 s)"
    PURERIGL_TEST_REAL_GPU=1 timeout 240 python3 -m pytest -q -p no:cacheprovider --durations=10 \
        tests/test_cuda_ops.py tests/test_cuda_growth.py tests/test_cuda_elementwise.py tests/test_cuda_selection.py \
        tests/test_topology_ops.py tests/test_cuda_train.py tests/test_cuda_resident.py tests/test_cli_basic.py \
        > "$out/tests.log" 2>&1
    echo "tests exit $?"; tail -25 "$out/tests.log"

    step "self-test: purerigl check --backend cuda (limit 120 s)"
    timeout 120 "${cli[@]}" check --backend cuda --json > "$out/check-cuda.json"
    echo "check exit $?"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['n_checks'], 'checks,', r['n_failed'], 'failed'); [print('FAIL', x['format'], x['op'], x['shape'], x['note']) for x in r['results'] if not x['passed']]" "$out/check-cuda.json" 2>/dev/null || echo "no check report"
    fi

    if [ "$part" != verify ]; then
    step "purerigl bench gpu (limit 330 s)"
    timeout 330 "${cli[@]}" bench gpu --json "$out/bench-gpu.json" --out-md "$out/bench-gpu.md"
    echo "bench exit $?"
    fi
    step "done"
} 2>&1 | tee "$out/session-$part.log"
