"""A sparse convolution's forward and value gradient read from its input, without the patch matrix.

Specification: ``matmul_fm(W, im2col_t(X))`` and ``sddmm_fm(W, im2col_t(X), dY^T)``
(:mod:`purerigl.kernels.reference`), for W in any storage (CSR, Condensed, Diagonal) and a stride of 1:

.. math:: Y^T[o, (b, h_o, w_o)] = \\sum_{e \\in \\mathrm{row}\\ o} w_e \\, X_p[b, c_e, h_o + i_e, w_o + j_e],
          \\qquad dW_e = \\sum_{(b, h_o, w_o)} dY^T[o_e, (b, h_o, w_o)] \\, X_p[b, c_e, h_o + i_e, w_o + j_e]

with entry e of W at column (c_e, i_e, j_e) (row-major, as ``im2col_t`` orders its rows) and X_p the
input zero-padded by p. The patch matrix P^T (C kh kw, B Ho Wo) holds every input value kh kw times
(58 MB for VGG-small's second convolution at batch 64); built by the forward, read by the product
and again by the backward, it went through main memory three times a step. Here it is never built:

- **Forward, pitched rows.** X is zero-padded once a step (B x C x Hp x Wp, the input's size, not
  kh kw times it; kept with the operand for the value gradient, :func:`padded_input`). For one sample, accumulate output row o in a plane of Ho rows of pitch Wp (in L1),
  reading the sample's padded planes (C x Hp x Wp floats, in L2). Output pixel (h_o,
  w_o) meets entry e at padded flat index c_e Hp Wp + (h_o + i_e) Wp + w_o + j_e = a_e + (its index in
  the pitched plane), a_e = c_e Hp Wp + i_e Wp + j_e, so an entry's whole contribution is one
  contiguous axpy of n = (Ho - 1) Wp + Wo values from offset a_e (the pitch columns beyond Wo
  receive values of no output and are dropped). The entries of a row are added eight per pass as the
  batch-transposed product adds them (:func:`._gather.axpy8`, the same tree), each pixel starting at
  0: for CSR and Condensed, **the same bits as** ``matmul_fm(W, im2col_t(X))``. A Diagonal W is walked
  row by row (its entries sorted by row, then column; its product through P^T, :mod:`.diagonal_fm`,
  gathers diagonal by diagonal), so there the two agree to float32 rounding.
- **Value gradient, pitched rows.** For one sample, copy output row o's gradient plane into rows of
  the same pitch Wp, zeros in the pitch columns (S[o], n values); entry e's share of the sample is the
  dot product of S[o_e] with the n values of the padded sample from a_e (the zeros drop the values
  of no output). The samples are added in order, each entry's eight at a time per pass over S[o]
  (:func:`._gather.dots8`, compiled with ``fastmath={"reassoc"}`` like the product's value gradient);
  in parallel over fixed blocks of W's rows.
  The sum over the batch is grouped by sample where ``sddmm_fm`` groups it in chunks of 1,024 columns
  of P^T, so the two agree to float32 rounding, not bit for bit; on every run and thread count the
  bits are the same (samples in order, rows in parallel with private outputs). As in
  :mod:`.conv_products`, an infinite or NaN input value also reaches the entries through the pitch
  zeros (0 x inf = NaN), where the specification leaves them as the other terms make them.

Other strides and dtypes take the route through the patch matrix (:func:`takes_patches` says which;
:mod:`purerigl.kernels.patch_operand`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...formats import CSR, Condensed, Diagonal
from ...formats.triples import triples
from ..patch_operand import Patches
from ._cache import CACHE
from ._gather import UNROLL, axpy, axpy4, axpy8, dot, dots8
from ._serial import by_work
from .patches import _padded

#: Most blocks the kernels split their work into: of samples in the forward, of W's rows in the value
#: gradient (one scratch row of Ho x Wp floats per block).
MAX_BLOCKS = 16


def takes_patches(W, stride: int, dtype) -> bool:
    """Whether :func:`matmul_patches` and :func:`sddmm_patches` compute from X itself for this filter
    matrix and convolution: a host format (CSR, Condensed, Diagonal), stride 1, float32."""
    return isinstance(W, (CSR, Condensed, Diagonal)) and stride == 1 and np.dtype(dtype) == np.float32


def _rows(W):
    """(ptr, cols, vals, out_rows, order): W's stored rows as one flat list, row r's entries at
    ptr[r]:ptr[r + 1] of ``cols`` / ``vals`` and written to output row ``out_rows[r]``; ``order`` maps
    that list to ``W.values.ravel()`` (``vals = W.values.ravel()[order]``), None where it is the
    values' own order (CSR and Condensed: views of W's arrays)."""
    if isinstance(W, CSR):
        return W.indptr, W.indices, W.values, np.arange(W.n_out, dtype=np.int64), None
    if isinstance(W, Condensed):
        ptr = np.arange(W.rows.shape[0] + 1, dtype=np.int64) * W.indices.shape[1]
        return ptr, W.indices.reshape(-1), W.values.reshape(-1), W.rows.astype(np.int64), None
    rows, cols, vals = triples(W)  # a Diagonal's entries, diagonal by diagonal
    order = np.lexsort((cols, rows))  # (nnz,) by row, then column
    ptr = np.zeros(W.n_out + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=W.n_out), out=ptr[1:])
    return ptr, cols[order], vals[order], np.arange(W.n_out, dtype=np.int64), order


def _offsets(cols: np.ndarray, kh: int, kw: int, padded_shape) -> np.ndarray:
    """a_e = c_e Hp Wp + i_e Wp + j_e (int64, one per entry): where entry e's row of P^T starts in a
    sample's flat padded planes, for columns (c, i, j) of the filter matrix in row-major order."""
    _, _, Hp, Wp = padded_shape
    cols = cols.astype(np.int64)
    c, ij = np.divmod(cols, kh * kw)
    i, j = np.divmod(ij, kw)
    return c * (Hp * Wp) + i * Wp + j


