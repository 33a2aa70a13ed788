"""Code excerpts in the documentation, generated from the source so that they cannot drift from it.

A markdown file marks an excerpt with two HTML comments (invisible once rendered)::

    <!-- BEGIN EXCERPT purerigl/nn/layers.py SparseLinear.forward -->
    <!-- END EXCERPT -->

    <!-- BEGIN EXCERPT purerigl/training/loop.py Trainer.run_epoch from "for xb, yb" to "t4 = clock()" -->
    <!-- END EXCERPT -->

:func:`fill_excerpts` replaces what lies between them with a caption linking the file and a fenced
``python`` block holding the named function or class (``Class.method`` for a method), read from the
file with :mod:`ast` (no import): its lines from the ``def`` line to the end, the docstring left out,
dedented. With ``from "A" to "B"`` only the lines from the first one containing A through the first
one after it containing B are shown. A name or line that no longer exists is an
:class:`ExcerptError` naming the marker. ``python -m purerigl.report.tour`` fills docs/tour.md's excerpts;
tests/test_tour.py fails when any document's excerpt differs from the code.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

#: The repository root: excerpt paths are relative to it.
ROOT = Path(__file__).resolve().parents[2]

#: One excerpt: its markers and whatever lies between them now.
MARKER = re.compile(
    r'<!-- BEGIN EXCERPT (?P<path>\S+) (?P<name>[\w.]+)(?: from "(?P<start>[^"]+)" to "(?P<end>[^"]+)")? -->\n'
    r".*?<!-- END EXCERPT -->",
    re.S,
)


class ExcerptError(ValueError):
    """An excerpt names a file, function or line that does not exist."""


def _definition(tree: ast.Module, name: str, path: str):
    node = tree
    for part in name.split("."):
        node = next(
            (n for n in getattr(node, "body", [])
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == part),
            None,
        )
        if node is None:
            raise ExcerptError(f"{path} defines no {name} (an excerpt in the docs quotes it)")
    return node


def excerpt(path: str, name: str, start: str | None = None, end: str | None = None, root: Path = ROOT) -> str:
    """The source of ``name`` (a function, class or ``Class.method``) in the file ``root / path``.

    Lines from the ``def`` / ``class`` line to the last line of the body, decorators and docstring
    left out, dedented; with ``start`` and ``end``, only the lines from the first one containing
    ``start`` through the first one at or after it containing ``end``.
    """
    try:
        source = (root / path).read_text(encoding="utf-8")
    except OSError as err:
        raise ExcerptError(f"an excerpt quotes {path}, which cannot be read ({err})") from None
    lines = source.splitlines()
    node = _definition(ast.parse(source), name, path)
    first = node.lineno
    body = lines[first - 1 : node.end_lineno]
    doc = node.body[0] if node.body else None
    if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
        del body[doc.lineno - first : doc.end_lineno - first + 1]
    if start is not None:
        i = next((k for k, line in enumerate(body) if start in line), None)
        j = None if i is None else next((k for k in range(i, len(body)) if end in body[k]), None)
        if j is None:
            raise ExcerptError(
                f"{path} {name} has no lines from {start!r} to {end!r} (an excerpt in the docs quotes them)"
            )
        body = body[i : j + 1]
    return textwrap.dedent("\n".join(body)).strip("\n")


def render(path: str, name: str, start: str | None = None, end: str | None = None, root: Path = ROOT) -> str:
    """The markdown between the markers: a caption linking the file (from docs/), then the code."""
    link = f"[`{path}`](../{path})"
    caption = (f"From {link}, `{name}` (generated from the code; docstring left out):" if start is None
               else f"From {link}, lines of `{name}` (generated from the code):")
    return f"{caption}\n\n```python\n{excerpt(path, name, start, end, root)}\n```"


def fill_excerpts(text: str, root: Path = ROOT) -> str:
    """``text`` with every excerpt between its markers regenerated from the code."""

    def fill(match: re.Match) -> str:
        path, name, start, end = match.group("path", "name", "start", "end")
        head = match.group(0).split("\n", 1)[0]
        return f"{head}\n{render(path, name, start, end, root)}\n<!-- END EXCERPT -->"

    return MARKER.sub(fill, text)
