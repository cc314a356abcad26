"""Selective-Backprop (Jiang et al., "Accelerating Deep Learning by Focusing on the
Biggest Losers", arXiv:1910.00762, 2019) and its stale variant, as a packing selector.

Sec. 3 of the paper and its public code (github.com/angelajiang/SelectiveBackprop,
``lib/calculators.py`` ``BatchedRelativeProbabilityCalculator``, ``lib/hist.py``,
``lib/trainer.py``, ``lib/fp_selectors.py``), read, not copied:

* every instance gets a forward pass of the network being trained, and its loss is
  appended to a history of the ``history`` most recent losses (default 1024);
* it is kept for the backward pass with probability ``P = CDF(loss)^beta``, where
  ``CDF(loss)`` is the fraction of the history strictly below it (the losses just
  appended included) and ``beta`` sets the selectivity (``--prob_pow``, default 3;
  the paper evaluates 1, 2, 3). In expectation a fraction ``1 / (1 + beta)`` is kept
  once the loss distribution settles (``E[U^beta]`` for ``U`` uniform);
* kept instances accumulate until a backward batch of the forward batch's size is full;
* the first epoch trains on everything ("priming", ``num_images_to_prime`` = the
  training set).

Here the chunk is the forward batch: the engine hands ``select`` the main network's
inference-mode losses on the whole chunk (``chunk_forward``), ``select`` draws the keep
decisions, and the engine packs the kept instances into batches of ``m`` on the device
(``pack_size``, :mod:`edgefilter.training.pack`), so the number of main steps is the
number of full batches: the work counted is the work computed, nothing is lost or
padded but the run's last partial batch. The engine takes those steps at the end of
each block of ``--block_chunks`` chunks, so the selection forward sees parameters up to
a block old (the source's, at most one backward batch); a shorter block is closer to
the source, a longer one faster (one dispatch per block), and unlike the other
methods a run's values depend on ``--block_chunks``.

**Stale-SB** (``staleness``, Sec. 4.3 "Reducing forward pass overhead"; the code's
``StaleSelector``, ``--staleness`` default 3): an instance's forward pass is skipped and
its loss recorded at its last forward reused until ``staleness`` epochs have passed
since then. In a stream "earlier" is that: a per-instance table keyed by the
training-set index (``needs_indices``) holds each instance's last forwarded loss and the
epoch of that forward, and a chunk runs the forward only if one of its valid instances
has none yet or one ``staleness`` or more epochs old (every instance is seen once an
epoch, so whole epochs are forward epochs: 0, 3, 6, ... at the default). A chunk's
forward covers the whole chunk (fixed shapes), so a chunk that straddles two epochs
refreshes all its instances; the forward is a ``lax.cond`` branch and is counted only
where it ran.

Not counted in the accounting (which counts the networks' MACs): the CDF's
comparisons, ``m * history`` a chunk (65,536 for 64 and 1024, against LeNet's 147
million forward MACs for the chunk).

Deviations: the history here also takes the priming epoch's losses (the code starts it
after priming; with 1024 entries it is refilled within 16 chunks of 64 either way);
the code's forward runs on the training network (``CutoutForwardpropper``, with
augmentation), this one in inference mode on the unaugmented chunk, like the oracle's;
``sampling_min`` is the code's 0 (no floor on ``P``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from edgefilter.select.base import Choice, Packed, Selector

__all__ = ["SbState", "keep_probability", "selective_backprop"]

_NEVER = -(2**30)  # The forward epoch of an instance never forwarded.


class SbState(struct.PyTreeNode):
    """The loss history, the stream position, and the stale variant's per-instance table."""

    history: jax.Array  # [history] float32, a ring of the most recent losses.
    filled: jax.Array  # Entries of `history` holding a loss (up to its length).
    head: jax.Array  # Where the next loss goes.
    streamed: jax.Array  # Valid instances seen (priming ends after `prime` of them).
    forwarded: jax.Array  # Chunk slots run through the selection forward (counted).
    table: jax.Array  # [n] float32: each instance's last forwarded loss (stale; else [1]).
    forward_epoch: jax.Array  # [n] int32: the epoch of that forward (stale; else [1]).


def keep_probability(
    losses: jax.Array, history: jax.Array, filled: jax.Array, beta: float
) -> jax.Array:
    """``CDF(loss)^beta``: the fraction of the first ``filled`` history entries strictly
    below each loss (``lib/hist.py``'s ``percentile_of_score`` / 100), to the ``beta``."""
    counted = jnp.arange(history.shape[0]) < filled
    below = jnp.sum((history[None, :] < losses[:, None]) & counted[None, :], axis=1)
    return (below / jnp.maximum(filled, 1)) ** beta


