"""Text formatting of training metrics for the terminal (the library returns numbers, the CLI prints)."""

from __future__ import annotations

# (metrics key, column title, column width, number format)
COLUMNS = (
    ("epoch", "epoch", 5, "d"),
    ("train_loss", "train_loss", 10, ".4f"),
    ("test_loss", "test_loss", 9, ".4f"),
    ("test_accuracy", "test_acc", 8, ".4f"),
    ("seconds", "sec", 7, ".2f"),
    ("samples_per_second", "samples/s", 9, ".0f"),
    ("forward_seconds", "fwd", 6, ".2f"),
    ("backward_seconds", "bwd", 6, ".2f"),
    ("optimizer_seconds", "opt", 6, ".2f"),
    ("topology_seconds", "topo", 6, ".2f"),
)


def epoch_table_header() -> str:
    return " ".join(f"{title:>{width}}" for _, title, width, _ in COLUMNS)


def epoch_line(metrics: dict) -> str:
    return " ".join(f"{metrics[key]:>{width}{spec}}" for key, _, width, spec in COLUMNS)
