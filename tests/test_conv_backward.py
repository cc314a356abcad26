"""Tests for backends.xla_cpu.conv_backward: Eq. 8 as GEMM + overlap-add equals lax's backward."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from edgefilter.backends.xla_cpu import conv_backward, own_buffer
from tests.conftest import compile_as_shipped, numpy_variables, xla_flops

NHWC = ("NHWC", "HWIO", "NHWC")


def _spec(lhs_shape, rhs_shape, strides, padding, dimension_numbers=NHWC, **kwargs):
    return conv_backward.ConvSpec.create(
        lhs_shape, rhs_shape, strides, padding, dimension_numbers=dimension_numbers, **kwargs
    )


def _operands(seed, lhs_shape, rhs_shape, strides, padding, dtype=jnp.float32):
    """Input, kernel and output error; NumPy's generator (jax.random compiles per shape)."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(lhs_shape), dtype)
    w = jnp.asarray(rng.standard_normal(rhs_shape), dtype)
    out = jax.eval_shape(
        lambda x, w: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC),
        x,
        w,
    )
    d = jnp.asarray(rng.standard_normal(out.shape), dtype)
    return x, w, d


def _lax_input_error(x, w, d, strides, padding):
    _, vjp = jax.vjp(
        lambda x: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC), x
    )
    return vjp(d)[0]


@pytest.mark.parametrize(
    "lhs_shape, rhs_shape, strides, padding",
    [
        ((4, 12, 12, 20), (5, 5, 20, 50), (1, 1), "VALID"),  # LeNet's second conv
        ((2, 32, 32, 16), (3, 3, 16, 32), (2, 2), "SAME"),  # ResNet-20's downsampling conv
        ((2, 16, 16, 8), (1, 1, 8, 16), (2, 2), "VALID"),  # its 1x1 projection
        ((3, 11, 10, 4), (4, 3, 4, 5), (3, 2), ((2, 1), (0, 2))),  # odd everything
        ((2, 9, 9, 3), (3, 3, 3, 4), (1, 1), "SAME"),  # lax's path of the rule, run directly
    ],
)
def test_error_propagation_equals_lax_transpose(lhs_shape, rhs_shape, strides, padding):
    x, w, d = _operands(0, lhs_shape, rhs_shape, strides, padding)
    pads = _spec(lhs_shape, rhs_shape, strides, padding).explicit_padding(lhs_shape, rhs_shape)
    got = jax.jit(lambda d, w: conv_backward.error_propagation(d, w, lhs_shape, strides, pads))(
        d, w
    )
    chex.assert_shape(got, lhs_shape)
    np.testing.assert_allclose(got, _lax_input_error(x, w, d, strides, padding), atol=2e-4)


@settings(max_examples=8, deadline=None)
@given(
    size=st.integers(3, 9),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 3),
    low=st.integers(0, 2),
    high=st.integers(0, 2),
    c_in=st.integers(1, 3),
    c_out=st.integers(1, 3),
)
def test_error_propagation_property(size, kernel, stride, low, high, c_in, c_out):
    """Any kernel, stride and non-negative padding: the lax transpose, to float rounding."""
    if size + low + high < kernel:
        return
    lhs_shape, rhs_shape = (2, size, size + 1, c_in), (kernel, kernel, c_in, c_out)
    padding = ((low, high), (high, low))
    x, w, d = _operands(1, lhs_shape, rhs_shape, (stride, stride), padding)
    strides = (stride, stride)
    got = jax.jit(lambda d, w: conv_backward.error_propagation(d, w, lhs_shape, strides, padding))(
        d, w
    )
    want = _lax_input_error(x, w, d, strides, padding)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_uses_gemm_rule():
    """GEMM where the input has >= 2x the output's positions, in flax's layout only."""
    assert conv_backward.uses_gemm(  # LeNet conv2: 144 input positions, 64 output
        _spec((1, 12, 12, 20), (5, 5, 20, 50), (1, 1), "VALID"), (1, 12, 12, 20), (5, 5, 20, 50)
    )
    assert conv_backward.uses_gemm(  # stride 2: 4x
        _spec((1, 32, 32, 16), (3, 3, 16, 32), (2, 2), "SAME"), (1, 32, 32, 16), (3, 3, 16, 32)
    )
    not_gemm = [
        ((1, 32, 32, 16), (3, 3, 16, 16), (1, 1), "SAME", {}),  # 1x: no zeros to skip
        ((1, 13, 13, 6), (3, 3, 6, 16), (1, 1), "VALID", {}),  # 169 / 121 = 1.4x
        ((1, 12, 12, 20), (5, 5, 20, 50), (1, 1), "VALID", {"rhs_dilation": (2, 2)}),
        ((1, 12, 12, 20), (5, 5, 20, 50), (1, 1), ((-1, 0), (0, 0)), {}),
    ]
    for lhs, rhs, strides, padding, kwargs in not_gemm:
        assert not conv_backward.uses_gemm(_spec(lhs, rhs, strides, padding, **kwargs), lhs, rhs)
    nchw = ("NCHW", "OIHW", "NCHW")
    lhs, rhs = (1, 20, 12, 12), (50, 20, 5, 5)
    spec = _spec(lhs, rhs, (1, 1), "VALID", dimension_numbers=nchw)
    assert not conv_backward.uses_gemm(spec, lhs, rhs)


