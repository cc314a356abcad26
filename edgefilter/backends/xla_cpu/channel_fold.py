"""Per-channel sums of channels-last arrays, computed on a folded two-dimensional view.

Batch norm (its statistics and, in the backward pass, the gradients of its scale, shift
and statistics) and EMP's channel scores (PAPER.md Eq. 11) sum an ``[N, H, W, C]`` array
over every axis but the last. XLA:CPU computes such a column sum over a narrow minor axis
(``C`` = 16 to 64 in the CIFAR ResNets) several times slower than over a wide one. Viewing
the array as ``[rows / g, g * C]`` (a free reshape of the row-major buffer), summing the
columns of that wide matrix and adding the ``g`` partial sums after is the same sum,
computed over wide rows (benchmarks/README.md, "XLA:CPU lowerings", has the timings). A
per-channel vector broadcast back onto the folded view (``tile``) makes the backward pass
of such code sum over the same wide columns. Used when :mod:`edgefilter.backends`' switch
is on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["WIDE_ROW", "channel_sum", "fold", "group_count", "tile"]

#: Widest row the folded view is made of, in elements.
WIDE_ROW = 256


def group_count(rows: int, channels: int) -> int:
    """The largest ``g <= WIDE_ROW / channels`` (at least 1) that divides ``rows``."""
    return max(g for g in range(1, max(1, WIDE_ROW // channels) + 1) if rows % g == 0)


def fold(x: jax.Array) -> tuple[jax.Array, int]:
    """``x`` viewed as ``[rows / g, g * C]`` (``C`` its last axis), and ``g``."""
    channels = x.shape[-1]
    rows = x.size // channels
    groups = group_count(rows, channels)
    return x.reshape(rows // groups, groups * channels), groups


def tile(values: jax.Array, groups: int) -> jax.Array:
    """A per-channel ``[C]`` vector laid out along a folded row: ``[g * C]``."""
    return jnp.tile(values, groups)


def channel_sum(x: jax.Array, groups: int | None = None) -> jax.Array:
    """``jnp.sum(x, axis=all but the last)``, summed on the folded view.

    Args:
      x: any array whose last axis is the channel axis; or, with ``groups``, an array
        already folded by :func:`fold` into ``[rows / g, g * C]``.
      groups: ``g`` of an already folded ``x``; ``None`` folds ``x`` here.

    Returns:
      ``[C]`` sums in ``x``'s dtype.
    """
    if groups is None:
        x, groups = fold(x)
    return jnp.sum(x, axis=0).reshape(groups, -1).sum(axis=0)
