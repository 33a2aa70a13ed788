"""Which code produced a result: a fingerprint of the installed purerigl source, and its git commit.

A table of training runs is only as trustworthy as the knowledge of which code trained each cell: a
bug found and fixed between two cells (it happened: DynaDiag's gates inside convolutions) must be
traceable to the cells it spoiled. ``purerigl train`` writes :func:`code_version` into every run's
``config.json`` (and, when a run is resumed by other code, the new version with the epoch it took
over), and ``purerigl sweep`` carries it into each cell's record and names the versions in its table.

The fingerprint does not depend on how purerigl was installed: it hashes the Python source of the
package ``purerigl`` and of ``purerigl.cli`` (which lives in ``cli/`` of a checkout and in
``purerigl/cli/`` of a wheel) under the paths they have once installed,

.. math:: \\mathrm{source} = \\mathrm{sha256}\\big(\\Vert_{f \\in \\mathrm{sorted}(F)}\\;
          \\mathrm{path}(f) \\,\\Vert\\, 0 \\,\\Vert\\, \\mathrm{bytes}(f) \\,\\Vert\\, 0\\big)[:12]

over every ``*.py`` file F of the two packages, so an editable install of a commit and a wheel built
from the same commit give the same fingerprint, and any edit to the code gives another. Data files
(the embedded digits) are not code and are not hashed. The git commit is added when the package's
files are tracked by a git work tree (an editable install of a checkout), with ``git_dirty`` telling
whether the package's files differ from that commit; elsewhere both are None.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
from functools import lru_cache
from pathlib import Path

#: Hex digits of the sha256 kept as the fingerprint (48 bits: collisions between versions are not a concern).
FINGERPRINT_DIGITS = 12
#: Seconds a git command may take before the commit is reported as unknown.
GIT_TIMEOUT_S = 5.0


def _package_dirs() -> dict[str, Path]:
    """Installed dotted prefix -> folder, for ``purerigl`` and ``purerigl.cli``.

    ``purerigl.cli`` is located with ``find_spec`` (which imports ``purerigl`` only, not the CLI), so
    this module does not import the layer above it.
    """
    dirs = {}
    for name in ("purerigl", "purerigl.cli"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs[name.replace(".", "/")] = Path(next(iter(spec.submodule_search_locations))).resolve()
    return dirs


def source_files(dirs: dict[str, Path] | None = None) -> dict[str, Path]:
    """Every ``*.py`` file of the installed package by its installed path (``purerigl/cli/train.py``).

    ``dirs`` maps an installed path prefix to the folder holding it (default: where ``purerigl`` and
    ``purerigl.cli`` are imported from); a file reached through two entries (a wheel's
    ``purerigl/cli/`` is inside ``purerigl/``) is counted once, under its installed path.
    """
    files = {}
    for prefix, folder in (_package_dirs() if dirs is None else dirs).items():
        for path in folder.rglob("*.py"):
            if "__pycache__" not in path.parts:
                files[f"{prefix}/{path.relative_to(folder).as_posix()}"] = path
    return files


def source_fingerprint(files: dict[str, Path] | None = None) -> str:
    """The first :data:`FINGERPRINT_DIGITS` hex digits of the sha256 of the sources (module docstring)."""
    files = source_files() if files is None else files
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(files[name].read_bytes() + b"\0")
    return digest.hexdigest()[:FINGERPRINT_DIGITS]


def _git(folder: Path, *args: str) -> str | None:
    """stdout of ``git -C folder args`` stripped, or None if git is missing, fails or times out."""
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(folders: list[Path] | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git work tree that tracks the package, or (None, None).

    The commit counts only if the package's own ``__init__.py`` is tracked there: a wheel installed
    into a virtual environment inside some other repository is not that repository's code. ``dirty``
    is True when a file in the package's folders differs from the commit or is new there and not
    ignored (files outside the package, such as results, do not count).
    """
    folders = list(_package_dirs().values()) if folders is None else folders
    if not folders or _git(folders[0], "ls-files", "--error-unmatch", "__init__.py") is None:
        return None, None
    commit = _git(folders[0], "rev-parse", "HEAD")
    if commit is None:
        return None, None
    changes = [_git(folder, "status", "--porcelain", "--", ".") for folder in folders]
    if any(change is None for change in changes):
        return commit, None
    return commit, any(changes)


@lru_cache(maxsize=1)
def code_version() -> dict:
    """The code of this process: ``{"purerigl", "source", "git", "git_dirty"}`` (JSON-ready).

    ``purerigl`` is the package version, ``source`` the fingerprint of :func:`source_fingerprint`,
    ``git`` the full commit or None, ``git_dirty`` a bool or None (:func:`git_state`). Computed once
    per process.
    """
    import purerigl

    commit, dirty = git_state()
    return {"purerigl": purerigl.__version__, "source": source_fingerprint(), "git": commit, "git_dirty": dirty}


def run_code(run_dir) -> dict:
    """The code record of a ``purerigl train`` run directory: ``{"code": ...}`` from its config.json,
    with ``"code_resumed"`` where a resume by other code added it; empty for a run written before
    runs recorded their code, or without a readable config.json."""
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict) or not isinstance(config.get("code"), dict):
        return {}
    return {key: config[key] for key in ("code", "code_resumed") if key in config}


def describe_code(code: dict | None) -> str:
    """One phrase for a recorded :func:`code_version`: ``source 1a2b3c4d5e6f (git 8fe2546)``.

    ``+ changes`` follows the commit of a dirty tree; a missing record reads ``code not recorded``.
    """
    if not code or not code.get("source"):
        return "code not recorded"
    text = f"source {code['source']}"
    if code.get("git"):
        text += f" (git {code['git'][:7]}{' + changes' if code.get('git_dirty') else ''})"
    return text


__all__ = ["FINGERPRINT_DIGITS", "code_version", "describe_code", "git_state", "run_code", "source_files",
           "source_fingerprint"]
