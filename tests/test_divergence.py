"""Divergence: a non-finite loss stops the run at once, exit status 3, strict JSON, and
no checkpoint holds a non-finite value (edgefilter.training.divergence)."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from edgefilter.training import divergence
from experiments import cli, train


def _refuse(token):
    raise AssertionError(f"not strict JSON: {token}")


def _strict(path):
    """Parses ``path`` as strict JSON: a NaN or Infinity token fails."""
    with open(path) as f:
        return json.load(f, parse_constant=_refuse)


def test_first_nonfinite_loss_names_the_first_step_and_key():
    records = [
        (0, "train", {"loss": np.float32(2.3), "accuracy": np.float32(0.1)}),
        (1, "window", {"r_th": np.float32(np.nan)}),  # Not a loss: not checked.
        (1, "train", {"loss": np.float32(1.0), "filter_loss": np.float32(np.inf)}),
        (2, "train", {"loss": np.float32(np.nan)}),
    ]
    assert divergence.first_nonfinite_loss(records[:2]) is None
    assert divergence.first_nonfinite_loss(records) == (2, "filter_loss is inf")


def test_nonfinite_leaf_names_the_path_of_a_float_leaf():
    tree = {"params": {"a": jnp.ones(3), "b": jnp.asarray([1.0, -np.inf])}, "n": jnp.arange(3)}
    assert divergence.nonfinite_leaf(tree) == "params/b"
    assert divergence.nonfinite_leaf({"params": {"a": jnp.ones(3)}, "n": np.int64(7)}) is None


def test_json_safe_maps_nonfinite_floats_to_null_and_keeps_the_rest():
    value = {"a": [1.0, math.nan, {"b": -math.inf}], "c": (2, "x", None), "d": True}
    assert divergence.json_safe(value) == {
        "a": [1.0, None, {"b": None}],
        "c": [2, "x", None],
        "d": True,
    }


def test_a_diverging_run_stops_at_once_with_exit_3_and_keeps_the_last_finite_checkpoint(
    tmp_path, idx_folder, capsys, fresh_flags
):
    workdir = tmp_path / "run"
    argv = [
        "experiments.train",
        "--model=lenet_slim",
        f"--dataset=idx:{idx_folder}",
        "--learning_rate=1e6",  # The loss is NaN from the third step.
        "--steps=10",
        "--batch_size=32",
        "--checkpoint_every_steps=1",
        "--progress=false",
        f"--workdir={workdir}",
    ]
    with pytest.raises(SystemExit) as exit_info:
        train.main(cli.parse_flags(argv))
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    summary = _strict(workdir / "summary.json")
    step = summary["diverged"]["step"]
    assert 1 < step < 10  # Stopped at once, not trained on to step 10.
    last_good = str(workdir / "checkpoints" / str(step - 1))
    assert summary["diverged"]["last_good_checkpoint"] == last_good
    assert f"diverged at step {step}: loss is nan; last good checkpoint: {last_good}" in err
    with open(workdir / "metrics.jsonl") as f:  # Strict JSON lines; the NaN loss is null.
        losses = [json.loads(line, parse_constant=_refuse)["loss"] for line in f]
    assert losses[-1] is None and all(math.isfinite(v) for v in losses[:-1])
    assert len(losses) == step
    checkpoints = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert checkpoints[-1] == step - 1  # Nothing saved after the divergence.
    for saved in checkpoints:
        restored = ocp.StandardCheckpointer().restore(
            workdir / "checkpoints" / str(saved) / "default"
        )
        assert divergence.nonfinite_leaf(restored) is None
