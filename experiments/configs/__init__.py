r"""One plain-Python config per row of the paper's results table (PAPER.md, "Reported results").

Each ``<model>_<dataset>.py`` holds the row's network and data, the paper's training
settings for them (:mod:`experiments.configs.common`), and one variant per method the
row reports: ``sgd``, EIF+EMP at each reported reduction (``eif_emp_<percent>``), its
8-bit version where reported (``eif_emp_8bit``) and the row's baselines (``ohem``,
``sd``, ``smb``, ``e2train``). Its docstring gives the paper's figures, what
edgefilter counts for each variant and the exact commands, run from the repository root:

  python -m experiments.train --workdir=runs/resnet110_cifar10/eif_emp_68 \
      --config=experiments/configs/resnet110_cifar10.py:eif_emp_68

``experiments.config_file`` says how ``--config`` is read (flags beside it override its
values; ``,shrink`` after the variant runs it tiny).
"""

from __future__ import annotations

FOLDER = "experiments/configs"
"""Where the rows' files are, relative to the repository root (the commands' cwd)."""

ROWS: tuple[str, ...] = (
    "resnet110_cifar10",
    "resnet74_cifar10",
    "vgg16_cifar10",
    "lenet_mnist",
    "resnet110_cifar100",
    "vgg16_cifar100",
    "resnet18_imagenet",
    "vgg11_imagenet",
)
"""The rows' module names, in the order of the paper's table."""
