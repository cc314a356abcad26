"""The paper's figures drawn from small hand-made runs: each figure's series, axes and
labels read back from the matplotlib Figure (Fig. 10, 11, 13 and 14; Fig. 6/8 and the
kept fraction are tested in test_harness)."""

from __future__ import annotations

from typing import Any

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_rgba

from edgefilter.reporting import emp_figures, filter_figures
from edgefilter.reporting.runs import Run
from edgefilter.training.snapshots import Snapshot


def _run(
    method: str,
    budget: float | None,
    seed: int,
    records: list[dict[str, Any]],
    config: dict[str, Any] | None = None,
    **summary: Any,
) -> Run:
    config = {"method": method, "seed": seed, **(config or {})}
    return Run(f"/runs/{method}/s{seed}", method, budget, seed, {"config": config, **summary},
               tuple(records))  # fmt: skip


def _window(step: int, **values: float) -> dict[str, Any]:
    return {"step": step, **{f"eif/{k}": v for k, v in values.items()}}


def _legend(axes) -> list[str]:
    return [t.get_text() for t in axes.get_legend().get_texts()]


def test_threshold_tracking_draws_t_l_the_main_loss_and_the_kept_fraction_per_window():
    records = [
        {"step": 1, "loss": 2.3, "trained": 5},  # A chunk record: not a window.
        _window(10, threshold=1.05, main_loss=2.2, predicted_high_fraction=0.30),
        _window(20, threshold=1.10, main_loss=1.6, predicted_high_fraction=0.28),
        _window(30, threshold=0.99, main_loss=1.1, predicted_high_fraction=0.31),
    ]
    run = _run("eif", 0.3, 0, records, {"r_set": 0.3})
    figure = filter_figures.threshold_tracking(run)
    left, right = figure.axes
    t_l, loss = left.lines
    np.testing.assert_allclose(t_l.get_xdata(), [10, 20, 30])
    np.testing.assert_allclose(t_l.get_ydata(), [1.05, 1.10, 0.99])
    np.testing.assert_allclose(loss.get_ydata(), [2.2, 1.6, 1.1])
    kept, r_set = right.lines
    np.testing.assert_allclose(kept.get_xdata(), [10, 20, 30])
    np.testing.assert_allclose(kept.get_ydata(), [0.30, 0.28, 0.31])
    np.testing.assert_allclose(r_set.get_ydata(), [0.3, 0.3])  # The dashed R_set line.
    assert _legend(left) == [
        "T_l, loss threshold (after Eq. 3)",
        "main loss (window mean, known losses)",
        "kept fraction of the window's stream",
        "R_set = 0.3",
    ]
    assert left.get_yscale() == "log"  # Every loss is positive.
    assert left.get_ylabel() == "loss (cross-entropy)" and right.get_ylabel() == "kept fraction"
    assert left.get_xlabel() == "stream position (chunks of one mini-batch)"
    assert left.get_title().startswith("eif b0.3\n") and "Fig. 10" in left.get_title()


def test_wrong_prediction_ratio_one_line_per_run_one_legend_entry_per_label():
    weighted = [
        _run("eif", 0.3, 0, [_window(10, wrong_prediction_ratio=0.10),
                             _window(20, wrong_prediction_ratio=0.06)]),
        _run("eif", 0.3, 1, [_window(10, wrong_prediction_ratio=0.08)]),
    ]  # fmt: skip
    unweighted = _run(
        "eif_unweighted",
        0.3,
        0,
        [_window(10, wrong_prediction_ratio=0.25), _window(20, wrong_prediction_ratio=0.15)],
    )
    no_filter = _run("sgd", None, 0, [{"step": 1, "loss": 2.3, "trained": 64}])
    figure = filter_figures.wrong_prediction_ratio([*weighted, unweighted, no_filter])
    (axes,) = figure.axes
    first, second, third = axes.lines  # sgd has no windows: left out.
    np.testing.assert_allclose(first.get_xdata(), [10, 20])
    np.testing.assert_allclose(first.get_ydata(), [10.0, 6.0])  # In percent.
    np.testing.assert_allclose(second.get_ydata(), [8.0])
    np.testing.assert_allclose(third.get_ydata(), [25.0, 15.0])
    assert first.get_color() == second.get_color() != third.get_color()
    # Means over every window of the label: (10 + 6 + 8) / 3 = 8 and (25 + 15) / 2 = 20.
    assert _legend(axes) == ["eif b0.3 (mean 8.00%)", "eif_unweighted b0.3 (mean 20.00%)"]
    assert axes.get_ylabel().startswith("wrong-prediction ratio (%")
    assert "Fig. 11" in axes.get_title()


def _snapshot(chunk: int, kept: list[bool], valid: list[bool] | None = None) -> Snapshot:
    """Slot i's image is filled with the value 10 * (i + 1), its loss is i."""
    m = len(kept)
    images = np.stack([np.full((4, 3, 1), 10 * (i + 1), np.uint8) for i in range(m)])
    return Snapshot(
        chunk=chunk,
        step=chunk + 1,
        epoch=chunk / 10,
        images=images,
        labels=np.zeros(m, np.int32),
        valid=np.asarray(valid if valid is not None else [True] * m),
        kept=np.asarray(kept),
        losses=np.arange(m, dtype=np.float32),
    )


