"""Datasets: loading, per-dataset statistics, CIFAR augmentation and epoch shuffling.

Everything the training loop needs from data, as plain NumPy arrays plus a few pure
functions:

* :func:`load` returns a :class:`Dataset` (uint8 NHWC images, int32 labels) for a named
  dataset (:data:`KNOWN_DATASETS`, read through tensorflow-datasets and honouring
  ``data_dir``) or for any folder of MNIST-format IDX files (``"idx:/path/to/folder"``).
* :func:`info` returns the :class:`DatasetInfo` of a name without loading the data
  (flag validation, model defaults).
* :func:`normalize` and :func:`augment_cifar` are jittable and work on whole batches.
* :func:`epoch_permutation` gives the reproducible order of one epoch, so a resumed run
  regenerates exactly the order it was interrupted in.

Data that cannot be had raises :class:`DataUnavailableError`, whose one-line message says
what is missing and what to do; the command line prints it and exits with status 2.

Order of the examples. tfds does *not* keep file order for ``mnist``/``fashion_mnist``:
their builder (``tensorflow_datasets/image_classification/mnist.py``, tfds 4.9.10) yields
example ``i`` of the IDX files under the key ``i``, and tfds's writer
(``core/shuffle.py``, ``core/split_builder.py``, ``disable_shuffling=False`` for these
datasets) stores the records sorted by ``md5(split_name + str(key))``. The IDX reader
applies that same permutation (:func:`tfds_record_order`), so ``load("fashion_mnist")``
gives identical arrays whether it reads a tfds-prepared copy or the Debian IDX files
(checked on the full Fashion-MNIST: tfds's train split starts with labels
2, 1, 8, 4, ... while the file starts with 9, 0, 0, 3, ...). tfds splits are read record
by record in storage order (``shuffle_files=False``, interleave cycle length 1), which is
also ``tfds.load``'s order for these single-shard splits.

Example::

    ds = data.load("fashion_mnist")
    x = data.normalize(ds.train_images[:128], ds.info)        # float32 [128, 28, 28, 1]
    order = data.epoch_permutation(seed=0, epoch=3, n=len(ds.train_labels))
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import math
import os
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "IDX_PREFIX",
    "IMAGENET_IMAGE_SIZE",
    "KNOWN_DATASETS",
    "DataUnavailableError",
    "Dataset",
    "DatasetInfo",
    "augment_cifar",
    "check_labels",
    "epoch_permutation",
    "info",
    "load",
    "normalize",
    "read_idx",
    "tfds_record_order",
]

KNOWN_DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet2012")
"""Names :func:`load` reads through tensorflow-datasets (besides ``idx:<folder>``)."""

IDX_PREFIX = "idx:"
"""Prefix of a dataset name that points at a folder of MNIST-format IDX files."""

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` installs the IDX files (the offline fallback)."""

IMAGENET_IMAGE_SIZE = 224
"""ImageNet images are resized (shorter side) and centre-cropped to this square size."""

_TFDS_READ_BATCH = 1024


