"""The early instance filter (PAPER.md Eq. 1-7) as a :class:`~edgefilter.select.Selector`.

Everything the method needs lives inside the three functions, so a user's loop cannot
forget a part:

* ``select``: the filter's forward on the chunk; the ``train_size = round(R_set * m)``
  instances with the largest margin ``logit_H - logit_L`` (or, given a ``prior`` score
  per instance, the largest sum of the margin's rank and the prior's rank within the
  chunk: :func:`edgefilter.select.with_loss_history`, not in the paper) are predicted H
  and trained on
  (quantile control, ``instance_filter``'s module doc: the kept fraction is ``R_set`` by
  construction); the prediction entropy (Eq. 4) marks uncertain predicted-L instances
  (Eq. 5). Probe slots: ``random_probes`` predicted-L instances drawn uniformly at random
  (their labels estimate the H rate among predicted-L instances, which steers ``T_l``
  under quantile control), then the most uncertain predicted-L instances.
* ``predict_ahead`` (not in the paper): the filter's forward for a whole block of
  chunks at once, from its parameters at the block's start (``Selector.predict_block``),
  so a chunk inside the block is ranked by a filter up to ``B - 1`` updates old; the
  updates themselves are unchanged, one per chunk. One forward on ``B * m`` instances
  instead of ``B`` forwards on ``m``.
* ``observe``: labels every instance whose main-network loss is now known by Eq. 1,
  takes one filter step on the weighted loss (Eq. 6-7), counts true-high instances for
  ``R_TH`` (Eq. 2), and every ``window`` chunks closes the window and adapts ``T_l``
  (Eq. 2-3; a few scalar operations, computed every chunk and kept where a window
  closes, so no branch is needed).

The command line runs ``eif`` and ``eif_emp`` through this selector (``training.engine``).
Differences from its host-queue runner (``training.eif_runner``, still used for the
paper's argmax rule and a non-default ``--eif_batch_size``): a chunk's selection is
trained in the same step (no queue across chunks), probes are chosen per chunk (no
probe queue), and the kept count is exactly ``train_size`` (ties at the quantile are
broken by index). Only quantile control fits fixed shapes: the argmax rule keeps a
data-dependent count per chunk.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from edgefilter.method import eif as eif_lib
from edgefilter.method import instance_filter
from edgefilter.select.base import Choice, Selector, top_slots

__all__ = ["EifState", "eif"]


class EifState(struct.PyTreeNode):
    """The filter's state, the chunk count, and what ``select`` told ``observe``."""

    filter: instance_filter.FilterState
    chunk: jax.Array  # Chunks observed so far.
    unprobed: jax.Array  # Uncertain predicted-L instances left unprobed (no free slot).
    probe_random: jax.Array  # [probe_size] bool: the last choice's random probe slots.


