r"""Command line: several methods on the same stream, tabulated against SGD.

The main job (README): LeNet on the offline Fashion-MNIST, EIF+EMP against SGD:

  python -m experiments.compare --workdir=runs/compare

See ``edgefilter.reporting.comparison`` for what the table holds and the variants there are.
Every flag of ``experiments.train`` applies to all variants (``--epochs``, ``--bits``,
``--r_set``, ...). The table is printed and written to ``<workdir>/comparison.md`` and
``comparison.json``. Exit statuses as ``experiments.train``'s: 2 for bad input (every
variant's settings, its workdir and the data are checked before the first trains), 3
when a variant diverges.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from edgefilter import data as data_lib
from edgefilter.reporting import comparison
from edgefilter.training import config as config_lib
from edgefilter.training import loop, preflight
from experiments import cli
from experiments import train as train_cli

flags.DEFINE_list(
    "variants", ["sgd", "eif_emp"], "Variants to run: " + ", ".join(comparison.VARIANTS)
)
flags.DEFINE_list(
    "merge", None, "Instead of running: merge the comparison.json of these workdirs into one."
)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]!r}; all options are --flags")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if not FLAGS.workdir:
        cli.fail("--workdir is required: the directory for the runs and the table")
    if FLAGS.merge:
        try:
            print(comparison.merge(FLAGS.merge, FLAGS.workdir))
        except (OSError, ValueError, KeyError) as e:  # A workdir without its table.
            cli.fail(f"--merge={','.join(FLAGS.merge)!r}: cannot merge: {e}")
        return
    try:  # Every variant's settings, workdir and data are checked before any trains.
        comparison.check_variants(FLAGS.variants)
        train_cli.refuse_config_file("experiments.compare")
        base = config_lib.resolve(train_cli.config_from_flags())
        preflight.check_workdir(FLAGS.workdir)
        dataset = data_lib.load(base.dataset, base.data_dir)
        configs = [config_lib.resolve(comparison.variant(base, v)) for v in FLAGS.variants]
        for name, config in zip(FLAGS.variants, configs, strict=True):
            loop.check_resumable(config, os.path.join(FLAGS.workdir, name))
            preflight.check_run(config, dataset)
    except (ValueError, data_lib.DataUnavailableError) as e:
        cli.fail(str(e))
    cli.warn_foreign_flags([config.method for config in configs])
    os.makedirs(FLAGS.workdir, exist_ok=True)
    with cli.training_exits():
        comparison.compare(
            base, FLAGS.variants, FLAGS.workdir, dataset, show_progress=FLAGS.progress
        )
    with open(os.path.join(FLAGS.workdir, "comparison.md")) as f:
        print(f.read())


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
