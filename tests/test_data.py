"""Tests for edgefilter.data: IDX reading, tfds loading (mocked and real writer), transforms.

Equality with tfds is established three ways:
* ``test_tfds_prepared_copy_equals_idx_reader``: tfds's own FashionMNIST builder (its real
  ``_generate_examples`` and writer, only ``_split_generators`` pointed at local files)
  prepares a tiny dataset from IDX bytes; ``load`` then reads it through tfds and through
  the IDX reader, and the arrays are identical.
* ``test_tfds_record_order_matches_md5_sort``: the permutation against an independent
  re-implementation of tfds's key hashing.
* On the full Debian Fashion-MNIST, the first tfds-order labels below were read from a
  copy that tfds prepared from these same files (one-off check, ~20 s, not repeated here).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct

import jax
import numpy as np
import pytest

from edgefilter import data

_TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encodes ``array`` (uint8 or int32) as an IDX file."""
    array = np.asarray(array)
    header = bytes([0, 0, _TYPE_CODES[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write(path: os.PathLike[str] | str, payload: bytes, gz: bool) -> str:
    path = os.fspath(path) + (".gz" if gz else "")
    with open(path, "wb") as f:
        f.write(gzip.compress(payload) if gz else payload)
    return path


def _make_idx_folder(folder, n_train=37, n_test=11, hw=(28, 28), gz=False, seed=0):
    """Writes a tiny MNIST-format folder; returns the arrays in file order."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train": (rng.integers(0, 256, (n_train, *hw), np.uint8), rng.integers(0, 10, n_train)),
        "test": (rng.integers(0, 256, (n_test, *hw), np.uint8), rng.integers(0, 10, n_test)),
    }
    os.makedirs(folder, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = arrays[split]
        _write(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), _idx_bytes(images), gz)
        _write(
            os.path.join(folder, f"{prefix}-labels-idx1-ubyte"),
            _idx_bytes(labels.astype(np.uint8)),
            gz,
        )
    return arrays


# --------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_roundtrip(tmp_path, gz):
    arrays = _make_idx_folder(tmp_path, hw=(5, 7), gz=gz)
    ds = data.load(f"idx:{tmp_path}")
    for split, images, labels in (
        ("train", ds.train_images, ds.train_labels),
        ("test", ds.test_images, ds.test_labels),
    ):
        file_images, file_labels = arrays[split]
        order = data.tfds_record_order(split, len(file_labels))
        assert images.dtype == np.uint8 and images.shape == (len(file_labels), 5, 7, 1)
        assert labels.dtype == np.int32
        np.testing.assert_array_equal(images[..., 0], file_images[order])
        np.testing.assert_array_equal(labels, file_labels[order])
    assert ds.info.image_shape == (5, 7, 1)
    all_labels = np.concatenate([arrays["train"][1], arrays["test"][1]])
    assert ds.info.num_classes == all_labels.max() + 1
    np.testing.assert_allclose(ds.info.mean, [arrays["train"][0].mean() / 255.0])
    assert not ds.info.augment
    assert data.info(f"idx:{tmp_path}") == ds.info


def test_read_idx_keeps_file_order_and_dtypes(tmp_path):
    values = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    path = _write(tmp_path / "x-idx2-int", _idx_bytes(values), gz=True)
    out = data.read_idx(path)
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)


def test_tfds_record_order_matches_md5_sort():
    for split in ("train", "test"):
        n = 500
        # tfds: records sorted by int(md5(split + str(key)).hexdigest(), 16).
        keys = [int(hashlib.md5(f"{split}{i}".encode()).hexdigest(), 16) for i in range(n)]
        expected = sorted(range(n), key=keys.__getitem__)
        np.testing.assert_array_equal(data.tfds_record_order(split, n), expected)
    assert data.tfds_record_order("train", 0).shape == (0,)


def _corrupt_magic(path):
    raw = bytearray(path.read_bytes())
    raw[0:4] = b"\x12\x34\x08\x03"
    path.write_bytes(bytes(raw))


def _corrupt_magic_inside_gzip(path):
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[0:2] = b"\x08\x08"
    path.write_bytes(gzip.compress(bytes(raw)))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-10])


def _bad_gzip(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


@pytest.mark.parametrize(
    ("gz", "damage", "match"),
    [
        (False, _corrupt_magic, "bad magic number"),
        (True, _corrupt_magic_inside_gzip, "bad magic number"),
        (False, _truncate, "truncated"),
        (True, _bad_gzip, "gzip"),
        (False, os.remove, "Missing IDX file"),
    ],
)
def test_damaged_idx_file_raises_clear_error(tmp_path, gz, damage, match):
    _make_idx_folder(tmp_path, gz=gz)
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    damage(tmp_path / name)
    with pytest.raises(data.DataUnavailableError, match=match) as excinfo:
        data.load(f"idx:{tmp_path}")
    assert "t10k-images-idx3-ubyte" in str(excinfo.value)


def test_idx_count_mismatch_and_missing_folder(tmp_path):
    _make_idx_folder(tmp_path)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(np.zeros(3, np.uint8)), gz=False)
    with pytest.raises(data.DataUnavailableError, match="disagree"):
        data.load(f"idx:{tmp_path}")
    with pytest.raises(data.DataUnavailableError, match="does not exist"):
        data.load(f"idx:{tmp_path / 'nope'}")


# --------------------------------------------------------------------------- names / info


def test_a_data_dir_that_is_not_a_path_is_a_type_error():
    with pytest.raises(TypeError, match="data_dir must be a folder path or None, got 3"):
        data.load("mnist", 3)


@pytest.mark.parametrize("bad", ["cifar", "MNIST", "idx:", ""])
def test_unknown_name_lists_allowed(bad):
    for fn in (data.load, data.info):
        with pytest.raises(ValueError, match="Unknown dataset") as excinfo:
            fn(bad)
        message = str(excinfo.value)
        assert repr(bad) in message
        assert all(name in message for name in data.KNOWN_DATASETS) and "idx:" in message


def test_info_without_loading():
    assert data.info("mnist").mean == (0.1307,) and data.info("mnist").std == (0.3081,)
    assert data.info("fashion_mnist").image_shape == (28, 28, 1)
    cifar = data.info("cifar100")
    assert cifar.num_classes == 100 and cifar.image_shape == (32, 32, 3) and cifar.augment
    assert data.info("cifar10").augment and not data.info("mnist").augment
    assert data.info("imagenet2012").num_classes == 1000
    for name in data.KNOWN_DATASETS:
        dataset_info = data.info(name)
        assert len(dataset_info.mean) == len(dataset_info.std) == dataset_info.image_shape[-1]
        hash(dataset_info)  # static jit argument


# --------------------------------------------------------------------------- tfds


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_tfds_mocked(name):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load(name)
    dataset_info = data.info(name)
    assert ds.info == dataset_info
    for images, labels in ((ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)):
        assert images.shape == (6, *dataset_info.image_shape) and images.dtype == np.uint8
        assert labels.shape == (6,) and labels.dtype == np.int32
        assert labels.min() >= 0 and labels.max() < dataset_info.num_classes


def test_imagenet_mocked_is_lazy_and_resized():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=2):
        ds = data.load("imagenet2012")
        size = data.IMAGENET_IMAGE_SIZE
        assert len(ds.train_images) == 2 and ds.train_images.shape == (2, size, size, 3)
        batch = ds.test_images[np.array([1, 0])]
        assert batch.shape == (2, size, size, 3) and batch.dtype == np.uint8
        labels = ds.train_labels[:]
        assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < 1000


def test_unprepared_tfds_dataset_says_what_to_do(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(data.DataUnavailableError, match="tfds build cifar10") as excinfo:
        data.load("cifar10", data_dir=str(tmp_path))
    assert str(tmp_path) in str(excinfo.value) and "--data_dir" in str(excinfo.value)
    with pytest.raises(data.DataUnavailableError, match="tfds build imagenet2012"):
        data.load("imagenet2012", data_dir=str(tmp_path))


def test_fashion_mnist_fallback_missing_says_what_to_do(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(data.DataUnavailableError, match="apt-get install -y dataset-fashion"):
        data.load("fashion_mnist", data_dir=str(tmp_path))


def _prepare_with_tfds_builder(idx_folder, data_dir, counts):
    """Runs tfds's real FashionMNIST builder on local raw IDX files into ``data_dir``."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    class LocalFashionMNIST(tfds_mnist.FashionMNIST, skip_registration=True):
        name = "fashion_mnist"
        # No checksums file to look up; also sidesteps tfds's code_path lookup, which
        # needs the uninstalled `importlib_resources` for builders defined in packages.
        code_path = None

        def _split_generators(self, dl_manager):
            del dl_manager  # the files are local; nothing to download
            return [
                tfds.core.SplitGenerator(
                    name=split,
                    gen_kwargs=dict(
                        num_examples=counts[split],
                        data_path=os.path.join(idx_folder, f"{prefix}-images-idx3-ubyte"),
                        label_path=os.path.join(idx_folder, f"{prefix}-labels-idx1-ubyte"),
                    ),
                )
                for split, prefix in (("train", "train"), ("test", "t10k"))
            ]

    LocalFashionMNIST(data_dir=data_dir).download_and_prepare()


def test_tfds_prepared_copy_equals_idx_reader(tmp_path, monkeypatch):
    idx_folder, data_dir = tmp_path / "idx", tmp_path / "tfds"
    _make_idx_folder(idx_folder, n_train=40, n_test=20)
    _prepare_with_tfds_builder(str(idx_folder), str(data_dir), {"train": 40, "test": 20})

    via_tfds = data.load("fashion_mnist", data_dir=str(data_dir))
    via_idx = data.load(f"idx:{idx_folder}")
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", str(idx_folder))
    via_fallback = data.load("fashion_mnist", data_dir=str(tmp_path / "empty"))

    assert via_tfds.info == via_fallback.info == data.info("fashion_mnist")
    for tfds_array, idx_array, fallback_array in zip(
        via_tfds[1:], via_idx[1:], via_fallback[1:], strict=True
    ):
        assert tfds_array.dtype == idx_array.dtype == fallback_array.dtype
        np.testing.assert_array_equal(tfds_array, idx_array)
        np.testing.assert_array_equal(tfds_array, fallback_array)


@pytest.fixture(scope="module")
def real_fashion_mnist():
    if not os.path.isdir(data.DEBIAN_FASHION_MNIST_DIR):
        pytest.skip("dataset-fashion-mnist is not installed")
    return data.load(f"idx:{data.DEBIAN_FASHION_MNIST_DIR}")


def test_real_fashion_mnist(real_fashion_mnist):
    ds = real_fashion_mnist
    assert ds.train_images.shape == (60000, 28, 28, 1) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10000, 28, 28, 1) and ds.test_labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
    # File order starts with an ankle boot (9); tfds order (read from a tfds-prepared copy
    # of these files) starts 2, 1, 8, 4, 1, 9, 2, 2, 0, 2 (train) and 4, 4, 9, 7 (test).
    train_labels_file = os.path.join(data.DEBIAN_FASHION_MNIST_DIR, "train-labels-idx1-ubyte.gz")
    assert data.read_idx(train_labels_file)[0] == 9
    np.testing.assert_array_equal(ds.train_labels[:10], [2, 1, 8, 4, 1, 9, 2, 2, 0, 2])
    np.testing.assert_array_equal(ds.test_labels[:4], [4, 4, 9, 7])
    # The registry's statistics are those of these pixels.
    registry = data.info("fashion_mnist")
    np.testing.assert_allclose(ds.info.mean, registry.mean, atol=1e-4)
    np.testing.assert_allclose(ds.info.std, registry.std, atol=1e-4)
    assert ds.info.num_classes == 10


# --------------------------------------------------------------------------- transforms


def test_normalize():
    mnist = data.info("mnist")
    out = jax.jit(data.normalize, static_argnums=1)(np.array([[0], [255]], np.uint8), mnist)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], [-0.1307 / 0.3081, (1 - 0.1307) / 0.3081], rtol=1e-6)
    cifar = data.info("cifar10")
    images = np.full((2, 3, 3, 3), 128, np.uint8)
    expected = (128 / 255 - np.array(cifar.mean)) / np.array(cifar.std)
    np.testing.assert_allclose(data.normalize(images, cifar)[1, 2, 0], expected, rtol=1e-5)


