"""CIFAR-10 in its "python version" format: finding, safely unpacking and reading the batch files.

File format
-----------
The archive ``cifar-10-python.tar.gz`` holds the folder ``cifar-10-batches-py/`` with the training
batches ``data_batch_1`` ... ``data_batch_5`` (10,000 images each), ``test_batch`` (10,000 images),
``batches.meta`` and ``readme.html``. Each batch is a Python pickle (written by Python 2) of a dict
with, among others, the keys

- ``b"data"``: a uint8 NumPy array of shape (n, 3072); each row is one 32x32 colour image, channel
  planes one after the other (1024 red, then 1024 green, then 1024 blue values), each plane row-major;
- ``b"labels"``: a list of n ints in [0, 10).

Rows are returned in this channel-major layout, unchanged.

Pickles can run arbitrary code when loaded, so batches are read with an unpickler that only allows
the few NumPy names an array needs (:class:`SafeBatchUnpickler`); anything else is a DataError.
The archive is never extracted with ``tarfile.extractall``: only the six expected batch members,
regular files at ``cifar-10-batches-py/<name>``, are read, and written (after a download) under
names chosen here, so a hostile archive cannot write elsewhere.

Lookup (see :mod:`purerigl.data.download` for the general rule): in the user's data directory DIR,
the six batch files in DIR, DIR/cifar-10-batches-py, DIR/cifar10 or DIR/cifar10/cifar-10-batches-py
(batch files have no published SHA-256 and are checked for structure only); else the archive in DIR
or DIR/cifar10 (checksum-verified, read without unpacking); else the unpacked batches in the cache;
else the archive is downloaded, verified, unpacked into the cache and deleted.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from .download import advice, cache_dir, download_file, user_data_dir, verify_file
from .errors import DataError
from .sources import CATALOGUE

try:  # NumPy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

#: Folder inside the archive.
BATCH_DIR = "cifar-10-batches-py"
#: Training batches, in order.
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
#: Test batch.
TEST_BATCH = "test_batch"
BATCH_NAMES = (*TRAIN_BATCHES, TEST_BATCH)
#: Values per image: 3 channels x 32 x 32.
N_FEATURES = 3072
N_CLASSES = 10


class SafeBatchUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds NumPy arrays and refuses every other global.

    Allowed: ``numpy.ndarray``, ``numpy.dtype``, NumPy's array reconstructors
    (``numpy[._]core.multiarray._reconstruct``, ``numpy[._]core.numeric._frombuffer``) and
    ``_codecs.encode`` (Python 3 protocol-2 pickles of bytes).
    """

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
        ("_codecs", "encode"): __import__("codecs").encode,
    }

    def find_class(self, module, name):  # noqa: D102 - pickle API
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR batch holds only NumPy arrays"
            ) from None


def parse_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pickled CIFAR-10 batch.

    Parameters
    ----------
    data : bytes
        The pickle.
    source : str
        Name for error messages.

    Returns
    -------
    x : numpy.ndarray of uint8, shape (n, 3072)
    y : numpy.ndarray of int64, shape (n,), values in [0, 10)
    """
    try:
        batch = SafeBatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any decoding failure of untrusted bytes
        raise DataError(f"{source}: not a readable CIFAR-10 batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{source}: a CIFAR-10 batch is a dict, got {type(batch).__name__}")
    x = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if x is None or labels is None:
        raise DataError(f"{source}: CIFAR-10 batch lacks the 'data' or 'labels' key")
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != N_FEATURES:
        raise DataError(
            f"{source}: CIFAR-10 'data' must be uint8 of shape (n, {N_FEATURES}), "
            f"got {x.dtype} {x.shape}"
        )
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(
            f"image/label count mismatch in {source}: {x.shape[0]} images, {y.size} labels"
        )
    if y.size and (y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= N_CLASSES):
        raise DataError(f"{source}: CIFAR-10 labels must be integers in [0, {N_CLASSES})")
    return x, y.astype(np.int64)


def _archive_members(archive: Path):
    """Yield (batch name, bytes) for the six batch members of the archive, nothing else."""
    seen = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if (
                    len(parts) == 2
                    and parts[0] == BATCH_DIR
                    and parts[1] in BATCH_NAMES
                    and parts[1] not in seen
                    and member.isfile()
                ):
                    seen.add(parts[1])
                    yield parts[1], tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive}: corrupt or unreadable tar.gz archive ({exc})") from exc
    missing = [n for n in BATCH_NAMES if n not in seen]
    if missing:
        raise DataError(f"{archive}: archive lacks {BATCH_DIR}/{', '.join(missing)}")


def unpack_archive(archive: Path, dest: Path) -> Path:
    """Write the six batch files of ``archive`` into ``dest`` (safely; see the module docstring).

    Each file is written to a temporary name and renamed, so a partial unpack leaves no batch file
    under its final name.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for batch_name, data in _archive_members(archive):
        fd, tmp = tempfile.mkstemp(prefix=f".{batch_name}.", suffix=".part", dir=dest)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, dest / batch_name)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return dest


def _has_batches(directory: Path) -> bool:
    return all((directory / n).is_file() for n in BATCH_NAMES)


def locate(data_dir=None, *, download: bool = True) -> Path:
    """The directory of the six batch files, or a verified archive (see the module docstring)."""
    spec = CATALOGUE["cifar10"][0]
    base, _ = user_data_dir(data_dir)
    searched: list[Path] = []
    if base is not None:
        for directory in (base, base / BATCH_DIR, base / "cifar10", base / "cifar10" / BATCH_DIR):
            searched.append(directory)
            if _has_batches(directory):
                return directory
        for directory in (base, base / "cifar10"):
            if (directory / spec.filename).is_file():
                verify_file(directory / spec.filename, spec)
                return directory / spec.filename
    cache = cache_dir("cifar10")
    unpacked = cache / BATCH_DIR
    searched.append(unpacked)
    if _has_batches(unpacked):
        return unpacked
    needed = [f"{spec.filename} (or its {BATCH_DIR}/ folder: {', '.join(BATCH_NAMES)})"]
    help_text = advice("cifar10", needed, searched, {})
    if not download:
        raise DataError(f"cifar10: files not found and downloading is off (download=False). {help_text}")
    archive = download_file(spec, cache, help_text=help_text)
    unpack_archive(archive, unpacked)
    archive.unlink()
    return unpacked


def load_cifar10(data_dir=None, *, download: bool = True):
    """Read CIFAR-10 as uint8 arrays.

    Returns
    -------
    x_train : numpy.ndarray of uint8, shape (n_train, 3072)
    y_train : numpy.ndarray of int64, shape (n_train,)
    x_test : numpy.ndarray of uint8, shape (n_test, 3072)
    y_test : numpy.ndarray of int64, shape (n_test,)
    """
    where = locate(data_dir, download=download)
    if where.is_dir():
        batches = {}
        for n in BATCH_NAMES:
            try:
                batches[n] = parse_batch((where / n).read_bytes(), str(where / n))
            except OSError as exc:
                raise DataError(f"cannot read {where / n}: {exc}") from exc
    else:
        batches = {n: parse_batch(b, f"{where}:{BATCH_DIR}/{n}") for n, b in _archive_members(where)}
    x_train = np.concatenate([batches[n][0] for n in TRAIN_BATCHES])
    y_train = np.concatenate([batches[n][1] for n in TRAIN_BATCHES])
    x_test, y_test = batches[TEST_BATCH]
    return x_train, y_train, x_test, y_test
