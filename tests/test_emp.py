"""Tests for edgefilter.emp: the error-map-pruned convolution (PAPER.md, Eq. 8-14).

The reference for every gradient is computed independently of the module under test:
channel scores ``S_j`` in NumPy (float64), the kept set by NumPy sorting/comparison, and
the dense lax backward (``jax.vjp`` of the plain convolution) with the pruned channels of
the output error zeroed.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from edgefilter.backends.xla_cpu import channel_fold, conv_backward, own_buffer
from edgefilter.method import emp
from tests.conftest import compile_as_shipped, numpy_variables, xla_flops

NHWC = ("NHWC", "HWIO", "NHWC")


# ----------------------------------------------------------------------------------------
# Independent reference.
# ----------------------------------------------------------------------------------------


def _np_scores(kernel, delta, gamma1, gamma2, out_axis=-1, rhs_axis=-1, batch_axis=0):
    """S_j = N * gamma1 * ||W_j||_1 + gamma2 * sum_i ||delta_ij||_1, in float64."""
    kernel = np.moveaxis(np.asarray(kernel, np.float64), rhs_axis, -1)
    delta = np.asarray(delta, np.float64)
    n_batch = delta.shape[batch_axis]
    delta = np.moveaxis(delta, out_axis, -1)
    w_l1 = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(0)
    d_l1 = np.abs(delta).reshape(-1, delta.shape[-1]).sum(0)
    return n_batch * gamma1 * w_l1 + gamma2 * d_l1


def _np_keep(policy, scores):
    """Kept-channel mask by NumPy: stable argsort (TopK) or comparison (Threshold)."""
    n = scores.shape[0]
    keep = np.zeros(n, bool)
    if isinstance(policy, emp.TopK):
        k = max(1, int(np.ceil(policy.keep_ratio * n - 1e-9)))
        order = np.argsort(-scores, kind="stable")
        keep[order[:k]] = True
        if k < n:  # the test data must not sit on a tie, or the reference is ambiguous
            gap = scores[order[k - 1]] - scores[order[k]]
            assert gap > 1e-4 * abs(scores).max(), "test data too close to a tie"
    else:
        cut = policy.threshold * scores.mean()
        keep = scores >= cut
        margin = np.min(np.abs(scores - cut))
        assert margin > 1e-4 * abs(scores).max(), "test data too close to the threshold"
    return keep


def _reference_grads(conv_kwargs, policy, lhs, rhs, delta, out_axis=-1, rhs_axis=-1):
    """Dense lax backward of ``delta`` with the channels ``policy`` prunes zeroed."""
    scores = _np_scores(rhs, delta, policy.gamma1, policy.gamma2, out_axis, rhs_axis)
    keep = _np_keep(policy, scores)
    shape = [1] * delta.ndim
    shape[out_axis] = keep.size
    masked = jnp.where(jnp.asarray(keep.reshape(shape)), delta, jnp.zeros((), delta.dtype))
    _, vjp = jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, **conv_kwargs), lhs, rhs)
    return vjp(masked), keep


def _emp_grads(policy, conv_kwargs, lhs, rhs, delta, error_transform=None, xla_cpu=None):
    """Jit-compiled backward of the pruned conv for a given output error (its values)."""
    conv = emp.conv_general_dilated(policy, error_transform=error_transform, xla_cpu=xla_cpu)

    @jax.jit
    def grads(x, w, d):
        _, vjp = jax.vjp(lambda x, w: conv(x, w, **conv_kwargs), x, w)
        return vjp(d)

    return grads(lhs, rhs, delta)


def _data(seed, lhs_shape, rhs_shape, conv_kwargs, dtype=jnp.float32):
    """Inputs, kernel and an output error whose channels have clearly distinct scales.

    NumPy's generator, not jax.random: it needs no compilation for each new shape.
    """
    rng = np.random.default_rng(seed)
    lhs = jnp.asarray(rng.standard_normal(lhs_shape), dtype)
    rhs = jnp.asarray(rng.standard_normal(rhs_shape), dtype)
    out = jax.eval_shape(lambda x, w: lax.conv_general_dilated(x, w, **conv_kwargs), lhs, rhs)
    dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, conv_kwargs["dimension_numbers"])
    n = out.shape[dn.out_spec[1]]
    shape = [1] * len(out.shape)
    shape[dn.out_spec[1]] = n
    scale = rng.permutation(np.linspace(0.2, 3.0, n)).reshape(shape)
    delta = jnp.asarray(rng.standard_normal(out.shape) * scale, dtype)
    return lhs, rhs, delta


def _flops(fn, *args) -> float:
    """XLA's flop count of ``jax.jit(fn)``."""
    return xla_flops(compile_as_shipped(jax.jit(fn), *args))


