"""``own_buffer(x)``: ``x`` computed once into a buffer of its own on XLA:CPU.

XLA:CPU fuses an elementwise producer into each of its consumers, recomputing it in
every one, even when another consumer already had it written to memory. In a train step
that is often a poor trade:

* a convolution's weight gradient (PAPER.md Eq. 12) reads the layer's input through a
  transpose (XLA:CPU lays the weight-gradient convolution out with the batch as its
  contraction), and that transpose recomputed the input's producers: in a ResNet the
  batch norm, ReLU and residual add of every block back to the stage's first, so one
  transpose of a ResNet-20 activation cost many times the transpose itself;
* error map pruning reads each error map twice, for the channel scores (Eq. 11) and for
  the gather of the kept channels, and each read recomputed the elementwise backward
  (batch norm, ReLU, residual add) that produced it;
* a first conv computed as a sum of per-tap products (``backends.xla_cpu.layers.small_kernel_conv``)
  was recomputed in each reader of its output.

A conditional's operand is computed into a buffer before the conditional runs, and XLA
keeps a conditional whose predicate it cannot evaluate at compile time. The predicate
here, ``not (x[0] > inf)``, is true for every float, NaN included, so the conditional
always returns ``x`` itself; XLA does not fold it. (An optimization barrier would say
this directly, but XLA:CPU removes barriers before fusion; a conditional with identity
in both branches is removed as well.) The backward is the identity: cotangents pass
straight through, without a conditional of their own.

Putting every conv input in a buffer of its own would cost more than it saves where the
input is small or already in memory (LeNet's pooling outputs), hence the size threshold
:data:`MIN_ELEMENTS`; the measurements are in benchmarks/README.md ("XLA:CPU lowerings").
Other backends fuse differently and would pay for the conditional's predicate with a
device-to-host copy; callers use this only when :mod:`edgefilter.backends`' switch is on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from edgefilter.backends.xla_cpu.forward_mode import reverse_mode_only

#: Arrays with at least this many elements get a buffer of their own.
MIN_ELEMENTS = 2**18


def _always_true(x: jax.Array) -> jax.Array:
    first = x.reshape(-1)[0]
    return ~(first > jnp.asarray(jnp.inf, first.dtype))


@jax.custom_vjp
def _materialized(x: jax.Array) -> jax.Array:
    return lax.cond(_always_true(x), lambda a: a, lambda a: jnp.full_like(a, jnp.nan), x)


def _materialized_fwd(x: jax.Array) -> tuple[jax.Array, None]:
    return _materialized(x), None


def _materialized_bwd(_: None, cotangent: jax.Array) -> tuple[jax.Array]:
    return (cotangent,)


_materialized.defvjp(_materialized_fwd, _materialized_bwd)


def own_buffer(x: jax.Array, min_elements: int | None = None) -> jax.Array:
    """``x``, the same values, computed once into its own buffer (XLA:CPU; see module doc).

    Arrays smaller than ``min_elements`` (default :data:`MIN_ELEMENTS`) and non-float
    arrays get ``x`` back unchanged. Differentiable in reverse mode (a ``jax.custom_vjp``):
    the gradient is the identity. Callers use it only when the backend switch is on.
    """
    threshold = MIN_ELEMENTS if min_elements is None else min_elements
    if x.size == 0 or x.size < threshold or not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return reverse_mode_only(_materialized, "own_buffer")(x)
