"""The baselines harness: methods x budgets x seeds on the same stream, then tables and figures.

Each run is one :func:`edgefilter.training.loop.train_and_evaluate` call in this process,
one after the other, in ``<workdir>/<method>/b<budget>/s<seed>`` (``<workdir>/<method>/
s<seed>`` for a method without a budget). Runs with the same seed stream the same
instances in the same order from the same initial weights, whatever the method (the
stream order comes from ``(seed, epoch)``, the initial weights from ``seed``). ``sgd`` is
always run (added first when not listed): it is the reference of the measured reduction
and of the default target accuracy (:mod:`edgefilter.reporting.results`).

A method's *budget* is the value of one of its flags, named in :data:`BUDGET_FLAG`; a
method whose entry is None (``sgd``, ``emp``) runs once per seed. A restart with the same
workdir skips every run whose ``summary.json`` exists and records the run's config, and
resumes an interrupted run from its latest checkpoint (the training loop's own resume).
Progress lines say which run of how many is going and the time left, estimated from the
mean duration of the runs this process has trained (methods differ in speed, so it is a
rough estimate).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from edgefilter import data as data_lib
from edgefilter.reporting import comparison, figures, results
from edgefilter.reporting import runs as runs_lib
from edgefilter.training import config as config_lib
from edgefilter.training import loop, preflight

# The methods (and variants of ``comparison.VARIANTS``) the harness runs, each with the
# flag its budget sets: the kept fraction for the selectors, None for no budget. A name
# not in ``comparison.VARIANTS`` runs as ``--method=<name>``, so adding a method is one
# line here.
BUDGET_FLAG: dict[str, str | None] = {
    "sgd": None,
    "emp": None,
    "eif": "r_set",
    "eif_emp": "r_set",
    "eif_static": "r_set",
    "eif_unweighted": "r_set",
    "eif_argmax": "r_set",
    "eif_argmax_static": "r_set",
    "eif_argmax_unweighted": "r_set",
    "eif_no_uncertainty": "r_set",
    "eif_history": "r_set",
    "eif_emp_history": "r_set",
    "eif_ahead": "r_set",
    "eif_emp_ahead": "r_set",
    "random": "r_set",  # round(r_set * m) of each chunk, like the filter.
    "oracle": "r_set",
    "ohem": "r_set",
    "selective_backprop": None,  # Its kept fraction follows --sb_beta (~1 / (1 + beta)).
    "selective_backprop_stale": None,
    "infobatch": None,  # Its saving follows --infobatch_prune and the losses.
    "smb": "budget",  # A fraction of SGD's iterations (training.budget).
    "smd": "budget",  # Each mini-batch kept with probability budget.
    "sd": None,  # Its saving is set by --sd_final_survival, not a budget.
    "e2train": None,
}
REFERENCE = "sgd"


class Job(NamedTuple):
    """One run of the harness: the method, its budget (None if it has none), the seed."""

    method: str
    budget: float | None
    seed: int
    config: config_lib.TrainConfig
    workdir: str

    @property
    def label(self) -> str:
        budget = "" if self.budget is None else f" b{self.budget:g}"
        return f"{self.method}{budget} s{self.seed}"


def run_dir(workdir: str, method: str, budget: float | None, seed: int) -> str:
    """``<workdir>/<method>/b<budget>/s<seed>``, without ``b<budget>`` for no budget."""
    parts = [method] + ([] if budget is None else [f"b{budget:g}"]) + [f"s{seed}"]
    return os.path.join(workdir, *parts)


def config_of(
    base: config_lib.TrainConfig, method: str, budget: float | None, seed: int
) -> config_lib.TrainConfig:
    """``base`` with ``method``'s flags, its budget flag set to ``budget``, and ``seed``."""
    values = dict(comparison.VARIANTS.get(method, {"method": method}))
    flag = BUDGET_FLAG[method]
    if flag is not None:
        values[flag] = budget
    values["seed"] = seed
    return config_lib.resolve(config_lib.from_flags(values, base))


def _check_unique(name: str, values: Sequence[Any]) -> None:
    if not values:
        raise ValueError(f"--{name} is empty: give at least one value")
    repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
    if repeated:
        raise ValueError(f"--{name}: {', '.join(repeated)} given more than once")


def check_lists(methods: Sequence[str], budgets: Sequence[float], seeds: Sequence[int]) -> None:
    """Raises ValueError naming the first bad list: empty, repeated, unknown or out of range.

    Methods must be keys of :data:`BUDGET_FLAG`; budgets lie in (0, 1] (needed only when
    a listed method has a budget); seeds are integers >= 0.
    """
    _check_unique("methods", methods)
    unknown = [m for m in methods if m not in BUDGET_FLAG]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown!r}; choose from {', '.join(BUDGET_FLAG)}")
    if any(BUDGET_FLAG[m] is not None for m in methods):
        _check_unique("budgets", budgets)
    for budget in budgets:
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"--budgets: {budget!r} is invalid: each budget lies in (0, 1]")
    _check_unique("seeds", seeds)
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"--seeds: {seed!r} is invalid: each seed is an integer >= 0")


