"""Tests of the baselines harness: intervals, the table, the figures, resume, bad input.

Run outputs are written by hand (summary.json and metrics.jsonl in tmp_path), except in
the resume test, which trains two tiny runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib

import numpy as np
import pytest
from absl import flags

from edgefilter.reporting import figures, harness, results
from edgefilter.reporting import runs as runs_lib
from edgefilter.training import config as config_lib
from edgefilter.training import loop

T_975_1 = 12.706  # Student t quantile 0.975, 1 degree of freedom (tables).
T_975_2 = 4.303  # ... 2 degrees of freedom.


def test_interval_is_the_student_t_interval_by_hand():
    cell = results.interval([90.0, 91.0, 92.0])
    # mean 91; s = sqrt(((-1)^2 + 0 + 1^2) / 2) = 1; half-width t_{0.975,2} * 1 / sqrt(3).
    assert cell["mean"] == pytest.approx(91.0)
    assert cell["half_width"] == pytest.approx(T_975_2 / math.sqrt(3), rel=1e-3)
    assert cell["n"] == 3 and cell["values"] == [90.0, 91.0, 92.0]
    one = results.interval([0.9])
    assert one["mean"] == 0.9 and one["half_width"] is None  # Undefined for one seed.
    with pytest.raises(ValueError, match="non-empty"):
        results.interval([])


# --- hand-made run outputs ------------------------------------------------------------------


def _write_run(
    root: pathlib.Path,
    method: str,
    budget: float | None,
    seed: int,
    accuracies: list[float],
    seconds_per_epoch: float,
    reduction: float,
    trained: list[int] | None = None,
    windows: list[float] | None = None,
    streamed: int | None = None,
) -> runs_lib.Run:
    """A finished run: one evaluation per epoch (10 chunks each), chunk and window records."""
    path = root / harness.run_dir("", method, budget, seed)
    path.mkdir(parents=True)
    records = []
    for i, k in enumerate(trained or [], 1):
        records.append({"step": i, "trained": k, "loss": 1.0})
    for i, fraction in enumerate(windows or [], 1):
        records.append({"step": 5 * i, "eif/predicted_high_fraction": fraction, "eif/r_th": 0.3})
    for epoch, accuracy in enumerate(accuracies, 1):
        records.append(
            {
                "step": 10 * epoch,
                "test_accuracy": accuracy,
                "test_loss": 0.5,
                "epoch": float(epoch),
                "train_time_s": seconds_per_epoch * epoch,
            }
        )
    summary = {
        "config": {"method": method, "seed": seed, "batch_size": 64},
        "test_accuracy": accuracies[-1],
        "compute": {"reduction": reduction, "unit": "MAC"},
        "train_time_s": seconds_per_epoch * len(accuracies),
    }
    if streamed is not None:
        summary.update(chunks=len(trained or []), instances_streamed=streamed)
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return runs_lib.load(str(path), method, budget, seed)


@pytest.fixture
def hand_runs(tmp_path: pathlib.Path) -> list[runs_lib.Run]:
    return [
        _write_run(tmp_path, "sgd", None, 0, [0.80, 0.84, 0.86, 0.87, 0.88, 0.89], 10.0, 0.0,
                   trained=[64, 64, 40], streamed=168),
        _write_run(tmp_path, "sgd", None, 1, [0.81, 0.85, 0.86, 0.88, 0.88, 0.90], 11.0, 0.0),
        _write_run(tmp_path, "eif", 0.3, 0, [0.78, 0.82, 0.85, 0.86, 0.87, 0.88], 5.0, 0.60,
                   windows=[0.25, 0.30, 0.35]),
        _write_run(tmp_path, "eif", 0.3, 1, [0.77, 0.80, 0.83, 0.84, 0.85, 0.86], 4.0, 0.62,
                   windows=[0.28, 0.31]),
        _write_run(tmp_path, "emp", None, 0, [0.70, 0.75, 0.78, 0.80, 0.82, 0.83], 10.5, 0.20,
                   trained=[64, 32]),
    ]  # fmt: skip


def test_summarize_against_hand_computed_rows(hand_runs):
    summary = results.summarize(hand_runs, target=0.87)
    assert summary["target_accuracy"] == {"value": 0.87, "rule": "given"}
    sgd, eif, emp = summary["rows"]
    assert [(r["method"], r["budget"], r["seeds"]) for r in summary["rows"]] == [
        ("sgd", None, [0, 1]),
        ("eif", 0.3, [0, 1]),
        ("emp", None, [0]),
    ]
    # eif: final 0.88, 0.86; s = 0.02 / sqrt(2); half-width t_{0.975,1} * s / sqrt(2).
    assert eif["final_accuracy"]["mean"] == pytest.approx(0.87)
    assert eif["final_accuracy"]["half_width"] == pytest.approx(T_975_1 * 0.01, rel=1e-3)
    # Last five evaluations: seed 0 (0.82 + 0.85 + 0.86 + 0.87 + 0.88) / 5 = 0.856,
    # seed 1 (0.80 + 0.83 + 0.84 + 0.85 + 0.86) / 5 = 0.836.
    assert eif["last5_accuracy"]["values"] == pytest.approx([0.856, 0.836])
    assert eif["counted_reduction"]["mean"] == pytest.approx(0.61)
    # Measured against SGD of the same seed: 1 - 30/60 and 1 - 24/66.
    assert eif["measured_reduction"]["values"] == pytest.approx([0.5, 1 - 24 / 66])
    assert sgd["measured_reduction"]["values"] == [0.0, 0.0]
    # Time to 0.87: sgd at epoch 4 (40 s, 44 s); eif seed 0 at epoch 5 (25 s), seed 1 never.
    assert sgd["time_to_target_s"] == {
        "mean": 42.0, "reached": 2, "timed": 2, "values": [40.0, 44.0]
    }  # fmt: skip
    assert eif["time_to_target_s"] == {
        "mean": 25.0, "reached": 1, "timed": 2, "values": [25.0, None]
    }  # fmt: skip
    assert emp["time_to_target_s"]["reached"] == 0 and emp["time_to_target_s"]["mean"] is None
    assert emp["final_accuracy"]["half_width"] is None
    assert emp["measured_reduction"]["values"] == pytest.approx([1 - 63 / 60])
    # The default target: SGD's mean final accuracy (0.89 + 0.90) / 2 less one point.
    default = results.summarize(hand_runs)["target_accuracy"]
    assert default["value"] == pytest.approx(0.885) and "sgd" in default["rule"]


def test_the_table_and_json_from_hand_made_runs(hand_runs, tmp_path: pathlib.Path):
    summary = results.summarize(hand_runs, target=0.87)
    text = results.write(summary, str(tmp_path), "Title line.", {"model": "lenet"})
    assert text == (tmp_path / "results.md").read_text()
    assert text.startswith("Title line.\n") and ">= 87.00% (given)" in text
    # eif: 87.00 ± 100 * 12.706 * 0.01; last five 84.60 ± the same; measured mean
    # (0.5 + 0.6364) / 2 = 0.568 ± 12.706 * (0.1364 / sqrt(2)) / sqrt(2) = 0.866.
    assert (
        "| eif | 0.3 | 2 | 87.00 ± 12.71 | 84.60 ± 12.71 | 0.610 (MAC) | 0.568 ± 0.866 "
        "| 27.0 | 25.0 (1/2 seeds) |"
    ) in text
    # emp, one seed: last five (0.75 + 0.78 + 0.80 + 0.82 + 0.83) / 5; 1 - 63/60.
    assert "| emp | - | 1 | 83.00 ± n/a | 79.60 ± n/a | 0.200 (MAC) | -0.050 | 63.0 " in text
    assert text.rstrip().endswith("| not reached |")
    # A run written before evaluations recorded their time is untimed, not "not reached".
    old = dataclasses.replace(
        hand_runs[4],
        records=tuple(
            {k: v for k, v in r.items() if k != "train_time_s"} for r in hand_runs[4].records
        ),
    )
    untimed = results.markdown(results.summarize([*hand_runs[:4], old], 0.87), "T")
    assert untimed.rstrip().endswith("| untimed |")
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["config"] == {"model": "lenet"} and written["title"] == "Title line."
    assert written["rows"][1]["final_accuracy"]["values"] == [0.88, 0.86]
    assert written["target_accuracy"]["value"] == 0.87


# --- figures ----------------------------------------------------------------------------------


def test_accuracy_vs_compute_has_a_point_per_method_and_budget(hand_runs):
    rows = results.summarize(hand_runs, target=0.87)["rows"]
    figure = figures.accuracy_vs_compute(rows)
    (axes,) = figure.axes
    assert [c.get_label() for c in axes.containers] == ["sgd", "eif", "emp"]
    eif = axes.containers[1]
    line, _, (bars,) = eif.lines
    # errorbar keeps its data as object arrays.
    np.testing.assert_allclose(np.asarray(line.get_xdata(), float), [1 - 0.61])
    np.testing.assert_allclose(np.asarray(line.get_ydata(), float), [87.0])
    (segment,) = bars.get_segments()  # The 95% interval: 87 -+ 12.706.
    np.testing.assert_allclose(segment[:, 1], [87 - 12.706, 87 + 12.706], atol=1e-2)
    assert len(axes.containers[2].lines[0].get_xdata()) == 1
    assert "fraction of SGD's" in axes.get_xlabel() and "MAC" in axes.get_xlabel()
    assert axes.get_ylabel() == "final test accuracy (%)"


def test_accuracy_vs_time_draws_one_curve_per_run(hand_runs, tmp_path: pathlib.Path):
    figure = figures.accuracy_vs_time(hand_runs)
    (axes,) = figure.axes
    assert len(axes.lines) == 5
    np.testing.assert_allclose(axes.lines[2].get_xdata(), [5, 10, 15, 20, 25, 30])
    np.testing.assert_allclose(axes.lines[2].get_ydata(), [78, 82, 85, 86, 87, 88])
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["sgd", "eif b0.3", "emp"]
    assert axes.lines[0].get_color() == axes.lines[1].get_color()  # Both sgd.
    assert axes.get_xlabel().startswith("training time (s") and "accuracy (%)" in axes.get_ylabel()
    paths = figures.save(figure, str(tmp_path / "figs" / "time"))
    assert [os.path.basename(p) for p in paths] == ["time.png", "time.svg"]
    assert pathlib.Path(paths[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in pathlib.Path(paths[1]).read_text()


def test_kept_fraction_per_window_for_the_filter_per_chunk_otherwise(hand_runs):
    figure = figures.kept_fraction([hand_runs[0], hand_runs[2], hand_runs[4]])
    (axes,) = figure.axes
    sgd, eif, emp = axes.lines
    np.testing.assert_allclose(eif.get_xdata(), [5, 10, 15])
    np.testing.assert_allclose(eif.get_ydata(), [0.25, 0.30, 0.35])
    np.testing.assert_allclose(sgd.get_ydata(), [1.0, 1.0, 1.0])  # The last streamed 40.
    np.testing.assert_allclose(emp.get_ydata(), [1.0, 0.5])  # trained / batch size 64.
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [
        "sgd (per chunk)",
        "eif b0.3 (per window)",
        "emp (per chunk)",
    ]
    assert axes.get_ylabel() == "kept fraction of the stream" and "chunks" in axes.get_xlabel()


# --- planning, resume, progress -------------------------------------------------------------


def _tiny_base(**overrides) -> config_lib.TrainConfig:
    values = dict(
        model="lenet_slim",
        dataset="fashion_mnist",
        steps=4,
        batch_size=16,
        checkpoint_every_steps=2,
        log_every_steps=1,
        eval_batch_size=100,
        block_chunks=2,
    )
    values.update(overrides)
    return config_lib.TrainConfig(**values)


def test_plan_runs_sgd_first_and_each_budget_of_each_method_per_seed(tmp_path: pathlib.Path):
    base = config_lib.resolve(_tiny_base())
    jobs = harness.plan(base, ["eif", "emp"], [0.3, 0.5], [0, 1], str(tmp_path))
    assert [j.label for j in jobs] == [
        "sgd s0", "eif b0.3 s0", "eif b0.5 s0", "emp s0",
        "sgd s1", "eif b0.3 s1", "eif b0.5 s1", "emp s1",
    ]  # fmt: skip
    assert jobs[2].workdir == str(tmp_path / "eif" / "b0.5" / "s0")
    assert jobs[3].workdir == str(tmp_path / "emp" / "s0")
    flat = config_lib.as_flags(base)
    for job in jobs:  # Only the method, its budget and the seed differ from the base.
        changed = {k for k, v in config_lib.as_flags(job.config).items() if v != flat[k]}
        assert changed <= {"method", "r_set", "eif_batch_size", "eif_probe_size", "seed"}
    assert jobs[2].config.filter.r_set == 0.5 and jobs[6].config.seed == 1
    assert not os.listdir(tmp_path)  # Planning writes nothing.


def test_every_harness_name_with_a_budget_is_a_valid_config():
    for name, flag in harness.BUDGET_FLAG.items():
        residual = name in ("sd", "e2train")  # Methods of the CIFAR ResNets only.
        base = _tiny_base(model="resnet20", dataset="cifar10") if residual else _tiny_base()
        config = harness.config_of(base, name, 0.4 if flag else None, 3)
        if flag is not None:
            assert config_lib.as_flags(config)[flag] == 0.4, name
        assert config.seed == 3


@pytest.mark.parametrize(
    "methods, budgets, seeds, message",
    [
        (["sgd", "no_such_method"], [0.3], [0], r"--methods: unknown \['no_such_method'\]"),
        ([], [0.3], [0], "--methods is empty"),
        (["eif", "eif"], [0.3], [0], "--methods: eif given more than once"),
        (["eif"], [], [0], "--budgets is empty"),
        (["eif"], [0.3, 1.5], [0], r"--budgets: 1.5 is invalid: each budget lies in \(0, 1\]"),
        (["eif"], [0.0], [0], "--budgets: 0.0 is invalid"),
        (["sgd"], [0.3], [], "--seeds is empty"),
        (["sgd"], [0.3], [1, 1], "--seeds: 1 given more than once"),
    ],
)
def test_bad_lists_are_refused(tmp_path, methods, budgets, seeds, message):
    with pytest.raises(ValueError, match=message):
        harness.plan(_tiny_base(), methods, budgets, seeds, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_eta_is_the_mean_duration_times_the_runs_left():
    assert harness.eta([10.0, 20.0], 3) == "3 to train, ETA 0m45s"
    assert harness.eta([], 4) == "4 to train, ETA after the first"


class _Killed(Exception):
    pass


def test_a_restart_skips_the_finished_run_and_resumes_the_killed_one(
    tmp_path: pathlib.Path, tiny_dataset, monkeypatch
):
    # The harness's part of a resume: it skips what finished and hands the rest back to
    # the training loop, whose own resume from a checkpoint (same parameters as an
    # uninterrupted run) tests/test_experiments_train.py checks through a SIGKILL. A
    # stand-in loop writes what a finished run writes, and dies on seed 1's first try.
    workdir = str(tmp_path / "h")
    jobs = harness.plan(config_lib.resolve(_tiny_base()), ["sgd"], [], [0, 1], workdir)
    calls: list[tuple[str, int]] = []

    def train_and_evaluate(config, path, **kwargs):
        calls.append((path, config.seed))
        if calls.count((path, 1)) == 1 and config.seed == 1:
            os.makedirs(path, exist_ok=True)  # Killed mid-run: no summary.json yet.
            raise _Killed
        os.makedirs(path, exist_ok=True)
        summary = {"config": config_lib.as_flags(config), "test_accuracy": 0.5}
        with open(os.path.join(path, "metrics.jsonl"), "w") as f:
            f.write(json.dumps({"step": 4, "test_accuracy": 0.5, "epoch": 1.0}) + "\n")
        with open(os.path.join(path, "summary.json"), "w") as f:
            json.dump(summary, f)
        return summary

    monkeypatch.setattr(loop, "train_and_evaluate", train_and_evaluate)
    lines: list[str] = []
    with pytest.raises(_Killed):
        harness.run(jobs, tiny_dataset, log=lines.append, show_progress=False)
    assert (
        lines[0] == f"[1/2] sgd s0: training in {jobs[0].workdir} (2 to train, ETA after the first)"
    )
    assert lines[1].startswith("[1/2] sgd s0: done in ") and "1 to train, ETA " in lines[1]
    assert lines[2].startswith("[2/2] sgd s1: training in ")
    assert harness.is_finished(jobs[0]) and not harness.is_finished(jobs[1])

    lines.clear()
    finished = harness.run(jobs, tiny_dataset, log=lines.append, show_progress=False)
    assert lines[0] == "[1/2] sgd s0: finished before, skipped"
    assert calls == [(jobs[0].workdir, 0), (jobs[1].workdir, 1), (jobs[1].workdir, 1)]
    assert [(r.method, r.seed) for r in finished] == [("sgd", 0), ("sgd", 1)]
    assert harness.is_finished(jobs[1])


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture
def baselines_main():
    from experiments import baselines  # Defines the absl flags.

    yield baselines
    flags.FLAGS.unparse_flags()


@pytest.mark.parametrize(
    "argument, message",
    [
        ("--methods=sgd,no_such_method", "--methods: unknown ['no_such_method']"),
        ("--budgets=0.3,1.2", "--budgets: 1.2 is invalid"),
        ("--budgets=0.3,x", "--budgets='0.3,x' is invalid"),
        ("--seeds=0,0", "--seeds: 0 given more than once"),
        ("--seeds=", "--seeds is empty"),
        ("--r_set=0.2", "--r_set is set by the harness"),
        ("--target_accuracy=0", "--target_accuracy=0.0 is invalid"),
    ],
)
def test_the_command_refuses_bad_input_with_one_line_and_exit_2(
    baselines_main, tmp_path, capsys, argument, message
):
    workdir = tmp_path / "w"
    flags.FLAGS(["baselines", f"--workdir={workdir}", argument])
    with pytest.raises(SystemExit) as exit_info:
        baselines_main.main(["baselines"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not workdir.exists()


def test_the_command_refuses_a_workdir_it_cannot_write(baselines_main, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    flags.FLAGS(["baselines", f"--workdir={tmp_path / 'file' / 'w'}"])
    with pytest.raises(SystemExit) as exit_info:
        baselines_main.main(["baselines"])
    assert exit_info.value.code == 2
    assert "is a file, so the folder cannot be made" in capsys.readouterr().err


def test_a_run_recorded_before_a_setting_existed_is_finished_at_its_default(tmp_path):
    (job,) = harness.plan(config_lib.resolve(_tiny_base()), ["sgd"], [], [0], str(tmp_path))
    os.makedirs(job.workdir)

    def finished(recorded: dict, job: harness.Job = job) -> bool:
        with open(os.path.join(job.workdir, "summary.json"), "w") as f:
            json.dump({"config": recorded}, f)
        return harness.is_finished(job)

    flat = json.loads(json.dumps(config_lib.as_flags(job.config)))
    older = {k: v for k, v in flat.items() if k != "snapshots"}  # Written before it existed.
    assert finished(flat) and finished(older)
    assert not finished({**flat, "steps": 5})  # Another run.
    assert not finished({**flat, "no_such_setting": 1})
    # A job whose snapshots are not the default's is not the older run.
    other = job._replace(config=dataclasses.replace(job.config, snapshots=0))
    assert not finished(older, other)
