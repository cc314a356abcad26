"""The highest-loss ``r_set`` of each chunk by the main network's own forward: the oracle
and online hard example mining (OHEM).

Both run the main network forward on every instance of the chunk (the selector's
``chunk_forward``: the engine hands ``select`` the chunk's per-instance losses under the
current parameters), keep the ``train_size = round(r_set * m)`` valid instances with the
largest loss, and train on those in the chunk's one main step, with weight 1 (the same
packing as :func:`edgefilter.select.eif` and :func:`edgefilter.select.uniform`). The
selection forward costs ``m`` forward passes a chunk, which the state counts in
``forwarded`` (the accounting's ``selection_forward``): a chunk costs a forward on all
``m`` plus a forward and backward on ``r_set * m``, what SGD's backward on the other
instances would have cost is all they save (LeNet at r_set 0.3: 35.5% fewer MACs than
SGD counted, against EIF's 64%).

* :func:`oracle`: the forward in inference mode (batch norm's running statistics), as
  ``benchmarks/oracle_selection.py`` did before it: what an instance filter would
  keep if it predicted the main network's loss perfectly, an upper bound for the
  filter's ranking at the same number of trained instances (README, "Results"), at a
  cost no filter has (the main network's forward on everything).
* :func:`ohem`: Shrivastava, Gupta and Girshick, "Training Region-based Object
  Detectors with Online Hard Example Mining", CVPR 2016, Sec. 4: a read-only copy of the
  network runs forward on all the candidates of a mini-batch (there, the ~2000 RoIs of
  an image), they are sorted by loss, and the regular network runs forward and backward
  on the ``B`` hardest only. Here the candidates are the chunk's instances and
  ``B = round(r_set * m)``; the read-only forward is the training network's (training
  mode: batch norm normalises with the chunk's own statistics, which are not kept).
  Deviation: OHEM's non-maximum suppression among overlapping RoIs (IoU 0.7) has no
  counterpart for whole-image instances and is left out.

So in this setting the two are the same rule with one difference, the forward's mode:
on networks without batch norm or dropout (LeNet) they choose the same instances and
train to the same parameters; on the ResNets and VGG (batch norm) the oracle ranks by
the loss the network would have at test time, OHEM by the loss of the training
network it is about to update. Both names stay because their sources differ in that.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from edgefilter.select.base import Choice, Selector, top_slots

__all__ = ["TopLossState", "ohem", "oracle", "top_loss"]


class TopLossState(struct.PyTreeNode):
    """Chunks seen, and chunk slots the main network ran forward on to select."""

    chunks: jax.Array
    forwarded: jax.Array


def top_loss(r_set: float, *, chunk_size: int, mode: str) -> Selector:
    """A selector that trains on the ``round(r_set * m)`` highest-loss instances of a chunk.

    Args:
      r_set: fraction of each chunk trained on, in (0, 1].
      chunk_size: ``m``, instances per chunk.
      mode: the selection forward's mode, ``"inference"`` (:func:`oracle`) or
        ``"train"`` (:func:`ohem`).

    Raises:
      ValueError: for ``r_set``, ``chunk_size`` or ``mode`` out of range.
    """
    if not 0 < r_set <= 1:
        raise ValueError(f"r_set={r_set!r} must lie in (0, 1]")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")
    if mode not in ("inference", "train"):
        raise ValueError(f"mode={mode!r} must be 'inference' or 'train'")
    train_size = max(1, round(r_set * chunk_size))

    def init(key: jax.Array, x_example: jax.Array) -> TopLossState:
        del key, x_example
        return TopLossState(chunks=jnp.zeros((), jnp.int32), forwarded=jnp.zeros((), jnp.int32))

    def select(
        state: TopLossState,
        x: jax.Array,
        key: jax.Array,
        valid: jax.Array | None = None,
        *,
        forward: Callable[[], jax.Array],
    ) -> tuple[Choice, TopLossState]:
        del x, key
        if valid is None:
            valid = jnp.ones((chunk_size,), bool)
        losses = forward()  # [m]: the main network's forward on every slot, counted.
        idx, ok = top_slots(losses, valid, train_size)
        empty = jnp.zeros((0,), jnp.int32)
        choice = Choice(idx, ok.astype(jnp.float32), empty, empty.astype(jnp.float32))
        return choice, state.replace(forwarded=state.forwarded + chunk_size)

    def observe(
        state: TopLossState,
        x: jax.Array,
        choice: Choice,
        train_losses: jax.Array,
        probe_losses: jax.Array,
    ) -> tuple[TopLossState, dict[str, jax.Array]]:
        del x, train_losses, probe_losses
        trained = jnp.sum(choice.train_weight > 0, dtype=jnp.int32)
        return state.replace(chunks=state.chunks + 1), {"trained": trained}

    return Selector(init, select, observe, train_size, 0, chunk_forward=mode)


def oracle(r_set: float, *, chunk_size: int) -> Selector:
    """The highest-loss ``r_set`` of each chunk, by an inference-mode forward (module doc)."""
    return top_loss(r_set, chunk_size=chunk_size, mode="inference")


def ohem(r_set: float, *, chunk_size: int) -> Selector:
    """OHEM (Shrivastava et al., CVPR 2016): the hardest ``r_set`` by a training-mode
    forward on the whole chunk, backward on those only (module doc)."""
    return top_loss(r_set, chunk_size=chunk_size, mode="train")
