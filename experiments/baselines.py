r"""Command line: methods x budgets x seeds on the same stream, with a table and figures.

  python -m experiments.baselines --methods=sgd,eif,eif_emp --budgets=0.3,0.5 \
      --seeds=0,1,2 --workdir=runs/baselines

Runs every method at every budget (the value of its budget flag, e.g. ``--r_set`` for
the instance filter; ``edgefilter.reporting.harness.BUDGET_FLAG``) with every seed, one
after the other, each in ``<workdir>/<method>/b<budget>/s<seed>``; ``sgd``, the
reference, is always run. Writes ``<workdir>/results.md`` and ``results.json`` (mean and
95% interval over seeds of final and last-five-epoch test accuracy, counted and measured
reduction, time to ``--target_accuracy``; ``edgefilter.reporting.results``) and
``<workdir>/figures/*.png|svg`` (``edgefilter.reporting.figures``). Every flag of
``experiments.train`` applies to all runs (``--epochs``, ``--bits``, ...), except those the
harness sets: ``--method``, ``--seed`` and the budget flags. Run again with the same
``--workdir`` to skip the finished runs and resume an interrupted one. Bad input ends
with one line on stderr and exit status 2 before anything is written; a run whose loss
or parameters become non-finite stops the harness with exit status 3.
"""

from __future__ import annotations

from absl import app, flags, logging

from edgefilter import data as data_lib
from edgefilter.reporting import harness
from edgefilter.training import config as config_lib
from edgefilter.training import preflight
from experiments import cli
from experiments import train as train_cli

flags.DEFINE_list(
    "methods", ["sgd", "eif", "eif_emp"], "Methods to run: " + ", ".join(harness.BUDGET_FLAG)
)
flags.DEFINE_list(
    "budgets", ["0.3", "0.5"], "Budgets in (0, 1], for each method that has a budget flag."
)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each gives every method the same stream.")
flags.DEFINE_float(
    "target_accuracy",
    None,
    "Test accuracy in (0, 1] whose time to reach is reported "
    "(default: sgd's mean final accuracy less 0.01).",
)
FLAGS = flags.FLAGS


def _numbers(name: str, values: list[str], kind: type) -> list:
    try:
        return [kind(v) for v in values]
    except ValueError:
        allowed = "numbers in (0, 1]" if kind is float else "integers >= 0"
        raise ValueError(f"--{name}={','.join(values)!r} is invalid: {allowed}") from None


def _check_harness_flags() -> None:
    """Refuses flags the harness sets itself, and a target outside (0, 1]."""
    budget_flags = {harness.BUDGET_FLAG[m] for m in FLAGS.methods if m in harness.BUDGET_FLAG}
    for name in ("method", "seed", *sorted(f for f in budget_flags if f)):
        if FLAGS[name].present:
            raise ValueError(
                f"--{name} is set by the harness: use --methods, --seeds and --budgets"
            )
    target = FLAGS.target_accuracy
    if target is not None and not 0.0 < target <= 1.0:
        raise ValueError(f"--target_accuracy={target!r} is invalid: a test accuracy in (0, 1]")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]!r}; all options are --flags")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if not FLAGS.workdir:
        cli.fail("--workdir is required: the directory for the runs, the table and figures")
    try:  # Everything that can be wrong with the input fails here, before any output.
        _check_harness_flags()
        train_cli.refuse_config_file("experiments.baselines")
        budgets = _numbers("budgets", FLAGS.budgets, float)
        seeds = _numbers("seeds", FLAGS.seeds, int)
        base = config_lib.resolve(train_cli.config_from_flags())
        jobs = harness.plan(base, FLAGS.methods, budgets, seeds, FLAGS.workdir)
        dataset = data_lib.load(base.dataset, base.data_dir)
        for job in jobs:  # Every run's data fit and model shapes, before any trains.
            preflight.check_run(job.config, dataset)
    except (ValueError, data_lib.DataUnavailableError) as e:
        cli.fail(str(e))
    cli.warn_foreign_flags([job.config.method for job in jobs])
    # A diverged run stops the harness (exit 3); a rerun resumes the others.
    with cli.training_exits():
        runs = harness.run(
            jobs, dataset, log=lambda line: print(line, flush=True), show_progress=FLAGS.progress
        )
    title = harness.title_of(base, seeds)
    config = config_lib.as_flags(base)
    print(harness.report(runs, FLAGS.workdir, title, config, FLAGS.target_accuracy))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
