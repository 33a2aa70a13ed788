"""Helpers for tests/test_data.py: tiny MNIST-style IDX sets and CIFAR-10 batches written to disk.

Nothing here touches the network: the files are generated, and the matching catalogue entries
(:class:`purerigl.data.sources.RemoteFile` with the files' own SHA-256) let the tests swap them in
for the real ones.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from purerigl.data.idx import encode_idx
from purerigl.data.sources import RemoteFile

MNIST_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mnist_like_files(n_train: int, n_test: int, *, seed: int = 0, side: int = 4) -> dict[str, bytes]:
    """The four gzipped IDX files of a tiny MNIST-like set: name -> bytes.

    Images are ``side x side`` uint8; labels cycle through 0..9 so every class is present.
    """
    rng = np.random.default_rng(seed)
    arrays = {
        MNIST_NAMES[0]: rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        MNIST_NAMES[1]: (np.arange(n_train) % 10).astype(np.uint8),
        MNIST_NAMES[2]: rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        MNIST_NAMES[3]: (np.arange(n_test) % 10).astype(np.uint8),
    }
    return {name: gzip.compress(encode_idx(a), mtime=0) for name, a in arrays.items()}


def write_files(directory: Path, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def specs_for(files: dict[str, bytes], mirrors=("https://mirror-a.invalid/", "https://mirror-b.invalid/")):
    """Catalogue entries whose checksums are those of ``files`` (order kept)."""
    return tuple(RemoteFile(n, sha256(b), tuple(m + n for m in mirrors)) for n, b in files.items())


def cifar_batch_bytes(n: int, *, seed: int, protocol: int = 2) -> bytes:
    """A pickled CIFAR-style batch of n images, keys as bytes like the real (Python 2) files."""
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"testing batch",
        b"labels": [int(v) for v in (np.arange(n) + seed) % 10],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }
    return pickle.dumps(batch, protocol=protocol)


def cifar_files(n_per_batch: int = 4) -> dict[str, bytes]:
    return {name: cifar_batch_bytes(n_per_batch, seed=i) for i, name in enumerate(CIFAR_BATCHES)}


def cifar_archive(files: dict[str, bytes], extra: dict[str, bytes] | None = None) -> bytes:
    """A cifar-10-python.tar.gz with the batches under cifar-10-batches-py/ (plus ``extra`` members)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        members = {f"cifar-10-batches-py/{n}": b for n, b in files.items()}
        members.update(extra or {})
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class FakeNetwork:
    """Stands in for purerigl.data.download.fetch_url: serves bytes by URL, records the calls.

    ``responses`` maps a URL to bytes, or to an exception instance to raise.
    """

    def __init__(self, responses: dict):
        self.responses = responses
        self.calls: list[str] = []

    def __call__(self, url: str, dest: Path, *, timeout: float = 20.0) -> None:
        self.calls.append(url)
        answer = self.responses.get(url)
        if answer is None:
            raise OSError(f"test network has no answer for {url}")
        if isinstance(answer, BaseException):
            raise answer
        Path(dest).write_bytes(answer)
