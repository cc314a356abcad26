"""A report over any set of finished runs: report.md with the table and the figures.

``python -m experiments.report WORKDIR...`` calls :func:`find_runs` and :func:`write`.

* :func:`find_runs`: every finished run (a folder holding ``summary.json``) under the
  given folders: a run's own workdir, a harness's (``experiments.baselines``), or any
  folder of them. Each run is reported under a label read from its recorded config
  (:func:`label_of`): the named variant of ``comparison.VARIANTS`` whose flags it has
  (``eif_unweighted`` for ``--method=eif --eif_weighted=false``), with the value of that
  variant's budget flag (``harness.BUDGET_FLAG``), as the harness names its runs. Runs
  of one label and seed that differ in other settings (``--bits=8`` and ``--bits=32``)
  get those settings added to the label (or, where their settings are the same, their
  folders). A diverged run is left out and named.
* :func:`write`: ``<out>/report.md`` (the runs' table, :mod:`edgefilter.reporting.results`,
  then the figures with what each shows) and ``<out>/report_figures/*.png|svg``:
  accuracy against remaining computation (Fig. 6/8), against training time, the kept
  fraction; for each label with filter windows, its first seed's ``T_l`` tracking
  (Fig. 10), the instances it kept and dropped where snapshots were saved (Fig. 13);
  the filter's wrong-prediction ratio of all runs with windows (Fig. 11); for each
  label with EMP records, its first seed's kept channels per layer (Fig. 14). A figure
  with no data among the runs is not drawn. Everything is written to a temporary
  folder in ``out`` first and moved into place at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from matplotlib.figure import Figure

from edgefilter.reporting import comparison, emp_figures, figures, filter_figures, harness, results
from edgefilter.reporting import runs as runs_lib
from edgefilter.training import config as config_lib
from edgefilter.training import snapshots as snapshots_lib

FIGURES = "report_figures"
# Settings that say nothing about what a run computed: never used to tell runs apart.
_INCIDENTAL = frozenset(
    {
        "seed",
        "data_dir",
        "checkpoint_every_steps",
        "log_every_steps",
        "eval_batch_size",
        "block_chunks",
        "xla_cpu",
        "snapshots",
    }
)
# The settings that tell runs of one label apart first (then any they differ in).
PREFERRED = ("model", "dataset", "bits", "batch_size", "steps", "epochs")
_NOT_A_RUN = frozenset({"checkpoints", snapshots_lib.FOLDER, FIGURES, "figures"})


def label_of(config: dict[str, Any]) -> tuple[str, float | None]:
    """``(method, budget)`` of a run's recorded config (``summary.json``'s ``config``).

    The method is the variant of ``comparison.VARIANTS`` with the most flags, all of
    which the config holds (a plain method matches its own name); the budget is the
    config's value of that variant's budget flag (``harness.BUDGET_FLAG``), None for a
    method without one.
    """
    matches = [
        (len(flags), name)
        for name, flags in comparison.VARIANTS.items()
        if all(config.get(k) == v for k, v in flags.items())
    ]
    if not matches:
        return str(config.get("method", "?")), None
    _, name = max(matches, key=lambda m: m[0])  # First-listed among equals.
    flag = harness.BUDGET_FLAG.get(name)
    budget = config.get(flag) if flag else None
    return name, None if budget is None else float(budget)


def _run_folders(root: str) -> list[str]:
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in _NOT_A_RUN)
        if "summary.json" in files:
            found.append(folder)
            subfolders[:] = []  # A run's workdir holds no other run.
    return found


def _usable(summary: dict[str, Any]) -> bool:
    return (
        "diverged" not in summary
        and summary.get("test_accuracy") is not None
        and "compute" in summary
        and "train_time_s" in summary
    )


def _filled(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the default of every setting it lacks (written before it existed)."""
    defaults = json.loads(json.dumps(config_lib.as_flags(config_lib.TrainConfig())))
    return {**defaults, **config}


