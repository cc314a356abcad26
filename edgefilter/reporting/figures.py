"""Figures over run outputs (matplotlib, Agg; saved as PNG and SVG).

Each function takes what :mod:`edgefilter.reporting.runs` and
:mod:`edgefilter.reporting.results` read from run workdirs and returns a
``matplotlib.figure.Figure`` built without pyplot (no global figure state, no display);
:func:`save` writes it as ``<stem>.png`` and ``<stem>.svg``.

* :func:`accuracy_vs_compute`: final test accuracy against the counted computation left
  (1 - counted reduction, as a fraction of SGD's on the same stream), one point per
  method and budget with the 95% interval over seeds as error bars (the paper's Fig. 6
  and 8 plot accuracy against remaining computation the same way);
* :func:`accuracy_vs_time`: test accuracy at each evaluation against the training
  seconds up to it, one curve per run, coloured by method and budget;
* :func:`kept_fraction`: the fraction of the stream kept for training over the run: per
  filter window (``eif/predicted_high_fraction``, the paper's Fig. 10 shows it) for the
  instance filter's methods, per logged chunk (``trained`` / batch size) for the others.

The figures of the filter's workings (Fig. 10, 11, 13) are in
:mod:`edgefilter.reporting.filter_figures`, EMP's kept channels (Fig. 14) in
:mod:`edgefilter.reporting.emp_figures`; they share :func:`new_figure`, :func:`colours`
and :func:`save`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from edgefilter.reporting.runs import Run


def new_figure(size: tuple[float, float] = (6.4, 4.4)) -> Figure:
    """An empty figure on an Agg canvas (no pyplot: no global state, no display)."""
    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _figure() -> tuple[Figure, Any]:
    figure = new_figure()
    return figure, figure.add_subplot()


def colours(labels: Sequence[str]) -> dict[str, Any]:
    """One colour of matplotlib's cycle per distinct label, in first-seen order."""
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    unique = list(dict.fromkeys(labels))
    return {label: cycle[i % len(cycle)] for i, label in enumerate(unique)}


def accuracy_vs_compute(rows: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """Final test accuracy (%) against counted computation left, per method and budget.

    ``rows`` are :func:`edgefilter.reporting.results.summarize`'s rows. Each method is one
    series (legend entry) with one point per budget: x = 1 - mean counted reduction,
    y = mean final accuracy, vertical error bar = the interval's half-width (none with
    one seed).
    """
    figure, axes = _figure()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method in methods:
        mine = sorted(
            (r for r in rows if r["method"] == method),
            key=lambda r: r["counted_reduction"]["mean"],
        )
        x = [1.0 - r["counted_reduction"]["mean"] for r in mine]
        y = [100 * r["final_accuracy"]["mean"] for r in mine]
        errors = [100 * (r["final_accuracy"]["half_width"] or 0.0) for r in mine]
        axes.errorbar(x, y, yerr=errors, marker="o", capsize=3, label=method)
        for r, xi, yi in zip(mine, x, y, strict=True):
            if r["budget"] is not None:
                axes.annotate(
                    f"{r['budget']:g}",
                    (xi, yi),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                )
    unit = rows[0]["unit"] if rows else "MAC"
    axes.set_xlabel(f"counted computation ({unit}s, fraction of SGD's on the same stream)")
    axes.set_ylabel("final test accuracy (%)")
    axes.set_title(title or "Accuracy against computation (95% interval over seeds)")
    axes.legend(title="method (budget at each point)")
    axes.grid(alpha=0.3)
    return figure


def accuracy_vs_time(runs: Sequence[Run], title: str = "") -> Figure:
    """Test accuracy (%) at each evaluation against training seconds, one curve per run.

    Curves of one method and budget (``Run.label``) share a colour and one legend entry.
    Runs whose evaluations lack ``train_time_s`` are left out.
    """
    figure, axes = _figure()
    timed = [r for r in runs if r.evaluations and "train_time_s" in r.evaluations[0]]
    colour = colours([r.label for r in timed])
    labelled: set[str] = set()
    for run in timed:
        x = [e["train_time_s"] for e in run.evaluations]
        y = [100 * e["test_accuracy"] for e in run.evaluations]
        label = None if run.label in labelled else run.label
        labelled.add(run.label)
        axes.plot(x, y, marker=".", color=colour[run.label], label=label, alpha=0.8)
    axes.set_xlabel("training time (s; evaluation, checkpointing and compilation excluded)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title or "Test accuracy against wall-clock training time (one curve per run)")
    if timed:
        axes.legend()
    axes.grid(alpha=0.3)
    return figure


def kept_series(run: Run) -> tuple[str, list[int], list[float]]:
    """``(kind, steps, fractions)``: the run's kept fraction per window or per chunk.

    ``kind`` is ``"window"`` for the instance filter's window records
    (``eif/predicted_high_fraction``, the fraction of the window's stream the filter
    kept), else ``"chunk"`` (each logged chunk's ``trained`` / the instances it streamed:
    the batch size, less in the run's short last chunk).
    """
    windows = [w for w in run.windows if "eif/predicted_high_fraction" in w]
    if windows:
        return (
            "window",
            [w["step"] for w in windows],
            [w["eif/predicted_high_fraction"] for w in windows],
        )
    batch, summary = run.summary["config"]["batch_size"], run.summary
    # Every chunk streams a full batch but the run's last, which streams what is left.
    last = summary.get("chunks"), summary.get("instances_streamed")
    streamed = {last[0]: last[1] - (last[0] - 1) * batch} if None not in last else {}
    chunks = run.chunks
    fractions = [c["trained"] / streamed.get(c["step"], batch) for c in chunks]
    return "chunk", [c["step"] for c in chunks], fractions


def kept_fraction(runs: Sequence[Run], title: str = "") -> Figure:
    """The kept fraction of the stream over training, one line per run (:func:`kept_series`).

    Lines of one method and budget share a colour and one legend entry, which says
    whether its values are per filter window or per chunk.
    """
    figure, axes = _figure()
    colour = colours([r.label for r in runs])
    labelled: set[str] = set()
    for run in runs:
        kind, steps, fractions = kept_series(run)
        label = None if run.label in labelled else f"{run.label} (per {kind})"
        labelled.add(run.label)
        axes.plot(steps, fractions, color=colour[run.label], label=label, alpha=0.8)
    axes.set_xlabel("stream position (chunks of one mini-batch)")
    axes.set_ylabel("kept fraction of the stream")
    axes.set_ylim(0.0, 1.05)
    axes.set_title(title or "Fraction of the stream kept for training")
    if runs:
        axes.legend()
    axes.grid(alpha=0.3)
    return figure


def save(figure: Figure, stem: str) -> list[str]:
    """Writes ``figure`` as ``<stem>.png`` and ``<stem>.svg``; returns the two paths."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    paths = [f"{stem}.png", f"{stem}.svg"]
    for path in paths:
        figure.savefig(path, dpi=150)
    return paths
