"""The backend registry: how a backend is chosen, how a bad choice fails, and that backends are complete.

Pins down (DESIGN.md section 3 "Dispatch"):

- ``get_backend`` picks by argument, else ``PURERIGL_BACKEND``, else ``"cpu"``; the argument wins;
- an unknown name raises BackendError (a ValueError) listing every valid name, and says so when the
  name came from the environment variable;
- ``"cuda"`` is a real backend: it works on the CUDA simulator (on in the tests, see conftest.py);
  where numba.cuda cannot run (no GPU, simulator off) it raises one BackendError that names the fixes,
  both in-process (patched) and in a fresh interpreter with ``NUMBA_ENABLE_CUDASIM=0``; importing
  purerigl or using the cpu backend never imports numba.cuda;
- completeness: every backend in ``registry.BACKENDS`` defines every op in ``OPS``, each with the
  reference's signature (parameter names, order, kinds, defaults). The check itself is shown to fail
  on a backend that lacks an op or has a different signature;
- the array operations of a training step (``ARRAY_OPS``): every backend has them, the host backends
  share the very functions of ``purerigl.kernels.host_arrays``, and a Backend forwards them.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
import types

import pytest

from purerigl.errors import BackendError
from purerigl.kernels import reference, registry
from purerigl.kernels.cpu import sets as cpu_sets
from purerigl.kernels.registry import ARRAY_OPS, OPS, Backend, available_backends, get_backend


@pytest.fixture
def no_env(monkeypatch):
    """Run without PURERIGL_BACKEND set, whatever the caller's environment holds."""
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


def test_env_var_name():
    assert registry.ENV_VAR == "PURERIGL_BACKEND"


@pytest.mark.parametrize("name", sorted(registry.BACKENDS))
def test_get_backend_by_argument(no_env, name):
    """get_backend(name) returns that backend, wrapping the module the registry names."""
    b = get_backend(name)
    assert isinstance(b, Backend)
    assert b.name == name
    assert b.module is importlib.import_module(registry.BACKENDS[name])


def test_get_backend_passes_a_backend_through(no_env):
    b = get_backend("reference")
    assert get_backend(b) is b


def test_reference_ops_forward_to_the_module(no_env):
    """Attribute access on a Backend returns the module's op; a non-op name is an AttributeError."""
    b = get_backend("reference")
    for op in OPS:
        assert getattr(b, op) is getattr(reference, op)
    with pytest.raises(AttributeError):
        b.triples  # a helper of the module, not an op  # noqa: B018
    b.synchronize()  # a no-op on the CPU backends, but it must exist


def test_default_is_cpu(no_env):
    """With no argument and no environment variable the backend is "cpu"."""
    assert registry.DEFAULT_BACKEND == "cpu"
    assert get_backend().name == "cpu"


def test_environment_variable_selects(monkeypatch):
    """PURERIGL_BACKEND picks the backend when no argument is given."""
    monkeypatch.setenv("PURERIGL_BACKEND", "reference")
    assert get_backend().name == "reference"
    assert get_backend(None).name == "reference"


def test_argument_beats_environment_variable(monkeypatch):
    monkeypatch.setenv("PURERIGL_BACKEND", "reference")
    assert get_backend("cpu").name == "cpu"
    monkeypatch.setenv("PURERIGL_BACKEND", "no-such-backend")
    assert get_backend("reference").name == "reference"  # a bad variable is not even read


def test_unknown_name_lists_valid_names(no_env):
    """An unknown name raises BackendError (a ValueError) that quotes it and lists every valid name."""
    assert issubclass(BackendError, ValueError)
    with pytest.raises(BackendError, match="'numpy-fast'") as info:
        get_backend("numpy-fast")
    for valid in available_backends():
        assert valid in str(info.value)


