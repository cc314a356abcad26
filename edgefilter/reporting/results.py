"""Runs of several methods, budgets and seeds summarised: means, 95% intervals, a table.

Per method and budget (:func:`summarize`), over its seeds:

* **final accuracy**: the test accuracy at the run's end (``summary.json``);
* **last-five accuracy**: the mean test accuracy of the run's last five evaluations
  (epoch ends; fewer if the run had fewer), which smooths epoch-to-epoch noise;
* **counted reduction**: ``summary.json``'s ``compute.reduction``, 1 - the run's counted
  MACs (or bit-ops) / SGD's on the same stream (analytic, not measured);
* **measured reduction**: 1 - the run's training seconds / the training seconds of the
  ``sgd`` run with the same seed among the runs given (the harness runs them in one
  workdir on one machine); seeds without such an SGD run are left out;
* **time to target**: the training seconds at the first evaluation whose test accuracy
  reaches the target (evaluations happen at epoch ends, so this is resolved to an
  epoch); "not reached" when no evaluation does. Runs whose evaluations do not record
  ``train_time_s`` (written before it was recorded) are left out of it ("untimed"). The
  default target is SGD's mean final accuracy less one point; among runs without an
  ``sgd`` run, the best method's (:func:`default_rule`).

Accuracies and reductions are given as the mean over seeds and the half-width of the 95%
Student-t interval, t_{0.975, n-1} * s / sqrt(n) with s the sample standard deviation of
the n per-seed values (:func:`interval`); with one seed the interval is undefined and
given as None, not invented.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from edgefilter.reporting.runs import Run

CONFIDENCE = 0.95
LAST_EVALUATIONS = 5
# The default target: SGD's final accuracy (mean over seeds) less one point.
DEFAULT_TARGET_MARGIN = 0.01


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean and Student-t interval half-width of ``values`` (one per seed).

    Returns ``{"mean", "half_width", "n", "values"}``; ``half_width`` is
    ``t_{(1+confidence)/2, n-1} * s / sqrt(n)`` (``s`` with n - 1 degrees of freedom),
    None for a single value (no interval can be estimated from one seed).
    """
    x = np.asarray(values, np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"interval needs a non-empty list of numbers, got {values!r}")
    n = len(x)
    half_width = None
    if n > 1:
        t = stats.t.ppf(0.5 + confidence / 2, n - 1)
        half_width = float(t * x.std(ddof=1) / math.sqrt(n))
    return {"mean": float(x.mean()), "half_width": half_width, "n": n, "values": x.tolist()}


def last_accuracy(run: Run, count: int = LAST_EVALUATIONS) -> float:
    """Mean test accuracy of the run's last ``count`` evaluations (all, if fewer)."""
    accuracies = [r["test_accuracy"] for r in run.evaluations][-count:]
    return float(np.mean(accuracies)) if accuracies else float(run.summary["test_accuracy"])


def time_to_target(run: Run, target: float) -> float | None:
    """Training seconds at the run's first evaluation with test accuracy >= ``target``.

    None when no evaluation reaches it. Raises ValueError for a run whose evaluations
    do not record ``train_time_s`` (written before it was recorded).
    """
    for record in run.evaluations:
        if "train_time_s" not in record:
            raise ValueError(f"{run.path}: its evaluations do not record train_time_s")
        if record["test_accuracy"] >= target:
            return float(record["train_time_s"])
    return None


def default_target(runs: Sequence[Run]) -> float:
    """The mean final accuracy of the ``sgd`` runs less ``DEFAULT_TARGET_MARGIN``."""
    sgd = [r.summary["test_accuracy"] for r in runs if r.method == "sgd"]
    if not sgd:
        raise ValueError("no sgd run to take the default target accuracy from; give one")
    return float(np.mean(sgd)) - DEFAULT_TARGET_MARGIN


def default_rule(runs: Sequence[Run]) -> tuple[float, str]:
    """The default target accuracy and its rule, as the table's caption states it.

    :func:`default_target` when an ``sgd`` run is given; without one, the highest mean
    final accuracy of a method and budget less ``DEFAULT_TARGET_MARGIN`` (the time to
    come within a point of the best).
    """
    if any(r.method == "sgd" for r in runs):
        return default_target(runs), f"sgd's mean final accuracy - {DEFAULT_TARGET_MARGIN:g}"
    best = max(
        np.mean([r.summary["test_accuracy"] for r in group]) for group in _groups(runs).values()
    )
    rule = f"no sgd run: the best mean final accuracy - {DEFAULT_TARGET_MARGIN:g}"
    return float(best) - DEFAULT_TARGET_MARGIN, rule


def _groups(runs: Sequence[Run]) -> dict[tuple[str, float | None], list[Run]]:
    groups: dict[tuple[str, float | None], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.method, run.budget), []).append(run)
    return groups


