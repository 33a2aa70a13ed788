#!/usr/bin/env bash
# Everything a session on a GPU machine should run for the cuda backend, in one go (issue 5, section 4):
#   1. the machine (nvidia-smi, library versions), 2. an offline editable install,
#   3. the cuda tests on the real GPU (PURERIGL_TEST_REAL_GPU=1: the simulator off),
#   4. `purerigl check --backend cuda` (every product against SciPy, a sparse convolution in every
#      format against SciPy's correlate2d, every method's update against the reference backend),
#   5. `purerigl bench gpu` (kernels against cuBLAS/cuSPARSE through PyTorch/CuPy, RigL's growth
#      selection against the dense route, training step and update against the cpu backend and the
#      network's dense PyTorch twin: the MLP, then LeNet-5 on MNIST-shaped images).
# Each step has its own time limit (T_TESTS, T_CHECK, T_KERNELS, T_GROWTH, T_TRAIN, T_TRAIN_CNN, T_CNN
# seconds in the environment override them) so that one slow step cannot eat the others' time. "verify" (steps 1-4,
# under 5 minutes), "bench" (steps 1, 2, 5 and two conv networks trained on cuda through the CLI,
# under 5 minutes) and "all" (both, under 10 minutes: one device command). Output in OUT_DIR (default:
# $OUT when the device tool runs it, else benchmarks/results/gpu-session): session-PART.log, tests.log,
# check-cuda.json, bench-gpu-{kernels,growth,train,train-lenet5}.json (7 files; the device tool returns
# at most 8; every bench prints its markdown report into the session log).
#
# Usage, from the repository root on the GPU machine:  bash benchmarks/gpu_session.sh verify|bench|all [OUT_DIR]
set -uo pipefail
part="${1:-all}"
case "$part" in verify|bench|all) ;; *) echo "usage: $0 verify|bench|all [OUT_DIR]" >&2; exit 2;; esac
out="${2:-${OUT:-benchmarks/results/gpu-session}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cli=(python3 -m purerigl.cli.main)
# per-step limits in seconds (environment overrides); "all" stays inside one 10-minute device command
t_tests="${T_TESTS:-200}" t_check="${T_CHECK:-75}" t_kernels="${T_KERNELS:-110}" t_train="${T_TRAIN:-90}"
t_cnn="${T_CNN:-30}" t_growth="${T_GROWTH:-40}" t_train_cnn="${T_TRAIN_CNN:-120}"
budget="${BENCH_BUDGET:-0.15}"
source "$(dirname "$0")/_gpu_env.sh"
step() { echo; echo "== $1 ($(date -u +%H:%M:%S))"; }
{
    step "machine"
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv || echo "nvidia-smi failed"
    python3 -c "import sys, numpy, scipy, numba; print('python', sys.version.split()[0], '| numpy', numpy.__version__, '| scipy', scipy.__version__, '| numba', numba.__version__)"
    python3 -c "import numba_cuda; print('numba-cuda', numba_cuda.__version__)" || echo "numba-cuda not importable"

    restore_numpy_aliases  # benchmarks/_gpu_env.sh

    step "install (offline, editable)"
    python3 -m pip install -q --no-deps --no-build-isolation -e . \
        || python3 -c "import purerigl.cli" || { echo "install failed and purerigl is not importable"; exit 2; }

    if [ "$part" != bench ]; then
    step "cuda tests on the GPU (limit $t_tests s)"
    # SIGINT at the limit: pytest stops and still prints its summary of the failures so far.
    # every cuda test file (conv, CNN training, transformer, DynaDiag and feature-major included), one file
    # per pytest-xdist worker (the project's addopts): the kernels compile in parallel on the host's cores
    PURERIGL_TEST_REAL_GPU=1 timeout -s INT -k 20 "$t_tests" python3 -m pytest -q -p no:cacheprovider --durations=15 \
        tests/test_cuda_*.py tests/test_topology_ops.py tests/test_cli_basic.py \
        > "$out/tests.log" 2>&1
    echo "tests exit $?"; tail -25 "$out/tests.log"

    step "self-test: purerigl check --backend cuda (limit $t_check s)"
    timeout "$t_check" "${cli[@]}" check --backend cuda --json > "$out/check-cuda.json"
    echo "check exit $?"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['n_checks'], 'checks,', r['n_failed'], 'failed'); [print('FAIL', x['format'], x['op'], x['shape'], x['note']) for x in r['results'] if not x['passed']]" "$out/check-cuda.json" 2>/dev/null || echo "no check report"
    fi

    if [ "$part" != verify ]; then
    # two commands, so that a slow second part cannot lose the first part's tables
    step "purerigl bench gpu --part kernels (limit $t_kernels s)"
    timeout "$t_kernels" "${cli[@]}" bench gpu --part kernels --budget "$budget" \
        --json "$out/bench-gpu-kernels.json"
    echo "bench kernels exit $?"
    step "purerigl bench gpu --part growth (limit $t_growth s)"
    timeout "$t_growth" "${cli[@]}" bench gpu --part growth --sparsity 0.9 --sparsity 0.99 --batch 256 \
        --budget "$budget" --json "$out/bench-gpu-growth.json"  # its markdown is in the session log
    echo "bench growth exit $?"
    step "purerigl bench gpu --part train (limit $t_train s)"
    timeout "$t_train" "${cli[@]}" bench gpu --part train --budget "$budget" \
        --json "$out/bench-gpu-train.json"
    echo "bench train exit $?"
    # LeNet-5's training step (1x28x28, batch 64 and 256) on cuda against cpu and the dense twin in
    # PyTorch (cuDNN): the conv networks' GPU timing
    step "purerigl bench gpu --part train --model lenet5 (limit $t_train_cnn s)"
    timeout "$t_train_cnn" "${cli[@]}" bench gpu --part train --model lenet5 --budget "$budget" \
        --method static --method rigl --method srigl --method gse --method diag-rigl \
        --json "$out/bench-gpu-train-lenet5.json"
    echo "bench train lenet5 exit $?"
    # whole convolutional networks on the GPU, end to end through the CLI (the embedded digits, 1x8x8):
    # the second epoch's seconds exclude the kernels' compilation
    for run in "lenet5 rigl" "lenet5 dynadiag --dynadiag-freeze-epoch 2"; do
        set -- $run
        step "purerigl train --model $* --epochs 2 --backend cuda (limit $t_cnn s)"
        timeout "$t_cnn" "${cli[@]}" train --model "$1" --method "$2" "${@:3}" --epochs 2 --backend cuda \
            --out "/tmp/purerigl-gpu-$1-$2" 2>&1 | grep -v "^  [a-z]"
        echo "train exit ${PIPESTATUS[0]}"
    done
    fi
    step "done"
} 2>&1 | tee "$out/session-$part.log"
