"""The DST methods as plain NumPy specifications: one short module per method, one update of one layer.

Each function reads like its paper's algorithm box: host arrays of the stored format and the batch in
(:class:`Step`), the new structure with its values, the remapped optimizer state and the statistics
out (:class:`Update`). No backend operation, no device array, no streaming: a specification may build
the dense gradient G = dY^T X (through :func:`._common.dense_gradient`, which refuses large layers),
because it is a statement of the rule and the oracle the fast versions are held to, never the path
that trains. A :class:`Step` may also carry that G itself (``Step.G``, read through
:func:`._common.step_gradient`): ``purerigl verify-update`` scores a researcher's own gradient so.

The fast versions (:mod:`purerigl.dst.rigl`, :mod:`~purerigl.dst.srigl`, ...) are written with the
backend operations so that one text runs on host arrays (reference, cpu) and on the GPU (cuda); they
stream G and never store it. :func:`.agreement.compare_with_spec` runs both on the same layer and
batch, on integer data where every sum is exact, and reports any difference in structure, values,
optimizer state or statistics: ``purerigl check`` and the tests call it for every backend.

=============================  ====================  ===============================
method                          formats               specification
=============================  ====================  ===============================
static                          any                   :mod:`.static`
SET                             csr, condensed        :mod:`.set_`
RigL                            csr                   :mod:`.rigl`
SRigL (with/without ablation)   condensed             :mod:`.srigl`
GSE (uniform, GraBo, GraEst)    csr, condensed        :mod:`.gse`
diag-rigl                       diagonal              :mod:`.diag_rigl`
DynaDiag (window swap, gate)    diagonal              :mod:`.dynadiag`
=============================  ====================  ===============================
"""

from __future__ import annotations

from . import diag_rigl, dynadiag, gse, rigl, set_, srigl, static
from ._common import MAX_DENSE_GRADIENT, SpecError, Step, Update, dense_gradient, positions, step_gradient

#: method name -> its specification ``update(step, **options)``.
SPECS = {
    "static": static.update,
    "set": set_.update,
    "rigl": rigl.update,
    "srigl": srigl.update,
    "gse": gse.update,
    "diag-rigl": diag_rigl.update,
    "dynadiag": dynadiag.update,
}

#: make_method option -> the specification's keyword, per method.
_OPTION_NAMES = {"gamma_sal": "gamma_sal", "gse_gamma": "gamma", "gse_sampler": "sampler", "scores": "scores"}


def spec_update(method: str, step: Step, **options) -> Update:
    """The specification of ``method`` applied to ``step``; ``options`` are :func:`purerigl.dst.make_method`'s
    (``gamma_sal``, ``gse_gamma``, ``gse_sampler``)."""
    if method not in SPECS:
        raise SpecError(f"no specification for method {method!r}; there are: {', '.join(SPECS)}")
    kwargs = {_OPTION_NAMES[k]: v for k, v in options.items()}
    return SPECS[method](step, **kwargs)


def spec_source(method: str) -> str:
    """Repository path of ``method``'s specification module (for reports)."""
    module = SPECS[method].__module__
    return module.replace(".", "/") + ".py"


__all__ = ["MAX_DENSE_GRADIENT", "SPECS", "SpecError", "Step", "Update", "dense_gradient", "positions",
           "spec_source", "spec_update", "step_gradient"]
