"""Saving and loading models and training state as ``.npz`` files (schema version 1).

A **model file** (``model.npz``) holds plain arrays that any NumPy code can read
(``np.load(path, allow_pickle=False)``):

- ``meta``: a JSON string (0-d unicode array) with ``schema`` = "purerigl.model", ``schema_version``,
  ``layers`` (one entry per linear layer: ``kind`` "sparse"|"dense", ``format`` "condensed"|"diagonal"|
  "csr"|"dense", ``shape`` [n_out, n_in], ``activation`` "relu"|"none"), ``dataset``,
  ``normalisation`` {"mean", "std"} (a model computes ``(x - mean) / std`` on raw pixels first),
  ``method``, ``sparsity`` and optionally ``hidden``, ``config``.
- per linear layer ``i``: ``layer{i}.bias`` (n_out,) and
  condensed: ``layer{i}.rows`` int32 (n_active,), ``layer{i}.indices`` int32 (n_active, k),
  ``layer{i}.values`` float32 (n_active, k);
  diagonal: ``layer{i}.offsets`` int32 (K,), ``layer{i}.values`` float32 (K, L); a DynaDiag layer
  (:class:`~purerigl.nn.GatedDiagonalLinear`) adds ``layer{i}.alpha`` float32 (P,), its scores, and its
  ``layers`` entry a ``gate`` object {"k": K kept, "temperature": T, "frozen": bool};
  csr: ``layer{i}.indptr`` int64, ``layer{i}.indices`` int32, ``layer{i}.values`` float32;
  dense: ``layer{i}.weight`` float32 (n_out, n_in).

A **training checkpoint** (``checkpoint.npz``) is a model file plus ``optim.<key>`` arrays (the
optimizer's ``state_dict``) and a ``train`` entry in ``meta`` with ``epoch``, ``step``, the shuffling
RNG's state and the topology method's state, which is all :func:`load_training_state` needs to
continue a run exactly. An array in the topology method's state (at any depth of its dicts, e.g. the
DST updater's ``explored`` sets) is stored as an array of its own, ``topology.<key>.<key>...``, and
its place in ``meta`` holds ``{"npz": "<that array's name>"}`` (:func:`split_arrays` /
:func:`join_arrays`). With ``--grad-accumulation N`` > 1 it also holds the batches each sparse layer
keeps for its next growth scores, ``kept.layer{i}.x`` / ``.dy`` / ``.rows`` (:func:`kept_batch_arrays`:
at most N * B * (n_in + n_out) float32 per layer), so that an update within N steps after the resume
point scores the same batches as an uninterrupted run.

Files are written atomically: to a temporary file in the same directory, flushed and fsynced, then
renamed over the target, so a crash never leaves a half-written file under the real name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import PureriglError
from ..formats import CSR, Condensed, Diagonal
from ..nn import MLP, Dense, GatedDiagonalLinear, Network, SparseLinear, build_model
from .checkpoint_file import (  # noqa: F401 - re-exported: callers import these from here
    SCHEMA, SCHEMA_VERSION, CheckpointError, atomic_write, load_arrays, parse_meta, read_meta,
)


def model_arrays(model: MLP) -> dict[str, np.ndarray]:
    """The per-layer arrays of a model, keyed as in the schema (host arrays: on a device backend the
    parameters are copied to the host first, ``model.sync_to_host()``)."""
    model.sync_to_host()
    if isinstance(model, Network):
        return network_arrays(model)
    arrays = {}
    for i, lin in enumerate(model.linears):
        arrays[f"layer{i}.bias"] = lin.bias.host
        if isinstance(lin, Dense):
            arrays[f"layer{i}.weight"] = lin.weight.host
            continue
        W = lin.W
        if isinstance(W, Condensed):
            arrays.update({f"layer{i}.rows": W.rows, f"layer{i}.indices": W.indices})
        elif isinstance(W, Diagonal):
            arrays[f"layer{i}.offsets"] = W.offsets
            if isinstance(lin, GatedDiagonalLinear):
                arrays[f"layer{i}.alpha"] = lin.alpha.value
        else:
            arrays.update({f"layer{i}.indptr": W.indptr, f"layer{i}.indices": W.indices})
        arrays[f"layer{i}.values"] = W.values
    return arrays


def network_arrays(model: Network) -> dict[str, np.ndarray]:
    """The arrays of a :class:`~purerigl.nn.Network`, keyed by the names of its layers and parameters:
    per weight layer ``<name>.bias`` and ``<name>.weight`` (dense: (n_out, n_in), or a dense
    convolution's (c_out, c_in, kh, kw)) or the sparse format's arrays ``<name>.rows`` /
    ``.indices`` / ``.offsets`` / ``.indptr`` and ``<name>.values``; every other parameter under its
    own name (``bn0.weight``, ``bn0.bias``) and the running statistics of batch normalisation
    (``bn0.running_mean``, ``bn0.running_var``)."""
    arrays = {}
    for lin in model.linears:
        name = lin.name
        if isinstance(lin, SparseLinear):
            W = lin.W
            arrays.update({f"{name}.{field}": getattr(W, field) for field in type(W).STRUCTURE})
            arrays[f"{name}.values"] = W.values
            if isinstance(lin, GatedDiagonalLinear):
                arrays[f"{name}.alpha"] = lin.alpha.value
        else:
            arrays[f"{name}.weight"] = lin.weight.host
        arrays[f"{name}.bias"] = lin.bias.host
    for p in model.parameters():
        arrays.setdefault(p.name, p.host)
    arrays.update(model.buffers())
    return arrays


def model_meta(model: MLP, /, **extra) -> dict:
    keep = ("name", "layer_type", "kind", "format", "shape", "activation", "gate", "c_in", "kernel", "stride",
            "padding")
    layers = [{k: row[k] for k in keep if k in row} for row in model.describe()]
    network = {"network": model.architecture} if isinstance(model, Network) else {}
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "layers": layers, **network, **extra}


def save_model(path, model: MLP, /, **meta) -> None:
    """Write ``model`` to ``path`` (atomically). Extra keyword arguments go into ``meta``."""
    arrays = model_arrays(model)
    arrays["meta"] = np.array(json.dumps(model_meta(model, **meta)))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def save_training_checkpoint(path, trainer, **meta) -> None:
    """Write the model, the optimizer state and the loop's counters and RNG state (atomically)."""
    arrays = model_arrays(trainer.model)
    for key, value in trainer.optimizer.state_dict().items():
        arrays[f"optim.{key}"] = np.asarray(value)
    topology, topology_arrays = split_arrays(trainer.topology.state_dict(), "topology")
    arrays.update(topology_arrays)
    arrays.update(kept_batch_arrays(trainer.model))
    train = {
        "epoch": trainer.epoch,
        "step": trainer.step,
        "rng_state": trainer.rng.bit_generator.state,
        "topology": topology,
        "history": trainer.history,
    }
    arrays["meta"] = np.array(json.dumps(model_meta(trainer.model, train=train, **meta)))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def kept_batch_arrays(model: MLP) -> dict[str, np.ndarray]:
    """The (X, dY) pairs the sparse layers keep for accumulated growth scores
    (:meth:`~purerigl.nn.SparseLinear.keep_batches`, ``--grad-accumulation N`` > 1), as host arrays:
    per sparse layer ``i`` that keeps any, ``kept.layer{i}.x`` float32 (R, n_in) and
    ``kept.layer{i}.dy`` float32 (R, n_out), the pairs stacked oldest first, and ``kept.layer{i}.rows``
    int64 (n_pairs,), each pair's batch size (R their sum). Nothing for N = 1."""
    arrays = {}
    for i, lin in enumerate(model.linears):
        pairs = lin.kept_batches() if isinstance(lin, SparseLinear) else []
        if not pairs:
            continue
        xs = [np.asarray(lin.backend.to_host(X), dtype=np.float32) for X, _ in pairs]
        dys = [np.asarray(lin.backend.to_host(dY), dtype=np.float32) for _, dY in pairs]
        arrays[f"kept.layer{i}.x"] = np.concatenate(xs)
        arrays[f"kept.layer{i}.dy"] = np.concatenate(dys)
        arrays[f"kept.layer{i}.rows"] = np.array([x.shape[0] for x in xs], dtype=np.int64)
    return arrays


def _kept_pairs(path, i: int, shape, arrays: dict) -> list | None:
    """The kept (X, dY) pairs of layer ``i`` stored by :func:`kept_batch_arrays` (None when there are
    none); CheckpointError for arrays that do not fit the layer."""
    keys = [f"kept.layer{i}.{k}" for k in ("x", "dy", "rows")]
    if not any(k in arrays for k in keys):
        return None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise CheckpointError(f"{path}: lacks array {missing[0]!r} of layer{i}'s kept batches")
    x, dy, rows = (arrays[k] for k in keys)
    n_out, n_in = shape
    if (x.dtype != np.float32 or dy.dtype != np.float32 or x.ndim != 2 or x.shape[1] != n_in
            or dy.shape != (x.shape[0], n_out) or rows.ndim != 1 or rows.dtype.kind not in "iu"
            or (rows < 1).any() or int(rows.sum()) != x.shape[0]):
        raise CheckpointError(
            f"{path}: layer{i}'s kept batches do not fit the layer ({n_out} x {n_in}): x {x.dtype} {x.shape}, "
            f"dy {dy.dtype} {dy.shape}, rows {rows.dtype} {rows.shape} summing to {int(rows.sum())}"
        )
    bounds = np.cumsum(rows)[:-1]
    return list(zip(np.split(x, bounds), np.split(dy, bounds)))


def split_arrays(state: dict, prefix: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON-able state, arrays): every ndarray in ``state`` or its nested dicts replaced by
    ``{"npz": name}``, with ``name`` = ``prefix.<key>.<key>...`` the key it gets among the arrays."""
    plain, arrays = {}, {}
    for key, value in state.items():
        name = f"{prefix}.{key}"
        if isinstance(value, np.ndarray):
            plain[key], arrays[name] = {"npz": name}, value
        elif isinstance(value, dict):
            plain[key], inner = split_arrays(value, name)
            arrays.update(inner)
        else:
            plain[key] = value
    return plain, arrays


def join_arrays(state: dict, arrays: dict[str, np.ndarray]) -> dict:
    """The inverse of :func:`split_arrays`: each ``{"npz": name}`` in ``state`` replaced by
    ``arrays[name]``; CheckpointError naming an array that is missing."""
    out = {}
    for key, value in state.items():
        if isinstance(value, dict) and value.keys() == {"npz"} and isinstance(value["npz"], str):
            if value["npz"] not in arrays:
                raise CheckpointError(f"checkpoint lacks array {value['npz']!r} of the topology state")
            out[key] = arrays[value["npz"]]
        elif isinstance(value, dict):
            out[key] = join_arrays(value, arrays)
        else:
            out[key] = value
    return out


def _open(path) -> tuple[dict, dict[str, np.ndarray]]:
    path = Path(path)
    arrays = load_arrays(path)
    return parse_meta(path, arrays), arrays


def _layer(i: int, spec: dict, arrays: dict, backend) -> SparseLinear | Dense:
    def get(name):
        key = f"layer{i}.{name}"
        if key not in arrays:
            raise CheckpointError(f"checkpoint lacks array {key!r} of a {spec.get('format')} layer")
        return arrays[key]

    shape = tuple(spec["shape"])
    fmt = spec.get("format")
    bias = get("bias")
    if bias.shape != (shape[0],) or bias.dtype != np.float32:
        raise CheckpointError(f"layer{i}.bias has shape {bias.shape} {bias.dtype}, expected ({shape[0]},) float32")
    try:
        if fmt == "dense":
            weight = get("weight")
            if weight.shape != shape or weight.dtype != np.float32:
                raise CheckpointError(f"layer{i}.weight has shape {weight.shape} {weight.dtype}, expected {shape} float32")
            return Dense(weight, bias, name=f"layer{i}", backend=backend)
        if fmt == "condensed":
            W = Condensed(get("rows"), get("indices"), get("values"), shape)
        elif fmt == "diagonal":
            W = Diagonal(get("offsets"), get("values"), shape)
        elif fmt == "csr":
            W = CSR(get("indptr"), get("indices"), get("values"), shape)
        else:
            raise CheckpointError(f"layer {i} has unknown format {fmt!r}")
        W.validate(full=True)
    except CheckpointError:
        raise
    except PureriglError as e:
        raise CheckpointError(f"layer{i} ({fmt}) breaks its format's invariants: {e}") from None
    if "gate" in spec:
        return _gated_layer(f"layer{i}", spec["gate"], W, get("alpha"), bias, backend)
    return SparseLinear(W, bias, backend=backend, name=f"layer{i}")


def _gated_layer(name: str, gate, W, alpha, bias, backend) -> GatedDiagonalLinear:
    """A DynaDiag layer from its ``gate`` entry ({"k", "temperature", "frozen"}) and ``<name>.alpha``."""
    if not isinstance(W, Diagonal):
        raise CheckpointError(f"{name} has a gate but stores a {type(W).__name__}, not a Diagonal")
    if not isinstance(gate, dict) or set(gate) != {"k", "temperature", "frozen"}:
        raise CheckpointError(f"{name}: the gate entry must hold k, temperature and frozen, got {gate!r}")
    if alpha.dtype != np.float32 or alpha.shape != (W.P,):
        raise CheckpointError(f"{name}.alpha has shape {alpha.shape} {alpha.dtype}, expected ({W.P},) float32")
    try:
        k, T, frozen = int(gate["k"]), float(gate["temperature"]), gate["frozen"]
        if not isinstance(frozen, bool) or not T > 0 or (frozen and W.K != k):
            raise ValueError(f"frozen {frozen!r}, temperature {T!r}, K {k} for {W.K} stored diagonals")
        return GatedDiagonalLinear(W, k, alpha=alpha, temperature=T, frozen=frozen, bias=bias, backend=backend,
                                   name=name)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{name}: invalid gate ({e})") from None


def load_model(path, backend=None) -> tuple[MLP, dict]:
    """Read a model file (or training checkpoint); returns ``(model, meta)``. Arrays are fully validated."""
    meta, arrays = _open(path)
    layers = meta.get("layers")
    if not isinstance(layers, list) or not layers:
        raise CheckpointError(f"checkpoint {path}: meta has no layer list")
    if "network" in meta:
        return _load_network(path, meta, arrays, backend), meta
    try:
        model = MLP([_layer(i, spec, arrays, backend) for i, spec in enumerate(layers)])
    except CheckpointError:
        raise
    except PureriglError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        # a layer entry without "shape", a shape that is not a pair, a layer that is not an object...
        raise CheckpointError(f"checkpoint {path}: malformed layer list in meta ({type(e).__name__}: {e})") from None
    return model, meta


_SPARSE_FORMATS = {"condensed": Condensed, "diagonal": Diagonal, "csr": CSR}


def _load_network(path, meta: dict, arrays: dict, backend) -> Network:
    """A built-in network (``meta["network"]``: model, input shape, classes, options) rebuilt with the
    saved layers' formats and dense set, then every structure, weight, parameter and statistic
    installed from ``arrays`` (and checked against them)."""
    arch, rows = meta["network"], meta["layers"]
    try:
        sparse = [row for row in rows if row["kind"] == "sparse"]
        formats = {row["format"] for row in sparse}
        if len(formats) > 1 or not formats <= set(_SPARSE_FORMATS):
            raise CheckpointError(f"checkpoint {path}: sparse layers in formats {sorted(formats)}; expected one of "
                                  f"{', '.join(_SPARSE_FORMATS)}")
        structures = {}
        for row in sparse:
            cls, name = _SPARSE_FORMATS[row["format"]], row["name"]
            missing = [f"{name}.{k}" for k in (*cls.STRUCTURE, "values") if f"{name}.{k}" not in arrays]
            if missing:
                raise CheckpointError(f"checkpoint {path} lacks array {missing[0]!r}")
            W = cls(*(arrays[f"{name}.{k}"] for k in cls.STRUCTURE), arrays[f"{name}.values"], tuple(row["shape"]))
            structures[name] = W.validate(full=True)
        model = build_model(
            arch["model"], tuple(arch["input_shape"]), int(arch["n_classes"]), **arch.get("options", {}),
            fmt=next(iter(formats), "condensed"), dense_layers=[row["name"] for row in rows if row["kind"] == "dense"],
            budgets={name: int(W.nnz) for name, W in structures.items()}, sparsity=0.5 if sparse else 0.0,
            backend=backend, rng=0,
        )
        described = [(r["name"], r["kind"], r["format"], list(r["shape"])) for r in model.describe()]
        saved = [(r["name"], r["kind"], r["format"], list(r["shape"])) for r in rows]
        if described != saved:
            raise CheckpointError(f"checkpoint {path}: its layers {saved} do not match the rebuilt "
                                  f"{arch['model']} {described}")
        _install_network(path, model, structures, arrays)
        for row in rows:  # DynaDiag's gated layers
            if "gate" in row:
                old = next(lin for lin in model.linears if lin.name == row["name"])
                if f"{row['name']}.alpha" not in arrays:
                    raise CheckpointError(f"checkpoint {path} lacks array {row['name'] + '.alpha'!r}")
                model.replace_linear(old, _gated_layer(row["name"], row["gate"], old.W, arrays[f"{row['name']}.alpha"],
                                                       old.bias.host, backend))
    except CheckpointError:
        raise
    except PureriglError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: malformed network in meta ({type(e).__name__}: {e})") from None
    return model


def _install_network(path, model: Network, structures: dict, arrays: dict) -> None:
    """Copy the saved structures, weights, other parameters and buffers into ``model`` (shapes checked)."""
    def copy(name, target):
        if name not in arrays:
            raise CheckpointError(f"checkpoint {path} lacks array {name!r}")
        if arrays[name].shape != target.shape or arrays[name].dtype != target.dtype:
            raise CheckpointError(f"checkpoint {path}: {name} is {arrays[name].dtype} {arrays[name].shape}, the "
                                  f"model's is {target.dtype} {target.shape}")
        target[...] = arrays[name]

    for lin in model.linears:
        if isinstance(lin, SparseLinear):
            lin.set_structure(structures[lin.name])
    owned = set()
    for lin in model.linears:
        owned.update(id(p) for p in lin.parameters())
        if not isinstance(lin, SparseLinear):
            copy(f"{lin.name}.weight", lin.weight.host)
        copy(f"{lin.name}.bias", lin.bias.host)
    for p in model.parameters():
        if id(p) not in owned:
            copy(p.name, p.host)
    buffers = model.buffers()
    for name in buffers:
        if name not in arrays:
            raise CheckpointError(f"checkpoint {path} lacks array {name!r}")
    model.load_buffers({name: arrays[name] for name in buffers})
    model.sync_to_device()


def load_training_state(path, trainer) -> dict:
    """Restore a :class:`~purerigl.training.loop.Trainer` (built with the same config) from a training checkpoint.

    Returns the checkpoint's ``meta``. Raises :class:`CheckpointError` for a model file, a checkpoint of
    another run (layers, training options, optimizer state or DST method that do not fit) or malformed
    training entries.
    """
    meta, arrays = _open(path)
    train = meta.get("train")
    if not isinstance(train, dict):
        raise CheckpointError(f"{path} is a model file, not a training checkpoint (no 'train' entry)")
    saved_config = meta.get("config")
    if saved_config is not None and saved_config != trainer.config.to_dict():
        mine = trainer.config.to_dict()
        diff = ", ".join(f"{k} {saved_config.get(k)!r} vs {v!r}" for k, v in mine.items() if saved_config.get(k) != v)
        raise CheckpointError(f"{path} was written by a run with other training options ({diff or saved_config})")
    model, _ = load_model(path, backend="reference")  # host containers, copied into the run's layers
    if type(model) is not type(trainer.model):
        raise CheckpointError(f"{path} holds a {type(model).__name__}, the run builds a {type(trainer.model).__name__}")
    if len(model.linears) != len(trainer.model.linears):
        raise CheckpointError(f"{path} holds {len(model.linears)} layers, the run has {len(trainer.model.linears)}")
    for i, (mine, saved) in enumerate(zip(trainer.model.linears, model.linears)):
        if type(mine) is not type(saved) or mine.shape != saved.shape:
            raise CheckpointError(f"{path}: layer {mine.name} is {saved!r}, the run has {mine!r}")
        if isinstance(mine, SparseLinear):
            mine.set_structure(saved.W)
            if isinstance(mine, GatedDiagonalLinear):
                if mine.k != saved.k:
                    raise CheckpointError(f"{path}: layer {mine.name} keeps K = {saved.k} diagonals, the run {mine.k}")
                mine.alpha.value[...] = saved.alpha.value  # in place: the alpha optimizer holds this array
                mine.temperature, mine.frozen = saved.temperature, saved.frozen
            kept = _kept_pairs(path, i, mine.shape, arrays)
            if kept is not None:
                mine.set_kept_batches(kept)
        else:
            mine.weight.host[...] = saved.weight.host
        mine.bias.host[...] = saved.bias.host
        mine.sync_to_device()  # no-op on a host backend
    if isinstance(trainer.model, Network):  # batch normalisation's parameters and running statistics
        owned = {id(p) for lin in trainer.model.linears for p in lin.parameters()}
        by_name = {p.name: p for p in model.parameters()}
        for p in trainer.model.parameters():
            if id(p) not in owned:
                p.host[...] = by_name[p.name].host
                p.sync_to_device()
        trainer.model.load_buffers(model.buffers())
    optim = {k[len("optim."):]: v for k, v in arrays.items() if k.startswith("optim.")}
    try:
        trainer.optimizer.load_state_dict(optim)
    except ValueError as e:
        raise CheckpointError(f"{path}: optimizer state does not fit the run: {e}") from None
    try:
        trainer.epoch, trainer.step = int(train["epoch"]), int(train["step"])
        trainer.rng.bit_generator.state = train["rng_state"]
        trainer.topology.load_state_dict(join_arrays(train.get("topology", {}), arrays))
        trainer.history = list(train.get("history", []))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: malformed training state in meta ({type(e).__name__}: {e})") from None
    return meta
