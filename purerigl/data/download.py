"""Finding a data set's files on disk, and fetching them when they are not there.

Lookup order for the files of data set ``name``:

1. the user's data directory DIR: the ``data_dir`` argument if given, else the environment variable
   ``PURERIGL_DATA`` (an explicitly named directory that does not exist is an error). The files may
   sit in DIR itself or in the subfolder ``DIR/<name>/``; the first of the two that holds all of
   them wins. A gzipped file may also be given gunzipped (its name without ``.gz``).
2. the cache directory ``$XDG_CACHE_HOME/purerigl/<name>`` (``~/.cache/purerigl/<name>`` when
   ``XDG_CACHE_HOME`` is unset), where downloads land;
3. a download from the public mirrors into the cache (unless ``download=False``).

Every file with a canonical name is checked against its SHA-256 from
:data:`purerigl.data.sources.CATALOGUE` (user-provided and cached files too); a mismatch is a
:class:`~purerigl.data.errors.DataError` that says the file is corrupt or not the canonical one.

A download is written to a temporary file in the cache directory, verified, and renamed into place
atomically, so an interrupted or corrupt download never leaves a file under the final name. A
network failure (no connection, DNS failure, time-out after :data:`FETCH_TIMEOUT_S` seconds) stops at
once with a DataError that lists the files needed and where to put them. All network access goes
through :func:`fetch_url`, which tests replace.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .errors import DataError
from .idx import read_file_payload
from .sources import CATALOGUE, RemoteFile

#: Environment variable naming the user's data directory.
ENV_VAR = "PURERIGL_DATA"
#: Seconds to wait for a mirror before giving up.
FETCH_TIMEOUT_S = 20.0


def fetch_url(url: str, dest: Path, *, timeout: float = FETCH_TIMEOUT_S) -> None:
    """Copy the resource at ``url`` into the file ``dest``: the only function that uses the network.

    Parameters
    ----------
    url : str
        HTTP(S) address.
    dest : pathlib.Path
        File to write (created or truncated).
    timeout : float
        Seconds to wait for the connection and for each read.

    Raises
    ------
    urllib.error.HTTPError
        The server answered with an error status (the caller tries the next mirror).
    OSError, http.client.HTTPException
        Any other network failure (the caller gives up at once).
    """
    request = urllib.request.Request(url, headers={"User-Agent": "purerigl"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def user_data_dir(data_dir: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """The user's data directory and where it came from.

    Parameters
    ----------
    data_dir : path-like, optional
        Explicit directory; wins over the environment variable.

    Returns
    -------
    directory : pathlib.Path or None
        ``data_dir``, else ``$PURERIGL_DATA``, else None.
    origin : str
        ``"data_dir argument"``, ``"PURERIGL_DATA"`` or ``""``.

    Raises
    ------
    DataError
        The named directory does not exist.
    """
    if data_dir is not None:
        directory, origin = Path(data_dir).expanduser(), "data_dir argument"
    elif os.environ.get(ENV_VAR):
        directory, origin = Path(os.environ[ENV_VAR]).expanduser(), ENV_VAR
    else:
        return None, ""
    if not directory.is_dir():
        raise DataError(
            f"data directory {directory} (from the {origin}) does not exist or is not a directory"
        )
    return directory, origin


def cache_dir(name: str) -> Path:
    """The download cache of data set ``name``: ``$XDG_CACHE_HOME/purerigl/<name>``.

    Falls back to ``~/.cache/purerigl/<name>`` when ``XDG_CACHE_HOME`` is unset or empty. The
    directory is not created here.
    """
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "purerigl" / name


def sha256_file(path: str | os.PathLike) -> str:
    """Lower-case hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: str | os.PathLike, spec: RemoteFile) -> None:
    """Check a local file against the canonical checksums of ``spec``.

    A file named ``spec.filename`` passes when its SHA-256 is ``spec.sha256``, or, for gzip files
    with a known ``payload_sha256``, when its gunzipped content has that checksum (a re-compressed
    copy of the same data). A file named ``spec.uncompressed_name`` passes when its content matches
    ``payload_sha256``; it is accepted unverified when that checksum is unknown.

    Raises
    ------
    DataError
        The file is corrupt or not the canonical one; the message quotes expected and actual hashes.
    """
    path = Path(path)
    if path.name == spec.filename:
        actual = sha256_file(path)
        if actual == spec.sha256:
            return
        if spec.payload_sha256 is None:
            raise DataError(
                f"{path} is corrupt or not the canonical {spec.filename}: its SHA-256 is {actual}, "
                f"expected {spec.sha256}. Delete it, or replace it with the canonical file."
            )
        payload = hashlib.sha256(read_file_payload(path)).hexdigest()
        if payload == spec.payload_sha256:
            return
        raise DataError(
            f"{path} is corrupt or not the canonical {spec.filename}: its SHA-256 is {actual} "
            f"(gunzipped: {payload}), expected {spec.sha256} (gunzipped: {spec.payload_sha256}). "
            "Delete it, or replace it with the canonical file."
        )
    if spec.payload_sha256 is not None and path.name == spec.uncompressed_name:
        payload = hashlib.sha256(read_file_payload(path)).hexdigest()
        if payload != spec.payload_sha256:
            raise DataError(
                f"{path} is corrupt or not the canonical {spec.uncompressed_name}: its SHA-256 is "
                f"{payload}, expected {spec.payload_sha256}. Delete it, or replace it with the "
                "canonical file."
            )


