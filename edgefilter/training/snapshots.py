"""Snapshots of the selection's decision on whole chunks, for the paper's Fig. 13.

At ``--snapshots`` points of a run, evenly spaced from its first chunk to its last, the
chunk about to be trained is saved with the decision the run takes on it: which of its
instances the main network trains on (kept) and which it drops, and the main network's
loss on each (inference mode, before the chunk's step). Each snapshot is one file,
``<workdir>/snapshots/chunk_<n>.npz`` (:func:`write`, :func:`load`), holding
``images`` (uint8 ``[m, H, W, C]``), ``labels``, ``valid`` (False on the padding of a
run's short last chunk), ``kept`` (bool), ``losses`` (float32), and the scalars
``chunk`` (its number in the stream), ``step`` (``chunk + 1``, as ``metrics.jsonl``
numbers it) and ``epoch`` (instances streamed before it / the training set's size).

How the decision is had without touching training: a snapshot is taken at the start of
a block of chunks (the loop's unit of dispatch, :mod:`edgefilter.training.engine`),
from the loop state before the block, by running the same pure selection on the
block's first chunk with the same key (:func:`engine_decision`, the stream engine's
:func:`~edgefilter.training.engine.select_chunk`; :func:`filter_decision`, the
host-queue runner's filter prediction). That is the decision the block then takes on
that chunk. A target chunk inside a block is therefore snapped at the block's first
chunk (at most ``block_chunks - 1`` chunks earlier). The methods with a per-chunk
selection have snapshots (:data:`METHODS`); the others keep every instance, or skip
whole chunks on the host.

Cost: one selection pass (the filter's forward; the ranking forward of oracle, OHEM
and Selective-Backprop) and one main-network forward on one chunk per snapshot,
counted as side time (as evaluation is), so not in ``train_time_s``.
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from edgefilter import backends
from edgefilter import data as data_lib
from edgefilter.method import instance_filter
from edgefilter.select.base import Selector
from edgefilter.training import config as config_lib
from edgefilter.training import engine as engine_lib
from edgefilter.training import steps as steps_lib

__all__ = [
    "METHODS",
    "Snapshot",
    "count",
    "due",
    "engine_decision",
    "filter_decision",
    "load",
    "targets",
    "write",
]

# The methods that choose within each chunk: the instance filter and the data-selection
# baselines. SGD and EMP keep everything; smb, smd, sd and e2train decide per chunk or
# per block, not per instance.
METHODS = (*config_lib.EIF_METHODS, *config_lib.SELECTION_BASELINES)
FOLDER = "snapshots"


class Snapshot(NamedTuple):
    """One chunk as the run decided on it (see the module doc for each field)."""

    chunk: int
    step: int
    epoch: float
    images: np.ndarray
    labels: np.ndarray
    valid: np.ndarray
    kept: np.ndarray
    losses: np.ndarray


def count(config: config_lib.TrainConfig) -> int:
    """How many snapshots the run takes: ``config.snapshots``, 0 for a method not in
    :data:`METHODS`."""
    return config.snapshots if config.method in METHODS else 0


def targets(chunks: int, number: int) -> tuple[int, ...]:
    """``number`` chunk numbers evenly spaced over ``chunks``, first and last included.

    ``round(i * (chunks - 1) / (number - 1))`` for ``i < number`` (the last chunk alone
    for one); fewer when the run has fewer chunks. ``targets(10, 4) == (0, 3, 6, 9)``.
    """
    if number <= 0 or chunks <= 0:
        return ()
    if number == 1:
        return (chunks - 1,)
    return tuple(sorted({round(i * (chunks - 1) / (number - 1)) for i in range(number)}))


def due(chunk_targets: Sequence[int], first: int, last: int) -> bool:
    """Whether a block of chunks ``first`` to ``last`` (inclusive) holds a target."""
    return any(first <= t <= last for t in chunk_targets)


def _kept_mask(train_idx: jax.Array, train_weight: jax.Array, size: int) -> jax.Array:
    """``[size]`` bool: the chunk slots a choice trains on (weight > 0)."""
    chosen = (train_weight > 0).astype(jnp.int32)
    return jnp.zeros((size,), jnp.int32).at[train_idx].max(chosen) > 0


def engine_decision(
    selector: Selector, info: data_lib.DatasetInfo, *, xla_cpu: bool | None = None
) -> Callable:
    """Jitted ``decide(state, images, labels, valid, chunk, root, indices) -> (kept, losses)``.

    ``state`` is the stream engine's :class:`~edgefilter.training.engine.EngineState`
    before chunk number ``chunk``; ``kept`` is the ``[m]`` mask of the slots the engine's
    step trains on (:func:`~edgefilter.training.engine.select_chunk`, the same pure
    function with the same key), ``losses`` the main network's inference-mode losses.
    Nothing is donated: the state goes on to train the block.
    """

    @functools.partial(backends.jit, xla_cpu=xla_cpu)
    def decide(state, images, labels, valid, chunk, root, indices):
        x = steps_lib.preprocess(images, info, None)
        choice, _ = engine_lib.select_chunk(selector, state, x, labels, valid, chunk, root, indices)
        kept = _kept_mask(choice.train_idx, choice.train_weight, len(labels))
        return kept, engine_lib.probe_losses(state.main, x, labels)

    return decide


def filter_decision(
    info: data_lib.DatasetInfo,
    config: instance_filter.FilterConfig,
    *,
    xla_cpu: bool | None = None,
) -> Callable:
    """Jitted ``decide(main, filter_state, images, labels, valid) -> (kept, losses)``.

    The host-queue runner's decision (:mod:`edgefilter.training.eif_runner`): the
    instances the filter predicts high-loss (:func:`instance_filter.predict`, whose
    state update is dropped) join the train queue; ``losses`` as in
    :func:`engine_decision`.
    """

    @functools.partial(backends.jit, xla_cpu=xla_cpu)
    def decide(main, fstate, images, labels, valid):
        x = steps_lib.preprocess(images, info, None)
        _, prediction = instance_filter.predict(fstate, x, valid, config)
        return prediction.pred_high, engine_lib.probe_losses(main, x, labels)

    return decide


def write(workdir: str, snapshot: Snapshot) -> str:
    """Writes ``snapshot`` as ``<workdir>/snapshots/chunk_<n>.npz`` (replacing it whole:
    a resumed run that redoes the chunk writes the same); returns the path."""
    folder = os.path.join(workdir, FOLDER)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"chunk_{snapshot.chunk}.npz")
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in snapshot._asdict().items()})
    os.replace(tmp, path)
    return path


def load(workdir: str) -> list[Snapshot]:
    """The snapshots saved in ``workdir``, by chunk; empty when there are none."""
    snapshots = []
    for path in glob.glob(os.path.join(workdir, FOLDER, "chunk_*.npz")):
        if path.endswith(".tmp.npz"):
            continue
        with np.load(path) as arrays:
            values: dict[str, Any] = {k: arrays[k] for k in Snapshot._fields}
        values.update(
            chunk=int(values["chunk"]), step=int(values["step"]), epoch=float(values["epoch"])
        )
        snapshots.append(Snapshot(**values))
    return sorted(snapshots, key=lambda s: s.chunk)
