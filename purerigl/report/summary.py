"""Per-layer summaries of a saved model: what ``purerigl inspect`` prints, as plain dicts.

Every number is computed from the stored indices, never from a dense matrix, so a summary of a
layer costs O(nnz + n_out + n_in) time and memory whatever its shape:

- **fan-in** of output neuron i: the number of stored entries in row i (an ablated or empty row
  has 0); **fan-out** of input j: the number of stored entries in column j. Both are ``np.bincount``
  of the (row, col) positions of the stored entries (:func:`purerigl.formats.triples.triples`).
  Means are over all n_out rows / all n_in columns, empty ones included.
- **bytes**: what the layer's arrays occupy (values + index arrays + bias, at their real dtypes),
  against a dense float32 layer of the same shape (``(n_out * n_in + n_out) * 4``: weight + bias).
- **ablated** (Condensed only): output neurons not listed in ``rows``; they output only their bias.
- **diagonals** (Diagonal only): K stored of the P = max(n_out, n_in) candidates.

Nothing here prints; :func:`inspect_model_file` returns a JSON-ready dict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..training.checkpoint import load_model
from ..errors import PureriglError
from ..formats import CSR, Condensed, Diagonal
from ..formats.triples import triples
from ..nn import Conv2d, Dense, GatedDiagonalLinear, SparseLinear
from .provenance import run_code

#: Bytes of one float32 weight of the dense layer a sparse one is compared with.
DENSE_BYTES_PER_WEIGHT = 4

__all__ = [
    "SummaryError",
    "fan_in_out",
    "inspect_model_file",
    "layer_bytes",
    "resolve_model_path",
    "summarize_layer",
    "summarize_model",
    "total_row",
]


class SummaryError(PureriglError, ValueError):
    """The path given for inspection is not a model file (or a run directory holding one)."""


def fan_in_out(layer) -> tuple[np.ndarray, np.ndarray]:
    """(fan_in int64 (n_out,), fan_out int64 (n_in,)) of a SparseLinear or Dense layer.

    .. math:: \\mathrm{fan\\_in}_i = |\\{e : \\mathrm{row}_e = i\\}|, \\qquad
              \\mathrm{fan\\_out}_j = |\\{e : \\mathrm{col}_e = j\\}|

    over the stored entries e (for a Dense layer every position is stored). Computed from the
    indices in O(nnz + n_out + n_in); no dense array is formed.
    """
    n_out, n_in = layer.shape
    if isinstance(layer, (Dense, Conv2d)):
        return np.full(n_out, n_in, dtype=np.int64), np.full(n_in, n_out, dtype=np.int64)
    W = layer.W
    if isinstance(W, CSR):
        fan_in = np.diff(W.indptr).astype(np.int64)
        return fan_in, np.bincount(W.indices, minlength=n_in).astype(np.int64)
    if isinstance(W, Condensed):
        return W.row_fan_in(), np.bincount(W.indices.ravel(), minlength=n_in).astype(np.int64)
    rows, cols, _ = triples(W)  # Diagonal: K * L positions
    return (
        np.bincount(rows, minlength=n_out).astype(np.int64),
        np.bincount(cols, minlength=n_in).astype(np.int64),
    )


def _weight_arrays(layer) -> dict[str, np.ndarray]:
    """The arrays that store a layer's weights (values and indices), by their schema name."""
    if isinstance(layer, (Dense, Conv2d)):
        return {"weight": layer.weight.host}
    W = layer.W
    if isinstance(W, Condensed):
        return {"rows": W.rows, "indices": W.indices, "values": W.values}
    if isinstance(W, Diagonal):
        if isinstance(layer, GatedDiagonalLinear):  # DynaDiag: the scores alpha are stored too
            return {"offsets": W.offsets, "alpha": layer.alpha.value, "values": W.values}
        return {"offsets": W.offsets, "values": W.values}
    return {"indptr": W.indptr, "indices": W.indices, "values": W.values}


def layer_bytes(layer) -> dict[str, int]:
    """Bytes of a layer's arrays: ``values`` (or the dense ``weight``), ``indices`` (every index
    array: rows, indices, indptr, offsets), ``bias``, ``total``, and ``dense``, a float32 layer of
    the same shape with its bias."""
    arrays = _weight_arrays(layer)
    values = sum(a.nbytes for name, a in arrays.items() if name in ("values", "weight", "alpha"))
    indices = sum(a.nbytes for name, a in arrays.items() if name not in ("values", "weight"))
    bias = layer.bias.host.nbytes
    n_out, n_in = layer.shape
    dense = (n_out * n_in + n_out) * DENSE_BYTES_PER_WEIGHT
    return {"values": int(values), "indices": int(indices), "bias": int(bias),
            "total": int(values + indices + bias), "dense": int(dense)}


