"""Self-test of a backend's DST updates against the methods' specifications: one update per method.

``purerigl check`` runs the products against SciPy (:mod:`._selftest`); this module adds the
topology update of every method and variant. Each case is
:func:`purerigl.dst.spec.agreement.compare_with_spec`: the method's fast version, run on the backend
under test (on a device backend the growth selections, the selection and structure operations and the
remap run there), against its plain NumPy specification in :mod:`purerigl.dst.spec`, computed by
another route (dense G, ``np.lexsort``, sets and loops; no backend operation), with the same layer,
batch, generator and tie salt.

The inputs are small integers and the step sizes powers of two, so every sum is exact in float32
whatever its order: the fast version must then agree **exactly** with the specification on the new
structure (every flat position, a Condensed matrix's active rows), the values, the momentum and the
method's statistics. A single differing position is a failed check. Because the specification shares
no selection code with the backends, a fault in an operation every backend uses fails on every
backend, the reference included.
"""

from __future__ import annotations

from purerigl.dst.spec.agreement import compare_with_spec

from ._selftest import Result

#: (method, format, make_method options) of the update checks: every method and variant.
UPDATE_METHODS = (
    ("static", "condensed", {}),
    ("rigl", "csr", {}),
    ("set", "csr", {}),
    ("set", "condensed", {}),
    ("srigl", "condensed", {"gamma_sal": 0.0}),
    ("srigl", "condensed", {"gamma_sal": 0.3}),
    ("srigl", "condensed", {"gamma_sal": 0.9}),
    ("gse", "csr", {"gse_sampler": "uniform"}),
    ("gse", "condensed", {"gse_sampler": "grabo"}),
    ("gse", "csr", {"gse_sampler": "graest"}),
    ("diag-rigl", "diagonal", {}),
    ("dynadiag", "diagonal", {}),
)
#: (shape, density) of the layer each update check uses; the tiny one for the CUDA simulator.
UPDATE_CASE = ((96, 64), 0.2)
TINY_UPDATE_CASE = ((12, 8), 0.4)


def label_of(method: str, options: dict) -> str:
    """The row label of one update check: ``update srigl 0.3``."""
    return f"update {method}" + "".join(f" {v}" for v in options.values())


def check_update(backend, method: str, fmt: str, options: dict, shape, density, seed: int) -> Result:
    """One update of ``method`` on ``backend`` against its specification; one Result whose note names
    what was compared with what when they differ."""
    a = compare_with_spec(backend, method, fmt, options, shape, density, seed)
    note = "" if a.agree else f"{a.difference} ({backend.name} vs {a.spec})"
    return Result(fmt, label_of(method, options), tuple(shape), 8, a.max_abs_error, 0.0, a.agree, note)


def run_update_selftest(backend, seed: int = 0, tiny: bool = False) -> list[Result]:
    """One :func:`check_update` per entry of :data:`UPDATE_METHODS`."""
    shape, density = TINY_UPDATE_CASE if tiny else UPDATE_CASE
    return [check_update(backend, m, f, o, shape, density, seed) for m, f, o in UPDATE_METHODS]
