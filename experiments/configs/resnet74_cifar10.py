r"""ResNet-74 on CIFAR-10: the second row of the paper's results table (PAPER.md).

Settings (PAPER.md, "Training settings"): SGD momentum 0.9, weight decay 1e-4, batch
128, 64k iterations, lr 0.1 divided by 10 at 32k and 48k; the filter is ResNet-8, lr 0.1
(``common.CIFAR``).

Variants: the paper's computation reduction and accuracy, and the reduction edgefilter
counts for the setting at steady state (MACs, or bit-operations (BOP) at 8 bits, against
32-bit SGD on the same stream; ``common`` says how each setting was chosen):

============  ==================================  ==========================  ============
variant       setting                             paper: reduction, accuracy  counted
============  ==================================  ==========================  ============
sgd           standard SGD                        0%, 93.46%                  0%
eif_emp_64    EIF+EMP, R_set 0.43, EMP keeps 0.5  63.91%, 93.48%              63.84%
eif_emp_8bit  eif_emp_64 in 8-bit training        95.41%, 93.00%              97.68% (BOP)
ohem          OHEM, 8 of each 128 trained         60.59%, 87.90%              60.39%
sd            stochastic depth, p_L 0.5           60%, 90.99%                 25.64%
e2train       E2-Train (SMD + SLU), 8-bit         90.13%, 91.36%              ~97% (BOP)
============  ==================================  ==========================  ============

Commands, from the repository root (tfds must have ``cifar10`` prepared in
``--data_dir`` or ``~/tensorflow_datasets``):

  python -m experiments.train --workdir=runs/resnet74_cifar10/sgd \
      --config=experiments/configs/resnet74_cifar10.py:sgd
  python -m experiments.train --workdir=runs/resnet74_cifar10/eif_emp_64 \
      --config=experiments/configs/resnet74_cifar10.py:eif_emp_64
  python -m experiments.train --workdir=runs/resnet74_cifar10/eif_emp_8bit \
      --config=experiments/configs/resnet74_cifar10.py:eif_emp_8bit
  python -m experiments.train --workdir=runs/resnet74_cifar10/ohem \
      --config=experiments/configs/resnet74_cifar10.py:ohem
  python -m experiments.train --workdir=runs/resnet74_cifar10/sd \
      --config=experiments/configs/resnet74_cifar10.py:sd
  python -m experiments.train --workdir=runs/resnet74_cifar10/e2train \
      --config=experiments/configs/resnet74_cifar10.py:e2train

Flags given beside ``--config`` override the config's values. ``,shrink`` after the
variant (``:eif_emp_64,shrink``) runs it for a few steps on random data
(``experiments.shrink``).
"""

from __future__ import annotations

from edgefilter.training.config import TrainConfig
from experiments.configs import common

SETTINGS = {
    **common.CIFAR,
    "model": "resnet74",
    "dataset": "cifar10",
}
VARIANTS = {
    "sgd": common.SGD,
    "eif_emp_64": common.eif_emp(r_set=0.43),
    "eif_emp_8bit": common.eif_emp(r_set=0.43, bits=8),
    "ohem": common.ohem(r_set=0.06),
    "sd": common.SD,
    "e2train": common.E2TRAIN,
}


def get_config(variant: str | None = None) -> TrainConfig:
    """The run of ``variant``, one of :data:`VARIANTS` (ValueError for another)."""
    return common.build(SETTINGS, VARIANTS, variant)
