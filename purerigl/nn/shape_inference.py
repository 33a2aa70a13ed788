"""Shape inference for networks: the per-sample output shape of every layer kind, without running it.

:func:`output_shape` answers for one layer (its own ``output_shape`` method when it has one, else a rule
of :data:`_SHAPE_RULES` by type), :func:`_chain_shapes` for a list of layers, naming the layer that
cannot take its input. Shapes are per sample, without the batch axis: (C, H, W) for images, (n,) for
feature vectors. A (kh, kw) window sliding by ``stride`` over a side of n padded by ``padding`` leaves

.. math:: n_{out} = \\lfloor (n + 2 p - k) / s \\rfloor + 1
"""

from __future__ import annotations

import math

from ..errors import ShapeError
from .conv import Conv2d, SparseConv2d
from .dense import Dense, ReLU
from .layers import SparseLinear
from .model import ModelError
from .norm import BatchNorm2d
from .patches import conv_output_size
from .pool import AvgPool2d, Flatten, GlobalAvgPool2d, MaxPool2d


class NetworkError(ModelError):
    """A network's layers do not fit together (shapes, names, backends)."""


def _spatial(channels, shape, kh, kw, stride, padding):
    """(channels, Ho, Wo) after a kh x kw window sliding by ``stride`` over (C, H, W) padded by ``padding``."""
    return channels, conv_output_size(shape[1], kh, stride, padding), conv_output_size(shape[2], kw, stride, padding)


def _need(shape, ndim: int, what: str, channels=None):
    if len(shape) != ndim:
        raise ShapeError(f"{what} takes {'(C, H, W)' if ndim == 3 else '(n,)'} per sample, got {tuple(shape)}")
    if channels is not None and shape[0] != channels:
        raise ShapeError(f"{what} expects {channels} {'channels' if ndim == 3 else 'features'}, got {shape[0]}")


def _linear_shape(layer, shape):
    n_out, n_in = layer.shape
    _need(shape, 1, "a linear layer", n_in)
    return (n_out,)


def _sparse_conv_shape(layer, shape):
    _need(shape, 3, "a convolution", layer.c_in)
    return _spatial(layer.c_out, shape, layer.kh, layer.kw, layer.stride, layer.padding)


def _conv_shape(layer, shape):
    c_out, c_in, kh, kw = layer.weight.value.shape
    _need(shape, 3, "a convolution", c_in)
    return _spatial(c_out, shape, kh, kw, layer.stride, layer.padding)


def _bn_shape(layer, shape):
    _need(shape, 3, "batch normalisation", layer.channels)
    return tuple(shape)


def _pool_shape(layer, shape):
    _need(shape, 3, "pooling")
    return _spatial(shape[0], shape, layer.kernel, layer.kernel, layer.stride, layer.padding)


def _gap_shape(layer, shape):
    _need(shape, 3, "global average pooling")
    return (shape[0],)


_SHAPE_RULES = {
    SparseLinear: _linear_shape,
    Dense: _linear_shape,
    SparseConv2d: _sparse_conv_shape,
    Conv2d: _conv_shape,
    BatchNorm2d: _bn_shape,
    ReLU: lambda layer, shape: tuple(shape),
    MaxPool2d: _pool_shape,
    AvgPool2d: _pool_shape,
    GlobalAvgPool2d: _gap_shape,
    Flatten: lambda layer, shape: (math.prod(shape),),
}


def output_shape(layer, shape: tuple):
    """The per-sample output shape of ``layer`` for a per-sample input ``shape``, or None when the
    layer is of a type this module does not know (and has no ``output_shape`` method).

    Raises
    ------
    ShapeError, NetworkError
        When the layer cannot take that input (channels, features, or a spatial size below 1).
    """
    if hasattr(layer, "output_shape"):
        return tuple(layer.output_shape(tuple(shape)))
    for cls in type(layer).__mro__:
        if cls in _SHAPE_RULES:
            return _SHAPE_RULES[cls](layer, tuple(shape))
    return None


def _chain_shapes(layers, shape, where: str):
    """The shape after ``layers`` (None once a layer of unknown type is met); NetworkError naming the
    layer that cannot take its input."""
    for i, layer in enumerate(layers):
        if shape is None:
            return None
        try:
            shape = output_shape(layer, shape)
        except ShapeError as e:
            name = getattr(layer, "name", None)
            label = f"{type(layer).__name__}" + (f" {name!r}" if name else "")
            raise NetworkError(f"{where}, layer {i} ({label}) cannot take a {tuple(shape)} input: {e}") from None
    return shape
