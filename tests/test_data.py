"""Tests of purerigl.data: IDX files, lookup and download, every data set, splits, normalisation, batches.

No test uses the network: an autouse fixture replaces ``purerigl.data.download.fetch_url`` with a
function that fails, points the download cache (``XDG_CACHE_HOME``) into ``tmp_path`` and clears
``PURERIGL_DATA``. Tests that exercise downloads install a :class:`FakeNetwork` instead.
"""

from __future__ import annotations

import gzip
import pickle
import tracemalloc
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import (
    CIFAR_BATCHES,
    MNIST_NAMES,
    FakeNetwork,
    cifar_archive,
    cifar_batch_bytes,
    cifar_files,
    mnist_like_files,
    sha256,
    specs_for,
    write_files,
)

from purerigl.data import DATASETS, DataError, Dataset, from_arrays, iterate_batches, load_dataset
from purerigl.data import download as download_mod
from purerigl.data import sources
from purerigl.data.datasets import load_digits_split, stratified_split
from purerigl.data.idx import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    encode_idx,
    read_idx,
    read_idx_pair,
    write_idx,
)
from purerigl.data.sources import RemoteFile
from purerigl.data.synthetic import make_synthetic
from purerigl.errors import PureriglError

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def _no_network(url, dest, *, timeout=20.0):
    raise AssertionError(f"a test tried to use the network: {url}")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No network, a private download cache, no PURERIGL_DATA."""
    monkeypatch.setattr(download_mod, "fetch_url", _no_network)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("PURERIGL_DATA", raising=False)
    return tmp_path


@pytest.fixture
def tiny_mnist(monkeypatch):
    """A tiny MNIST-like set (20 train, 10 test, 4x4) registered as the catalogue's mnist files."""
    files = mnist_like_files(20, 10)
    monkeypatch.setitem(sources.CATALOGUE, "mnist", specs_for(files))
    return files


def cache_of(tmp_path, name):
    return tmp_path / "xdg-cache" / "purerigl" / name


