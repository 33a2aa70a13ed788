"""The rank key of the shared tie rule, written once and compiled for both targets.

Every growth selection and magnitude drop ranks entries by a float32 score, larger first, and among
equal scores by the lower index (flat position, column or tag): the tie rule of
:mod:`purerigl.dst.topology`. One int64 key captures both orders at once,

.. math:: \\kappa = \\mathrm{bits}(|s|) \\cdot 2^{32} + (2^{32} - 1 - \\mathrm{index}),

because the bit pattern of a non-negative float32 orders like the number itself: a larger key is
exactly "larger score, or equal score and lower index", and no two entries share a key. The score's
sign bit is masked, so the bits of s or of |s| give the same key.

:func:`rank_key` is plain Python. :mod:`purerigl.kernels.cpu.growth` compiles it with
``numba.njit`` and :mod:`purerigl.kernels.cuda._growth_tiles` with ``cuda.jit(device=True)``, so the
cpu and cuda backends rank with the very same arithmetic and pick the same sets.
"""

from __future__ import annotations

import numpy as np

#: Low 32 bits of a rank key: 2^32 - 1 - index, so a lower index gives a larger key.
INDEX_MASK = np.int64(0xFFFFFFFF)

#: Key of an excluded position (or of padding): below every real key (>= 0).
NO_KEY = np.int64(-1)


def rank_key(score_bits, index):
    """Rank key of a float32 score given as its int32 bit pattern, at ``index`` in [0, 2^32)."""
    return (np.int64(score_bits & 0x7FFFFFFF) << 32) | (INDEX_MASK - np.int64(index))
