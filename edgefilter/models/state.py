"""The training state of a network: flax's TrainState plus batch-norm statistics."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
    """Flax's TrainState plus batch-norm statistics (``{}`` for models without BN)."""

    batch_stats: Any = None


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, key: jax.Array, image_shape: tuple[int, ...]
) -> TrainState:
    """Initialises parameters (and batch statistics) for NHWC inputs of ``image_shape``."""
    # One jitted program: eagerly, every parameter's initializer compiles on its own.
    init = jax.jit(functools.partial(model.init, train=False))
    variables = init(key, jnp.zeros((1, *image_shape), jnp.float32))
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
    )
    # A concrete int32 step (not a weakly typed Python 0) and strongly typed optimizer
    # state, so the first train step does not compile a second time for step 2.
    return jax.tree.map(
        lambda x: jnp.asarray(x, jnp.asarray(x).dtype), state.replace(step=jnp.zeros((), jnp.int32))
    )
