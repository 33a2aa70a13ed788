"""The data sets of purerigl: :class:`Dataset`, :func:`load_dataset` and :func:`from_arrays`.

Every data set becomes the same thing: float32 inputs of shape (n, n_features), C-contiguous, and
int64 labels in [0, n_classes), split into train / validation / test, with one scalar normalisation.

Names (:data:`DATASETS`):

- ``digits``: the 8x8 handwritten digits bundled with scikit-learn (1,797 samples, 64 features with
  values 0..16, 10 classes), embedded in purerigl (``digits.csv.gz``; see ``DIGITS_LICENSE.txt``),
  so it works offline. File format: gzipped CSV, one sample per line, 64 integer pixel values then
  the class, comma-separated. The test set is a fixed stratified split of 359 samples (20%, per class
  by largest remainder) drawn with :data:`DIGITS_SPLIT_SEED`; it never depends on ``seed``.
- ``mnist``, ``fashion-mnist``: the four standard gzipped IDX files (see :mod:`.idx`); 60,000 /
  10,000 images of 28x28 pixels flattened row-major to 784 values (0..255).
- ``cifar10``: the python-pickle batches (see :mod:`.cifar`); 50,000 / 10,000 images flattened to
  3,072 values (0..255), channel-major.
- ``synthetic``: a seeded teacher-network task (see :mod:`.synthetic`), options ``n_features``,
  ``n_classes``, ``n_train``, ``n_test``, ``hidden`` and ``task_seed``.

Processing, in order: inputs are checked for NaN/Inf; with ``train_subset=n`` only n training samples
are kept (stratified per class, drawn with :data:`SUBSET_SEED`, the same for every ``seed``, so the
seeds of a sweep differ in their initialisation only; a reduced-budget run says so in its
config.json); the validation split (``val_fraction`` of the
training set, stratified per class, drawn with ``seed``) is taken out of the training set; the
normalisation ``mean`` and ``std`` are computed over every value of the remaining training inputs
(one scalar each, in the raw units above) unless ``normalisation=(mean, std)`` is given; then
:math:`x \\leftarrow (x - \\mathrm{mean}) / \\mathrm{std}` is applied to train, validation and test.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
from dataclasses import dataclass
from importlib import resources

import numpy as np

from .cifar import load_cifar10
from .download import locate_files
from .errors import DataError

#: Seed of the ``train_subset`` draw: fixed, so every run seed trains on the same samples.
SUBSET_SEED = 20_261_203
from .idx import read_idx_pair
from .synthetic import DEFAULTS as SYNTHETIC_DEFAULTS
from .synthetic import check_options, make_synthetic

#: Names accepted by :func:`load_dataset`.
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "synthetic")
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}

#: SHA-256 of the embedded ``digits.csv.gz`` (as shipped with scikit-learn 1.9.1).
DIGITS_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
#: Size of the fixed digits test set (20% of 1,797, rounded down).
DIGITS_N_TEST = 359
#: Seed of the fixed digits train/test split.
DIGITS_SPLIT_SEED = 8


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded data set: normalised float32 inputs and int64 labels, split three ways.

    Attributes
    ----------
    name : str
        Canonical data set name.
    x_train, x_val, x_test : numpy.ndarray of float32, shape (n_*, n_features), C-contiguous
        Normalised inputs; ``x_val`` has 0 rows when there is no validation split.
    y_train, y_val, y_test : numpy.ndarray of int64, shape (n_*,)
        Labels in [0, n_classes).
    n_features, n_classes : int
    mean, std : float
        The normalisation applied, :math:`x = (x_{raw} - mean) / std` (store them in a checkpoint
        and pass ``normalisation=(mean, std)`` to reproduce the inputs a model was trained on).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_features: int
    n_classes: int
    mean: float
    std: float

    def __post_init__(self):
        object.__setattr__(self, "n_features", int(self.n_features))
        object.__setattr__(self, "n_classes", int(self.n_classes))
        object.__setattr__(self, "mean", float(self.mean))
        object.__setattr__(self, "std", float(self.std))
        for part in ("train", "val", "test"):
            x, y = getattr(self, "x_" + part), getattr(self, "y_" + part)
            if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2):
                raise DataError(f"Dataset.x_{part} must be a 2-D float32 array")
            if x.shape[1] != self.n_features:
                raise DataError(f"Dataset.x_{part} has {x.shape[1]} features, expected {self.n_features}")
            if not (isinstance(y, np.ndarray) and y.dtype == np.int64 and y.shape == (x.shape[0],)):
                raise DataError(f"Dataset.y_{part} must be int64 of shape ({x.shape[0]},)")
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise DataError(f"Dataset normalisation must be finite with std > 0, got {self.mean}, {self.std}")

    def describe(self) -> dict:
        """Counts and settings, as plain Python values.

        Returns
        -------
        dict
            ``name``, ``n_train``, ``n_val``, ``n_test``, ``n_features``, ``n_classes``, ``mean``,
            ``std`` and ``train_class_counts`` (list of n_classes ints).
        """
        return {
            "name": self.name,
            "n_train": int(self.x_train.shape[0]),
            "n_val": int(self.x_val.shape[0]),
            "n_test": int(self.x_test.shape[0]),
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "mean": self.mean,
            "std": self.std,
            "train_class_counts": np.bincount(self.y_train, minlength=self.n_classes).tolist(),
        }


def load_dataset(
    name: str,
    data_dir=None,
    *,
    seed: int = 0,
    val_fraction: float = 0.0,
    normalisation: tuple[float, float] | None = None,
    train_subset: int | None = None,
    download: bool = True,
    **synthetic_options,
) -> Dataset:
    """Load a data set by name (see the module docstring for the names and the processing).

    Parameters
    ----------
    name : str
        One of :data:`DATASETS` (case-insensitive; ``fashion_mnist`` and ``cifar-10`` also work).
    data_dir : path-like, optional
        Directory holding the files of mnist, fashion-mnist and cifar10 (directly or in a subfolder
        named after the data set); default ``$PURERIGL_DATA``, then the download cache. Ignored by
        ``digits`` and ``synthetic``. See :mod:`purerigl.data.download`.
    seed : int
        Seed of the validation split (only; the test sets never depend on it).
    val_fraction : float in [0, 1)
        Share of the training set held out as validation set (rounded to the nearest count).
    normalisation : (float, float), optional
        ``(mean, std)`` to apply instead of the statistics of the training inputs.
    train_subset : int, optional
        Keep only this many training samples (stratified, drawn with :data:`SUBSET_SEED`), before the
        validation split; at most the size of the training set. ``None``: all of them.
    download : bool
        Allow fetching missing files from the public mirrors.
    **synthetic_options
        Only for ``synthetic``: ``n_features`` (100), ``n_classes`` (10), ``n_train`` (4000),
        ``n_test`` (1000), ``hidden`` (32), ``task_seed`` (0).

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        Unknown name or option, invalid argument, files missing or corrupt, NaN/Inf in the inputs.
    """
    canonical = canonical_name(name)
    _check_split_options(seed, val_fraction, normalisation)
    if synthetic_options and canonical != "synthetic":
        raise DataError(
            f"option(s) {', '.join(sorted(synthetic_options))} apply only to the synthetic data set, "
            f"not to {canonical}"
        )
    n_classes = 10
    if canonical == "digits":
        x_train, y_train, x_test, y_test = load_digits_split()
    elif canonical in ("mnist", "fashion-mnist"):
        paths = locate_files(canonical, data_dir, download=download)
        train_images, train_labels = read_idx_pair(paths[0], paths[1])
        test_images, test_labels = read_idx_pair(paths[2], paths[3])
        x_train = train_images.reshape(train_images.shape[0], -1)  # (n, rows, cols) -> (n, rows*cols)
        x_test = test_images.reshape(test_images.shape[0], -1)
        y_train, y_test = train_labels, test_labels
        if x_train.shape[1] != x_test.shape[1]:
            raise DataError(
                f"{canonical}: training images have {x_train.shape[1]} pixels, test images {x_test.shape[1]}"
            )
    elif canonical == "cifar10":
        x_train, y_train, x_test, y_test = load_cifar10(data_dir, download=download)
    else:
        options = check_options(synthetic_options)
        n_classes = options["n_classes"]
        x_train, y_train, x_test, y_test = make_synthetic(**options)
    return from_arrays(
        canonical,
        x_train,
        y_train,
        x_test,
        y_test,
        n_classes=n_classes,
        seed=seed,
        val_fraction=val_fraction,
        normalisation=normalisation,
        train_subset=train_subset,
    )


def canonical_name(name: str) -> str:
    """The canonical form of a data set name; unknown names raise a DataError listing the valid ones."""
    if not isinstance(name, str):
        raise DataError(f"data set name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def from_arrays(
    name: str,
    x_train,
    y_train,
    x_test,
    y_test,
    *,
    n_classes: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.0,
    normalisation: tuple[float, float] | None = None,
    train_subset: int | None = None,
) -> Dataset:
    """Build a :class:`Dataset` from raw arrays: check, split, normalise.

    Parameters
    ----------
    name : str
        Stored as ``Dataset.name``.
    x_train, x_test : array-like, shape (n, ...)
        Raw inputs; trailing dimensions are flattened. Never modified (copied when needed).
    y_train, y_test : array-like of int, shape (n,)
        Labels in [0, n_classes).
    n_classes : int, optional
        Default: largest label + 1.
    seed, val_fraction, normalisation, train_subset
        As in :func:`load_dataset`.

    Returns
    -------
    Dataset
    """
    _check_split_options(seed, val_fraction, normalisation)
    x_train = _as_features(x_train, "x_train")
    x_test = _as_features(x_test, "x_test")
    if x_train.shape[0] == 0 or x_train.shape[1] == 0:
        raise DataError(f"the training set is empty (x_train has shape {x_train.shape})")
    if x_train.shape[1] != x_test.shape[1]:
        raise DataError(f"x_train has {x_train.shape[1]} features but x_test has {x_test.shape[1]}")
    y_train = _as_labels(y_train, x_train.shape[0], "y_train")
    y_test = _as_labels(y_test, x_test.shape[0], "y_test")
    if n_classes is None:
        n_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise DataError(f"n_classes must be a positive integer, got {n_classes!r}")
    for y, what in ((y_train, "y_train"), (y_test, "y_test")):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise DataError(
                f"{what} holds labels in [{y.min()}, {y.max()}], expected [0, {n_classes})"
            )
    _check_finite(x_train, "x_train")
    _check_finite(x_test, "x_test")

    if train_subset is not None:
        x_train, y_train = _training_subset(x_train, y_train, train_subset)
    n_features = x_train.shape[1]
    x_val = np.empty((0, n_features), dtype=np.float32)
    y_val = np.empty(0, dtype=np.int64)
    if val_fraction > 0:
        n_train = x_train.shape[0]
        n_val = int(math.floor(val_fraction * n_train + 0.5))
        if not 1 <= n_val < n_train:
            raise DataError(
                f"val_fraction={val_fraction} of {n_train} training samples gives {n_val} validation "
                f"samples; it must leave at least one sample on each side"
            )
        keep, take = stratified_split(y_train, n_val, np.random.default_rng(seed))
        x_val, y_val = x_train[take], y_train[take]
        x_train, y_train = x_train[keep], y_train[keep]

    if normalisation is None:
        mean, std = scalar_moments(x_train)
        if not std > 0:
            raise DataError(
                f"the training inputs of {name} are constant ({mean}); their standard deviation is 0. "
                "Pass normalisation=(mean, std) explicitly."
            )
    else:
        mean, std = float(normalisation[0]), float(normalisation[1])
    for x in (x_train, x_val, x_test):
        x -= np.float32(mean)
        x /= np.float32(std)
    return Dataset(name, x_train, y_train, x_val, y_val, x_test, y_test, n_features, n_classes, mean, std)


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The embedded digits with their fixed train/test split (raw values 0..16).

    Returns
    -------
    x_train : numpy.ndarray of float32, shape (1438, 64)
    y_train : numpy.ndarray of int64, shape (1438,)
    x_test : numpy.ndarray of float32, shape (359, 64)
    y_test : numpy.ndarray of int64, shape (359,)
    """
    x, y = load_digits_raw()
    keep, take = stratified_split(y, DIGITS_N_TEST, np.random.default_rng(DIGITS_SPLIT_SEED))
    return x[keep], y[keep], x[take], y[take]


