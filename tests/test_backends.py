"""Tests of edgefilter.backends: the switch, and each XLA:CPU lowering against flax or lax.

Each lowering is compared with the flax or lax computation it replaces (values and
gradients); the switch with the models, batch norm's ``axis_name`` and forward-mode
autodiff are tested in both of its states. The model zoo's on/off equivalence is in
tests/test_models.py (its sweep), EMP's in tests/test_emp.py.
"""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgefilter import backends, models
from edgefilter.backends.xla_cpu import compile as compile_lib
from edgefilter.backends.xla_cpu import conv_backward, own_buffer
from edgefilter.backends.xla_cpu import layers as xla_cpu_layers
from edgefilter.backends.xla_cpu.forward_mode import ForwardModeError
from edgefilter.models.layers import Ops
from edgefilter.training import config as config_lib
from edgefilter.training import steps as train_lib
from tests.conftest import numpy_variables

DN = ("NHWC", "HWIO", "NHWC")


def _normal(seed, shape):
    """Test data from NumPy: eager jax.random compiles threefry for every new shape."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# ----------------------------------------------------------------------------------------
# The switch.
# ----------------------------------------------------------------------------------------


def test_default_follows_the_backend_and_explicit_settings_win(monkeypatch):
    assert backends.use_xla_cpu(True) is True and backends.use_xla_cpu(False) is False
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert backends.use_xla_cpu() is False and backends.use_xla_cpu(True) is True
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert backends.use_xla_cpu() is True and backends.use_xla_cpu(False) is False
    with pytest.raises(ValueError, match="xla_cpu='yes' must be True, False or None"):
        backends.use_xla_cpu("yes")


def test_resolved_config_records_the_switch():
    assert config_lib.resolve(config_lib.TrainConfig()).xla_cpu is backends.use_xla_cpu()
    assert config_lib.resolve(config_lib.TrainConfig(xla_cpu=False)).xla_cpu is False


def test_jit_adds_compile_options_only_when_on(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    compile_lib.compiler_options("cpu", fusion_emitters=False)  # Its checks compile: cached.
    seen = []
    real_jit = jax.jit

    def spy(fun, **kwargs):
        seen.append(kwargs.get("compiler_options"))
        return real_jit(fun, **kwargs)

    monkeypatch.setattr(jax, "jit", spy)
    double = backends.jit(lambda x: 2 * x, xla_cpu=False, donate_argnums=0)
    assert double(jnp.ones(2)).tolist() == [2.0, 2.0]
    backends.jit(lambda x: x, xla_cpu=False, compiler_options={"xla_cpu_enable_fast_math": False})
    backends.jit(lambda x: x, xla_cpu=True, fusion_emitters=False)
    assert seen[0] is None
    assert seen[1] == {"xla_cpu_enable_fast_math": False}
    if jax.default_backend() == "cpu":  # Other backends get no XLA:CPU options.
        assert seen[2] == {
            "xla_cpu_experimental_ynn_fusion_type": "",
            "xla_cpu_use_fusion_emitters": False,
        }


@pytest.mark.parametrize("xla_cpu", [False, True])
def test_build_model_uses_the_lowerings_only_when_on(xla_cpu):
    """Off: no custom_vjp anywhere in LeNet's gradient (flax's pooling, lax's convs)."""
    model = train_lib.build_model("lenet", 10, xla_cpu=xla_cpu)
    assert model.ops.xla_cpu is xla_cpu
    first = xla_cpu_layers.small_kernel_conv if xla_cpu else jax.lax.conv_general_dilated
    assert model.ops.first_conv_general_dilated is first
    x = jnp.zeros((2, 28, 28, 1))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: model.apply({"params": p}, x).sum()))(params))
    assert ("custom_vjp" in jaxpr) == xla_cpu


# ----------------------------------------------------------------------------------------
# Forward-mode autodiff: off works (tests/test_models.py), on names the switch.
# ----------------------------------------------------------------------------------------


def _small_kernel_conv(x):
    return xla_cpu_layers.small_kernel_conv(
        x, jnp.ones((3, 3, 2, 2)), (1, 1), "VALID", None, None, DN
    )


def _gemm_conv(x):
    return conv_backward.conv_general_dilated(
        x, jnp.ones((3, 3, 2, 2)), (2, 2), "SAME", None, None, DN
    )


@pytest.mark.parametrize(
    "lowering, name",
    [
        (xla_cpu_layers.max_pool_2x2, "max_pool_2x2"),
        (_small_kernel_conv, "small_kernel_conv"),
        (_gemm_conv, "conv_backward.conv_general_dilated"),
        (functools.partial(own_buffer.own_buffer, min_elements=1), "own_buffer"),
    ],
    ids=["max_pool_2x2", "small_kernel_conv", "gemm_conv", "own_buffer"],
)
def test_jvp_through_a_lowering_raises_an_error_naming_the_switch(lowering, name):
    x = jnp.ones((1, 6, 6, 2))
    with pytest.raises(ForwardModeError, match=f"{name} is an XLA:CPU lowering.*xla_cpu=False"):
        jax.jvp(lowering, (x,), (x,))


