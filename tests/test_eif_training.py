"""Tests of edgefilter.eif_training: the filtered stream, its packing and its jitted step.

The end-to-end checks run ``loop.train_and_evaluate`` once (a module fixture) with spies
around the two jitted functions of the runner: every prediction and every batch the
main network trained on are recorded, in order, then checked against what the runner's
docstring promises: the predicted-H instances are trained in arrival order, each once;
probes are earlier predicted-L instances, random samples first.
"""

import collections
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgefilter import data as data_lib
from edgefilter import models
from edgefilter.method import instance_filter
from edgefilter.training import config as config_lib
from edgefilter.training import eif_runner as eif_training
from edgefilter.training import loop
from edgefilter.training import steps as train_lib
from edgefilter.training import stream as stream_lib

M = 32
CHUNKS = 20  # Two epochs of the 320 training images of `tiny_dataset`.
R_SET = 0.3
PROBES = M // 8


def _config(**overrides):
    # dataset names the paper's settings (MNIST-like); the data itself is passed in.
    base = dict(
        model="lenet_slim",  # The main network; small, to keep the suite fast.
        dataset="fashion_mnist",
        method="eif",
        steps=CHUNKS,
        batch_size=M,
        eif_batch_size=M,  # Main steps as large as chunks; smaller ones: a test of their own.
        r_set=R_SET,
        checkpoint_every_steps=1000,  # Checkpoints at epoch ends only: they are slow.
        log_every_steps=4,
        eval_batch_size=64,
    )
    base.update(overrides)
    return config_lib.from_flags(base)


class _Spy:
    """Calls a jitted function, logs its inputs and outputs as NumPy, may crash."""

    def __init__(self, fn, events, crash_at=None):
        self.fn, self.events, self.crash_at = fn, events, crash_at
        self.calls = 0

    def __call__(self, *args):
        if self.calls == self.crash_at:
            raise RuntimeError("simulated crash")
        self.calls += 1
        out = self.fn(*args)
        self.events.append((self.kind, self.record(args, out)))
        return out

    def _cache_size(self):
        return self.fn._cache_size()


class _PredictSpy(_Spy):
    kind = "predict"

    def record(self, args, out):
        _, images, valid = args
        pred = out[1]
        return dict(
            images=np.array(images),
            valid=np.array(valid),
            pred_high=np.array(pred.pred_high),
            uncertain=np.array(pred.uncertain),
            entropy=np.array(pred.entropy),
        )


class _StepSpy(_Spy):
    kind = "step"

    def record(self, args, out):
        _, _, images, labels, weights, probe_images, _, probe_mask, probe_random, _ = args
        return dict(
            images=np.array(images),
            labels=np.array(labels),
            weights=np.array(weights),
            probe_images=np.array(probe_images),
            probe_mask=np.array(probe_mask),
            probe_random=np.array(probe_random),
        )


def _spied_run(config, workdir, dataset, crash_at=None):
    """``loop.train_and_evaluate`` with spies; returns the summary, predictions, steps."""
    events = []
    make_predict, make_step = eif_training.make_predict_step, eif_training.make_eif_step
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            eif_training,
            "make_predict_step",
            lambda *a: _PredictSpy(make_predict(*a), events, crash_at),
        )
        mp.setattr(
            eif_training, "make_eif_step", lambda *a, **k: _StepSpy(make_step(*a, **k), events)
        )
        summary = loop.train_and_evaluate(config, workdir, dataset=dataset, show_progress=False)
    predictions = [r for kind, r in events if kind == "predict"]
    steps = [r for kind, r in events if kind == "step"]
    return summary, predictions, steps, events


@pytest.fixture(scope="module")
def eif_run(tmp_path_factory, tiny_dataset):
    workdir = str(tmp_path_factory.mktemp("eif_full"))
    return _spied_run(_config(), workdir, tiny_dataset)


def test_every_jitted_function_compiles_once_over_a_run(eif_run):
    summary, predictions, steps, _ = eif_run
    assert summary["compilations"] == {"predict": 1, "train": 1, "end_window": 1}
    assert len(predictions) == CHUNKS and len(steps) == summary["steps"]


def test_predicted_high_instances_are_trained_once_in_arrival_order(eif_run, tiny_dataset):
    summary, predictions, steps, _ = eif_run
    selected = np.concatenate([p["images"][p["pred_high"]] for p in predictions])
    trained = np.concatenate([s["images"][s["weights"] > 0] for s in steps])
    # No instance lost, none duplicated, FIFO order (same images, in the same order).
    np.testing.assert_array_equal(trained, selected)
    assert summary["instances_trained"] == len(selected)
    # Which instances: the stream's, in order (Stream is tested in test_stream.py).
    stream = stream_lib.Stream(0, len(tiny_dataset.train_images), CHUNKS * M)
    chosen = np.concatenate(
        [stream.indices(c * M, M)[p["pred_high"]] for c, p in enumerate(predictions)]
    )
    np.testing.assert_array_equal(trained, tiny_dataset.train_images[chosen])
    labels = np.concatenate([s["labels"][s["weights"] > 0] for s in steps])
    np.testing.assert_array_equal(labels, tiny_dataset.train_labels[chosen])
    assert summary["eif"]["filter_steps"] == len(steps)


