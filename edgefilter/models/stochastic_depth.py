"""Stochastic depth (Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016).

During training each residual block ``l = 1..L`` of a ResNet is bypassed, for a whole
mini-batch, with probability ``1 - p_l``: its output is ``ReLU(shortcut(x))`` and its
convolutions are neither run forward nor backward (``flax.linen.cond``: XLA runs one
branch). The survival probabilities decay linearly from ``p_0 = 1`` (the input) to
``p_L`` at the last block (Eq. 4 of the paper, the "linear decay rule")::

    p_l = 1 - l / L * (1 - p_L)

At test time every block runs, its residual scaled by ``p_l``:
``ReLU(shortcut(x) + p_l * f_l(x))`` (Eq. 5). This follows the authors' released code
(``yueatsprograms/Stochastic_Depth``: ``ResidualDrop.lua`` and ``main.lua``, whose
``deathRate`` of block ``i`` is ``i / L * (1 - p_L)``, with ``p_L = 0.5`` the paper's
default). Deviations: the shortcuts are the model's own (option A subsamples by the
stride where the source average-pools; the ImageNet ResNets' option-B projection is part
of the skip path, so it runs when the block is bypassed, as the source's ``skip``
branch always runs); the decisions come from the train step's ``"dropout"`` key (one
draw per block and mini-batch).

Each training call records its decisions in the ``"stochastic_depth"`` collection
(``{"BasicBlock_<i>": {"kept": (bool,)}}``); :func:`skipped` turns them into a count per
block, which the training loop accumulates so that the accounting counts the blocks a
run actually computed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["COLLECTION", "skipped", "survival_probabilities"]

COLLECTION = "stochastic_depth"


def survival_probabilities(num_blocks: int, final_survival: float) -> tuple[float, ...]:
    """``p_l = 1 - l / L * (1 - p_L)`` for blocks ``l = 1..L`` (``L = num_blocks``)."""
    if not 0 < final_survival <= 1:
        raise ValueError(f"final_survival={final_survival!r} must lie in (0, 1]")
    return tuple(1 - b / num_blocks * (1 - final_survival) for b in range(1, num_blocks + 1))


def skipped(decisions: dict[str, Any]) -> jax.Array:
    """int32 ``[L]``: 1 where block ``l`` was bypassed, from a ``"stochastic_depth"`` tree."""
    names = sorted(decisions, key=lambda name: int(name.rsplit("_", 1)[1]))
    return jnp.stack([1 - decisions[n]["kept"][0].astype(jnp.int32) for n in names])
