"""The shared tie rule: a rank key per entry, written once and compiled for every target.

Every growth selection and magnitude drop ranks entries by a float32 score, larger first. Equal
scores are ordered by a **tie rank** :math:`r_s(p)`, smaller first, where p is the entry's position
(the flat index ``row * n_in + col``, or a diagonal's offset) and s a 32-bit **salt** that the DST
updater derives from (seed, update number, layer) (:func:`purerigl.dst.topology.tie_salt`):

.. math:: r_s(p) = h(p \\oplus s), \\qquad
          h = \\mathrm{xs} \\circ \\mathrm{mul}_c \\circ \\mathrm{xs} \\circ \\mathrm{mul}_c \\circ \\mathrm{xs},
          \\quad \\mathrm{xs}(x) = x \\oplus \\lfloor x / 2^{16} \\rfloor,
          \\quad \\mathrm{mul}_c(x) = c\\,x \\bmod 2^{32}

with the odd constant c = 0x45D9F3B. Each step is a bijection of [0, 2^32) (xs is its own inverse, c
is invertible modulo 2^32), so :math:`r_s` is a permutation of the positions: no two entries tie on
it, and :func:`tie_unrank` recovers p from :math:`r_s(p)`. The order it gives looks random and
changes with the salt, so an all-zero gradient (a ReLU that was off for the whole batch) no longer
grows into columns 0, 1, 2, ... (the positional bias of a "lower index wins" rule), yet every backend
and every run with the same seed picks the same sets. Positions must lie in [0, 2^32).

One int64 key captures the whole order,

.. math:: \\kappa = \\mathrm{bits}(|s|) \\cdot 2^{32} + (2^{32} - 1 - r_s(p)),

because the bit pattern of a non-negative float32 orders like the number itself: a larger key is
exactly "larger score, or equal score and smaller tie rank", and no two entries share a key. The
score's sign bit is masked, so the bits of s or of |s| give the same key.

The functions are plain Python on integers, written so that the same text runs on Python ints, on
int64 NumPy arrays (the host backends), under ``numba.njit`` (:mod:`purerigl.kernels.cpu.growth`) and
under ``cuda.jit(device=True)`` (:mod:`purerigl.kernels.cuda._growth_tiles`). int64 products of two
numbers below 2^32 may wrap; only their low 32 bits are kept, which wrapping does not change. (Give
the host versions arrays: NumPy warns about wrapping on scalars.)
"""

from __future__ import annotations

import numpy as np

#: Low 32 bits of a rank key: 2^32 - 1 - tie rank, so a smaller tie rank gives a larger key.
INDEX_MASK = np.int64(0xFFFFFFFF)

#: Key of an excluded position (or of padding): below every real key (>= 0).
NO_KEY = np.int64(-1)

_MIX = 0x45D9F3B  # odd: invertible modulo 2^32
_MIX_INVERSE = 0x119DE1F3  # _MIX * _MIX_INVERSE = 1 (mod 2^32)
_LOW32 = 0xFFFFFFFF


def rank_key(score_bits, index, salt):
    """Rank key of a float32 score given as its int32 bit pattern, at position ``index`` in [0, 2^32).

    Self-contained (it computes :math:`r_s` itself) so that it compiles for the cpu and cuda targets.
    """
    x = (index ^ salt) & _LOW32
    x = (((x >> 16) ^ x) * _MIX) & _LOW32
    x = (((x >> 16) ^ x) * _MIX) & _LOW32
    rank = (x >> 16) ^ x
    return (np.int64(score_bits & 0x7FFFFFFF) << 32) | (_LOW32 - rank)  # int64 before the shift


def index_of_key(key, salt):
    """The position a rank key was made for: :math:`r_s^{-1}` of its low half (self-contained)."""
    x = _LOW32 - (key & _LOW32)  # the tie rank
    x = (x >> 16) ^ x
    x = (x * _MIX_INVERSE) & _LOW32
    x = (x >> 16) ^ x
    x = (x * _MIX_INVERSE) & _LOW32
    x = (x >> 16) ^ x
    return x ^ salt


def tie_rank(index, salt):
    """r_s(p): the tie rank of position ``index`` in [0, 2^32) under ``salt`` in [0, 2^32); a
    permutation of [0, 2^32) for each salt (smaller ranks first among equal scores)."""
    return _LOW32 - (rank_key(0, index, salt) & _LOW32)


def tie_unrank(rank, salt):
    """The position p with ``tie_rank(p, salt) == rank`` (the inverse permutation)."""
    return index_of_key(_LOW32 - rank, salt)


def tie_ranks(positions, salt: int = 0) -> np.ndarray:
    """int64 array of :func:`tie_rank` over an array of positions (host helper)."""
    p = np.asarray(positions, dtype=np.int64)
    return tie_rank(p, np.int64(salt)).astype(np.int64)
