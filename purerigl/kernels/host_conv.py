"""The array operations of the convolutional layers on host NumPy arrays: their specification.

These are :data:`purerigl.kernels.registry.CONV_OPS` as the reference backend runs them (plain
NumPy, never compiled); the cpu backend runs Numba kernels with the same values
(:mod:`purerigl.kernels.cpu.conv_ops`), the cuda backend CUDA kernels on device arrays
(:mod:`purerigl.kernels.cuda.patches`, :mod:`~purerigl.kernels.cuda.pooling`,
:mod:`~purerigl.kernels.cuda.batchnorm`). The layers of :mod:`purerigl.nn.conv`, :mod:`purerigl.nn.pool`,
:mod:`purerigl.nn.norm` and :mod:`purerigl.nn.blocks` call them through their backend, so one code path
serves every backend.

Patch matrices. Row r = (b, ho, wo) of ``im2col(X)`` holds the input window under output pixel
(ho, wo) of sample b, flattened in the order (c, i, j), i.e. column ``c * kh * kw + i * kw + j``:

.. math::

    P[(b, h_o, w_o), (c, i, j)] = X_p[b, c, s h_o + i, s w_o + j]

where X_p is X padded by p values ``fill`` on each side of both spatial axes (0 for a convolution).
``col2im`` is its adjoint, ``im2col_t`` / ``col2im_t`` the same maps in the transposed
(feature-major) layout (C * kh * kw, B * Ho * Wo).

The input gradient of a sparse convolution, ``conv_input_grad_fm(W, dYT, ...)`` = ``col2im_t(W^T dY^T)``:
the one operation here that takes a sparse filter matrix W, specified as that composition. The cpu
and cuda backends compute it without the patch-sized W^T dY^T in between
(:mod:`purerigl.kernels.cpu.conv_products`, :mod:`purerigl.kernels.cuda.conv_products`).

Layout changes of a convolution's output: ``fm_to_nchw`` (c, B * Ho * Wo) + bias -> (B, c, Ho, Wo),
``nchw_to_fm`` back; ``rows_to_nchw`` (B * Ho * Wo, c) -> (B, c, Ho, Wo), ``nchw_to_rows`` back.

Pooling (``maxpool_*``, ``avgpool_*``, ``global_avgpool_*``) and batch normalisation
(``batchnorm_forward`` / ``batchnorm_backward``): see each function. (A residual block's sum is the
``add`` of :mod:`purerigl.kernels.host_transformer`.)
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import ShapeError
from ..formats.triples import triples
from . import _checks

__all__ = [
    "avgpool_backward", "avgpool_forward", "batchnorm_backward", "batchnorm_forward", "col2im", "col2im_t",
    "conv_input_grad_fm", "fm_to_nchw", "global_avgpool_backward", "global_avgpool_forward", "im2col", "im2col_t", "maxpool_backward",
    "maxpool_forward", "nchw_to_fm", "nchw_to_rows", "rows_to_nchw", "takes_patches",
]


# --------------------------------------------------------------------------------------------------
# Sizes and checks (shared by every backend)


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a window of ``kernel`` sliding by ``stride`` over ``size + 2 * padding``.

    .. math:: n_o = \\left\\lfloor \\frac{n + 2p - k}{s} \\right\\rfloor + 1

    Raises
    ------
    ShapeError
        When the padded input is shorter than the kernel (the output would be empty), or when the
        stride or kernel is < 1 or the padding < 0.
    """
    if kernel < 1 or stride < 1 or padding < 0:
        raise ShapeError(f"need kernel >= 1, stride >= 1, padding >= 0; got kernel={kernel}, "
                         f"stride={stride}, padding={padding}")
    if size + 2 * padding < kernel:
        raise ShapeError(
            f"an input of size {size} with padding {padding} is smaller than the kernel {kernel}: "
            "the output would have size < 1"
        )
    return (size + 2 * padding - kernel) // stride + 1


def output_hw(X_shape, kh: int, kw: int, stride: int, padding: int) -> tuple[int, int]:
    """(Ho, Wo) of a (B, C, H, W) input."""
    _, _, H, W = X_shape
    return conv_output_size(H, kh, stride, padding), conv_output_size(W, kw, stride, padding)


