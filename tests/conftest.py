"""Shared fixtures: a tiny learnable dataset, in memory and as a folder of IDX files."""

import gzip
import os

import numpy as np
import pytest

from edgefilter import data as data_lib


def learnable_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 images whose class is written as a bright row band (easy to learn)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = rng.integers(0, 60, (n, 28, 28, 1), dtype=np.uint8)
    for c in range(10):
        images[labels == c, 2 + 2 * c : 4 + 2 * c, :, 0] = 250
    return images, labels


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes ``array`` (uint8) as a gzipped MNIST-format IDX file."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def tiny_dataset() -> data_lib.Dataset:
    train_images, train_labels = learnable_images(320, 0)
    test_images, test_labels = learnable_images(100, 1)
    info = data_lib.DatasetInfo("tiny", 10, (28, 28, 1), (0.15,), (0.3,))
    return data_lib.Dataset(info, train_images, train_labels, test_images, test_labels)


@pytest.fixture(scope="session")
def idx_folder(tmp_path_factory, tiny_dataset) -> str:
    folder = str(tmp_path_factory.mktemp("idx"))
    for split, images, labels in (
        ("train", tiny_dataset.train_images, tiny_dataset.train_labels),
        ("t10k", tiny_dataset.test_images, tiny_dataset.test_labels),
    ):
        write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"), images[..., 0])
        write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"), labels)
    return folder
