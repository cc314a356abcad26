"""Tests of edgefilter.comparison: rows, measured reductions, the table and merging."""

from __future__ import annotations

import json
import pathlib

import pytest

from edgefilter.reporting import comparison
from edgefilter.training import config as config_lib


def _summary(accuracy: float, trained: int, reduction: float, seconds: float, unit: str = "MAC"):
    return {
        "test_accuracy": accuracy,
        "instances_trained": trained,
        "instances_streamed": 1000,
        "train_time_s": seconds,
        "compute": {"reduction": reduction, "unit": unit},
    }


def test_row_reads_the_summary():
    r = comparison.row("eif", _summary(0.9, 300, 0.6, 20.0), 3 * 2**20)
    assert r == {
        "variant": "eif",
        "test_accuracy": 0.9,
        "trained_fraction": 0.3,
        "counted_reduction": 0.6,
        "unit": "MAC",
        "train_time_s": 20.0,
        "images_per_s": 50.0,
        "peak_rss_mib": 3.0,
    }


def test_measured_reduction_is_against_the_sgd_row_and_its_ratio_to_the_count():
    rows = [
        comparison.row("sgd", _summary(0.9, 1000, 0.0, 40.0), 0),
        comparison.row("eif_emp", _summary(0.89, 300, 0.7, 12.0), 0),
    ]
    comparison.add_measured_reduction(rows)
    assert rows[0]["measured_reduction"] == 0.0 and rows[0]["measured_over_counted"] is None
    assert rows[1]["measured_reduction"] == pytest.approx(1 - 12 / 40)
    assert rows[1]["measured_over_counted"] == pytest.approx((1 - 12 / 40) / 0.7)


def test_bit_op_rows_get_no_ratio_and_rows_without_sgd_no_measurement():
    rows = [
        comparison.row("sgd", _summary(0.9, 1000, 0.94, 40.0, "BOP"), 0),
        comparison.row("eif_emp", _summary(0.89, 300, 0.98, 12.0, "BOP"), 0),
    ]
    comparison.add_measured_reduction(rows)
    assert rows[1]["measured_reduction"] == pytest.approx(0.7)
    assert rows[1]["measured_over_counted"] is None
    alone = [comparison.row("eif", _summary(0.89, 300, 0.6, 12.0), 0)]
    comparison.add_measured_reduction(alone)
    assert alone[0]["measured_reduction"] is None and alone[0]["measured_over_counted"] is None


def test_merge_recomputes_against_the_merged_sgd_row(tmp_path: pathlib.Path):
    base = config_lib.TrainConfig(model="lenet", dataset="fashion_mnist")
    for name, seconds in (("a", 40.0), ("b", 10.0)):
        variant = "sgd" if name == "a" else "eif"
        rows = [comparison.row(variant, _summary(0.9, 500, 0.5, seconds), 2**20)]
        comparison.add_measured_reduction(rows)
        (tmp_path / name).mkdir()
        comparison.write_table(rows, base, str(tmp_path / name))
    markdown = comparison.merge([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "m"))
    merged = json.loads((tmp_path / "m" / "comparison.json").read_text())["rows"]
    assert [r["variant"] for r in merged] == ["sgd", "eif"]
    assert merged[1]["measured_reduction"] == pytest.approx(0.75)
    assert "| eif | 0.9000 | 0.500 | 0.500 (MAC) | 0.750 | 1.50 | 10.0 | 100 | 1 |" in markdown
    assert markdown == (tmp_path / "m" / "comparison.md").read_text()


def test_every_variant_is_a_valid_config():
    base = config_lib.TrainConfig(model="lenet", dataset="fashion_mnist")
    resnet = config_lib.TrainConfig(model="resnet20", dataset="cifar10")
    for name, overrides in comparison.VARIANTS.items():
        on = resnet if name in ("sd", "e2train") else base  # The ResNet baselines.
        config = config_lib.resolve(comparison.variant(on, name))
        assert config_lib.as_flags(config).items() >= overrides.items(), name


def test_median_of_repeats_takes_each_variants_median_run(tmp_path: pathlib.Path):
    def run(sgd_seconds: float, eif_seconds: float, peak: int) -> list[dict]:
        return [
            comparison.row("sgd", _summary(0.9, 1000, 0.0, sgd_seconds), peak * 2**20),
            comparison.row("eif", _summary(0.9, 300, 0.6, eif_seconds), peak * 2**20),
        ]

    repeats = [run(40.0, 30.0, 5), run(50.0, 10.0, 9), run(44.0, 20.0, 7)]
    rows = comparison.median_of_repeats(repeats)
    assert [r["train_time_s"] for r in rows] == [44.0, 20.0]
    assert rows[1]["train_times_s"] == [30.0, 10.0, 20.0]
    assert rows[1]["images_per_s"] == 1000 / 20.0  # from the same (median) run
    assert rows[1]["peak_rss_mib"] == 9.0
    assert rows[1]["measured_reduction"] == pytest.approx(1 - 20 / 44)
    assert rows[1]["measured_over_counted"] == pytest.approx((1 - 20 / 44) / 0.6)
    even = comparison.median_of_repeats([run(40.0, 30.0, 1), run(50.0, 10.0, 1)])
    assert [r["train_time_s"] for r in even] == [40.0, 10.0]  # the lower of the middle two
    markdown = comparison.write_table(
        rows, config_lib.TrainConfig(model="lenet", dataset="fashion_mnist"), str(tmp_path)
    )
    assert "* eif: 30.0, 10.0, 20.0" in markdown
    with pytest.raises(ValueError, match="disagree on the variant"):
        comparison.median_of_repeats([run(1.0, 1.0, 1), list(reversed(run(1.0, 1.0, 1)))])


def test_check_variants_names_the_unknown_ones():
    comparison.check_variants(list(comparison.VARIANTS))
    with pytest.raises(ValueError, match=r"--variants: unknown \['nonesuch'\]; choose from sgd"):
        comparison.check_variants(["sgd", "nonesuch"])
