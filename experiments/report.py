r"""Command line: a report over finished runs, report.md with the table and the figures.

  python -m experiments.report runs/baselines runs/lenet_eif_emp --out=runs/report

Finds every finished run (a folder with ``summary.json``) under the given folders (run
workdirs, ``experiments.baselines`` workdirs, or folders of them), and writes
``<out>/report.md``: the table of ``edgefilter.reporting.results`` (mean and 95%
interval over seeds per method and budget) and the paper's figures drawn from the runs
(accuracy against remaining computation, Fig. 6/8; the loss threshold, Fig. 10; the
filter's wrong-prediction ratio, Fig. 11; kept and dropped instances, Fig. 13; EMP's
kept channels per layer, Fig. 14), saved as PNG and SVG in ``<out>/report_figures/``
(``edgefilter.reporting.report``). ``--out`` defaults to the first folder given. A
path that is not a folder, no finished run, two copies of one run, or an ``--out``
that cannot be written end with one line and exit status 2 before anything is written.
"""

from __future__ import annotations

import sys

from absl import app, flags

from edgefilter.reporting import report
from edgefilter.training import preflight
from experiments import cli

flags.DEFINE_string(
    "out", None, "Folder of report.md and report_figures/ (default: the first folder given)."
)
# experiments.baselines defines the same flag: either may be imported first (the tests
# import both into one process), so the later definition replaces the earlier.
flags.DEFINE_float(
    "target_accuracy",
    None,
    "Test accuracy in (0, 1] whose time to reach is reported (default: sgd's mean final "
    "accuracy less 0.01; without an sgd run, the best mean final accuracy less 0.01).",
    allow_override=True,
)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    paths = argv[1:]
    if not paths:
        cli.fail("give the folders to report on: run workdirs or harness workdirs")
    out = FLAGS.out or paths[0]
    target = FLAGS.target_accuracy
    if target is not None and not 0.0 < target <= 1.0:
        cli.fail(f"--target_accuracy={target!r} is invalid: a test accuracy in (0, 1]")
    try:  # Everything that can be wrong with the input fails here, before any output.
        runs, left_out = report.find_runs(paths)
        if not runs:
            cli.fail(f"no finished run (a folder with summary.json) under {', '.join(paths)}")
        preflight.check_workdir(out, "out")
    except (FileNotFoundError, ValueError) as e:
        cli.fail(str(e))
    for path in left_out:
        cli.warn(f"{path} left out: the run diverged or has no final accuracy")
    with cli.training_exits():  # A write that fails (a full disk): one line, exit 1.
        path = report.write(runs, out, target=target, left_out=left_out)
    print(path, file=sys.stdout)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
