"""Reading and writing the IDX file format (MNIST, Fashion-MNIST), gzipped or not.

File format
-----------
An IDX file is a header followed by a payload, all big-endian:

========  ==================  ===================================================================
offset    size                content
========  ==================  ===================================================================
0         2 bytes             zero
2         1 byte              type code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                              0x0D float32, 0x0E float64
3         1 byte              number of dimensions ``ndim`` (1 to 255)
4         ``4 * ndim`` bytes  the dimensions, one unsigned 32-bit integer each
4+4*ndim  the rest            ``prod(dims)`` items of the type, C order (last index fastest)
========  ==================  ===================================================================

The first four bytes read as one big-endian integer are the *magic number*: the MNIST label files
have ``0x00000801`` (uint8, 1-D: ``n`` labels) and the image files ``0x00000803`` (uint8, 3-D:
``n x rows x cols`` pixels). The payload must have exactly the length the dimensions announce.
A file is gunzipped first when its name ends in ``.gz`` or its content starts with the gzip magic
bytes ``1f 8b``.

Every problem is a :class:`~purerigl.data.errors.DataError` that names the file: a wrong magic number
(quoted in hex with the expected one), a wrong number of dimensions, a truncated header or payload
(expected and actual byte counts), trailing bytes, a corrupt gzip stream, or image and label files
that disagree on the number of items.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

#: Magic number of an IDX label file: uint8, 1-D.
IDX_LABELS_MAGIC = 0x00000801
#: Magic number of an IDX image file: uint8, 3-D.
IDX_IMAGES_MAGIC = 0x00000803

#: IDX type code -> big-endian NumPy dtype.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def magic_number(dtype: np.dtype | type | str, ndim: int) -> int:
    """The IDX magic number of arrays of ``dtype`` with ``ndim`` dimensions.

    Parameters
    ----------
    dtype : numpy dtype-like
        One of uint8, int8, int16, int32, float32, float64 (byte order ignored).
    ndim : int
        Number of dimensions, 1 to 255.

    Returns
    -------
    int
        ``(type_code << 8) | ndim``, for example ``0x00000803`` for uint8 3-D.
    """
    code = _type_code(np.dtype(dtype))
    if not 1 <= ndim <= 255:
        raise DataError(f"IDX files hold 1 to 255 dimensions, got {ndim}")
    return (code << 8) | ndim


def _type_code(dtype: np.dtype) -> int:
    for code, idx_dtype in IDX_TYPES.items():
        if dtype.kind == idx_dtype.kind and dtype.itemsize == idx_dtype.itemsize:
            return code
    names = ", ".join(str(t.newbyteorder("=")) for t in IDX_TYPES.values())
    raise DataError(f"IDX files cannot hold dtype {dtype}; supported: {names}")


def gunzip_bytes(data: bytes, source: str = "<bytes>") -> bytes:
    """Decompress a gzip stream, turning every decoding failure into a :class:`DataError`.

    Parameters
    ----------
    data : bytes
        The gzip-compressed content.
    source : str
        Name used in the error message (usually the file path).

    Returns
    -------
    bytes
        The decompressed content.
    """
    if not data.startswith(_GZIP_MAGIC):
        raise DataError(
            f"{source}: corrupt gzip file: it does not start with the gzip magic bytes 1f 8b "
            f"(first bytes: {data[:4].hex(' ') or 'none, the file is empty'})"
        )
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source}: corrupt gzip file ({exc}); download or copy it again") from exc


def read_file_payload(path: str | os.PathLike) -> bytes:
    """The content of ``path``, gunzipped when it is a gzip file (by name or by content).

    Parameters
    ----------
    path : path-like
        File to read.

    Returns
    -------
    bytes
        The (decompressed) content.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if path.name.endswith(".gz") or data.startswith(_GZIP_MAGIC):
        return gunzip_bytes(data, str(path))
    return data