def _range(a: np.ndarray) -> dict:
    return {"min": int(a.min()), "mean": float(a.mean()), "max": int(a.max())}


def gate_summary(layer: GatedDiagonalLinear) -> dict:
    """The gates of a DynaDiag layer (see :func:`summarize_layer`)."""
    g, offsets = layer.gates(), layer.W.offsets
    top = np.argsort(-g, kind="stable")[:10]
    return {
        "k": layer.k, "stored": int(offsets.size), "effective_k": layer.effective_k(), "frozen": layer.frozen,
        "temperature": layer.temperature, "min": float(g.min()), "max": float(g.max()), "sum": float(g.sum()),
        "offsets": offsets.tolist(), "top": [[int(offsets[i]), float(g[i])] for i in top],
    }


def summarize_layer(index: int, layer) -> dict:
    """One layer's summary (JSON-ready).

    Keys: ``layer`` (name), ``index``, ``format`` (condensed, diagonal, csr or dense), ``shape``
    [n_out, n_in], ``nnz``, ``density`` (nnz / (n_out n_in)), ``fan_in`` and ``fan_out`` ({min, mean,
    max}), ``empty_rows`` (outputs with no input, ablated ones included), ``empty_cols`` (inputs no
    weight reads), ``ablated`` (count) and ``ablated_neurons`` (list), Condensed only, else None;
    ``diagonals`` ({K, P}), Diagonal only, else None; ``gates`` (DynaDiag layers only, else None:
    ``k`` kept in the end, ``stored``, ``effective_k`` = #(gate > 1e-6), ``frozen``, ``temperature``,
    ``min`` / ``max`` / ``sum`` of the stored diagonals' gates, ``offsets`` the stored (when frozen:
    the frozen) set and ``top``, the ten largest gates as [offset, gate]); ``bytes``
    (:func:`layer_bytes`, values counting the scores alpha too) and ``bytes_ratio`` (total / dense).
    """
    n_out, n_in = layer.shape
    fan_in, fan_out = fan_in_out(layer)
    nnz = int(fan_in.sum())
    ablated = ablated_neurons = diagonals = gates = None
    if isinstance(layer, SparseLinear):
        W = layer.W
        fmt = type(W).__name__.lower()
        if isinstance(W, Condensed):
            mask = np.ones(n_out, dtype=bool)
            mask[W.rows] = False
            ablated_neurons = np.flatnonzero(mask).tolist()
            ablated = len(ablated_neurons)
        elif isinstance(W, Diagonal):
            diagonals = {"K": int(W.K), "P": int(W.P)}
        if isinstance(layer, GatedDiagonalLinear):
            gates = gate_summary(layer)
    else:
        fmt = "dense"
    size = layer_bytes(layer)
    return {
        "layer": getattr(layer, "name", f"layer{index}"),
        "index": int(index),
        "format": fmt,
        "shape": [int(n_out), int(n_in)],
        "nnz": nnz,
        "density": nnz / (n_out * n_in),
        "fan_in": _range(fan_in),
        "fan_out": _range(fan_out),
        "empty_rows": int((fan_in == 0).sum()),
        "empty_cols": int((fan_out == 0).sum()),
        "ablated": ablated,
        "ablated_neurons": ablated_neurons,
        "diagonals": diagonals,
        "gates": gates,
        "bytes": size,
        "bytes_ratio": size["total"] / size["dense"],
    }


def summarize_model(model) -> list[dict]:
    """:func:`summarize_layer` of every weight layer (an MLP's linear layers; a network's convolutions
    and linear layers), in order; a convolution's row adds ``conv`` (:func:`conv_summary`)."""
    rows = [summarize_layer(i, lin) for i, lin in enumerate(model.linears)]
    arch = getattr(model, "architecture", None) or {}
    heads = arch.get("options", {}).get("heads") if arch.get("model") == "vit-tiny" else None
    for row, lin, described in zip(rows, model.linears, model.describe()):
        row["layer"] = described.get("name", row["layer"])
        row["conv"] = conv_summary(lin, described) if described.get("layer_type") == "conv" else None
        row["heads"] = head_summary(lin, row["layer"], heads) if heads else None
    return rows


def head_summary(layer, name: str, heads: int) -> list[dict] | None:
    """Per attention head of a ViT block: for the fused QKV projection (3d, d), the rows of each part
    (q, k, v) and head (d / heads rows each): ``nnz`` and ``ablated`` (rows without weights); for the
    output projection (d, d), the columns reading each head's output: ``nnz``. None for other layers."""
    fan_in, fan_out = fan_in_out(layer)
    if name.endswith(".qkv"):
        d = layer.shape[1]
        dh = d // heads
        per = fan_in.reshape(3, heads, dh)  # (part, head, row within the head)
        return [{"part": "qkv"[p], "head": h, "nnz": int(per[p, h].sum()), "ablated": int((per[p, h] == 0).sum())}
                for p in range(3) for h in range(heads)]
    if name.endswith(".proj"):
        dh = layer.shape[1] // heads
        per = fan_out.reshape(heads, dh)  # (head, column within the head's output)
        return [{"part": "out", "head": h, "nnz": int(per[h].sum()), "ablated": int((per[h] == 0).sum())}
                for h in range(heads)]
    return None