@pytest.mark.parametrize("dtype, atol", [(jnp.float32, 2e-4), (jnp.bfloat16, 0.5)])
@pytest.mark.parametrize("strides, padding", [((1, 1), "VALID"), ((2, 2), "SAME")])
def test_drop_in_gradients_match_lax(dtype, atol, strides, padding):
    """Same forward bit for bit; gradients of a jitted loss match lax's (Eq. 8 and 12)."""
    shapes = (2, 12, 12, 6), (5, 5, 6, 8)
    x, w, _ = _operands(2, *shapes, strides, padding, dtype)
    kwargs = dict(window_strides=strides, padding=padding, dimension_numbers=NHWC)
    spec = _spec(*shapes, strides, padding)
    assert conv_backward.uses_gemm(spec, *shapes)

    def grads(conv):
        def loss(x, w):
            return jnp.sum(jnp.sin(conv(x, w, **kwargs).astype(jnp.float32)))

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)

    ours, want = grads(conv_backward.conv_general_dilated), grads(lax.conv_general_dilated)
    chex.assert_trees_all_equal_dtypes(ours, want)
    chex.assert_trees_all_close(ours, want, atol=atol, rtol=1e-2 if dtype == jnp.bfloat16 else 0)
    chex.assert_trees_all_equal(
        conv_backward.conv_general_dilated(x, w, **kwargs), lax.conv_general_dilated(x, w, **kwargs)
    )


def test_flax_conv_field_and_lax_fallbacks():
    """Works as flax's conv_general_dilated; grouped convs and lax-rule layers are lax's."""
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 12, 12, 4)), jnp.float32)
    layer = nn.Conv(
        6, (5, 5), padding="VALID", conv_general_dilated=conv_backward.conv_general_dilated
    )
    reference = nn.Conv(6, (5, 5), padding="VALID")
    params = numpy_variables(reference, x, seed=4)

    def grad(m):
        return jax.jit(jax.grad(lambda p: jnp.sum(m.apply(p, x) ** 2)))(params)

    chex.assert_trees_all_close(grad(layer), grad(reference), atol=1e-3)
    grouped = nn.Conv(
        4, (3, 3), feature_group_count=2, conv_general_dilated=conv_backward.conv_general_dilated
    )
    p = numpy_variables(grouped, x, seed=5)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(grouped.apply(p, x))))(p))
    assert "custom_vjp" not in jaxpr
    same = nn.Conv(4, (3, 3), conv_general_dilated=conv_backward.conv_general_dilated)
    p = numpy_variables(same, x, seed=6)  # SAME, stride 1: 1x, lax's rule
    assert "custom_vjp" not in str(jax.make_jaxpr(lambda p: same.apply(p, x))(p))


def test_compiled_error_propagation_does_the_real_macs_only():
    """XLA's cost analysis: the GEMM's flops are 2 * the forward MACs, like lax's transpose.

    The overlap-add adds one add per tap element, under 2% of the GEMM's flops here.
    """
    shapes, strides, padding = ((8, 12, 12, 20), (5, 5, 20, 50)), (1, 1), "VALID"
    x, w, d = _operands(7, *shapes, strides, padding)

    def flops(conv):
        def input_error(x, w, d):
            _, vjp = jax.vjp(lambda x: conv(x, w, strides, padding, dimension_numbers=NHWC), x)
            return vjp(d)[0]

        return xla_flops(compile_as_shipped(jax.jit(input_error), x, w, d))

    forward_macs = 8 * 8 * 8 * 5 * 5 * 20 * 50
    ours = flops(conv_backward.conv_general_dilated)
    assert 2 * forward_macs <= ours < 1.02 * 2 * forward_macs
    assert flops(lax.conv_general_dilated) == pytest.approx(2 * forward_macs, rel=0.01)


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])  # lax's backward / the GEMM one
def test_large_inputs_get_their_own_buffer_with_the_same_values(strides, monkeypatch):
    """The input passes own_buffer's conditional (XLA:CPU then reads it, not its producers)."""
    x, w, _ = _operands(0, (2, 8, 8, 3), (3, 3, 3, 4), strides, "SAME")

    def loss(x, w):  # An elementwise producer that XLA would otherwise fuse into readers.
        y = conv_backward.conv_general_dilated(jnp.tanh(x), w, strides, "SAME", None, None, NHWC)
        return jnp.sum(y**2)

    def reference(x, w):
        y = lax.conv_general_dilated(jnp.tanh(x), w, strides, "SAME", dimension_numbers=NHWC)
        return jnp.sum(y**2)

    monkeypatch.setattr(own_buffer, "MIN_ELEMENTS", x.size)
    compiled = compile_as_shipped(jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), x, w)
    assert compiled.as_text().count("conditional(") == 1
    # atol: entries reach ~30, where float32 sums in another order differ by ~1e-5.
    chex.assert_trees_all_close(
        compiled(x, w), jax.value_and_grad(reference, argnums=(0, 1))(x, w), rtol=1e-5, atol=1e-4
    )