def _rank(origin, is_random):
    """Where a probe sits in its queue: by chunk; uncertain ones then by entropy, highest first."""
    chunk, entropy = origin
    return (chunk,) if is_random else (chunk, -entropy)


def test_probes_are_earlier_predicted_low_instances_random_ones_first(eif_run):
    summary, _, steps, events = eif_run
    # Predicted-L (and uncertain) instances seen so far: image -> [(chunk, entropy), ...].
    low, unsure = collections.defaultdict(list), collections.defaultdict(list)
    chunks, random_order, unsure_order = 0, [], []
    for kind, r in events:
        if kind == "predict":
            for i in np.flatnonzero(r["valid"] & ~r["pred_high"]):
                low[r["images"][i].tobytes()].append((chunks, r["entropy"][i]))
            for i in np.flatnonzero(r["uncertain"]):
                unsure[r["images"][i].tobytes()].append((chunks, r["entropy"][i]))
            chunks += 1
            continue
        n_probed, n_random = int(r["probe_mask"].sum()), int(r["probe_random"].sum())
        np.testing.assert_array_equal(r["probe_mask"], np.arange(PROBES) < n_probed)
        np.testing.assert_array_equal(r["probe_random"], np.arange(PROBES) < n_random)
        for i, image in enumerate(r["probe_images"][:n_probed]):
            key, is_random = image.tobytes(), i < n_random
            pool, order = (low, random_order) if is_random else (unsure, unsure_order)
            # An image recurs once an epoch: take its earliest occurrence that keeps the
            # queue's order (FIFO across chunks, most uncertain first within one).
            later = [o for o in pool[key] if not order or _rank(o, is_random) >= order[-1]]
            assert later, "a probe must be an earlier predicted-L instance, in queue order"
            pool[key].remove(later[0])  # Probed once only.
            order.append(_rank(later[0], is_random))
            if is_random:  # A random sample is not probed again as uncertain.
                unsure[key] = [o for o in unsure[key] if o[0] != later[0][0]]
    # One random sample per chunk, FIFO; uncertain ones FIFO across chunks and the most
    # uncertain first within a chunk (skipping drops a chunk's least uncertain ones).
    assert random_order and unsure_order  # The run exercises both kinds.
    # Conservation: each candidate is probed, skipped (its queue full) or still queued.
    # Candidates: one random sample per chunk plus the uncertain instances, less those
    # uncertain ones that were drawn as the random sample (at most one per chunk).
    uncertain = sum(int(r["uncertain"].sum()) for kind, r in events if kind == "predict")
    probed = len(random_order) + len(unsure_order)
    capacity = eif_training.PROBE_QUEUE_BATCHES * PROBES
    skipped = summary["eif"]["skipped_probes"]
    most, least = chunks + uncertain, uncertain  # All random samples uncertain or none.
    assert least - probed - 2 * capacity <= skipped <= most - probed


def test_the_final_partial_batch_is_trained(eif_run):
    summary, predictions, steps, _ = eif_run
    selected = sum(int(p["pred_high"].sum()) for p in predictions)
    assert selected % M, "the run is meant to end with a partial batch"
    assert summary["steps"] == math.ceil(selected / M)
    assert steps[-1]["weights"].sum() == selected % M
    assert all(s["weights"].sum() == M for s in steps[:-1])
    assert summary["instances_trained"] == selected


def test_a_main_batch_smaller_than_the_chunk_packs_the_same_instances(tmp_path, tiny_dataset):
    # 7 per main step while chunks of M = 32 arrive: steps are more frequent, their
    # shape stays static, and the instances trained are exactly the selected ones.
    config = _config(eif_batch_size=7, steps=10)  # One window.
    summary, predictions, steps, _ = _spied_run(config, str(tmp_path), tiny_dataset)
    assert summary["compilations"] == {"predict": 1, "train": 1, "end_window": 1}
    selected = np.concatenate([p["images"][p["pred_high"]] for p in predictions])
    trained = np.concatenate([s["images"][s["weights"] > 0] for s in steps])
    np.testing.assert_array_equal(trained, selected)
    assert all(s["images"].shape[0] == 7 and s["probe_images"].shape[0] == 1 for s in steps)
    assert summary["steps"] == math.ceil(len(selected) / 7) > 10
    assert all(s["weights"].sum() == 7 for s in steps[:-1])
    assert summary["eif"]["filter_steps"] == len(steps)


