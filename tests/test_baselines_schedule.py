"""Tests of the schedule- and model-level baselines: smb, smd, sd, e2train (issue 18).

Each rule is checked against a hand-worked value or an independent recomputation (NumPy),
and each method once end to end on the tiny dataset (few chunks).
"""

import json
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgefilter import data as data_lib
from edgefilter import models
from edgefilter.method import flops
from edgefilter.models import resnet, stochastic_depth
from edgefilter.training import accounting, budget, loop, runners
from edgefilter.training import config as config_lib
from edgefilter.training import steps as steps_lib
from tests.conftest import numpy_variables

M = 32  # Chunk size of the end-to-end runs: 320 tiny instances are 10 chunks an epoch.


def _config(**overrides):
    base = dict(
        model="lenet_slim",
        dataset="fashion_mnist",
        steps=20,
        batch_size=M,
        block_chunks=2,
        checkpoint_every_steps=100,
        log_every_steps=5,
        eval_batch_size=100,
    )
    base.update(overrides)
    return config_lib.from_flags(base)


def _run(tmp_path, dataset, name="run", **overrides):
    return loop.train_and_evaluate(
        _config(**overrides), str(tmp_path / name), dataset=dataset, show_progress=False
    )


def _learning_rates(tx, steps):
    """The learning rate of each of ``steps`` updates of ``tx`` (momentum 0, no decay)."""
    params = {"w": jnp.zeros(())}
    state, rates = tx.init(params), []
    for _ in range(steps):
        update, state = tx.update({"w": jnp.ones(())}, state, params)
        rates.append(-float(update["w"]))
    return rates


# --- SMB ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "budget_", "expected"),
    [(1000, 0.5, 512), (1000, 0.3, 320), (1000, 1.0, 1000), (640, 0.01, 32)],
)
def test_smb_streams_the_first_budget_of_the_chunks(length, budget_, expected):
    # 1000 instances are ceil(1000 / 32) = 32 chunks (the last one short): 0.5 -> 16
    # chunks, 0.3 -> round(9.6) = 10; 1.0 -> the whole stream; never fewer than 1 chunk.
    assert budget.smb_length(length, M, budget_) == expected


def test_smb_run_compresses_the_schedule_and_counts_against_the_full_stream(tmp_path, tiny_dataset):
    summary = _run(
        tmp_path,
        tiny_dataset,
        method="smb",
        budget=0.5,
        lr_boundaries=(0.5,),
        learning_rate=0.1,
        momentum=0.0,
        weight_decay=0.0,
    )
    # 20 chunks of SGD's stream at budget 0.5: 10 chunks, 320 instances, one epoch.
    assert (summary["steps"], summary["instances_streamed"]) == (10, 320)
    assert summary["instances_trained"] == 320
    # The schedule's boundary at 0.5 of the *shorter* run: after 5 of its 10 steps.
    rates = _learning_rates(summary["state"].tx, 10)
    np.testing.assert_allclose(rates, [0.1] * 5 + [0.01] * 5, rtol=1e-6)
    train = flops.per_instance("lenet_slim", (28, 28, 1), 10)["train"]
    compute = summary["compute"]
    assert compute["sgd_same_stream"] == 640 * train and compute["total"] == 320 * train
    assert compute["reduction"] == pytest.approx(0.5)
    assert set(summary["budget"].values()) == {0}  # Nothing skipped, every key there.


# --- Settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (dict(method="smb", budget=0.0), "--budget=0.0 is invalid: a fraction of SGD's"),
        (dict(method="smb", budget=1.5), "--budget=1.5 is invalid: a fraction of SGD's"),
        (dict(method="sgd", budget=0.5), "--budget=0.5 is invalid: only --method=smb or smd"),
        (dict(method="smd", smd_skip=1.0), "--smd_skip=1.0 is invalid: a probability in [0, 1)"),
        (dict(method="smb", smd_skip=0.5), "--smd_skip=0.5 is invalid: only --method=smd or"),
        (
            dict(method="smd", budget=0.25, smd_skip=0.5),
            "--smd_skip=0.5 is invalid: --budget=0.25 sets it to 1 - budget",
        ),
        (
            dict(method="sd", model="resnet20", sd_final_survival=0.0),
            "--sd_final_survival=0.0 is invalid: a probability in (0, 1]",
        ),
        (dict(method="sd", model="lenet"), "--method='sd' is invalid: --model=lenet has no"),
        (dict(method="e2train", model="vgg11"), "--method='e2train' is invalid: --model=vgg11"),
        (
            dict(method="e2train", model="resnet18"),
            "--method='e2train' is invalid: --model=resnet18 is not a CIFAR ResNet",
        ),
        (dict(method="e2train", slu_minimum=101.0), "--slu_minimum=101.0 is invalid: a perc"),
        (dict(method="sd", slu_beta=0.1), "--slu_beta=0.1 is invalid: only --method=e2train"),
    ],
)
def test_bad_settings_name_the_flag_in_one_line(values, message):
    with pytest.raises(ValueError) as info:
        config_lib.resolve(config_lib.from_flags(values))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_the_sources_defaults_and_the_budget_mapping():
    def resolved(**values):
        return config_lib.resolve(config_lib.from_flags(values))

    assert resolved(method="smb").budget == 0.5
    assert resolved(method="smd").smd_skip == 0.5
    assert resolved(method="smd", budget=0.25).smd_skip == 0.75
    assert resolved(method="sd", model="resnet20").sd_final_survival == 0.5
    e2train = resolved(method="e2train", model="resnet20")
    assert (e2train.smd_skip, e2train.slu_beta, e2train.slu_minimum) == (0.5, 1e-5, 100.0)
    plain = resolved(method="sgd")
    assert (plain.budget, plain.smd_skip, plain.sd_final_survival) == (None, None, None)


