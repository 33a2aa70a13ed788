"""Element-wise CUDA kernels of a training step: bias, ReLU, bias gradient, SGD and Adam updates.

The first building blocks of a GPU-resident training step. Every function takes numba **device**
arrays and returns device arrays (or updates them in place); none copies to or from the host and
none synchronises. Each mirrors one piece of NumPy code in purerigl, named in its docstring, with the
same float32 operations in the same order, so on the CUDA simulator the results are bit-identical to
the NumPy code (and the tests check that they agree to float32 rounding). On a real GPU the compiler
may fuse a multiply and an add into one FMA (one rounding instead of two) and ``exp``/``log`` are
CUDA's float32 functions, so results there agree to a few float32 ulps.

Launches are one thread per output element (:func:`._launch.launch`), except :func:`bias_grad` and
:func:`bias_grad_fm`, one thread per bias entry summing its batch in ascending order (fixed order, no
atomics). The ``_fm`` functions are the bias lines in the feature-major layout (batch last, Y^T (n, B)),
which :class:`purerigl.nn.MLP` runs its products in (``matmul_fm`` & co).

Scalars (learning rate, betas, ...) are rounded to float32 on the host exactly as the NumPy code
rounds them (``np.float32(lr)``, ``np.float32(1.0 - b1)``, ...) and passed as float32, so the
kernels never compute in float64.

The softmax cross-entropy lives in :mod:`.loss`, the topology-change remap in :mod:`.topology`.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import DTypeError, ShapeError
from ._launch import cuda, empty, is_device_array, launch, to_device

__all__ = [
    "adam_step", "add_bias", "add_bias_fm", "bias_grad", "bias_grad_fm", "relu_backward", "relu_forward", "sgd_step",
]


# --------------------------------------------------------------------------------------------------
# Operand checks (cheap: types, dtypes and shapes, never a pass over the data)
# --------------------------------------------------------------------------------------------------


def check_device(name: str, A, dtype=np.float32, shape: tuple | None = None, ndim: int | None = None):
    """``A`` as given, after checking that it is a device array of this dtype (and shape / ndim).

    A host array is refused (no hidden copies). ``dtype=None`` accepts any integer dtype.
    """
    if not is_device_array(A):
        raise DTypeError(
            f"{name} must be a numba device array (cuda.to_device), got {type(A).__name__}"
        )
    if dtype is None:
        if np.dtype(A.dtype).kind not in "iu":
            raise DTypeError(f"{name} must have an integer dtype, got {A.dtype}")
    elif A.dtype != dtype:
        raise DTypeError(f"{name} must be {np.dtype(dtype).name}, got {A.dtype}")
    if ndim is not None and len(A.shape) != ndim:
        raise ShapeError(f"{name} must be {ndim}-D, got shape {tuple(A.shape)}")
    if shape is not None and tuple(A.shape) != tuple(shape):
        raise ShapeError(f"{name} has shape {tuple(A.shape)}, expected {tuple(shape)}")
    return A


def device_or_copied(name: str, A, dtype, ndim: int | None = 1):
    """``A`` as a device array of ``dtype``: a device array is checked as by :func:`check_device`; a
    host ndarray is copied in (as ``dtype``, C-contiguous).

    Only for the arguments the update operations document as "host or backend": small integer
    vectors a method computes on the host (per-row counts and masks, active rows, a host generator's
    draws). Values, batches and structures stay refused as host arrays (:func:`check_device`).
    """
    if isinstance(A, np.ndarray):
        if ndim is not None and A.ndim != ndim:
            raise ShapeError(f"{name} must be {ndim}-D, got shape {A.shape}")
        return to_device(np.ascontiguousarray(A, dtype=dtype))
    return check_device(name, A, dtype, ndim=ndim)


def flat(A):
    """The (size,) view of the C-contiguous device array ``A``."""
    return A.reshape(A.size)


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@cuda.jit
def _add_bias_kernel(Y, bias):
    """Y[b, i] += bias[i], one thread per element of Y (B, n)."""
    B, n = Y.shape
    for q in range(cuda.grid(1), B * n, cuda.gridsize(1)):
        b = q // n
        i = q % n
        Y[b, i] += bias[i]


@cuda.jit
def _add_bias_fm_kernel(YT, bias):
    """YT[i, b] += bias[i], one thread per element of YT (n, B), consecutive threads along b."""
    n, B = YT.shape
    for q in range(cuda.grid(1), n * B, cuda.gridsize(1)):
        i = q // B
        b = q % B
        YT[i, b] += bias[i]


@cuda.jit
def _relu_forward_kernel(X, Y, mask):
    """mask[q] = X[q] > 0; Y[q] = X[q] where mask else 0 (flat views)."""
    for q in range(cuda.grid(1), X.shape[0], cuda.gridsize(1)):
        x = X[q]
        positive = x > np.float32(0.0)
        mask[q] = positive
        Y[q] = x if positive else np.float32(0.0)


@cuda.jit
def _relu_backward_kernel(dY, mask, dX):
    """dX[q] = dY[q] where mask[q] else 0 (flat views)."""
    for q in range(cuda.grid(1), dY.shape[0], cuda.gridsize(1)):
        dX[q] = dY[q] if mask[q] else np.float32(0.0)


@cuda.jit
def _bias_grad_kernel(dY, out):
    """out[i] = sum_b dY[b, i] in float32, ascending b; one thread per column i."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        s = np.float32(0.0)
        for b in range(dY.shape[0]):
            s += dY[b, i]
        out[i] = s


