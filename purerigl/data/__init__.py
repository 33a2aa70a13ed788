"""Data sets for purerigl: loading, splitting, normalising and batching. Imports only errors (it
knows nothing of the formats or the models).

Public API:

- :data:`DATASETS`: the names :func:`load_dataset` accepts (``digits``, ``mnist``,
  ``fashion-mnist``, ``cifar10``, ``synthetic``);
- :func:`load_dataset`: a :class:`Dataset` by name (embedded digits, files on disk or downloaded,
  or the synthetic teacher task);
- :func:`from_arrays`: a :class:`Dataset` from your own arrays, with the same checks, split and
  normalisation;
- :func:`iterate_batches`: one epoch of mini-batches;
- :class:`DataError`: every error of this package.

Modules: :mod:`.datasets` (the Dataset and the loaders), :mod:`.idx` (IDX reader/writer),
:mod:`.cifar` (CIFAR-10 batches), :mod:`.synthetic` (teacher task), :mod:`.download` (lookup, cache,
download), :mod:`.sources` (mirrors and checksums), :mod:`.batching`, :mod:`.errors`.
"""

from .batching import iterate_batches
from .datasets import DATASETS, Dataset, from_arrays, load_dataset
from .errors import DataError

__all__ = ["DATASETS", "DataError", "Dataset", "from_arrays", "iterate_batches", "load_dataset"]
