"""Tests for backends.xla_cpu.own_buffer: same values, identity gradient, a kept conditional."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefilter.backends.xla_cpu import own_buffer
from tests.conftest import compile_as_shipped


def _conditionals(fn, *args) -> int:
    return compile_as_shipped(jax.jit(fn), *args).as_text().count("conditional(")


@settings(max_examples=30, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from([np.float32, np.float16]),
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
        elements=st.floats(allow_nan=True, allow_infinity=True, width=16),
    )
)
def test_returns_the_same_values_whatever_they_are(x):
    """NaN and infinities included, also in the first element the predicate reads."""
    out = jax.jit(lambda a: own_buffer.own_buffer(a, min_elements=1))(x)
    assert out.dtype == x.dtype and out.shape == x.shape
    np.testing.assert_array_equal(np.asarray(out), x)


def test_large_float_arrays_pass_a_conditional_that_xla_keeps():
    big = jnp.ones((own_buffer.MIN_ELEMENTS,), jnp.float32)
    small = jnp.ones((own_buffer.MIN_ELEMENTS - 1,), jnp.float32)

    def f(a):
        return jnp.exp(own_buffer.own_buffer(jnp.exp(a)))

    assert _conditionals(f, big) == 1
    assert _conditionals(f, small) == 0
    assert _conditionals(lambda a: own_buffer.own_buffer(a) + 1, big.astype(jnp.int32)) == 0
    assert _conditionals(lambda a: own_buffer.own_buffer(a, min_elements=4), small[:4]) == 1


def test_gradient_is_the_identity_without_a_conditional():
    x = jnp.linspace(-2.0, 2.0, 24, dtype=jnp.float32).reshape(2, 3, 4)
    weights = jnp.arange(24, dtype=jnp.float32).reshape(2, 3, 4)

    def loss(a):
        return jnp.sum(jnp.sin(own_buffer.own_buffer(a, min_elements=1)) * weights)

    np.testing.assert_allclose(jax.grad(loss)(x), jnp.cos(x) * weights, rtol=1e-6)
    _, vjp = jax.vjp(lambda a: own_buffer.own_buffer(a, min_elements=1), x)
    np.testing.assert_array_equal(vjp(weights)[0], weights)
    assert _conditionals(jax.grad(lambda a: jnp.sum(own_buffer.own_buffer(a, 1) * 3.0)), x) == 0


@pytest.mark.parametrize("size", [0, 3])
def test_tiny_or_empty_arrays_are_returned_as_they_are(size):
    x = jnp.ones((size,), jnp.float32)
    assert own_buffer.own_buffer(x) is x
