"""Several methods on the same stream, tabulated against SGD (counted and measured).

Every variant trains from the same seed on the same stream of instances (same order,
same initial weights), one after the other in this process, each in
``<workdir>/<variant>`` (a finished run is reused, an interrupted one resumed). The
table gives, per variant: test accuracy, the fraction of the stream trained on, the
counted computation reduction (analytic MACs/BOPs, ``summary.json``'s ``compute``
block), the measured wall-clock reduction of training (1 - train time / SGD's train
time; evaluation, checkpointing and compilation excluded), their ratio, images streamed
per second and the process's peak resident memory during the variant.

Variants are the methods plus named ablations of the filter: ``eif_static`` (fixed
T_l), ``eif_unweighted`` (unweighted filter loss), ``eif_argmax`` (the paper's argmax
decision instead of quantile control), ``eif_argmax_static`` (argmax and a fixed T_l:
the paper's static-threshold ablation) and ``eif_no_uncertainty`` (no uncertainty
sampling); ``smb``, ``smd``, ``sd`` and ``e2train`` are the paper's schedule- and
model-level baselines at their sources' defaults, and ``random``, ``oracle``, ``ohem``,
``selective_backprop``, ``selective_backprop_stale`` and ``infobatch`` the data-selection
baselines of issue #18. A variant is a set of flag values (``config.from_flags``) over
the base config.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from edgefilter import data as data_lib
from edgefilter.training import config as config_lib
from edgefilter.training import loop

VARIANTS: dict[str, dict[str, Any]] = {
    "sgd": {"method": "sgd"},
    "emp": {"method": "emp"},
    "eif": {"method": "eif"},
    "eif_emp": {"method": "eif_emp"},
    "eif_static": {"method": "eif", "eif_static_threshold": True},
    "eif_unweighted": {"method": "eif", "eif_weighted": False},
    # The paper's filter: argmax decisions, Eq. 3 on R_TH, no random samples.
    "eif_argmax": {"method": "eif", "eif_control": "argmax", "eif_random_probes": 0},
    "eif_argmax_static": {
        "method": "eif",
        "eif_control": "argmax",
        "eif_random_probes": 0,
        "eif_static_threshold": True,
    },
    "eif_argmax_unweighted": {
        "method": "eif",
        "eif_control": "argmax",
        "eif_random_probes": 0,
        "eif_weighted": False,
    },
    "eif_no_uncertainty": {"method": "eif", "eif_uncertainty": False},
    # Beyond the paper (issue 19): the filter's ranking joined by each instance's last
    # recorded loss (select.with_loss_history).
    "eif_history": {"method": "eif", "eif_history": True},
    "eif_emp_history": {"method": "eif_emp", "eif_history": True},
    # Staleness for speed (issue 17 item 4): the filter predicts each block of chunks
    # from its parameters at the block's start (select.eif's predict_ahead).
    "eif_ahead": {"method": "eif", "eif_predict_ahead": True},
    "eif_emp_ahead": {"method": "eif_emp", "eif_predict_ahead": True},
    # The paper's schedule- and model-level baselines at their sources' defaults: SMB at
    # budget 0.5, SMD skipping half the mini-batches, SD with p_L = 0.5 (ResNets), E2-Train
    # (SMD + SLU; CIFAR ResNets). training.budget, models.stochastic_depth, ...
    "smb": {"method": "smb"},
    "smd": {"method": "smd"},
    "sd": {"method": "sd"},
    "e2train": {"method": "e2train"},
    # Data-selection baselines (issue #18), on the same selection interface as EIF.
    "random": {"method": "random"},
    "oracle": {"method": "oracle"},
    "ohem": {"method": "ohem"},
    "selective_backprop": {"method": "selective_backprop"},
    "selective_backprop_stale": {"method": "selective_backprop_stale"},
    "infobatch": {"method": "infobatch"},
}


def variant(base: config_lib.TrainConfig, name: str) -> config_lib.TrainConfig:
    """``base`` with the flag values of ``VARIANTS[name]``."""
    return config_lib.from_flags(VARIANTS[name], base)


class PeakMemory:
    """Samples this process's resident memory (Linux /proc) in a background thread."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss_bytes() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def row(name: str, summary: dict[str, Any], peak_bytes: int) -> dict[str, Any]:
    """One table row from a run's summary."""
    compute = summary["compute"]
    return {
        "variant": name,
        "test_accuracy": summary["test_accuracy"],
        "trained_fraction": summary["instances_trained"] / summary["instances_streamed"],
        "counted_reduction": compute["reduction"],
        "unit": compute["unit"],
        "train_time_s": summary["train_time_s"],
        "images_per_s": summary["instances_streamed"] / summary["train_time_s"],
        "peak_rss_mib": peak_bytes / 2**20,
    }