def parse_idx(
    data: bytes,
    *,
    source: str = "<bytes>",
    dtype: np.dtype | type | str | None = None,
    ndim: int | None = None,
) -> np.ndarray:
    """Decode uncompressed IDX content into an array.

    Parameters
    ----------
    data : bytes
        Header and payload, as described in the module docstring.
    source : str
        Name used in error messages.
    dtype : numpy dtype-like, optional
        Required item type; a file of another type is a :class:`DataError`.
    ndim : int, optional
        Required number of dimensions; a file with another number is a :class:`DataError`.

    Returns
    -------
    numpy.ndarray
        Writable, native byte order, shape ``dims``.
    """
    expected = magic_number(dtype, ndim) if dtype is not None and ndim is not None else None
    want = f" (magic number 0x{expected:08X})" if expected is not None else ""
    if len(data) < 4:
        raise DataError(
            f"{source}: truncated IDX file: expected at least 4 bytes of header, got {len(data)}"
        )
    magic = int.from_bytes(data[:4], "big")
    code, n_dims = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in IDX_TYPES or n_dims == 0:
        hint = (
            f"expected 0x{expected:08X}"
            if expected is not None
            else "expected 0x0000TTDD (TT a type code, DD the number of dimensions)"
        )
        raise DataError(f"{source}: not an IDX file: magic number 0x{magic:08X}, {hint}")
    file_dtype = IDX_TYPES[code]
    if dtype is not None and _type_code(np.dtype(dtype)) != code:
        raise DataError(
            f"{source}: IDX file holds {file_dtype.newbyteorder('=')} items (magic number "
            f"0x{magic:08X}), expected {np.dtype(dtype)}{want}"
        )
    if ndim is not None and n_dims != ndim:
        raise DataError(
            f"{source}: IDX file has {n_dims} dimensions (magic number 0x{magic:08X}), "
            f"expected {ndim}{want}"
        )
    header = 4 + 4 * n_dims
    if len(data) < header:
        raise DataError(
            f"{source}: truncated IDX header: expected {header} bytes for {n_dims} dimensions, "
            f"got {len(data)}"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    n_items = 1
    for d in dims:
        n_items *= d
    expected_bytes = n_items * file_dtype.itemsize
    got = len(data) - header
    if got < expected_bytes:
        raise DataError(
            f"{source}: truncated IDX file: expected {expected_bytes} bytes of payload for "
            f"dimensions {dims}, got {got}"
        )
    if got > expected_bytes:
        raise DataError(
            f"{source}: IDX file has {got - expected_bytes} trailing bytes: expected "
            f"{expected_bytes} bytes of payload for dimensions {dims}, got {got}"
        )
    flat = np.frombuffer(data, dtype=file_dtype, count=n_items, offset=header)
    # shape: (n_items,) -> dims; astype makes a writable, native-endian copy
    return flat.reshape(dims).astype(file_dtype.newbyteorder("="))


def read_idx(
    path: str | os.PathLike,
    *,
    dtype: np.dtype | type | str | None = None,
    ndim: int | None = None,
) -> np.ndarray:
    """Read an IDX file, gzipped or not.

    Parameters
    ----------
    path : path-like
        The file; gunzipped first when its name ends in ``.gz`` or it starts with ``1f 8b``.
    dtype, ndim : optional
        Required item type and number of dimensions (see :func:`parse_idx`).

    Returns
    -------
    numpy.ndarray
        The stored array, native byte order.
    """
    return parse_idx(read_file_payload(path), source=str(path), dtype=dtype, ndim=ndim)


def read_idx_pair(
    images_path: str | os.PathLike, labels_path: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """Read an MNIST-style pair: uint8 images (magic 0x00000803) and uint8 labels (0x00000801).

    Parameters
    ----------
    images_path, labels_path : path-like
        The two IDX files, gzipped or not.

    Returns
    -------
    images : numpy.ndarray of uint8, shape (n, rows, cols)
    labels : numpy.ndarray of uint8, shape (n,)
    """
    images = read_idx(images_path, dtype=np.uint8, ndim=3)
    labels = read_idx(labels_path, dtype=np.uint8, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"image/label count mismatch: {images_path} holds {images.shape[0]} images but "
            f"{labels_path} holds {labels.shape[0]} labels"
        )
    return images, labels


def encode_idx(array: np.ndarray) -> bytes:
    """Encode an array as uncompressed IDX content (header + big-endian payload).

    Parameters
    ----------
    array : numpy.ndarray
        1 to 255 dimensions, each below 2**32; dtype uint8, int8, int16, int32, float32 or float64.

    Returns
    -------
    bytes
    """
    array = np.asarray(array)
    code = _type_code(array.dtype)
    if not 1 <= array.ndim <= 255:
        raise DataError(f"IDX files hold 1 to 255 dimensions, got an array with {array.ndim}")
    if any(d >= 2**32 for d in array.shape):
        raise DataError(f"IDX dimensions must be below 2**32, got shape {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (used by tests and to export data).

    Parameters
    ----------
    path : path-like
        Destination.
    array : numpy.ndarray
        See :func:`encode_idx`.
    compress : bool, optional
        Gzip the file; by default, when the name ends in ``.gz``. The gzip header's time stamp is
        0, so the same array always gives the same bytes.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    path = Path(path)
    data = encode_idx(array)
    if compress is None:
        compress = path.name.endswith(".gz")
    if compress:
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path
