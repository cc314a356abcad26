"""Checks of a run before anything is written: the workdir, the data, the model's shapes.

:func:`edgefilter.training.config.validate` checks each setting on its own; what needs
the dataset or the file system is checked here, so that a run that cannot succeed ends
with one ``ValueError`` (the command line: one line, exit status 2) before its workdir
holds a ``config.json`` that a corrected command would then be refused for:

* :func:`check_workdir`: the workdir is a folder (or can be made one) that can be
  written;
* :func:`check_run`: the stream has at least one instance (``--epochs=1e-9`` does
  not), neither split is empty, every label lies in ``[0, num_classes)``, and the main
  network (and the instance filter) keep a non-empty activation all the way through on
  these images (VGG-16 pools 28x28 images to 0x0), traced with ``jax.make_jaxpr`` on one
  example: nothing is compiled or run. It returns warnings for what is odd but not
  wrong: test labels that never occur in training (those test instances cannot be
  classified correctly).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from edgefilter import data as data_lib
from edgefilter import models
from edgefilter.training import config as config_lib

__all__ = ["check_run", "check_workdir", "stream_length"]


def stream_length(config: config_lib.TrainConfig, num_train: int) -> int:
    """Instances the run streams: ``steps * batch_size``, or ``epochs`` of the train split."""
    if config.steps is not None:
        return config.steps * config.batch_size
    return int(round(config.epochs * num_train))


def check_workdir(workdir: str, flag: str = "workdir") -> None:
    """Raises ValueError unless ``workdir`` is, or can be created as, a writable folder."""
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--{flag}={workdir!r} is invalid: it is a file, not a folder")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(
            f"--{flag}={workdir!r} is invalid: {existing} is a file, so the folder cannot be made"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--{flag}={workdir!r} is invalid: {existing} is not writable")


def check_run(config: config_lib.TrainConfig, dataset: data_lib.Dataset) -> list[str]:
    """Raises ValueError if ``config`` (resolved) cannot train on ``dataset``; returns warnings."""
    info = dataset.info
    for split, labels in (("train", dataset.train_labels), ("test", dataset.test_labels)):
        if len(labels) == 0:
            raise ValueError(f"--dataset={config.dataset!r} is invalid: its {split} split is empty")
    try:
        data_lib.check_labels(dataset, f"--dataset={config.dataset!r}")
    except data_lib.DataUnavailableError as e:
        raise ValueError(str(e)) from None
    length = stream_length(config, len(dataset.train_labels))
    if length < 1:
        raise ValueError(
            f"--epochs={config.epochs!r} is invalid: {len(dataset.train_labels)} training "
            "instances give an empty stream; train for at least one instance"
        )
    _check_shapes("model", config.model, info)
    if config.uses_eif:
        _check_shapes("filter_model", config.filter_model, info, num_classes=2)
    return _unseen_test_labels(dataset)


def _check_shapes(
    flag: str, name: str, info: data_lib.DatasetInfo, num_classes: int | None = None
) -> None:
    """Raises ValueError if model ``name`` has an empty activation on ``info``'s images."""
    model = models.create(name, num_classes or info.num_classes, xla_cpu=False)
    example = jnp.zeros((1, *info.image_shape), jnp.float32)
    shape = "x".join(map(str, info.image_shape))
    try:
        traced = jax.make_jaxpr(
            lambda x: model.init_with_output(jax.random.key(0), x, train=False)
        )(example)
    except (ArithmeticError, ValueError, TypeError) as e:  # A layer with no input at all.
        raise ValueError(
            f"--{flag}={name!r} is invalid for {shape} images: building it fails "
            f"({type(e).__name__}: {e}); use larger images or a smaller network"
        ) from None
    empty = _first_empty(traced.jaxpr)
    if empty is not None:
        raise ValueError(
            f"--{flag}={name!r} is invalid for {shape} images: its activations shrink to an "
            f"empty {empty[1]} array ({empty[0]}); use larger images or a smaller network"
        )


def _first_empty(jaxpr: Any) -> tuple[str, tuple[int, ...]] | None:
    """The first equation (nested jaxprs included) with a zero-sized output."""
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            shape = getattr(var.aval, "shape", ())
            if 0 in shape:
                return eqn.primitive.name, tuple(shape)
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found = _first_empty(inner)
                    if found is not None:
                        return found
    return None


def _unseen_test_labels(dataset: data_lib.Dataset) -> list[str]:
    """A warning if some test labels never occur among the training labels."""
    train, test = dataset.train_labels, dataset.test_labels
    if not (isinstance(train, np.ndarray) and isinstance(test, np.ndarray)):
        return []  # Lazily read splits (ImageNet) are not scanned.
    unseen = np.setdiff1d(np.unique(test), np.unique(train))
    if not unseen.size:
        return []
    count = int(np.isin(test, unseen).sum())
    return [
        f"test labels {unseen.tolist()[:10]} never occur in the training split: "
        f"{count} of {len(test)} test instances cannot be classified correctly"
    ]