def test_unknown_name_from_environment_says_so(monkeypatch):
    """A bad PURERIGL_BACKEND is named in the error, so the user knows where the name came from."""
    monkeypatch.setenv("PURERIGL_BACKEND", "gpu-please")
    with pytest.raises(BackendError, match=r"'gpu-please'.*PURERIGL_BACKEND") as info:
        get_backend()
    for valid in available_backends():
        assert valid in str(info.value)


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_cuda_runs_on_the_simulator(monkeypatch, how):
    """With the simulator on (tests/conftest.py), "cuda" is an ordinary, complete backend."""
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    if how == "environment":
        monkeypatch.setenv("PURERIGL_BACKEND", "cuda")
    try:
        b = get_backend("cuda" if how == "argument" else None)
    except BackendError as err:  # PURERIGL_TEST_REAL_GPU=1 on a machine without a GPU
        pytest.skip(f"cuda unavailable here: {err}")
    assert b.name == "cuda" and b.module.NAME == "cuda"
    b.synchronize()


FIXES = ("pip install 'purerigl[gpu]'", "NVIDIA GPU", "NUMBA_ENABLE_CUDASIM=1", "--backend cpu")


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_cuda_unavailable_raises_one_clear_error(monkeypatch, how):
    """Where numba.cuda cannot run, get_backend("cuda") raises BackendError naming the reason and the fixes."""
    _launch = pytest.importorskip("purerigl.kernels.cuda._launch")
    monkeypatch.setattr(_launch, "unavailable_reason", lambda: "no GPU here (patched)")
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    if how == "environment":
        monkeypatch.setenv("PURERIGL_BACKEND", "cuda")
    with pytest.raises(BackendError, match="cuda") as info:
        get_backend("cuda" if how == "argument" else None)
    message = str(info.value)
    assert "no GPU here (patched)" in message
    for fix in FIXES:
        assert fix in message, message


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with PURERIGL_BACKEND unset and ``env`` added."""
    full = {k: v for k, v in os.environ.items() if k != registry.ENV_VAR}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120, check=False
    )


def test_cuda_without_gpu_or_simulator_fails_clearly():
    """A fresh interpreter with NUMBA_ENABLE_CUDASIM=0 on a machine without a GPU: one BackendError
    naming the fixes (skipped where a real GPU is present)."""
    code = (
        "import json\n"
        "from purerigl.kernels import get_backend\n"
        "from purerigl.errors import BackendError\n"
        "try:\n"
        "    get_backend('cuda')\n"
        "    print(json.dumps({'ok': True}))\n"
        "except BackendError as err:\n"
        "    print(json.dumps({'ok': False, 'error': str(err)}))\n"
    )
    proc = _run_python(code, NUMBA_ENABLE_CUDASIM="0")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["ok"]:
        pytest.skip("a real GPU is present: cuda is available without the simulator")
    assert "backend 'cuda' is unavailable" in result["error"]
    assert "simulator is off" in result["error"]
    for fix in FIXES:
        assert fix in result["error"], result["error"]


def test_importing_purerigl_does_not_import_numba_cuda():
    """numba.cuda is imported only when the cuda backend is asked for (it is slow and may warn)."""
    code = (
        "import sys\n"
        "import purerigl, purerigl.kernels\n"
        "from purerigl.kernels import get_backend\n"
        "get_backend('cpu'); get_backend('reference')\n"
        "print('numba.cuda' in sys.modules)\n"
    )
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_available_backends_lists_all_names():
    assert available_backends() == sorted(registry.BACKENDS)
    assert {"reference", "cpu", "cuda"} <= set(registry.BACKENDS)


# --------------------------------------------------------------------------------------------------
# Completeness: every op, with the reference's signature
# --------------------------------------------------------------------------------------------------


def signature_shape(fn) -> list[tuple[str, str, object]]:
    """(name, kind, default) of every parameter, in order; annotations are ignored."""
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(fn).parameters.values()]


def completeness_problems(module) -> list[str]:
    """Every way ``module`` falls short of the reference: a missing op, a non-callable one, or a
    signature that differs from the reference's (names, order, kinds, defaults)."""
    problems = []
    for op in OPS:
        fn = getattr(module, op, None)
        if fn is None:
            problems.append(f"{op}: missing")
            continue
        if not callable(fn):
            problems.append(f"{op}: not callable")
            continue
        want, got = signature_shape(getattr(reference, op)), signature_shape(fn)
        if got != want:
            problems.append(f"{op}: signature {got} != reference {want}")
    return problems


