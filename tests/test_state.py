"""Tests of edgefilter.state: the training state every network shares."""

import jax
import jax.numpy as jnp
import optax

from edgefilter import models
from edgefilter.models import state


def test_create_train_state_has_strong_types_and_batch_stats():
    s = state.create_train_state(
        models.create("resnet8", 2), optax.sgd(0.1, momentum=0.9), jax.random.key(0), (32, 32, 3)
    )
    assert s.step.dtype == jnp.int32 and not s.step.weak_type
    assert all(not x.weak_type for x in jax.tree.leaves(s.opt_state))
    assert set(s.batch_stats) == {"BatchNorm_0", "BasicBlock_0", "BasicBlock_1", "BasicBlock_2"}
    lenet = state.create_train_state(
        models.create("lenet", 10), optax.sgd(0.1), jax.random.key(0), (28, 28, 1)
    )
    assert lenet.batch_stats == {}
