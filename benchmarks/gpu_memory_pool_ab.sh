#!/usr/bin/env bash
# The cuda backend's caching device-memory pool (purerigl/kernels/cuda/memory_pool.py) on a real GPU,
# in one short device command (about 2.5 minutes):
#   1. `purerigl info` (says whether the pool is installed),
#   2. every cuda test with the pool on (PURERIGL_TEST_REAL_GPU=1),
#   3. `purerigl bench gpu --part train` for RigL (csr) and SRigL (condensed) at batch 64 and 256,
#      once with the pool off (PURERIGL_CUDA_MEMORY_POOL=0: numba's cuMemAlloc / cuMemFree) and once
#      with it on, each in its own process (the pool is chosen when the backend is first imported).
# Output in OUT_DIR (default: $OUT when the device tool runs it): session.log, tests.log,
# train-pool-{off,on}.{json,md}. Limits (seconds) from the environment: T_TESTS, T_TRAIN.
#
# Usage, from the repository root on the GPU machine:  bash benchmarks/gpu_memory_pool_ab.sh [OUT_DIR]
set -uo pipefail
out="${1:-${OUT:-benchmarks/results/gpu-memory-pool}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
t_tests="${T_TESTS:-70}" t_train="${T_TRAIN:-40}"
cli=(python3 -m purerigl.cli.main)
source "$(dirname "$0")/_gpu_env.sh"
step() { echo; echo "== $1 ($(date -u +%H:%M:%S))"; }
{
    step "machine and install"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi failed"
    restore_numpy_aliases  # benchmarks/_gpu_env.sh
    python3 -m pip install -q --no-deps --no-build-isolation -e . \
        || python3 -c "import purerigl.cli" || { echo "install failed and purerigl is not importable"; exit 2; }
    "${cli[@]}" info | sed -n '/\[cuda\]/,$p'

    step "cuda tests on the GPU, pool on (limit $t_tests s)"
    PURERIGL_TEST_REAL_GPU=1 timeout -s INT -k 20 "$t_tests" python3 -m pytest -q -p no:cacheprovider \
        tests/test_cuda_*.py tests/test_topology_ops.py > "$out/tests.log" 2>&1
    echo "tests exit $?"; tail -8 "$out/tests.log"

    for pool in 0 1; do
        name=$([ "$pool" = 1 ] && echo on || echo off)
        step "bench gpu --part train, pool $name (limit $t_train s)"
        PURERIGL_CUDA_MEMORY_POOL=$pool timeout "$t_train" "${cli[@]}" bench gpu --part train \
            --method rigl --method srigl --train-batch 64 --train-batch 256 --budget 0.3 \
            --json "$out/train-pool-$name.json" --out-md "$out/train-pool-$name.md" 2>&1 | grep "train "
        echo "bench exit ${PIPESTATUS[0]}"
    done
    step "done"
} 2>&1 | tee "$out/session.log"