def test_ops_are_the_reference_functions():
    """OPS names the four products (each with an ``out=None`` last), the four growth selections and
    the three feature-major products (``out=None`` last too), all defined by the reference."""
    assert OPS == ("matmul", "matmul_t", "sddmm", "grad_at", "topk_grad", "topk_grad_rows", "topk_grad_with_rows",
                   "diag_grad_norms", "matmul_fm", "matmul_t_fm", "sddmm_fm")
    for op in OPS[:4] + OPS[8:]:
        params = list(inspect.signature(getattr(reference, op)).parameters.values())
        assert params[-1].name == "out" and params[-1].default is None
    for op in OPS[4:8]:
        assert callable(getattr(reference, op))


@pytest.mark.parametrize("name", sorted(registry.BACKENDS))
def test_backend_is_complete(name):
    """Every registered backend module defines every op with the reference's signature."""
    module = importlib.import_module(registry.BACKENDS[name])
    assert completeness_problems(module) == []


def test_cuda_backend_is_complete():
    """The cuda module (importable without a GPU) has every op with the reference's signature, plus
    NAME and synchronize, like every other backend."""
    assert "cuda" in registry.BACKENDS
    module = importlib.import_module("purerigl.kernels.cuda")
    assert completeness_problems(module) == []
    assert module.NAME == "cuda" and callable(module.synchronize)


def _fake_backend(**overrides) -> types.ModuleType:
    """A module holding the reference's ops, with some replaced (or removed when set to None)."""
    fake = types.ModuleType("fake_backend")
    for op in OPS:
        setattr(fake, op, getattr(reference, op))
    for op, fn in overrides.items():
        if fn is None:
            delattr(fake, op)
        else:
            setattr(fake, op, fn)
    return fake


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (dict(sddmm=None), "sddmm: missing"),
        (dict(matmul=lambda W, X: None), "matmul: signature"),  # no out
        (dict(matmul_t=lambda dY, W, out=None: None), "matmul_t: signature"),  # order
        (dict(grad_at=lambda X, dY, rows, cols, out=0: None), "grad_at: signature"),  # default
        (dict(sddmm=lambda W, X, dY, *, out=None: None), "sddmm: signature"),  # kind
        (dict(matmul="not a function"), "matmul: not callable"),
    ],
    ids=["missing", "no-out", "order", "default", "keyword-only", "not-callable"],
)
def test_completeness_check_can_fail(overrides, expected):
    """The completeness check reports a missing op and every kind of signature difference."""
    assert completeness_problems(_fake_backend()) == []
    problems = completeness_problems(_fake_backend(**overrides))
    assert len(problems) == 1 and problems[0].startswith(expected), problems


@pytest.mark.parametrize("name", sorted(registry.BACKENDS))
def test_every_backend_has_the_array_ops(name):
    """Every backend defines every array op with the host version's required positional arguments
    (a device version may add optional ones); the host backends use host_arrays' functions themselves,
    except the cpu backend's Numba ReLU (tested bit for bit against the spec in test_cpu_elementwise)
    and its transpose (NumPy or the blocked kernel by shape; test_ops_feature_major)."""
    from purerigl.kernels import host_arrays

    module = importlib.import_module(registry.BACKENDS[name])

    def required(fn):
        return [p for p in inspect.signature(fn).parameters.values() if p.default is inspect.Parameter.empty]

    for op in ARRAY_OPS:
        if op in registry.CONV_OPS:  # the convolutional layers' (test_every_backend_has_the_conv_ops)
            continue
        if op in registry.TRANSFORMER_OPS:  # the transformer layers' (test_every_backend_has_the_transformer_ops)
            continue
        fn = getattr(module, op, None)
        assert callable(fn), f"{name}: {op} missing"
        assert len(required(fn)) == len(required(getattr(host_arrays, op))), f"{name}: {op} arguments"
        if name == "reference" or (name == "cpu" and op not in ("relu_forward", "relu_backward", "transpose")):
            assert fn is getattr(host_arrays, op)
    backend = get_backend(name)
    assert backend.add_bias is module.add_bias
    assert backend.resident == (name == "cuda")


