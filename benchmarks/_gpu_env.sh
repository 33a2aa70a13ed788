# Sourced by the GPU session scripts (gpu_session.sh, gpu_memory_pool_ab.sh): what the device machine's
# Python needs before purerigl's cuda backend can run there.
#
# numba-cuda 0.30.4 registers an overload of np.row_stack, which NumPy 2.5 removed: importing
# numba.cuda's compiler then fails (seen on the H200 image, 2026-12-04). restore_numpy_aliases puts
# the aliases NumPy dropped back for this process tree only, through a sitecustomize on PYTHONPATH,
# and says so; it does nothing where NumPy still has them.
restore_numpy_aliases() {
    if python3 -c "import numpy; numpy.row_stack" 2>/dev/null; then
        return 0
    fi
    local shim
    shim="$(mktemp -d)"
    printf '%s\n' 'import numpy as _np' \
        'for _old, _new in (("row_stack", "vstack"), ("trapz", "trapezoid"), ("in1d", "isin"), ("round_", "round")):' \
        '    if not hasattr(_np, _old):' '        setattr(_np, _old, getattr(_np, _new))' > "$shim/sitecustomize.py"
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
    echo "numpy $(python3 -c 'import numpy; print(numpy.__version__)') lacks row_stack: aliases restored for numba-cuda ($shim)"
}
