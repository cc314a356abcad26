r"""Command-line entry point: train one model with one method on one dataset.

  python -m experiments.train --model=lenet --dataset=fashion_mnist --method=sgd \
      --workdir=/tmp/lenet_sgd

Every setting of ``edgefilter.training.config.TrainConfig``, the filter's and EMP's
nested in it included, is a flag (``edgefilter.training.config.FLAGS``; ``--help`` lists
them); unset hyper-parameters take the paper's settings for the model and dataset.
Re-running with the same ``--workdir`` resumes the run from its latest checkpoint. A bad
flag value or a dataset that cannot be had ends with one line on stderr naming the
problem and exit status 2, before anything is written. A run whose loss or parameters
become non-finite stops at once with one line and exit status 3 (``summary.json`` says
where; the last checkpoint is the last finite state). An error writing the workdir (a
full disk) ends with one line naming the path and exit status 1.
"""

from __future__ import annotations

from absl import app, flags, logging

from edgefilter import data as data_lib
from edgefilter.training import config as config_lib
from edgefilter.training import loop, preflight
from experiments import cli
from experiments.cli import (
    config_from_flags,
    define_config_flags,
    fail,
    parse_flags,
    warn_foreign_flags,
)

define_config_flags()  # One flag per setting of TrainConfig: --model ... --r_set ...
flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, summary).")
flags.DEFINE_bool("progress", None, "Show the progress display (default: on a terminal).")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]!r}; all options are --flags")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
    if not FLAGS.workdir:
        fail("--workdir is required: the directory for checkpoints, metrics and summary.json")
    try:  # Everything that can be wrong with the input fails here, before any output.
        config = config_lib.resolve(config_from_flags())
        loop.check_resumable(config, FLAGS.workdir)
        preflight.check_workdir(FLAGS.workdir)
        dataset = data_lib.load(config.dataset, config.data_dir)
        preflight.check_run(config, dataset)  # Its warnings come from the loop.
    except (ValueError, data_lib.DataUnavailableError) as e:
        fail(str(e))
    warn_foreign_flags([config.method])
    with cli.training_exits():
        summary = loop.train_and_evaluate(
            config, FLAGS.workdir, dataset=dataset, show_progress=FLAGS.progress
        )
    print(
        f"{config.method} {config.model} on {config.dataset}: test accuracy "
        f"{summary['test_accuracy']:.4f}, {summary['instances_trained']} of "
        f"{summary['instances_streamed']} instances trained, "
        f"{summary['wall_time_s']:.1f} s -> {FLAGS.workdir}/summary.json"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