def check_cols(cols_shape, X_shape, kh: int, kw: int, stride: int, padding: int, transposed: bool):
    """(B, C, H, W, Ho, Wo) after checking that a patch matrix has the shape ``X_shape`` gives it."""
    B, C, H, W = (int(n) for n in X_shape)
    Ho, Wo = output_hw(X_shape, kh, kw, stride, padding)
    want = (C * kh * kw, B * Ho * Wo) if transposed else (B * Ho * Wo, C * kh * kw)
    if tuple(cols_shape) != want:
        raise ShapeError(f"{'cols_t' if transposed else 'cols'} has shape {tuple(cols_shape)}, expected {want}")
    return B, C, H, W, Ho, Wo


# --------------------------------------------------------------------------------------------------
# Patch matrices


def im2col(X: np.ndarray, kh: int, kw: int, stride: int = 1, padding: int = 0, fill=0.0) -> np.ndarray:
    """The patch matrix of X (B, C, H, W): (B * Ho * Wo, C * kh * kw), in X's dtype (a new array): a
    padded copy, a window view, one copy.

    .. math:: P[(b, h_o, w_o), (c, i, j)] = X_p[b, c, s h_o + i, s w_o + j]

    ``fill`` is the value of the padding (0 for a convolution; ``-inf`` for max pooling).
    """
    B, C, H, W = X.shape
    Ho, Wo = output_hw(X.shape, kh, kw, stride, padding)
    p = padding
    if p:
        Xp = np.full((B, C, H + 2 * p, W + 2 * p), fill, dtype=X.dtype)  # (B, C, Hp, Wp)
        Xp[:, :, p:p + H, p:p + W] = X
    else:
        Xp = X
    win = sliding_window_view(Xp, (kh, kw), axis=(2, 3))  # (B, C, Hp-kh+1, Wp-kw+1, kh, kw), a view
    win = win[:, :, ::stride, ::stride]  # (B, C, Ho, Wo, kh, kw)
    win = win.transpose(0, 2, 3, 1, 4, 5)  # (B, Ho, Wo, C, kh, kw)
    return np.ascontiguousarray(win).reshape(B * Ho * Wo, C * kh * kw)  # (B*Ho*Wo, C*kh*kw), copy