def test_quantile_control_trains_r_set_of_the_stream(eif_run):
    summary, predictions, _, _ = eif_run
    # Per chunk of m distinct margins, exactly m - 1 - floor((1 - r)(m - 1)) exceed the
    # linearly interpolated (1 - r) quantile: 10 of 32 for r = 0.3, so over whole chunks
    # the trained fraction is within 1/m of R_set, whatever the filter has learned.
    per_chunk = M - 1 - math.floor((1 - R_SET) * (M - 1))
    assert [int(p["pred_high"].sum()) for p in predictions] == [per_chunk] * CHUNKS
    fraction = summary["instances_trained"] / summary["instances_streamed"]
    assert fraction == per_chunk / M
    assert abs(fraction - R_SET) <= 1 / M


def test_resume_after_a_crash_matches_the_uninterrupted_run(eif_run, tmp_path, tiny_dataset):
    full = eif_run[0]
    workdir = str(tmp_path / "crashed")
    # Dies before predicting chunk 15; the newest checkpoint is chunk 13: mid-window,
    # with instances waiting in the queues. Checkpoint frequency does not change results,
    # nor does the length of the run (resumed longer than it started; the lr is constant).
    crashing = _config(checkpoint_every_steps=13, steps=16)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _spied_run(crashing, workdir, tiny_dataset, crash_at=15)
    resumed = loop.train_and_evaluate(_config(), workdir, dataset=tiny_dataset, show_progress=False)
    chex.assert_trees_all_equal(full["state"].params, resumed["state"].params)
    chex.assert_trees_all_equal(full["state"].opt_state, resumed["state"].opt_state)
    chex.assert_trees_all_equal(full["filter"].net.params, resumed["filter"].net.params)
    chex.assert_trees_all_equal(full["filter"].threshold, resumed["filter"].threshold)
    for key in ("instances_trained", "steps", "test_accuracy"):
        assert resumed[key] == full[key], key
    assert resumed["eif"] == full["eif"]
    assert [r["step"] for r in resumed["history"]] == [r["step"] for r in full["history"]]


def test_without_sampling_nothing_is_probed(tmp_path, tiny_dataset):
    config = _config(eif_uncertainty=False, eif_random_probes=0, steps=6, r_set=0.5)
    assert config_lib.resolve(config).eif_probe_size == 0
    summary, predictions, steps, _ = _spied_run(config, str(tmp_path), tiny_dataset)
    assert all(s["probe_images"].shape == (0, 28, 28, 1) for s in steps)
    assert not any(p["uncertain"].any() for p in predictions)
    assert summary["eif"]["skipped_probes"] == 0
    assert summary["compute"]["breakdown"]["uncertainty_forward"] == 0
    assert summary["instances_trained"] == 6 * M // 2 and summary["eif"]["filter_steps"] == 3


def _slim_filter(config, info):
    """A fresh slim-LeNet filter for ``config`` (its optimizer and its filter config)."""
    return instance_filter.init(
        models.create("lenet_slim", 2),
        eif_training.filter_optimizer(config),
        jax.random.key(1),
        info.image_shape,
        config.filter,
    )