# ----------------------------------------------------------------------------------------------------
# IDX format


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(7, dtype=np.uint8),
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.zeros((0, 5, 5), dtype=np.uint8),
        np.arange(-6, 6, dtype=np.int16).reshape(3, 4),
        np.linspace(-1, 1, 10, dtype=np.float32).reshape(5, 2),
        np.array([1.5, -2.25], dtype=np.float64),
        np.array([-7, 2**30], dtype=np.int32),
    ],
    ids=lambda a: f"{a.dtype}{a.shape}" if isinstance(a, np.ndarray) else str(a),
)
def test_idx_round_trip(tmp_path, array, compress):
    path = write_idx(tmp_path / ("a.idx.gz" if compress else "a.idx"), array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


def test_idx_header_is_big_endian_with_mnist_magic(tmp_path):
    images = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    data = encode_idx(images)
    assert int.from_bytes(data[:4], "big") == IDX_IMAGES_MAGIC == 0x00000803
    assert [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(3)] == [2, 3, 5]
    assert data[16:] == images.tobytes()
    assert int.from_bytes(encode_idx(np.zeros(3, np.uint8))[:4], "big") == IDX_LABELS_MAGIC


def test_idx_wrong_magic_quotes_both_in_hex(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x56\x78" + bytes(20))
    with pytest.raises(DataError, match="0x12345678.*expected 0x00000803"):
        read_idx(path, dtype=np.uint8, ndim=3)


def test_idx_wrong_type_quotes_magic(tmp_path):
    path = write_idx(tmp_path / "int32.idx", np.zeros((2, 2, 2), dtype=np.int32))
    expected = r"int32 items \(magic number 0x00000C03\), expected uint8 \(magic number 0x00000803\)"
    with pytest.raises(DataError, match=expected):
        read_idx(path, dtype=np.uint8, ndim=3)


def test_idx_wrong_number_of_dimensions(tmp_path):
    path = write_idx(tmp_path / "flat.idx.gz", np.zeros((4, 9), dtype=np.uint8))
    expected = r"has 2 dimensions \(magic number 0x00000802\), expected 3 \(magic number 0x00000803\)"
    with pytest.raises(DataError, match=expected):
        read_idx(path, dtype=np.uint8, ndim=3)
    write_idx(tmp_path / "img.gz", np.zeros((4, 3, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"has 2 dimensions .* expected 1 \(magic number 0x00000801\)"):
        read_idx_pair(tmp_path / "img.gz", tmp_path / "flat.idx.gz")


def test_idx_truncated_payload_and_header(tmp_path):
    data = encode_idx(np.zeros((3, 4, 4), dtype=np.uint8))  # 16 header + 48 payload bytes
    (tmp_path / "short.gz").write_bytes(gzip.compress(data[:-5]))
    expected = r"truncated IDX file: expected 48 bytes of payload for dimensions \(3, 4, 4\), got 43"
    with pytest.raises(DataError, match=expected):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "header").write_bytes(data[:10])
    with pytest.raises(DataError, match="truncated IDX header: expected 16 bytes.*got 10"):
        read_idx(tmp_path / "header")
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "tiny")


def test_idx_trailing_bytes_are_rejected(tmp_path):
    (tmp_path / "long").write_bytes(encode_idx(np.zeros(3, dtype=np.uint8)) + b"\x00\x01")
    with pytest.raises(DataError, match="2 trailing bytes"):
        read_idx(tmp_path / "long")


def test_idx_corrupt_gzip(tmp_path):
    good = bytearray(gzip.compress(encode_idx(np.arange(200, dtype=np.uint8) % 7), mtime=0))
    bad = good.copy()
    bad[len(bad) // 2] ^= 0xFF
    (tmp_path / "flipped.gz").write_bytes(bytes(bad))
    (tmp_path / "cut.gz").write_bytes(bytes(good[: len(good) // 2]))
    (tmp_path / "plain.gz").write_bytes(b"this is not gzip at all")
    for name in ("flipped.gz", "cut.gz", "plain.gz"):
        with pytest.raises(DataError, match="corrupt gzip"):
            read_idx(tmp_path / name)


def test_idx_image_label_count_mismatch(tmp_path):
    write_idx(tmp_path / "img.gz", np.zeros((5, 2, 2), dtype=np.uint8))
    write_idx(tmp_path / "lab.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError, match="5 images but .* 4 labels"):
        read_idx_pair(tmp_path / "img.gz", tmp_path / "lab.gz")


def test_data_error_is_a_purerigl_error_and_a_value_error():
    assert issubclass(DataError, PureriglError) and issubclass(DataError, ValueError)


# ----------------------------------------------------------------------------------------------------
# Lookup order and checksums of user-provided files


def test_lookup_argument_wins_over_environment(tmp_path, tiny_mnist, monkeypatch):
    other = mnist_like_files(30, 10, seed=1)
    arg_dir = write_files(tmp_path / "arg", tiny_mnist)
    env_dir = write_files(tmp_path / "env", other)
    # both sets must pass verification: register both checksums by swapping the catalogue per call
    monkeypatch.setenv("PURERIGL_DATA", str(env_dir))
    assert load_dataset("mnist", arg_dir).x_train.shape == (20, 16)
    monkeypatch.setitem(sources.CATALOGUE, "mnist", specs_for(other))
    assert load_dataset("mnist").x_train.shape == (30, 16)


def test_lookup_environment_wins_over_download_and_subfolder_form(tmp_path, tiny_mnist, monkeypatch):
    write_files(tmp_path / "root" / "mnist", tiny_mnist)  # DIR/mnist/ form
    monkeypatch.setenv("PURERIGL_DATA", str(tmp_path / "root"))
    ds = load_dataset("mnist")  # the autouse fixture makes any download fail loudly
    assert ds.x_train.shape == (20, 16) and ds.x_test.shape == (10, 16)
    assert ds.n_classes == 10 and ds.y_train.dtype == np.int64


def test_lookup_accepts_gunzipped_files(tmp_path, monkeypatch):
    files = mnist_like_files(12, 6)
    plain = {n[:-3]: gzip.decompress(b) for n, b in files.items()}
    specs = tuple(
        RemoteFile(n, sha256(b), ("https://x.invalid/" + n,), sha256(gzip.decompress(b)))
        for n, b in files.items()
    )
    monkeypatch.setitem(sources.CATALOGUE, "mnist", specs)
    ds = load_dataset("mnist", write_files(tmp_path / "plain", plain))
    assert ds.x_train.shape == (12, 16)
    # a re-compressed copy (different gzip bytes, same content) is accepted through the payload sum
    recompressed = {
        n: gzip.compress(gzip.decompress(b), compresslevel=1, mtime=123) for n, b in files.items()
    }
    assert all(recompressed[n] != files[n] for n in files)
    assert load_dataset("mnist", write_files(tmp_path / "re", recompressed)).x_test.shape == (6, 16)


def test_user_file_with_wrong_checksum_is_rejected(tmp_path):
    # canonical names, real MNIST checksums, but tiny contents: not the canonical files
    write_files(tmp_path / "d", mnist_like_files(5, 5))
    expected = "corrupt or not the canonical train-images-idx3-ubyte.gz.*expected 440fcabf"
    with pytest.raises(DataError, match=expected):
        load_dataset("mnist", tmp_path / "d")


def test_missing_data_dir_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nope")
    monkeypatch.setenv("PURERIGL_DATA", str(tmp_path / "nope-either"))
    with pytest.raises(DataError, match="PURERIGL_DATA"):
        load_dataset("fashion-mnist")


def test_download_false_names_files_and_places(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", tmp_path / "empty", download=False)
    message = str(info.value)
    for name in MNIST_NAMES:
        assert name in message
    assert "--data-dir DIR" in message and "PURERIGL_DATA" in message and "fashion-mnist/" in message


def test_partial_directory_is_reported(tmp_path, tiny_mnist):
    write_files(tmp_path / "part", {n: tiny_mnist[n] for n in MNIST_NAMES[:2]})
    with pytest.raises(DataError, match="holds some of them but lacks t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path / "part", download=False)


# ----------------------------------------------------------------------------------------------------
# Downloads (through a fake network only)


def test_download_success_lands_in_cache_and_is_reused(tmp_path, tiny_mnist, monkeypatch):
    specs = sources.CATALOGUE["mnist"]
    net = FakeNetwork({s.urls[0]: tiny_mnist[s.filename] for s in specs})
    monkeypatch.setattr(download_mod, "fetch_url", net)
    ds = load_dataset("mnist")
    assert ds.x_train.shape == (20, 16) and len(net.calls) == 4
    cache = cache_of(tmp_path, "mnist")
    assert sorted(p.name for p in cache.iterdir()) == sorted(MNIST_NAMES)  # no temporary files left
    load_dataset("mnist")
    assert len(net.calls) == 4  # served from the cache the second time


def test_download_tries_next_mirror_on_http_error(tmp_path, tiny_mnist, monkeypatch):
    specs = sources.CATALOGUE["mnist"]
    responses = {}
    for s in specs:
        responses[s.urls[0]] = urllib.error.HTTPError(s.urls[0], 404, "Not Found", {}, None)
        responses[s.urls[1]] = tiny_mnist[s.filename]
    monkeypatch.setattr(download_mod, "fetch_url", FakeNetwork(responses))
    assert load_dataset("mnist").x_test.shape == (10, 16)


def test_download_checksum_mismatch_leaves_no_file(tmp_path, tiny_mnist, monkeypatch):
    specs = sources.CATALOGUE["mnist"]
    net = FakeNetwork({u: b"tampered bytes" for s in specs for u in s.urls})
    monkeypatch.setattr(download_mod, "fetch_url", net)
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    message = str(info.value)
    assert specs[0].sha256 in message and sha256(b"tampered bytes") in message
    assert "deleted" in message and len(net.calls) == 1
    cache = cache_of(tmp_path, "mnist")
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize(
    "failure",
    [
        urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
        TimeoutError("timed out"),
        OSError(101, "Network is unreachable"),
    ],
    ids=["urlerror", "timeout", "oserror"],
)
def test_offline_fails_at_once_with_advice(tmp_path, tiny_mnist, monkeypatch, failure):
    net = FakeNetwork({u: failure for s in sources.CATALOGUE["mnist"] for u in s.urls})
    monkeypatch.setattr(download_mod, "fetch_url", net)
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    message = str(info.value)
    assert len(net.calls) == 1  # no retries, no other mirrors, no other files
    for name in MNIST_NAMES:
        assert name in message
    assert "--data-dir DIR" in message and "PURERIGL_DATA=DIR" in message and "mnist/" in message
    assert list(cache_of(tmp_path, "mnist").iterdir()) == []


def test_corrupt_cached_file_is_reported(tmp_path, tiny_mnist):
    cache = write_files(cache_of(tmp_path, "mnist"), tiny_mnist)
    (cache / MNIST_NAMES[1]).write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt or not the canonical train-labels"):
        load_dataset("mnist")


# ----------------------------------------------------------------------------------------------------
# CIFAR-10


@pytest.mark.parametrize("layout", ["direct", "batches-dir", "named-subfolder"])
def test_cifar_from_batch_files(tmp_path, layout):
    where = {
        "direct": tmp_path / "d",
        "batches-dir": tmp_path / "d" / "cifar-10-batches-py",
        "named-subfolder": tmp_path / "d" / "cifar10" / "cifar-10-batches-py",
    }[layout]
    write_files(where, cifar_files(4))
    ds = load_dataset("cifar10", tmp_path / "d")
    assert ds.x_train.shape == (20, 3072) and ds.x_test.shape == (4, 3072)
    assert ds.x_train.dtype == np.float32 and ds.x_train.flags.c_contiguous
    expected = pickle.loads(cifar_batch_bytes(4, seed=0), encoding="bytes")
    np.testing.assert_allclose(ds.x_train[:4] * ds.std + ds.mean, expected[b"data"], atol=1e-3)
    np.testing.assert_array_equal(ds.y_train[:4], expected[b"labels"])


def test_cifar_from_user_archive_and_download(tmp_path, monkeypatch):
    archive = cifar_archive(cifar_files(3), extra={"cifar-10-batches-py/readme.html": b"<html>"})
    spec = RemoteFile("cifar-10-python.tar.gz", sha256(archive), ("https://toronto.invalid/c.tgz",))
    monkeypatch.setitem(sources.CATALOGUE, "cifar10", (spec,))
    write_files(tmp_path / "user", {"cifar-10-python.tar.gz": archive})
    assert load_dataset("cifar10", tmp_path / "user").x_train.shape == (15, 3072)

    net = FakeNetwork({spec.urls[0]: archive})
    monkeypatch.setattr(download_mod, "fetch_url", net)
    ds = load_dataset("cifar10")
    assert ds.x_test.shape == (3, 3072) and len(net.calls) == 1
    cache = cache_of(tmp_path, "cifar10")
    assert [p.name for p in cache.iterdir()] == ["cifar-10-batches-py"]  # archive removed after unpacking
    assert sorted(p.name for p in (cache / "cifar-10-batches-py").iterdir()) == sorted(CIFAR_BATCHES)
    load_dataset("cifar10")
    assert len(net.calls) == 1


def test_cifar_archive_members_outside_the_batch_folder_are_never_written(tmp_path, monkeypatch):
    archive = cifar_archive(cifar_files(2), extra={"../escaped": b"x", "/abs/evil": b"y"})
    spec = RemoteFile("cifar-10-python.tar.gz", sha256(archive), ("https://toronto.invalid/c.tgz",))
    monkeypatch.setitem(sources.CATALOGUE, "cifar10", (spec,))
    monkeypatch.setattr(download_mod, "fetch_url", FakeNetwork({spec.urls[0]: archive}))
    load_dataset("cifar10")
    assert not (tmp_path / "xdg-cache" / "purerigl" / "escaped").exists()
    assert not (cache_of(tmp_path, "cifar10").parent / "escaped").exists()


def test_cifar_bad_archive_checksum(tmp_path):
    write_files(tmp_path / "u", {"cifar-10-python.tar.gz": cifar_archive(cifar_files(1))})
    with pytest.raises(DataError, match="corrupt or not the canonical cifar-10-python.tar.gz.*6d958be0"):
        load_dataset("cifar10", tmp_path / "u")


def test_cifar_pickle_with_foreign_globals_is_refused(tmp_path):
    files = cifar_files(2)
    files["data_batch_3"] = pickle.dumps({b"data": print, b"labels": []})  # references builtins.print
    write_files(tmp_path / "u", files)
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_dataset("cifar10", tmp_path / "u")


def test_cifar_batch_count_mismatch(tmp_path):
    files = cifar_files(2)
    bad = pickle.loads(files["test_batch"], encoding="bytes")
    bad[b"labels"] = bad[b"labels"][:1]
    files["test_batch"] = pickle.dumps(bad, protocol=5)
    write_files(tmp_path / "u", files)
    with pytest.raises(DataError, match="count mismatch.*2 images, 1 labels"):
        load_dataset("cifar10", tmp_path / "u")


# ----------------------------------------------------------------------------------------------------
# digits (embedded) and the name registry


def test_digits_loads_offline_with_fixed_split():
    a = load_dataset("digits", download=False)
    b = load_dataset("digits", seed=123, val_fraction=0.1)
    assert (a.x_train.shape, a.x_test.shape) == ((1438, 64), (359, 64))
    assert a.x_train.shape[0] + a.x_test.shape[0] == 1797
    assert a.n_classes == 10 and set(np.unique(a.y_test)) == set(range(10))
    np.testing.assert_array_equal(a.y_test, b.y_test)
    np.testing.assert_array_equal(a.x_test * a.std + a.mean, b.x_test * b.std + b.mean)
    assert b.x_train.shape[0] + b.x_val.shape[0] == 1438
    # stratified: every class holds 20% +- 1 of its samples in the test set
    _, y_tr, _, y_te = load_digits_split()
    counts = np.bincount(np.concatenate([y_tr, y_te]))
    assert np.all(np.abs(np.bincount(y_te) - 0.2 * counts) <= 1)


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError) as info:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(info.value)
    assert load_dataset("DIGITS").name == "digits"


def test_synthetic_options_only_for_synthetic():
    with pytest.raises(DataError, match="only to the synthetic"):
        load_dataset("digits", n_features=3)
    with pytest.raises(DataError, match="unknown synthetic option.*widht"):
        load_dataset("synthetic", widht=3)
    with pytest.raises(DataError, match="n_classes must be >= 2"):
        load_dataset("synthetic", n_classes=1)


# ----------------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_is_deterministic_and_shaped():
    a = load_dataset("synthetic", n_features=37, n_classes=5, n_train=300, n_test=50)
    b = load_dataset("synthetic", n_features=37, n_classes=5, n_train=300, n_test=50)
    c = load_dataset("synthetic", n_features=37, n_classes=5, n_train=300, n_test=50, task_seed=1)
    assert a.x_train.shape == (300, 37) and a.x_test.shape == (50, 37) and a.n_classes == 5
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    # the test set does not depend on n_train
    _, _, x_te, y_te = make_synthetic(n_features=37, n_classes=5, n_train=10, n_test=50)
    _, _, x_te2, y_te2 = make_synthetic(n_features=37, n_classes=5, n_train=300, n_test=50)
    np.testing.assert_array_equal(x_te, x_te2)
    np.testing.assert_array_equal(y_te, y_te2)


@pytest.mark.parametrize("n_features,n_classes", [(100, 10), (20, 3), (5000, 10), (50, 50)])
def test_synthetic_classes_are_balanced(n_features, n_classes):
    _, y, _, _ = make_synthetic(n_features=n_features, n_classes=n_classes, n_train=8000, n_test=1)
    freq = np.bincount(y, minlength=n_classes) / y.size * n_classes
    assert freq.min() > 0.4 and freq.max() < 2.0, freq


def test_synthetic_memory_is_linear_in_width():
    # O(n * d + d * hidden): with d = 50,000 the inputs take n * d * 4 bytes and the teacher's first
    # layer 32 * d * 4 bytes; nothing of size n_calibration * d may appear
    d, n_train, n_test = 50_000, 16, 4
    tracemalloc.start()
    try:
        x_tr, y_tr, x_te, _ = make_synthetic(n_features=d, n_train=n_train, n_test=n_test)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    budget = 4 * d * (n_train + n_test + 32)
    assert x_tr.shape == (n_train, d) and x_te.shape == (n_test, d) and y_tr.shape == (n_train,)
    assert peak < 2.5 * budget, (peak, budget)


# ----------------------------------------------------------------------------------------------------
# from_arrays: normalisation, validation split, NaN/Inf


def _raw(n=200, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, (n, d)).astype(np.float32)
    x[:, 0] = np.arange(n)  # sample id, to follow rows through splits
    y = np.arange(n) % 4
    return x, y


def _ids(ds, x):
    return np.rint(x[:, 0] * ds.std + ds.mean).astype(int)


def test_normalisation_uses_training_inputs_only():
    x, y = _raw()
    x_test = np.full((10, 6), 1000.0, dtype=np.float32)
    ds = from_arrays("t", x, y, x_test, np.zeros(10, int), val_fraction=0.25, seed=3)
    raw_train = x[_ids(ds, ds.x_train)]
    assert ds.mean == pytest.approx(float(raw_train.astype(np.float64).mean()), rel=1e-9)
    assert ds.std == pytest.approx(float(raw_train.astype(np.float64).std()), rel=1e-9)
    assert abs(ds.mean - float(x.astype(np.float64).mean())) > 1e-6  # the validation rows are excluded
    assert abs(float(ds.x_train.mean())) < 1e-5 and float(ds.x_train.std()) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(ds.x_test, (1000.0 - ds.mean) / ds.std, rtol=1e-6)


def test_normalisation_override():
    x, y = _raw()
    ds = from_arrays("t", x, y, x[:5], y[:5], normalisation=(2.0, 4.0))
    assert (ds.mean, ds.std) == (2.0, 4.0)
    np.testing.assert_allclose(ds.x_test, (x[:5] - 2.0) / 4.0, rtol=1e-6)
    d1 = load_dataset("digits")
    d2 = load_dataset("digits", val_fraction=0.3, normalisation=(d1.mean, d1.std))
    np.testing.assert_array_equal(d1.x_test, d2.x_test)
    for bad in [(0.0, 0.0), (float("nan"), 1.0), (0.0, float("inf")), (1.0,), "x"]:
        with pytest.raises(DataError, match="normalisation"):
            from_arrays("t", x, y, x, y, normalisation=bad)


def test_inputs_are_not_modified_and_layout_is_right():
    x, y = _raw()
    before = x.copy()
    ds = from_arrays("t", x, y, x, y)
    np.testing.assert_array_equal(x, before)
    for arr in (ds.x_train, ds.x_val, ds.x_test):
        assert arr.dtype == np.float32 and arr.flags.c_contiguous
    assert ds.x_val.shape == (0, 6) and ds.y_val.shape == (0,) and ds.y_val.dtype == np.int64
    assert ds.describe()["n_val"] == 0 and ds.describe()["train_class_counts"] == [50, 50, 50, 50]
    assert isinstance(ds, Dataset) and isinstance(ds.mean, float)


def test_validation_split_sizes_disjoint_stratified_and_seeded():
    x, y = _raw(n=200)
    ds = from_arrays("t", x, y, x[:3], y[:3], val_fraction=0.2, seed=7)
    assert ds.x_val.shape == (40, 6) and ds.x_train.shape == (160, 6)
    train_ids, val_ids = _ids(ds, ds.x_train), _ids(ds, ds.x_val)
    assert set(train_ids).isdisjoint(val_ids) and set(train_ids) | set(val_ids) == set(range(200))
    np.testing.assert_array_equal(ds.y_val, y[val_ids])
    assert np.bincount(ds.y_val).tolist() == [10, 10, 10, 10]
    again = from_arrays("t", x, y, x[:3], y[:3], val_fraction=0.2, seed=7)
    other = from_arrays("t", x, y, x[:3], y[:3], val_fraction=0.2, seed=8)
    np.testing.assert_array_equal(_ids(again, again.x_val), val_ids)
    assert set(_ids(other, other.x_val)) != set(val_ids)
    for bad in (1.0, -0.1, 0.001, float("nan"), True):
        with pytest.raises(DataError, match="val_fraction"):
            from_arrays("t", x, y, x, y, val_fraction=bad)


def test_stratified_split_exact_count_with_uneven_classes():
    y = np.array([0] * 7 + [1] * 3 + [2] * 1)
    keep, take = stratified_split(y, 4, np.random.default_rng(0))
    assert len(take) == 4 and len(keep) == 7 and not set(keep) & set(take)
    assert np.bincount(y[take], minlength=3).tolist() == [3, 1, 0]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x_train", "x_test"])
def test_nan_and_inf_are_rejected(value, where):
    x, y = _raw(n=20)
    x_test = x.copy()
    (x if where == "x_train" else x_test)[3, 2] = value
    with pytest.raises(DataError, match=f"{where} holds 1 NaN or Inf.*sample 3, feature 2"):
        from_arrays("t", x, y, x_test, y)


def test_bad_labels_and_constant_inputs():
    x, y = _raw(n=20)
    with pytest.raises(DataError, match="labels in"):
        from_arrays("t", x, y, x, y, n_classes=3)
    with pytest.raises(DataError, match="integers"):
        from_arrays("t", x, y.astype(float), x, y)
    with pytest.raises(DataError, match="standard deviation is 0"):
        from_arrays("t", np.ones((4, 2)), [0, 1, 0, 1], np.ones((1, 2)), [0])


# ----------------------------------------------------------------------------------------------------
# iterate_batches


def test_batches_cover_every_sample_once_and_shuffle_by_seed():
    x = np.arange(23 * 3, dtype=np.float64).reshape(23, 3)
    y = np.arange(23)
    plain = list(iterate_batches(x, y, 5))
    assert [len(b[1]) for b in plain] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in plain]), y)
    shuffled = list(iterate_batches(x, y, 5, rng=np.random.default_rng(1)))
    order = np.concatenate([b[1] for b in shuffled])
    assert sorted(order.tolist()) == y.tolist() and not np.array_equal(order, y)
    again = np.concatenate([b[1] for b in iterate_batches(x, y, 5, rng=np.random.default_rng(1))])
    other = np.concatenate([b[1] for b in iterate_batches(x, y, 5, rng=np.random.default_rng(2))])
    np.testing.assert_array_equal(order, again)
    assert not np.array_equal(order, other)
    for xb, yb in shuffled:
        assert xb.dtype == np.float32 and xb.flags.c_contiguous and yb.dtype == np.int64
        np.testing.assert_array_equal(xb, x[yb])


def test_batches_drop_last_and_errors():
    x, y = np.zeros((10, 2), np.float32), np.arange(10)
    assert [len(b[1]) for b in iterate_batches(x, y, 4, drop_last=True)] == [4, 4]
    assert [len(b[1]) for b in iterate_batches(x, y, 5, drop_last=True)] == [5, 5]
    assert [len(b[1]) for b in iterate_batches(x, y, 11)] == [10]
    assert list(iterate_batches(x, y, 11, drop_last=True)) == []
    for bad in (0, -1, 2.5, True):
        with pytest.raises(DataError, match="batch_size"):
            iterate_batches(x, y, bad)  # raised at the call, not at the first batch
    with pytest.raises(DataError, match="same number of samples"):
        iterate_batches(x, y[:9], 2)
    with pytest.raises(DataError, match="Generator"):
        iterate_batches(x, y, 2, rng=42)


# ----------------------------------------------------------------------------------------------------
# the real MNIST, where this machine has it


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST not at {SHARED_MNIST}")
def test_real_mnist_from_shared_directory():
    ds = load_dataset("mnist", SHARED_MNIST, download=False)
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert np.bincount(ds.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert ds.mean == pytest.approx(33.318, abs=1e-3) and ds.std == pytest.approx(78.567, abs=1e-3)


def test_train_subset_is_stratified_fixed_across_seeds_and_leaves_the_test_set_whole():
    full = load_dataset("digits")
    a = load_dataset("digits", seed=0, train_subset=300)
    b = load_dataset("digits", seed=7, train_subset=300)
    assert a.x_train.shape == (300, 64) and a.x_test.shape == full.x_test.shape
    np.testing.assert_array_equal(a.y_train, b.y_train)  # the draw does not follow the run seed
    counts, full_counts = np.bincount(a.y_train, minlength=10), np.bincount(full.y_train, minlength=10)
    assert np.all(np.abs(counts - 300 * full_counts / full_counts.sum()) < 1)  # each class in proportion
    # every kept sample is a training sample of the full set (same raw values, up to the normalisation)
    raw_kept = a.x_train * np.float32(a.std) + np.float32(a.mean)
    raw_full = full.x_train * np.float32(full.std) + np.float32(full.mean)
    full_rows = {tuple(np.rint(row).astype(int)) for row in raw_full}
    assert all(tuple(np.rint(row).astype(int)) in full_rows for row in raw_kept)


def test_train_subset_then_validation_split_and_bad_values():
    data = load_dataset("digits", train_subset=200, val_fraction=0.25)
    assert data.x_train.shape[0] == 150 and data.x_val.shape[0] == 50
    assert load_dataset("digits", train_subset=1438).x_train.shape[0] == 1438  # all of them: no draw
    for bad in (0, -3, True, 2.5):
        with pytest.raises(DataError, match="train_subset must be a positive integer"):
            load_dataset("digits", train_subset=bad)
    with pytest.raises(DataError, match="more than the 1438 training samples"):
        load_dataset("digits", train_subset=1439)