def _backward(conv, conv_kwargs):
    """Backward only: the forward conv's output is unused, so XLA removes it."""

    def fn(x, w, d):
        return jax.vjp(lambda x, w: conv(x, w, **conv_kwargs), x, w)[1](d)

    return fn


# ----------------------------------------------------------------------------------------
# Exactness of the backward.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [emp.TopK(1.0), emp.Threshold(0.0), emp.TopK(1.0, 1.0, 1.0)])
def test_keep_all_equals_jax_grad(policy):
    kwargs = dict(window_strides=(2, 2), padding="SAME", dimension_numbers=NHWC)
    x, w, r = _data(0, (2, 7, 7, 3), (3, 3, 3, 8), kwargs)
    conv = emp.conv_general_dilated(policy)

    def loss(fn):
        return jax.jit(jax.grad(lambda x, w: jnp.sum(fn(x, w, **kwargs) * r), argnums=(0, 1)))

    expected = loss(lax.conv_general_dilated)(x, w)
    chex.assert_trees_all_equal(loss(conv)(x, w), expected)
    forward = jax.jit(lambda x, w: conv(x, w, **kwargs))(x, w)
    chex.assert_trees_all_equal(forward, lax.conv_general_dilated(x, w, **kwargs))


_F32, _BF16 = jnp.float32, jnp.bfloat16
# Every (stride, padding) pair meets each policy kind twice; bfloat16 once per kind.
BACKWARD_CASES = [
    (emp.TopK(0.5), 1, "SAME", _F32),
    (emp.TopK(0.5), 2, "VALID", _F32),
    (emp.TopK(0.25, gamma1=0.5, gamma2=1.0), 2, "SAME", _F32),
    (emp.TopK(0.25, gamma1=0.5, gamma2=1.0), 1, "VALID", _F32),
    (emp.Threshold(1.0), 1, "VALID", _F32),
    (emp.Threshold(1.0), 2, "SAME", _F32),
    (emp.Threshold(0.8, gamma1=0.5, gamma2=1.0, buckets=4), 2, "VALID", _F32),
    (emp.Threshold(0.8, gamma1=0.5, gamma2=1.0, buckets=4), 1, "SAME", _F32),
    (emp.TopK(0.5), 2, "SAME", _BF16),
    (emp.Threshold(1.0, buckets=4), 1, "VALID", _BF16),
]


def _case_id(case):
    policy, stride, padding, dtype = case
    return f"{policy}-s{stride}-{padding}-{jnp.dtype(dtype).name}"


@pytest.mark.parametrize(
    "policy, stride, padding, dtype", BACKWARD_CASES, ids=[_case_id(c) for c in BACKWARD_CASES]
)
def test_pruned_backward_matches_masked_dense(policy, stride, padding, dtype):
    kwargs = dict(window_strides=(stride, stride), padding=padding, dimension_numbers=NHWC)
    x, w, d = _data(stride, (3, 9, 9, 5), (3, 3, 5, 16), kwargs, dtype)
    (ref_x, ref_w), keep = _reference_grads(kwargs, policy, x, w, d)
    g_x, g_w = _emp_grads(policy, kwargs, x, w, d)
    assert g_x.dtype == dtype and g_w.dtype == dtype
    assert 0 < keep.sum() < keep.size  # something really was pruned
    np.testing.assert_array_equal(np.asarray(g_w)[..., ~keep], 0.0)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == jnp.float32 else dict(rtol=2e-2, atol=1e-1)
    chex.assert_trees_all_close((g_x, g_w), (ref_x, ref_w), **tol)


