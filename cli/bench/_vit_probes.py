"""The instruments of ``bench train --model vit-tiny`` (``_train_vit.py``): a ViT's block projections, the
seconds a step spends in its attention and projections (:func:`vit_timer`, :func:`step_shares`), and
each block projection timed against the dense products of its shape (:func:`projection_times`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np

import purerigl.nn.attention as attention_layers  # the feature-major attention calls its helpers by these names
from purerigl.nn.transformer import TransformerBlock

from ._train_common import interleaved_times, median_share, run_parts


def blocks(model) -> list[TransformerBlock]:
    """The transformer blocks of a ViT, in network order."""
    return [layer for layer in model.layers if isinstance(layer, TransformerBlock)]


def block_projections(model) -> dict:
    """The block projections of a ViT by layer name (``block{i}.qkv``, ``.proj``, ``.fc1``, ``.fc2``):
    the :class:`~purerigl.nn.attention.TokenLinear` layers, in network order."""
    out = {}
    for block in blocks(model):
        for layer in (block.attn.qkv, block.attn.out, block.fc1, block.fc2):
            out[layer.name] = layer
    return out


def projection_kind(name: str) -> str:
    """``"block2.fc1"`` -> ``"fc1"``."""
    return name.rsplit(".", 1)[-1]


def _timed(fn, spent: dict, key: str):
    """``fn`` adding its seconds to ``spent[key]`` on every call."""
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - t0

    return wrapper


@contextmanager
def vit_timer(model):
    """Seconds spent, while active, in the blocks' attention layers, their two projections, all block
    projections, and the scaled dot-product attention operations.

    Yields a dict: ``attention`` (every :class:`MultiHeadSelfAttention` forward + backward, projections
    included), ``attention_projections`` (their QKV and output projections' forward + backward),
    ``projections`` (all four block projections, forward + backward), ``sdpa`` (the backend's
    ``self_attention_forward`` + ``self_attention_backward``: :mod:`purerigl.kernels.host_transformer`
    on the host backends).

    The layers' ``forward`` and ``backward`` (and the projections' ``forward_fm`` / ``backward_fm``, which
    a block calls when it runs feature-major) are wrapped by instance attributes (removed on exit) and
    the two operations where the attention layer looks them up (the model backend's module, and for its
    feature-major path :mod:`purerigl.nn.attention`'s helpers); a wrapper costs well under a microsecond per call.
    """
    attention_module = model.backend.module

    spent = {"attention": 0.0, "attention_projections": 0.0, "projections": 0.0, "sdpa": 0.0}
    wrapped = []
    token_methods = ("forward", "backward", "forward_fm", "backward_fm")  # the MLP calls the _fm pair
    for block in blocks(model):
        wrapped.append((block.attn, ("attention",), ("forward", "backward")))
        for layer in (block.attn.qkv, block.attn.out):
            wrapped.append((layer, ("projections", "attention_projections"), token_methods))
        for layer in (block.fc1, block.fc2):
            wrapped.append((layer, ("projections",), token_methods))
    for obj, keys, methods in wrapped:
        for method in methods:
            fn = getattr(obj, method)
            for key in keys:
                fn = _timed(fn, spent, key)
            setattr(obj, method, fn)  # an instance attribute over the class's method, removed below
    saved = [(attention_module, name, getattr(attention_module, name))
             for name in ("self_attention_forward", "self_attention_backward")]
    saved += [(attention_layers, name, getattr(attention_layers, name))  # the feature-major attention's
              for name in ("self_attention_forward_fm", "self_attention_backward_fm")]
    for module, name, fn in saved:
        setattr(module, name, _timed(fn, spent, "sdpa"))
    try:
        yield spent
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)
        for obj, _, methods in wrapped:
            for method in methods:
                if method in vars(obj):
                    delattr(obj, method)


def step_shares(model, step, runs: int = 3) -> dict:
    """Run ``step`` ``runs`` times under :func:`vit_timer`: seconds per step and fractions of the step,
    each the median over the runs (:func:`._train_common.median_share`).

    Returns
    -------
    dict
        ``step_s``; ``attention_s`` and ``attention_fraction``: the attention without its projections
        (scaled dot products, softmax, head split/merge; forward + backward); ``sdpa_s`` and
        ``sdpa_fraction``: the scaled dot-product attention functions alone; ``projections_s`` and
        ``projection_fraction``: the four block projections, forward + backward.
    """
    with vit_timer(model) as spent:
        steps, parts = run_parts(step, spent, runs)
    attention = [a - p for a, p in zip(parts["attention"], parts["attention_projections"])]  # per run
    attention_s, attention_fraction = median_share(attention, steps)
    sdpa_s, sdpa_fraction = median_share(parts["sdpa"], steps)
    projections_s, projection_fraction = median_share(parts["projections"], steps)
    return {"step_s": float(np.median(steps)), "attention_s": attention_s, "attention_fraction": attention_fraction,
            "sdpa_s": sdpa_s, "sdpa_fraction": sdpa_fraction, "projections_s": projections_s,
            "projection_fraction": projection_fraction}


def projection_inputs(model, X) -> dict:
    """The input (B, T, d_in) of every block projection in one forward pass of X, by layer name (copies)."""
    layers, seen = block_projections(model), {}
    for name, layer in layers.items():
        def grab(A, name=name, forward=layer.forward):
            seen[name] = np.array(A, copy=True)
            return forward(A)

        layer.forward = grab  # an instance attribute over the class's method, removed below
    try:
        model.forward(X)
    finally:
        for layer in layers.values():
            del layer.forward
    return seen


def projection_times(model, dense_layers: dict, inputs: dict, *, budget_s, max_call_s, seed, repeat=1000) -> list:
    """Each block projection of ``model``: forward + backward on its token batch, timed in turn with the
    dense layer of the same name (``dense_layers``) and the three bare BLAS products of its shape.

    Parameters
    ----------
    model : Network
        The sparse ViT.
    dense_layers : dict
        The dense ViT's block projections by name (:func:`block_projections`).
    inputs : dict
        The token batch (B, T, d_in) of each projection by name (:func:`projection_inputs` of the dense ViT);
        the output gradient dY (B, T, d_out) is drawn from ``seed``, the same for all three.
    budget_s, max_call_s, repeat
        As :func:`._train_common.interleaved_times` (three calls in turn).
    seed : int

    Returns
    -------
    list of dict
        One per projection: ``name``, ``kind``, ``format``, ``shape`` [d_out, d_in], ``nnz``, ``tokens``
        (B * T), ``sparse_ms``, ``dense_ms`` (the dense layer), ``blas_ms`` (the three products), ``ratio``
        (dense layer / sparse; > 1: the sparse projection is faster), ``blas_ratio`` (BLAS / sparse),
        ``runs``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for name, layer in block_projections(model).items():
        dense, A = dense_layers[name], inputs[name]
        n_out, n_in = layer.shape
        dY = rng.standard_normal((*A.shape[:-1], n_out)).astype(np.float32)
        X2, dY2 = A.reshape(-1, n_in), dY.reshape(-1, n_out)  # (B*T, d_in), (B*T, d_out)
        W = np.asarray(dense.weight.host)  # the dense layer's weights (d_out, d_in), on the host
        WT = W.T

        def sparse_fn(layer=layer, A=A, dY=dY):
            layer.forward(A)
            layer.backward(dY)

        def dense_fn(dense=dense, A=A, dY=dY):
            dense.forward(A)
            dense.backward(dY)

        def blas_fn(X2=X2, dY2=dY2, W=W, WT=WT):
            X2 @ WT  # forward (B*T, d_out)
            dY2 @ W  # input gradient (B*T, d_in)
            dY2.T @ X2  # weight gradient (d_out, d_in)

        t_sp, t_dense, t_blas = interleaved_times((sparse_fn, dense_fn, blas_fn), budget_s=budget_s,
                                                  max_call_s=max_call_s, repeat=repeat)
        rows.append({"name": name, "kind": projection_kind(name), "format": type(layer.W).__name__.lower(),
                     "shape": [int(n_out), int(n_in)], "nnz": int(layer.W.nnz), "tokens": int(X2.shape[0]),
                     "sparse_ms": t_sp.median_s * 1e3, "dense_ms": t_dense.median_s * 1e3,
                     "blas_ms": t_blas.median_s * 1e3, "ratio": t_dense.median_s / t_sp.median_s,
                     "blas_ratio": t_blas.median_s / t_sp.median_s, "runs": t_sp.runs})
    return rows