def conv_summary(layer, described: dict) -> dict:
    """A convolution's filters (the rows of its (c_out, c_in * kh * kw) matrix): ``filters`` (c_out),
    ``c_in``, ``kernel``, ``stride``, ``padding``, ``ablated_filters`` (filters with no weight: SRigL's
    ablated neurons, or empty rows), ``fan_in_per_filter`` ({min, mean, max} of the active filters)
    and ``channels_unread``: input channels that no filter reads any more (every column c * kh * kw ...
    (c + 1) * kh * kw - 1 empty)."""
    kh, kw = described["kernel"]
    c_in = int(described["c_in"])
    fan_in, fan_out = fan_in_out(layer)
    per_channel = fan_out.reshape(c_in, kh * kw).sum(axis=1)  # (c_in,): stored weights reading channel c
    active = fan_in[fan_in > 0]
    return {
        "filters": int(fan_in.size), "c_in": c_in, "kernel": [int(kh), int(kw)], "stride": described["stride"],
        "padding": described["padding"], "ablated_filters": int((fan_in == 0).sum()),
        "fan_in_per_filter": _range(active) if active.size else {"min": 0, "mean": 0.0, "max": 0},
        "channels_unread": int((per_channel == 0).sum()),
    }


def total_row(layers: list[dict]) -> dict:
    """The whole model: ``nnz``, ``positions`` (sum of n_out n_in), ``density``, ``bytes`` (summed per
    key) and ``bytes_ratio``."""
    positions = sum(r["shape"][0] * r["shape"][1] for r in layers)
    nnz = sum(r["nnz"] for r in layers)
    size = {key: sum(r["bytes"][key] for r in layers) for key in ("values", "indices", "bias", "total", "dense")}
    return {
        "layers": len(layers),
        "nnz": nnz,
        "positions": positions,
        "density": nnz / positions if positions else 0.0,
        "bytes": size,
        "bytes_ratio": size["total"] / size["dense"] if size["dense"] else 0.0,
    }


def resolve_model_path(path) -> Path:
    """The model file to inspect: ``path`` itself, or for a run directory its ``model.npz`` (else its
    ``checkpoint.npz``, the state of an unfinished run). SummaryError if there is none."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.npz", "checkpoint.npz"):
            if (path / name).is_file():
                return path / name
        raise SummaryError(f"{path} is a directory without model.npz or checkpoint.npz; give a model file")
    if not path.exists():
        raise SummaryError(f"no such file: {path}")
    if not path.is_file():
        raise SummaryError(f"{path} is not a regular file")
    return path


def inspect_model_file(path) -> dict:
    """Load a model file (or training checkpoint, or a run directory) and summarise it.

    Returns a JSON-ready dict: ``file``, ``kind`` ("model" or "checkpoint"), ``epoch`` (checkpoints:
    epochs completed, else None), ``method``, ``dataset``, ``sparsity`` (from the file's meta, None
    when absent), ``file_bytes``, ``layers`` (:func:`summarize_model`) and ``total``
    (:func:`total_row`), and where the file lies in a ``purerigl train`` run directory the code that
    trained it: ``code`` (None when not recorded) and ``code_resumed`` (:func:`.provenance.run_code`).
    A checkpoint's optimizer state is in ``file_bytes`` but in no layer's bytes.

    Raises
    ------
    SummaryError, CheckpointError
        For a missing path, a file that is not an .npz, or an .npz that is not a purerigl model.
    """
    path = resolve_model_path(path)
    model, meta = load_model(path, backend="reference")
    train = meta.get("train") if isinstance(meta.get("train"), dict) else None
    layers = summarize_model(model)
    recorded = run_code(path.parent)  # the run directory's config.json, when the file lies in one
    return {
        "file": str(path),
        "kind": "checkpoint" if train is not None else "model",
        "epoch": int(train["epoch"]) if train is not None and "epoch" in train else None,
        "method": meta.get("method"),
        "dataset": meta.get("dataset"),
        "sparsity": meta.get("sparsity"),
        "file_bytes": int(path.stat().st_size),
        "layers": layers,
        "total": total_row(layers),
        "code": recorded.get("code"),
        "code_resumed": recorded.get("code_resumed", []),
    }
