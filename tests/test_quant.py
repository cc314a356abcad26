"""Tests for edgefilter.quant: Banner et al. (NeurIPS 2018) k-bit quantized training."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax import lax

from edgefilter.backends.xla_cpu import conv_backward
from edgefilter.method import emp, quant
from tests.conftest import numpy_variables

# Few, small examples: the suite shares two cores with other work.
FAST = settings(max_examples=40, deadline=None)

# A handful of fixed sizes, so the jitted quantizers compile a few times only.
_fake_quantize = jax.jit(quant.fake_quantize, static_argnums=1)
_stochastic_quantize = jax.jit(quant.stochastic_quantize, static_argnums=1)
_error_quantize = jax.jit(lambda x, bits: quant.error_quantizer(bits, seed=3)(x), static_argnums=1)

arrays = st.sampled_from([1, 5, 64]).flatmap(
    lambda n: hnp.arrays(
        np.float32,
        (n,),
        # Away from the float32 minimum, so no grid level needs a subnormal number.
        elements=st.floats(-1e3, 1e3, width=32).filter(lambda v: v == 0 or abs(v) >= 1e-30),
    )
)
quant_bits = st.sampled_from([4, 6, 8, 16])

DN = ("NHWC", "HWIO", "NHWC")


def _normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
    """Test data from NumPy: eager ``jax.random`` compiles threefry for every shape."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


class ConvDense(nn.Module):
    """Conv -> ReLU -> Dense, with the lax functions under test plugged in."""

    conv: object = lax.conv_general_dilated
    dot: object = lax.dot_general

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(6, (3, 3), conv_general_dilated=self.conv)(x))
        return nn.Dense(3, dot_general=self.dot)(x.reshape(x.shape[0], -1))


@functools.cache
def _params_and_data() -> tuple[dict, jax.Array]:
    """Parameters do not depend on the lax functions plugged in: initialise once."""
    x = _normal(0, (4, 6, 6, 2))
    return numpy_variables(ConvDense(), x, seed=1), x


def _model_and_data(conv: object, dot: object):
    return (ConvDense(conv=conv, dot=dot), *_params_and_data())


def _loss(model: nn.Module, params, x: jax.Array) -> jax.Array:
    return jnp.sum(model.apply(params, x) ** 2)


# ----------------------------------------------------------------------------------------
# 32 bits is the unquantized computation.
# ----------------------------------------------------------------------------------------


def test_32_bits_returns_full_precision_functions():
    assert quant.conv_general_dilated(32, xla_cpu=False) is lax.conv_general_dilated
    assert quant.conv_general_dilated(32, xla_cpu=True) is conv_backward.conv_general_dilated
    policy = emp.TopK(0.5)
    for xla_cpu in (False, True):
        pruned = emp.conv_general_dilated(policy, xla_cpu=xla_cpu)
        assert quant.conv_general_dilated(32, policy=policy, xla_cpu=xla_cpu) == pruned
    assert quant.dot_general(32) is lax.dot_general
    x = jnp.arange(5.0)
    assert quant.fake_quantize(x, 32) is x
    assert quant.stochastic_quantize(x, 32, jax.random.key(0)) is x
    assert quant.error_quantizer(32)(x) is x


def test_32_bits_model_is_bitwise_unquantized():
    model, params, x = _model_and_data(quant.conv_general_dilated(32), quant.dot_general(32))
    ref, _, _ = _model_and_data(lax.conv_general_dilated, lax.dot_general)
    np.testing.assert_array_equal(jax.jit(model.apply)(params, x), jax.jit(ref.apply)(params, x))
    grads = jax.jit(jax.grad(lambda p: _loss(model, p, x)))(params)
    ref_grads = jax.jit(jax.grad(lambda p: _loss(ref, p, x)))(params)
    jax.tree.map(np.testing.assert_array_equal, grads, ref_grads)


@pytest.mark.parametrize("bits", [0, 1, 7, 12, 64, True, 8.0])
def test_unsupported_bits_raise(bits):
    with pytest.raises(ValueError, match="bits"):
        quant.conv_general_dilated(bits)
    with pytest.raises(ValueError, match="bits"):
        quant.dot_general(bits)
    with pytest.raises(ValueError, match="bits"):
        quant.error_quantizer(bits)


# ----------------------------------------------------------------------------------------
# Quantizer properties (hypothesis).
# ----------------------------------------------------------------------------------------