def _tiles(image: np.ndarray, width: int = 3, pad: int = 2) -> list[int]:
    """The value of each tile of a mosaic row, tiles ``width`` wide, ``pad`` apart."""
    return [int(image[0, x]) for x in range(0, image.shape[1], width + pad)]


def test_instance_grid_shows_kept_left_and_dropped_right_per_snapshot():
    snapshots = [
        _snapshot(0, [True, False, False, True, False]),
        # The last slot is padding of a short chunk: shown on neither side.
        _snapshot(9, [True, True, True, True, False], valid=[True, True, True, False, False]),
    ]
    figure = filter_figures.instance_grid(snapshots, per_side=2)
    (first_kept, first_dropped, last_kept, last_dropped) = figure.axes
    # Slots 0 and 3 kept (values 10, 40); dropped 1, 2, 4, the first two shown (20, 30).
    assert _tiles(first_kept.images[0].get_array()) == [10, 40]
    assert _tiles(first_dropped.images[0].get_array()) == [20, 30]
    assert first_kept.images[0].get_array().shape == (4, 3 + 2 + 3)
    # Losses 0..4: kept slots 0, 3 have mean 1.5, dropped 1, 2, 4 mean 7/3.
    assert first_kept.get_title() == "step 1 (epoch 0.00): kept 2 of 5, mean loss 1.500"
    assert first_dropped.get_title() == "dropped 3 of 5, mean loss 2.333"
    # Valid slots 0-2, all kept; slot 3 is kept but padding, slot 4 neither.
    assert _tiles(last_kept.images[0].get_array()) == [10, 20]
    assert last_kept.get_title() == "step 10 (epoch 0.90): kept 3 of 3, mean loss 1.000"
    assert not last_dropped.images and last_dropped.get_title() == "dropped 0 of 3"
    assert "Fig. 13" in figure.get_suptitle()


def _emp_summary(policy: str, layers: list[tuple[str, int, bool]]) -> dict[str, Any]:
    return {
        "emp": {
            "policy": policy,
            "layers": [{"name": n, "channels": c, "pruned": p, "kept": None} for n, c, p in layers],
        }
    }


@pytest.mark.parametrize(
    "policy, setting, note",
    [
        ("topk", {"emp_keep": 0.5}, "top-k policy: fixed at ceil(0.5 n) by --emp_keep"),
        ("threshold", {"emp_threshold": 1.0}, "threshold policy: S_j >= 1 x mean, varies"),
    ],
)
def test_kept_channels_plots_each_layers_kept_fraction_over_training(policy, setting, note):
    records = [
        {"step": 2, "loss": 2.0, "trained": 5},
        {"step": 2, "emp/kept_channels/Conv_0": 6, "emp/kept_channels/Conv_1": 11},
        {"step": 4, "emp/kept_channels/Conv_0": 6, "emp/kept_channels/Conv_1": 9},
    ]
    summary = _emp_summary(policy, [("Conv_0", 6, False), ("Conv_1", 16, True)])
    run = _run("eif_emp", 0.3, 0, records, {"emp_policy": policy, **setting}, **summary)
    figure = emp_figures.kept_channels(run)
    (axes,) = figure.axes
    first, second = axes.lines
    np.testing.assert_allclose(first.get_xdata(), [2, 4])
    np.testing.assert_allclose(first.get_ydata(), [1.0, 1.0])  # 6 of 6.
    np.testing.assert_allclose(second.get_ydata(), [11 / 16, 9 / 16])
    assert _legend(axes) == ["Conv_0 (n=6, dense)", "Conv_1 (n=16)"]
    assert axes.get_ylabel() == "kept fraction of the layer's output-error channels"
    assert axes.get_title().endswith(note) and "Fig. 14" in axes.get_title()


def test_kept_channels_of_many_layers_get_a_colour_bar_in_forward_order():
    layers = [(f"Block_{i}/Conv_0", 16, i > 0) for i in range(emp_figures.LEGEND_LAYERS + 1)]
    # Layer i keeps i + 1 channels; the records list the layers last to first, the
    # summary in forward order, which the lines follow.
    counts = {f"emp/kept_channels/{n}": i + 1 for i, (n, _, _) in enumerate(layers)}
    records = [{"step": 5, **dict(reversed(list(counts.items())))}]
    run = _run("emp", None, 0, records, {"emp_policy": "topk"}, **_emp_summary("topk", layers))
    figure = emp_figures.kept_channels(run)
    axes, colour_bar = figure.axes
    assert axes.get_legend() is None and len(axes.lines) == len(layers)
    first, last = axes.lines[0], axes.lines[-1]
    np.testing.assert_allclose(first.get_ydata(), [1 / 16])
    np.testing.assert_allclose(last.get_ydata(), [len(layers) / 16])
    viridis = matplotlib.colormaps["viridis"]
    assert to_rgba(first.get_color()) == to_rgba(viridis(0.0))  # Dark: the first layer.
    assert to_rgba(last.get_color()) == to_rgba(viridis(1.0))
    assert colour_bar.get_ylabel() == "conv layer (order of the forward pass)"
    assert colour_bar.get_ylim() == (0.0, float(len(layers) - 1))
