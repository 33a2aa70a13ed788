"""Summarise `purerigl train` run directories as one markdown table.

    python benchmarks/summarize_runs.py RUN_DIR [RUN_DIR ...]

One row per run: method, format, sparsity, hidden widths, epochs, final test accuracy, final test loss,
median seconds per training epoch (training only, evaluation excluded) and median samples per second,
read from each run's config.json and metrics.jsonl.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def summarize(run: Path) -> dict:
    config = json.loads((run / "config.json").read_text())
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = epochs[-1]
    return {
        "method": config["method"],
        "format": config["format"],
        "sparsity": config["sparsity"],
        "hidden": "-".join(str(h) for h in config["hidden"]),
        "epochs": len(epochs),
        "test_accuracy": last["test_accuracy"],
        "test_loss": last["test_loss"],
        "sec_per_epoch": statistics.median(e["seconds"] for e in epochs),
        "samples_per_sec": statistics.median(e["samples_per_second"] for e in epochs),
        "backend": config["backend"],
    }


def markdown(rows: list[dict]) -> str:
    head = "| method | format | sparsity | hidden | epochs | test acc | test loss | s/epoch | samples/s |"
    lines = [head, "| --- " * 9 + "|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['format']} | {r['sparsity']:g} | {r['hidden']} | {r['epochs']} | "
            f"{r['test_accuracy']:.4f} | {r['test_loss']:.4f} | {r['sec_per_epoch']:.2f} | {r['samples_per_sec']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    missing = [a for a in argv if not (Path(a) / "metrics.jsonl").is_file()]
    if missing:
        print(f"not a finished run directory (no metrics.jsonl): {', '.join(missing)}", file=sys.stderr)
        return 2
    print(markdown([summarize(Path(a)) for a in argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