def check_variants(variants: list[str]) -> None:
    """Raises ValueError for no variants, a repeated one, or one not in ``VARIANTS``."""
    if not variants:
        raise ValueError(f"--variants is empty; choose one or more of {', '.join(VARIANTS)}")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown {unknown!r}; choose from {', '.join(VARIANTS)}")
    repeated = sorted({v for v in variants if variants.count(v) > 1})
    if repeated:
        raise ValueError(
            f"--variants={','.join(variants)!r} is invalid: {', '.join(repeated)} given more "
            "than once (each variant is one run in its own folder)"
        )


def compare(
    base: config_lib.TrainConfig,
    variants: list[str],
    workdir: str,
    dataset: data_lib.Dataset,
    show_progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Runs ``variants`` of ``base`` on ``dataset``; returns and writes the table."""
    rows = []
    for name in variants:
        config = variant(base, name)
        with PeakMemory() as memory:
            summary = loop.train_and_evaluate(
                config, os.path.join(workdir, name), dataset=dataset, show_progress=show_progress
            )
        rows.append(row(name, summary, memory.peak_bytes))
    add_measured_reduction(rows)
    write_table(rows, base, workdir)
    return rows


def add_measured_reduction(rows: list[dict[str, Any]]) -> None:
    """Adds measured reduction against the ``sgd`` row, and its ratio to the counted one.

    The ratio is given for MAC counts only. Bit-op counts (``unit == "BOP"``) are against
    full-precision SGD, while the time is against the same-bit SGD row, and simulated
    quantization saves no time: the two reductions do not measure the same thing.
    """
    reference = next((r for r in rows if r["variant"] == "sgd"), None)
    for r in rows:
        measured = None
        if reference is not None:
            measured = 1.0 - r["train_time_s"] / reference["train_time_s"]
        r["measured_reduction"] = measured
        counted = r["counted_reduction"]
        comparable = measured is not None and r["unit"] == "MAC" and abs(counted) > 1e-9
        r["measured_over_counted"] = measured / counted if comparable else None


def median_of_repeats(repeats: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per variant from repeated runs of the same variants, in the same order.

    Each variant's row is its run with the median train time (the lower one of an even
    count, so that every number in it comes from one run), with ``train_times_s`` listing
    every run's time and ``peak_rss_mib`` the largest; measured reductions are recomputed
    from the median rows. Repeating the sequence of variants, rather than each variant,
    spreads a machine's slow spells over all of them.
    """
    rows = []
    for runs in zip(*repeats, strict=True):
        if len({r["variant"] for r in runs}) != 1:
            raise ValueError(f"repeats disagree on the variant: {[r['variant'] for r in runs]}")
        by_time = sorted(runs, key=lambda r: r["train_time_s"])
        rows.append(
            {
                **by_time[(len(by_time) - 1) // 2],
                "train_times_s": [r["train_time_s"] for r in runs],
                "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            }
        )
    add_measured_reduction(rows)
    return rows


def merge(workdirs: list[str], out: str) -> str:
    """One table from the ``comparison.json`` of several workdirs run on the same stream.

    For variants run in separate processes (e.g. in parallel); measured reductions are
    recomputed against the merged ``sgd`` row. Returns the markdown written to ``out``.
    """
    rows, base = [], None
    for workdir in workdirs:
        with open(os.path.join(workdir, "comparison.json")) as f:
            payload = json.load(f)
        rows += payload["rows"]
        base = base or config_lib.from_flags(payload["config"])
    add_measured_reduction(rows)
    os.makedirs(out, exist_ok=True)
    return write_table(rows, base, out)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def write_table(rows: list[dict[str, Any]], base: config_lib.TrainConfig, workdir: str) -> str:
    """Writes comparison.md and comparison.json; returns the markdown."""
    lines = [
        f"{base.model} on {base.dataset}, bits {base.bits}, seed {base.seed}, same stream "
        "for every variant.",
        "",
        "| variant | test acc | trained frac | counted red. | measured red. | measured/counted "
        "| train time (s) | img/s | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['test_accuracy']:.4f} | {r['trained_fraction']:.3f} "
            f"| {r['counted_reduction']:.3f} ({r['unit']}) "
            f"| {_fmt(r['measured_reduction'], '.3f')} "
            f"| {_fmt(r['measured_over_counted'], '.2f')} | {r['train_time_s']:.1f} "
            f"| {r['images_per_s']:.0f} | {r['peak_rss_mib']:.0f} |"
        )
    if any("train_times_s" in r for r in rows):
        lines += ["", "Train time of every run (s), the median in the table:", ""]
        lines += [
            f"* {r['variant']}: " + ", ".join(f"{t:.1f}" for t in r["train_times_s"])
            for r in rows
            if "train_times_s" in r
        ]
    markdown = "\n".join(lines) + "\n"
    with open(os.path.join(workdir, "comparison.md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(workdir, "comparison.json"), "w") as f:
        json.dump({"config": config_lib.as_flags(base), "rows": rows}, f, indent=2)
    return markdown
