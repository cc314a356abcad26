"""An on-device queue that packs a variable number of selected instances per chunk into
full main-network batches (in the stream engine's scan carry).

Selective-Backprop and InfoBatch keep a data-dependent number of each chunk's
instances, but train on full batches: SB "accumulates selected examples until a batch
is full" (Jiang et al. 2019, Sec. 3; its ``get_batch``), InfoBatch's sampler yields
full batches of what it did not prune. In the stream engine every chunk has the same
shapes, so the kept instances (uint8 images, labels, loss weights and training-set
indices) are appended to a fixed-capacity queue; after a block of ``B`` chunks the host
reads the queue's count and takes one main step per full batch of ``size``
(:func:`edgefilter.training.engine.make_queue_step`), each dropping its batch from the
queue. Nothing selected is lost (the capacity, ``size + B * m``, holds a queue just
short of a batch plus a whole block), and nothing is padded but the run's last partial
batch, which trains with zero-weight padding (computed, so counted).

**Why not a step inside the scan under** ``lax.cond`` (a step in the chunk that fills a
batch): XLA:CPU runs a conditional's body several times slower than straight-line code
(benchmarks/README.md, "Stream engine"). Measured on the shared 2-core VM (LeNet,
chunks of 64, blocks of 8, InfoBatch's first epoch, which keeps everything, so one step
a chunk like SGD): SGD 13-60 ms a chunk, the step under ``lax.cond`` 110-300 ms, the
same block with the branch made straight-line (a measurement only) 18-35 ms. With the
steps at the block's end, ``experiments.train --steps=400`` (one run each, the same VM)
trained InfoBatch's first 400 chunks in 9.3 s against SGD's 11.1 s (under ``lax.cond``:
186 s against 23 s). The price
of stepping at the block's end: Selective-Backprop's selection forward within a block
sees the parameters of the block's start (its source's forward sees parameters at
most one backward batch old).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

__all__ = ["Queue", "empty", "pop", "push"]


class Queue(struct.PyTreeNode):
    """The queued instances: the first ``count`` rows of each array are real."""

    images: jax.Array  # [capacity, H, W, C] uint8
    labels: jax.Array  # [capacity] int32
    weights: jax.Array  # [capacity] float32, the loss weight of each instance; 0 past count
    indices: jax.Array  # [capacity] int32, training-set indices
    count: jax.Array  # int32 scalar


def empty(size: int, chunk_size: int, image_shape: tuple[int, ...], chunks: int = 1) -> Queue:
    """An empty queue for batches of ``size`` from blocks of ``chunks`` chunks of ``m``.

    Its capacity, ``size + chunks * chunk_size``, holds what a block can add to a queue
    emptied of its full batches after the block before.

    Raises:
      ValueError: for a ``size``, ``chunk_size`` or ``chunks`` below 1.
    """
    for name, value in (("size", size), ("chunk_size", chunk_size), ("chunks", chunks)):
        if value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    capacity = size + chunks * chunk_size
    return Queue(
        images=jnp.zeros((capacity, *image_shape), jnp.uint8),
        labels=jnp.zeros((capacity,), jnp.int32),
        weights=jnp.zeros((capacity,), jnp.float32),
        indices=jnp.zeros((capacity,), jnp.int32),
        count=jnp.zeros((), jnp.int32),
    )


def push(
    queue: Queue,
    images: jax.Array,
    labels: jax.Array,
    indices: jax.Array,
    slots: jax.Array,
    weights: jax.Array,
) -> Queue:
    """Appends the chunk rows ``slots`` whose ``weights`` are positive, in slot order."""
    capacity = queue.labels.shape[0]
    kept = weights > 0
    position = queue.count + jnp.cumsum(kept) - 1
    position = jnp.where(kept, position, capacity)  # Out of range: dropped by the scatter.

    def put(into: jax.Array, rows: jax.Array) -> jax.Array:
        return into.at[position].set(jnp.take(rows, slots, axis=0).astype(into.dtype), mode="drop")

    return Queue(
        images=put(queue.images, images),
        labels=put(queue.labels, labels),
        weights=queue.weights.at[position].set(weights, mode="drop"),
        indices=put(queue.indices, indices),
        count=queue.count + jnp.sum(kept, dtype=jnp.int32),
    )


def pop(queue: Queue, size: int, full: jax.Array) -> Queue:
    """The queue less its first ``size`` rows (all of it if fewer) if ``full``."""
    capacity = queue.labels.shape[0]
    shift = jnp.where(full, size, 0)
    rows = jnp.minimum(jnp.arange(capacity) + shift, capacity - 1)
    count = jnp.maximum(queue.count - shift, 0)
    weights = jnp.where(jnp.arange(capacity) < count, queue.weights[rows], 0.0)
    return Queue(
        images=queue.images[rows],
        labels=queue.labels[rows],
        weights=weights,
        indices=queue.indices[rows],
        count=count,
    )