def _suffixes(group: list[runs_lib.Run]) -> list[str]:
    """What tells apart runs of one label that repeat a seed, tried in this order: the
    main settings they differ in (``PREFERRED``), all settings they differ in, the
    folder holding each (relative to the one holding all), each folder."""
    configs = [_filled(r.summary.get("config", {})) for r in group]
    differ = sorted(
        k
        for k in set().union(*configs)
        if k not in _INCIDENTAL and len({json.dumps(c.get(k)) for c in configs}) > 1
    )
    preferred = [k for k in PREFERRED if k in differ]
    candidates = [
        [",".join(f"{k}={c.get(k)}" for k in keys) for c in configs]
        for keys in (preferred, differ)
        if keys
    ]
    parents = [os.path.dirname(r.path) for r in group]
    common = os.path.commonpath(parents)
    candidates.append([os.path.relpath(p, common) for p in parents])
    common = os.path.commonpath([r.path for r in group])
    candidates.append([os.path.relpath(r.path, common) for r in group])
    for suffixes in candidates:
        if len(set(zip(suffixes, (r.seed for r in group), strict=True))) == len(group):
            return suffixes
    raise AssertionError("distinct folders always tell runs apart")


def _distinguish(found: list[runs_lib.Run]) -> list[runs_lib.Run]:
    """Adds to the method of runs sharing a label and a seed what tells them apart."""
    groups: dict[tuple[str, float | None], list[runs_lib.Run]] = {}
    for run in found:
        groups.setdefault((run.method, run.budget), []).append(run)
    out = []
    for group in groups.values():
        if len({r.seed for r in group}) == len(group):
            out += group
            continue
        for run, suffix in zip(group, _suffixes(group), strict=True):
            out.append(dataclasses.replace(run, method=f"{run.method} [{suffix}]"))
    return out


def find_runs(paths: Sequence[str]) -> tuple[list[runs_lib.Run], list[str]]:
    """The finished runs under ``paths`` (each once), and the run folders left out.

    A folder left out holds a run that diverged, or a ``summary.json`` without the
    table's values. Raises FileNotFoundError for a path that is not a folder.
    """
    folders: dict[str, None] = {}
    for path in paths:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path!r} is not a folder: give run or harness workdirs")
        for folder in _run_folders(path):
            folders.setdefault(os.path.realpath(folder))
    found, left_out = [], []
    for folder in folders:
        run = runs_lib.load(folder)
        if not _usable(run.summary):
            left_out.append(folder)
            continue
        method, budget = label_of(run.summary.get("config", {}))
        found.append(dataclasses.replace(run, method=method, budget=budget))
    return _distinguish(found), left_out


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", label).strip("_")


def _first_seeds(runs: Sequence[runs_lib.Run], has: Callable[[runs_lib.Run], bool]) -> list:
    """Per label, in first-seen order, the run of the lowest seed for which ``has``."""
    chosen: dict[str, runs_lib.Run] = {}
    for run in sorted(runs, key=lambda r: r.seed):
        if has(run) and run.label not in chosen:
            chosen[run.label] = run
    order = list(dict.fromkeys(r.label for r in runs))
    return [chosen[label] for label in order if label in chosen]


