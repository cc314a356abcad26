"""The shrink switch: a config's run made tiny, a smoke test that needs no dataset.

``--config=PATH.py:VARIANT,shrink`` (:mod:`experiments.config_file`) trains the config
for :data:`STEPS` steps on random data. It keeps the method and everything that defines
it (``--bits``, R_set, EMP's policy, the filter network and its settings, the
optimizer, the schedule's fractions, the seed) and changes only:

* the main network, to the smallest of its family (:data:`SMALLEST`): every CIFAR ResNet
  to ResNet-8, ResNet-18 to ResNet-10 (the ImageNet filter's network), VGG-16 to VGG-11;
  LeNet and the others stay. Three steps of batch 8 at XLA's -O0 took 148 s of CPU
  with ResNet-110 and 155 s with VGG-16, against 11 s with ResNet-8, on a 2-core VM
  (VGG-11 took 37 s of wall time at XLA's default -O2);
* the run: :data:`STEPS` steps of :data:`BATCH` instances (no ``--epochs``), one chunk
  per block, metrics every step; the sizes derived from the batch
  (``--eif_batch_size``, ``--eif_probe_size``) are left to their defaults for it;
* the data (:func:`dataset`): :data:`TRAIN` training and :data:`TEST` test instances of
  uniform random pixels and labels (seeded by ``--seed``) in the dataset's shape and
  classes, standing in for it, the test labels drawn from the training ones; images
  larger than :data:`MAX_SIDE` pixels a side (ImageNet's 224x224) are that size (VGG-11
  on 224x224 images is 7.5 GMAC a forward pass).

A shrunk run's accuracy and reduction mean nothing; it shows that the config runs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgefilter import data as data_lib
from edgefilter.training import config as config_lib

__all__ = ["BATCH", "MAX_SIDE", "SMALLEST", "STEPS", "TEST", "TRAIN", "config", "dataset"]

SMALLEST: dict[str, str] = {
    **{f"resnet{depth}": "resnet8" for depth in (20, 32, 44, 56, 74, 110)},
    "resnet18": "resnet10",
    "vgg16": "vgg11",
}
"""The smallest network of each network's family, for those that are not the smallest."""

STEPS = 2
BATCH = 8
TRAIN = 2 * BATCH  # The run is one epoch: evaluation and a checkpoint at its end.
TEST = BATCH
MAX_SIDE = 32


def config(full: config_lib.TrainConfig) -> config_lib.TrainConfig:
    """``full`` made tiny: the smallest network of its family, :data:`STEPS` steps of
    :data:`BATCH`; everything else as ``full`` has it (see the module doc)."""
    return dataclasses.replace(
        full,
        model=SMALLEST.get(full.model, full.model),
        epochs=None,
        steps=STEPS,
        batch_size=BATCH,
        eval_batch_size=TEST,
        block_chunks=1,
        log_every_steps=1,
        eif_batch_size=None,
        eif_probe_size=None,
    )


def dataset(run: config_lib.TrainConfig) -> data_lib.Dataset:
    """Random data in the shape and classes of ``run.dataset``, seeded by ``run.seed``.

    ``run.dataset``'s description (``edgefilter.data.info``: its classes, normalisation
    and augmentation) with images at most :data:`MAX_SIDE` a side; uint8 pixels and
    int32 labels drawn uniformly, :data:`TRAIN` for training and :data:`TEST` for test,
    whose labels are drawn from the training labels (so every test class was trained).
    """
    info = data_lib.info(run.dataset)
    height, width, channels = info.image_shape
    info = dataclasses.replace(
        info, image_shape=(min(height, MAX_SIDE), min(width, MAX_SIDE), channels)
    )
    rng = np.random.default_rng(run.seed)
    train_labels = rng.integers(0, info.num_classes, TRAIN).astype(np.int32)
    return data_lib.Dataset(
        info,
        train_images=rng.integers(0, 256, (TRAIN, *info.image_shape), dtype=np.uint8),
        train_labels=train_labels,
        test_images=rng.integers(0, 256, (TEST, *info.image_shape), dtype=np.uint8),
        test_labels=rng.choice(train_labels, TEST),
    )