@pytest.mark.parametrize("policy", [emp.TopK(0.5), emp.Threshold(1.0)])
def test_large_error_maps_get_their_own_buffer_and_the_same_gradients(policy, monkeypatch):
    """A large error map passes own_buffer's conditional before scoring; values stay."""
    kwargs = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC)
    x, w, d = _data(0, (3, 9, 9, 5), (3, 3, 5, 16), kwargs)  # d: 3 * 9 * 9 * 16 = 3888
    (ref_x, ref_w), _ = _reference_grads(kwargs, policy, x, w, d)

    def compiled_text():  # A new function each time: traced afresh.
        backward = _backward(emp.conv_general_dilated(policy, xla_cpu=True), kwargs)
        return compile_as_shipped(jax.jit(backward), x, w, d).as_text()

    assert "conditional(" not in compiled_text() or isinstance(policy, emp.Threshold)
    # Above the input's size (1215), at the error map's: only the error map gets one.
    monkeypatch.setattr(own_buffer, "MIN_ELEMENTS", d.size)
    text = compiled_text()
    # TopK has no other conditional; Threshold's bucket switch is one more.
    assert text.count("conditional(") == (1 if isinstance(policy, emp.TopK) else 2)
    chex.assert_trees_all_close(
        _emp_grads(policy, kwargs, x, w, d, xla_cpu=True), (ref_x, ref_w), rtol=1e-5, atol=1e-4
    )


def _must_not_run(*args, **kwargs):
    raise AssertionError("an XLA:CPU lowering ran with the backend switch off")


