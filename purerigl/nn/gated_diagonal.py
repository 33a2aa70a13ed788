"""DynaDiag's layer: stored diagonals scaled by learned soft top-K gates (Tyagi et al. 2025, PAPERS.md 4.3).

A :class:`GatedDiagonalLinear` stores some of the P = max(n_out, n_in) wrap-around diagonals of its
weight (:class:`~purerigl.formats.Diagonal`: ``offsets`` (S,), values V (S, L)), one importance score
per candidate diagonal, ``alpha`` (P,), a temperature T and the number K of diagonals the layer keeps
in the end. While soft, the weight it computes with is the gated matrix

.. math::

    W_{\\mathrm{eff}} = \\sum_{k < S} \\tilde\\alpha_{d_k} \\, V_k \\text{ placed on diagonal } d_k, \\qquad
    \\tilde\\alpha = \\min\\big(1, K \\operatorname{softmax}(\\alpha / T)\\big)
    \\quad (:func:`purerigl.nn.diagonal_gate.soft_top_k`),

the softmax taken over all P scores: a diagonal that is not stored counts as one whose values are 0.
Its backward, with :math:`G_k` the gradient of the loss with respect to the entries of
:math:`W_{\\mathrm{eff}}` on diagonal :math:`d_k` (the SDDMM of the diagonal format, dY^T X at the
stored positions):

.. math::

    \\frac{\\partial L}{\\partial V_k} = \\tilde\\alpha_{d_k} G_k, \\qquad
    \\frac{\\partial L}{\\partial \\tilde\\alpha_{d_k}} = \\sum_t V_{k,t} G_{k,t}, \\qquad
    \\frac{\\partial L}{\\partial \\alpha} = \\text{the soft top-K backward}
    \\quad (:func:`~purerigl.nn.diagonal_gate.soft_top_k_backward`),

plus :math:`\\lambda \\operatorname{sign}(\\alpha)` for an l1 term :math:`\\lambda \\lVert \\alpha \\rVert_1`
on the scores (``l1``; the paper's text mentions one, the official code has none).

Frozen (:attr:`frozen`, the official ``freeze_topk``): every stored diagonal has gate 1 and alpha no
longer moves; the layer is then exactly a :class:`~purerigl.nn.SparseLinear` over its stored
diagonals and costs what one costs. The DST side (temperature, freezing to the top K, which
diagonals are stored) is :mod:`purerigl.dst.dynadiag`.

Both layouts: :meth:`~GatedDiagonalLinear.forward` / :meth:`~GatedDiagonalLinear.backward` take the
batch in rows, :meth:`~GatedDiagonalLinear.forward_fm` / :meth:`~GatedDiagonalLinear.backward_fm`
feature-major, the layout in which a convolution runs its filter matrix over the patches
(:class:`~purerigl.nn.conv.SparseConv2d`) and in which the MLP and the token-wise layers run their
sparse layers from 4 rows on (:func:`~purerigl.nn.layers.has_feature_major_step`); all four gate the
same way.

Where it runs: the products, the gating of the values (``scale_rows``) and the per-diagonal dot
products (``row_dots``) run on the layer's backend; ``alpha`` and the gates are host arrays of P
floats (O(P) work per step on the host), so on cuda a soft step copies S gates to the device and S
dot products back. ``alpha`` is not among :meth:`parameters` (the model's optimizer never sees it): the
DynaDiag updater trains it with its own Adam, as the official code does.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..formats import Diagonal
from .diagonal_gate import soft_top_k, soft_top_k_backward
from .layers import SparseLinear
from .parameter import Parameter


def _with_values(M, values):
    """The diagonal matrix ``M`` (host Diagonal or a backend's device matrix) with other values; the
    offsets are shared (read-only on the host, never written on a device)."""
    if isinstance(M, Diagonal):
        return Diagonal(M.offsets, values, M.shape)
    return dataclasses.replace(M, values=values)


class GatedDiagonalLinear(SparseLinear):
    """``Y = X W_eff^T + b`` with W_eff the gated stored diagonals (see the module docstring).

    Parameters
    ----------
    W : Diagonal, shape (n_out, n_in)
        The stored diagonals and their values V (the weight parameter, as in :class:`SparseLinear`).
    k : int
        K, the number of diagonals the layer keeps: the gates sum to at most K, and :meth:`freeze`
        keeps exactly K. 1 <= K <= P.
    alpha : float32 ndarray (P,), optional
        The importance scores; default the official initialisation, every score 1 / P.
    temperature : float > 0
    frozen : bool
        True: gate 1 on every stored diagonal, alpha fixed (after :mod:`purerigl.dst.dynadiag` froze it).
    l1 : float >= 0
        Weight of the l1 term on alpha.
    bias, backend, name, needs_input_grad
        As for :class:`SparseLinear`.
    """

    def __init__(self, W: Diagonal, k: int, alpha=None, temperature: float = 1.0, frozen: bool = False,
                 l1: float = 0.0, bias=None, backend=None, name: str = "layer", needs_input_grad=True):
        if not isinstance(W, Diagonal):
            raise TypeError(f"a gated diagonal layer stores a Diagonal, got {type(W).__name__}")
        super().__init__(W, bias=bias, backend=backend, name=name, needs_input_grad=needs_input_grad)
        P = W.P
        if not 1 <= int(k) <= P:
            raise ValueError(f"{name}: K = {k} diagonals to keep, expected 1 <= K <= P = {P}")
        self.k = int(k)
        a = np.full(P, 1.0 / P, dtype=np.float32) if alpha is None else np.array(alpha, dtype=np.float32)
        if a.shape != (P,):
            raise ValueError(f"{name}: alpha has shape {a.shape}, expected (P,) = ({P},)")
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: alpha holds NaN or Inf")
        self.alpha = Parameter(f"{name}.alpha", a)  # a host parameter (reference backend)
        self.temperature = float(temperature)
        self.frozen = bool(frozen)
        self.l1 = float(l1)
        self._gates = None  # float32 host (S,): the gates of the last soft forward
        self._gates_dev = None  # the same on the backend
        self._effective = None  # the gated matrix of the last soft forward, on the backend
        self._effective_of = None  # the stored matrix whose structure _effective shares

    # ----------------------------------------------------------------------------------------------
    # the gates

    def gates(self) -> np.ndarray:
        """float64 (S,): the gate of every stored diagonal now (all 1 when frozen)."""
        offsets = self.W.offsets
        if self.frozen:
            return np.ones(offsets.size)
        return soft_top_k(self.alpha.value, self.k, self.temperature)[offsets]

    def all_gates(self) -> np.ndarray:
        """float64 (P,): the gate of every candidate diagonal as the soft top-K gives it (frozen: 1 on
        the stored diagonals, 0 elsewhere). A diagonal that is not stored computes nothing whatever its gate."""
        if self.frozen:
            g = np.zeros(self.alpha.value.size)
            g[self.W.offsets] = 1.0
            return g
        return soft_top_k(self.alpha.value, self.k, self.temperature)

    def effective_k(self, threshold: float = 1e-6) -> int:
        """How many stored diagonals have a gate above ``threshold`` (the official ``alpha_nnz``)."""
        return int(np.count_nonzero(self.gates() > threshold))

    # ----------------------------------------------------------------------------------------------
    # forward and backward

    def forward(self, X):
        """X (B, n_in) -> Y (B, n_out).

        .. math:: Y = X W_{\\mathrm{eff}}^T + \\mathbf{1} b^T, \\qquad
                  W_{\\mathrm{eff}} = \\text{diagonals } d_k \\text{ holding } \\tilde\\alpha_{d_k} V_k
        """
        if self.frozen:
            return super().forward(X)
        self._remember_input(X, False)
        Y = self.backend.matmul(self._gate_values(), X)
        return self.backend.add_bias(Y, self.bias.value)

    def backward(self, dY):
        """dY (B, n_out) -> dX (B, n_in); fills ``weight.grad``, ``bias.grad`` and ``alpha.grad``.

        .. math::

            G_k = (dY^T X)_{\\text{diagonal } d_k}, \\quad
            \\frac{\\partial L}{\\partial V_k} = \\tilde\\alpha_{d_k} G_k, \\quad
            \\frac{\\partial L}{\\partial \\tilde\\alpha_{d_k}} = \\langle V_k, G_k \\rangle, \\quad
            dX = dY W_{\\mathrm{eff}}
        """
        if self.frozen:
            return super().backward(dY)
        self._remember_output_grad(dY, False)
        ops = self.backend
        ops.sddmm(self._effective, self._X, dY, out=self.weight.grad)  # (S, L): dL/dW_eff, stored diagonals
        self.alpha.grad[...] = self._gate_backward(self.weight.grad) + self._l1_grad()
        ops.bias_grad(dY, self.bias.grad)
        if not self.needs_input_grad:
            return None
        return ops.matmul_t(self._effective, dY)

    def forward_fm(self, XT):
        """The gated product in the feature-major layout, XT (n_in, B) -> YT (n_out, B), without the
        bias (as :meth:`SparseLinear.forward_fm`: a convolution adds it while it reorders the output).

        .. math:: Y^T = W_{\\mathrm{eff}} X^T
        """
        if self.frozen:
            return super().forward_fm(XT)
        self._remember_input(XT, True)
        return self.backend.matmul_fm(self._gate_values(), XT)

    def backward_fm(self, dYT):
        """dYT (n_out, B) -> dXT (n_in, B) (None if not ``needs_input_grad``) after :meth:`forward_fm`;
        fills ``weight.grad`` and ``alpha.grad`` as :meth:`backward` does (``bias.grad`` is the caller's).

        .. math:: G = (dY^T X)_{\\text{stored}}, \\quad \\frac{\\partial L}{\\partial V_k} = \\tilde\\alpha_{d_k} G_k,
                  \\quad dX^T = W_{\\mathrm{eff}}^T dY^T
        """
        if self.frozen:
            return super().backward_fm(dYT)
        self._remember_output_grad(dYT, True)
        ops = self.backend
        ops.sddmm_fm(self._effective, self._X, dYT, out=self.weight.grad)  # (S, L)
        self.alpha.grad[...] = self._gate_backward(self.weight.grad) + self._l1_grad()
        if not self.needs_input_grad:
            return None
        return ops.matmul_t_fm(self._effective, dYT)

    def gradients_fm(self, XT, dYT) -> tuple[dict, object]:
        """:meth:`SparseLinear.gradients_fm` with the gates: ``{"weight": dL/dV, "alpha": dL/dalpha}``
        of one chunk (the l1 term on alpha left out: :meth:`backward_fm` adds it once per batch) and
        dXT = W_eff^T dY^T, after a :meth:`forward_fm` of this batch (which set the gates)."""
        if self.frozen:
            return super().gradients_fm(XT, dYT)
        ops = self.backend
        G = ops.sddmm_fm(self._effective, XT, dYT)  # (S, L)
        d_alpha = self._gate_backward(G)
        dXT = ops.matmul_t_fm(self._effective, dYT) if self.needs_input_grad else None
        return {"weight": G, "alpha": d_alpha}, dXT

    @property
    def accepts_patches(self) -> bool:
        """True in both phases (:attr:`SparseLinear.accepts_patches`): frozen, the step is
        SparseLinear's own; soft, :meth:`forward_fm`, :meth:`backward_fm` and :meth:`gradients_fm`
        hand X^T only to the backend's ``matmul_fm`` and ``sddmm_fm`` (with the gated W_eff, a
        Diagonal like the stored matrix) and keep it for :meth:`SparseLinear.saved_batch`, which
        builds the rows from a held patch operand; the gates themselves never read X^T."""
        return True

    @property
    def forward_matrix(self):
        """The matrix the last forward multiplied by: the gated W_eff while soft, the stored matrix
        once frozen (:meth:`SparseLinear.forward_matrix`)."""
        return self._matrix if self.frozen else self._effective

    def _gate_values(self):
        """Compute the gates of the stored diagonals now and the gated matrix W_eff (kept for the backward).

        W_eff is built once per structure (a new stored matrix after a topology change gets a new one)
        and its values are rewritten in place on every soft forward: building a matrix validates its
        offsets, which cost a tenth of a millisecond a layer and step on LeNet-5.
        """
        self._gates = self.gates().astype(np.float32)
        self._gates_dev = self.backend.to_device(self._gates)
        M = self._matrix
        if self._effective_of is not M:
            self._effective = _with_values(M, self.backend.zeros_like(M.values))
            self._effective_of = M
        self.backend.scale_rows(M.values, self._gates_dev, out=self._effective.values)
        return self._effective

    def _gate_backward(self, G) -> np.ndarray:
        """G (S, L), dL/dW_eff at the stored entries, becomes dL/dV = gate * G in place; returns
        dL/dalpha (P,) float64 through the soft top-K (without the l1 term).

        .. math:: \\frac{\\partial L}{\\partial \\tilde\\alpha_{d_k}} = \\langle V_k, G_k \\rangle, \\qquad
                  \\frac{\\partial L}{\\partial V_k} = \\tilde\\alpha_{d_k} G_k
        """
        ops = self.backend
        d_gate = np.zeros(self.alpha.value.size)  # (P,): a diagonal not stored has V = 0, so 0
        d_gate[self.W.offsets] = ops.to_host(ops.row_dots(self._matrix.values, G))
        ops.scale_rows(G, self._gates_dev, out=G)
        return soft_top_k_backward(self.alpha.value, self.k, self.temperature, d_gate)

    def _l1_grad(self) -> np.ndarray | float:
        """The gradient of the l1 term l1 * ||alpha||_1 (0 without one)."""
        return self.l1 * np.sign(self.alpha.value) if self.l1 else 0.0

    def gate_state(self) -> dict:
        """What a model file stores of the gate besides ``alpha``: K, T and whether it is frozen."""
        return {"k": self.k, "temperature": self.temperature, "frozen": self.frozen}

    def __repr__(self) -> str:
        shown = self._W if self._W is not None else self._matrix
        state = "frozen" if self.frozen else f"T={self.temperature:g}"
        return f"GatedDiagonalLinear({shown!r}, K={self.k}, {state}, backend={self.backend.name!r})"
