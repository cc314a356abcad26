"""InfoBatch (Qin et al., "InfoBatch: Lossless Training Speed Up by Unbiased Dynamic
Data Pruning", ICLR 2024, arXiv:2303.04947) as a packing selector.

The paper (Sec. 3, Eq. 1-3, Alg. 1) and its public code
(github.com/NUS-HPC-AI-Lab/InfoBatch, ``infobatch/infobatch.py``), read, not copied:

* every training instance has a score, its loss the last time it was trained on
  (initially 3 for all; ``scores = ones * 3``);
* at the start of each epoch, the instances whose score is below the mean score are
  "well learned"; a random ``prune`` of them (``--ratio``, default 0.5) is left out of
  this epoch, and the kept well-learned ones have their loss multiplied by
  ``1 / (1 - prune)`` (Eq. 3), so the expected gradient stays the full data's;
* in the last ``1 - delta`` of the epochs (``--delta``, default 0.875) everything is
  trained on with weight 1 (annealing): here pruning happens in epochs
  ``e < delta * epochs`` (0-based; 20 epochs: 0-17 pruned, 18 and 19 whole, the
  paper's "last (1 - delta) C epochs" rounded down). The code's sampler counts one
  reset more than epochs (it also resets when built) and compares with
  ``stop_prune = delta * epochs``, so it stops pruning one epoch earlier (after 0-16);
* the batch loss is ``mean(weights * losses)`` over the batch, and the trained
  instances' scores become their (unweighted) losses.

The source prunes in the sampler: an epoch has fewer, full batches. In the stream
engine every instance still arrives in its chunk (its uint8 image is transferred; no
forward or backward is computed for it), ``select`` decides from the instance's score
(a table keyed by its training-set index, ``needs_indices``, in the selector state and
so checkpointed with the run) and the epoch's threshold, and the engine packs the kept
ones into full batches of ``m`` (``pack_size``): fewer main steps of full batches, as in
the source, and the work counted is the work computed. The steps run at the end of each
block of chunks; within a block no decision reads a score those steps would change
(an instance is seen once an epoch, and blocks end at epoch ends). The threshold is the mean of the
scores when the epoch's first chunk arrives; an instance's score is its loss when last
trained, which for an instance seen once an epoch is the score the source's sampler
would read at that epoch's start.

Not counted in the accounting (which counts the networks' MACs): the mean of the score
table, recomputed each chunk and kept at an epoch's first (``n`` additions, 60,000 for
Fashion-MNIST, against LeNet's 0.4 billion MACs for a chunk of 64).

Deviations: each below-mean instance is pruned by its own coin (probability ``prune``)
rather than by drawing exactly ``(1 - prune)`` of them to keep, so the count pruned per
epoch is random around the source's; a chunk that straddles two epochs is decided with
the threshold and epoch of its first instance; the source's weights stay at their last
pruning epoch's values in the annealing epochs for most ``delta * epochs`` (its reset
runs only when ``epochs * delta + 1`` is a whole number), where here annealing trains
with weight 1, as the paper describes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from edgefilter.select.base import Choice, Packed, Selector

__all__ = ["InfoBatchState", "infobatch"]

INITIAL_SCORE = 3.0  # The source's initial score of every instance.


class InfoBatchState(struct.PyTreeNode):
    """Per-instance scores, the current epoch's threshold, and the stream position."""

    scores: jax.Array  # [n] float32: each instance's loss when last trained.
    threshold: jax.Array  # The mean score at the current epoch's start.
    epoch: jax.Array  # The epoch `threshold` belongs to (-1 before the first).
    streamed: jax.Array  # Valid instances seen.
    pruned: jax.Array  # Instances pruned so far.


def infobatch(
    prune: float, delta: float, *, chunk_size: int, num_train: int, epochs: float
) -> Selector:
    """The InfoBatch selector (module doc).

    Args:
      prune: fraction of the well-learned (below-mean score) instances pruned, in
        [0, 0.9] (the source keeps at least a tenth of them).
      delta: pruning happens in epochs ``e < delta * epochs`` (0-based); in [0, 1].
      chunk_size: ``m``, instances per chunk, also the main batch's size.
      num_train: the training set's size (the score table's length, epochs' length).
      epochs: the run's length in epochs.

    Raises:
      ValueError: for a setting out of range (named).
    """
    m = int(chunk_size)
    if m < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")
    if not 0 <= prune <= 0.9:
        raise ValueError(f"prune={prune!r} must lie in [0, 0.9]")
    if not 0 <= delta <= 1:
        raise ValueError(f"delta={delta!r} must lie in [0, 1]")
    if num_train < 1:
        raise ValueError(f"num_train={num_train!r} must be a positive integer")
    upweight = 1.0 / (1.0 - prune)

    def init(key: jax.Array, x_example: jax.Array) -> InfoBatchState:
        del key, x_example
        return InfoBatchState(
            scores=jnp.full((num_train,), INITIAL_SCORE, jnp.float32),
            threshold=jnp.zeros((), jnp.float32),
            epoch=jnp.full((), -1, jnp.int32),
            streamed=jnp.zeros((), jnp.int32),
            pruned=jnp.zeros((), jnp.int32),
        )

    def select(
        state: InfoBatchState,
        x: jax.Array,
        key: jax.Array,
        valid: jax.Array | None = None,
        *,
        indices: jax.Array,
    ) -> tuple[Choice, InfoBatchState]:
        del x
        if valid is None:
            valid = jnp.ones((m,), bool)
        epoch = state.streamed // num_train
        threshold = jnp.where(epoch != state.epoch, jnp.mean(state.scores), state.threshold)
        pruning = epoch < delta * epochs
        well_learned = valid & (state.scores[indices] < threshold) & pruning
        dropped = well_learned & (jax.random.uniform(key, (m,)) < prune)
        weight = jnp.where(valid & ~dropped, jnp.where(well_learned, upweight, 1.0), 0.0)
        empty = jnp.zeros((0,), jnp.int32)
        choice = Choice(jnp.arange(m, dtype=jnp.int32), weight, empty, empty.astype(jnp.float32))
        return choice, state.replace(
            threshold=threshold,
            epoch=epoch,
            streamed=state.streamed + jnp.sum(valid, dtype=jnp.int32),
            pruned=state.pruned + jnp.sum(dropped, dtype=jnp.int32),
        )

    def observe(
        state: InfoBatchState,
        x: None,
        choice: None,
        train_losses: jax.Array,
        probe_losses: jax.Array,
        *,
        packed: Packed,
    ) -> tuple[InfoBatchState, dict[str, jax.Array]]:
        del x, choice, probe_losses
        # The trained instances' scores become their losses (not a padding row's).
        rows = jnp.where(packed.weight > 0, packed.indices, num_train)
        scores = state.scores.at[rows].set(train_losses, mode="drop")
        return state.replace(scores=scores), {"threshold": state.threshold}

    return Selector(init, select, observe, m, 0, needs_indices=True, pack_size=m)