@FAST
@given(x=arrays, bits=quant_bits)
def test_forward_quantizer_levels_range_idempotence(x, bits):
    q = np.asarray(_fake_quantize(x, bits))
    lo, hi = x.min(), x.max()
    assert q.dtype == x.dtype and q.shape == x.shape
    assert len(np.unique(q)) <= 2**bits
    assert lo <= q.min() and q.max() <= hi
    # The range's ends are levels, so the range (hence Delta) is kept by the quantizer.
    assert q.min() == lo and q.max() == hi
    # Exact idempotence needs float32 to resolve the grid (see fake_quantize's docstring).
    assume(hi == lo or max(abs(lo), abs(hi)) <= 2.0 ** (22 - bits) * (hi - lo))
    np.testing.assert_array_equal(np.asarray(_fake_quantize(q, bits)), q)


@FAST
@given(x=arrays, bits=quant_bits, seed=st.integers(0, 2**31 - 1))
def test_stochastic_quantizer_levels_range_grid(x, bits, seed):
    q = np.asarray(_stochastic_quantize(x, bits, jax.random.key(seed, impl="rbg")))
    absmax = np.abs(x).max()
    kmax = 2 ** (bits - 1) - 1
    step = absmax / kmax
    assert q.dtype == x.dtype and q.shape == x.shape
    assert len(np.unique(q)) <= 2**bits - 1
    assert np.all(np.abs(q) <= absmax)
    assert np.all(q[x == 0] == 0)
    if absmax > 0:
        k = q.astype(np.float64) / step
        np.testing.assert_allclose(k, np.round(k), atol=1e-3)
        # Stochastic rounding moves a value to one of its two neighbouring levels.
        assert np.all(np.abs(q.astype(np.float64) - x) <= step * (1 + 1e-5))


@FAST
@given(x=arrays, bits=quant_bits)
def test_error_quantizer_is_deterministic_and_a_stochastic_quantize(x, bits):
    q = np.asarray(_error_quantize(x, bits))
    np.testing.assert_array_equal(np.asarray(_error_quantize(x, bits)), q)
    absmax = np.abs(x).max()
    assert len(np.unique(q)) <= 2**bits - 1 and np.all(np.abs(q) <= absmax)


def test_error_quantizer_eager_matches_jit():
    x = _normal(0, (3, 50))
    eq = quant.error_quantizer(8, seed=3)
    # Same draws; XLA may fuse the arithmetic differently, so allow for ulps.
    np.testing.assert_allclose(eq(x), jax.jit(eq)(x), rtol=1e-6, atol=1e-6)


def test_fake_quantize_small_example_by_hand():
    # 4 bits on [0, 1]: Delta = 1/15, 0.11 -> 1.65 Delta -> 2 Delta, 0.52 -> 7.8 -> 8.
    x = jnp.array([0.0, 0.11, 0.52, 1.0])
    expected = np.array([0.0, 2 / 15, 8 / 15, 1.0], np.float32)
    np.testing.assert_allclose(quant.fake_quantize(x, 4), expected, rtol=1e-6)
    # A constant tensor is its own quantization.
    np.testing.assert_array_equal(quant.fake_quantize(jnp.full((3,), 2.5), 4), 2.5)


def test_dtype_is_kept():
    x = jnp.linspace(-1.0, 1.0, 9, dtype=jnp.bfloat16)
    assert quant.fake_quantize(x, 8).dtype == jnp.bfloat16
    assert quant.error_quantizer(8)(x).dtype == jnp.bfloat16
    with pytest.raises(TypeError, match="floating"):
        quant.fake_quantize(jnp.arange(4), 8)


# ----------------------------------------------------------------------------------------
# Stochastic rounding is unbiased.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
def test_stochastic_rounding_is_unbiased(bits):
    # n copies of a value between two levels, plus 1.0 fixing the range: Delta = 1 / K.
    # Each rounding error e_i is independent, zero-mean if unbiased, |e_i| < Delta and
    # std(e_i) <= Delta / 2, so the mean of n errors has std <= Delta / (2 sqrt(n)):
    # a 4-sigma tolerance is 4 * Delta / (2 sqrt(n)).
    n = 100_000
    value = 0.3371
    x = jnp.concatenate([jnp.ones((1,)), jnp.full((n,), value)])
    step = 1.0 / (2 ** (bits - 1) - 1)
    tol = 4 * step / (2 * math.sqrt(n))
    for q in (
        quant.stochastic_quantize(x, bits, jax.random.key(7, impl="rbg")),
        quant.error_quantizer(bits, seed=7)(x),
    ):
        err = np.asarray(q[1:], np.float64) - value
        assert abs(err.mean()) < tol
        assert np.all(np.abs(err) < step)
        assert 0.0 < err.std() <= step / 2
    # The test has power: round to nearest on the same grid is biased by far more.
    rtn_bias = abs(round(value / step) * step - value)
    assert rtn_bias > 20 * tol


