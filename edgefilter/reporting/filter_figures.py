"""Figures of what the instance filter does, over run outputs (the paper's Fig. 10, 11, 13).

Built as :mod:`edgefilter.reporting.figures` builds its own (no pyplot; save with
:func:`edgefilter.reporting.figures.save`):

* :func:`threshold_tracking` (Fig. 10): per filter window, the loss threshold ``T_l``
  (Eq. 3), the main network's loss and the kept fraction of the stream, for one run;
* :func:`wrong_prediction_ratio` (Fig. 11): per window, the filter's wrong-prediction
  ratio for each run given, e.g. ``eif`` and ``eif_unweighted`` (the weighted filter
  loss of Eq. 6-7 against the plain one);
* :func:`instance_grid` (Fig. 13): instances the selection kept and dropped, at the
  points of training ``edgefilter.training.snapshots`` saved.

The window records are ``metrics.jsonl``'s ``eif/`` records (:class:`Run.windows`): each
holds the window's ``threshold`` (``T_l`` after the window's Eq. 3 update),
``main_loss`` (the main network's mean loss over the window's instances whose loss was
computed: the trained ones and the probed ones), ``predicted_high_fraction`` (the
fraction of the window's stream kept) and ``wrong_prediction_ratio`` (of the instances
whose label is known, the fraction the filter predicted wrongly).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from edgefilter.reporting.figures import colours, new_figure
from edgefilter.reporting.runs import Run
from edgefilter.training.snapshots import Snapshot

STREAM_AXIS = "stream position (chunks of one mini-batch)"


def _series(run: Run, key: str) -> tuple[list[int], list[float]]:
    """Steps and values of ``eif/<key>`` over the run's windows that record it."""
    windows = [w for w in run.windows if w.get(f"eif/{key}") is not None]
    return [w["step"] for w in windows], [w[f"eif/{key}"] for w in windows]


def threshold_tracking(run: Run, title: str = "") -> Figure:
    """Fig. 10: ``T_l``, the main loss and the kept fraction per window of one run.

    Left axis (loss, log scale when every value is positive): ``T_l`` and the main
    network's window mean loss. Right axis: the kept fraction per window, and ``R_set``
    (the run's ``r_set``) as a dashed line. One legend holds all four.
    """
    figure = new_figure()
    axes = figure.add_subplot()
    steps, threshold = _series(run, "threshold")
    loss_steps, loss = _series(run, "main_loss")
    kept_steps, kept = _series(run, "predicted_high_fraction")
    axes.plot(steps, threshold, color="C0", label="T_l, loss threshold (after Eq. 3)")
    axes.plot(loss_steps, loss, color="C1", label="main loss (window mean, known losses)")
    if all(v > 0 for v in threshold + loss) and threshold + loss:
        axes.set_yscale("log")
    axes.set_xlabel(STREAM_AXIS)
    axes.set_ylabel("loss (cross-entropy)")
    right = axes.twinx()
    right.plot(kept_steps, kept, color="C2", label="kept fraction of the window's stream")
    r_set = run.summary.get("config", {}).get("r_set")
    if r_set is not None:
        right.axhline(r_set, color="C2", linestyle="--", alpha=0.6, label=f"R_set = {r_set:g}")
    right.set_ylim(0.0, 1.05)
    right.set_ylabel("kept fraction")
    handles = axes.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    axes.legend(handles=handles, loc="upper right", fontsize=8)
    axes.set_title(title or f"{run.label}\nthe loss threshold T_l tracks the main loss (Fig. 10)")
    axes.grid(alpha=0.3)
    return figure


def wrong_prediction_ratio(runs: Sequence[Run], title: str = "") -> Figure:
    """Fig. 11: the filter's wrong-prediction ratio (%) per window, one line per run.

    The ratio is over the window's instances whose label is known (trained or probed).

    Lines of one method and budget (``Run.label``, e.g. ``eif b0.3`` and
    ``eif_unweighted b0.3``) share a colour and one legend entry, which gives the mean
    over all their windows. Runs without the records are left out.
    """
    figure = new_figure()
    axes = figure.add_subplot()
    drawn = [(run, *_series(run, "wrong_prediction_ratio")) for run in runs]
    drawn = [(run, steps, values) for run, steps, values in drawn if steps]
    colour = colours([run.label for run, _, _ in drawn])
    pooled: dict[str, list[float]] = {}
    for run, _, values in drawn:
        pooled.setdefault(run.label, []).extend(values)
    labelled: set[str] = set()
    for run, steps, values in drawn:
        label = None
        if run.label not in labelled:
            label = f"{run.label} (mean {100 * np.mean(pooled[run.label]):.2f}%)"
            labelled.add(run.label)
        percent = [100 * v for v in values]
        axes.plot(steps, percent, color=colour[run.label], label=label, alpha=0.8, lw=0.8)
    axes.set_xlabel(STREAM_AXIS)
    axes.set_ylabel("wrong-prediction ratio (%)")
    axes.set_title(title or "The filter's wrong predictions per window (Fig. 11)")
    if drawn:
        axes.legend(fontsize=8, loc="upper right")
    axes.grid(alpha=0.3)
    return figure


def _mosaic(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """``images`` ``[k, H, W, C]`` side by side, ``pad`` columns of 255 between them."""
    k, h, w, c = images.shape
    out = np.full((h, k * (w + pad) - pad, c), 255, np.uint8)
    for i, image in enumerate(images):
        out[:, i * (w + pad) : i * (w + pad) + w] = image
    return out[..., 0] if c == 1 else out


def instance_grid(snapshots: Sequence[Snapshot], per_side: int = 8, title: str = "") -> Figure:
    """Fig. 13: per snapshot, a row of instances kept (left) and dropped (right).

    Each side shows up to ``per_side`` of the chunk's instances in slot order (padding
    slots of a short chunk left out) as one image, tiles ``pad = 2`` columns apart, and
    its title gives the snapshot's step and epoch, how many instances were kept or
    dropped and their mean main-network loss before the step: kept instances are
    expected to be the hard ones.
    """
    rows = max(1, len(snapshots))
    figure = new_figure(size=(10.0, 1.3 + 1.2 * rows))
    grid = figure.subplots(rows, 2, squeeze=False)
    for (left, right), snap in zip(grid, snapshots, strict=False):
        valid, kept = snap.valid.astype(bool), snap.kept.astype(bool)
        sides = ((left, valid & kept, "kept"), (right, valid & ~kept, "dropped"))
        for axes, mask, name in sides:
            shown = snap.images[mask][:per_side]
            if len(shown):
                axes.imshow(_mosaic(shown), cmap="gray", vmin=0, vmax=255)
            loss = f", mean loss {np.mean(snap.losses[mask]):.3f}" if mask.any() else ""
            head = f"step {snap.step} (epoch {snap.epoch:.2f}): " if name == "kept" else ""
            axes.set_title(
                f"{head}{name} {int(mask.sum())} of {int(valid.sum())}{loss}", fontsize=9
            )
            axes.set_axis_off()
    for left, right in grid[len(snapshots) :]:
        left.set_axis_off()
        right.set_axis_off()
    figure.suptitle(title or "Instances kept and dropped at points of training (Fig. 13)")
    return figure