class DataUnavailableError(Exception):
    """The requested data is missing or unreadable; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset (hashable, so usable as a static jit argument).

    Attributes:
      name: the name given to :func:`load` (``"idx:<folder>"`` for IDX folders).
      num_classes: number of classes; labels lie in ``[0, num_classes)``.
      image_shape: ``(height, width, channels)`` of one image.
      mean: per-channel mean of the training pixels in ``[0, 1]`` units (pixel / 255).
      std: per-channel standard deviation, same units as ``mean``.
      augment: whether training uses the standard CIFAR augmentation
        (:func:`augment_cifar`).
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False


class Dataset(NamedTuple):
    """A loaded dataset: uint8 NHWC images and int32 labels per split.

    For ``imagenet2012`` the image and label fields are read-only array-likes over a tfds
    data source (``len``, ``shape``, ``dtype`` and NumPy-style indexing with an integer,
    slice or index array, returning NumPy arrays); everything else is a NumPy array.
    """

    info: DatasetInfo
    train_images: Any
    train_labels: Any
    test_images: Any
    test_labels: Any


# Statistics of the training pixels in [0, 1] units: MNIST and Fashion-MNIST as usually
# quoted (Fashion-MNIST checked against the Debian files in tests/test_data.py), CIFAR as
# computed over the 50k training images, ImageNet the torchvision constants.
_INFOS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", 10, (28, 28, 1), (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, (28, 28, 1), (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo(
        "cifar10", 10, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, (32, 32, 3), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True
    ),
    "imagenet2012": DatasetInfo(
        "imagenet2012",
        1000,
        (IMAGENET_IMAGE_SIZE, IMAGENET_IMAGE_SIZE, 3),
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    ),
}

# tfds's MNIST-family builders read these four files; so do we (each raw or gzipped).
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# IDX type codes (third magic byte); multi-byte values are big-endian.
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------- names


def _check_name(name: str) -> None:
    """Raises ValueError unless ``name`` is a known dataset or an ``idx:<folder>``."""
    if not isinstance(name, str) or not (
        name in KNOWN_DATASETS or (name.startswith(IDX_PREFIX) and len(name) > len(IDX_PREFIX))
    ):
        allowed = ", ".join(KNOWN_DATASETS)
        raise ValueError(
            f"Unknown dataset {name!r}; allowed: {allowed}, or {IDX_PREFIX}<folder> for a "
            "folder of MNIST-format IDX files."
        )


def info(name: str) -> DatasetInfo:
    """Returns the :class:`DatasetInfo` of ``name`` without loading the dataset.

    For ``idx:<folder>`` the statistics depend on the files, so the folder is read (this is
    what :func:`load` does too; IDX datasets are MNIST-sized).

    Args:
      name: one of :data:`KNOWN_DATASETS` or ``"idx:<folder>"``.

    Returns:
      The dataset's static description.

    Raises:
      ValueError: ``name`` is not a known dataset.
      DataUnavailableError: an IDX folder is missing or unreadable.
    """
    _check_name(name)
    if name.startswith(IDX_PREFIX):
        return load(name).info
    return _INFOS[name]


# --------------------------------------------------------------------------- IDX files


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads one IDX file (raw or gzipped, detected from its content) in file order.

    Args:
      path: the file.

    Returns:
      The array with the shape and (native-endian) dtype given by the file's header.

    Raises:
      DataUnavailableError: the file is missing, not gzip-decodable, has a bad magic
        number, or holds more or fewer bytes than its header announces.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataUnavailableError(f"Cannot read IDX file {path}: {e.strerror or e}.") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataUnavailableError(
                f"IDX file {path} is corrupt (bad or truncated gzip data: {e}); replace it "
                "with an intact copy."
            ) from e
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: str) -> np.ndarray:
    """Decodes the bytes of an uncompressed IDX file; ``path`` is only for messages."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataUnavailableError(
            f"IDX file {path} has a bad magic number {raw[:4].hex() or '(empty file)'}; it is "
            "not an IDX file (expected 0000 <type> <ndim>), replace it with an intact copy."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataUnavailableError(f"IDX file {path} is truncated inside its header.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if len(raw) - header != expected:
        state = "truncated" if len(raw) - header < expected else "longer than its header says"
        raise DataUnavailableError(
            f"IDX file {path} is {state}: header {shape} needs {expected} data bytes, found "
            f"{len(raw) - header}; replace it with an intact copy."
        )
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable native-endian copy


def tfds_record_order(split: str, n: int) -> np.ndarray:
    """Returns the order in which tfds stores examples generated with keys ``0 .. n-1``.

    tfds's writer sorts the records of a split by the 128-bit ``md5(split + str(key))``
    (``tensorflow_datasets/core/hashing.py``, ``core/shuffle.py``), and the MNIST-family
    builders use the example's index in the IDX files as its key. So
    ``file_array[tfds_record_order("train", n)]`` is what tfds gives for the train split.

    Args:
      split: the split name tfds salts the hash with (``"train"`` or ``"test"``).
      n: number of examples.

    Returns:
      int64 array of length ``n``: the file indices in tfds order.
    """
    salted = hashlib.md5(split.encode("utf-8"))
    digests = bytearray()
    for i in range(n):
        h = salted.copy()
        h.update(str(i).encode("utf-8"))
        digests += h.digest()
    # Big-endian halves: sorting (high, low) lexicographically sorts the 128-bit integer.
    halves = np.frombuffer(bytes(digests), dtype=">u8").reshape(n, 2)
    return np.lexsort((halves[:, 1], halves[:, 0])).astype(np.int64)


def _idx_file(folder: str, stem: str) -> str:
    """Returns ``folder/stem`` or ``folder/stem.gz``, whichever exists."""
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    needed = ", ".join(f"{s}[.gz]" for pair in _IDX_FILES.values() for s in pair)
    raise DataUnavailableError(
        f"Missing IDX file {os.path.join(folder, stem)}[.gz]; an IDX folder needs {needed}."
    )


def _read_idx_split(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads and checks one split of an IDX folder; returns (images, labels) in tfds order."""
    image_path = _idx_file(folder, _IDX_FILES[split][0])
    label_path = _idx_file(folder, _IDX_FILES[split][1])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataUnavailableError(
            f"IDX file {image_path} holds {images.dtype} data of shape {images.shape}; "
            "expected uint8 images [N, H, W] or [N, H, W, C]."
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise DataUnavailableError(
            f"IDX file {label_path} holds {labels.dtype} data of shape {labels.shape}; "
            "expected non-negative integer labels [N]."
        )
    if len(images) != len(labels):
        raise DataUnavailableError(
            f"IDX files {image_path} and {label_path} disagree: {len(images)} images, "
            f"{len(labels)} labels."
        )
    if images.ndim == 3:
        images = images[..., None]
    order = tfds_record_order(split, len(labels))
    return images[order], labels[order].astype(np.int32)


def _pixel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NHWC images in [0, 1] units (exact, via histograms)."""
    values = np.arange(256) / 255.0
    means, stds = [], []
    for channel in range(images.shape[-1]):
        counts = np.bincount(images[..., channel].reshape(-1), minlength=256)
        total = max(int(counts.sum()), 1)
        mean = float(counts @ values) / total
        means.append(mean)
        stds.append(float(np.sqrt(counts @ (values - mean) ** 2 / total)))
    return tuple(means), tuple(stds)


def _load_idx_folder(folder: str, dataset_info: DatasetInfo | None, hint: str) -> Dataset:
    """Loads an IDX folder; derives the info from the data unless ``dataset_info`` is given."""
    if not os.path.isdir(folder):
        raise DataUnavailableError(f"IDX folder {folder} does not exist; {hint}")
    train_images, train_labels = _read_idx_split(folder, "train")
    test_images, test_labels = _read_idx_split(folder, "test")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataUnavailableError(
            f"IDX folder {folder}: train images are {train_images.shape[1:]} but test images "
            f"are {test_images.shape[1:]}."
        )
    for split, labels in (("train", train_labels), ("test", test_labels)):
        if not labels.size:
            stem = _IDX_FILES[split][1]
            raise DataUnavailableError(
                f"IDX folder {folder}: the {split} split ({stem}) is empty; training and "
                "evaluation need at least one instance each."
            )
    if dataset_info is None:
        mean, std = _pixel_statistics(train_images)
        dataset_info = DatasetInfo(
            name=IDX_PREFIX + folder,
            num_classes=_idx_num_classes(folder, train_labels, test_labels),
            image_shape=tuple(int(d) for d in train_images.shape[1:]),
            mean=mean,
            std=std,
        )
    dataset = Dataset(dataset_info, train_images, train_labels, test_images, test_labels)
    check_labels(dataset, f"IDX folder {folder}")
    return dataset


def _idx_num_classes(folder: str, train_labels: np.ndarray, test_labels: np.ndarray) -> int:
    """The class count of an IDX folder: its largest label + 1, every class present.

    IDX files declare no class count, so it is inferred from the labels; a label that
    leaves a class below it absent from both splits (one stray 255 among the digits
    0-9 would make a 256-way classifier with 246 classes never seen) is refused.
    """
    present = np.union1d(np.unique(train_labels), np.unique(test_labels))
    num_classes = int(present[-1]) + 1
    if len(present) < num_classes:
        missing = sorted(set(range(num_classes)) - set(present.tolist()))
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise DataUnavailableError(
            f"IDX folder {folder}: label {num_classes - 1} implies {num_classes} classes, but "
            f"{len(missing)} of them ({shown}) occur in neither split; labels must be the "
            "classes 0 .. K-1, each present (a stray label is a damaged file)."
        )
    return num_classes


def check_labels(dataset: Dataset, where: str) -> None:
    """Raises DataUnavailableError if a label lies outside ``[0, num_classes)``.

    ``where`` names the data in the message. Lazily read splits (ImageNet) are not
    scanned.
    """
    num_classes = dataset.info.num_classes
    for split, labels in (("train", dataset.train_labels), ("test", dataset.test_labels)):
        if not isinstance(labels, np.ndarray) or not labels.size:
            continue
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            raise DataUnavailableError(
                f"{where}: the {split} split has label {int(bad[0])} ({bad.size} such), "
                f"outside [0, {num_classes}) for its {num_classes} classes."
            )


# --------------------------------------------------------------------------- tfds


def _prepare_hint(name: str, data_dir: str | None) -> str:
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return (
        f"tfds has no prepared copy of {name!r} in {where}: prepare it on a machine with "
        f"network with `tfds build {name} --data_dir=DIR`, copy DIR here and pass "
        "--data_dir=DIR."
    )


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Sends file descriptor 2 to /dev/null for the block: TensorFlow's C++ start-up lines
    ("oneDNN custom operations are on", absl's "before InitializeLog") are written there
    on import, whatever ``TF_CPP_MIN_LOG_LEVEL`` says, and would come before a command's
    one-line error. Python exceptions raised in the block are unaffected."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _load_tfds(name: str, data_dir: str | None) -> Dataset | None:
    """Reads both splits of a tfds dataset into memory; None if it is not prepared."""
    with _quiet_stderr():
        import tensorflow as tf
        import tensorflow_datasets as tfds

        builder = tfds.builder(name, data_dir=data_dir)
    arrays = []
    for split in ("train", "test"):
        try:
            ds = builder.as_dataset(
                split=split,
                as_supervised=True,
                shuffle_files=False,
                read_config=tfds.ReadConfig(interleave_cycle_length=1),
            )
        except AssertionError:  # tfds's "could not find data in <data_dir>"
            return None
        images, labels = [], []
        try:
            for image_batch, label_batch in tfds.as_numpy(ds.batch(_TFDS_READ_BATCH)):
                images.append(image_batch)
                labels.append(label_batch)
        except (tf.errors.OpError, OSError, ValueError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataUnavailableError(
                f"tfds copy of {name!r} ({split} split) is unreadable: {first_line}; delete "
                f"it and prepare it again with `tfds build {name} --data_dir=DIR`."
            ) from e
        shape = (0, *_INFOS[name].image_shape)
        arrays.append(np.concatenate(images) if images else np.zeros(shape, np.uint8))
        arrays.append(np.concatenate(labels).astype(np.int32) if labels else np.zeros(0, np.int32))
        if not arrays[-1].size:
            raise DataUnavailableError(
                f"tfds copy of {name!r} has an empty {split} split; prepare it again with "
                f"`tfds build {name} --data_dir=DIR`."
            )
    dataset = Dataset(_INFOS[name], *arrays)
    check_labels(dataset, f"tfds copy of {name!r}")
    return dataset


def _resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes the shorter side of one HWC uint8 image to ``size`` and centre-crops it."""
    import tensorflow as tf

    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_hw = (max(size, round(height * scale)), max(size, round(width * scale)))
    resized = tf.image.resize(image, new_hw, method="bilinear", antialias=True)
    top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
    cropped = resized[top : top + size, left : left + size]
    return np.clip(np.round(cropped.numpy()), 0, 255).astype(np.uint8)


class _LazyColumn:
    """Read-only array-like over one field of a tfds data source, decoded on indexing."""

    def __init__(
        self,
        source: Any,
        field: str,
        transform: Callable[[Any], np.ndarray],
        item_shape: tuple[int, ...],
        dtype: np.dtype,
    ) -> None:
        self._source = source
        self._field = field
        self._transform = transform
        self.shape = (len(source), *item_shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        """Reads an integer, a slice or a 1-D integer index array of examples."""
        positions = range(len(self))  # range indexing checks bounds and wraps negatives
        if isinstance(index, (int, np.integer)):
            return self._read(positions[int(index)])
        if isinstance(index, slice):
            indices = positions[index]
        else:
            indices = [positions[int(i)] for i in np.asarray(index).reshape(-1)]
        out = np.empty((len(indices), *self.shape[1:]), self.dtype)
        for row, i in enumerate(indices):
            out[row] = self._read(i)
        return out

    def _read(self, i: int) -> np.ndarray:
        return self._transform(self._source[i][self._field])


def _load_imagenet(data_dir: str | None) -> Dataset:
    """Opens a prepared (array_record) imagenet2012 lazily through ``tfds.data_source``."""
    with _quiet_stderr():
        import tensorflow_datasets as tfds

    name, size = "imagenet2012", IMAGENET_IMAGE_SIZE
    builder = tfds.builder(name, data_dir=data_dir)
    columns = []
    for split in ("train", "validation"):  # imagenet2012's labelled test split
        try:
            image_source = builder.as_data_source(split=split)
            label_source = builder.as_data_source(
                split=split, decoders={"image": tfds.decode.SkipDecoding()}
            )
        except Exception as e:  # tfds raises many types for "not there"
            raise DataUnavailableError(
                f"No random-access copy of {name!r} ({split} split) in "
                f"{data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'}: "
                "put the ILSVRC2012 tar files in DIR/downloads/manual and run `tfds build "
                f"{name} --data_dir=DIR --file_format=array_record`, then pass --data_dir=DIR "
                f"({type(e).__name__})."
            ) from e
        columns.append(
            _LazyColumn(
                image_source,
                "image",
                lambda im: _resize_center_crop(im, size),
                (size, size, 3),
                np.uint8,
            )
        )
        columns.append(_LazyColumn(label_source, "label", lambda y: np.int32(y), (), np.int32))
    return Dataset(_INFOS[name], *columns)


# --------------------------------------------------------------------------- load


def load(name: str, data_dir: str | None = None) -> Dataset:
    """Loads a dataset's train and test splits.

    * ``mnist``, ``cifar10``, ``cifar100``: a copy tfds has prepared in ``data_dir`` (or
      tfds's default data dir); nothing is downloaded.
    * ``fashion_mnist``: the tfds copy if prepared, else the Debian IDX files in
      :data:`DEBIAN_FASHION_MNIST_DIR`; both give identical arrays.
    * ``imagenet2012``: too big for memory; a copy prepared in the array_record format is
      opened lazily (see :class:`Dataset`), images resized to :data:`IMAGENET_IMAGE_SIZE`
      (shorter side, bilinear with antialiasing, then centre crop); the test split is
      tfds's ``validation`` split.
    * ``idx:<folder>``: the four MNIST-format IDX files in the folder, raw or gzipped,
      in tfds order (:func:`tfds_record_order`); ``num_classes`` is the largest label + 1,
      and every class below it must occur in one of the splits (a stray label is
      refused); mean/std are computed over the training pixels.

    Every label must lie in ``[0, num_classes)`` (the dataset's declared count for the
    named datasets) and neither split may be empty.

    Args:
      name: one of :data:`KNOWN_DATASETS` or ``"idx:<folder>"``.
      data_dir: tfds data directory; None means tfds's default (``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``). Ignored for IDX folders.

    Returns:
      The dataset, with uint8 NHWC images and int32 labels.

    Raises:
      ValueError: ``name`` is not a known dataset.
      TypeError: ``data_dir`` is not a path.
      DataUnavailableError: the data is missing or unreadable, a split is empty, or a
        label lies outside ``[0, num_classes)``; the message says what to do.
    """
    _check_name(name)
    if data_dir is not None and not isinstance(data_dir, str | os.PathLike):
        raise TypeError(f"data_dir must be a folder path or None, got {data_dir!r}.")
    if name.startswith(IDX_PREFIX):
        folder = name[len(IDX_PREFIX) :]
        return _load_idx_folder(folder, None, "pass an existing folder after 'idx:'.")
    if name == "imagenet2012":
        return _load_imagenet(data_dir)
    dataset = _load_tfds(name, data_dir)
    if dataset is not None:
        return dataset
    if name == "fashion_mnist":
        return _load_idx_folder(
            DEBIAN_FASHION_MNIST_DIR,
            _INFOS[name],
            "run `apt-get install -y dataset-fashion-mnist`, or " + _prepare_hint(name, data_dir),
        )
    raise DataUnavailableError(_prepare_hint(name, data_dir))


# --------------------------------------------------------------------------- transforms


def normalize(images: ArrayLike, dataset_info: DatasetInfo) -> jax.Array:
    """Maps uint8 pixels to float32 ``(pixel / 255 - mean) / std`` per channel.

    Jittable; close over ``dataset_info`` or mark it static (it is hashable).

    Args:
      images: uint8 (or any numeric) array ``[..., C]`` in ``[0, 255]`` pixel units.
      dataset_info: supplies ``mean`` and ``std`` (``[0, 1]`` units, one per channel).

    Returns:
      float32 array of the same shape.
    """
    mean = jnp.asarray(dataset_info.mean, jnp.float32)
    std = jnp.asarray(dataset_info.std, jnp.float32)
    return (jnp.asarray(images, jnp.float32) / 255.0 - mean) / std


def augment_cifar(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """The standard CIFAR augmentation, batch-wise: zero-pad, random crop, random flip.

    Each image is padded by ``padding`` zero pixels on every side, cropped back to its
    size at a uniformly random offset, and mirrored left-right with probability 1/2; every
    instance draws its own offset and flip from ``key``. Jittable, no per-image loop.

    Args:
      key: a JAX PRNG key.
      images: ``[N, H, W, C]`` array of any dtype (uint8 before normalisation works).
      padding: pixels of zero padding per side (static).

    Returns:
      The augmented images, same shape and dtype.
    """
    n, height, width, channels = images.shape
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * padding + 1)
    flips = jax.random.bernoulli(flip_key, 0.5, (n,))
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        start = (offset[0], offset[1], jnp.zeros((), offset.dtype))
        return jax.lax.dynamic_slice(image, start, (height, width, channels))

    crops = jax.vmap(crop)(padded, offsets)
    return jnp.where(flips[:, None, None, None], crops[:, :, ::-1, :], crops)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """Returns the shuffled order of epoch ``epoch``, a pure function of its arguments.

    Uses ``np.random.default_rng((seed, epoch))``, so a resumed run regenerates the order
    of any epoch without stored state.

    Args:
      seed: non-negative run seed.
      epoch: non-negative epoch index.
      n: number of examples.

    Returns:
      int64 permutation of ``range(n)``.
    """
    if seed < 0 or epoch < 0 or n < 0:
        raise ValueError(f"seed, epoch and n must be non-negative, got {seed}, {epoch}, {n}.")
    return np.random.default_rng((int(seed), int(epoch))).permutation(int(n))