# --- SMD ---------------------------------------------------------------------------------


def test_smd_decisions_are_a_function_of_seed_and_chunk():
    chunks = np.arange(2000)
    skipped = budget.smd_skipped(7, chunks, 0.3)
    # Recomputed from the documented rule, one chunk at a time, in another order.
    for c in (1999, 0, 5, 1234):
        assert skipped[c] == (np.random.default_rng((7, 0x5D, c)).random() < 0.3)
    np.testing.assert_array_equal(budget.smd_skipped(7, [5, 6, 7], 0.3), skipped[5:8])
    # Binomial(2000, 0.3): mean 600, sd 20.5; 4 sd either way.
    assert abs(int(skipped.sum()) - 600) < 82
    assert not budget.smd_skipped(7, chunks, 0.0).any()
    assert (budget.smd_skipped(8, chunks, 0.3) != skipped).any()  # Another seed.


def test_a_skipped_batch_takes_a_zero_gradient_momentum_step():
    config = config_lib.resolve(
        _config(method="smd", learning_rate=0.5, momentum=0.9, weight_decay=0.1)
    )
    tx = steps_lib.make_optimizer(config, 10)
    params = {"w": jnp.asarray([1.0, -2.0])}
    state = steps_lib.TrainState.create(apply_fn=None, params=params, tx=tx, batch_stats={})
    state = state.apply_gradients(grads={"w": jnp.asarray([1.0, 1.0])})
    # By hand (PyTorch's SGD): buf = g + wd p = [1.1, 0.8]; p = [0.45, -2.4].
    np.testing.assert_allclose(state.params["w"], [0.45, -2.4], rtol=1e-6)
    state = budget.zero_gradient_step(state)
    # buf = 0.9 buf + wd p = [0.99 + 0.045, 0.72 - 0.24]; p -= 0.5 buf.
    np.testing.assert_allclose(state.params["w"], [0.45 - 0.5175, -2.4 - 0.24], rtol=1e-6)
    assert int(state.step) == 2  # The schedule runs by streamed position.


def test_smd_run_sends_only_the_kept_chunks_to_the_device(tmp_path, tiny_dataset, monkeypatch):
    sent, dispatch = [], runners.BudgetRunner._dispatch

    def recording(self, state, group):
        sent.extend(c for _, _, c in group)
        return dispatch(self, state, group)

    monkeypatch.setattr(runners.BudgetRunner, "_dispatch", recording)
    summary = _run(tmp_path, tiny_dataset, method="smd", seed=3, steps=8)
    skipped = budget.smd_skipped(3, range(8), 0.5)
    kept = [c for c in range(8) if not skipped[c]]
    assert 0 < len(kept) < 8 and sent == kept
    assert summary["budget"] == {
        "skipped_batches": 8 - len(kept),
        "skipped_block_forwards": 0,
        "slu_gated_instance_blocks": 0,
    }
    assert summary["instances_trained"] == M * len(kept) and summary["steps"] == 8
    train = flops.per_instance("lenet_slim", (28, 28, 1), 10)["train"]
    assert summary["compute"]["total"] == len(kept) * M * train
    assert summary["compute"]["reduction"] == pytest.approx(1 - len(kept) / 8)


