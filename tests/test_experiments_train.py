"""The command line: flag validation (exit status 2), and resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*flags, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *flags],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--model=resnet9", "--model='resnet9' is invalid: choose one of lenet"),
        ("--dataset=svhn", "--dataset='svhn' is invalid"),
        ("--method=ohem", "--method='ohem' is invalid"),
        ("--batch_size=0", "--batch_size=0 is invalid: must be a positive number"),
        ("--batch_size=abc", "batch_size"),
        ("--emp_keep=1.5", "--emp_keep=1.5 is invalid: must lie in (0, 1]"),
        ("--eif_window=0", "--eif_window=0 is invalid: must be a positive integer"),
        ("--bits=7", "--bits=7 is invalid"),
        ("--dataset=idx:/no/such/folder", "/no/such/folder"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line_and_writes_nothing(tmp_path, flag, message):
    workdir = tmp_path / "run"
    proc = _cli(flag, f"--workdir={workdir}")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert message in err
    assert "Traceback" not in err
    assert not workdir.exists()


def _final_params(workdir):
    step = max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    restored = ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", str(step), "default")
    )
    return step, restored["state"]["params"]


def test_resume_after_sigkill_ends_with_the_uninterrupted_parameters(tmp_path, idx_folder):
    common = [
        f"--dataset=idx:{idx_folder}",
        "--steps=30",
        "--batch_size=32",
        "--checkpoint_every_steps=4",
        "--progress=false",
    ]
    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = _cli(*common, f"--workdir={killed}")
    deadline = time.time() + 300
    checkpoints = killed / "checkpoints"
    while time.time() < deadline:  # Kill once a checkpoint past the start exists.
        if checkpoints.exists() and any(
            d.isdigit() and int(d) >= 8 for d in os.listdir(checkpoints)
        ):
            break
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    resumed = _cli(*common, f"--workdir={killed}")
    uninterrupted = _cli(*common, f"--workdir={full}")
    for p in (resumed, uninterrupted):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    step_a, params_a = _final_params(full)
    step_b, params_b = _final_params(killed)
    assert step_a == step_b == 30
    chex.assert_trees_all_equal(params_a, params_b)
    with open(killed / "summary.json") as f:
        summary = json.load(f)
    assert summary["instances_trained"] == 30 * 32
    with open(killed / "metrics.jsonl") as f:
        steps = [r["step"] for r in map(json.loads, f) if "loss" in r]
    assert steps == list(range(1, 31))  # Replayed steps are not logged twice.