@pytest.mark.parametrize("name", ["reference", "cpu", "cuda"])
def test_every_backend_has_the_conv_ops(name):
    """Every backend defines every convolutional array op (registry.CONV_OPS, part of ARRAY_OPS) with
    the specification's parameters; the reference backend uses the specification itself."""
    from purerigl.kernels import host_conv

    module = importlib.import_module(registry.BACKENDS[name])
    assert set(registry.CONV_OPS) <= set(ARRAY_OPS)
    for op in registry.CONV_OPS:
        fn, spec = getattr(module, op, None), getattr(host_conv, op)
        assert callable(fn), f"{name}: {op} missing"
        public = [p for p in inspect.signature(spec).parameters if not p.startswith("_")]
        assert [p for p in inspect.signature(fn).parameters if not p.startswith("_")] == public, f"{name}: {op}"
        if name == "reference":
            assert fn is spec


@pytest.mark.parametrize("name", ["reference", "cpu", "cuda"])
def test_every_backend_has_the_transformer_ops(name):
    """Every backend defines every transformer array op (registry.TRANSFORMER_OPS, part of ARRAY_OPS)
    with the specification's parameters; the host backends use the specification itself, except the cpu
    backend's float32 GELU (Numba; held to the spec in test_cpu_elementwise)."""
    from purerigl.kernels import host_transformer

    module = importlib.import_module(registry.BACKENDS[name])
    assert set(registry.TRANSFORMER_OPS) <= set(ARRAY_OPS)
    assert registry.TRANSFORMER_OPS == host_transformer.OPS
    for op in registry.TRANSFORMER_OPS:
        fn, spec = getattr(module, op, None), getattr(host_transformer, op)
        assert callable(fn), f"{name}: {op} missing"
        assert signature_shape(fn) == signature_shape(spec), f"{name}: {op}"
        if name == "reference" or (name == "cpu" and op not in ("gelu_forward", "gelu_backward")):
            assert fn is spec


def test_update_ops_are_the_host_modules_operations():
    """UPDATE_OPS names every public operation of the two host modules (``top_mask``, the selection
    ``keep_by_magnitude`` and ``top_k`` are built on, is a helper), each once."""
    from purerigl.kernels import host_selection, host_topology

    assert len(set(registry.UPDATE_OPS)) == len(registry.UPDATE_OPS)
    assert set(registry.UPDATE_OPS) == (set(host_topology.__all__) - {"top_mask"}) | set(host_selection.__all__)


#: The update ops the cpu backend runs as Numba merges instead of the host functions.
CPU_SET_OPS = ("in_sorted", "remap_by_source", "source_of")


@pytest.mark.parametrize("name", sorted(registry.BACKENDS))
def test_every_backend_has_the_update_ops(name):
    """Every backend defines every update op with the host version's parameters (names and order);
    the host backends use the host functions themselves (except the cpu backend's Numba merges of
    :mod:`purerigl.kernels.cpu.sets`, held to them by tests/test_cpu_sets.py), and a Backend forwards
    them."""
    module = importlib.import_module(registry.BACKENDS[name])
    for op in registry.UPDATE_OPS:
        host = getattr(reference, op)  # the reference backend's is the host function itself
        fn = getattr(module, op, None)
        assert callable(fn), f"{name}: {op} missing"
        assert list(inspect.signature(fn).parameters) == list(inspect.signature(host).parameters), (
            f"{name}: {op} parameters"
        )
        if name == "reference" or (name == "cpu" and op not in CPU_SET_OPS):
            assert fn is host
        elif name == "cpu":
            assert fn is getattr(cpu_sets, op)
        assert getattr(get_backend(name), op) is fn