# --- SD ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rgb_dataset() -> data_lib.Dataset:
    """80 random 8x8x3 instances (a CIFAR-shaped stream for the ResNets, not learnable)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (100, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 100).astype(np.int32)
    info = data_lib.DatasetInfo("rgb", 10, (8, 8, 3), (0.5,) * 3, (0.25,) * 3, augment=False)
    return data_lib.Dataset(info, images[:80], labels[:80], images[80:], labels[80:])


def test_survival_decays_linearly_to_p_L():
    # Huang et al. Eq. 4, p_l = 1 - l / L (1 - p_L), for L = 4 blocks and p_L = 0.5.
    assert stochastic_depth.survival_probabilities(4, 0.5) == (0.875, 0.75, 0.625, 0.5)
    model = models.create("resnet20", 10, final_survival=0.5)
    assert models.residual_blocks("resnet20") == 9 and model.final_survival == 0.5


def _shortcut_a(x, stride, features):
    """Option A by hand: subsample by the stride, zero-pad the new channels evenly."""
    x = np.asarray(x)[:, ::stride, ::stride, :]
    extra = features - x.shape[-1]
    return np.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


def test_a_bypassed_block_outputs_its_shortcut_and_a_kept_one_computes():
    x = np.abs(np.random.default_rng(1).standard_normal((2, 4, 4, 8))).astype(np.float32)
    block = resnet.BasicBlock(16, 2, "A", models.Ops(), survival=0.5)
    plain = resnet.BasicBlock(16, 2, "A", models.Ops())
    variables = numpy_variables(block, x, train=False)
    decisions = set()
    for seed in range(8):
        rngs = {"dropout": jax.random.key(seed)}
        out, updates = block.apply(
            variables, x, train=True, rngs=rngs, mutable=["batch_stats", "stochastic_depth"]
        )
        kept = bool(updates["stochastic_depth"]["kept"][0])
        decisions.add(kept)
        if kept:
            expected, _ = plain.apply(variables, x, train=True, mutable=["batch_stats"])
            np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
        else:  # Exactly the shortcut (x >= 0, as after a ReLU); statistics untouched.
            np.testing.assert_array_equal(out, _shortcut_a(x, 2, 16))
            chex.assert_trees_all_equal(updates["batch_stats"], variables["batch_stats"])
    assert decisions == {True, False}
    # At test time the residual is scaled by p_l (Eq. 5): ReLU(shortcut + p_l f(x)).
    out, captured = block.apply(variables, x, train=False, capture_intermediates=True)
    residual = captured["intermediates"]["bn_out"]["__call__"][0]
    expected = np.maximum(_shortcut_a(x, 2, 16) + 0.5 * np.asarray(residual), 0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_bypassed_blocks_are_not_counted(rgb_dataset):
    info = rgb_dataset.info
    # resnet8 on 8x8x3, per instance, by hand (3x3 convs; no error-propagation exemption
    # inside the blocks): stage 1, two 16->16 convs on 8x8: 2 * 64 * 16 * 144 = 294912;
    # stage 2, 16->32 stride 2 to 4x4 (16 * 32 * 144) + 32->32 (16 * 32 * 288) = 221184;
    # stage 3, 32->64 to 2x2 (4 * 64 * 288) + 64->64 (4 * 64 * 576) = 221184.
    costs = accounting.block_costs("resnet8", info)
    forwards = [294912, 221184, 221184]
    assert costs == [{"forward": f, "backward": 2 * f} for f in forwards]
    config = config_lib.resolve(_config(method="sd", model="resnet8", batch_size=8))
    dense = flops.per_instance("resnet8", (8, 8, 3), 10)
    state = types.SimpleNamespace(step=np.int32(5))
    loop_state = {"state": state, "position": 40, "skipped_blocks": np.asarray([2, 0, 3])}
    compute = accounting.run_compute(config, info, loop_state)
    skipped = 8 * (2 * 294912 + 3 * 221184)  # Instances x forward MACs bypassed.
    assert compute["breakdown"]["main_forward"] == 40 * dense["forward"] - skipped
    assert compute["total"] == 40 * dense["train"] - 3 * skipped


def test_sd_run_counts_the_blocks_it_bypassed(tmp_path, rgb_dataset):
    summary = _run(
        tmp_path, rgb_dataset, method="sd", model="resnet8", batch_size=8, steps=4, block_chunks=1
    )
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    per_chunk = [r["blocks_skipped"] for r in records if "blocks_skipped" in r]
    assert len(per_chunk) == 4
    assert summary["budget"]["skipped_block_forwards"] == sum(per_chunk) > 0
    dense = flops.per_instance("resnet8", (8, 8, 3), 10)["train"]
    assert summary["compute"]["total"] < 32 * dense
    assert summary["compute"]["sgd_same_stream"] == 32 * dense


# --- E2-Train ----------------------------------------------------------------------------


def test_slu_gates_cost_what_was_worked_by_hand():
    # resnet8 on 8x8x3 has 3 blocks and 2 gates (none before the first block, none after
    # the last): embeddings 16 x 10 and 32 x 10, the shared LSTM (10 + 10) x 40 twice,
    # its projection 10 x 1 twice: 160 + 320 + 1600 + 20 MACs forward per instance.
    plain = flops.per_instance("resnet8", (8, 8, 3), 10)
    gated = flops.per_instance("resnet8", (8, 8, 3), 10, slu=(1e-5, 100.0))
    assert gated["forward"] - plain["forward"] == 2100
    assert gated["train"] - plain["train"] == 3 * 2100  # None of them is the first layer.


@pytest.mark.parametrize("bias", [-50.0, 50.0])
def test_slu_runs_a_block_or_passes_its_shortcut_per_instance(bias):
    x = np.random.default_rng(2).standard_normal((3, 8, 8, 3)).astype(np.float32)
    model = models.create("resnet8", 10, slu=(1e-3, 100.0), xla_cpu=False)
    plain = models.create("resnet8", 10, xla_cpu=False)
    variables = numpy_variables(model, x, train=False)
    variables["params"]["slu_gate"]["proj"]["bias"] = np.full((1,), bias, np.float32)
    rngs = {"dropout": jax.random.key(0)}
    mutable = ["batch_stats", "losses", "slu"]
    logits, updates = model.apply(variables, x, train=True, rngs=rngs, mutable=mutable)
    params = {k: v for k, v in variables["params"].items() if not k.startswith("slu_")}
    shared = {"params": params, "batch_stats": variables["batch_stats"]}
    reference, state = plain.apply(
        shared, x, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=True
    )
    if bias > 0:  # q ~ 1: every instance runs every block, the plain network's output.
        np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-5)
        executed = 2 * 3
    else:  # q ~ 0: blocks 2 and 3 pass the first block's output through their shortcuts.
        first = state["intermediates"]["BasicBlock_0"]["__call__"][0]
        h = resnet.shortcut_a(resnet.shortcut_a(first, 2, 32), 2, 64)
        dense = shared["params"]["Dense_0"]
        by_hand = np.mean(np.asarray(h), axis=(1, 2)) @ dense["kernel"] + dense["bias"]
        np.testing.assert_allclose(logits, by_hand, rtol=1e-5, atol=1e-5)
        executed = 0
    assert int(updates["slu"]["gated"][0]) == 2 * 3 - executed
    # The cost term at the source's reg = -1 (executed percentage <= 100): -beta * sum(m).
    np.testing.assert_allclose(updates["losses"]["slu_cost"][0], -1e-3 * executed, atol=1e-6)


def test_e2train_run_at_8_bits_counts_kept_batches_and_its_gates(tmp_path, rgb_dataset):
    summary = _run(
        tmp_path,
        rgb_dataset,
        method="e2train",
        model="resnet8",
        batch_size=8,
        steps=6,
        bits=8,
        block_chunks=1,
    )
    skipped = budget.smd_skipped(0, range(6), 0.5)
    kept = 6 - int(skipped.sum())
    assert 0 < kept < 6 and summary["budget"]["skipped_batches"] == 6 - kept
    assert 0 <= summary["budget"]["slu_gated_instance_blocks"] <= kept * 8 * 2
    gated = flops.per_instance("resnet8", (8, 8, 3), 10, slu=(1e-5, 100.0))["train"]
    compute = summary["compute"]
    assert compute["unit"] == "BOP"  # 8-bit operands: 64 / 1024 of a 32-bit MAC.
    assert compute["total"] == pytest.approx(kept * 8 * gated / 16, rel=1e-9)
    plain = flops.per_instance("resnet8", (8, 8, 3), 10)["train"]
    assert compute["sgd_same_stream"] == 48 * plain


def test_a_resumed_smd_run_skips_the_same_batches_and_ends_the_same(tmp_path, tiny_dataset):
    # Stopped after 3 chunks (a checkpoint), resumed to 6, against 6 in one go.
    _run(tmp_path, tiny_dataset, "resumed", method="smd", steps=3, seed=1)
    resumed = _run(tmp_path, tiny_dataset, "resumed", method="smd", steps=6, seed=1)
    whole = _run(tmp_path, tiny_dataset, "whole", method="smd", steps=6, seed=1)
    assert resumed["budget"] == whole["budget"]
    assert resumed["budget"]["skipped_batches"] == int(budget.smd_skipped(1, range(6), 0.5).sum())
    chex.assert_trees_all_close(resumed["state"].params, whole["state"].params, atol=1e-6)
