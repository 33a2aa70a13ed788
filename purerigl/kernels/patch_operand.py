"""A convolution's transposed patch matrix, held as its input: the lazy operand ``Patches``.

A sparse convolution multiplies its filter matrix W (c_out, C kh kw) by the transposed patch matrix

.. math:: P^T[(c, i, j), (b, h_o, w_o)] = X_p[b, c, s h_o + i, s w_o + j]

(:func:`purerigl.kernels.host_conv.im2col_t`; X_p is X zero-padded by p), which holds every input
value kh kw times: 58 MB for VGG-small's second convolution at batch 64, written to memory by the
forward and read back by the product and by the backward's value gradient. ``Patches`` stands for
P^T without building it: the input X and the convolution's geometry. A backend whose products can
read the patches straight from X (the cpu backend at stride 1, :mod:`purerigl.kernels.cpu.conv_direct`)
takes it in ``matmul_fm`` and ``sddmm_fm`` and says so in ``takes_patches``. The reference backend's
products take it too and build P^T from it: that is what they mean. What else needs the matrix
itself builds it then: the growth selections, which read the batch in the row layout once per
topology update (:meth:`Patches.rows`, through :meth:`purerigl.nn.SparseLinear.saved_batch`), and a
product the backend cannot compute from X (:meth:`Patches.array`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .host_conv import output_hw


@dataclass(frozen=True)
class Patches:
    """P^T = im2col_t(X) of a convolution, (C kh kw, B Ho Wo), not built.

    Attributes
    ----------
    X : array of the backend, (B, C, H, W)
        The convolution's input (kept by reference).
    kh, kw, stride, padding : int
        The convolution's geometry (zero padding).
    derived : dict
        Arrays a backend derived from X for this operand, by name, kept with it: the forward and the
        backward's value gradient of a step read the same operand, so what both need is derived once
        (the cpu backend: X zero-padded, :func:`purerigl.kernels.cpu.conv_direct.padded_input`). It
        lives as long as the operand (a layer keeps its last forward's until the next forward).
    """

    X: object
    kh: int
    kw: int
    stride: int
    padding: int
    derived: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def out_hw(self) -> tuple[int, int]:
        """(Ho, Wo): the output's spatial size."""
        return output_hw(self.X.shape, self.kh, self.kw, self.stride, self.padding)

    @property
    def shape(self) -> tuple[int, int]:
        """(C kh kw, B Ho Wo): the shape of the patch matrix it stands for."""
        B, C = (int(n) for n in self.X.shape[:2])
        Ho, Wo = self.out_hw
        return C * self.kh * self.kw, B * Ho * Wo

    @property
    def dtype(self):
        return self.X.dtype

    def array(self, backend):
        """The patch matrix itself, ``backend.im2col_t(X, kh, kw, stride, padding)`` (C kh kw, B Ho Wo)."""
        return backend.im2col_t(self.X, self.kh, self.kw, self.stride, self.padding)

    def rows(self, backend):
        """Its transpose P in the row layout, ``backend.im2col(X, ...)`` (B Ho Wo, C kh kw): the same
        values as ``backend.transpose(self.array(backend))``, built directly."""
        return backend.im2col(self.X, self.kh, self.kw, self.stride, self.padding)
