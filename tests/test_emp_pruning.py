"""Tests for ``edgefilter.emp.pruning``: EMP on an unmodified flax model (Eq. 8, 11, 12).

The reference is the explicit route: the same CNN built with
``conv_general_dilated=emp.conv_general_dilated(policy)`` on the layers to prune (whose
gradients tests/test_emp.py checks against NumPy), and the dense CNN for what must stay
unchanged. Each route is one jitted ``value_and_grad``, compiled once and shared by the
tests (five compiles in all). Which layers are pruned is read off the jaxpr.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import edgefilter as ef
from edgefilter.method import emp
from tests.conftest import numpy_variables

POLICY = emp.TopK(0.5)
CONVS = ("Conv_0", "Conv_1", "Conv_2")


class CNN(nn.Module):
    """Three convolutions and a dense layer, as a user writes them (flax's defaults)."""

    first_conv: Callable | None = None  # the first conv's primitive (None: lax's)
    conv: Callable | None = None  # the other convs' primitive

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(8, (3, 3), conv_general_dilated=self.first_conv)(x))
        x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2), conv_general_dilated=self.conv)(x))
        x = nn.relu(nn.Conv(8, (3, 3), conv_general_dilated=self.conv)(x))
        return nn.Dense(3)(x.mean(axis=(1, 2)))


@functools.cache
def _data() -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)  # Not jax.random: it compiles for every shape.
    x = jnp.asarray(rng.standard_normal((8, 8, 8, 1)), jnp.float32)
    return x, jnp.asarray(rng.integers(0, 3, 8), jnp.int32)


def _loss(model: nn.Module, params, x, y) -> jax.Array:
    logits = model.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@functools.cache
def _params():
    return numpy_variables(CNN(), _data()[0], seed=1)


@functools.cache
def _value_and_grads(route: str, skip_first: bool = True):
    """Loss and gradients on the fixed batch: ``dense``, ``context`` or ``explicit``."""
    pruned = emp.conv_general_dilated(POLICY)
    if route == "explicit":
        model = CNN(first_conv=None if skip_first else pruned, conv=pruned)
    else:
        model = CNN()

    @jax.jit
    def value_and_grad(params, x, y):
        fn = jax.value_and_grad(functools.partial(_loss, model))
        if route == "context":
            with ef.emp.pruning(POLICY, skip_first=skip_first):
                return fn(params, x, y)
        return fn(params, x, y)

    return value_and_grad(_params(), *_data())


@pytest.mark.parametrize("skip_first", [True, False])
def test_pruning_equals_the_explicit_primitive(skip_first):
    dense_loss, dense = _value_and_grads("dense")
    loss, grads = _value_and_grads("context", skip_first)
    explicit_loss, explicit = _value_and_grads("explicit", skip_first)

    assert float(loss) == float(explicit_loss) == float(dense_loss)  # forward unchanged
    jax.tree.map(np.testing.assert_array_equal, grads, explicit)
    for name in CONVS:  # pruned (or fed pruned errors): not the dense gradient
        g, d = grads["params"][name]["kernel"], dense["params"][name]["kernel"]
        assert not np.allclose(g, d, rtol=1e-3, atol=1e-6), name
    # The dense layer's gradient needs no conv's backward.
    jax.tree.map(
        np.testing.assert_array_equal, grads["params"]["Dense_0"], dense["params"]["Dense_0"]
    )


class Shared(nn.Module):
    """A model whose first conv layer is called twice, then another conv."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        stem = nn.Conv(1, (3, 3), name="stem")
        return nn.Conv(8, (3, 3), name="body")(stem(stem(x)))


def _conv_kinds(model: nn.Module, x: jax.Array) -> list[str]:
    """``dense`` or ``pruned`` for each convolution ``model.apply`` runs, in order."""
    params = numpy_variables(model, x)
    eqns = jax.make_jaxpr(model.apply)(params, x).jaxpr.eqns
    names = [e.primitive.name for e in eqns]  # EMP's conv is a custom_vjp call
    return [
        {"conv_general_dilated": "dense", "custom_vjp_call": "pruned"}[n]
        for n in names
        if "conv" in n or "custom_vjp" in n
    ]


def test_the_first_conv_layer_of_every_top_level_call_stays_dense():
    x = jnp.zeros((2, 8, 8, 1))
    with ef.emp.pruning(POLICY):  # Several models in one block: each has its first layer.
        assert _conv_kinds(Shared(), x) == ["dense", "dense", "pruned"]  # a layer, not a call
        assert _conv_kinds(CNN(), x) == ["dense", "pruned", "pruned"]
    with ef.emp.pruning(POLICY, skip_first=False):
        assert _conv_kinds(Shared(), x) == ["pruned", "pruned", "pruned"]
        assert _conv_kinds(CNN(), x) == ["pruned", "pruned", "pruned"]
    assert _conv_kinds(CNN(), x) == ["dense", "dense", "dense"]  # the block has ended


def test_init_inside_pruning_gives_the_same_variables():
    x = _data()[0]
    with ef.emp.pruning(POLICY, skip_first=False):  # Traced inside the block.
        inside = jax.jit(lambda key: CNN().init(key, x))(jax.random.key(1))
    outside = jax.jit(lambda key: CNN().init(key, x))(jax.random.key(1))
    assert jax.tree.structure(inside) == jax.tree.structure(outside)
    jax.tree.map(np.testing.assert_array_equal, inside, outside)


def test_pruning_refuses_to_replace_a_primitive_of_the_layer():
    def own_conv(*args, **kwargs):
        return jax.lax.conv_general_dilated(*args, **kwargs)

    x = jnp.zeros((1, 8, 8, 1))
    params = numpy_variables(CNN(conv=own_conv), x, seed=1)
    with (
        ef.emp.pruning(POLICY),
        pytest.raises(ValueError, match=r"nn.Conv 'Conv_1' computes its convolution with"),
    ):
        jax.eval_shape(CNN(conv=own_conv).apply, params, x)
    # The first conv, left dense, may have a primitive of its own.
    with ef.emp.pruning(POLICY):
        jax.eval_shape(CNN(first_conv=own_conv).apply, params, x)


def test_pruning_checks_its_arguments():
    with pytest.raises(TypeError, match="policy must be a TopK or Threshold"):
        ef.emp.pruning(0.5)
    with pytest.raises(ValueError, match="skip_first must be True or False, got 1"):
        ef.emp.pruning(POLICY, skip_first=1)