def _match_crops(images, out, padding=4):
    """For each output, the (dy, dx, flip) whose crop of the padded input equals it."""
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    h, w = images.shape[1:3]
    # windows[i, dy, dx] is the [C, h, w] crop at offset (dy, dx) of padded image i.
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))
    target = np.moveaxis(out, -1, 1)[:, None, None]  # [N, 1, 1, C, h, w]
    hits = np.stack(
        [
            (windows == target).all(axis=(3, 4, 5)),
            (windows[..., ::-1] == target).all(axis=(3, 4, 5)),
        ],
        axis=-1,
    )  # [N, dy, dx, flip]
    assert (hits.sum(axis=(1, 2, 3)) == 1).all(), "each output must match exactly one crop"
    return np.argwhere(hits)[:, 1:]  # rows sorted by instance: (dy, dx, flip)


def test_augment_cifar_crops_and_flips():
    rng = np.random.default_rng(0)
    # Pixel values >= 1, so zero padding is distinguishable and each crop matches once.
    images = rng.integers(1, 256, (256, 32, 32, 3), np.uint8)
    key = jax.random.key(42)
    augment = jax.jit(data.augment_cifar)
    out = np.asarray(augment(key, images))
    assert out.shape == images.shape and out.dtype == np.uint8
    found = _match_crops(images, out)
    flip_rate = found[:, 2].mean()
    assert 0.35 < flip_rate < 0.65, flip_rate
    assert set(found[:, 0]) == set(range(9)) and set(found[:, 1]) == set(range(9))
    # Deterministic for a key, different for another; eager (below) and jitted both run.
    np.testing.assert_array_equal(out, np.asarray(augment(key, images)))
    assert not np.array_equal(out, np.asarray(augment(jax.random.key(43), images)))
    # Raw uint32 keys and float images work too.
    floats = images[:4].astype(np.float32)
    out_f = data.augment_cifar(jax.random.PRNGKey(0), floats)
    assert out_f.dtype == np.float32 and out_f.shape == floats.shape


def test_epoch_permutation():
    first = data.epoch_permutation(seed=3, epoch=5, n=1000)
    np.testing.assert_array_equal(first, data.epoch_permutation(3, 5, 1000))
    np.testing.assert_array_equal(np.sort(first), np.arange(1000))
    assert not np.array_equal(first, data.epoch_permutation(3, 6, 1000))
    assert not np.array_equal(first, data.epoch_permutation(4, 5, 1000))
    np.testing.assert_array_equal(first, np.random.default_rng((3, 5)).permutation(1000))
    with pytest.raises(ValueError, match="non-negative"):
        data.epoch_permutation(-1, 0, 10)