def col2im(cols: np.ndarray, X_shape, kh: int, kw: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """The adjoint of :func:`im2col`: kh * kw strided scatter-adds, offset (i, j) by offset in
    row-major order, into a zero-padded buffer.

    cols (B * Ho * Wo, C * kh * kw) -> (B, C, H, W) in cols' dtype; entries that came from the
    padding are dropped.

    .. math:: dX[b, c, y, x] = \\sum_{(h_o, w_o, i, j) :\\ s h_o + i - p = y,\\ s w_o + j - p = x}
              dP[(b, h_o, w_o), (c, i, j)]

    so that :math:`\\langle \\mathrm{col2im}(C), X \\rangle = \\langle C, \\mathrm{im2col}(X) \\rangle`.
    """
    B, C, H, W, Ho, Wo = check_cols(cols.shape, X_shape, kh, kw, stride, padding, transposed=False)
    p, s = padding, stride
    c6 = cols.reshape(B, Ho, Wo, C, kh, kw)  # (B, Ho, Wo, C, kh, kw), a view
    c6 = c6.transpose(0, 3, 4, 5, 1, 2)  # (B, C, kh, kw, Ho, Wo), a view
    Xp = np.zeros((B, C, H + 2 * p, W + 2 * p), dtype=cols.dtype)  # (B, C, Hp, Wp)
    for i in range(kh):  # kh * kw vectorised scatter-adds; within one (i, j) no two patches collide
        for j in range(kw):
            Xp[:, :, i:i + s * (Ho - 1) + 1:s, j:j + s * (Wo - 1) + 1:s] += c6[:, :, i, j]  # (B, C, Ho, Wo)
    return Xp[:, :, p:p + H, p:p + W] if p else Xp


def im2col_t(X: np.ndarray, kh: int, kw: int, stride: int = 1, padding: int = 0, fill=0.0) -> np.ndarray:
    """The transposed patch matrix ``im2col(X).T`` (C * kh * kw, B * Ho * Wo), C-contiguous.

    .. math:: P^T[(c, i, j), (b, h_o, w_o)] = X_p[b, c, s h_o + i, s w_o + j]
    """
    P = im2col(X, kh, kw, stride, padding, fill)  # (B*Ho*Wo, C*kh*kw)
    return np.ascontiguousarray(P.T)  # (C*kh*kw, B*Ho*Wo)


def col2im_t(cols_t: np.ndarray, X_shape, kh: int, kw: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """The adjoint of :func:`im2col_t`: :func:`col2im` of the transpose.

    cols_t (C * kh * kw, B * Ho * Wo) -> (B, C, H, W).
    """
    check_cols(cols_t.shape, X_shape, kh, kw, stride, padding, transposed=True)
    return col2im(cols_t.T, X_shape, kh, kw, stride, padding)  # cols_t.T: (B*Ho*Wo, C*kh*kw), a view


def check_conv_input_grad(W, dYT, X_shape, kh: int, kw: int, stride: int, padding: int):
    """(B, C, H, W, Ho, Wo) after checking that the filter matrix W (c_out, c_in * kh * kw) and the
    feature-major output gradient dYT (c_out, B * Ho * Wo) fit the input shape ``X_shape``."""
    B, C, H, W_ = (int(n) for n in X_shape)
    Ho, Wo = output_hw(X_shape, kh, kw, stride, padding)
    n_out, n_in = (int(n) for n in W.shape)
    if n_in != C * kh * kw:
        raise ShapeError(f"the filter matrix has {n_in} columns, expected c_in * kh * kw = {C} * {kh} * {kw} = "
                         f"{C * kh * kw}")
    if getattr(dYT, "ndim", None) != 2 or tuple(dYT.shape) != (n_out, B * Ho * Wo):
        raise ShapeError(f"dYT has shape {tuple(getattr(dYT, 'shape', ()))}, expected (c_out, B * Ho * Wo) = "
                         f"{(n_out, B * Ho * Wo)}")
    return B, C, H, W_, Ho, Wo


def conv_input_grad_operands(W, dYT, X_shape, kh: int, kw: int, stride: int, padding: int):
    """(dYT as a C-contiguous float32 array, Ho, Wo) after the host checks of ``conv_input_grad_fm``: W a
    sparse format, dYT float32 (c_out, B * Ho * Wo), the shapes fitting ``X_shape`` (the reference and
    cpu backends share them)."""
    _checks.check_format(W)
    dYT = _checks.check_dense_fm("dYT", dYT, W.n_out, "n_out")
    _, _, _, _, Ho, Wo = check_conv_input_grad(W, dYT, X_shape, kh, kw, stride, padding)
    return dYT, Ho, Wo


def takes_patches(W, stride: int, dtype) -> bool:
    """Whether ``matmul_fm`` / ``sddmm_fm`` take a convolution's patch matrix as its input X
    (:class:`purerigl.kernels.patch_operand.Patches`): never here. The specification multiplies by the
    patch matrix itself, ``im2col_t(X)``, which a convolution then builds (so does the cuda backend)."""
    return False


def conv_input_grad_fm(W, dYT, X_shape, kh: int, kw: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """The input gradient of a convolution with the sparse filter matrix W (c_out, c_in * kh * kw),
    from its output gradient in the feature-major layout dYT (c_out, B * Ho * Wo): dX (B, c_in, H, W),
    the adjoint of the patch map applied to W^T dY^T. The product is the reference backend's (every
    stored triple (i, j, w) adds w dY^T[i] to row j, in float64), and so is the rounding to float32,
    after col2im here.

    .. math:: dX = \\mathrm{col2im\\_t}(W^T dY^T), \\qquad
              dX[b, c, y, x] = \\sum_{(o, i, j),\\ h_o, w_o :\\ s h_o + i - p = y,\\ s w_o + j - p = x}
              W[o, (c, i, j)] \\, dY^T[o, (b, h_o, w_o)]
    """
    dYT, _, _ = conv_input_grad_operands(W, dYT, X_shape, kh, kw, stride, padding)
    rows, cols, vals = triples(W)
    dPT = np.zeros((W.n_in, dYT.shape[1]), dtype=np.float64)  # W^T dY^T: (c_in*kh*kw, B*Ho*Wo)
    np.add.at(dPT, cols, dYT[rows].astype(np.float64) * vals[:, None])  # row e of the addend: w_e dY^T[row_e]
    return col2im_t(dPT, X_shape, kh, kw, stride, padding).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Output layouts of a convolution


def nchw_to_fm(dY: np.ndarray) -> np.ndarray:
    """(B, c, Ho, Wo) -> (c, B * Ho * Wo), columns ordered (b, ho, wo): the feature-major layout of a
    patch product, C-contiguous.

    .. math:: dY_2^T[o, (b, h_o, w_o)] = dY[b, o, h_o, w_o]
    """
    B, c, Ho, Wo = dY.shape
    t = np.ascontiguousarray(dY.transpose(1, 0, 2, 3))  # (c, B, Ho, Wo): runs of Ho * Wo floats
    return t.reshape(c, B * Ho * Wo)  # (c, B*Ho*Wo)


def fm_to_nchw(YT: np.ndarray, bias: np.ndarray, B: int, Ho: int, Wo: int) -> np.ndarray:
    """(c, B * Ho * Wo) feature-major, columns ordered (b, ho, wo), plus ``bias`` (c,) per channel ->
    (B, c, Ho, Wo), C-contiguous, in one pass.

    .. math:: Y[b, o, h_o, w_o] = Y_2^T[o, (b, h_o, w_o)] + \\mathrm{bias}[o]
    """
    c = YT.shape[0]
    Y = np.empty((B, c, Ho, Wo), dtype=YT.dtype)  # (B, c, Ho, Wo)
    src = YT.reshape(c, B, Ho * Wo).transpose(1, 0, 2)  # (B, c, Ho*Wo), a view
    np.add(src, bias.reshape(1, c, 1), out=Y.reshape(B, c, Ho * Wo))
    return Y


def nchw_to_rows(dY: np.ndarray) -> np.ndarray:
    """(B, c, Ho, Wo) -> (B * Ho * Wo, c), rows ordered (b, ho, wo): the row layout of a patch product.

    .. math:: dY_2[(b, h_o, w_o), o] = dY[b, o, h_o, w_o]
    """
    B, c, Ho, Wo = dY.shape
    t = np.ascontiguousarray(dY.transpose(0, 2, 3, 1))  # (B, Ho, Wo, c)
    return t.reshape(B * Ho * Wo, c)  # (B*Ho*Wo, c)


def rows_to_nchw(Y2: np.ndarray, B: int, Ho: int, Wo: int) -> np.ndarray:
    """(B * Ho * Wo, c) with rows ordered (b, ho, wo) -> (B, c, Ho, Wo), C-contiguous.

    .. math:: Y[b, o, h_o, w_o] = Y_2[(b, h_o, w_o), o]
    """
    Y4 = Y2.reshape(B, Ho, Wo, Y2.shape[1])  # (B, Ho, Wo, c)
    return np.ascontiguousarray(Y4.transpose(0, 3, 1, 2))  # (B, c, Ho, Wo)


# --------------------------------------------------------------------------------------------------
# Pooling: every (sample, channel) plane on its own, over its window matrix (B * C * Ho * Wo, k * k)


def maxpool_forward(X: np.ndarray, k: int, stride: int, padding: int):
    """Max pooling: (Y (B, C, Ho, Wo), arg (B, C, Ho, Wo) intp), arg being the offset i * k + j of the
    window's first maximum (``argmax`` over the window's patch row, the padding counting as -inf).

    .. math:: Y[b, c, h_o, w_o] = \\max_{i, j} X_p[b, c, s h_o + i, s w_o + j]
    """
    B, C, H, W = X.shape
    Ho, Wo = output_hw(X.shape, k, k, stride, padding)
    cols = im2col(X.reshape(B * C, 1, H, W), k, k, stride, padding, fill=-np.inf)  # (B*C*Ho*Wo, k*k)
    arg = cols.argmax(axis=1)  # (B*C*Ho*Wo,), first maximum in window order
    Y = cols[np.arange(cols.shape[0]), arg]  # (B*C*Ho*Wo,)
    return Y.reshape(B, C, Ho, Wo), arg.reshape(B, C, Ho, Wo)


def maxpool_backward(dY: np.ndarray, arg: np.ndarray, X_shape, k: int, stride: int, padding: int) -> np.ndarray:
    """The max-pooling backward: dY (B, C, Ho, Wo) -> dX (B, C, H, W), each dY at its window's ``arg``
    in a window matrix, added back to the input by col2im.

    .. math:: dX[b, c, y^*, x^*] \\mathrel{+}= dY[b, c, h_o, w_o]
    """
    B, C, H, W = X_shape
    n = dY.size
    dcols = np.zeros((n, k * k), dtype=dY.dtype)  # (B*C*Ho*Wo, k*k)
    dcols[np.arange(n), arg.reshape(n)] = dY.reshape(n)  # (B*C*Ho*Wo,)
    return col2im(dcols, (B * C, 1, H, W), k, k, stride, padding).reshape(B, C, H, W)  # (B, C, H, W)


def avgpool_forward(X: np.ndarray, k: int, stride: int, padding: int, _im2col=None) -> np.ndarray:
    """Average pooling, zero padding included in the count (divisor always k * k).

    .. math:: Y[b, c, h_o, w_o] = \\frac{1}{k^2} \\sum_{i, j} X_p[b, c, s h_o + i, s w_o + j]

    X (B, C, H, W) -> Y (B, C, Ho, Wo). (``_im2col``: the patch function to use, the cpu backend
    passes its kernel; the values are the same.)
    """
    B, C, H, W = X.shape
    Ho, Wo = output_hw(X.shape, k, k, stride, padding)
    cols = (_im2col or im2col)(X.reshape(B * C, 1, H, W), k, k, stride, padding, 0.0)  # (B*C*Ho*Wo, k*k)
    Y = cols.sum(axis=1) / (k * k)  # (B*C*Ho*Wo,)
    return Y.reshape(B, C, Ho, Wo)  # (B, C, Ho, Wo)


def avgpool_backward(dY: np.ndarray, X_shape, k: int, stride: int, padding: int, _col2im=None) -> np.ndarray:
    """The average-pooling backward: every window shares its dY equally among its k * k pixels.

    .. math:: dX = \\mathrm{col2im}\\Big(\\frac{dY}{k^2} \\mathbf{1}^T\\Big)

    dY (B, C, Ho, Wo) -> dX (B, C, H, W).
    """
    B, C, H, W = X_shape
    kk = k * k
    share = dY.reshape(-1, 1) / kk  # (B*C*Ho*Wo, 1)
    cols = np.repeat(share, kk, axis=1)  # (B*C*Ho*Wo, k*k)
    return (_col2im or col2im)(cols, (B * C, 1, H, W), k, k, stride, padding).reshape(B, C, H, W)


def global_avgpool_forward(X: np.ndarray) -> np.ndarray:
    """The mean over the spatial axes: (B, C, H, W) -> (B, C).

    .. math:: Y[b, c] = \\frac{1}{HW} \\sum_{y, x} X[b, c, y, x]
    """
    return X.mean(axis=(2, 3))


def global_avgpool_backward(dY: np.ndarray, X_shape) -> np.ndarray:
    """dY (B, C) -> dX (B, C, H, W), every pixel its plane's share.

    .. math:: dX[b, c, y, x] = \\frac{dY[b, c]}{HW}
    """
    B, C, H, W = X_shape
    share = dY.reshape(B, C, 1, 1) / (H * W)  # (B, C, 1, 1)
    return np.broadcast_to(share, tuple(X_shape)).copy()  # (B, C, H, W)


# --------------------------------------------------------------------------------------------------
# Batch normalisation


def _per_channel(v: np.ndarray) -> np.ndarray:
    """(C,) -> (1, C, 1, 1), to broadcast over NCHW."""
    return v.reshape(1, -1, 1, 1)  # (1, C, 1, 1)


def update_running(running_mean, running_var, mean, var, n: int, momentum: float) -> None:
    """In place: m <- (1 - a) m + a mean, v <- (1 - a) v + a var N / (N - 1) (a = ``momentum``)."""
    a = momentum
    running_mean[...] = (1 - a) * running_mean + a * mean
    running_var[...] = (1 - a) * running_var + a * var * (n / (n - 1))


def batchnorm_forward(X, gamma, beta, running_mean, running_var, training: bool, momentum: float, eps: float):
    """Batch normalisation per channel over (B, H, W): ``(Y, xhat, inv)``.

    .. math::

        \\mu_c = \\frac{1}{N} \\sum_{b, y, x} X_{bcyx}, \\quad
        \\sigma^2_c = \\frac{1}{N} \\sum_{b, y, x} (X_{bcyx} - \\mu_c)^2, \\quad
        \\hat X = (X - \\mu_c) \\, \\mathrm{inv}_c, \\quad \\mathrm{inv}_c = \\frac{1}{\\sqrt{\\sigma^2_c + \\epsilon}},
        \\quad Y = \\gamma_c \\hat X + \\beta_c

    with N = B H W. Training: the batch statistics, and the running ones updated in place,
    :math:`m \\leftarrow (1 - a) m + a \\mu`, :math:`v \\leftarrow (1 - a) v + a \\frac{N}{N - 1} \\sigma^2`.
    Evaluation: :math:`\\mu, \\sigma^2` are the running m, v (nothing updated).

    Parameters
    ----------
    X : ndarray (B, C, H, W)
    gamma, beta : ndarray (C,)
    running_mean, running_var : ndarray (C,); updated in place in training
    training : bool
    momentum, eps : float

    Returns
    -------
    Y, xhat : ndarray (B, C, H, W)
    inv : ndarray (C,)
    """
    axes = (0, 2, 3)
    if training:
        n = X.shape[0] * X.shape[2] * X.shape[3]
        mean = X.mean(axis=axes)  # (C,)
        xc = X - _per_channel(mean)  # (B, C, H, W)
        var = (xc * xc).mean(axis=axes)  # (C,), biased
        update_running(running_mean, running_var, mean, var, n, momentum)
    else:
        xc = X - _per_channel(running_mean.astype(X.dtype, copy=False))
        var = running_var.astype(X.dtype, copy=False)
    inv = 1.0 / np.sqrt(var + eps)  # (C,)
    xhat = xc * _per_channel(inv)
    return xhat * _per_channel(gamma) + _per_channel(beta), xhat, inv


def batchnorm_backward(dY, xhat, inv, gamma, training: bool, dgamma_out, dbeta_out):
    """The batch-normalisation backward: dX, with the parameter gradients written into ``dgamma_out``
    and ``dbeta_out`` (C,).

    .. math::

        d\\gamma_c = \\sum dY \\hat X, \\qquad d\\beta_c = \\sum dY, \\qquad
        dX = \\gamma_c \\mathrm{inv}_c \\Big(dY - \\frac{d\\beta_c}{N} - \\hat X \\frac{d\\gamma_c}{N}\\Big)
        \\ \\text{(training)}, \\qquad dX = \\gamma_c \\mathrm{inv}_c \\, dY \\ \\text{(evaluation)}

    ``training`` is the mode of the forward that made ``xhat`` and ``inv``.
    """
    axes = (0, 2, 3)
    dgamma = (dY * xhat).sum(axis=axes)  # (C,)
    dbeta = dY.sum(axis=axes)  # (C,)
    dgamma_out[...] = dgamma
    dbeta_out[...] = dbeta
    scale = _per_channel(gamma * inv)  # (1, C, 1, 1)
    if not training:
        return dY * scale
    n = dY.shape[0] * dY.shape[2] * dY.shape[3]
    return scale * (dY - _per_channel(dbeta / n) - xhat * _per_channel(dgamma / n))
