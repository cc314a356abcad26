r"""Command-line entry point: train one model with one method on one dataset.

  python -m experiments.train --model=lenet --dataset=fashion_mnist --method=sgd \
      --workdir=/tmp/lenet_sgd

or one row of the paper's results table from its config file (``experiments/configs/``;
``experiments.config_file``), flags given beside ``--config`` overriding its values, and
``,shrink`` after the variant running it for a few steps on random data
(``experiments.shrink``):

  python -m experiments.train --workdir=runs/resnet110_cifar10/eif_emp_68 \
      --config=experiments/configs/resnet110_cifar10.py:eif_emp_68

Every setting of ``edgefilter.training.config.TrainConfig``, the filter's and EMP's
nested in it included, is a flag (``edgefilter.training.config.FLAGS``; ``--help`` lists
them); unset hyper-parameters take the paper's settings for the model and dataset.
Re-running with the same ``--workdir`` resumes the run from its latest checkpoint.

A multi-process run (``jax.distributed``; ``edgefilter.training.multihost``) starts
this command once per process, with the same flags but ``--process_id``:

  python -m experiments.train --coordinator_address=10.0.0.1:8476 --num_processes=2 \
      --process_id=0 --workdir=/shared/run ...   # On 10.0.0.1; --process_id=1 on the other.

A bad flag value or a dataset that cannot be had ends with one line on stderr naming
the problem and exit status 2, before anything is written. A run whose loss or parameters
become non-finite stops at once with one line and exit status 3 (``summary.json`` says
where; the last checkpoint is the last finite state). An error writing the workdir (a
full disk) ends with one line naming the path and exit status 1.
"""

from __future__ import annotations

from absl import app, flags, logging

from edgefilter import data as data_lib
from edgefilter.training import config as config_lib
from edgefilter.training import loop, multihost, preflight
from experiments import cli, config_file, shrink
from experiments.cli import (
    config_from_flags,
    define_config_flags,
    fail,
    parse_flags,
    warn_foreign_flags,
)

define_config_flags()  # One flag per setting of TrainConfig: --model ... --r_set ...
flags.DEFINE_string(
    "config",
    None,
    "A config file and its variant, PATH.py:VARIANT[,shrink] (the paper's rows: "
    "experiments/configs/); flags given beside it override its values.",
)
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
        config, shrunk = run_config()
        config_lib.validate(config)  # Before a multi-process run's processes meet.
        multihost.join(config)
        config = config_lib.resolve(config)
        loop.check_resumable(config, FLAGS.workdir)
        preflight.check_workdir(FLAGS.workdir)
        if shrunk:
            dataset = shrink.dataset(config)
        else:
            dataset = data_lib.load(config.dataset, config.data_dir)
        preflight.check_run(config, dataset)  # Its warnings come from the loop.
        multihost.check_agreement(config)  # Every process passed its checks, alike.
    except (ValueError, data_lib.DataUnavailableError) as e:
        fail(str(e))
    warn_foreign_flags([config.method])
    if shrunk:
        shape = "x".join(map(str, dataset.info.image_shape))
        cli.warn(
            f"shrink: {config.model}, {config.steps} steps of {config.batch_size} on random "
            f"{shape} images standing in for {config.dataset}: a smoke test, not a result"
        )
    with cli.training_exits():
        summary = loop.train_and_evaluate(
            config, FLAGS.workdir, dataset=dataset, show_progress=FLAGS.progress
        )
    if not multihost.is_writer():  # Process 0 of a multi-process run reports.
        return
    print(
        f"{config.method} {config.model} on {config.dataset}: test accuracy "
        f"{summary['test_accuracy']:.4f}, {summary['instances_trained']} of "
        f"{summary['instances_streamed']} instances trained, "
        f"{summary['wall_time_s']:.1f} s -> {FLAGS.workdir}/summary.json"
    )


def run_config() -> tuple[config_lib.TrainConfig, bool]:
    """The run's settings, not yet resolved, and whether they were shrunk.

    With ``--config``: the config file's (:mod:`experiments.config_file`), shrunk if
    asked (:func:`experiments.shrink.config`), with the flags given beside it over them;
    else the flags'. ValueError names a bad value.
    """
    if not FLAGS.config:
        return config_from_flags(), False
    loaded = config_file.load(FLAGS.config)
    base = shrink.config(loaded.config) if loaded.shrink else loaded.config
    return config_from_flags(base), loaded.shrink


def refuse_config_file(command: str) -> None:
    """ValueError if ``--config`` was given to ``command``, which does not read it."""
    if FLAGS["config"].present:
        raise ValueError(
            f"--config={FLAGS.config!r} is invalid: {command} does not read config files; "
            "run them with experiments.train"
        )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
