"""The report over any set of runs (edgefilter.reporting.report, experiments.report), on
hand-made run folders: which runs are found and how they are labelled, report.md and its
figures, and the command's refusals."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np
import pytest
from absl import flags

from edgefilter.reporting import report, results
from edgefilter.training import snapshots


@pytest.mark.parametrize(
    "config, label",
    [
        ({"method": "eif", "eif_weighted": False, "r_set": 0.3}, ("eif_unweighted", 0.3)),
        (  # The variant with the most matching flags.
            {"method": "eif", "eif_control": "argmax", "eif_random_probes": 0,
             "eif_weighted": False, "r_set": 0.5},
            ("eif_argmax_unweighted", 0.5),
        ),
        ({"method": "eif", "eif_weighted": True, "r_set": 0.4}, ("eif", 0.4)),
        ({"method": "sgd", "r_set": 0.3}, ("sgd", None)),  # No budget flag.
        ({"method": "smd", "budget": 0.5}, ("smd", 0.5)),
    ],
)  # fmt: skip
def test_a_run_is_labelled_by_the_variant_its_config_holds(config, label):
    assert report.label_of(config) == label


def _write_run(
    folder: pathlib.Path,
    config: dict[str, Any],
    accuracy: float,
    records: list[dict[str, Any]] = (),
    **summary: Any,
) -> str:
    """A finished run: summary.json and metrics.jsonl with two timed evaluations."""
    folder.mkdir(parents=True)
    evaluations = [
        {"step": 10, "test_accuracy": accuracy - 0.1, "epoch": 1.0, "train_time_s": 5.0},
        {"step": 20, "test_accuracy": accuracy, "epoch": 2.0, "train_time_s": 10.0},
    ]
    body = {
        "config": {"model": "lenet", "dataset": "fashion_mnist", "epochs": 2.0, "seed": 0,
                   "bits": 32, "batch_size": 64, **config},
        "test_accuracy": accuracy,
        "compute": {"reduction": 0.0 if config["method"] == "sgd" else 0.6, "unit": "MAC"},
        "train_time_s": 10.0,
        **summary,
    }  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(body))
    lines = [json.dumps(r) + "\n" for r in [*records, *evaluations]]
    (folder / "metrics.jsonl").write_text("".join(lines))
    return str(folder)


def _windows(ratio: float) -> list[dict[str, Any]]:
    return [
        {"step": s, "eif/threshold": 1.0, "eif/main_loss": 2.0,
         "eif/predicted_high_fraction": 0.3, "eif/wrong_prediction_ratio": ratio}
        for s in (5, 10)
    ]  # fmt: skip


@pytest.fixture
def harness_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A harness workdir (sgd, eif, eif_unweighted, eif_emp), a diverged run in it."""
    root = tmp_path / "h"
    _write_run(root / "sgd" / "s0", {"method": "sgd", "r_set": 0.3}, 0.90)
    _write_run(root / "sgd" / "s1", {"method": "sgd", "r_set": 0.3, "seed": 1}, 0.92)
    eif = _write_run(
        root / "eif" / "b0.3" / "s0", {"method": "eif", "r_set": 0.3}, 0.89, _windows(0.1)
    )
    image = np.zeros((4, 28, 28, 1), np.uint8)
    snapshots.write(
        eif,
        snapshots.Snapshot(0, 1, 0.0, image, np.zeros(4), np.ones(4, bool),
                           np.asarray([True, False, False, True]), np.zeros(4, np.float32)),
    )  # fmt: skip
    config = {"method": "eif", "eif_weighted": False, "r_set": 0.3}
    _write_run(root / "eif_unweighted" / "b0.3" / "s0", config, 0.85, _windows(0.2))
    emp = {"policy": "topk", "layers": [
        {"name": "Conv_0", "channels": 20, "pruned": False, "kept": 20},
        {"name": "Conv_1", "channels": 50, "pruned": True, "kept": 25}]}  # fmt: skip
    counts = [{"step": 2, "emp/kept_channels/Conv_0": 20, "emp/kept_channels/Conv_1": 25}]
    _write_run(root / "eif_emp" / "b0.3" / "s0", {"method": "eif_emp", "r_set": 0.3}, 0.88,
               counts, emp=emp)  # fmt: skip
    diverged = root / "eif" / "b0.5" / "s0"
    diverged.mkdir(parents=True)
    (diverged / "summary.json").write_text(json.dumps({"diverged": {}, "test_accuracy": None}))
    return root


