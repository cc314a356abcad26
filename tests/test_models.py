"""Tests of edgefilter.models: architectures, parameter counts and pluggable primitives."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgefilter import models
from edgefilter.backends.xla_cpu import layers


def _shapes(name, image_shape, num_classes=10, **options):
    model = models.create(name, num_classes, **options)
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((2, *image_shape)), train=False)
    )


def _num_params(variables):
    return sum(x.size for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize(
    "name, image_shape, num_classes, expected",
    [
        # Literature: LeNet of PyTorch's MNIST example 431,080; He et al. (2016) ResNet-20
        # 0.27M, ResNet-110 1.7M (option-A shortcuts); torchvision resnet18 11,689,512.
        ("lenet", (28, 28, 1), 10, 431_080),
        ("resnet20", (32, 32, 3), 10, 269_722),
        ("resnet110", (32, 32, 3), 10, 1_727_962),
        ("resnet18", (224, 224, 3), 1000, 11_689_512),
    ],
)
def test_parameter_counts_match_the_literature(name, image_shape, num_classes, expected):
    assert _num_params(_shapes(name, image_shape, num_classes)) == expected


def test_cifar_resnet_counts_grow_with_depth_as_6n_plus_2():
    counts = [_num_params(_shapes(f"resnet{d}", (32, 32, 3))) for d in (8, 20, 32, 44, 56, 74)]
    assert counts == sorted(counts)
    # Each extra block per stage adds one block of each width: 2 convs 3x3 + 2 BNs.
    per_n = sum(2 * (9 * c * c + 2 * c) for c in (16, 32, 64))
    assert counts[2] - counts[1] == 2 * per_n


def test_lenet_layers_are_the_papers():
    params = _shapes("lenet", (28, 28, 1))["params"]
    kernels = [params[k]["kernel"].shape for k in ("Conv_0", "Conv_1", "Dense_0", "Dense_1")]
    assert kernels == [(5, 5, 1, 20), (5, 5, 20, 50), (800, 500), (500, 10)]


def test_lenet_slim_is_the_mnist_filter():
    params = _shapes("lenet_slim", (28, 28, 1), 2)["params"]
    assert params["Conv_0"]["kernel"].shape == (3, 3, 1, 6)
    assert params["Conv_1"]["kernel"].shape == (3, 3, 6, 16)
    assert params["Dense_1"]["kernel"].shape == (120, 2)


def test_vgg_heads():
    cifar = _shapes("vgg16", (32, 32, 3))
    imagenet = _shapes("vgg16", (224, 224, 3), 1000, head="imagenet")
    # Conv layers carry no bias (batch norm follows), hence 4,224 fewer parameters than
    # torchvision's vgg16_bn (138,365,992).
    assert _num_params(imagenet) == 138_365_992 - 4_224
    assert _num_params(cifar) == 14_724_042
    assert "batch_stats" in cifar


@pytest.mark.parametrize(
    "name, image_shape",
    [
        ("lenet", (28, 28, 1)),
        ("lenet_slim", (28, 28, 1)),
        ("resnet8", (32, 32, 3)),
        ("resnet20", (32, 32, 3)),
        ("vgg11", (32, 32, 3)),
        ("resnet10", (224, 224, 3)),
    ],
)
def test_forward_shapes_in_train_and_eval_mode(name, image_shape):
    model = models.create(name, 7)
    x = jnp.zeros((3, *image_shape))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    chex.assert_shape(logits, (3, 7))
    logits, updates = jax.eval_shape(
        lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables
    )
    chex.assert_shape(logits, (3, 7))
    assert ("batch_stats" in updates) == models.has_batch_norm(name)


@pytest.mark.parametrize(
    "name, image_shape, convs, denses",
    [
        ("lenet", (28, 28, 1), 2, 2),
        ("resnet8", (32, 32, 3), 7, 1),
        ("resnet18", (64, 64, 3), 20, 1),
        ("vgg11", (32, 32, 3), 8, 1),
    ],
)
def test_every_conv_and_dense_layer_uses_the_callers_primitives(name, image_shape, convs, denses):
    calls = {"conv": 0, "dot": 0}

    def conv(*args, **kwargs):
        calls["conv"] += 1
        return jax.lax.conv_general_dilated(*args, **kwargs)

    def dot(*args, **kwargs):
        calls["dot"] += 1
        return jax.lax.dot_general(*args, **kwargs)

    model = models.create(name, 10, conv_general_dilated=conv, dot_general=dot)
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False))
    assert calls == {"conv": convs, "dot": denses}


@pytest.mark.parametrize(
    "name, image_shape, first_shape",
    [
        ("lenet", (28, 28, 1), (5, 5, 1, 20)),
        ("resnet8", (32, 32, 3), (3, 3, 3, 16)),
        ("resnet18", (64, 64, 3), (7, 7, 3, 64)),
        ("vgg11", (32, 32, 3), (3, 3, 3, 64)),
    ],
)
def test_the_first_conv_alone_uses_first_conv_general_dilated(name, image_shape, first_shape):
    kernels = {"first": [], "rest": []}

    def spy(kind):
        def conv(lhs, rhs, *args, **kwargs):
            kernels[kind].append(rhs.shape)
            return jax.lax.conv_general_dilated(lhs, rhs, *args, **kwargs)

        return conv

    model = models.create(
        name, 10, conv_general_dilated=spy("rest"), first_conv_general_dilated=spy("first")
    )
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False))
    assert kernels["first"] == [first_shape]
    assert first_shape not in kernels["rest"] and kernels["rest"]


def test_lenet_forward_matches_a_hand_written_forward():
    model = models.create("lenet", 10)
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    v = model.init(jax.random.key(0), x)
    p = v["params"]

    def conv(x, layer):
        y = jax.lax.conv_general_dilated(
            x, p[layer]["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        y = jax.nn.relu(y + p[layer]["bias"])
        return jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    h = conv(conv(x, "Conv_0"), "Conv_1").reshape(2, -1)
    h = jax.nn.relu(h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    expected = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    chex.assert_trees_all_close(model.apply(v, x), expected, atol=1e-5)


def test_unknown_model_and_bad_num_classes_are_rejected():
    with pytest.raises(ValueError, match="unknown model 'resnet9'.*lenet"):
        models.create("resnet9", 10)
    with pytest.raises(ValueError, match="num_classes"):
        models.create("lenet", 0)


@pytest.mark.parametrize("shape", [(2, 24, 24, 3), (3, 7, 9, 2)])
def test_max_pool_2x2_matches_flax_max_pool_and_its_gradient(shape):
    from edgefilter.models.layers import max_pool_2x2

    x = jax.random.normal(jax.random.key(0), shape)  # Continuous: no ties.
    reference = lambda x: jax.numpy.sum(nn.max_pool(x, (2, 2), strides=(2, 2)) ** 2)  # noqa: E731
    ours = lambda x: jax.numpy.sum(max_pool_2x2(x) ** 2)  # noqa: E731
    chex.assert_trees_all_close(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))
    chex.assert_trees_all_close(jax.grad(ours)(x), jax.grad(reference)(x))


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
    np.testing.assert_array_equal(pullback(layers.max_pool_2x2), reference)
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
    x = jax.random.normal(jax.random.key(0), x_shape)
    w = jax.random.normal(jax.random.key(1), w_shape)
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(conv):
        def f(x, w):
            y = conv(x, w, strides, padding, dimension_numbers=dn)
            return jnp.sum(jnp.sin(y)), y

        return f

    (_, y_ref), g_ref = jax.value_and_grad(loss(jax.lax.conv_general_dilated), (0, 1), True)(x, w)
    # Differentiated: the tap sum in a buffer of its own, lax's backward.
    (_, y), g = jax.value_and_grad(loss(layers.small_kernel_conv), (0, 1), True)(x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(g, g_ref, rtol=1e-4, atol=1e-4)
    # Value only: the tap sum.
    y_value = jax.jit(loss(layers.small_kernel_conv))(x, w)[1]
    np.testing.assert_allclose(y_value, y_ref, rtol=1e-5, atol=1e-5)


def test_small_kernel_conv_leaves_larger_kernels_to_lax():
    dn = ("NHWC", "HWIO", "NHWC")
    lowered = jax.jit(
        lambda x, w: layers.small_kernel_conv(x, w, (1, 1), "VALID", dimension_numbers=dn)
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


@pytest.mark.parametrize("shape", [(8, 6, 6, 16), (3, 5, 7, 3), (4, 300)])
def test_batch_norm_matches_flax_batch_norm(shape):
    """Outputs, running statistics and gradients of flax's BatchNorm (train and eval)."""
    x = 2.0 + 3.0 * jax.random.normal(jax.random.key(0), shape)
    ours, flax_bn = layers.batch_norm(True), nn.BatchNorm(False, momentum=0.9, epsilon=1e-5)
    variables = flax_bn.init(jax.random.key(1), x)
    chex.assert_trees_all_equal_shapes_and_dtypes(ours.init(jax.random.key(1), x), variables)
    params = {"scale": jnp.linspace(0.5, 1.5, shape[-1]), "bias": jnp.linspace(-1, 1, shape[-1])}
    variables = {"params": params, "batch_stats": variables["batch_stats"]}

    def loss(module, params, x):
        y, updates = module.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            mutable=["batch_stats"],
        )
        return jnp.sum(jnp.sin(y) * x), (y, updates)

    (_, (y, stats)), grads = jax.value_and_grad(functools.partial(loss, ours), (0, 1), True)(
        params, x
    )
    (_, (y_ref, stats_ref)), grads_ref = jax.value_and_grad(
        functools.partial(loss, flax_bn), (0, 1), True
    )(params, x)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    chex.assert_trees_all_close(stats, stats_ref, atol=1e-6)
    chex.assert_trees_all_close(grads, grads_ref, rtol=1e-4, atol=1e-4)
    evaluation = {"params": params, "batch_stats": stats["batch_stats"]}
    np.testing.assert_allclose(
        layers.batch_norm(False).apply(evaluation, x),
        nn.BatchNorm(True, epsilon=1e-5).apply(evaluation, x),
        atol=1e-5,
    )


def test_batch_norm_sums_on_the_folded_view():
    """The compiled train step's per-channel sums reduce [rows / g, g * C], not [N, H, W, C]."""
    x = jnp.ones((8, 8, 8, 16))
    bn = layers.batch_norm(True)
    variables = bn.init(jax.random.key(0), x)

    def grads(params, x):
        def loss(params, x):
            y, _ = bn.apply({**variables, "params": params}, x, mutable=["batch_stats"])
            return jnp.sum(y * y)

        return jax.grad(loss, (0, 1))(params, x)

    text = jax.jit(grads).lower(variables["params"], x).as_text()
    assert "tensor<32x256xf32>" in text  # 512 rows of 16 channels, 16 to a folded row
    assert "dimensions = [0, 1, 2]" not in text  # no reduction over N, H, W