def load_digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 embedded digits: x float32 (1797, 64), y int64 (1797,), in file order."""
    try:
        raw = resources.files(__package__).joinpath("digits.csv.gz").read_bytes()
    except OSError as exc:
        raise DataError(f"the embedded digits.csv.gz is missing ({exc}); reinstall purerigl") from exc
    actual = hashlib.sha256(raw).hexdigest()
    if actual != DIGITS_SHA256:
        raise DataError(
            f"the embedded digits.csv.gz is damaged: SHA-256 {actual}, expected {DIGITS_SHA256}; "
            "reinstall purerigl"
        )
    table = np.loadtxt(io.StringIO(gzip.decompress(raw).decode("ascii")), delimiter=",")
    if table.shape != (1797, 65):
        raise DataError(f"the embedded digits table has shape {table.shape}, expected (1797, 65)")
    return table[:, :64].astype(np.float32), table[:, 64].astype(np.int64)


def stratified_split(
    y: np.ndarray, n_take: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, take) with ``n_take`` taken, each class in proportion.

    Class c (with :math:`n_c` of the n samples) gives :math:`\\lfloor n_{take} n_c / n \\rfloor`
    samples, and the remaining ones go to the classes with the largest fractional parts (lower class
    first on ties); within a class the samples are ``rng.permutation`` of its indices, classes
    visited in increasing order.

    Returns
    -------
    keep, take : numpy.ndarray of int64
        Sorted, disjoint, together all of ``range(len(y))``.
    """
    n = y.shape[0]
    classes, counts = np.unique(y, return_counts=True)
    quota = n_take * counts / n
    base = np.floor(quota).astype(np.int64)
    extra = n_take - int(base.sum())
    base[np.argsort(-(quota - base), kind="stable")[:extra]] += 1
    take = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, base)]
        + [np.empty(0, dtype=np.int64)]
    )
    mask = np.zeros(n, dtype=bool)
    mask[take] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _training_subset(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` training samples kept by ``train_subset``: stratified, drawn with :data:`SUBSET_SEED`,
    in their original order."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"train_subset must be a positive integer, got {n!r}")
    if n > y.shape[0]:
        raise DataError(f"train_subset={n} is more than the {y.shape[0]} training samples")
    if n == y.shape[0]:
        return x, y
    _, take = stratified_split(y, int(n), np.random.default_rng(SUBSET_SEED))
    return x[take], y[take]


def scalar_moments(x: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation of every value of ``x``, in float64.

    Computed in row chunks, so the extra memory is about 8 MiB whatever the size of ``x``.
    """
    total = x.size
    mean = float(np.sum(x, dtype=np.float64)) / total
    rows = max(1, (1 << 20) // max(1, x.shape[1]))
    sq = 0.0
    for start in range(0, x.shape[0], rows):
        chunk = x[start : start + rows].astype(np.float64)
        chunk -= mean
        sq += float(np.einsum("ij,ij->", chunk, chunk))
    return mean, math.sqrt(sq / total)


def _check_split_options(seed, val_fraction, normalisation) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float, np.floating, np.integer))
        or not 0.0 <= float(val_fraction) < 1.0
    ):
        raise DataError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if normalisation is not None:
        try:
            mean, std = (float(v) for v in normalisation)
        except (TypeError, ValueError):
            raise DataError(
                f"normalisation must be None or a pair (mean, std) of numbers, got {normalisation!r}"
            ) from None
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise DataError(
                f"normalisation must have a finite mean and a finite std > 0, got ({mean}, {std})"
            )


def _as_features(x, what: str) -> np.ndarray:
    """x as a C-contiguous float32 array of shape (n, features), never sharing memory with x."""
    try:
        out = np.asarray(x, dtype=np.float32, order="C")
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} must be a numeric array ({exc})") from exc
    if out.ndim < 2:
        raise DataError(f"{what} must have shape (n, n_features), got {out.shape}")
    if isinstance(x, np.ndarray) and np.may_share_memory(out, x):
        out = out.copy()
    return out.reshape(out.shape[0], -1)  # (n, ...) -> (n, n_features)


def _as_labels(y, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise DataError(f"{what} must have shape ({n},), got {y.shape}")
    if y.size and y.dtype.kind not in "iu":
        raise DataError(f"{what} must hold integers, got dtype {y.dtype}")
    return y.astype(np.int64)


def _check_finite(x: np.ndarray, what: str) -> None:
    """Raise a DataError when x holds NaN or Inf (quoting how many and the first position)."""
    # The float64 sum of finite float32 values cannot overflow, so it is finite iff every value is.
    if math.isfinite(float(np.sum(x, dtype=np.float64))):
        return
    bad = ~np.isfinite(x)
    first = np.argwhere(bad)[0]
    raise DataError(
        f"{what} holds {int(bad.sum())} NaN or Inf values (first at sample {first[0]}, "
        f"feature {first[1]}); clean the inputs first"
    )


__all__ = [
    "DATASETS",
    "DIGITS_N_TEST",
    "DIGITS_SPLIT_SEED",
    "Dataset",
    "SYNTHETIC_DEFAULTS",
    "canonical_name",
    "from_arrays",
    "load_dataset",
    "load_digits_split",
    "stratified_split",
]