def test_forward_mode_through_a_model_with_the_switch_on():
    model = models.create("lenet", 10, xla_cpu=True)
    x = _normal(0, (2, 16, 16, 1))
    params = numpy_variables(model, x, seed=1)

    def f(x):
        return model.apply(params, x)

    with pytest.raises(ForwardModeError, match="--xla_cpu=false"):
        jax.jvp(f, (x,), (x,))
    # linearize itself succeeds (reverse mode is built on it); its linear map cannot run.
    _, linear = jax.linearize(f, x)
    with pytest.raises(TypeError, match="forward-mode autodiff"):
        linear(x)


# ----------------------------------------------------------------------------------------
# Batch norm: the folded lowering against flax's, and axis_name in both states.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 6, 6, 16), (3, 5, 7, 3), (4, 300)])
def test_folded_batch_norm_matches_flax_batch_norm(shape):
    """Outputs, running statistics and gradients of flax's BatchNorm (train and eval)."""
    x = 2.0 + 3.0 * _normal(0, shape)
    ours, flax_bn = Ops(xla_cpu=True).batch_norm(True), Ops(xla_cpu=False).batch_norm(True)
    assert isinstance(ours, xla_cpu_layers.BatchNorm) and isinstance(flax_bn, nn.BatchNorm)
    chex.assert_trees_all_equal_shapes_and_dtypes(
        jax.eval_shape(ours.init, jax.random.key(1), x),
        jax.eval_shape(flax_bn.init, jax.random.key(1), x),
    )
    variables = numpy_variables(flax_bn, x, seed=1)  # Running statistics of earlier batches.
    params = {"scale": jnp.linspace(0.5, 1.5, shape[-1]), "bias": jnp.linspace(-1, 1, shape[-1])}

    def loss(module, params, x):
        y, updates = module.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            mutable=["batch_stats"],
        )
        return jnp.sum(jnp.sin(y) * x), (y, updates)

    def value_and_grads(module):
        return jax.jit(jax.value_and_grad(functools.partial(loss, module), (0, 1), True))

    (_, (y, stats)), grads = value_and_grads(ours)(params, x)
    (_, (y_ref, stats_ref)), grads_ref = value_and_grads(flax_bn)(params, x)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    chex.assert_trees_all_close(stats, stats_ref, atol=1e-6)
    chex.assert_trees_all_close(grads, grads_ref, rtol=1e-4, atol=1e-4)
    evaluation = {"params": params, "batch_stats": stats["batch_stats"]}
    np.testing.assert_allclose(
        jax.jit(Ops(xla_cpu=True).batch_norm(False).apply)(evaluation, x),
        jax.jit(nn.BatchNorm(True, epsilon=1e-5).apply)(evaluation, x),
        atol=1e-5,
    )


def test_folded_batch_norm_sums_on_the_folded_view():
    """The compiled train step's per-channel sums reduce [rows / g, g * C], not [N, H, W, C]."""
    x = jnp.ones((8, 8, 8, 16))
    bn = Ops(xla_cpu=True).batch_norm(True)
    variables = bn.init(jax.random.key(0), x)

    def grads(params, x):
        def loss(params, x):
            y, _ = bn.apply({**variables, "params": params}, x, mutable=["batch_stats"])
            return jnp.sum(y * y)

        return jax.grad(loss, (0, 1))(params, x)

    text = jax.jit(grads).lower(variables["params"], x).as_text()
    assert "tensor<32x256xf32>" in text  # 512 rows of 16 channels, 16 to a folded row
    assert "dimensions = [0, 1, 2]" not in text  # no reduction over N, H, W


@pytest.mark.parametrize("xla_cpu", [False, True])
def test_batch_norm_axis_name_synchronises_statistics(xla_cpu):
    """Under vmap over 'device', each shard is normalised by the whole batch's statistics."""
    x = 1.0 + 2.0 * _normal(0, (3, 4, 5, 5, 8))  # 3 shards of 4
    local, synced = Ops(xla_cpu=xla_cpu), Ops(xla_cpu=xla_cpu, axis_name="device")
    variables = numpy_variables(local.batch_norm(True), x[0], seed=1)
    whole = x.reshape(12, 5, 5, 8)
    want, want_stats = jax.jit(
        lambda x: local.batch_norm(True).apply(variables, x, mutable=["batch_stats"])
    )(whole)

    def shard(x):
        return synced.batch_norm(True).apply(variables, x, mutable=["batch_stats"])

    got, got_stats = jax.jit(jax.vmap(shard, axis_name="device"))(x)
    np.testing.assert_allclose(got.reshape(whole.shape), want, rtol=1e-5, atol=1e-5)
    for i in range(3):  # Every shard holds the same, whole-batch running statistics.
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, i=i: a[i], got_stats), want_stats, rtol=1e-5, atol=1e-6
        )
    unsynced, _ = jax.jit(
        jax.vmap(lambda x: local.batch_norm(True).apply(variables, x, mutable=True))
    )(x)
    assert not np.allclose(unsynced.reshape(whole.shape), want, atol=1e-3)  # the test can fail