@njit(cache=CACHE, inline="always")
def _axpy_rows(acc, vals, offs, xf, n):
    """acc[q] += sum_t vals[t] xf[offs[t] + q] for q < n: :func:`._gather.gather_axpy` with each
    entry's row of P^T read as the n values of the padded sample from its offset (same passes of
    eight, then four, then singles, so the same tree of additions)."""
    m = vals.shape[0]
    m8 = m - m % UNROLL
    for t in range(0, m8, UNROLL):
        axpy8(acc,
              vals[t], xf[offs[t]:offs[t] + n], vals[t + 1], xf[offs[t + 1]:offs[t + 1] + n],
              vals[t + 2], xf[offs[t + 2]:offs[t + 2] + n], vals[t + 3], xf[offs[t + 3]:offs[t + 3] + n],
              vals[t + 4], xf[offs[t + 4]:offs[t + 4] + n], vals[t + 5], xf[offs[t + 5]:offs[t + 5] + n],
              vals[t + 6], xf[offs[t + 6]:offs[t + 6] + n], vals[t + 7], xf[offs[t + 7]:offs[t + 7] + n])
    t = m8
    if m - t >= 4:
        axpy4(acc, vals[t], xf[offs[t]:offs[t] + n], vals[t + 1], xf[offs[t + 1]:offs[t + 1] + n],
              vals[t + 2], xf[offs[t + 2]:offs[t + 2] + n], vals[t + 3], xf[offs[t + 3]:offs[t + 3] + n])
        t += 4
    for t in range(t, m):
        axpy(acc, vals[t], xf[offs[t]:offs[t] + n])