@pytest.mark.parametrize(
    "policy", [emp.TopK(0.5), emp.Threshold(1.0), emp.Threshold(0.8, gamma1=0.5, buckets=4)]
)
def test_backend_switch_off_is_lax_vjp_on_the_kept_channels(policy, monkeypatch):
    """Both states of the switch give the masked dense reference; off uses none of
    backends.xla_cpu (no GEMM error propagation, own buffer or folded sum)."""
    kwargs = dict(window_strides=(2, 2), padding="SAME", dimension_numbers=NHWC)
    x, w, d = _data(2, (3, 9, 9, 5), (3, 3, 5, 16), kwargs)
    spec = conv_backward.ConvSpec.create(x.shape, w.shape, (2, 2), "SAME", dimension_numbers=NHWC)
    assert conv_backward.uses_gemm(spec, x.shape, w.shape)  # On, Eq. 8 is the GEMM.
    (ref_x, ref_w), keep = _reference_grads(kwargs, policy, x, w, d)
    assert 0 < keep.sum() < keep.size
    monkeypatch.setattr(own_buffer, "MIN_ELEMENTS", 1)  # On: own buffers for all.
    on = _emp_grads(policy, kwargs, x, w, d, xla_cpu=True)
    for module, name in [
        (conv_backward, "conv_vjp"),
        (conv_backward, "error_propagation"),
        (own_buffer, "own_buffer"),
        (channel_fold, "channel_sum"),
    ]:
        monkeypatch.setattr(module, name, _must_not_run)
    off = _emp_grads(policy, kwargs, x, w, d, xla_cpu=False)
    chex.assert_trees_all_close(off, (ref_x, ref_w), rtol=1e-5, atol=1e-4)
    chex.assert_trees_all_close(on, off, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "dimension_numbers, lhs_shape, rhs_shape, extra, policy",
    [
        (("NCHW", "OIHW", "NCHW"), (2, 4, 8, 8), (12, 4, 3, 3), {}, emp.TopK(0.3)),
        (
            ("NCHW", "HWIO", "NHWC"),
            (2, 4, 8, 8),
            (3, 3, 4, 12),
            {"rhs_dilation": (2, 1)},
            emp.Threshold(1.1, buckets=4),
        ),
        (
            ("NCH", "OIH", "NCH"),
            (2, 3, 11),
            (12, 3, 3),
            {"lhs_dilation": (2,), "padding": ((2, 1),)},
            emp.Threshold(0.9, buckets=3),
        ),
        (None, (2, 4, 6, 6), (12, 4, 2, 2), {}, emp.TopK(0.6, gamma1=1.0)),
    ],
    ids=["NCHW-OIHW", "mixed-layout-dilated", "1d-lhs-dilated", "lax-default"],
)
def test_other_layouts(dimension_numbers, lhs_shape, rhs_shape, extra, policy):
    """Any layout lax accepts: the axes come from lax.conv_dimension_numbers."""
    kwargs = dict(
        window_strides=(1,) * (len(lhs_shape) - 2),
        padding="SAME",
        dimension_numbers=dimension_numbers,
    )
    kwargs.update(extra)
    x, w, d = _data(3, lhs_shape, rhs_shape, kwargs)
    dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    axes = dict(out_axis=dn.out_spec[1], rhs_axis=dn.rhs_spec[0])
    (ref_x, ref_w), keep = _reference_grads(kwargs, policy, x, w, d, **axes)
    g_x, g_w = _emp_grads(policy, kwargs, x, w, d)
    assert 0 < keep.sum() < keep.size
    chex.assert_trees_all_close((g_x, g_w), (ref_x, ref_w), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threshold, kept", [(0.15, 15), (0.5, 12), (1.0, 8), (1.5, 3), (5.0, 0)])
def test_threshold_every_bucket(threshold, kept):
    """n = 16 in buckets of 4: kept counts in every bucket (4, 8, 12, 16) and none."""
    kwargs = dict(window_strides=(1, 1), padding="VALID", dimension_numbers=NHWC)
    x, w, d = _data(7, (2, 6, 6, 3), (3, 3, 3, 16), kwargs)
    policy = emp.Threshold(threshold, buckets=4)
    (ref_x, ref_w), keep = _reference_grads(kwargs, policy, x, w, d)
    g_x, g_w = _emp_grads(policy, kwargs, x, w, d)
    assert keep.sum() == kept
    chex.assert_trees_all_close((g_x, g_w), (ref_x, ref_w), rtol=1e-5, atol=1e-4)
    if kept == 0:
        chex.assert_trees_all_equal((g_x, g_w), (jnp.zeros_like(x), jnp.zeros_like(w)))


def test_bfloat16_with_float32_output():
    """preferred_element_type=float32: f32 output error, bf16 cotangents like jax.grad."""
    kwargs = dict(
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=NHWC,
        preferred_element_type=jnp.float32,
    )
    x, w, d = _data(5, (2, 6, 6, 3), (3, 3, 3, 8), kwargs, jnp.bfloat16)
    d = d.astype(jnp.float32)
    policy = emp.TopK(0.5)
    (ref_x, ref_w), _ = _reference_grads(kwargs, policy, x, w, d)
    g_x, g_w = _emp_grads(policy, kwargs, x, w, d)
    assert g_x.dtype == ref_x.dtype == jnp.bfloat16 and g_w.dtype == jnp.bfloat16
    chex.assert_trees_all_close((g_x, g_w), (ref_x, ref_w), rtol=2e-2, atol=1e-1)


def _quarter_round(d):
    return jnp.round(d * 4.0) / 4.0


def test_error_transform_applies_before_scoring_and_backward():
    kwargs = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC)
    x, w, d = _data(11, (2, 6, 6, 3), (3, 3, 3, 8), kwargs)
    policy = emp.TopK(0.5)
    (ref_x, ref_w), _ = _reference_grads(kwargs, policy, x, w, _quarter_round(d))
    g = _emp_grads(policy, kwargs, x, w, d, error_transform=_quarter_round)
    chex.assert_trees_all_close(g, (ref_x, ref_w), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="keep delta's shape"):
        _emp_grads(policy, kwargs, x, w, d, error_transform=lambda d: d[:1])