def test_models_pass_axis_name_to_batch_norm():
    model = models.create("resnet8", 3, xla_cpu=False, axis_name="device")
    x = _normal(0, (2, 2, 8, 8, 3))
    variables = numpy_variables(models.create("resnet8", 3), x[0], seed=1, train=False)

    def apply(model, x):
        return model.apply(variables, x, train=True, mutable=["batch_stats"])[0]

    got = jax.jit(jax.vmap(functools.partial(apply, model), axis_name="device"))(x)
    reference = functools.partial(apply, models.create("resnet8", 3, xla_cpu=False))
    want = jax.jit(reference)(x.reshape(4, 8, 8, 3))
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------
# 2x2 max pooling and the tap-sum conv against flax and lax.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 24, 24, 3), (3, 7, 9, 2)])
def test_max_pool_2x2_matches_flax_max_pool_and_its_gradient(shape):
    x = _normal(0, shape)  # Continuous: no ties.
    ops, flax_ops = Ops(xla_cpu=True), Ops(xla_cpu=False)

    def pooled_and_grad(pool):
        return jax.jit(lambda x: (pool(x), jax.grad(lambda x: jnp.sum(pool(x) ** 2))(x)))(x)

    pooled, grad = pooled_and_grad(ops.max_pool)
    chex.assert_trees_all_close(pooled, nn.max_pool(x, (2, 2), strides=(2, 2)))
    chex.assert_trees_all_close(grad, pooled_and_grad(flax_ops.max_pool)[1])


def test_max_pool_2x2_ties_and_jit_match_flax():
    """Ties (ReLU zeros, repeated values): the whole gradient goes where flax sends it."""
    x = jnp.array(
        [[1.0, 1.0, 0.0, 2.0, 5.0], [0.0, 1.0, 2.0, 2.0, 5.0], [3.0, 0.0, 0.0, 0.0, 1.0]]
    )[None, :, :, None] * jnp.array([1.0, -1.0])  # two channels: ties among maxima and zeros
    x = jax.nn.relu(x)
    g = jnp.array([[[[1.0, 2.0], [3.0, 4.0]]]])

    def pullback(pool):
        return jax.jit(lambda x: jax.vjp(pool, x)[1](g)[0])(x)

    reference = pullback(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)))
    np.testing.assert_array_equal(pullback(xla_cpu_layers.max_pool_2x2), reference)
    assert float(jnp.sum(reference)) == float(jnp.sum(g))  # not split between tied inputs


@pytest.mark.parametrize(
    "x_shape, w_shape, strides, padding",
    [
        ((4, 28, 28, 1), (3, 3, 1, 6), (1, 1), "VALID"),  # The MNIST filter's first conv.
        ((2, 9, 11, 2), (3, 3, 2, 4), (2, 1), "SAME"),
        ((2, 8, 8, 3), (1, 3, 3, 5), (1, 2), ((1, 2), (0, 1))),
        ((3, 28, 28, 1), (5, 5, 1, 20), (1, 1), "VALID"),  # LeNet's first conv.
    ],
)
def test_small_kernel_conv_matches_lax_and_its_gradients(x_shape, w_shape, strides, padding):
    x, w = _normal(0, x_shape), _normal(1, w_shape)

    def loss(conv):
        def f(x, w):
            y = conv(x, w, strides, padding, dimension_numbers=DN)
            return jnp.sum(jnp.sin(y)), y

        return f

    def value_and_grad(conv):
        return jax.jit(jax.value_and_grad(loss(conv), (0, 1), True))(x, w)

    (_, y_ref), g_ref = value_and_grad(jax.lax.conv_general_dilated)
    # Differentiated: the tap sum in a buffer of its own, lax's backward.
    (_, y), g = value_and_grad(xla_cpu_layers.small_kernel_conv)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(g, g_ref, rtol=1e-4, atol=1e-4)
    # Value only: the tap sum.
    y_value = jax.jit(loss(xla_cpu_layers.small_kernel_conv))(x, w)[1]
    np.testing.assert_allclose(y_value, y_ref, rtol=1e-5, atol=1e-5)


def test_small_kernel_conv_leaves_larger_kernels_to_lax():
    lowered = jax.jit(
        lambda x, w: xla_cpu_layers.small_kernel_conv(x, w, (1, 1), "VALID", dimension_numbers=DN)
    ).lower
    gray, rgb = jnp.ones((1, 12, 12, 1)), jnp.ones((1, 12, 12, 3))
    # Tap sums: at most SMALL_KERNEL_WEIGHTS weights, or one input channel and at most
    # SINGLE_CHANNEL_MAX_TAPS taps.
    for x, w_shape in [(gray, (3, 3, 1, 6)), (gray, (5, 5, 1, 20)), (rgb, (3, 3, 3, 2))]:
        text = lowered(x, jnp.ones(w_shape)).as_text()
        assert "convolution" not in text and "dot_general" in text, w_shape
    # lax: 81 weights on three channels; 36 taps on one.
    for x, w_shape in [(rgb, (3, 3, 3, 3)), (gray, (6, 6, 1, 2))]:
        assert "convolution" in lowered(x, jnp.ones(w_shape)).as_text(), w_shape
