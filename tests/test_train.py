"""Tests of edgefilter.train: the steps and the optimizer against hand computations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from edgefilter import data as data_lib
from edgefilter import models
from edgefilter.method import emp
from edgefilter.training import config as config_lib
from edgefilter.training import steps as train_lib
from tests.conftest import numpy_variables


def test_weighted_cross_entropy_matches_numpy():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 3.0, 0.0]], np.float32)
    labels = np.array([0, 2, 1])
    weights = np.array([1.0, 1.0, 0.0], np.float32)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per = -log_p[np.arange(3), labels]
    loss, per_instance = train_lib.weighted_cross_entropy(logits, labels, weights)
    np.testing.assert_allclose(per_instance, per, rtol=1e-6)
    np.testing.assert_allclose(loss, per[:2].mean(), rtol=1e-6)
    # A weight other than 1 rescales its instance; the mean is over the 2 real instances.
    loss, _ = train_lib.weighted_cross_entropy(logits, labels, np.array([2.0, 1.0, 0.0]))
    np.testing.assert_allclose(loss, (2 * per[0] + per[1]) / 2, rtol=1e-6)


def test_schedule_divides_by_ten_at_the_boundaries():
    config = config_lib.resolve(config_lib.TrainConfig(dataset="cifar10", model="resnet20"))
    schedule = train_lib.learning_rate_schedule(config, 64_000)
    np.testing.assert_allclose(
        [schedule(0), schedule(31_999), schedule(32_000), schedule(48_000)],
        [0.1, 0.1, 0.01, 0.001],
        rtol=1e-6,
    )


def test_train_step_is_one_sgd_step_done_by_hand(tiny_dataset):
    info = tiny_dataset.info
    config = config_lib.resolve(config_lib.TrainConfig(dataset="mnist", weight_decay=1e-3))
    model = models.create("lenet", 10)
    state = train_lib.create_train_state(
        model, train_lib.make_optimizer(config, 100), jax.random.key(0), info.image_shape
    )
    images, labels = tiny_dataset.train_images[:8], tiny_dataset.train_labels[:8]
    weights = np.ones(8, np.float32)
    params0 = jax.tree.map(np.array, state.params)  # A copy: the step donates the state.

    def loss(p):
        x = data_lib.normalize(images, info)
        return optax.softmax_cross_entropy_with_integer_labels(
            model.apply({"params": p}, x), labels
        ).mean()

    loss0, grads = jax.jit(jax.value_and_grad(loss))(params0)
    # First step of SGD with momentum: v = g + wd * w, w <- w - lr * v.
    expected = jax.tree.map(lambda w, g: w - 0.01 * (np.asarray(g) + 1e-3 * w), params0, grads)
    step = train_lib.make_train_step(info)
    state, metrics, per_instance = step(state, images, labels, weights, jax.random.key(1))
    chex.assert_trees_all_close(state.params, expected, atol=1e-6)
    chex.assert_shape(per_instance, (8,))
    np.testing.assert_allclose(metrics["loss"], loss0, rtol=1e-5)


def test_train_step_compiles_once_and_updates_batch_stats(tiny_dataset):
    info = data_lib.DatasetInfo("tiny", 10, (28, 28, 1), (0.15,), (0.3,), augment=True)
    config = config_lib.resolve(config_lib.TrainConfig(dataset="cifar10", model="resnet8"))
    state = train_lib.create_train_state(
        models.create("resnet8", 10),
        train_lib.make_optimizer(config, 10),
        jax.random.key(0),
        info.image_shape,
    )
    stats0 = jax.tree.map(np.asarray, state.batch_stats)
    step = train_lib.make_train_step(info)
    for i in range(3):
        weights = np.ones(4, np.float32) if i < 2 else np.array([1, 1, 0, 0], np.float32)
        state, _, _ = step(
            state,
            tiny_dataset.train_images[4 * i : 4 * i + 4],
            tiny_dataset.train_labels[4 * i : 4 * i + 4],
            weights,
            jax.random.key(i),
        )
    assert step._cache_size() == 1
    assert int(state.step) == 3
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), stats0, state.batch_stats)
    assert all(jax.tree.leaves(moved))


@pytest.mark.parametrize("prune_first_layer", [False, True])
def test_build_model_leaves_the_first_conv_dense_unless_asked(prune_first_layer):
    model = train_lib.build_model("lenet", 10, 32, emp.TopK(0.5), prune_first_layer)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 28, 28, 1)), jnp.float32)
    labels = jnp.arange(8) % 10
    params = numpy_variables(model, x, seed=1)["params"]

    def loss(params):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = jax.jit(jax.grad(loss))(params)

    def channels_with_a_gradient(layer):
        return int(np.sum(np.any(np.asarray(grads[layer]["kernel"]) != 0, axis=(0, 1, 2))))

    assert channels_with_a_gradient("Conv_0") == (10 if prune_first_layer else 20)
    assert channels_with_a_gradient("Conv_1") == 25  # ceil(0.5 * 50) kept.