def test_runs_are_found_labelled_and_told_apart(harness_dir, tmp_path):
    # A lone 8-bit run of the same label and seed as the harness's 32-bit eif run.
    lone = _write_run(tmp_path / "eif8", {"method": "eif", "r_set": 0.3, "bits": 8}, 0.87)
    found, left_out = report.find_runs([str(harness_dir), lone, str(harness_dir / "sgd")])
    labels = sorted((r.label, r.seed) for r in found)
    assert labels == [
        ("eif [bits=32] b0.3", 0),
        ("eif [bits=8] b0.3", 0),
        ("eif_emp b0.3", 0),
        ("eif_unweighted b0.3", 0),
        ("sgd", 0),
        ("sgd", 1),  # Found twice (under both paths given), reported once.
    ]
    assert left_out == [str(harness_dir / "eif" / "b0.5" / "s0")]
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        report.find_runs([str(tmp_path / "missing")])


def test_the_report_holds_the_table_and_every_figure_the_runs_have_data_for(harness_dir):
    found, left_out = report.find_runs([str(harness_dir)])
    stale = harness_dir / report.FIGURES / "stale.png"
    stale.parent.mkdir()
    stale.write_text("from an earlier report")
    path = report.write(found, str(harness_dir), left_out=left_out)
    text = pathlib.Path(path).read_text()
    assert path == str(harness_dir / "report.md")
    assert text.startswith("# Report\n\n5 runs: lenet on fashion_mnist, 2 epochs.\n")
    # Target: sgd's mean final accuracy (0.90 + 0.92) / 2 - 0.01 = 90.00%.
    assert ">= 90.00% (sgd's mean final accuracy - 0.01)" in text
    assert "| eif_unweighted | 0.3 | 1 | 85.00 ± n/a |" in text
    stems = [
        "accuracy_vs_compute",
        "accuracy_vs_time",
        "kept_fraction",
        "threshold_eif_b0.3",
        "threshold_eif_unweighted_b0.3",
        "wrong_prediction_ratio",
        "instances_eif_b0.3",
        "kept_channels_eif_emp_b0.3",
    ]
    assert [line[2 : line.index("]")] for line in text.splitlines() if line.startswith("![")] == (
        stems
    )
    written = sorted(os.listdir(harness_dir / report.FIGURES))
    assert written == sorted(f"{s}.{ext}" for s in stems for ext in ("png", "svg"))
    assert f"* `{harness_dir / 'eif' / 'b0.5' / 's0'}`" in text  # Left out, and named.
    assert not [p for p in os.listdir(harness_dir) if p.startswith(".report-")]


def test_without_an_sgd_run_the_target_is_the_best_mean_final_accuracy_less_a_point(
    harness_dir,
):
    found, _ = report.find_runs([str(harness_dir / "eif"), str(harness_dir / "eif_unweighted")])
    # eif 0.89 and eif_unweighted 0.85: the best less 0.01.
    assert results.default_rule(found) == (
        pytest.approx(0.88),
        "no sgd run: the best mean final accuracy - 0.01",
    )


@pytest.fixture
def report_main():
    from experiments import report as report_cli  # Defines the absl flags.

    yield report_cli
    flags.FLAGS.unparse_flags()


def _main(report_cli, capsys, args: list[str]) -> tuple[int, str]:
    argv = flags.FLAGS(["report", *args])
    with pytest.raises(SystemExit) as exit_info:
        report_cli.main(argv)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/missing"], "'{tmp}/missing' is not a folder"),
        (["{tmp}/empty"], "no finished run (a folder with summary.json) under {tmp}/empty"),
        (["{runs}", "--out={tmp}/file/out"], "--out='{tmp}/file/out' is invalid"),
        (["{runs}", "--target_accuracy=0"], "--target_accuracy=0.0 is invalid"),
        ([], "give the folders to report on"),
    ],
)
def test_the_command_refuses_bad_input_with_one_line_and_exit_2(
    report_main, harness_dir, tmp_path, capsys, args, message
):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    where = {"tmp": str(tmp_path), "runs": str(harness_dir)}
    code, err = _main(report_main, capsys, [a.format(**where) for a in args])
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert message.format(**where) in err, err
    assert (
        not (harness_dir / "report.md").exists() and not (tmp_path / "empty" / "report.md").exists()
    )


def test_the_command_writes_beside_the_first_folder_by_default(report_main, harness_dir, capsys):
    diverged = harness_dir / "eif" / "b0.5"
    report_main.main(flags.FLAGS(["report", str(harness_dir / "sgd"), str(diverged)]))
    captured = capsys.readouterr()
    assert captured.out == f"{harness_dir / 'sgd' / 'report.md'}\n"
    assert (
        captured.err
        == f"warning: {diverged / 's0'} left out: the run diverged or has no final accuracy\n"
    )
    assert (harness_dir / "sgd" / report.FIGURES / "kept_fraction.png").exists()
