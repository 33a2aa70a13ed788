"""``purerigl evaluate MODEL.npz``: loss and accuracy of a saved model on a dataset split."""

from __future__ import annotations

import json
from pathlib import Path

import click

from purerigl.training.checkpoint import load_model
from purerigl.data import DATASETS, load_dataset
from purerigl.training.loop import evaluate as evaluate_model

from ._options import backend_option


@click.command()
@click.argument("model_path", metavar="MODEL.npz", type=click.Path(path_type=Path))
@click.option("--dataset", type=click.Choice(DATASETS), default=None, help="Dataset  [default: the one the model was trained on]")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="PURERIGL_DATA", show_envvar=True)
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@backend_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with accuracy (a fraction) and loss.")
def evaluate(model_path, dataset, data_dir, split, backend, as_json):
    """Evaluate a saved model (model.npz or checkpoint.npz) with its stored input normalisation."""
    model, meta = load_model(model_path, backend=backend)
    dataset = dataset or meta.get("dataset")
    if dataset not in DATASETS:
        raise click.UsageError(f"the model does not name its dataset; pass --dataset ({', '.join(DATASETS)})")
    norm = meta.get("normalisation") or {}
    normalisation = (norm["mean"], norm["std"]) if "mean" in norm and "std" in norm else None
    data = load_dataset(dataset, data_dir, normalisation=normalisation)
    shape = getattr(model, "input_shape", None)  # (C, H, W) of a convolutional network or ViT, else None
    if data.n_features != model.n_features:
        reads = f"images of shape {_shape_text(shape)} ({model.n_features} values)" if shape else f"{model.n_features} inputs"
        raise click.UsageError(f"the model takes {reads} but {dataset} has {data.n_features} features")
    x, y = (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)
    result = evaluate_model(model, x, y)
    record = {"dataset": dataset, "split": split, "samples": int(x.shape[0]), **result}
    if as_json:
        click.echo(json.dumps(record))
    else:
        click.echo(f"{dataset} {split}: {x.shape[0]} samples, loss {result['loss']:.4f}, accuracy {result['accuracy']:.4f}")


def _shape_text(shape) -> str:
    return " x ".join(str(int(n)) for n in shape)