def test_eif_step_equals_the_steps_done_by_hand(tiny_dataset):
    info = tiny_dataset.info
    config = config_lib.resolve(
        config_lib.TrainConfig(
            dataset="fashion_mnist", method="eif", batch_size=8, eif_probe_size=3
        )
    )
    fconfig = config.filter
    main = train_lib.create_train_state(
        models.create("lenet_slim", 10),
        train_lib.make_optimizer(config, 100),
        jax.random.key(0),
        info.image_shape,
    )
    fstate = _slim_filter(config, info)
    images, labels = tiny_dataset.train_images[:8], tiny_dataset.train_labels[:8]
    weights = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)  # A final, partial batch.
    probe_images, probe_labels = tiny_dataset.train_images[8:11], tiny_dataset.train_labels[8:11]
    probe_mask = np.array([True, True, False])  # A random sample, an uncertain one, padding.
    probe_random = np.array([True, False, False])
    key = jax.random.key(2)

    # By hand, each piece jitted alone: (a) probe forward with the pre-update parameters ...
    logits = np.asarray(
        main.apply_fn({"params": main.params}, data_lib.normalize(probe_images, info)), np.float64
    )
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    probe_losses = -log_p[np.arange(3), probe_labels]
    # ... (b) the main network's train step ...
    train_step = jax.jit(train_lib.train_step_body, static_argnums=5)
    main_hand, metrics_hand, train_losses = train_step(main, images, labels, weights, key, info)
    # Labels mixed: T_l between the losses of the batch.
    fstate = fstate.replace(threshold=jnp.asarray(np.median(train_losses[:6]), jnp.float32))
    # ... (c) the filter update on the trained and the probed instances.
    fstate_hand, fmetrics_hand = jax.jit(instance_filter.update, static_argnums=5)(
        fstate,
        jnp.concatenate([data_lib.normalize(images, info), data_lib.normalize(probe_images, info)]),
        jnp.concatenate([train_losses, jnp.asarray(probe_losses, jnp.float32)]),
        np.array([True] * 8 + [False] * 3),
        np.concatenate([weights > 0, probe_mask]),
        fconfig,
        np.concatenate([np.zeros(8, bool), probe_random]),
    )

    step = eif_training.make_eif_step(info, fconfig, 3)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731 (the step donates)
    main_out, fstate_out, metrics = step(
        copy(main),
        copy(fstate),
        images,
        labels,
        weights,
        probe_images,
        probe_labels,
        probe_mask,
        probe_random,
        key,
    )
    chex.assert_trees_all_close(main_out.params, main_hand.params, atol=1e-6, rtol=1e-5)
    chex.assert_trees_all_close(main_out.opt_state, main_hand.opt_state, atol=1e-6, rtol=1e-5)
    chex.assert_trees_all_close(fstate_out.net.params, fstate_hand.net.params, atol=1e-6, rtol=1e-5)
    for name in ("true_high", "known", "wrong", "streamed", "random_known", "random_high"):
        assert int(getattr(fstate_out, name)) == int(getattr(fstate_hand, name)), name
    assert int(fstate_out.known) == 6 + 2  # Padding of both kinds is not learned from.
    assert int(fstate_out.random_known) == 1
    assert int(fstate_out.random_high) == int(probe_losses[0] >= float(fstate.threshold))
    # The probes' losses are the pre-update network's (they enter the window's loss sum).
    np.testing.assert_allclose(
        fstate_out.main_loss_sum,
        float(np.sum(train_losses[:6])) + probe_losses[:2].sum(),
        rtol=1e-5,
    )
    np.testing.assert_allclose(metrics["loss"], metrics_hand["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["filter_loss"], fmetrics_hand["filter_loss"], rtol=1e-5)
    label_high = np.concatenate([train_losses[:6], probe_losses[:2]]) >= float(fstate.threshold)
    assert 0 < label_high.sum() < 8
    np.testing.assert_allclose(metrics["label_high_fraction"], label_high.mean(), rtol=1e-6)


def test_runner_state_is_fresh_and_sized_for_the_batch(tiny_dataset):
    config = config_lib.resolve(_config())
    runner = eif_training.EifRunner(
        config, tiny_dataset.info, models.create("lenet_slim", 2), tiny_dataset, jax.random.key(0)
    )
    state = runner.initial()
    assert runner.probes == PROBES
    assert len(state["train_queue"]) == 0 and state["train_queue"].items.shape == (2 * M,)
    # A chunk adds up to M instances to a queue drained below one main batch.
    small = eif_training.EifRunner(
        config_lib.resolve(_config(eif_batch_size=5)),
        tiny_dataset.info,
        models.create("lenet_slim", 2),
        tiny_dataset,
        jax.random.key(0),
    )
    assert small.initial()["train_queue"].items.shape == (5 + M,)
    for queue in ("probe_queue", "random_queue"):
        assert state[queue].items.shape == (eif_training.PROBE_QUEUE_BATCHES * PROBES,)
        assert len(state[queue]) == 0
    assert int(state["skipped_probes"]) == 0
    assert float(state["filter"].threshold) == config.filter.init_threshold


def test_predict_step_is_compiled_without_fusion_emitters_and_predicts_the_same(
    tiny_dataset, monkeypatch
):
    info = tiny_dataset.info
    config = config_lib.resolve(config_lib.TrainConfig(dataset="fashion_mnist", method="eif"))
    fconfig = config.filter
    fstate = _slim_filter(config, info)
    jit_options = []
    real_jit = eif_training.backends.jit

    def spy(fun, **kwargs):
        jit_options.append(kwargs.get("fusion_emitters", True))
        return real_jit(fun, **kwargs)

    monkeypatch.setattr(eif_training.backends, "jit", spy)
    predict = eif_training.make_predict_step(info, fconfig)
    assert jit_options == [False]

    images = tiny_dataset.train_images[:32]
    valid = np.arange(32) < 30
    x = data_lib.normalize(images, info)
    want_state, want = jax.jit(instance_filter.predict, static_argnums=3)(fstate, x, valid, fconfig)
    got_state, got = predict(jax.tree.map(jnp.copy, fstate), images, valid)
    np.testing.assert_array_equal(got.pred_high, want.pred_high)
    np.testing.assert_array_equal(got.uncertain, want.uncertain)
    np.testing.assert_allclose(got.entropy, want.entropy, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(got_state, want_state, rtol=1e-5)