@cuda.jit
def _bias_grad_fm_kernel(dYT, out):
    """out[i] = sum_b dYT[i, b] in float32, ascending b; one thread per row i."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        s = np.float32(0.0)
        for b in range(dYT.shape[1]):
            s += dYT[i, b]
        out[i] = s


@cuda.jit
def _sgd_kernel(w, g, buf, lr, mu, wd, use_wd, use_momentum, nesterov):
    """One SGD update per element (flat views); see :func:`sgd_step` for the equations."""
    for q in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
        x = w[q]
        gq = g[q]
        if use_wd:
            gq = gq + wd * x
        if use_momentum:
            bq = buf[q] * mu
            bq = bq + gq
            buf[q] = bq
            u = gq + mu * bq if nesterov else bq
        else:
            u = gq
        w[q] = x - lr * u


@cuda.jit
def _adam_kernel(w, g, m, v, shrink, use_shrink, wd, use_wd, b1, c1, b2, c2, step_size, sqrt_bc2, eps):
    """One Adam / AdamW update per element (flat views); see :func:`adam_step` for the equations."""
    for q in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
        x = w[q]
        gq = g[q]
        if use_shrink:
            x = x * shrink
        elif use_wd:
            gq = gq + wd * x
        mq = m[q] * b1
        mq = mq + c1 * gq
        vq = v[q] * b2
        vq = vq + c2 * (gq * gq)
        m[q] = mq
        v[q] = vq
        s = np.float32(math.sqrt(vq))
        s = s / sqrt_bc2
        s = s + eps
        s = mq / s
        s = s * step_size
        w[q] = x - s


# --------------------------------------------------------------------------------------------------
# Layer pieces
# --------------------------------------------------------------------------------------------------


def add_bias(Y_d, b_d):
    """Add the bias to every row of the layer output, in place.

    Mirrors ``Y += self.bias.value`` in :meth:`purerigl.nn.SparseLinear.forward`.

    .. math:: Y[b, i] \\mathrel{+}= \\mathrm{bias}[i]

    Parameters
    ----------
    Y_d : float32 device array, shape (B, n); updated in place
    b_d : float32 device array, shape (n,)

    Returns
    -------
    Y_d : the same device array
    """
    check_device("Y", Y_d, ndim=2)
    check_device("bias", b_d, shape=(Y_d.shape[1],))
    launch(_add_bias_kernel, Y_d.size, Y_d, b_d)
    return Y_d


def add_bias_fm(YT_d, b_d):
    """Add the bias to every column of the layer output in the feature-major layout (batch last), in
    place: :func:`add_bias` for Y^T.

    Mirrors :func:`purerigl.kernels.host_arrays.add_bias_fm` (``YT += b[:, None]``), what
    :meth:`purerigl.nn.MLP.forward` adds after :meth:`~purerigl.nn.SparseLinear.forward_fm`.

    .. math:: Y^T[i, b] \\mathrel{+}= \\mathrm{bias}[i]

    Parameters
    ----------
    YT_d : float32 device array, shape (n, B); updated in place
    b_d : float32 device array, shape (n,)

    Returns
    -------
    YT_d : the same device array
    """
    check_device("YT", YT_d, ndim=2)
    check_device("bias", b_d, shape=(YT_d.shape[0],))
    launch(_add_bias_fm_kernel, YT_d.size, YT_d, b_d)
    return YT_d


def relu_forward(X_d):
    """``Y = max(X, 0)`` and the mask the backward needs.

    Mirrors :meth:`purerigl.nn.ReLU.forward`: ``mask = X > 0; Y = np.where(mask, X, 0)`` (so -0.0
    and NaN give +0.0 and a False mask).

    .. math:: m = [X > 0], \\qquad Y = m \\, X

    Parameters
    ----------
    X_d : float32 device array, any shape (C-contiguous)

    Returns
    -------
    Y_d : float32 device array, shaped like X
    mask_d : bool device array, shaped like X
    """
    check_device("X", X_d)
    Y_d = empty(X_d.shape, np.float32)
    mask_d = empty(X_d.shape, np.bool_)
    if X_d.size:
        launch(_relu_forward_kernel, X_d.size, flat(X_d), flat(Y_d), flat(mask_d))
    return Y_d, mask_d


def relu_backward(dY_d, mask_d):
    """Pass the output gradient where the input was positive.

    Mirrors :meth:`purerigl.nn.ReLU.backward`: ``np.where(mask, dY, 0)``.

    .. math:: dX = m \\, dY

    Parameters
    ----------
    dY_d : float32 device array, any shape (C-contiguous)
    mask_d : bool device array, shaped like dY (from :func:`relu_forward`)

    Returns
    -------
    dX_d : float32 device array, shaped like dY
    """
    check_device("dY", dY_d)
    check_device("mask", mask_d, np.bool_, shape=tuple(dY_d.shape))
    dX_d = empty(dY_d.shape, np.float32)
    if dY_d.size:
        launch(_relu_backward_kernel, dY_d.size, flat(dY_d), flat(mask_d), flat(dX_d))
    return dX_d


def bias_grad(dY_d, out_d):
    """The bias gradient, the column sums of the output gradient, into ``out_d``.

    Mirrors ``np.sum(dY, axis=0, out=self.bias.grad)`` in :meth:`purerigl.nn.SparseLinear.backward`
    (NumPy also adds the rows one after another in float32 for this reduction).

    .. math:: \\mathrm{out}[i] = \\sum_{b=0}^{B-1} dY[b, i]

    One thread per column i, summing in float32 in ascending b (fixed order, no atomics); a batch of
    0 gives zeros.

    Parameters
    ----------
    dY_d : float32 device array, shape (B, n)
    out_d : float32 device array, shape (n,); overwritten

    Returns
    -------
    out_d : the same device array
    """
    check_device("dY", dY_d, ndim=2)
    check_device("out", out_d, shape=(dY_d.shape[1],))
    launch(_bias_grad_kernel, out_d.shape[0], dY_d, out_d)
    return out_d


def bias_grad_fm(dYT_d, out_d):
    """The bias gradient in the feature-major layout (batch last), the row sums of the output gradient
    dY^T, into ``out_d``: :func:`bias_grad` for dY^T.

    Mirrors :func:`purerigl.kernels.host_arrays.bias_grad_fm` (``np.sum(dYT, axis=1, out=out)``; NumPy
    sums a contiguous row pairwise, so the two agree to float32 rounding, not bit for bit).

    .. math:: \\mathrm{out}[i] = \\sum_{b=0}^{B-1} dY^T[i, b]

    One thread per row i, summing in float32 in ascending b (fixed order, no atomics); a batch of 0
    gives zeros.

    Parameters
    ----------
    dYT_d : float32 device array, shape (n, B)
    out_d : float32 device array, shape (n,); overwritten

    Returns
    -------
    out_d : the same device array
    """
    check_device("dYT", dYT_d, ndim=2)
    check_device("out", out_d, shape=(dYT_d.shape[0],))
    launch(_bias_grad_fm_kernel, out_d.shape[0], dYT_d, out_d)
    return out_d


# --------------------------------------------------------------------------------------------------
# Optimizer updates
# --------------------------------------------------------------------------------------------------


def _check_update_operands(w_d, g_d, states: dict):
    check_device("w", w_d)
    for name, A in {"g": g_d, **states}.items():
        check_device(name, A, shape=tuple(w_d.shape))


def sgd_step(w_d, g_d, buf_d, lr, momentum=0.0, nesterov=False, weight_decay=0.0, decay=True):
    """One SGD update of a parameter, in place (weights and momentum buffer).

    Mirrors :meth:`purerigl.optim.SGD._update` (PyTorch's SGD without dampening), element-wise with
    the same float32 roundings:

    .. math::

        g &= \\nabla_w L + \\lambda w \\quad (\\text{only if } \\lambda \\ne 0 \\text{ and } decay)

        b &\\leftarrow \\mu b + g

        u &= g + \\mu b \\ \\text{(Nesterov)} \\quad\\text{or}\\quad u = b
             \\quad (u = g \\text{ when } \\mu = 0)

        w &\\leftarrow w - \\eta u

    Parameters
    ----------
    w_d : float32 device array, any shape; updated in place
    g_d : float32 device array, shaped like w; read only
    buf_d : float32 device array shaped like w, updated in place; or None when ``momentum == 0``
        (the optimizer then keeps no buffer)
    lr : float
        :math:`\\eta`, this step's learning rate.
    momentum : float
        :math:`\\mu`.
    nesterov : bool
    weight_decay : float
        :math:`\\lambda` (L2, added to the gradient).
    decay : bool
        Whether weight decay applies to this parameter (``Parameter.decay``).

    Returns
    -------
    w_d : the same device array
    """
    use_momentum = bool(momentum)
    if use_momentum and buf_d is None:
        raise ValueError(f"momentum={momentum!r} needs a momentum buffer, got buf_d=None")
    if nesterov and not use_momentum:
        raise ValueError("nesterov=True requires momentum > 0, got momentum=0")
    _check_update_operands(w_d, g_d, {"buf": buf_d} if use_momentum else {})
    if w_d.size == 0:
        return w_d
    use_wd = bool(weight_decay) and bool(decay)
    buf = flat(buf_d) if use_momentum else flat(w_d)  # an unread placeholder without momentum
    launch(
        _sgd_kernel, w_d.size, flat(w_d), flat(g_d), buf,
        np.float32(lr), np.float32(momentum), np.float32(weight_decay), use_wd, use_momentum, bool(nesterov),
    )
    return w_d


def adam_step(w_d, g_d, m_d, v_d, lr, step, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decay=True,
              decoupled=False):
    """One Adam (L2) or AdamW (decoupled) update of a parameter, in place (weights and both moments).

    Mirrors :meth:`purerigl.optim.Adam._update` (``decoupled=False``) and
    :class:`purerigl.optim.AdamW` (``decoupled=True``), element-wise with the same float32 roundings
    and the same host-side scalars (``step_size = float32(lr / (1 - b1**t))``,
    ``sqrt_bc2 = float32(sqrt(1 - b2**t))``):

    .. math::

        w &\\leftarrow w (1 - \\eta \\lambda) \\quad \\text{(AdamW)}, \\qquad
        g = \\nabla_w L + \\lambda w \\quad \\text{(Adam)}

        m &\\leftarrow \\beta_1 m + (1 - \\beta_1) g, \\qquad
        v \\leftarrow \\beta_2 v + (1 - \\beta_2) g^2

        w &\\leftarrow w - \\frac{\\eta}{1 - \\beta_1^t} \\,
             \\frac{m}{\\sqrt{v} / \\sqrt{1 - \\beta_2^t} + \\epsilon}

    (:math:`\\lambda` only if nonzero and ``decay``.)

    Parameters
    ----------
    w_d : float32 device array, any shape; updated in place
    g_d : float32 device array, shaped like w; read only
    m_d, v_d : float32 device arrays shaped like w (``exp_avg``, ``exp_avg_sq``); updated in place
    lr : float
        :math:`\\eta`, this step's learning rate.
    step : int
        :math:`t \\ge 1`, the optimizer's step count *including* this step (``Optimizer.steps`` after
        its increment).
    betas : (float, float)
    eps : float
    weight_decay : float
    decay : bool
        Whether weight decay applies to this parameter (``Parameter.decay``).
    decoupled : bool
        AdamW's decoupled weight decay instead of Adam's L2 term.

    Returns
    -------
    w_d : the same device array
    """
    t = int(step)
    if t < 1:
        raise ValueError(f"step must be >= 1 (the count including this step), got {step!r}")
    _check_update_operands(w_d, g_d, {"m": m_d, "v": v_d})
    if w_d.size == 0:
        return w_d
    lr = float(lr)
    b1, b2 = float(betas[0]), float(betas[1])
    wd = float(weight_decay) if decay else 0.0
    use_shrink = bool(wd) and decoupled
    use_wd = bool(wd) and not decoupled
    shrink = np.float32(1.0 - lr * wd)
    step_size = np.float32(lr / (1.0 - b1**t))
    sqrt_bc2 = np.float32(math.sqrt(1.0 - b2**t))
    launch(
        _adam_kernel, w_d.size, flat(w_d), flat(g_d), flat(m_d), flat(v_d),
        shrink, use_shrink, np.float32(wd), use_wd,
        np.float32(b1), np.float32(1.0 - b1), np.float32(b2), np.float32(1.0 - b2),
        step_size, sqrt_bc2, np.float32(eps),
    )
    return w_d
