"""Backend registry: pick the implementation of the sparse operations by name.

The backend is chosen by the argument, else the environment variable ``PURERIGL_BACKEND``, else
``"cpu"``. Every backend exposes the functions listed in :data:`OPS` with the signatures of the
reference backend, the array operations of a training step listed in :data:`ARRAY_OPS` and the
operations a DST update is written with, listed in :data:`UPDATE_OPS`.

Backend modules are imported only when asked for (so importing purerigl never imports numba.cuda).
A backend module that may not run on every machine defines ``check_available()``, which
:func:`get_backend` calls right after the import: the cuda backend raises one
:class:`~purerigl.errors.BackendError` naming the fixes when there is no GPU and the CUDA simulator is
off.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

from ..errors import BackendError

#: The operations every backend must provide, with the reference backend's signatures.
#: The first four are the products; the next four are the growth selections of DST (they read the
#: dense gradient G = dY^T X in tiles and never store it; ``topk_grad_with_rows`` is RigL's and SRigL's
#: selection from one pass, for SRigL's update); the last three are the products in the
#: feature-major layout (batch on the last axis: X^T (n_in, B), Y^T (n_out, B)), which a convolution
#: uses for its patch matrix so that no operand of a step is transposed (:mod:`purerigl.nn.conv`).
OPS = (
    "matmul", "matmul_t", "sddmm", "grad_at", "topk_grad", "topk_grad_rows", "topk_grad_with_rows",
    "diag_grad_norms",
    "matmul_fm", "matmul_t_fm", "sddmm_fm",
)

#: The array operations of a training step, which the layers, the loss and the optimizers call so that
#: the same model code runs on host arrays (reference, cpu: :mod:`purerigl.kernels.host_arrays`) and on
#: device arrays (cuda: :mod:`purerigl.kernels.cuda.arrays`). ``to_device`` / ``to_host`` move arrays
#: (and ``to_device`` sparse matrices) to where the backend computes and back; on the host backends
#: they return their argument itself. A backend's ``matmul``, ``matmul_t`` and ``sddmm`` accept what
#: its ``to_device`` returns for a matrix.
ARRAY_OPS = (
    "to_device", "to_host", "zeros", "zeros_like", "fill_zeros",
    "add_bias", "bias_grad", "relu_forward", "relu_backward", "dense_matmul", "dense_matmul_t", "dense_grad",
    "softmax_cross_entropy", "sgd_step", "adam_step", "scale_rows", "row_dots", "transpose",
    # the bias in the feature-major layout (batch last), beside the products matmul_fm & co (an MLP's step)
    "add_bias_fm", "bias_grad_fm",
)

#: The array operations of the transformer layers (:mod:`purerigl.nn.transformer`,
#: :mod:`purerigl.nn.attention`, :mod:`purerigl.nn.vit_layers`), part of :data:`ARRAY_OPS`: the
#: residual ``add`` (residual blocks of CNNs use it too), layer norm, GELU, the fused-QKV self-attention,
#: patches, class token and class-token pooling. Specification: :mod:`purerigl.kernels.host_transformer`
#: (the reference and cpu backends); cuda: :mod:`purerigl.kernels.cuda.transformer`,
#: :mod:`~purerigl.kernels.cuda.attention`.
TRANSFORMER_OPS = (
    "add", "layer_norm_forward", "layer_norm_backward", "gelu_forward", "gelu_backward", "self_attention_forward",
    "self_attention_backward", "patchify", "unpatchify", "prepend_token", "prepend_token_backward", "first_token",
    "first_token_backward",
)
ARRAY_OPS = ARRAY_OPS + TRANSFORMER_OPS

#: The array operations of the convolutional layers (:mod:`purerigl.nn.conv`, :mod:`purerigl.nn.pool`,
#: :mod:`purerigl.nn.norm`), part of :data:`ARRAY_OPS`: patch matrices and their adjoints, the output
#: reorders of a convolution, pooling and batch normalisation (a residual block adds with ``add``),
#: and one operation with a sparse filter matrix: a convolution's input gradient ``conv_input_grad_fm``
#: (col2im of W^T dY^T, which the cpu and cuda backends compute without the patch-sized product in between).
#: ``takes_patches(W, stride, dtype)`` says whether the backend's ``matmul_fm`` and ``sddmm_fm`` take a
#: convolution's patch matrix as its input X (:class:`purerigl.kernels.patch_operand.Patches`) and
#: compute without building it (the cpu backend at stride 1, :mod:`purerigl.kernels.cpu.conv_direct`).
#: Specification: :mod:`purerigl.kernels.host_conv` (the reference backend); cpu:
#: :mod:`purerigl.kernels.cpu.conv_ops`; cuda: :mod:`purerigl.kernels.cuda.patches`,
#: :mod:`~purerigl.kernels.cuda.pooling`, :mod:`~purerigl.kernels.cuda.batchnorm`.
CONV_OPS = (
    "im2col", "col2im", "im2col_t", "col2im_t", "conv_input_grad_fm", "fm_to_nchw", "nchw_to_fm", "rows_to_nchw", "nchw_to_rows",
    "maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward", "global_avgpool_forward",
    "global_avgpool_backward", "batchnorm_forward", "batchnorm_backward", "takes_patches",
)
ARRAY_OPS = ARRAY_OPS + CONV_OPS

#: The operations a DST update is written with (host, for the reference and cpu backends:
#: :mod:`purerigl.kernels.host_topology` and :mod:`purerigl.kernels.host_selection`; cuda:
#: :mod:`purerigl.kernels.cuda.structure` and :mod:`purerigl.kernels.cuda.selection`). They take and
#: return what the backend computes on (host formats and arrays, or device matrices and arrays), so a
#: method whose rule is written with them updates a layer without leaving the backend, and
#: :func:`purerigl.dst.topology.apply_structure` remaps values and optimizer state there. Two
#: documented exceptions keep data movement out of the methods' bodies: an argument marked "host or
#: backend" (a small integer vector the method computes on the host: a per-row count or mask of length
#: n_out, the active rows, a host generator's draw) may be a host array, which the device version
#: copies in itself; ``row_counts`` and ``active_rows`` return host vectors of length n_out on every
#: backend, and ``in_sorted`` given host values returns a host mask. Values, batches and structures
#: never cross implicitly: a device op refuses them as host arrays.
UPDATE_OPS = (
    # positions p = row * n_in + col of stored entries, of (rows, cols), of a CSR-like set; 0..n-1
    "flat_positions", "flat_of", "csr_positions", "arange",
    # masks and compaction
    "compress", "count_true", "indicator",
    # sets of sorted positions
    "in_sorted", "merge_sorted", "in_rows", "exclusion_of", "free_positions",
    # per-row facts for the host's decisions (host int64 / bool vectors of length n_out on every backend)
    "row_counts", "active_rows",
    # ranking by magnitude (ties: the tie rule of purerigl.kernels._rank_key)
    "keep_by_magnitude", "top_k", "top_k_per_row", "row_norms",
    # new structures with zero values
    "csr_from_positions", "condensed_from_positions", "diagonal_from_offsets",
    # the shared step: match new entries to old ones and carry values and optimizer state across
    "source_of", "remap_by_source", "count_kept",
)

#: Known backends and the module that implements each.
BACKENDS = {
    "reference": "purerigl.kernels.reference",
    "cpu": "purerigl.kernels.cpu",
    "cuda": "purerigl.kernels.cuda",
}

DEFAULT_BACKEND = "cpu"
ENV_VAR = "PURERIGL_BACKEND"


@dataclass(frozen=True)
class Backend:
    """A named set of sparse operations; attribute access forwards to the implementing module."""

    name: str
    module: ModuleType

    def __getattr__(self, op):
        if op in OPS or op in ARRAY_OPS or op in UPDATE_OPS:
            return getattr(self.module, op)
        raise AttributeError(f"backend {self.name!r} has no attribute {op!r}")

    @property
    def resident(self) -> bool:
        """True when this backend computes on arrays that live off the host (cuda): a layer then keeps
        its parameters there and refreshes host copies only on request (``sync_to_host``)."""
        return bool(getattr(self.module, "RESIDENT", False))

    @property
    def feature_major_native(self) -> bool:
        """True when this backend's feature-major products (``matmul_fm`` ...) compute in that layout
        and so spare the row-layout products their operand transposes (reference, cpu): a model then
        runs its sparse layers feature-major from a few rows on. False for cuda, whose ``*_fm`` ops are
        the row-layout kernels between two transposes: there the row layout does the same arithmetic
        (the same bits) with two fewer launches per product."""
        return bool(getattr(self.module, "FEATURE_MAJOR_NATIVE", True))

    def synchronize(self) -> None:
        """Wait until queued work has finished (a no-op on the CPU backends); call before reading a clock."""
        sync = getattr(self.module, "synchronize", None)
        if sync is not None:
            sync()

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


def available_backends() -> list[str]:
    """Names that :func:`get_backend` accepts, whether or not they can run here."""
    return sorted(BACKENDS)


def get_backend(name: str | Backend | None = None) -> Backend:
    """Return the backend named ``name`` (or by ``PURERIGL_BACKEND``, or ``"cpu"``).

    Raises
    ------
    BackendError
        For an unknown name (the message lists the valid ones) or a backend this machine cannot run
        (for cuda: no GPU and no simulator; the message names the fixes).
    """
    if isinstance(name, Backend):
        return name
    source = "argument"
    if name is None:
        name, source = os.environ.get(ENV_VAR) or DEFAULT_BACKEND, ENV_VAR
    key = str(name).strip().lower()
    if key not in BACKENDS:
        where = f" (from {ENV_VAR})" if source == ENV_VAR else ""
        raise BackendError(
            f"unknown backend {name!r}{where}; choose one of: {', '.join(available_backends())}"
        )
    module = importlib.import_module(BACKENDS[key])  # the cuda module raises BackendError if numba.cuda fails
    check = getattr(module, "check_available", None)
    if check is not None:
        check()
    return Backend(key, module)
