"""The command line: flag validation (exit status 2), and resume after SIGKILL.

A real ``python -m experiments.train`` process is run where the process itself is what
is under test: one bad flag (exit status 2 and one line on stderr through absl's
``app.run``), and the run that is killed with SIGKILL. Everything else (the other bad
inputs, the resumed and the uninterrupted run) goes through the two functions
``app.run`` calls, ``cli.parse_flags`` then ``train.main``, in this process: each
process start costs seconds of imports and compilation.
"""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import orbax.checkpoint as ocp
import pytest
from absl import flags

from edgefilter.training import runners
from experiments import cli, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_a_bad_flag_exits_2_with_one_clear_line_and_writes_nothing(tmp_path):
    """The real command: absl's app.run with cli.parse_flags (absl alone would exit 1)."""
    workdir = tmp_path / "run"
    proc = _cli("--batch_size=abc", f"--workdir={workdir}")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "--batch_size" in lines[0], err
    assert "Traceback" not in err
    assert not workdir.exists()


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--model=resnet9", "--model='resnet9' is invalid: choose one of lenet"),
        ("--dataset=svhn", "--dataset='svhn' is invalid"),
        ("--method=nonesuch", "--method='nonesuch' is invalid"),
        ("--infobatch_prune=0.95", "--infobatch_prune=0.95 is invalid: must lie in [0, 0.9]"),
        ("--batch_size=0", "--batch_size=0 is invalid: must be a positive number"),
        ("--batch_size=abc", "batch_size"),
        ("--emp_keep=1.5", "--emp_keep=1.5 is invalid: must lie in (0, 1]"),
        ("--eif_window=0", "--eif_window=0 is invalid: must be a positive integer"),
        ("--bits=7", "--bits=7 is invalid"),
        ("--dataset=idx:/no/such/folder", "/no/such/folder"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line_and_writes_nothing(
    tmp_path, capsys, fresh_flags, flag, message
):
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:  # What app.run does with the command line.
        train.main(cli.parse_flags(["experiments.train", flag, f"--workdir={workdir}"]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not workdir.exists()


def _final_params(workdir):
    step = max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    restored = ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", str(step), "default")
    )
    return step, restored["state"]["params"]


STEPS, BATCH, EVERY = 20, 32, 2  # Two epochs of the 320 training images.


def test_resume_after_sigkill_ends_with_the_uninterrupted_parameters(
    tmp_path, idx_folder, fresh_flags, monkeypatch
):
    command = [
        "--model=lenet_slim",  # The smallest network: the mechanism, not the model, is tested.
        "--method=eif",  # The stream engine, with the filter's state in the checkpoint.
        f"--dataset=idx:{idx_folder}",
        f"--steps={STEPS}",
        f"--batch_size={BATCH}",
        f"--checkpoint_every_steps={EVERY}",
        "--progress=false",
    ]
    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = _cli(*command, f"--workdir={killed}")
    deadline = time.time() + 300
    checkpoints = killed / "checkpoints"
    while time.time() < deadline:  # Kill once a checkpoint past the start exists.
        if checkpoints.exists() and any(
            d.isdigit() and int(d) >= 2 * EVERY for d in os.listdir(checkpoints)
        ):
            break
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "summary.json").exists()

    def rerun(workdir):  # The same command again, in this process (what app.run calls).
        flags.FLAGS.unparse_flags()
        train.main(cli.parse_flags(["experiments.train", *command, f"--workdir={workdir}"]))

    # Resumed from the newest checkpoint the killed process completed: the steps before
    # it are not trained again.
    newest = max(int(d) for d in os.listdir(checkpoints) if d.isdigit())
    trained, run_block = [], runners.EngineRunner.run_block

    def counting_run_block(self, loop_state, chunks):
        trained.extend(chunk for _, _, chunk in chunks)
        return run_block(self, loop_state, chunks)

    with monkeypatch.context() as patch:
        patch.setattr(runners.EngineRunner, "run_block", counting_run_block)
        rerun(killed)
    assert 2 * EVERY <= newest < STEPS and trained == list(range(newest, STEPS))
    rerun(full)  # The uninterrupted run.
    step_a, params_a = _final_params(full)
    step_b, params_b = _final_params(killed)
    assert step_a == step_b == STEPS
    chex.assert_trees_all_equal(params_a, params_b)
    with open(killed / "summary.json") as f:
        summary = json.load(f)
    assert summary["instances_trained"] == STEPS * round(0.3 * BATCH)  # r_set 0.3 a chunk.
    with open(killed / "metrics.jsonl") as f:
        steps = [r["step"] for r in map(json.loads, f) if "loss" in r]
    assert steps == list(range(1, STEPS + 1))  # Replayed steps are not logged twice.
