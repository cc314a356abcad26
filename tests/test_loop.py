"""Tests of edgefilter.loop: train_and_evaluate end to end, partial batches, resume, summary."""

import json
import os

import pytest

from edgefilter.training import config as config_lib
from edgefilter.training import loop
from tests import test_metrics


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
    summary = loop.train_and_evaluate(
        _small_config(epochs=2.0, steps=None, block_chunks=4),
        workdir,
        dataset=tiny_dataset,
        show_progress=False,
    )
    with open(os.path.join(workdir, "summary.json")) as f:
        written = json.load(f)
    assert written["instances_streamed"] == written["instances_trained"] == 640
    assert written["steps"] == 20
    # Blocks end at every 5th chunk (checkpoints): [1-4] [5] [6-9] [10] ..., two lengths.
    assert written["compilations"] == {"block": 2}
    assert written["config"]["learning_rate"] == 0.01 and written["config"]["momentum"] == 0.5
    assert written["test_accuracy"] > 0.5  # The tiny task is learnable; chance is 0.1.
    assert summary["test_accuracy"] == written["test_accuracy"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == list(range(1, 21))
    assert [r["step"] for r in records if "test_accuracy" in r] == [10, 20]
    # The same scalars as TensorBoard events in the workdir.
    scalars = [
        (v.tag, e.step) for e in test_metrics._events(tmp_path / "run") for v in e.summary.value
    ]
    assert [step for tag, step in scalars if tag == "test_accuracy"] == [10, 20]
    assert [step for tag, step in scalars if tag == "loss"] == train_steps


def test_partial_last_batch_is_trained_not_dropped(tmp_path, tiny_dataset):
    summary = loop.train_and_evaluate(
        _small_config(epochs=0.55, steps=None),
        str(tmp_path),
        dataset=tiny_dataset,
        show_progress=False,
    )
    # 0.55 * 320 = 176 instances = 5 full batches of 32 + 16 in a zero-weight-padded sixth.
    assert summary["instances_trained"] == 176 and summary["steps"] == 6
    assert summary["compilations"] == {"block": 1}  # Six chunks: one by one.


@pytest.mark.parametrize("method", ["sgd", "eif_emp"])
def test_summary_json_has_the_design_keys(tmp_path, tiny_dataset, method):
    config = _small_config(model="lenet_slim", method=method, steps=4, batch_size=16)
    returned = loop.train_and_evaluate(
        config, str(tmp_path), dataset=tiny_dataset, show_progress=False
    )
    with open(tmp_path / "summary.json") as f:
        summary = json.load(f)
    # DESIGN.md, "Command-line contract".
    assert set(summary["config"]) == {f.name for f in config_lib.FLAGS}
    assert summary["config"]["method"] == method and summary["config"]["batch_size"] == 16
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["instances_streamed"] == 64
    assert isinstance(summary["instances_trained"], int)
    assert 0 < summary["instances_trained"] <= 64
    assert isinstance(summary["wall_time_s"], float) and summary["wall_time_s"] > 0
    compute = summary["compute"]
    assert {"total", "sgd_same_stream", "reduction", "unit", "breakdown"} <= set(compute)
    assert compute["unit"] == "MAC"
    assert isinstance(compute["total"], int) and isinstance(compute["sgd_same_stream"], int)
    assert abs(compute["total"] - sum(compute["breakdown"].values())) <= len(compute["breakdown"])
    assert compute["reduction"] == pytest.approx(
        1 - compute["total"] / compute["sgd_same_stream"], rel=1e-6, abs=1e-9
    )
    if method == "eif_emp":
        assert compute["breakdown"]["emp_selection"] > 0
        assert compute["breakdown"]["filter_inference"] > 0
    else:
        assert compute["reduction"] == 0.0 and summary["instances_trained"] == 64
    assert set(compute["breakdown"]) == {  # The same keys for every method.
        "main_forward",
        "main_backward",
        "emp_selection",
        "filter_inference",
        "filter_training",
        "uncertainty_forward",
        "selection_forward",
    }
    for key in ("test_accuracy", "instances_streamed", "instances_trained", "compute"):
        assert returned[key] == summary[key], key
    assert os.path.exists(tmp_path / "metrics.jsonl")


def test_a_workdir_of_other_settings_is_not_resumed(tmp_path, tiny_dataset):
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(
        _small_config(steps=2), workdir, dataset=tiny_dataset, show_progress=False
    )
    loop.check_resumable(config_lib.resolve(_small_config(steps=4)), workdir)  # Longer: fine.
    other = config_lib.resolve(_small_config(steps=4, learning_rate=0.1))
    with pytest.raises(ValueError, match=r"--learning_rate: 0.01 -> 0.1"):
        loop.check_resumable(other, workdir)
    with pytest.raises(ValueError, match="other settings"):
        loop.train_and_evaluate(other, workdir, dataset=tiny_dataset, show_progress=False)
