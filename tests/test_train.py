"""Tests of edgefilter.train: steps against hand computations, the stream, end to end."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from edgefilter import config as config_lib
from edgefilter import data as data_lib
from edgefilter import models
from edgefilter import train as train_lib


def test_weighted_cross_entropy_matches_numpy():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 3.0, 0.0]], np.float32)
    labels = np.array([0, 2, 1])
    weights = np.array([1.0, 1.0, 0.0], np.float32)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per = -log_p[np.arange(3), labels]
    loss, per_instance = train_lib.weighted_cross_entropy(logits, labels, weights)
    np.testing.assert_allclose(per_instance, per, rtol=1e-6)
    np.testing.assert_allclose(loss, per[:2].mean(), rtol=1e-6)


def test_schedule_divides_by_ten_at_the_boundaries():
    config = config_lib.resolve(config_lib.TrainConfig(dataset="cifar10", model="resnet20"))
    schedule = train_lib.learning_rate_schedule(config, 64_000)
    np.testing.assert_allclose(
        [schedule(0), schedule(31_999), schedule(32_000), schedule(48_000)],
        [0.1, 0.1, 0.01, 0.001],
        rtol=1e-6,
    )


def test_stream_covers_every_instance_once_per_epoch_across_chunk_boundaries():
    stream = train_lib.Stream(seed=3, num_train=10, length=25)
    chunks = [stream.indices(s, 4) for s in range(0, 24, 4)]
    flat = np.concatenate(chunks)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    np.testing.assert_array_equal(flat[:10], data_lib.epoch_permutation(3, 0, 10))
    assert not np.array_equal(flat[:10], flat[10:20])


def test_stream_batch_pads_with_zero_weight_repeats():
    idx, weights = train_lib.stream_batch(np.array([7, 8, 9]), 5)
    np.testing.assert_array_equal(idx, [7, 8, 9, 7, 8])
    np.testing.assert_array_equal(weights, [1, 1, 1, 0, 0])


def test_train_step_is_one_sgd_step_done_by_hand(tiny_dataset):
    info = tiny_dataset.info
    config = config_lib.resolve(config_lib.TrainConfig(dataset="mnist", weight_decay=1e-3))
    model = models.create("lenet", 10)
    state = train_lib.create_train_state(
        model, train_lib.make_optimizer(config, 100), jax.random.key(0), info.image_shape
    )
    images, labels = tiny_dataset.train_images[:8], tiny_dataset.train_labels[:8]
    weights = np.ones(8, np.float32)
    params0 = jax.tree.map(jnp.copy, state.params)

    def loss(p):
        x = data_lib.normalize(images, info)
        return optax.softmax_cross_entropy_with_integer_labels(
            model.apply({"params": p}, x), labels
        ).mean()

    grads = jax.grad(loss)(params0)
    # First step of SGD with momentum: v = g + wd * w, w <- w - lr * v.
    expected = jax.tree.map(lambda w, g: w - 0.01 * (g + 1e-3 * w), params0, grads)
    step = train_lib.make_train_step(info)
    state, metrics, per_instance = step(state, images, labels, weights, jax.random.key(1))
    chex.assert_trees_all_close(state.params, expected, atol=1e-6)
    chex.assert_shape(per_instance, (8,))
    np.testing.assert_allclose(metrics["loss"], loss(params0), rtol=1e-5)


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


def _small_config(**overrides):
    # dataset names the paper's settings (MNIST-like); the data itself is passed in.
    base = dict(
        model="lenet",
        dataset="fashion_mnist",
        steps=12,
        batch_size=32,
        checkpoint_every_steps=5,
        log_every_steps=4,
        eval_batch_size=64,
    )
    base.update(overrides)
    return config_lib.TrainConfig(**base)


def test_train_and_evaluate_end_to_end(tmp_path, tiny_dataset):
    workdir = str(tmp_path / "run")
    summary = train_lib.train_and_evaluate(
        _small_config(epochs=2.0, steps=None), workdir, dataset=tiny_dataset, show_progress=False
    )
    with open(os.path.join(workdir, "summary.json")) as f:
        written = json.load(f)
    assert written["instances_streamed"] == written["instances_trained"] == 640
    assert written["steps"] == 20
    assert written["train_step_compilations"] == 1
    assert written["config"]["learning_rate"] == 0.01 and written["config"]["momentum"] == 0.5
    assert written["test_accuracy"] > 0.5  # The tiny task is learnable; chance is 0.1.
    assert "compute" not in written  # Not written until it is counted.
    assert summary["test_accuracy"] == written["test_accuracy"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == list(range(1, 21))
    assert [r["step"] for r in records if "test_accuracy" in r] == [10, 20]


def test_partial_last_batch_is_trained_not_dropped(tmp_path, tiny_dataset):
    summary = train_lib.train_and_evaluate(
        _small_config(epochs=0.55, steps=None),
        str(tmp_path),
        dataset=tiny_dataset,
        show_progress=False,
    )
    # 0.55 * 320 = 176 instances = 5 full batches of 32 + 16 in a zero-weight-padded sixth.
    assert summary["instances_trained"] == 176 and summary["steps"] == 6
    assert summary["train_step_compilations"] == 1


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, tiny_dataset):
    full = train_lib.train_and_evaluate(
        _small_config(), str(tmp_path / "full"), dataset=tiny_dataset, show_progress=False
    )
    part = str(tmp_path / "part")
    train_lib.train_and_evaluate(
        _small_config(steps=7), part, dataset=tiny_dataset, show_progress=False
    )
    resumed = train_lib.train_and_evaluate(
        _small_config(), part, dataset=tiny_dataset, show_progress=False
    )
    chex.assert_trees_all_equal(full["state"].params, resumed["state"].params)
    chex.assert_trees_all_equal(full["state"].opt_state, resumed["state"].opt_state)
    assert resumed["instances_trained"] == full["instances_trained"] == 12 * 32