def eif(
    filter_model: nn.Module,
    tx: optax.GradientTransformation,
    config: instance_filter.FilterConfig,
    *,
    chunk_size: int,
    probe_size: int | None = None,
    random_probes: int = 1,
    predict_ahead: bool = False,
) -> Selector:
    """The early instance filter as a selector (see the module doc).

    Args:
      filter_model: the 2-way filter network (e.g. ``models.create("lenet_slim", 2)``).
      tx: the filter's optimizer.
      config: the filter's hyper-parameters; ``control`` must be ``"quantile"``.
      chunk_size: ``m``, instances per chunk.
      probe_size: probe slots per chunk (default ``max(1, train_size // 8)``; 0 turns
        probing, and with it uncertainty sampling and the random probes, off).
      random_probes: of the probe slots, how many go to random predicted-L instances.
      predict_ahead: give the selector ``predict_block``, the filter's logits for a
        block of chunks from the parameters at its start (module doc).

    Returns:
      A :class:`~edgefilter.select.Selector` with ``train_size = round(R_set * m)``.

    Raises:
      ValueError: for a non-quantile control, or sizes out of range.
    """
    if config.control != "quantile":
        raise ValueError(
            f"control={config.control!r}: the selection interface needs quantile control "
            "(a fixed kept count per chunk); the paper's argmax rule is available through "
            "the command line's --eif_control=argmax"
        )
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")
    train_size = max(1, round(config.r_set * chunk_size))
    if probe_size is None:
        probe_size = max(1, train_size // 8)
    if not 0 <= probe_size <= chunk_size - train_size:
        raise ValueError(f"probe_size={probe_size!r} must lie in [0, {chunk_size - train_size}]")
    if random_probes < 0:
        raise ValueError(f"random_probes={random_probes!r} must be >= 0")
    num_random = min(random_probes, probe_size)

    def init(key: jax.Array, x_example: jax.Array) -> EifState:
        if x_example.shape[0] != chunk_size:
            raise ValueError(
                f"x_example has {x_example.shape[0]} instances; chunk_size is {chunk_size}"
            )
        fstate = instance_filter.init(filter_model, tx, key, x_example.shape[1:], config)
        return EifState(
            filter=fstate,
            chunk=jnp.zeros((), jnp.int32),
            unprobed=jnp.zeros((), jnp.int32),
            probe_random=jnp.zeros((probe_size,), bool),
        )

    def filter_logits(state: EifState, x: jax.Array) -> jax.Array:
        """The filter's logits (L, H) on ``x``, inference mode, float32."""
        net = state.filter.net
        variables = {"params": net.params, "batch_stats": net.batch_stats}
        return net.apply_fn(variables, x, train=False).astype(jnp.float32)

    def predict_block(state: EifState, x_block: jax.Array) -> jax.Array:
        """``[B, m, 2]``: the logits of a block of chunks, in one forward."""
        flat = x_block.reshape(-1, *x_block.shape[2:])
        return filter_logits(state, flat).reshape(*x_block.shape[:2], -1)

    def select(
        state: EifState,
        x: jax.Array,
        key: jax.Array,
        valid: jax.Array | None = None,
        prior: jax.Array | None = None,
        predicted: jax.Array | None = None,
    ) -> tuple[Choice, EifState]:
        if valid is None:
            valid = jnp.ones((chunk_size,), bool)
        logits = filter_logits(state, x) if predicted is None else predicted
        margin = logits[:, 1] - logits[:, 0]
        score = margin if prior is None else _rank(margin) + _rank(prior)
        train_idx, train_valid = top_slots(score, valid, train_size)
        pred_high = jnp.zeros((chunk_size,), bool).at[train_idx].set(train_valid)
        entropy = eif_lib.prediction_entropy(jax.nn.softmax(logits))  # Eq. 4
        uncertain = eif_lib.uncertainty_mask(pred_high, entropy, config.entropy_threshold)
        uncertain &= valid & config.uncertainty  # Eq. 5
        low = valid & ~pred_high
        random_idx, random_valid = top_slots(
            jax.random.uniform(key, (chunk_size,)), low, num_random
        )
        taken = jnp.zeros((chunk_size,), bool).at[random_idx].set(random_valid)
        unsure_idx, unsure_valid = top_slots(entropy, uncertain & ~taken, probe_size - num_random)
        kth_margin = jnp.min(jnp.where(pred_high, margin, jnp.inf))
        fstate = state.filter.replace(
            offset=jnp.where(jnp.any(pred_high), kth_margin, 0.0).astype(jnp.float32),
            streamed=state.filter.streamed + jnp.sum(valid, dtype=jnp.int32),
            predicted_high=state.filter.predicted_high + jnp.sum(pred_high, dtype=jnp.int32),
            sampled=state.filter.sampled + jnp.sum(uncertain, dtype=jnp.int32),
        )
        choice = Choice(
            train_idx=train_idx,
            train_weight=train_valid.astype(jnp.float32),
            probe_idx=jnp.concatenate([random_idx, unsure_idx]),
            probe_weight=jnp.concatenate([random_valid, unsure_valid]).astype(jnp.float32),
        )
        probe_random = jnp.arange(probe_size) < num_random
        unprobed = jnp.sum(uncertain & ~taken, dtype=jnp.int32) - jnp.sum(
            unsure_valid, dtype=jnp.int32
        )
        return choice, state.replace(
            filter=fstate, probe_random=probe_random, unprobed=state.unprobed + unprobed
        )

    def observe(
        state: EifState,
        x: jax.Array,
        choice: Choice,
        train_losses: jax.Array,
        probe_losses: jax.Array,
    ) -> tuple[EifState, dict[str, jax.Array]]:
        known_x = jnp.take(x, jnp.concatenate([choice.train_idx, choice.probe_idx]), axis=0)
        fstate, metrics = instance_filter.update(
            state.filter,
            known_x,
            jnp.concatenate([train_losses, probe_losses]).astype(jnp.float32),
            jnp.arange(train_size + probe_size) < train_size,
            jnp.concatenate([choice.train_weight, choice.probe_weight]) > 0,
            config,
            jnp.concatenate([jnp.zeros((train_size,), bool), state.probe_random]),
        )
        chunk = state.chunk + 1
        closes = chunk % config.window == 0
        # Eq. 2-3 are a few scalar operations: computed every chunk and kept where a
        # window closes (a conditional over the filter's state costs more than they do).
        closed, window = instance_filter.end_window(fstate, config)
        fstate = jax.tree.map(lambda new, old: jnp.where(closes, new, old), closed, fstate)
        window = jax.tree.map(lambda v: jnp.where(closes, v, jnp.zeros_like(v)), window)
        window = {f"window/{k}": v for k, v in window.items()}
        trained = jnp.sum(choice.train_weight > 0, dtype=jnp.int32)
        metrics = {**metrics, **window, "window_closed": closes, "trained": trained}
        return state.replace(filter=fstate, chunk=chunk), metrics

    return Selector(
        init,
        select,
        observe,
        train_size,
        probe_size,
        predict_block=predict_block if predict_ahead else None,
    )


def _rank(values: jax.Array) -> jax.Array:
    """Each entry's rank among ``values`` (0 for the smallest; ties by position)."""
    return jnp.argsort(jnp.argsort(values)).astype(jnp.float32)
