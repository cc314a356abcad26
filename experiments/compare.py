r"""Command line: several methods on the same stream, tabulated against SGD.

The main job (README): LeNet on the offline Fashion-MNIST, EIF+EMP against SGD:

  python -m experiments.compare --workdir=runs/compare

See ``edgefilter.reporting.comparison`` for what the table holds and the variants there are.
Every flag of ``experiments.train`` applies to all variants (``--epochs``, ``--bits``,
``--r_set``, ...). The table is printed and written to ``<workdir>/comparison.md`` and
``comparison.json``.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from edgefilter import data as data_lib
from edgefilter.reporting import comparison
from edgefilter.training import config as config_lib
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
        print(comparison.merge(FLAGS.merge, FLAGS.workdir))
        return
    try:
        comparison.check_variants(FLAGS.variants)
        base = config_lib.resolve(train_cli.config_from_flags())
        for name in FLAGS.variants:
            config_lib.validate(comparison.variant(base, name))
        dataset = data_lib.load(base.dataset, base.data_dir)
    except (ValueError, data_lib.DataUnavailableError) as e:
        cli.fail(str(e))
    os.makedirs(FLAGS.workdir, exist_ok=True)
    comparison.compare(base, FLAGS.variants, FLAGS.workdir, dataset, show_progress=FLAGS.progress)
    with open(os.path.join(FLAGS.workdir, "comparison.md")) as f:
        print(f.read())


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
