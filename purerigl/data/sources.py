"""Where the downloadable data sets come from: file names, mirrors and SHA-256 checksums.

``sha256`` is the checksum of the file exactly as the mirrors serve it; a download that does not
match it is deleted. ``payload_sha256`` (gzip files only, where known) is the checksum of the
decompressed content: a file the user provides is accepted when it matches either, so a copy that was
gunzipped, or gzipped again with other settings, still counts as the canonical data.

Checksum sources (all cross-checked against several independent public projects that pin them):

- MNIST archives: the values TensorFlow Datasets and PyTorch's ossci mirror users pin
  (``440fcabf...`` for train-images-idx3-ubyte.gz, size 9,912,422 bytes). The decompressed
  checksums (``ba891046...`` for train-images-idx3-ubyte, 47,040,016 bytes) match the MNIST copy in
  the project's shared data directory, whose gzip wrapper differs from the mirrors' (see
  ``/work/shared/data/mnist/SHA256SUMS``: those four sums are of a re-compressed copy).
- Fashion-MNIST archives: the values published with zalandoresearch/fashion-mnist and pinned by
  TensorFlow Datasets.
- CIFAR-10 ``cifar-10-python.tar.gz``: the value pinned by torchvision's prototype datasets and
  TensorFlow Datasets (MD5 ``c58f30108f718f92721af3b95e74349a`` on the Toronto page).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file of a data set.

    Attributes
    ----------
    filename : str
        Canonical file name, as the mirrors serve it.
    sha256 : str
        Lower-case hex SHA-256 of the file as served.
    urls : tuple of str
        Mirrors, tried in order when the previous one answers with an HTTP error.
    payload_sha256 : str or None
        SHA-256 of the gunzipped content, for gzip files where it is known.
    """

    filename: str
    sha256: str
    urls: tuple[str, ...]
    payload_sha256: str | None = None

    @property
    def uncompressed_name(self) -> str | None:
        """The name of the gunzipped file (``None`` when the file is not a ``.gz``)."""
        return self.filename[:-3] if self.filename.endswith(".gz") else None


_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_FASHION_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
_CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)


def _files(mirrors, table):
    return tuple(
        RemoteFile(name, sha, tuple(m + name for m in mirrors), payload)
        for name, sha, payload in table
    )


#: The IDX files of MNIST and Fashion-MNIST, in the order
#: (train images, train labels, test images, test labels).
IDX_ROLES = ("train_images", "train_labels", "test_images", "test_labels")

#: Data set name -> the files it needs.
CATALOGUE: dict[str, tuple[RemoteFile, ...]] = {
    "mnist": _files(
        _MNIST_MIRRORS,
        [
            (
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            (
                "train-labels-idx1-ubyte.gz",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            ),
            (
                "t10k-images-idx3-ubyte.gz",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
            (
                "t10k-labels-idx1-ubyte.gz",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        ],
    ),
    "fashion-mnist": _files(
        _FASHION_MIRRORS,
        [
            (
                "train-images-idx3-ubyte.gz",
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                None,
            ),
            (
                "train-labels-idx1-ubyte.gz",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                None,
            ),
            (
                "t10k-images-idx3-ubyte.gz",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                None,
            ),
            (
                "t10k-labels-idx1-ubyte.gz",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                None,
            ),
        ],
    ),
    "cifar10": _files(
        _CIFAR10_MIRRORS,
        [
            (
                "cifar-10-python.tar.gz",
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                None,
            ),
        ],
    ),
}