def test_flax_conv_param_grads():
    """emp plugs into flax.linen.Conv; kernel grads pruned, bias grad dense."""
    policy = emp.TopK(0.5, gamma1=0.2)
    layer = nn.Conv(
        16, (3, 3), strides=2, padding="SAME", conv_general_dilated=emp.conv_general_dilated(policy)
    )
    dense = nn.Conv(16, (3, 3), strides=2, padding="SAME")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 10, 10, 4)), jnp.float32)
    params = numpy_variables(layer, x, seed=1)
    y = layer.apply(params, x)
    chex.assert_trees_all_equal(y, dense.apply(params, x))
    r = np.random.default_rng(2).standard_normal(y.shape) * np.linspace(0.2, 3, 16)
    r = jnp.asarray(r, jnp.float32)

    @jax.jit
    def grads(params, x):
        return jax.grad(lambda p, x: jnp.sum(layer.apply(p, x) * r), argnums=(0, 1))(params, x)

    g_params, g_x = grads(params, x)
    kwargs = dict(window_strides=(2, 2), padding="SAME", dimension_numbers=NHWC)
    kernel = params["params"]["kernel"]
    (ref_x, ref_w), _ = _reference_grads(kwargs, policy, x, kernel, r)
    chex.assert_trees_all_close(g_params["params"]["kernel"], ref_w, rtol=1e-5, atol=1e-4)
    chex.assert_trees_all_close(g_params["params"]["bias"], r.sum((0, 1, 2)), rtol=1e-5)
    chex.assert_trees_all_close(g_x, ref_x, rtol=1e-5, atol=1e-4)


def test_no_recompilation_and_hashable():
    a, b = emp.conv_general_dilated(emp.TopK(0.5)), emp.conv_general_dilated(emp.TopK(0.5))
    assert a == b and hash(a) == hash(b)
    kwargs = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC)
    grad = jax.jit(jax.grad(lambda w, x: jnp.sum(a(x, w, **kwargs) ** 2)))
    x, w, _ = _data(0, (1, 5, 5, 2), (3, 3, 2, 4), kwargs)
    grad(w, x)
    grad(w + 1.0, x * 2.0)
    assert grad._cache_size() == 1


def test_grouped_convolution_rejected():
    conv = emp.conv_general_dilated(emp.TopK(0.5))
    x, w = jnp.ones((1, 4, 4, 4)), jnp.ones((3, 3, 2, 4))
    with pytest.raises(NotImplementedError, match="feature_group_count=2"):
        conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=2)


# ----------------------------------------------------------------------------------------
# Real savings, measured by XLA's cost analysis.
# ----------------------------------------------------------------------------------------

COST_KWARGS = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC)
COST_SHAPES = ((8, 16, 16, 16), (3, 3, 16, 32))


@pytest.mark.parametrize("keep_ratio", [0.5, 0.25])
def test_topk_backward_flops_scale_with_keep_ratio(keep_ratio):
    """Backward flops / dense backward flops is keep_ratio plus the selection overhead.

    Tolerance 0.02: besides the two k-channel convolutions the pruned backward does the
    channel scoring (|delta| and a sum: ~2 flops per element of delta, against
    2 * 2 * 3 * 3 * 16 flops per element for the dense backward, i.e. ~0.35%) and a small
    top-k; gathers and the scatter move data without arithmetic.
    """
    x, w, d = _data(0, *COST_SHAPES, COST_KWARGS)
    dense = _flops(_backward(lax.conv_general_dilated, COST_KWARGS), x, w, d)
    conv = emp.conv_general_dilated(emp.TopK(keep_ratio))
    ratio = _flops(_backward(conv, COST_KWARGS), x, w, d) / dense
    assert keep_ratio <= ratio < keep_ratio + 0.02, ratio


def test_threshold_bucket_branch_flops():
    """Each static bucket branch of Threshold costs about bucket / n of the dense backward.

    XLA's cost analysis reports a ``lax.switch`` as its most expensive branch (here the
    full bucket), so the whole backward cannot show the saving; each branch is therefore
    compiled on its own, exactly as the switch calls it.
    """
    x, w, d = _data(0, *COST_SHAPES, COST_KWARGS)
    dense = _flops(_backward(lax.conv_general_dilated, COST_KWARGS), x, w, d)
    policy = emp.Threshold(1.0)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    cfg = emp._ConvConfig(
        policy=policy,
        error_transform=None,
        xla_cpu=True,
        spec=conv_backward.ConvSpec.create(x.shape, w.shape, (1, 1), "SAME", None, None, dn),
    )
    n = w.shape[-1]
    sizes = policy.bucket_sizes(n)
    assert sizes == (4, 8, 12, 16, 20, 24, 28, 32)
    for k in sizes[:-1]:

        def branch(x, w, d, k=k):
            scores = emp.channel_scores(w, d, dimension_numbers=NHWC)
            keep = scores >= jnp.mean(scores)
            order = lax.top_k(scores, n)[1]
            return emp._gathered_vjp(cfg, x, w, d, order[:k], keep)

        ratio = _flops(branch, x, w, d) / dense
        assert k / n <= ratio < k / n + 0.02, (k, ratio)
    whole = _flops(_backward(emp.conv_general_dilated(policy), COST_KWARGS), x, w, d) / dense
    assert 1.0 <= whole < 1.02  # reported as the full-bucket branch


