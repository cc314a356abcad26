"""The selection interface every data-selection method implements.

A *selector* decides, for each arriving chunk of ``m`` instances, which of them the main
network trains on and which it only probes with a forward pass, and learns from what
that training and probing reveal. Like an optax ``GradientTransformation`` it is a
NamedTuple of pure functions over a state pytree::

  sel = edgefilter.select.eif(filter_model, optax.sgd(0.1, 0.5), FilterConfig(), chunk_size=64)
  state = sel.init(key, x_example)                      # x_example: one chunk, [m, ...]
  # Inside the user's jitted step, for each chunk x ([m, ...], normalised):
  choice, state = sel.select(state, x, key)             # fixed shapes
  #   ... train on x[choice.train_idx] with weights choice.train_weight, keeping the
  #   ... per-instance losses; forward x[choice.probe_idx] for the probe losses;
  state, metrics = sel.observe(state, x, choice, train_losses, probe_losses)

The contract:

* ``init(key, x_example) -> state``: a fresh state; ``x_example`` fixes the chunk shape.
* ``select(state, x, key, valid=None) -> (Choice, state)``: ``x`` is a chunk of
  ``chunk_size`` instances, ``valid`` ([m] bool, default all True) marks padding of a
  run's last, short chunk. The returned :class:`Choice` has static shapes: exactly
  ``train_size`` training slots and ``probe_size`` probe slots, whatever the data; slots
  that hold no real instance have weight 0.
* ``observe(state, x, choice, train_losses, probe_losses) -> (state, metrics)``: the
  main network's per-instance losses on the chosen training slots (``[train_size]``,
  from the forward pass of the step that trains on them) and on the probe slots
  (``[probe_size]``, forward only); ``metrics`` is a dict of scalars with the same keys
  every call, among them ``trained``, the number of instances trained on in this chunk.
* All three are pure and jittable, need no host round trip, and do not recompile from
  one chunk to the next.

Optional needs, declared by a selector's fields (the defaults ask for nothing, so a
selector written for the contract above runs unchanged):

* ``chunk_forward`` (``"inference"`` or ``"train"``): the selector ranks instances by
  the main network's own loss, before choosing. ``select`` then gets a keyword
  ``forward``: a function of no arguments returning ``[m]`` per-instance losses of the
  whole chunk under the main network's current parameters, in inference mode (batch
  norm's running statistics) or training mode (the chunk's batch statistics, which are
  not kept). The forward is computed where ``select`` calls it (inside a ``lax.cond`` for
  a selector that needs it only sometimes) and is not free: such a selector counts the
  chunk slots it forwarded in its state's ``forwarded`` (an int scalar), which
  :mod:`edgefilter.training.accounting` counts as ``selection_forward``.
* ``needs_indices``: ``select`` gets a keyword ``indices``, ``[m]`` int32, each chunk
  slot's index in the training set (a padding slot repeats a real index), for a
  selector that keeps a per-instance history keyed by it.
* ``pack_size`` (an int ``>= m``): the selector keeps a data-dependent number of each
  chunk's instances and trains them in full batches of ``pack_size``. Its ``Choice``
  has ``train_size = m`` slots, weight ``> 0`` for a kept instance (the weight its loss
  is multiplied by) and 0 for the others; the engine queues the kept ones on the device
  (:mod:`edgefilter.training.pack`) and takes a main step per full batch of
  ``pack_size`` queued. ``observe`` is then called once per main step, not per chunk:
  ``observe(state, None, None, train_losses, probe_losses, packed=...)`` with the
  batch's losses (``[pack_size]``), no probe losses, and a :class:`Packed` saying which
  instances they were.
* ``predict_block``: ``(state, x_block) -> predicted``, computed once for a block of
  ``B`` chunks (``x_block`` ``[B, m, ...]``, normalised) from the state at the block's
  start, a pytree with a leading axis ``[B]``; ``select`` then gets a keyword
  ``predicted``, the chunk's slice, in place of computing it from the current state.
  It trades staleness (a decision from a state up to ``B - 1`` observations old) for
  one large batched computation instead of ``B`` small ones. Without it, or in a loop
  that does not call it, ``select`` computes everything itself.

Main-network losses are mean cross-entropies weighted by the slots' weights over the
count of slots with a positive weight (``training.steps.weighted_cross_entropy``), so a
weight other than 1 rescales an instance's gradient (InfoBatch) and a zero-weight
padding slot adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Choice", "Packed", "Selector", "gather"]


class Choice(NamedTuple):
    """A selector's decision on one chunk: indices into the chunk, fixed shapes.

    Attributes:
      train_idx: ``[train_size]`` int32, the instances to train the main network on.
      train_weight: ``[train_size]`` float32, 1 for a real instance, 0 for a padding slot
        (padding repeats a real index, so a batch norm sees real data, but adds nothing
        to the loss).
      probe_idx: ``[probe_size]`` int32, instances whose main-network loss the selector
        wants from a forward pass only.
      probe_weight: ``[probe_size]`` float32, 1 for a real probe, 0 for a padding slot.
    """

    train_idx: jax.Array
    train_weight: jax.Array
    probe_idx: jax.Array
    probe_weight: jax.Array


class Selector(NamedTuple):
    """A data-selection method as three pure functions (see the module doc).

    Attributes:
      init: ``(key, x_example) -> state``.
      select: ``(state, x, key, valid=None, **needs) -> (Choice, state)``.
      observe: ``(state, x, choice, train_losses, probe_losses) -> (state, metrics)``.
      train_size: training slots per chunk (static).
      probe_size: probe slots per chunk (static; 0 when the method probes nothing).
      chunk_forward: ``None``, ``"inference"`` or ``"train"``: ``select`` gets
        ``forward``, the main network's losses on the whole chunk (module doc).
      needs_indices: ``select`` gets ``indices``, the chunk slots' training-set indices.
      pack_size: ``None``, or the batch size the kept instances are packed into (module
        doc); then ``train_size`` is the chunk size.
      predict_block: ``None``, or ``(state, x_block) -> predicted`` for a block of
        chunks at once; ``select`` then gets ``predicted`` (module doc).
    """

    init: Callable[..., Any]
    select: Callable[..., tuple[Choice, Any]]
    observe: Callable[..., tuple[Any, dict[str, jax.Array]]]
    train_size: int
    probe_size: int
    chunk_forward: str | None = None
    needs_indices: bool = False
    pack_size: int | None = None
    predict_block: Callable[[Any, jax.Array], Any] | None = None


class Packed(NamedTuple):
    """The batch a packing selector's instances were trained in, in one main step.

    Attributes:
      indices: ``[pack_size]`` int32, the training-set indices of the batch's rows.
      weight: ``[pack_size]`` float32, each row's loss weight; 0 on the padding rows of
        the run's last, partial batch.
    """

    indices: jax.Array
    weight: jax.Array


def gather(choice: Choice, *arrays: jax.Array) -> tuple[tuple[jax.Array, ...], ...]:
    """The chosen training and probe rows of per-chunk arrays (images, labels, ...).

    Returns ``(train_rows, probe_rows)``, each a tuple with one array per argument:
    ``arrays[i][choice.train_idx]`` and ``arrays[i][choice.probe_idx]``.
    """
    train = tuple(jnp.take(a, choice.train_idx, axis=0) for a in arrays)
    probe = tuple(jnp.take(a, choice.probe_idx, axis=0) for a in arrays)
    return train, probe


def count_chunks(key: jax.Array, x_example: jax.Array) -> jax.Array:
    """``init`` of a selector that learns nothing: its state counts the chunks seen."""
    del key, x_example
    return jnp.zeros((), jnp.int32)


def observe_nothing(
    state: jax.Array,
    x: jax.Array,
    choice: Choice,
    train_losses: jax.Array,
    probe_losses: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``observe`` of a selector that learns nothing: counts the chunk and its trained."""
    del x, train_losses, probe_losses
    return state + 1, {"trained": jnp.sum(choice.train_weight > 0, dtype=jnp.int32)}


def top_slots(scores: jax.Array, eligible: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """The ``size`` eligible positions with the largest scores, and their validity.

    Ties go to the lower index (:func:`jax.lax.top_k`). When fewer than ``size``
    positions are eligible, the remaining slots hold ineligible positions with validity
    False; a caller gives them weight 0.
    """
    if size == 0:
        return jnp.zeros((0,), jnp.int32), jnp.zeros((0,), bool)
    masked = jnp.where(eligible, scores.astype(jnp.float32), -jnp.inf)
    _, idx = jax.lax.top_k(masked, size)
    return idx.astype(jnp.int32), eligible[idx]