# ----------------------------------------------------------------------------------------
# Straight-through estimator and the composed layers, checked step by step by hand.
# ----------------------------------------------------------------------------------------


def test_ste_gradient_is_identity():
    x = _normal(0, (7, 3))
    c = _normal(1, (7, 3))
    grad = jax.grad(lambda v: jnp.sum(c * quant.fake_quantize_ste(v, 4)))(x)
    np.testing.assert_array_equal(grad, c)
    out, tangent = jax.jvp(lambda v: quant.fake_quantize_ste(v, 4), (x,), (c,))
    np.testing.assert_array_equal(out, quant.fake_quantize(x, 4))
    np.testing.assert_array_equal(tangent, c)


def test_quantize_cotangent_is_identity_forward_transform_backward():
    eq = quant.error_quantizer(4, seed=1)
    x = _normal(0, (5, 4))
    g = _normal(1, (5, 4))
    out, vjp = jax.vjp(lambda v: quant.quantize_cotangent(eq, v), x)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(vjp(g)[0], eq(g))


def _conv(lhs, rhs):
    return lax.conv_general_dilated(lhs, rhs, (2, 1), "SAME", dimension_numbers=DN)


def _value_and_grads(f, lhs, rhs, seed: int = 2):
    """``f(lhs, rhs)`` and its VJP for a random cotangent, jitted (eager is slow)."""
    g = _normal(seed, jax.eval_shape(f, lhs, rhs).shape)

    @jax.jit
    def run(lhs, rhs, g):
        out, vjp = jax.vjp(f, lhs, rhs)
        return out, vjp(g)

    return (*run(lhs, rhs, g), g)


def _conv_operands():
    lhs = _normal(0, (2, 7, 7, 3))
    rhs = _normal(1, (3, 3, 3, 4))
    return lhs, rhs


def _by_hand(f, bits: int, seed: int, lhs, rhs, g):
    """Banner's steps by hand: quantize the operands (forward) and the error map
    (backward), then the ordinary backward of ``f`` on the quantized residuals."""

    @jax.jit
    def run(lhs, rhs, g):
        qlhs, qrhs = quant.fake_quantize(lhs, bits), quant.fake_quantize(rhs, bits)
        out, vjp = jax.vjp(f, qlhs, qrhs)
        return out, vjp(quant.ErrorQuantizer(bits, seed)(g))

    return run(lhs, rhs, g)


def _assert_grads_close(got, want):
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_quantized_conv_matches_banner_steps_by_hand():
    bits, seed = 6, 5
    lhs, rhs = _conv_operands()
    conv = quant.conv_general_dilated(bits, seed=seed)
    out, grads, g = _value_and_grads(
        lambda a, w: conv(a, w, (2, 1), "SAME", dimension_numbers=DN), lhs, rhs
    )
    ref_out, ref_grads = _by_hand(_conv, bits, seed, lhs, rhs, g)
    np.testing.assert_array_equal(out, ref_out)
    _assert_grads_close(grads, ref_grads)


@pytest.mark.parametrize("policy", [None, emp.TopK(0.5)])
def test_backend_switch_gives_the_same_quantized_gradients(policy):
    """Off, lax's backward (and EMP's) on the quantized error; on, the XLA:CPU lowerings."""
    lhs, rhs = _conv_operands()

    def run(xla_cpu):
        conv = quant.conv_general_dilated(8, policy=policy, seed=3, xla_cpu=xla_cpu)
        assert conv.xla_cpu is xla_cpu
        # Stride 2 both ways: 49 input positions to 16 output, Eq. 8 is the GEMM when on.
        return _value_and_grads(
            lambda a, w: conv(a, w, (2, 2), "SAME", dimension_numbers=DN), lhs, rhs
        )

    (out_off, grads_off, _), (out_on, grads_on, _) = run(False), run(True)
    np.testing.assert_array_equal(out_on, out_off)
    _assert_grads_close(grads_on, grads_off)


def test_quantized_dense_matches_banner_steps_by_hand():
    bits, seed = 8, 2
    lhs = _normal(0, (5, 6))
    rhs = _normal(1, (6, 3))
    dims = (((1,), (0,)), ((), ()))
    dot = quant.dot_general(bits, seed=seed)
    out, grads, g = _value_and_grads(lambda a, w: dot(a, w, dims), lhs, rhs)
    ref_out, ref_grads = _by_hand(lambda a, w: lax.dot_general(a, w, dims), bits, seed, lhs, rhs, g)
    np.testing.assert_array_equal(out, ref_out)
    _assert_grads_close(grads, ref_grads)