@njit(parallel=True, cache=CACHE)
def _forward_pitched(ptr, offs, vals, out_rows, Xp, YT, Ho, Wo, n_blocks):
    """YT[out_rows[r], (b, h_o, w_o)] = sum over row r's entries of vals[e] Xp[b].flat[offs[e] + h_o Wp + w_o]
    (module docstring); YT (n_out, B Ho Wo) arrives zeroed (rows no entry writes stay 0). Parallel
    over ``n_blocks`` blocks of samples, each with its own pitched plane."""
    B, C, Hp, Wp = Xp.shape
    HW = Ho * Wo
    n = (Ho - 1) * Wp + Wo  # one entry's axpy on the flat padded sample
    Xf = Xp.reshape(B, C * Hp * Wp)  # (B, C*Hp*Wp), each sample's padded planes flat
    for blk in prange(n_blocks):
        plane = np.empty(n, dtype=YT.dtype)  # one output row of one sample, pitch Wp
        for b in range(blk * B // n_blocks, (blk + 1) * B // n_blocks):
            xf = Xf[b]
            for r in range(out_rows.shape[0]):
                e0 = ptr[r]
                e1 = ptr[r + 1]
                if e0 == e1:
                    continue
                plane[:] = 0.0
                _axpy_rows(plane, vals[e0:e1], offs[e0:e1], xf, n)
                dst = YT[out_rows[r], b * HW:(b + 1) * HW]
                for ho in range(Ho):
                    for wo in range(Wo):
                        dst[ho * Wo + wo] = plane[ho * Wp + wo]


@njit(cache=CACHE, inline="always")
def _dots_rows(out, g, offs, xf, n):
    """out[t] += g . xf[offs[t]:offs[t] + n] for every t: :func:`._gather.gather_dots` with each
    entry's row of P^T read as the n values of the padded sample from its offset."""
    m = offs.shape[0]
    m8 = m - m % UNROLL
    for t in range(0, m8, UNROLL):
        s = dots8(g, xf[offs[t]:offs[t] + n], xf[offs[t + 1]:offs[t + 1] + n], xf[offs[t + 2]:offs[t + 2] + n],
                  xf[offs[t + 3]:offs[t + 3] + n], xf[offs[t + 4]:offs[t + 4] + n], xf[offs[t + 5]:offs[t + 5] + n],
                  xf[offs[t + 6]:offs[t + 6] + n], xf[offs[t + 7]:offs[t + 7] + n])
        for u in range(UNROLL):
            out[t + u] += s[u]
    for t in range(m8, m):
        out[t] += dot(g, xf[offs[t]:offs[t] + n])


@njit(parallel=True, cache=CACHE, fastmath={"reassoc"})
def _sddmm_pitched(ptr, offs, out_rows, Xp, dYT, Ho, Wo, dW, n_blocks):
    """dW[e] = sum over samples b, in order, of S_b[o_e] . Xp[b].flat[offs[e]:offs[e] + n], S_b[o] the
    sample's output-gradient plane of row o in rows of pitch Wp with zeros beyond Wo (module
    docstring); dW arrives zeroed. Parallel over ``n_blocks`` fixed blocks of W's stored rows, each
    with one pitched scratch row; within a block, sample by sample, the block's rows in order."""
    B, C, Hp, Wp = Xp.shape
    HW = Ho * Wo
    n = (Ho - 1) * Wp + Wo
    Xf = Xp.reshape(B, C * Hp * Wp)  # (B, C*Hp*Wp), each sample's padded planes flat
    n_rows = out_rows.shape[0]
    for blk in prange(n_blocks):
        g = np.zeros(n, dtype=dYT.dtype)  # one row's pitched dY of one sample; the pitch columns stay 0
        for b in range(B):
            xf = Xf[b]
            for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
                e0 = ptr[r]
                e1 = ptr[r + 1]
                if e0 == e1:
                    continue
                src = dYT[out_rows[r], b * HW:(b + 1) * HW]
                for ho in range(Ho):
                    for wo in range(Wo):
                        g[ho * Wp + wo] = src[ho * Wo + wo]
                _dots_rows(dW[e0:e1], g, offs[e0:e1], xf, n)


def _operands(W, PT: Patches):
    """What both products read, or None when there is nothing to compute (no entry, sample or output
    pixel): (rows, Xp, offs, Ho, Wo) with ``rows`` = :func:`_rows` (W), Xp the zero-padded input
    (B, C, Hp, Wp) and offs the entries' offsets in a sample's padded planes (:func:`_offsets`)."""
    Ho, Wo = PT.out_hw
    if not (W.nnz and PT.X.shape[0] and Ho * Wo):
        return None
    rows = _rows(W)
    Xp = padded_input(PT)  # (B, C, Hp, Wp)
    return rows, Xp, _offsets(rows[1], PT.kh, PT.kw, Xp.shape), Ho, Wo


def padded_input(PT: Patches) -> np.ndarray:
    """X zero-padded by ``PT.padding`` (B, C, H + 2p, W + 2p), C-contiguous: built by the first product
    that reads ``PT`` (the forward) and kept in ``PT.derived``, so the value gradient of the same step
    reads it again instead of padding X a second time."""
    Xp = PT.derived.get("padded")
    if Xp is None:
        Xp = PT.derived["padded"] = _padded(PT.X, PT.padding, 0.0)
    return Xp


def matmul_patches(W, PT: Patches, out: np.ndarray) -> np.ndarray:
    """Y^T = W P^T into the zeroed ``out`` (n_out, B Ho Wo), P^T read from ``PT.X`` (stride 1, float32;
    :func:`takes_patches`): ``matmul_fm(W, PT.array(cpu))``, bit for bit for CSR and Condensed."""
    ops = _operands(W, PT)
    if ops is None:
        return out
    (ptr, _, vals, out_rows, _), Xp, offs, Ho, Wo = ops
    B = Xp.shape[0]
    by_work(_forward_pitched, W.nnz * B * Ho * Wo, B * Ho * Wo)(
        ptr, offs, vals, out_rows, Xp, out, Ho, Wo, min(B, MAX_BLOCKS))
    return out


def sddmm_patches(W, PT: Patches, dYT: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dW at the stored entries, P^T read from ``PT.X``, into the zeroed ``out`` (shaped like
    ``W.values``): ``sddmm_fm(W, PT.array(cpu), dYT)`` to float32 rounding (the sum over the batch runs
    sample by sample)."""
    ops = _operands(W, PT)
    if ops is None:
        return out
    (ptr, _, _, out_rows, order), Xp, offs, Ho, Wo = ops
    B = Xp.shape[0]
    flat = out.reshape(-1) if order is None else np.zeros(W.nnz, dtype=out.dtype)  # (nnz,) in row order
    by_work(_sddmm_pitched, W.nnz * B * Ho * Wo, B * Ho * Wo)(
        ptr, offs, out_rows, Xp, dYT, Ho, Wo, flat, max(1, min(out_rows.shape[0], MAX_BLOCKS)))
    if order is not None:
        out.reshape(-1)[order] = flat  # back to the values' order
    return out
