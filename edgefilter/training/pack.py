"""An on-device queue that packs a variable number of selected instances per chunk into
full main-network batches (the scan carry of the stream engine).

Selective-Backprop and InfoBatch keep a data-dependent number of each chunk's
instances, but train on full batches: SB "accumulates selected examples until a batch
is full" (Jiang et al. 2019, Sec. 3; its ``get_batch``), InfoBatch's sampler yields
full batches of what it did not prune. In the stream engine every chunk has the same
shapes, so the kept instances (uint8 images, labels, loss weights and training-set
indices) are appended to a fixed-capacity queue in the carry; a chunk after which the
queue holds ``size`` instances or more trains one main step on the first ``size`` of
them and drops them from the queue. Nothing selected is lost (the capacity,
``size + m``, holds a queue just short of a batch plus a whole chunk, and ``size >= m``
means one step always brings it back below ``size``), and nothing is padded until the
run's last partial batch, which trains with zero-weight padding (computed, so counted).

**Cost on XLA:CPU.** The main step sits in a ``lax.cond`` branch, and XLA:CPU runs a
conditional's body several times slower than straight-line code (benchmarks/README.md,
"Stream engine"). Measured on the shared 2-core VM (LeNet, chunks of 64, blocks of 8,
InfoBatch's first epoch, which keeps everything, so one step a chunk like SGD): SGD
13-60 ms a chunk, InfoBatch 110-300 ms; the same block with the branch made
straight-line (a measurement only: it would train on partial batches) 18-35 ms. So
on a CPU these methods' measured time is far above what their counted MACs say. A
design without the branch: the block selects and queues only (one dispatch), the host
reads the queue's count at the block's one sync and dispatches that many full-batch
steps; for Selective-Backprop the selection forward then sees parameters up to a
block's steps old (a staleness its source has too, in its forward queue).
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


def empty(size: int, chunk_size: int, image_shape: tuple[int, ...]) -> Queue:
    """An empty queue for batches of ``size`` (``>= chunk_size``) from chunks of ``m``.

    Raises:
      ValueError: when ``size < chunk_size`` (one step per chunk could not keep up).
    """
    if size < chunk_size:
        raise ValueError(f"size={size!r} must be >= chunk_size={chunk_size!r}")
    capacity = size + chunk_size
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
    """The queue less its first ``size`` rows if ``full``, else unchanged."""
    capacity = queue.labels.shape[0]
    shift = jnp.where(full, size, 0)
    rows = jnp.minimum(jnp.arange(capacity) + shift, capacity - 1)
    count = queue.count - shift
    weights = jnp.where(jnp.arange(capacity) < count, queue.weights[rows], 0.0)
    return Queue(
        images=queue.images[rows],
        labels=queue.labels[rows],
        weights=weights,
        indices=queue.indices[rows],
        count=count,
    )
