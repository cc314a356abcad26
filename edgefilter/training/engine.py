"""The stream engine: blocks of chunks trained on the device, one dispatch per block.

Any :class:`~edgefilter.select.Selector` (the instance filter, uniform random, every
instance for SGD and EMP, the data-selection baselines) runs through the same
per-chunk step, one iteration of a :func:`jax.lax.scan` over a block of chunks:

1. the chunk is normalised and ``selector.select`` chooses its training and probe slots
   (fixed shapes: ``train_size`` and ``probe_size``); a selector that ranks by the main
   network's own loss (``chunk_forward``: oracle, OHEM, Selective-Backprop) gets a
   function computing the main network's losses on the whole chunk (:func:`chunk_losses`,
   before this chunk's update), one that keeps a per-instance history
   (``needs_indices``) the chunk slots' training-set indices;
2. the main network, before this chunk's update, runs forward on the probe slots (their
   losses label them, PAPER.md Eq. 1);
3. the main network trains on the training slots, weighted by ``choice.train_weight``
   (forward and backward, with EMP when its convolutions prune: Eq. 8-14), one step.
   A selector with ``pack_size`` (Selective-Backprop, InfoBatch) keeps a
   data-dependent number instead: here its kept instances only join a queue in the
   scan carry (:mod:`edgefilter.training.pack`); at the block's end the host reads the
   queue's count and runs :func:`make_queue_step` once per full batch (one main step
   each), and once after the run's last chunk for the partial batch left. No
   ``lax.cond``: XLA:CPU runs a conditional's body several times slower than
   straight-line code (``pack``'s module doc has the numbers). The price: a selection
   forward within a block sees the parameters of the block's start;
4. ``selector.observe`` receives both sets of per-instance losses (for EIF: labels by
   Eq. 1, the filter's update by Eq. 6-7, and ``R_TH``/``T_l`` every ``n`` chunks by
   Eq. 2-3, all inside the scan).

The host gathers a block's chunks of the stream (uint8 images and labels, one array
each), dispatches the block once and fetches its per-chunk metrics once: one dispatch
and one host sync per block, none per chunk. A block that must end early (at an
epoch's end, for evaluation; at a checkpoint; at the run's end) runs as blocks of one
chunk with one host sync at its end, so the block function compiles for two lengths
per run, ``block_chunks`` and 1, whatever the stream.

A chunk's randomness comes from the run's key and the chunk's number (selection) and
the main network's step number (augmentation, dropout), so a run's result does not
depend on where its blocks begin and end (Selective-Backprop's does: its selection
forward sees the parameters of its block's start; so does the filter's prediction with
a selector's ``predict_block``, ``--eif_predict_ahead``), and a run resumed from a checkpoint
ends with the same parameters as an uninterrupted one (a checkpoint ends a block, in
both).

Not here: the paper's argmax rule keeps a data-dependent number of instances per chunk;
packed into fixed batches that is a data-dependent number of main steps per chunk, a
loop or a conditional inside the scan, whose body XLA:CPU runs several times slower
than straight-line code (benchmarks/README.md, "Stream engine"). It keeps the host-queue
runner (:mod:`edgefilter.training.eif_runner`), as does a non-default ``--eif_batch_size``
(the packing selectors' queue with steps at the block's end could carry them too, with
the filter's decisions a block stale).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from edgefilter import backends
from edgefilter import data as data_lib
from edgefilter.models.state import TrainState
from edgefilter.select.base import Choice, Packed, Selector, gather
from edgefilter.training import pack, parallel
from edgefilter.training import steps as steps_lib

__all__ = [
    "EngineState",
    "chunk_key",
    "chunk_losses",
    "make_block_step",
    "make_chunk_step",
    "make_queue_step",
    "probe_losses",
    "select_chunk",
]

# Folded into the run's key for the selectors' randomness (distinct from the main step's).
_SELECT_STREAM = 0x5E1EC7


def chunk_key(root: jax.Array, chunk: jax.Array) -> jax.Array:
    """The key ``select`` gets for chunk number ``chunk`` of a run whose key is ``root``."""
    return jax.random.fold_in(jax.random.fold_in(root, _SELECT_STREAM), chunk)


class EngineState(struct.PyTreeNode):
    """What the scan carries from chunk to chunk: the main network, the selector, and
    for a packing selector (``pack_size``) its queue of kept instances."""

    main: TrainState
    selector: Any
    queue: pack.Queue | None = None


def probe_losses(main: TrainState, x: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-instance cross-entropy of the main network (inference mode) on ``x``."""
    variables = {"params": main.params, "batch_stats": main.batch_stats}
    logits = main.apply_fn(variables, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def chunk_losses(
    main: TrainState, x: jax.Array, labels: jax.Array, mode: str, key: jax.Array
) -> jax.Array:
    """Per-instance cross-entropy of the main network on ``x``, for a selector to rank by.

    ``mode`` ``"inference"``: as :func:`probe_losses` (batch norm's running statistics).
    ``"train"``: the network in training mode (batch norm normalises with ``x``'s own
    statistics, dropout draws from ``key``); the batch statistics it computes are not
    kept, so the forward changes no state.
    """
    if mode == "inference":
        return probe_losses(main, x, labels)
    if mode != "train":
        raise ValueError(f"mode={mode!r} must be 'inference' or 'train'")
    variables = {"params": main.params, "batch_stats": main.batch_stats}
    logits, _ = main.apply_fn(
        variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def select_chunk(
    selector: Selector,
    state: EngineState,
    x: jax.Array,
    labels: jax.Array,
    valid: jax.Array,
    chunk: jax.Array,
    root: jax.Array,
    indices: jax.Array | None = None,
    predicted: Any = None,
) -> tuple[Choice, Any]:
    """Step 1 of the module doc: ``selector.select`` on the normalised chunk ``x``.

    The key is chunk number ``chunk``'s (:func:`chunk_key`); a selector that ranks by
    the main network's loss gets :func:`chunk_losses` of ``state.main``, one that keeps
    a per-instance history the slots' ``indices``, one with ``predict_block`` the
    chunk's slice of its block's ``predicted`` (None: ``select`` computes it). Pure:
    the same arguments give the same choice, so a snapshot
    (:mod:`edgefilter.training.snapshots`) computed from the state before a block's
    first chunk is the decision training takes on it (up to float rounding, with
    ``predict_block``: one forward on the block, not on the chunk).
    """
    key = chunk_key(root, chunk)
    needs = {}
    if selector.chunk_forward is not None:
        forward_key = jax.random.fold_in(key, 1)  # Dropout, in training mode.
        needs["forward"] = functools.partial(
            chunk_losses, state.main, x, labels, selector.chunk_forward, forward_key
        )
    if selector.needs_indices:
        if indices is None:
            raise ValueError("this selector needs the chunk's training-set indices")
        needs["indices"] = indices
    if predicted is not None:
        needs["predicted"] = predicted
    return selector.select(state.selector, x, key, valid, **needs)


def make_chunk_step(
    selector: Selector,
    info: data_lib.DatasetInfo,
    *,
    channel_counts: bool = False,
    mesh: Mesh | None = None,
) -> Callable:
    """``chunk_step(state, images, labels, valid, chunk, root, indices=None, predicted=None)``.

    Steps 1-4 of the module doc for one chunk of ``m`` uint8 ``images`` (``[m, H, W,
    C]``), their ``labels`` and ``valid`` mask (False on the padding of a run's short
    last chunk). ``chunk`` is the chunk's number in the stream, ``root`` the run's key
    and ``indices`` (``[m]`` int32) the slots' training-set indices, needed only by a
    selector with ``needs_indices``, ``predicted`` the chunk's slice of the selector's
    ``predict_block`` for its block (None: ``select`` computes it). Returns ``(state,
    metrics)``; with ``channel_counts`` the metrics hold the main step's per-layer kept
    channels (:func:`edgefilter.training.steps.train_step_body`). Not jitted:
    :func:`make_block_step` scans it, a user's loop may jit it.

    ``mesh``: run data-parallel (:mod:`edgefilter.training.parallel`): the gathered
    training and probe instances are split over its data axis, so the main network's
    forward and backward on them are too. None: one device, no constraint.
    """

    def chunk_step(
        state: EngineState,
        images: jax.Array,
        labels: jax.Array,
        valid: jax.Array,
        chunk: jax.Array,
        root: jax.Array,
        indices: jax.Array | None = None,
        predicted: Any = None,
    ) -> tuple[EngineState, dict[str, jax.Array]]:
        x = steps_lib.preprocess(images, info, None)
        choice, sel_state = select_chunk(
            selector, state, x, labels, valid, chunk, root, indices, predicted
        )
        (train_images, train_labels), (probe_images, probe_labels) = parallel.constrain_batch(
            gather(choice, images, labels), mesh
        )
        probed = jnp.zeros((0,), jnp.float32)
        if selector.probe_size:
            probe_x = steps_lib.preprocess(probe_images, info, None)
            probed = probe_losses(state.main, probe_x, probe_labels)
        if selector.pack_size is not None:
            return _packed_step(state, sel_state, images, labels, indices, choice)
        main, metrics, train_losses = steps_lib.train_step_body(
            state.main,
            train_images,
            train_labels,
            parallel.constrain_batch(choice.train_weight, mesh),
            root,
            info,
            channel_counts=channel_counts,
        )
        sel_state, sel_metrics = selector.observe(sel_state, x, choice, train_losses, probed)
        return EngineState(main=main, selector=sel_state), {**metrics, **sel_metrics}

    def _packed_step(state, sel_state, images, labels, indices, choice):
        """A packing selector's chunk: its kept instances join the queue; no step here."""
        if indices is None:
            indices = jnp.zeros(labels.shape, jnp.int32)
        queue = pack.push(
            state.queue, images, labels, indices, choice.train_idx, choice.train_weight
        )
        metrics = {"kept": jnp.sum(choice.train_weight > 0, dtype=jnp.int32)}
        return state.replace(selector=sel_state, queue=queue), metrics

    return chunk_step


def make_queue_step(
    selector: Selector,
    info: data_lib.DatasetInfo,
    *,
    xla_cpu: bool | None = None,
    mesh: Mesh | None = None,
) -> Callable:
    """The jitted ``queue_step(state, root) -> (state, metrics)`` of a packing selector.

    One main step on the first ``pack_size`` queued instances, weighted by their loss
    weights; ``selector.observe`` gets the batch's losses and a :class:`Packed` naming
    its instances; the batch leaves the queue. The caller (the runner, at a block's host
    sync) calls it once for every full batch the queue holds, and once more after the
    run's last chunk if anything is left, whose free rows are then zero-weight padding
    (computed, so counted). ``mesh``: data-parallel, the batch split over its data axis
    and the state replicated (:mod:`edgefilter.training.parallel`).
    """
    size = selector.pack_size

    @functools.partial(backends.jit, xla_cpu=xla_cpu, donate_argnums=0, **_replicated_out(mesh))
    def queue_step(state: EngineState, root: jax.Array) -> tuple[EngineState, dict[str, jax.Array]]:
        queue = state.queue
        weight = queue.weights[:size]  # Zero past the queue's count (pack.pop).
        batch = (queue.images[:size], queue.labels[:size], weight)
        images, labels, weight = parallel.constrain_batch(batch, mesh)
        main, metrics, losses = steps_lib.train_step_body(
            state.main, images, labels, weight, root, info
        )
        packed = Packed(indices=queue.indices[:size], weight=weight)
        empty = jnp.zeros((0,), jnp.float32)
        sel_state, sel_metrics = selector.observe(
            state.selector, None, None, losses, empty, packed=packed
        )
        metrics = {**metrics, **sel_metrics, "trained": jnp.sum(weight > 0, dtype=jnp.int32)}
        queue = pack.pop(queue, size, True)
        return EngineState(main=main, selector=sel_state, queue=queue), metrics

    return queue_step


def make_block_step(
    selector: Selector,
    info: data_lib.DatasetInfo,
    *,
    xla_cpu: bool | None = None,
    unroll: bool | None = None,
    channel_counts: bool = False,
    mesh: Mesh | None = None,
) -> Callable:
    """The jitted ``block_step(state, images, labels, valid, chunks, root, indices=None)``.

    Scans :func:`make_chunk_step` over a block of ``B`` chunks: ``images`` ``[B, m, H,
    W, C]`` uint8, ``labels`` ``[B, m]``, ``valid`` ``[B, m]``, ``chunks`` ``[B]`` the
    chunks' stream numbers, ``indices`` ``[B, m]`` the training-set indices (for a
    selector with ``needs_indices``). A selector with ``predict_block`` predicts for the
    whole block first, from the state at its start. Returns the state after the block
    and each chunk's metrics stacked along ``[B]``. The state's buffers are donated;
    each block length ``B`` compiles once.

    ``unroll`` (default: the backend switch's state) unrolls the scan entirely, a block
    of one chunk included (``lax.scan``'s ``unroll=0``; ``unroll=1``, what ``True`` means
    at length 1, lowers to a while loop of one trip): XLA:CPU runs the body of a loop (or
    of a conditional) several times slower than the same operations in straight-line
    code (benchmarks/README.md, "Stream engine"). ``channel_counts``: see
    :func:`make_chunk_step`.

    ``mesh``: data-parallel (:mod:`edgefilter.training.parallel`): the caller places the
    block's arrays split along ``m`` over the mesh's data axis and the state replicated;
    the state and the metrics come back replicated. None: one device.
    """
    chunk_step = make_chunk_step(selector, info, channel_counts=channel_counts, mesh=mesh)
    unroll_all = backends.use_xla_cpu(xla_cpu) if unroll is None else unroll

    @functools.partial(backends.jit, xla_cpu=xla_cpu, donate_argnums=0, **_replicated_out(mesh))
    def block_step(state, images, labels, valid, chunks, root, indices=None):
        def body(carry, slot):
            images, labels, valid, chunk, indices, predicted = slot
            return chunk_step(carry, images, labels, valid, chunk, root, indices, predicted)

        predicted = None
        if selector.predict_block is not None:
            x_block = steps_lib.preprocess(images, info, None)  # Elementwise.
            predicted = selector.predict_block(state.selector, x_block)
        unroll = 0 if unroll_all else 1  # 0: every iteration straight-line.
        slots = (images, labels, valid, chunks, indices, predicted)
        return jax.lax.scan(body, state, slots, unroll=unroll)

    return block_step


def _replicated_out(mesh: Mesh | None) -> dict[str, Any]:
    """``jax.jit``'s keyword for a step whose outputs are replicated over ``mesh``: the
    next call gets its state back with the shardings it was compiled for."""
    return {} if mesh is None else {"out_shardings": parallel.replicated(mesh)}
