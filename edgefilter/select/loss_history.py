"""EIF ranked together with each instance's last recorded loss (issue 19; not in the paper).

The paper's filter (:func:`edgefilter.select.eif`) sees an image and predicts whether
the main network's loss on it will be high; it never sees the label, nor what the main
network made of this very instance before. In on-device training the stream repeats
(epochs over what the device holds), and every instance the main network trains on or
probes yields its loss for free. This selector keeps the latest such loss per training
instance (``num_train`` float32 values, keyed by the dataset index, ``-1`` for never
recorded) and keeps the ``train_size`` instances of each chunk with the largest

    rank_chunk(filter margin) + rank_chunk(recorded loss)

where ``rank_chunk`` is an instance's rank within its chunk (0 to m - 1) and an instance
with no recorded loss ranks above every recorded one. Everything else is the filter's:
its probes, labels (Eq. 1), updates (Eq. 6-7) and ``T_l`` control (Eq. 2-3). The rank
sum needs no scale between a logit margin and a loss, and no new hyper-parameter; the
history is the main network's own, label-aware signal (InfoBatch, Qin et al. 2024, ranks
by the same per-instance history), only as fresh as the instance's last visit, where the
filter generalises across instances from the image alone.

Chosen on a held-out part of Fashion-MNIST's training set (README, issue 19); the
history costs no multiply-accumulate (a gather and two scatters per chunk), so the
counted reduction is the filter's.

  sel = select.with_loss_history(select.eif(...), num_train=len(train_labels))
  # select(state, x, key, valid, indices=...) needs each slot's training-set index.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from edgefilter.select.base import Choice, Selector

__all__ = ["LossHistoryState", "with_loss_history"]

UNSEEN = -1.0  # Stored for an instance whose loss was never recorded (losses are >= 0).
_FIRST = 1e9  # Its score: above every recorded loss, so unseen instances rank first.


class LossHistoryState(struct.PyTreeNode):
    """The wrapped selector's state, the recorded losses, and the chunk's indices."""

    inner: Any
    losses: jax.Array  # [num_train] float32: last recorded loss, UNSEEN if none.
    indices: jax.Array  # [m] int32: the training-set indices of the last chunk selected.


def with_loss_history(inner: Selector, *, num_train: int) -> Selector:
    """``inner`` (an :func:`edgefilter.select.eif` selector) ranked with a loss history.

    Args:
      inner: the filter's selector; its ``select`` must take a ``prior`` score (and
        ``predicted``, passed on, as is its ``predict_block``).
      num_train: the training set's size (the history's length).

    Returns:
      A :class:`~edgefilter.select.Selector` with ``needs_indices``: ``select`` takes
      the chunk's training-set ``indices`` as a keyword. Same sizes as ``inner``.

    Raises:
      ValueError: for ``num_train < 1``.
    """
    if int(num_train) < 1:
        raise ValueError(f"num_train={num_train!r} must be a positive integer")

    def init(key: jax.Array, x_example: jax.Array) -> LossHistoryState:
        return LossHistoryState(
            inner=inner.init(key, x_example),
            losses=jnp.full((num_train,), UNSEEN, jnp.float32),
            indices=jnp.zeros((x_example.shape[0],), jnp.int32),
        )

    def select(
        state: LossHistoryState,
        x: jax.Array,
        key: jax.Array,
        valid: jax.Array | None = None,
        *,
        indices: jax.Array,
        predicted: jax.Array | None = None,
    ) -> tuple[Choice, LossHistoryState]:
        inner_key, tie_key = jax.random.split(key)
        recorded = state.losses[indices]
        # A jitter far below a loss's resolution breaks exact ties at random.
        jitter = 1e-6 * jax.random.uniform(tie_key, recorded.shape)
        prior = jnp.where(recorded < 0, _FIRST, recorded) + jitter
        choice, inner_state = inner.select(
            state.inner, x, inner_key, valid, prior=prior, predicted=predicted
        )
        return choice, state.replace(inner=inner_state, indices=indices)

    def observe(
        state: LossHistoryState,
        x: jax.Array,
        choice: Choice,
        train_losses: jax.Array,
        probe_losses: jax.Array,
    ) -> tuple[LossHistoryState, dict[str, jax.Array]]:
        inner_state, metrics = inner.observe(state.inner, x, choice, train_losses, probe_losses)
        losses = state.losses
        for idx, weight, values in (
            (choice.train_idx, choice.train_weight, train_losses),
            (choice.probe_idx, choice.probe_weight, probe_losses),
        ):
            # Padding slots (weight 0) go out of bounds and are dropped.
            target = jnp.where(weight > 0, state.indices[idx], num_train)
            losses = losses.at[target].set(values.astype(jnp.float32), mode="drop")
        return state.replace(inner=inner_state, losses=losses), metrics

    predict_block = None
    if inner.predict_block is not None:

        def predict_block(state: LossHistoryState, x_block: jax.Array) -> Any:
            return inner.predict_block(state.inner, x_block)

    return Selector(
        init,
        select,
        observe,
        inner.train_size,
        inner.probe_size,
        needs_indices=True,
        predict_block=predict_block,
    )
