"""Tests of the schedule- and model-level baselines: smb, smd, sd, e2train (issue 18).

Each rule is checked against a hand-worked value or an independent recomputation (NumPy),
and each method once end to end on the tiny dataset (few chunks).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from edgefilter.method import flops
from edgefilter.training import budget, loop
from edgefilter.training import config as config_lib

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
    assert summary["budget"] == {"skipped_batches": 0, "skipped_block_forwards": 0}


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
    plain = resolved(method="sgd")
    assert (plain.budget, plain.smd_skip, plain.sd_final_survival) == (None, None, None)