def _figures(runs: Sequence[runs_lib.Run], rows: list[dict]) -> list[tuple[str, str, Figure]]:
    """``(file stem, caption, figure)`` of every figure the runs have data for."""
    drawn = [
        (
            "accuracy_vs_compute",
            "Final test accuracy against the counted computation left, per method and "
            "budget (the paper's Fig. 6 and 8).",
            figures.accuracy_vs_compute(rows),
        )
    ]
    if any(r.evaluations and "train_time_s" in r.evaluations[0] for r in runs):
        caption = "Test accuracy at each evaluation against training seconds, per run."
        drawn.append(("accuracy_vs_time", caption, figures.accuracy_vs_time(runs)))
    caption = "Fraction of the stream kept for training, per filter window or per chunk."
    drawn.append(("kept_fraction", caption, figures.kept_fraction(runs)))
    for run in _first_seeds(runs, lambda r: any("eif/threshold" in w for w in r.windows)):
        caption = (
            f"{run.label}, seed {run.seed}: the loss threshold T_l, the main loss and the "
            "kept fraction per filter window (Fig. 10)."
        )
        figure = filter_figures.threshold_tracking(run)
        drawn.append((f"threshold_{_slug(run.label)}", caption, figure))
    judged = [r for r in runs if any("eif/wrong_prediction_ratio" in w for w in r.windows)]
    if judged:
        caption = (
            "The filter's wrong-prediction ratio per window, every run with a filter; "
            "eif against eif_unweighted compares the weighted loss of Eq. 6-7 (Fig. 11)."
        )
        figure = filter_figures.wrong_prediction_ratio(judged)
        drawn.append(("wrong_prediction_ratio", caption, figure))
    for run in _first_seeds(runs, lambda r: bool(snapshots_lib.load(r.path))):
        caption = f"{run.label}, seed {run.seed}: instances kept and dropped (Fig. 13)."
        figure = filter_figures.instance_grid(snapshots_lib.load(run.path))
        drawn.append((f"instances_{_slug(run.label)}", caption, figure))
    for run in _first_seeds(runs, lambda r: bool(emp_figures.kept_channel_series(r))):
        caption = f"{run.label}, seed {run.seed}: EMP's kept channels per conv layer (Fig. 14)."
        drawn.append((f"kept_channels_{_slug(run.label)}", caption, emp_figures.kept_channels(run)))
    return drawn


def _title(runs: Sequence[runs_lib.Run]) -> str:
    """``"<n> runs: <model> on <dataset>, <length>; ..."``, each setting once."""
    settings = []
    for run in runs:
        config = run.summary["config"]
        steps, epochs = config.get("steps"), config.get("epochs")
        length = f"{steps} steps" if steps else f"{epochs:g} epochs" if epochs else "?"
        settings.append(f"{config.get('model')} on {config.get('dataset')}, {length}")
    return f"{len(runs)} runs: " + "; ".join(dict.fromkeys(settings)) + "."


def markdown(
    runs: Sequence[runs_lib.Run],
    summary: dict[str, Any],
    drawn: Sequence[tuple[str, str]],
    left_out: Sequence[str] = (),
) -> str:
    """report.md: the table, the figures (``(stem, caption)``), the runs and those left out."""
    lines = [
        "# Report",
        "",
        results.markdown(summary, _title(runs)),
        "## Figures",
        "",
    ]
    for stem, caption in drawn:
        lines += [
            f"![{stem}]({FIGURES}/{stem}.png)",
            "",
            f"{caption} ([SVG]({FIGURES}/{stem}.svg))",
            "",
        ]
    lines += ["## Runs", ""]
    lines += [f"* {r.label}, seed {r.seed}: `{r.path}`" for r in runs]
    if left_out:
        lines += ["", "Left out (diverged, or no final accuracy):", ""]
        lines += [f"* `{path}`" for path in left_out]
    return "\n".join(lines) + "\n"


def write(
    runs: Sequence[runs_lib.Run],
    out: str,
    *,
    target: float | None = None,
    left_out: Sequence[str] = (),
) -> str:
    """Writes ``<out>/report.md`` and ``<out>/report_figures/``; returns report.md's path.

    ``target`` is the accuracy the table's time-to-target column uses (default:
    :func:`edgefilter.reporting.results.default_rule`). Raises ValueError for no runs.
    """
    if not runs:
        raise ValueError("no runs to report")
    summary = results.summarize(runs, target)
    drawn = _figures(runs, summary["rows"])
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".report-", dir=out)
    try:
        for stem, _, figure in drawn:
            figures.save(figure, os.path.join(tmp, FIGURES, stem))
        text = markdown(runs, summary, [(stem, caption) for stem, caption, _ in drawn], left_out)
        with open(os.path.join(tmp, "report.md"), "w") as f:
            f.write(text)
        shutil.rmtree(os.path.join(out, FIGURES), ignore_errors=True)
        os.replace(os.path.join(tmp, FIGURES), os.path.join(out, FIGURES))
        os.replace(os.path.join(tmp, "report.md"), os.path.join(out, "report.md"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(out, "report.md")