def selective_backprop(
    beta: float,
    history: int,
    *,
    chunk_size: int,
    prime: int,
    staleness: int | None = None,
    num_train: int | None = None,
) -> Selector:
    """The Selective-Backprop selector (module doc); ``staleness`` set: Stale-SB.

    Args:
      beta: selectivity, ``P = CDF(loss)^beta``; > 0.
      history: recent losses the CDF is taken over; at least ``chunk_size``.
      chunk_size: ``m``, instances per chunk, also the backward batch's size.
      prime: instances at the start of the stream trained on without selection (the
        source primes with the first epoch: the training set's size).
      staleness: Stale-SB's epochs a forwarded loss is reused for (``None``: a forward
        on every chunk, plain SB).
      num_train: training-set size, for Stale-SB's table and epochs.

    Raises:
      ValueError: for a setting out of range (named).
    """
    m = int(chunk_size)
    if m < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")
    if not beta > 0:
        raise ValueError(f"beta={beta!r} must be > 0")
    if int(history) < m:
        raise ValueError(f"history={history!r} must be >= chunk_size={m}")
    if prime < 0:
        raise ValueError(f"prime={prime!r} must be >= 0")
    stale = staleness is not None
    if stale and (int(staleness) < 1 or num_train is None or num_train < 1):
        raise ValueError(f"staleness={staleness!r} needs a value >= 1 and num_train >= 1")
    table_size = num_train if stale else 1  # Unused by plain SB (orbax saves no size 0).

    def init(key: jax.Array, x_example: jax.Array) -> SbState:
        del key, x_example

        def zero():  # A buffer each: the engine donates the state's buffers.
            return jnp.zeros((), jnp.int32)

        return SbState(
            history=jnp.zeros((history,), jnp.float32),
            filled=zero(),
            head=zero(),
            streamed=zero(),
            forwarded=zero(),
            table=jnp.zeros((table_size,), jnp.float32),
            forward_epoch=jnp.full((table_size,), _NEVER, jnp.int32),
        )

    def losses_of(state, valid, forward, indices):
        """The chunk's losses, fresh or (Stale-SB) from the table; the updated state."""
        if not stale:
            return forward(), state.replace(forwarded=state.forwarded + m)
        epoch = state.streamed // num_train
        due = valid & (epoch - state.forward_epoch[indices] >= staleness)
        run = jnp.any(due)
        losses = jax.lax.cond(run, forward, lambda: state.table[indices])
        where = jnp.where(run & valid, indices, table_size)  # Out of range: not written.
        return losses, state.replace(
            table=state.table.at[where].set(losses, mode="drop"),
            forward_epoch=state.forward_epoch.at[where].set(epoch, mode="drop"),
            forwarded=state.forwarded + jnp.where(run, m, 0),
        )

    def select(
        state: SbState,
        x: jax.Array,
        key: jax.Array,
        valid: jax.Array | None = None,
        *,
        forward: Callable[[], jax.Array],
        indices: jax.Array | None = None,
    ) -> tuple[Choice, SbState]:
        del x
        if valid is None:
            valid = jnp.ones((m,), bool)
        losses, state = losses_of(state, valid, forward, indices)
        # Append the valid losses, in slot order, to the ring of recent losses.
        rank = jnp.cumsum(valid) - 1
        slot = jnp.where(valid, (state.head + rank) % history, history)
        ring = state.history.at[slot].set(losses, mode="drop")
        added = jnp.sum(valid, dtype=jnp.int32)
        filled = jnp.minimum(state.filled + added, history)
        p = keep_probability(losses, ring, filled, beta)
        priming = state.streamed + rank < prime
        p = jnp.where(priming, 1.0, p)
        keep = valid & (jax.random.uniform(key, (m,)) < p)
        empty = jnp.zeros((0,), jnp.int32)
        choice = Choice(
            jnp.arange(m, dtype=jnp.int32),
            keep.astype(jnp.float32),
            empty,
            empty.astype(jnp.float32),
        )
        return choice, state.replace(
            history=ring,
            filled=filled,
            head=(state.head + added) % history,
            streamed=state.streamed + added,
        )

    def observe(
        state: SbState,
        x: None,
        choice: None,
        train_losses: jax.Array,
        probe_losses: jax.Array,
        *,
        packed: Packed,
    ) -> tuple[SbState, dict[str, jax.Array]]:
        del x, choice, train_losses, probe_losses, packed  # SB learns from its forward.
        return state, {}

    return Selector(
        init,
        select,
        observe,
        m,
        0,
        chunk_forward="inference",
        needs_indices=stale,
        pack_size=m,
    )
