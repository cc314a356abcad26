"""Tests of edgefilter.models: architectures, parameter counts, pluggable primitives, and
one sweep over the whole zoo (both states of the backend switch, forward-mode autodiff,
error map pruning in every conv layer, the analytic MAC counts)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgefilter import models
from edgefilter.method import emp, flops
from tests.conftest import numpy_variables


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
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 28, 28, 1)), jnp.float32)
    v = numpy_variables(model, x)
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
    chex.assert_trees_all_close(jax.jit(model.apply)(v, x), expected, atol=1e-5)


def test_unknown_model_and_bad_num_classes_are_rejected():
    with pytest.raises(ValueError, match="unknown model 'resnet9'.*lenet"):
        models.create("resnet9", 10)
    with pytest.raises(ValueError, match="num_classes"):
        models.create("lenet", 0)
    for not_an_int in (10.0, 2.5, "10", True):  # 2.5 was truncated to a 2-way classifier.
        with pytest.raises(TypeError, match="num_classes must be an int"):
            models.create("lenet", not_an_int)
    assert models.create("lenet", np.int64(3)).num_classes == 3


# ----------------------------------------------------------------------------------------
# The model zoo, every model: one sweep.
# ----------------------------------------------------------------------------------------


def _sweep_shape(name: str) -> tuple[int, int, int]:
    """The smallest inputs that keep every model's last feature map non-empty."""
    if name.startswith("lenet"):
        return (16, 16, 1)
    if name.startswith("vgg") or name in ("resnet10", "resnet18"):
        return (32, 32, 3)  # Five 2x2 poolings (VGG); the ImageNet stem and stages: 1/32.
    return (8, 8, 3)


# Value-and-gradient equivalence of the switch's two states and forward-mode values run
# on the smallest model of each architecture family (LeNet, CIFAR ResNet, VGG, ImageNet
# ResNet): each is three float64 compilations, which grow with depth (ResNet-110 takes
# several times ResNet-8's). Every model is traced in both states.
_NUMERIC = ("lenet", "resnet8", "vgg11", "resnet10")


def _train(model, variables, params, x):
    return model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])


def _value_and_grads(model, variables, x, cotangent):
    """Logits (train and eval), batch-stat updates, and the gradient of <logits, cotangent>."""

    def loss(params, x):
        logits, updates = _train(model, variables, params, x)
        return jnp.sum(logits * cotangent), (logits, updates)

    (_, (logits, updates)), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(
        variables["params"], x
    )
    evaluation = model.apply(variables, x, train=False)
    return {"logits": logits, "updates": updates, "grads": grads, "eval": evaluation}


def _forward_mode(model, variables, x, tangents):
    """The train-mode logits and updates by jax.jvp, and J t by jvp and by linearize."""

    def f(params, x):
        return _train(model, variables, params, x)

    primal, (jvp, _) = jax.jvp(f, (variables["params"], x), tangents)
    linearized = jax.linearize(f, variables["params"], x)[1](*tangents)[0]
    return {"primal": primal, "jvp": jvp, "linearize": linearized}


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_model_zoo(name):
    shape = _sweep_shape(name)
    off, on = (models.create(name, 7, xla_cpu=state) for state in (False, True))
    x = jnp.zeros((2, *shape))
    variables = jax.eval_shape(lambda: off.init(jax.random.key(0), x, train=False))
    # The same variables in both states (a checkpoint loads in either); batch statistics
    # exactly in the models with batch norm.
    chex.assert_trees_all_equal_shapes_and_dtypes(
        jax.eval_shape(lambda: on.init(jax.random.key(0), x, train=False)), variables
    )
    assert ("batch_stats" in variables) == models.has_batch_norm(name)
    # Switch off: jvp and linearize compile through the model (no custom_vjp: lowering a
    # forward-mode custom_vjp fails); shapes in train mode.
    out = (
        jax.jit(_forward_mode, static_argnums=0)
        .lower(off, variables, x, (variables["params"], x))
        .out_info
    )
    for logits in (out["primal"][0], out["jvp"], out["linearize"]):
        chex.assert_shape(logits, (2, 7))
    assert ("batch_stats" in out["primal"][1]) == models.has_batch_norm(name)

    # Error map pruning in every conv layer (switch on): each goes through the pruned
    # primitive, and the gradients have the parameters' shapes.
    calls = []
    pruned = emp.conv_general_dilated(emp.TopK(0.5), xla_cpu=True)

    def conv(*args, **kwargs):
        calls.append(1)
        return pruned(*args, **kwargs)

    model = models.create(name, 7, conv_general_dilated=conv, xla_cpu=True)

    def pruned_grads(variables):
        def loss(params):
            logits, _ = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return logits.sum()

        return jax.grad(loss)(variables["params"])

    grads = jax.eval_shape(pruned_grads, variables)
    chex.assert_trees_all_equal_shapes(grads, variables["params"])
    layers = flops.per_layer(name, shape, 7)
    assert len(calls) == sum(1 for layer in layers if layer.kind == "conv")

    # The analytic counts of edgefilter.flops (Eq. 8 and Eq. 12 as the forward; none for
    # the first layer's input error).
    counts = flops.per_instance(name, shape, 7)
    assert set(counts) == set(flops.KEYS)
    assert all(isinstance(v, int) and v > 0 for v in counts.values())
    assert counts["train"] == (
        counts["forward"] + counts["error_propagation"] + counts["weight_gradient"]
    )
    assert layers[0].error_propagation == 0
    for layer in layers[1:]:
        assert layer.error_propagation == layer.forward == layer.weight_gradient
    assert counts["weight_gradient"] == counts["forward"] > counts["error_propagation"]

    if name in _NUMERIC:
        _check_switch_equivalence_and_forward_mode(name, shape)


def _check_switch_equivalence_and_forward_mode(name, shape):
    """Float64: both states give the same values and gradients; jvp agrees with the vjp.

    Float64 because the comparison must not depend on conditioning: at initialisation a
    deep network's gradients move by a few percent for float32 rounding noise in its input.
    """
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x = rng.standard_normal((4, *shape))
        cotangent = rng.standard_normal((4, 7))
        off, on = (models.create(name, 7, xla_cpu=s, dtype=jnp.float64) for s in (False, True))
        # Not the initial values (a BatchNorm's are the identity): NumPy's, in float64,
        # with positive running variances for the eval pass.
        variables = numpy_variables(off, x[:1], train=False, dtype=np.float64)
        tangents = jax.tree.map(lambda a: rng.standard_normal(a.shape), (variables["params"], x))
        run = jax.jit(_value_and_grads, static_argnums=0)
        got_off, got_on = (jax.device_get(run(m, variables, x, cotangent)) for m in (off, on))
        forward = jax.device_get(
            jax.jit(_forward_mode, static_argnums=0)(off, variables, x, tangents)
        )

    def assert_close(got, want):  # Relative to each array's scale.
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * np.max(np.abs(b)))

    assert_close(got_on, got_off)
    # jvp: J t, checked against the vjp: <J t, c> = <t, J^T c> (the gradients).
    leaves = zip(jax.tree.leaves(tangents), jax.tree.leaves(got_off["grads"]), strict=True)
    np.testing.assert_allclose(
        np.sum(forward["jvp"] * cotangent), sum(np.sum(t * g) for t, g in leaves), rtol=1e-9
    )
    assert_close(forward["linearize"], forward["jvp"])
    assert_close(forward["primal"], (got_off["logits"], got_off["updates"]))
