"""Uniform random selection: the no-skill counterpart of the instance filter.

Each chunk's ``train_size = round(r_set * m)`` training instances are drawn uniformly
without replacement from its valid instances; nothing is probed and nothing is learned.
It trains the same number of instances per chunk as :func:`edgefilter.select.eif` and
packs them the same way, so any accuracy difference between the two is the filter's
ranking.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from edgefilter.select.base import Choice, Selector, count_chunks, observe_nothing, top_slots

__all__ = ["uniform"]


def uniform(r_set: float, *, chunk_size: int) -> Selector:
    """A selector that trains on a uniform random ``r_set`` of each chunk.

    Args:
      r_set: fraction of each chunk trained on, in (0, 1].
      chunk_size: ``m``, instances per chunk.

    Raises:
      ValueError: for ``r_set`` or ``chunk_size`` out of range.
    """
    if not 0 < r_set <= 1:
        raise ValueError(f"r_set={r_set!r} must lie in (0, 1]")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")
    train_size = max(1, round(r_set * chunk_size))

    def select(
        state: jax.Array, x: jax.Array, key: jax.Array, valid: jax.Array | None = None
    ) -> tuple[Choice, jax.Array]:
        del x
        if valid is None:
            valid = jnp.ones((chunk_size,), bool)
        # The top train_size of i.i.d. uniform scores: a uniform sample without replacement.
        idx, ok = top_slots(jax.random.uniform(key, (chunk_size,)), valid, train_size)
        empty = jnp.zeros((0,), jnp.int32)
        return Choice(idx, ok.astype(jnp.float32), empty, empty.astype(jnp.float32)), state

    return Selector(count_chunks, select, observe_nothing, train_size, 0)