# ----------------------------------------------------------------------------------------
# A flax model: gradients flow, jit, determinism, no recompilation.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_gradients_flow_through_every_quantized_layer(bits):
    model, params, x = _model_and_data(quant.conv_general_dilated(bits), quant.dot_general(bits))
    grads = jax.jit(jax.grad(lambda p: _loss(model, p, x)))(params)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert len(leaves) == 4
    for path, leaf in leaves:
        assert np.all(np.isfinite(leaf)), path
        assert np.any(leaf != 0), path


def test_jit_deterministic_for_a_seed_and_no_retrace():
    traces = []

    def grads_for(seed: int):
        model, params, x = _model_and_data(
            quant.conv_general_dilated(8, seed=seed), quant.dot_general(8, seed=seed)
        )

        def loss(p):
            traces.append(seed)
            return _loss(model, p, x)

        return jax.jit(jax.grad(loss)), params

    step, params = grads_for(0)
    first, second = step(params), step(params)
    assert len(traces) == 1
    jax.tree.map(np.testing.assert_array_equal, first, second)
    again, _ = grads_for(0)
    jax.tree.map(np.testing.assert_array_equal, again(params), first)
    other, _ = grads_for(1)
    other_grads = other(params)
    kernel = ("params", "Conv_0", "kernel")
    a = first[kernel[0]][kernel[1]][kernel[2]]
    b = other_grads[kernel[0]][kernel[1]][kernel[2]]
    assert not np.array_equal(a, b)  # the seed drives the rounding noise


def test_factories_are_hashable_and_compare_by_value():
    assert quant.conv_general_dilated(8, seed=1) == quant.conv_general_dilated(8, seed=1)
    assert quant.dot_general(4) != quant.dot_general(8)
    assert hash(quant.error_quantizer(6, 2)) == hash(quant.ErrorQuantizer(6, 2))


# ----------------------------------------------------------------------------------------
# Composition with error map pruning.
# ----------------------------------------------------------------------------------------


def test_composes_with_emp_error_transform():
    assert quant.conv_general_dilated(32, policy=emp.TopK(0.5)) == emp.conv_general_dilated(
        emp.TopK(0.5)
    )
    lhs, rhs = _conv_operands()

    def run(conv):
        return _value_and_grads(
            lambda a, w: conv(a, w, (2, 1), "SAME", dimension_numbers=DN), lhs, rhs
        )

    # Keeping every channel, EMP's backward is lax's: same as the quantized conv alone.
    out, grads, _ = run(quant.conv_general_dilated(8, policy=emp.TopK(1.0), seed=4))
    ref_out, ref_grads, _ = run(quant.conv_general_dilated(8, seed=4))
    np.testing.assert_array_equal(out, ref_out)
    _assert_grads_close(grads, ref_grads)

    # Pruning half: the same as EMP by hand on quantized operands with our hook.
    policy = emp.TopK(0.5)
    _, grads, g = run(quant.conv_general_dilated(8, policy=policy, seed=4))
    hooked = emp.conv_general_dilated(policy, error_transform=quant.error_quantizer(8, 4))

    @jax.jit
    def by_hand(lhs, rhs, g):
        qlhs, qrhs = quant.fake_quantize(lhs, 8), quant.fake_quantize(rhs, 8)
        _, vjp = jax.vjp(
            lambda a, w: hooked(a, w, (2, 1), "SAME", dimension_numbers=DN), qlhs, qrhs
        )
        return vjp(g)  # the hook quantizes g inside EMP's backward

    ref_grads = by_hand(lhs, rhs, g)
    for got, want in zip(grads, ref_grads, strict=True):
        np.testing.assert_array_equal(got, want)
    kernel_grad_per_channel = np.abs(np.asarray(grads[1])).sum(axis=(0, 1, 2))
    assert np.count_nonzero(kernel_grad_per_channel) == policy.num_kept(4)


def test_emp_model_gradients_finite_under_jit():
    model, params, x = _model_and_data(
        quant.conv_general_dilated(8, policy=emp.TopK(0.5)), quant.dot_general(8)
    )
    grads = jax.jit(jax.grad(lambda p: _loss(model, p, x)))(params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(leaf)) and np.any(leaf != 0), path


# ----------------------------------------------------------------------------------------
# Accounting.
# ----------------------------------------------------------------------------------------


def test_bit_ops_factor():
    assert quant.bit_ops_factor(32, 32) == 1.0
    assert quant.bit_ops_factor(8, 8) == 1 / 16
    assert quant.bit_ops_factor(4, 8) == quant.bit_ops_factor(8, 4) == 1 / 32
    assert quant.bit_ops_factor(16, 32) == 0.5
    for bad in [(0, 8), (8, -1), (8.0, 8), (True, 8)]:
        with pytest.raises(ValueError):
            quant.bit_ops_factor(*bad)
