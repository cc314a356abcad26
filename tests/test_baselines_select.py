"""Tests of the data-selection baselines of issue #18 (random, oracle, OHEM,
Selective-Backprop, InfoBatch) on the selection interface: each rule against a
hand-worked chunk, its counted MACs against a hand-worked value, and one short run
through ``edgefilter.training.loop``.

Hand-worked MACs of the slim LeNet with 10 classes on a 28x28x1 instance: conv
3x3x1->6 on 26x26: 36,504; conv 3x3x6->16 on 11x11: 104,544; FC 400->120: 48,000;
FC 120->10: 1,200. Forward 190,248.
"""

import json
from types import SimpleNamespace

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from edgefilter import data as data_lib
from edgefilter import select
from edgefilter.select.selective_backprop import keep_probability
from edgefilter.training import accounting, engine, loop, pack, runners
from edgefilter.training import config as config_lib
from edgefilter.training import steps as steps_lib

SLIM10_FORWARD = 190_248
M = 32  # Chunk size of the end-to-end runs: tiny_dataset's 320 instances are 10 chunks.


def _run(tmp_path, tiny_dataset, **overrides):
    flags = dict(
        model="lenet_slim",
        dataset="fashion_mnist",
        steps=10,
        batch_size=M,
        r_set=0.25,
        block_chunks=2,
        checkpoint_every_steps=100,
        log_every_steps=5,
        eval_batch_size=100,
    )
    flags.update(overrides)
    config = config_lib.from_flags(flags)
    return loop.train_and_evaluate(
        config, str(tmp_path / config.method), dataset=tiny_dataset, show_progress=False
    )


def test_random_trains_round_r_set_m_of_each_chunk_and_counts_them(tmp_path, tiny_dataset):
    summary = _run(tmp_path, tiny_dataset, method="random")
    kept = round(0.25 * M)  # 8 of each chunk of 32, one main step per chunk.
    assert summary["steps"] == 10 and summary["instances_trained"] == 10 * kept
    breakdown = summary["compute"]["breakdown"]
    assert breakdown["main_forward"] == 10 * kept * SLIM10_FORWARD
    assert breakdown["selection_forward"] == 0 and breakdown["filter_inference"] == 0


def test_top_loss_keeps_the_largest_valid_losses_and_counts_the_forward():
    # m = 8, r_set = 0.25: 2 slots. Slot 5 (loss 2.0) is padding; slots 1 and 3 tie at
    # 0.9 and are the largest valid losses, so both are kept with weight 1.
    losses = jnp.asarray([0.1, 0.9, 0.3, 0.9, 0.5, 2.0, 0.2, 0.4])
    valid = jnp.asarray([True] * 5 + [False] + [True] * 2)
    for make in (select.oracle, select.ohem):
        sel = make(0.25, chunk_size=8)
        state = sel.init(jax.random.key(0), jnp.zeros((8, 1)))
        choice, state = sel.select(
            state, jnp.zeros((8, 1)), jax.random.key(1), valid, forward=lambda: losses
        )
        assert sorted(np.asarray(choice.train_idx).tolist()) == [1, 3]
        np.testing.assert_array_equal(choice.train_weight, [1.0, 1.0])
        assert int(state.forwarded) == 8 and choice.probe_idx.shape == (0,)
    assert (
        select.oracle(0.25, chunk_size=8).chunk_forward,
        select.ohem(0.25, chunk_size=8).chunk_forward,
    ) == ("inference", "train")


class _BatchNormNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
        return nn.Dense(3)(x)