def summarize(runs: Sequence[Run], target: float | None = None) -> dict[str, Any]:
    """The rows (one per method and budget, in first-seen order) and the target used.

    ``target`` (a test accuracy in [0, 1]) defaults to :func:`default_rule`'s. Returns
    ``{"target_accuracy": {"value", "rule"}, "rows": [...]}``; each row holds ``method``,
    ``budget``, ``seeds``, ``final_accuracy``, ``last5_accuracy``, ``counted_reduction``,
    ``measured_reduction`` and ``train_time_s`` (each an :func:`interval`, or None where
    no value exists), ``unit``, ``time_to_target_s`` (``mean`` over the seeds that
    reached the target, how many ``reached``, how many were ``timed``, each timed run's
    value or None) and the runs' ``paths``.
    """
    if not runs:
        raise ValueError("no runs to summarize")
    rule = "given"
    if target is None:
        target, rule = default_rule(runs)
    sgd_time = {r.seed: r.summary["train_time_s"] for r in runs if r.method == "sgd"}
    rows = []
    for (method, budget), group in _groups(runs).items():
        seeds = [r.seed for r in group]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{method} budget {budget}: seeds {seeds} repeat")
        measured = [
            1.0 - r.summary["train_time_s"] / sgd_time[r.seed] for r in group if r.seed in sgd_time
        ]
        timed = [r for r in group if all("train_time_s" in e for e in r.evaluations)]
        times = [time_to_target(r, target) for r in timed]
        reached = [t for t in times if t is not None]
        rows.append(
            {
                "method": method,
                "budget": budget,
                "seeds": seeds,
                "final_accuracy": interval([r.summary["test_accuracy"] for r in group]),
                "last5_accuracy": interval([last_accuracy(r) for r in group]),
                "counted_reduction": interval([r.summary["compute"]["reduction"] for r in group]),
                "unit": group[0].summary["compute"]["unit"],
                "measured_reduction": interval(measured) if measured else None,
                "train_time_s": interval([r.summary["train_time_s"] for r in group]),
                "time_to_target_s": {
                    "mean": float(np.mean(reached)) if reached else None,
                    "reached": len(reached),
                    "timed": len(timed),
                    "values": times,
                },
                "paths": [r.path for r in group],
            }
        )
    return {"target_accuracy": {"value": target, "rule": rule}, "rows": rows}


def _accuracy(cell: dict[str, Any]) -> str:
    if cell["half_width"] is None:
        return f"{100 * cell['mean']:.2f} ± n/a"
    return f"{100 * cell['mean']:.2f} ± {100 * cell['half_width']:.2f}"


def _reduction(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    if cell["half_width"] is None:
        return f"{cell['mean']:.3f}"
    return f"{cell['mean']:.3f} ± {cell['half_width']:.3f}"


def _time_to_target(cell: dict[str, Any]) -> str:
    if cell["timed"] == 0:
        return "untimed"
    if cell["reached"] == 0:
        return "not reached"
    shown = f"{cell['mean']:.1f}"
    timed = cell["timed"]
    return shown if cell["reached"] == timed else f"{shown} ({cell['reached']}/{timed} seeds)"


def markdown(results: dict[str, Any], title: str) -> str:
    """The table of :func:`summarize`'s ``results``, under ``title`` and a caption."""
    target = results["target_accuracy"]
    lines = [
        title,
        "",
        f"Accuracy in %: mean ± half-width of the {CONFIDENCE:.0%} Student-t interval over "
        "seeds (n/a: one seed, no interval). Last 5: each run's mean over its last "
        f"{LAST_EVALUATIONS} evaluations (epoch ends). Counted reduction: analytic, against "
        "SGD on the same stream. Measured reduction: 1 - training seconds / those of SGD "
        "with the same seed in this harness's workdir (evaluation, checkpointing and "
        "compilation excluded). Time to target: training seconds at the first evaluation "
        f"with test accuracy >= {100 * target['value']:.2f}% ({target['rule']}), mean over "
        "the seeds that reached it.",
        "",
        "| method | budget | seeds | final acc (%) | last-5 acc (%) | counted red. "
        "| measured red. | train time (s) | time to target (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        budget = "-" if r["budget"] is None else f"{r['budget']:g}"
        seeds = len(r["seeds"])
        lines.append(
            f"| {r['method']} | {budget} | {seeds} | {_accuracy(r['final_accuracy'])} "
            f"| {_accuracy(r['last5_accuracy'])} "
            f"| {r['counted_reduction']['mean']:.3f} ({r['unit']}) "
            f"| {_reduction(r['measured_reduction'])} | {r['train_time_s']['mean']:.1f} "
            f"| {_time_to_target(r['time_to_target_s'])} |"
        )
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], workdir: str, title: str, config: dict[str, Any]) -> str:
    """Writes ``results.md`` and ``results.json`` (with ``config``) to ``workdir``."""
    text = markdown(results, title)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"title": title, "config": config, **results}, f, indent=2)
    return text
