"""The training stream: instances arriving in chunks, and packing into static batches.

The stream is the concatenation of seeded per-epoch permutations of the training set,
so a run is reproducible from its seed and a resumed run can regenerate exactly where
it stopped. Chunks of ``batch_size`` instances "arrive" one after the other; chunks
run straight across epoch boundaries, so no instance is dropped and no chunk is short
except possibly the run's last one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import numpy as np

from edgefilter import data as data_lib


@dataclasses.dataclass(frozen=True)
class Stream:
    """The training stream: seeded per-epoch permutations, concatenated.

    Position ``s`` of the stream is instance ``permutation(seed, s // n)[s % n]``.
    """

    seed: int
    num_train: int
    length: int  # Instances streamed over the whole run.

    def indices(self, start: int, count: int) -> np.ndarray:
        """Training-set indices of stream positions ``[start, start + count)``."""
        positions = np.arange(start, start + count)
        epochs, offsets = np.divmod(positions, self.num_train)
        out = np.empty(count, np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self._permutation(int(epoch))[offsets[sel]]
        return out

    @functools.lru_cache(maxsize=4)  # noqa: B019 (bounded, and Stream is immutable)
    def _permutation(self, epoch: int) -> np.ndarray:
        return data_lib.epoch_permutation(self.seed, epoch, self.num_train)


def stream_batch(indices: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fills a batch of static size: ``indices`` then repeats of them with weight 0.

    Only a run's final chunk can be short. Repeating real instances (rather than zeros)
    keeps batch-norm statistics sane; their weight 0 removes them from the loss, so they
    are neither trained on nor counted as trained.
    """
    n = len(indices)
    weights = (np.arange(batch_size) < n).astype(np.float32)
    return indices[np.arange(batch_size) % n], weights


class Queue(NamedTuple):
    """A bounded FIFO of training-set indices, as arrays (a checkpointable pytree).

    The early instance filter packs the instances it selects from successive chunks
    into full training batches through such a queue, so the train step always sees the
    same static batch shape however many instances a chunk contributes, and what a
    chunk leaves over waits for the next chunk (also across epoch boundaries) instead
    of being dropped or padded.
    """

    items: np.ndarray  # int64[capacity]; the first `count` entries are queued, oldest first.
    count: np.ndarray  # int64 scalar.

    @classmethod
    def empty(cls, capacity: int) -> Queue:
        return cls(np.zeros(capacity, np.int64), np.asarray(0, np.int64))

    def __len__(self) -> int:
        return int(self.count)

    def push(self, indices: np.ndarray) -> tuple[Queue, int]:
        """Appends as many of ``indices`` as fit; returns the queue and how many did not."""
        n = len(self)
        room = len(self.items) - n
        taken = np.asarray(indices, np.int64)[:room]
        items = self.items.copy()
        items[n : n + len(taken)] = taken
        return Queue(items, np.asarray(n + len(taken), np.int64)), len(indices) - len(taken)

    def pop(self, k: int) -> tuple[Queue, np.ndarray]:
        """Removes and returns the oldest ``min(k, len)`` entries."""
        n = len(self)
        k = min(k, n)
        out = self.items[:k].copy()
        items = np.zeros_like(self.items)
        items[: n - k] = self.items[k:n]
        return Queue(items, np.asarray(n - k, np.int64)), out