def test_chunk_losses_inference_mode_uses_running_statistics_train_mode_the_chunks():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (6, 4)).astype(np.float32)
    labels = np.asarray([0, 1, 2, 0, 1, 2])
    model = _BatchNormNet()
    variables = model.init(jax.random.key(0), x)
    state = steps_lib.TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=optax.sgd(0.1),
    )
    kernel = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
    bias = np.asarray(variables["params"]["Dense_0"]["bias"], np.float64)

    def reference(normalised):  # Cross-entropy of softmax(normalised @ W + b), NumPy.
        logits = normalised @ kernel + bias
        logits = logits - logits.max(1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return -log_p[np.arange(6), labels]

    eps = 1e-5  # flax BatchNorm's epsilon; running mean 0 and variance 1 at init.
    inference = engine.chunk_losses(state, x, labels, "inference", jax.random.key(1))
    np.testing.assert_allclose(inference, reference(x / np.sqrt(1 + eps)), rtol=1e-5)
    train = engine.chunk_losses(state, x, labels, "train", jax.random.key(1))
    batch = (x - x.mean(0)) / np.sqrt(x.var(0) + eps)
    np.testing.assert_allclose(train, reference(batch), rtol=1e-4)
    # The training-mode forward's batch statistics are not kept.
    chex.assert_trees_all_equal(state.batch_stats, variables["batch_stats"])


def test_oracle_run_counts_its_selection_forward(tmp_path, tiny_dataset):
    summary = _run(tmp_path, tiny_dataset, method="oracle")
    kept = round(0.25 * M)
    assert summary["steps"] == 10 and summary["instances_trained"] == 10 * kept
    breakdown = summary["compute"]["breakdown"]
    # Forward on all 32 slots of each of the 10 chunks, train on 8 of them.
    assert breakdown["selection_forward"] == 10 * M * SLIM10_FORWARD
    assert breakdown["main_forward"] == 10 * kept * SLIM10_FORWARD


def test_pack_queues_kept_rows_in_order_and_pops_a_full_batch():
    images = np.arange(8, dtype=np.uint8).reshape(8, 1, 1, 1)
    labels, indices = np.arange(8, dtype=np.int32), np.arange(100, 108, dtype=np.int32)
    queue = pack.empty(4, 4, (1, 1, 1))
    slots = jnp.arange(4)
    # Chunk rows 0-3: rows 0, 2, 3 kept (weights 1, 2, 1); then rows 4-7: rows 4, 5 kept.
    queue = pack.push(
        queue, images[:4], labels[:4], indices[:4], slots, jnp.asarray([1, 0, 2, 1.0])
    )
    assert int(queue.count) == 3
    queue = pack.push(
        queue, images[4:], labels[4:], indices[4:], slots, jnp.asarray([1, 1, 0, 0.0])
    )
    assert int(queue.count) == 5
    np.testing.assert_array_equal(queue.labels[:5], [0, 2, 3, 4, 5])
    np.testing.assert_array_equal(queue.weights[:5], [1, 2, 1, 1, 1])
    np.testing.assert_array_equal(queue.indices[:5], [100, 102, 103, 104, 105])
    queue = pack.pop(queue, 4, jnp.asarray(True))  # The first 4 were trained.
    assert int(queue.count) == 1 and int(queue.labels[0]) == 5
    np.testing.assert_array_equal(queue.weights, [1, 0, 0, 0, 0, 0, 0, 0])
    assert int(pack.pop(queue, 4, jnp.asarray(False)).count) == 1


def test_sb_keep_probability_is_the_history_cdf_to_the_beta():
    # History 0.1-0.4 (the last two entries are not filled yet and do not count).
    history = jnp.asarray([0.1, 0.2, 0.3, 0.4, 9.0, 9.0])
    p = keep_probability(jnp.asarray([0.05, 0.25, 0.5]), history, jnp.asarray(4), 2.0)
    # Strictly below: 0, 2 and 4 of 4 entries; squared.
    np.testing.assert_allclose(p, [0.0, 0.25, 1.0])


def _sb_select(sel, state, losses, indices=None, key=0):
    needs = {"forward": lambda: jnp.asarray(losses, jnp.float32)}
    if indices is not None:
        needs["indices"] = jnp.asarray(indices, jnp.int32)
    x = jnp.zeros((4, 1))
    return sel.select(state, x, jax.random.key(key), jnp.ones((4,), bool), **needs)


def test_sb_keeps_each_instance_with_its_probability_after_priming():
    sel = select.selective_backprop(1.0, 8, chunk_size=4, prime=4)
    state = sel.init(jax.random.key(0), jnp.zeros((4, 1)))
    # Priming: the first 4 instances are all kept, whatever their loss.
    choice, state = _sb_select(sel, state, [0.4, 0.1, 0.3, 0.2])
    np.testing.assert_array_equal(choice.train_weight, [1, 1, 1, 1])
    assert sel.pack_size == 4 and int(state.forwarded) == 4
    # Then the history holds 0.4, 0.1, 0.3, 0.2 and these 4 losses: the CDFs (beta 1) of
    # 0.05, 0.25, 0.35 and 1.0 are 0, 3/8, 5/8 and 7/8. Over 4000 chunks (keys), the
    # kept frequencies match them.
    losses = [0.05, 0.25, 0.35, 1.0]
    keep = jax.vmap(lambda k: _sb_select(sel, state, losses, key=k)[0].train_weight)(
        jnp.arange(4000)
    )
    np.testing.assert_allclose(keep.mean(0), [0, 3 / 8, 5 / 8, 7 / 8], atol=0.03)


def test_stale_sb_reuses_a_loss_for_staleness_epochs_and_counts_only_real_forwards():
    # 8 instances, chunks of 4, staleness 2: the forward runs in epochs 0 and 2 only.
    sel = select.selective_backprop(1.0, 8, chunk_size=4, prime=0, staleness=2, num_train=8)
    state = sel.init(jax.random.key(0), jnp.zeros((4, 1)))
    assert sel.needs_indices
    fresh = [0.4, 0.3, 0.2, 0.1]
    for chunk in range(6):  # Epochs 0, 0, 1, 1, 2, 2.
        rows = [0, 1, 2, 3] if chunk % 2 == 0 else [4, 5, 6, 7]
        _, state = _sb_select(sel, state, [v + chunk for v in fresh], rows)
    assert int(state.forwarded) == 4 * 4  # Chunks 0, 1 (epoch 0) and 4, 5 (epoch 2).
    np.testing.assert_allclose(state.table, [4.4, 4.3, 4.2, 4.1, 5.4, 5.3, 5.2, 5.1])
    # Epoch 1's chunks reused epoch 0's losses: the ring of 8 holds chunks 4 and 5's.
    np.testing.assert_allclose(
        np.sort(state.history), np.sort([4.4, 4.3, 4.2, 4.1, 5.4, 5.3, 5.2, 5.1])
    )
    np.testing.assert_array_equal(state.forward_epoch, [2] * 8)


def test_stale_sb_run_trains_full_batches_of_what_it_kept(tmp_path, tiny_dataset):
    # Two epochs of 10 chunks: the first primes (all 320 trained, 10 full batches) and
    # runs the selection forward; the second reuses those losses (staleness 2: no
    # forward) and keeps a random part, packed into batches of 32; the last partial
    # batch is trained with padding at the end. (Plain SB is the same path with the
    # forward on every chunk.)
    summary = _run(
        tmp_path,
        tiny_dataset,
        method="selective_backprop_stale",
        steps=20,
        sb_history=64,
        sb_staleness=2,
    )
    trained = summary["instances_trained"]
    assert 320 < trained < 640
    assert summary["steps"] == -(-trained // M)  # Full batches, the last one padded.
    breakdown = summary["compute"]["breakdown"]
    assert breakdown["selection_forward"] == 10 * M * SLIM10_FORWARD  # Epoch 0 only.
    assert breakdown["main_forward"] == summary["steps"] * M * SLIM10_FORWARD
    # Every chunk logs what it kept; the steps' loss and trained count are logged at the
    # end of the block that took them (blocks of 2 chunks), and at the run's end.
    with open(tmp_path / "selective_backprop_stale" / "metrics.jsonl") as f:
        records = [r for r in map(json.loads, f) if "trained" in r]
    assert sum("kept" in r for r in records) == 20
    assert sum(r["trained"] for r in records) == trained
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    assert all("loss" not in r for r in records if r["trained"] == 0)


def test_infobatch_prunes_below_mean_instances_and_rescales_the_kept_ones():
    sel = select.infobatch(0.5, 0.4, chunk_size=4, num_train=8, epochs=2.0)
    state = sel.init(jax.random.key(0), jnp.zeros((4, 1)))
    assert int(state.epoch) == -1 and np.all(np.asarray(state.scores) == 3.0)
    # Scores of instances 0-3: 0.1, 0.2 (below the mean, 23.3 / 8 = 2.9125), 5 and 6.
    state = state.replace(scores=jnp.asarray([0.1, 0.2, 5.0, 6.0, 3.0, 3.0, 3.0, 3.0]))
    indices, valid = jnp.arange(4), jnp.ones((4,), bool)

    def weights(state, key):
        choice, after = sel.select(state, jnp.zeros((4, 1)), key, valid, indices=indices)
        return choice.train_weight, after

    _, after = weights(state, jax.random.key(0))
    np.testing.assert_allclose(after.threshold, 23.3 / 8, rtol=1e-6)
    w = jax.vmap(lambda k: weights(state, jax.random.key(k))[0])(jnp.arange(4000))
    # Instances 0 and 1 are kept half the time with weight 1 / (1 - 0.5) = 2; 2 and 3
    # always, with weight 1: the expected weight of every instance is 1 (unbiased).
    assert set(np.unique(w[:, :2]).tolist()) == {0.0, 2.0} and np.all(w[:, 2:] == 1.0)
    np.testing.assert_allclose((w > 0).mean(0), [0.5, 0.5, 1, 1], atol=0.03)
    # Epoch 1 > delta * epochs = 0.8: annealing, everything with weight 1.
    w, _ = weights(state.replace(streamed=jnp.asarray(8, jnp.int32)), jax.random.key(1))
    np.testing.assert_array_equal(w, [1, 1, 1, 1])
    # Observe: the trained rows' scores become their losses; a zero-weight row is not
    # trained and keeps its score.
    packed = select.Packed(indices=jnp.asarray([0, 2, 5, 7]), weight=jnp.asarray([2, 1, 0, 1.0]))
    choice = select.Choice(indices, jnp.ones((4,)), jnp.zeros((0,), int), jnp.zeros((0,)))
    losses = jnp.asarray([0.5, 0.6, 0.7, 0.8])
    state, _ = sel.observe(state, None, choice, losses, jnp.zeros((0,)), packed=packed)
    np.testing.assert_allclose(state.scores, [0.5, 0.2, 0.6, 6.0, 3.0, 3.0, 3.0, 0.8])


def test_oracle_with_emp_at_8_bits_counts_by_hand():
    # LeNet (PAPER.md's MACs, tests/test_accounting.py): forward 2,293,000; with EMP at
    # keep 0.5 (first conv dense) the backward is 2,698,000. Chunks of 64, r_set 0.25:
    # 16 trained a step. EMP's channel selection for a batch of 16: 16*8*8*50 + 5*5*20*50
    # + 3*50 + 50*6 = 76,650 (full precision). 10 chunks, all 640 slots forwarded to
    # select; 8 bits scale MACs by 64 / 1024.
    config = config_lib.resolve(
        config_lib.from_flags(
            dict(
                model="lenet", dataset="mnist", method="oracle", select_emp=True, r_set=0.25, bits=8
            )
        )
    )
    loop_state = {
        "state": SimpleNamespace(step=10),
        "position": 640,
        "chunk": 10,
        "selector": SimpleNamespace(forwarded=640),
    }
    info = data_lib.DatasetInfo("tiny", 10, (28, 28, 1), (0.15,), (0.3,))
    out = accounting.run_compute(config, info, loop_state)
    scale = 64 / 1024
    assert out["unit"] == "BOP"
    assert out["breakdown"] == {
        "main_forward": round(160 * 2_293_000 * scale),
        "main_backward": round(160 * 2_698_000 * scale),
        "emp_selection": 10 * 76_650,
        "filter_inference": 0,
        "filter_training": 0,
        "uncertainty_forward": 0,
        "selection_forward": round(640 * 2_293_000 * scale),
    }


class _Interrupted(Exception):
    pass


def test_infobatch_run_trains_fewer_full_batches_and_resumes_exactly(
    tmp_path, tiny_dataset, monkeypatch
):
    # Epoch 0: every score is 3, none below the mean, all 320 trained; epoch 1 prunes
    # about half of the below-mean half. Full batches of 32, the last one padded.
    overrides = dict(method="infobatch", steps=20, checkpoint_every_steps=3)
    full = _run(tmp_path / "full", tiny_dataset, **overrides)
    trained = full["instances_trained"]
    assert 320 < trained < 640
    assert full["steps"] == -(-trained // M)
    breakdown = full["compute"]["breakdown"]
    assert breakdown["selection_forward"] == 0
    assert breakdown["main_forward"] == full["steps"] * M * SLIM10_FORWARD
    assert full["compute"]["reduction"] > 0
    # The score table and the queue of kept instances are part of the checkpoint: a run
    # stopped after 14 chunks (epoch 1, pruning) and resumed from its checkpoint after
    # 12 ends where the uninterrupted one does.
    run_block = runners.EngineRunner.run_block

    def stop_after_14(self, loop_state, chunks):
        if chunks[0][2] >= 14:
            raise _Interrupted
        return run_block(self, loop_state, chunks)

    with monkeypatch.context() as patch:
        patch.setattr(runners.EngineRunner, "run_block", stop_after_14)
        with pytest.raises(_Interrupted):
            _run(tmp_path / "resumed", tiny_dataset, **overrides)
    resumed = _run(tmp_path / "resumed", tiny_dataset, **overrides)
    assert resumed["instances_trained"] == trained
    chex.assert_trees_all_equal(resumed["state"].params, full["state"].params)


def test_a_packing_run_does_not_resume_with_another_block_length(tmp_path):
    # Its queue holds a block's kept instances and SB's forward sees the block's start,
    # so --block_chunks is part of the run; for the other methods it changes no value.
    for method, refused in (("infobatch", True), ("selective_backprop", True), ("sgd", False)):
        workdir = tmp_path / method
        workdir.mkdir()
        config = config_lib.from_flags(dict(method=method, block_chunks=8))
        (workdir / "config.json").write_text(json.dumps(config_lib.as_flags(config)))
        other = config_lib.from_flags(dict(method=method, block_chunks=4))
        if refused:
            with pytest.raises(ValueError, match=r"--block_chunks: 8 -> 4"):
                loop.check_resumable(other, str(workdir))
        else:
            loop.check_resumable(other, str(workdir))
