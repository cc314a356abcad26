"""Every instance of every chunk: standard SGD (and EMP) as a selector.

The selection interface's identity element: ``train_idx`` is the chunk in order, a
padding slot of a run's short last chunk has weight 0, nothing is probed and nothing is
learned. The stream engine runs SGD and EMP through it, so every method takes the same
path through the engine and their times compare like for like.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from edgefilter.select.base import Choice, Selector, count_chunks, observe_nothing

__all__ = ["everything"]


def everything(*, chunk_size: int) -> Selector:
    """A selector that trains on every valid instance of each chunk, in order.

    Raises:
      ValueError: for a ``chunk_size`` below 1.
    """
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")

    def select(
        state: jax.Array, x: jax.Array, key: jax.Array, valid: jax.Array | None = None
    ) -> tuple[Choice, jax.Array]:
        del x, key
        weight = jnp.ones((chunk_size,)) if valid is None else valid.astype(jnp.float32)
        empty = jnp.zeros((0,), jnp.int32)
        idx = jnp.arange(chunk_size, dtype=jnp.int32)
        return Choice(idx, weight, empty, empty.astype(jnp.float32)), state

    return Selector(count_chunks, select, observe_nothing, chunk_size, 0)
