"""Schedule-level baselines of the paper (PAPER.md, "Baselines"): SMB and SMD.

Both spend a fraction of SGD's computation by training on fewer mini-batches of the same
stream; neither looks at the data. ``--budget`` (in (0, 1], a fraction of SGD's
iterations) sets either one, so that a harness can run "methods x budgets".

**SMB** (standard mini-batch SGD with fewer iterations; the paper's "SMB 50%" rows):
the run streams the first ``round(budget * chunks)`` chunks of the stream SGD would
train on (:func:`smb_length`), i.e. ``budget`` of its epochs in the same order, and
stops. The learning-rate schedule is built for the shorter run, so its boundaries
(``--lr_boundaries``, fractions of training) fall at the same fractions of it: the
schedule is compressed, not cut. The compute block's ``sgd_same_stream`` is SGD on the
*full* stream (the run SMB is compared against), so the counted reduction is about
``1 - budget``.

**SMD** (stochastic mini-batch dropping, Wang et al., "E2-Train: Training
State-of-the-art CNNs with Over 80% Energy Savings", NeurIPS 2019, Sec. 3.1): every
mini-batch of the stream is skipped with probability ``--smd_skip`` (the source's 0.5;
``1 - budget`` when ``--budget`` is given). Which chunks are skipped is decided on the
host (:func:`smd_skipped`) from the run's seed and the chunk's number, so a run is
deterministic and resumes with the same decisions; a skipped chunk is never sent to the
device, and no forward or backward pass is run for it. Following the source
(``GATECH-EIC/E2Train``, ``main_all.py``: a skipped iteration calls
``optimizer.zero_grad(); optimizer.step()`` and ``adjust_learning_rate`` is driven by
the iteration counter): a skipped batch still takes one optimizer step with a zero
gradient, so momentum keeps moving the weights and weight decay applies (no MACs: an
element-wise update), and the learning-rate schedule runs by streamed position (one
schedule step per chunk, skipped or not). Deviation: the source's very first
iterations, before any gradient exists, leave a parameter untouched (PyTorch skips
parameters whose ``grad`` is ``None``); here a zero-gradient step on fresh weights is a
weight-decay step.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from edgefilter.models.state import TrainState

__all__ = ["smb_length", "smd_skipped", "zero_gradient_step"]

# Mixed into the seed of SMD's decisions, so they are independent of the stream order's.
_SMD_STREAM = 0x5D


def smb_length(length: int, batch_size: int, budget: float) -> int:
    """Instances SMB streams out of SGD's ``length``: its first ``round(budget * chunks)``
    chunks of ``batch_size`` (at least one), ``chunks = ceil(length / batch_size)``."""
    chunks = -(-length // batch_size)
    kept = max(1, round(budget * chunks))
    return min(length, kept * batch_size)


def smd_skipped(seed: int, chunks: Sequence[int], skip: float) -> np.ndarray:
    """Whether SMD skips each of the stream's chunk numbers ``chunks`` (bool ``[n]``).

    Chunk ``c`` is skipped when ``u < skip`` for ``u``, the first draw of
    ``numpy.random.default_rng((seed, 0x5D, c)).random()``: a function of the seed and
    the chunk number only, whatever the blocks or a resume.
    """
    draws = [np.random.default_rng((seed, _SMD_STREAM, int(c))).random() for c in chunks]
    return np.asarray(draws, np.float64) < skip


def zero_gradient_step(state: TrainState) -> TrainState:
    """One optimizer step with a zero gradient: what the source does for a skipped batch.

    Momentum, weight decay and the schedule's step counter advance; no data is read.
    """
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    return state.apply_gradients(grads=zeros)
