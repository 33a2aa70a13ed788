"""Dynamic sparse training: each method in its own module, one shared topology step, one schedule;
:mod:`.spec` states each method in plain NumPy. Imports formats, kernels, nn and optim.

A DST method is storage x drop rule x grow rule x schedule (DESIGN.md 1):

| method | module | formats (default first) | drop | grow |
| --- | --- | --- | --- | --- |
| static | :mod:`.base` | condensed, diagonal, csr | none | none |
| set | :mod:`.set_method`, :mod:`.srigl` | csr, condensed | smallest abs(w) | uniformly random |
| rigl | :mod:`.rigl` | csr | smallest abs(w), layer-wide | largest abs(G), layer-wide |
| srigl | :mod:`.srigl` | condensed | smallest abs(w), layer-wide, then per-row trim; neuron ablation | largest abs(G) per row |
| gse | :mod:`.gse` | csr, condensed | smallest abs(w) | largest abs(G) over a sampled candidate set |
| diag-rigl | :mod:`.diag_rigl` | diagonal | whole diagonals, smallest norm | whole diagonals, largest gradient norm |
| dynadiag | :mod:`.dynadiag` | diagonal | learned gates min(1, K softmax(alpha/T)), frozen to the top K by alpha | window: smallest alpha out, largest gradient norm in |

When: :mod:`.schedule`. How much per layer: :mod:`.distribution`. The step that rewrites a layer:
:func:`.topology.apply_structure`.
"""

from __future__ import annotations

from .base import LayerUpdate, Method, MethodError
from .diag_rigl import DiagRigL
from .dynadiag import DynaDiag
from .gse import GSE
from .rigl import RigL
from .schedule import UpdateSchedule
from .set_method import SET
from .srigl import SETCondensed, SRigL

#: Method names and the classes that implement each, one per storage format it can use (a class's
#: ``formats`` say which; the first is the method's default).
METHOD_CLASSES: dict[str, tuple[type[Method], ...]] = {
    "static": (Method,),
    "set": (SET, SETCondensed),
    "rigl": (RigL,),
    "srigl": (SRigL,),
    "gse": (GSE,),
    "diag-rigl": (DiagRigL,),
    "dynadiag": (DynaDiag,),
}
#: Method names, and the storage formats each can use (its default first), read from the classes.
METHOD_FORMATS = {name: tuple(f for cls in classes for f in cls.formats) for name, classes in METHOD_CLASSES.items()}
METHODS = tuple(METHOD_CLASSES)


def resolve_format(method: str, fmt: str | None) -> str:
    """The storage format for ``method``: ``fmt`` if it fits, its default if None; else MethodError."""
    if method not in METHOD_FORMATS:
        raise MethodError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    allowed = METHOD_FORMATS[method]
    if fmt is None:
        return allowed[0]
    if fmt not in allowed:
        raise MethodError(f"method {method!r} cannot use format {fmt!r}; it works on: {', '.join(allowed)}")
    return fmt


def make_method(name: str, fmt: str, *, gamma_sal: float = 0.3, gse_gamma: float = 1.0, gse_sampler: str = "uniform") -> Method:
    """The method object for ``name`` on storage ``fmt`` (checked with :func:`resolve_format`)."""
    fmt = resolve_format(name, fmt)
    cls = next(c for c in METHOD_CLASSES[name] if fmt in c.formats)
    if cls is SRigL:
        return SRigL(gamma_sal=gamma_sal)
    if cls is GSE:
        return GSE(gamma=gse_gamma, sampler=gse_sampler)
    return cls()


__all__ = [
    "METHODS",
    "METHOD_CLASSES",
    "METHOD_FORMATS",
    "LayerUpdate",
    "Method",
    "MethodError",
    "UpdateSchedule",
    "make_method",
    "resolve_format",
]
