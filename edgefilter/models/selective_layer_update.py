"""E2-Train's selective layer update (SLU): a recurrent gate per residual block.

Wang et al., "E2-Train: Training State-of-the-art CNNs with Over 80% Energy Savings"
(NeurIPS 2019), Sec. 3.2, as released in ``GATECH-EIC/E2Train`` (``models/new_resnet.py``,
the SkipNet recurrent gate of Wang et al., ECCV 2018, and ``main_all.py``):

* the first residual block always runs; after each block ``l < L`` a gate reads the
  block's (gated) output, global-average-pools it, embeds it in ``EMBED = 10``
  dimensions and feeds it to an LSTM (``HIDDEN = 10``) shared by all gates, whose state
  runs along the depth; a linear layer and a sigmoid give each instance's probability
  ``q`` of running block ``l + 1``;
* in training an instance runs the block when ``q > u`` (``u ~ U(0, 1)``), with the
  straight-through estimator ``m = [q > u] - sg(q) + q`` so the gate learns from the task
  loss; the block's output is ``m * block(x) + (1 - m) * shortcut(x)``;
* the loss adds the computational-cost term ``beta * reg * sum(m)`` (over gates and
  instances), ``reg = -1`` while the executed percentage ``100 * mean(m)`` is at most
  ``minimum`` and ``+1`` above it; the source's defaults are ``beta = 1e-5`` and
  ``minimum = 100``, with which ``reg`` is always -1 (the term rewards running blocks;
  what the released code does with its defaults).

Deviations, each stated where it matters:

* **Gated-off work is computed and counted.** The source computes every block for every
  instance and masks the outputs, then *counts* the masked fraction as saved. A
  per-instance skip is a data-dependent shape, which XLA does not execute sparsely, so
  here too every block runs for every instance, and the accounting counts it (the gated
  instance-blocks are reported as ``slu_gated``, what the source would have counted
  as saved). SLU's saving is therefore not in edgefilter's counted reduction.
* the embedding is a dense layer with a bias on the pooled features (the source: a
  bias-free 1x1 conv on the pooled map, the same map); the shortcut of a gated-off
  block is the model's own (option A), the source's gated model uses 1x1 projections;
* at test time a block runs for an instance when ``q > 0.5`` (SkipNet's inference
  rule; the source keeps sampling ``u`` in evaluation).

**E2-Train as a whole** (``--method=e2train``): SMD (:mod:`edgefilter.training.budget`,
each mini-batch skipped with probability 0.5) + SLU (this module), on the CIFAR ResNets;
``--bits=8`` trains at 8 bits with :mod:`edgefilter.quant`'s quantizer (the source has
its own ``quantize``). Not reproduced: the predictive sign gradient (PSG). The released
code computes every conv twice (8-bit operands and their 4-bit most significant bits),
back-propagates through both, keeps the 4-bit weight gradient where its magnitude is at
least ``--threshold`` (5e-5) and the 8-bit one elsewhere, and applies the sign of the
mix; both gradients are computed in full, so counted honestly PSG would add work rather
than save it, and its saving exists only on hardware that computes the 8-bit gradient
where the 4-bit one is small. Its effect on accuracy (sign updates) is therefore absent
from e2train's results here.

Each training call sows, in the ``"losses"`` collection, the cost term (the train step
adds it to the loss) and, in ``"slu"``, the number of gated-off instance-blocks.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from edgefilter.models.layers import Ops

__all__ = ["COLLECTION", "EMBED", "HIDDEN", "RecurrentGate", "cost_term"]

EMBED, HIDDEN = 10, 10  # The source's embed_dim and hidden_dim.
COLLECTION = "slu"


class RecurrentGate(nn.Module):
    """The gates' shared LSTM and projection: features ``[n, C]`` -> ``q`` ``[n]``.

    Called once per gate with the LSTM's ``carry`` (``(c, h)``, each ``[n, HIDDEN]``);
    returns the new carry and each instance's probability of running the next block.
    """

    ops: Ops

    @nn.compact
    def __call__(
        self, features: jax.Array, carry: tuple[jax.Array, jax.Array]
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        c, h = carry
        # PyTorch's LSTM cell: i, f, g, o from the input and the hidden state.
        z = self.ops.dense(4 * HIDDEN, name="lstm")(jnp.concatenate([features, h], -1))
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
        h = nn.sigmoid(o) * jnp.tanh(c)
        q = nn.sigmoid(self.ops.dense(1, name="proj")(h))[:, 0]
        return (c, h), q


def cost_term(masks: jax.Array, beta: float, minimum: float) -> jax.Array:
    """``beta * reg * sum(masks)``, ``reg = -1`` if ``100 * mean(masks) <= minimum`` else 1."""
    executed = 100.0 * jnp.mean(jax.lax.stop_gradient(masks))
    reg = jnp.where(executed <= minimum, -1.0, 1.0)
    return beta * reg * jnp.sum(masks)
