"""EMP's kept output-error channels per conv layer over training (the paper's Fig. 14).

Built as :mod:`edgefilter.reporting.figures` builds its own (no pyplot). The data: an
EMP run's ``emp/kept_channels/<layer>`` records in ``metrics.jsonl`` (the channels of
the layer whose weight gradient was not zero in the step of every
``log_every_steps``-th chunk: :func:`edgefilter.emp.kept_channels`) and the layers'
``summary.json`` entry ``emp.layers`` (name, channels ``n``, whether pruned, fixed kept
count), written by :func:`edgefilter.training.accounting.emp_layers`.

Under the top-k policy the count is fixed, ``ceil(emp_keep * n)`` for every pruned
layer, so the lines are flat and show only that the records agree with the setting;
under the threshold policy (``S_j >= emp_threshold * mean(S)``, Eq. 11) it follows the
data, which is what the paper's Fig. 14 shows.
"""

from __future__ import annotations

from typing import Any

import matplotlib
from matplotlib.figure import Figure

from edgefilter.reporting.figures import new_figure
from edgefilter.reporting.runs import Run

PREFIX = "emp/kept_channels/"
LEGEND_LAYERS = 12  # More layers get a colour bar instead of legend entries.


def kept_channel_series(run: Run) -> dict[str, tuple[list[int], list[int]]]:
    """Per layer (in the records' first-seen order), the steps and kept channel counts."""
    series: dict[str, tuple[list[int], list[int]]] = {}
    for record in run.records:
        for key, value in record.items():
            if key.startswith(PREFIX) and value is not None:
                steps, counts = series.setdefault(key.removeprefix(PREFIX), ([], []))
                steps.append(record["step"])
                counts.append(value)
    return series


def _policy_note(config: dict[str, Any]) -> str:
    if config.get("emp_policy") == "threshold":
        return f"threshold policy: S_j >= {config.get('emp_threshold', 1.0):g} x mean, varies"
    return f"top-k policy: fixed at ceil({config.get('emp_keep', 0.5):g} n) by --emp_keep"


def kept_channels(run: Run, title: str = "") -> Figure:
    """Fig. 14: the kept fraction of each conv layer's output-error channels over training.

    One line per layer of ``summary.json``'s ``emp.layers`` that has records, in the
    order the model calls them, coloured from dark (first) to light (last): x the step,
    y kept / ``n``. With at most ``LEGEND_LAYERS`` layers each has a legend entry
    (``"<name> (n=<n>)"``, ``", dense"`` for an unpruned layer), else a colour bar gives
    the layer's position. The title names the policy.
    """
    figure = new_figure()
    axes = figure.add_subplot()
    series = kept_channel_series(run)
    layers = [lay for lay in run.summary.get("emp", {}).get("layers", []) if lay["name"] in series]
    cmap = matplotlib.colormaps["viridis"]
    for i, layer in enumerate(layers):
        steps, counts = series[layer["name"]]
        dense = "" if layer["pruned"] else ", dense"
        axes.plot(
            steps,
            [c / layer["channels"] for c in counts],
            color=cmap(i / max(1, len(layers) - 1)),
            marker=".",
            label=f"{layer['name']} (n={layer['channels']}{dense})",
        )
    axes.set_xlabel("stream position (chunks of one mini-batch)")
    axes.set_ylabel("kept fraction of the layer's output-error channels")
    axes.set_ylim(0.0, 1.05)
    note = _policy_note(run.summary.get("config", {}))
    axes.set_title(title or f"{run.label}: EMP's kept channels per conv layer (Fig. 14)\n{note}")
    if 0 < len(layers) <= LEGEND_LAYERS:
        axes.legend(fontsize=8)
    elif layers:
        scale = matplotlib.cm.ScalarMappable(
            cmap=cmap, norm=matplotlib.colors.Normalize(0, len(layers) - 1)
        )
        figure.colorbar(scale, ax=axes, label="conv layer (order of the forward pass)")
    axes.grid(alpha=0.3)
    return figure