def test_first_layer_input_error_is_dead_code():
    """Gradients w.r.t. the kernel only: XLA drops the custom backward's Eq. 8 conv.

    Flops in units of one forward conv. For Threshold XLA reports the switch as its full
    branch (keep 1.0), which shows the dead code is removed inside the branches too.
    """
    x, w, _ = _data(0, *COST_SHAPES, COST_KWARGS)
    units = _flops(lambda x, w: lax.conv_general_dilated(x, w, **COST_KWARGS), x, w)
    for policy, keep in [(emp.TopK(0.5), 0.5), (emp.TopK(0.25), 0.25), (emp.Threshold(1.0), 1)]:
        conv = emp.conv_general_dilated(policy)

        def loss(x, w, conv=conv):
            return jnp.sum(conv(x, w, **COST_KWARGS) ** 2)

        both = _flops(jax.grad(loss, argnums=(0, 1)), x, w) / units
        kernel_only = _flops(jax.grad(loss, argnums=1), x, w) / units
        # forward (1) + Eq. 8 (keep) + Eq. 12 (keep), versus forward + Eq. 12 only.
        assert 1 + 2 * keep <= both < 1 + 2 * keep + 0.03, both
        assert 1 + keep <= kernel_only < 1 + keep + 0.03, kernel_only


def test_selection_overhead_below_one_percent_resnet20_layer():
    """ResNet-20 stage-1 conv, batch 128: 32x32x16 -> 16, 3x3 (paper: 0.53% for R-110)."""
    out_shape, kernel_shape = (128, 32, 32, 16), (3, 3, 16, 16)
    counted = emp.selection_macs(out_shape, kernel_shape, dimension_numbers=NHWC)
    backward = emp.backward_macs(out_shape, kernel_shape, dimension_numbers=NHWC)
    assert backward == 2 * 128 * 32 * 32 * 16 * 3 * 3 * 16
    assert counted / backward < 0.01
    # Measured: XLA's flops for the selection against those of the dense backward.
    x = jax.ShapeDtypeStruct(out_shape, jnp.float32)
    w = jax.ShapeDtypeStruct(kernel_shape, jnp.float32)
    dense = _flops(_backward(lax.conv_general_dilated, COST_KWARGS), x, w, x)
    policy = emp.TopK(0.5, gamma1=1.0)
    measured = _flops(lambda w, d: emp.select_channels(policy, w, d, dimension_numbers=NHWC), w, x)
    assert measured / dense < 0.01
    assert (
        emp.backward_macs(out_shape, kernel_shape, dimension_numbers=NHWC, kept_channels=8)
        == backward // 2
    )


def test_accounting_catches_layout_mismatch():
    with pytest.raises(ValueError, match="check dimension_numbers"):
        emp.selection_macs((128, 32, 32, 16), (3, 3, 16, 16))  # NHWC read as NCHW


# ----------------------------------------------------------------------------------------
# The pure selection helper (hypothesis).
# ----------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(keep_ratio=st.floats(0.0, 1.0, exclude_min=True), n=st.integers(1, 4096))
def test_num_kept_is_ceil(keep_ratio, n):
    k = emp.TopK(keep_ratio).num_kept(n)
    exact = Fraction(keep_ratio) * n
    assert 1 <= k <= n
    assert k == max(1, math.ceil(exact))
    assert k - 1 < exact <= k or k == 1


