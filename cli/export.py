"""``purerigl export MODEL.npz OUT.safetensors``: a model file as ``.safetensors``, readable without purerigl.

The file holds the model file's arrays under the same names (``layer{i}.bias``, ``layer{i}.values``,
``layer{i}.indices``, ...: docs/checkpoints.md) and its ``meta`` JSON as the safetensors string
metadata ``meta``; ``safetensors.numpy.load_file`` and ``safe_open(...).metadata()`` read it back, with
no purerigl and no pickle (docs/interop.md has a NumPy forward pass over it). A training checkpoint
is exported as the model it holds: the optimizer state (``optim.*``) and ``meta["train"]`` are left
out. The model is fully validated first; the file is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from purerigl.errors import PureriglError
from purerigl.training.checkpoint import atomic_write, load_model, model_arrays

#: The safetensors metadata key holding the model's meta JSON.
META_KEY = "meta"


class ExportError(PureriglError, ValueError):
    """The model cannot be exported (the safetensors package is missing)."""


def export_safetensors(model_path, out_path) -> dict:
    """Write the model at ``model_path`` (model.npz or checkpoint.npz) to ``out_path`` as safetensors;
    returns the meta written. A bad model file raises :class:`~purerigl.training.CheckpointError`."""
    try:
        from safetensors.numpy import save
    except ImportError:
        raise ExportError("export writes .safetensors with the safetensors package: "
                          "pip install 'purerigl[safetensors]'") from None
    model, meta = load_model(model_path, backend="reference")
    meta = {k: v for k, v in meta.items() if k != "train"}
    arrays = {key: np.ascontiguousarray(a) for key, a in model_arrays(model).items()}
    data = save(arrays, metadata={META_KEY: json.dumps(meta)})
    atomic_write(Path(out_path), lambda f: f.write(data))
    return meta


@click.command("export")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def export(model, out):
    """Write MODEL (a model.npz or checkpoint.npz of purerigl train) to OUT as .safetensors.

    Same arrays, same names; the model's meta JSON is the safetensors metadata "meta". Loadable with
    the safetensors package alone (no purerigl, no pickle). Exit 2 on a bad model file or without the
    safetensors package. Details: docs/interop.md.
    """
    if model.resolve() == out.resolve():
        raise click.UsageError(f"OUT {out} is MODEL itself; name another file")
    if out.suffix != ".safetensors":  # a safetensors file under another name would not load as that
        raise click.UsageError(f"OUT {out} must end in .safetensors: export writes the safetensors format "
                               "(a model.npz is already NumPy's own)")
    meta = export_safetensors(model, out)
    layers = ", ".join(f"{layer['format']} {layer['shape'][0]}x{layer['shape'][1]}" for layer in meta["layers"])
    click.echo(f"wrote {out}: {len(meta['layers'])} layers ({layers})")