def plan(
    base: config_lib.TrainConfig,
    methods: Sequence[str],
    budgets: Sequence[float],
    seeds: Sequence[int],
    workdir: str,
) -> list[Job]:
    """Every run of the harness, seed by seed, after checking all input.

    ``sgd`` is put first when not listed. Raises ValueError, before anything is written,
    for bad lists (:func:`check_lists`), a config that does not validate, a run folder
    holding a run of other settings, or a workdir that cannot be written.
    """
    check_lists(methods, budgets, seeds)
    preflight.check_workdir(workdir)
    methods = list(methods) if REFERENCE in methods else [REFERENCE, *methods]
    jobs = []
    for seed in seeds:
        for method in methods:
            for budget in budgets if BUDGET_FLAG[method] is not None else [None]:
                path = run_dir(workdir, method, budget, seed)
                config = config_of(base, method, budget, seed)
                loop.check_resumable(config, path)
                jobs.append(Job(method, budget, seed, config, path))
    return jobs


def is_finished(job: Job) -> bool:
    """Whether ``job.workdir`` holds a summary.json of a run with ``job.config``.

    A setting the recorded config lacks (the run was written before the setting
    existed) matches when ``job.config`` holds its default, so that adding a setting
    does not make every finished run train again.
    """
    path = os.path.join(job.workdir, "summary.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        recorded = json.load(f).get("config")
    current = json.loads(json.dumps(config_lib.as_flags(job.config)))
    defaults = json.loads(json.dumps(config_lib.as_flags(config_lib.TrainConfig())))
    if recorded is None or set(recorded) - set(current):
        return False
    return all(recorded.get(k, defaults[k]) == v for k, v in current.items())


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def eta(durations: Sequence[float], remaining: int) -> str:
    """The time left for ``remaining`` runs at the mean of ``durations`` (seconds each)."""
    if not durations:
        return f"{remaining} to train, ETA after the first"
    left = remaining * sum(durations) / len(durations)
    return f"{remaining} to train, ETA {_duration(left)}"


def run(
    jobs: Sequence[Job],
    dataset: data_lib.Dataset,
    *,
    log: Callable[[str], None] = print,
    show_progress: bool | None = None,
) -> list[runs_lib.Run]:
    """Trains the jobs not finished before, in order; returns every job's :class:`Run`.

    ``log`` gets one progress line before and after each run: ``[i/n] <run>``, what
    happens to it, and the ETA of what is left.
    """
    durations: list[float] = []
    for i, job in enumerate(jobs, 1):
        head = f"[{i}/{len(jobs)}] {job.label}"
        if is_finished(job):
            log(f"{head}: finished before, skipped")
            continue
        remaining = sum(not is_finished(j) for j in jobs[i - 1 :])
        log(f"{head}: training in {job.workdir} ({eta(durations, remaining)})")
        started = time.perf_counter()
        summary = loop.train_and_evaluate(
            job.config, job.workdir, dataset=dataset, show_progress=show_progress
        )
        durations.append(time.perf_counter() - started)
        log(
            f"{head}: done in {_duration(durations[-1])}, test accuracy "
            f"{summary['test_accuracy']:.4f} ({eta(durations, remaining - 1)})"
        )
    return [runs_lib.load(j.workdir, j.method, j.budget, j.seed) for j in jobs]


FIGURES = ("accuracy_vs_compute", "accuracy_vs_time", "kept_fraction")


def title_of(base: config_lib.TrainConfig, seeds: Sequence[int]) -> str:
    """The table's title line: model, data, length, precision and seeds."""
    length = f"{base.epochs:g} epochs" if base.steps is None else f"{base.steps} steps"
    return (
        f"{base.model} on {base.dataset}, {length}, {base.bits}-bit, seeds "
        f"{', '.join(map(str, seeds))}; per seed, every method on the same stream from the "
        "same initial weights."
    )


def report(
    all_runs: Sequence[runs_lib.Run],
    workdir: str,
    title: str,
    config: dict[str, Any],
    target: float | None = None,
) -> str:
    """Writes results.md, results.json and ``figures/<name>.{png,svg}``; returns the table."""
    summary = results.summarize(all_runs, target)
    text = results.write(summary, workdir, title, config)
    drawn = {
        "accuracy_vs_compute": figures.accuracy_vs_compute(summary["rows"]),
        "accuracy_vs_time": figures.accuracy_vs_time(all_runs),
        "kept_fraction": figures.kept_fraction(all_runs),
    }
    for name in FIGURES:
        figures.save(drawn[name], os.path.join(workdir, "figures", name))
    return text
