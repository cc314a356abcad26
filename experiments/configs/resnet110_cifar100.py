r"""ResNet-110 on CIFAR-100: the fifth row of the paper's results table (PAPER.md).

Settings (PAPER.md, "Training settings"): SGD momentum 0.9, weight decay 1e-4, batch
128, 64k iterations, lr 0.1 divided by 10 at 32k and 48k; the filter is ResNet-8, lr 0.1
(``common.CIFAR``).

Variants: the paper's computation reduction and accuracy, and the reduction edgefilter
counts for the setting at steady state (MACs, or bit-operations (BOP) at 8 bits, against
32-bit SGD on the same stream; ``common`` says how each setting was chosen):

============  ==================================  ==========================  ============
variant       setting                             paper: reduction, accuracy  counted
============  ==================================  ==========================  ============
sgd           standard SGD                        0%, 71.60%                  0%
eif_emp_50    EIF+EMP, R_set 0.63, EMP keeps 0.5  50.02%, 72.02%              50.08%
eif_emp_56    EIF+EMP, R_set 0.55, EMP keeps 0.5  56.24%, 71.63%              56.83%
eif_emp_8bit  eif_emp_50 in 8-bit training        92.92%, 71.29%              96.80% (BOP)
ohem          OHEM, 26 of each 128 trained        47.01%, 69.98%              46.33%
sd            stochastic depth, p_L 0.5           50%, 70.44%                 25.43%
smb           SGD on half of SGD's stream         50%, 67.28%                 50%
e2train       E2-Train (SMD + SLU), 8-bit         90.13%, 67.94%              ~97% (BOP)
============  ==================================  ==========================  ============

Commands, from the repository root (tfds must have ``cifar100`` prepared in
``--data_dir`` or ``~/tensorflow_datasets``):

  python -m experiments.train --workdir=runs/resnet110_cifar100/sgd \
      --config=experiments/configs/resnet110_cifar100.py:sgd
  python -m experiments.train --workdir=runs/resnet110_cifar100/eif_emp_50 \
      --config=experiments/configs/resnet110_cifar100.py:eif_emp_50
  python -m experiments.train --workdir=runs/resnet110_cifar100/eif_emp_56 \
      --config=experiments/configs/resnet110_cifar100.py:eif_emp_56
  python -m experiments.train --workdir=runs/resnet110_cifar100/eif_emp_8bit \
      --config=experiments/configs/resnet110_cifar100.py:eif_emp_8bit
  python -m experiments.train --workdir=runs/resnet110_cifar100/ohem \
      --config=experiments/configs/resnet110_cifar100.py:ohem
  python -m experiments.train --workdir=runs/resnet110_cifar100/sd \
      --config=experiments/configs/resnet110_cifar100.py:sd
  python -m experiments.train --workdir=runs/resnet110_cifar100/smb \
      --config=experiments/configs/resnet110_cifar100.py:smb
  python -m experiments.train --workdir=runs/resnet110_cifar100/e2train \
      --config=experiments/configs/resnet110_cifar100.py:e2train

Flags given beside ``--config`` override the config's values. ``,shrink`` after the
variant (``:eif_emp_50,shrink``) runs it for a few steps on random data
(``experiments.shrink``).
"""

from __future__ import annotations

from edgefilter.training.config import TrainConfig
from experiments.configs import common

SETTINGS = {
    **common.CIFAR,
    "model": "resnet110",
    "dataset": "cifar100",
}
VARIANTS = {
    "sgd": common.SGD,
    "eif_emp_50": common.eif_emp(r_set=0.63),
    "eif_emp_56": common.eif_emp(r_set=0.55),
    "eif_emp_8bit": common.eif_emp(r_set=0.63, bits=8),
    "ohem": common.ohem(r_set=0.20),
    "sd": common.SD,
    "smb": common.SMB,
    "e2train": common.E2TRAIN,
}


def get_config(variant: str | None = None) -> TrainConfig:
    """The run of ``variant``, one of :data:`VARIANTS` (ValueError for another)."""
    return common.build(SETTINGS, VARIANTS, variant)
