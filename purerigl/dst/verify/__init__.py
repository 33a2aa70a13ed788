"""Is a researcher's own DST update right? One update step, dumped as masked-dense arrays, held to the
specification of its method (``purerigl verify-update``; the walk-through is docs/verify.md).

The user gives, per layer, the weights and mask before the update (with the gradient G = dY^T X the
update scores, or the batch X, dY it comes from) and the mask and weights after it. purerigl

1. builds the layer's stored structure **from the mask** (never from nonzero values: an active weight
   may be exactly 0): CSR for rigl, set and gse, Condensed for srigl, Diagonal for diag-rigl; a
   convolution's (c_out, c_in, kh, kw) arrays as the (c_out, c_in kh kw) matrix of its filters, its
   G from the images and output gradients if given those (:func:`.inputs._batch_gradient`);
2. runs the method's specification (:mod:`purerigl.dst.spec`) on it, scoring the user's G
   (``Step.G``): purerigl's own answer, ties broken by its salted rule ``tie_rank(position, salt)``;
3. runs the specification once more on a **favoured** copy of the scores: every score replaced by its
   rank, equal scores ranked in favour of the user's choices (a position the user kept or grew before
   one they did not; among equal |w| the smaller |G| kept first, so that the larger can grow back).
   Ranks are distinct integers, so that run has no ties at all, and it returns the user's masks
   exactly when some way of breaking the ties makes the rule give them: the user's update then
   **agrees up to ties** (cause :data:`TIE`, exit 0). For SET and GSE the growth is random (drawn by
   the method's generator), so only what is determined is checked (:data:`RANDOM`);
4. otherwise names the causes (:func:`layer_wide_findings`, :func:`srigl_findings`), and always checks
   the values: new weights exactly 0, kept (and dropped-and-regrown) weights unchanged (PAPERS.md 1.2).

Each cause is a :class:`Cause` constant: its string is the name that reports and JSON carry, its
``__doc__`` says what it means (:data:`CAUSES` lists them all). NumPy only; reading ``.safetensors``
needs the optional ``safetensors`` package.

Modules: :mod:`.inputs` (the files, checked per layer; the structure from the mask), :mod:`.causes`
(every cause and what it means), :mod:`.findings` (the rules that name causes), :mod:`.check` (one
layer's verdict, the files' report).
"""

from __future__ import annotations

from .causes import (  # every cause, by name
    TIE, RANDOM, TOO_MANY_DROPPED, TOO_FEW_DROPPED, TOO_MANY_GROWN, TOO_FEW_GROWN, GREW_KEPT,
    DROP_NOT_BY_MAGNITUDE, GROWTH_NOT_BY_GRADIENT, GROWTH_OUTSIDE_CANDIDATES, NEW_WEIGHT_NOT_ZERO,
    KEPT_WEIGHT_CHANGED, BROKEN_FAN_IN, ABLATION_DIFFERS, TRIMMED_ROW, PARTIAL_DIAGONAL, UNCLASSIFIED, CAUSES,
    Cause,
)
from .check import LayerReport, report_dict, verify_arrays, verify_files, verify_layer
from .findings import Finding
from .inputs import (
    LAYER_FORMATS, RANDOM_METHODS, LayerInput, VerifyInputError, layer_inputs, read_arrays, structure_of,
)

__all__ = [
    "TIE", "RANDOM", "TOO_MANY_DROPPED", "TOO_FEW_DROPPED", "TOO_MANY_GROWN", "TOO_FEW_GROWN", "GREW_KEPT",
    "DROP_NOT_BY_MAGNITUDE", "GROWTH_NOT_BY_GRADIENT", "GROWTH_OUTSIDE_CANDIDATES", "NEW_WEIGHT_NOT_ZERO",
    "KEPT_WEIGHT_CHANGED", "BROKEN_FAN_IN", "ABLATION_DIFFERS", "TRIMMED_ROW", "PARTIAL_DIAGONAL",
    "UNCLASSIFIED", "CAUSES", "Cause", "Finding", "LAYER_FORMATS", "LayerInput", "LayerReport",
    "RANDOM_METHODS", "VerifyInputError", "layer_inputs", "read_arrays", "report_dict", "structure_of",
    "verify_arrays", "verify_files", "verify_layer"
]