def find_file(directory: Path, spec: RemoteFile, *, gunzipped_ok: bool = True) -> Path | None:
    """The file of ``spec`` in ``directory`` (canonical name first, then gunzipped), or None."""
    names = [spec.filename]
    if gunzipped_ok and spec.uncompressed_name:
        names.append(spec.uncompressed_name)
    for n in names:
        candidate = directory / n
        if candidate.is_file():
            return candidate
    return None


def advice(name: str, needed: list[str], searched: list[Path], partial: dict[Path, list[str]]) -> str:
    """The closing part of a "files not found" message: what is needed and where to put it.

    Parameters
    ----------
    name : str
        Data set name.
    needed : list of str
        File names (or alternatives, already joined with " or ").
    searched : list of pathlib.Path
        Directories that were looked in.
    partial : dict
        Directory -> names of the needed files it lacks, for directories that held some of them.
    """
    lines = [f"Files needed for {name}: {', '.join(needed)}."]
    if searched:
        lines.append("Looked in: " + ", ".join(str(d) for d in searched) + ".")
    for directory, missing in partial.items():
        lines.append(f"{directory} holds some of them but lacks {', '.join(missing)}.")
    lines.append(
        f"Put the files in a directory DIR (or in DIR/{name}/) and pass --data-dir DIR "
        f"(data_dir=DIR in Python), or set the environment variable {ENV_VAR}=DIR."
    )
    return " ".join(lines)


def download_file(spec: RemoteFile, directory: Path, *, help_text: str = "") -> Path:
    """Download ``spec`` into ``directory``, verify its SHA-256 and rename it into place.

    Mirrors are tried in order while they answer with HTTP errors; any other network failure stops
    at once.

    Parameters
    ----------
    spec : RemoteFile
        What to fetch.
    directory : pathlib.Path
        Destination directory (created if needed).
    help_text : str
        Appended to network-failure messages (see :func:`advice`).

    Returns
    -------
    pathlib.Path
        ``directory / spec.filename``.

    Raises
    ------
    DataError
        Network failure (with ``help_text``), or a checksum mismatch (the download is deleted and the
        message names the expected and actual SHA-256).
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cache directory {directory}: {exc}. {help_text}") from exc
    final = directory / spec.filename
    http_errors = []
    for url in spec.urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=directory)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            try:
                fetch_url(url, tmp, timeout=FETCH_TIMEOUT_S)
            except urllib.error.HTTPError as exc:
                http_errors.append(f"{url}: HTTP {exc.code} {exc.reason}")
                continue
            except (OSError, http.client.HTTPException) as exc:
                raise DataError(
                    f"cannot download {spec.filename} from {url} ({type(exc).__name__}: {exc}); "
                    f"no network? {help_text}"
                ) from exc
            actual = sha256_file(tmp)
            if actual != spec.sha256:
                raise DataError(
                    f"checksum mismatch for {spec.filename} downloaded from {url}: expected SHA-256 "
                    f"{spec.sha256}, got {actual}; the download was deleted"
                )
            os.replace(tmp, final)
            return final
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(
        f"cannot download {spec.filename}: every mirror failed ({'; '.join(http_errors)}). {help_text}"
    )


def locate_files(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    specs: tuple[RemoteFile, ...] | None = None,
) -> list[Path]:
    """Find (or download) every file of data set ``name``, verified, in catalogue order.

    Parameters
    ----------
    name : str
        A key of :data:`purerigl.data.sources.CATALOGUE`.
    data_dir : path-like, optional
        The user's data directory (else ``$PURERIGL_DATA``).
    download : bool
        Fetch missing files into the cache; when False a missing file is a DataError.
    specs : tuple of RemoteFile, optional
        The files to look for; default ``CATALOGUE[name]``.

    Returns
    -------
    list of pathlib.Path
        One path per spec.
    """
    specs = CATALOGUE[name] if specs is None else specs
    base, _ = user_data_dir(data_dir)
    searched: list[Path] = []
    partial: dict[Path, list[str]] = {}
    if base is not None:
        for directory in (base, base / name):
            found = [find_file(directory, s) for s in specs]
            searched.append(directory)
            if all(found):
                for path, spec in zip(found, specs):
                    verify_file(path, spec)
                return found
            if any(found):
                partial[directory] = [s.filename for s, p in zip(specs, found) if p is None]
    cache = cache_dir(name)
    searched.append(cache)
    paths = [find_file(cache, s, gunzipped_ok=False) for s in specs]
    for path, spec in zip(paths, specs):
        if path is not None:
            verify_file(path, spec)
    missing = [s for s, p in zip(specs, paths) if p is None]
    if not missing:
        return paths
    needed = [s.filename + (f" (or {s.uncompressed_name})" if s.uncompressed_name else "") for s in specs]
    help_text = advice(name, needed, searched, partial)
    if not download:
        raise DataError(f"{name}: files not found and downloading is off (download=False). {help_text}")
    for spec in missing:
        download_file(spec, cache, help_text=help_text)
    return [cache / s.filename for s in specs]