_gammas = st.sampled_from([(0.0, 1.0), (1.0, 0.0), (0.5, 2.0), (1.0, 1.0)])


@st.composite
def _kernel_and_delta(draw):
    """Integer-valued data, so float32 scores are exact and comparable to NumPy's."""
    n = draw(st.integers(1, 12))
    batch, size = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kernel = rng.integers(-3, 4, (2, 2, 3, n)).astype(np.float32)
    delta = rng.integers(-4, 5, (batch, size, size, n)).astype(np.float32)
    return kernel, delta


_select = jax.jit(functools.partial(emp.select_channels, dimension_numbers=NHWC), static_argnums=0)


@settings(max_examples=30, deadline=None)
@given(data=_kernel_and_delta(), keep_ratio=st.floats(0.01, 1.0), gammas=_gammas)
def test_topk_selection_property(data, keep_ratio, gammas):
    kernel, delta = data
    policy = emp.TopK(keep_ratio, *gammas)
    keep = np.asarray(_select(policy, kernel, delta))
    scores = _np_scores(kernel, delta, *gammas)
    n = scores.size
    assert keep.sum() == max(1, math.ceil(Fraction(keep_ratio) * n))
    if not keep.all():
        assert scores[keep].min() >= scores[~keep].max()


@functools.partial(jax.jit, static_argnums=0)
def _select_and_scores(policy, kernel, delta):
    """The kept channels and the scores S_j they were chosen by: one compilation."""
    scores = emp.channel_scores(
        kernel, delta, gamma1=policy.gamma1, gamma2=policy.gamma2, dimension_numbers=NHWC
    )
    return emp.select_channels(policy, kernel, delta, dimension_numbers=NHWC), scores


@settings(max_examples=30, deadline=None)
@given(data=_kernel_and_delta(), threshold=st.floats(0.0, 3.0), gammas=_gammas)
def test_threshold_selection_property(data, threshold, gammas):
    kernel, delta = data
    policy = emp.Threshold(threshold, *gammas)
    keep, scores = map(np.asarray, _select_and_scores(policy, kernel, delta))
    np.testing.assert_array_equal(scores, _np_scores(kernel, delta, *gammas))  # exact
    cut = np.float32(threshold) * scores.mean(dtype=np.float32)
    np.testing.assert_array_equal(keep, scores >= cut)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 1024), buckets=st.integers(1, 16))
def test_bucket_sizes(n, buckets):
    sizes = emp.Threshold(1.0, buckets=buckets).bucket_sizes(n)
    step = math.ceil(n / buckets)
    assert sizes[-1] == n and len(sizes) <= buckets
    assert list(sizes) == sorted(set(sizes))
    assert all(s % step == 0 for s in sizes[:-1])


# ----------------------------------------------------------------------------------------
# Policy validation.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: emp.TopK(0.0), r"^keep_ratio=0.0 must lie in \(0, 1\]$"),
        (lambda: emp.TopK(1.5), r"^keep_ratio=1.5 must lie in \(0, 1\]$"),
        (lambda: emp.TopK(float("nan")), r"^keep_ratio=nan must lie in \(0, 1\]$"),
        (lambda: emp.TopK(0.5, gamma1=-1.0), r"^gamma1=-1.0 must be a finite number >= 0$"),
        (lambda: emp.TopK(0.5, 0.0, 0.0), "^gamma1=0.0 and gamma2=0.0 must not both be 0"),
        (lambda: emp.Threshold(-0.1), r"^threshold=-0.1 must be a finite number >= 0$"),
        (lambda: emp.Threshold(float("inf")), "^threshold=inf must be a finite number"),
        (lambda: emp.Threshold(1.0, gamma2=-2.0), "^gamma2=-2.0 must be a finite number >= 0"),
        (lambda: emp.Threshold(1.0, 0.0, 0.0), "must not both be 0"),
        (lambda: emp.Threshold(1.0, buckets=0), "^buckets=0 must be an integer >= 1$"),
    ],
)
def test_policy_validation(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_policy_type_checked():
    with pytest.raises(TypeError, match="TopK or Threshold"):
        emp.conv_general_dilated(0.5)
