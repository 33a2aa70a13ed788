"""The checkpoint file as a container, apart from what it holds: the schema's name and version, the
error every reader raises, the atomic write, and reading a file's arrays or its ``meta`` alone
(:func:`read_meta`, for callers that only need to know what a file is, such as ``sweep --dry-run``).
:mod:`.checkpoint` builds the models and training state on top of it and documents the schema.
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
from pathlib import Path

import numpy as np

from ..errors import PureriglError

SCHEMA = "purerigl.model"
SCHEMA_VERSION = 1


class CheckpointError(PureriglError, ValueError):
    """A checkpoint file is missing, truncated, of another schema, or holds invalid arrays."""


def atomic_write(path, write) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, fsync it, then rename it to ``path``.

    The temporary file is ``.<name>.<random hex>.tmp`` in the same directory; it is removed if ``write``
    fails, and only a killed process can leave one behind.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # mode 0o666 less the umask, as for any new file (tempfile.mkstemp would make it 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# zipfile's and np.load's answers to a truncated, corrupted or foreign file (NotImplementedError and
# RuntimeError: a corrupted directory entry)
_DAMAGED = (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, NotImplementedError, RuntimeError)


def load_arrays(path: Path, names=None) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` at ``path`` (only ``names`` where given, those it holds); a missing or
    damaged file is a :class:`CheckpointError` naming it."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            wanted = f.files if names is None else [k for k in names if k in f.files]
            return {k: f[k] for k in wanted}
    except _DAMAGED as e:
        raise CheckpointError(f"checkpoint {path} is truncated, corrupted or not an .npz file ({e})") from None


def parse_meta(path: Path, arrays: dict[str, np.ndarray]) -> dict:
    """``meta`` (popped from ``arrays``) as a dict, its schema and version checked."""
    if "meta" not in arrays:
        raise CheckpointError(f"checkpoint {path} has no 'meta' entry; it is not a purerigl model")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path}: meta is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: meta must be a JSON object, got {type(meta).__name__}")
    if meta.get("schema") != SCHEMA:
        raise CheckpointError(f"checkpoint {path} has schema {meta.get('schema')!r}, expected {SCHEMA!r}")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has schema version {meta.get('schema_version')}, "
            f"this purerigl reads version {SCHEMA_VERSION}"
        )
    return meta


def read_meta(path) -> dict:
    """A model file's or checkpoint's ``meta`` dict, read without loading its other arrays.

    Raises
    ------
    CheckpointError
        The file is missing, damaged, not a purerigl model, or of another schema version.
    """
    path = Path(path)
    return parse_meta(path, load_arrays(path, names=("meta",)))
