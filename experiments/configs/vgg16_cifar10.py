r"""VGG-16 on CIFAR-10: the third row of the paper's results table (PAPER.md).

Settings (PAPER.md, "Training settings"): SGD momentum 0.9, weight decay 1e-4, batch
128, 64k iterations, lr 0.1 divided by 10 at 32k and 48k; the filter is ResNet-8, lr 0.1
(``common.CIFAR``).

VGG-16 with batch norm and the CIFAR head (global pooling, one FC layer).

Variants: the paper's computation reduction and accuracy, and the reduction edgefilter
counts for the setting at steady state (MACs, or bit-operations (BOP) at 8 bits, against
32-bit SGD on the same stream; ``common`` says how each setting was chosen):

============  ==================================  ==========================  ============
variant       setting                             paper: reduction, accuracy  counted
============  ==================================  ==========================  ============
sgd           standard SGD                        0%, 93.25%                  0%
eif_emp_67    EIF+EMP, R_set 0.42, EMP keeps 0.5  67.33%, 93.15%              67.12%
eif_emp_8bit  eif_emp_67 in 8-bit training        95.54%, 92.69%              97.92% (BOP)
ohem          OHEM, 8 of each 128 trained         60.41%, 71.81%              60.35%
============  ==================================  ==========================  ============

Commands, from the repository root (tfds must have ``cifar10`` prepared in
``--data_dir`` or ``~/tensorflow_datasets``):

  python -m experiments.train --workdir=runs/vgg16_cifar10/sgd \
      --config=experiments/configs/vgg16_cifar10.py:sgd
  python -m experiments.train --workdir=runs/vgg16_cifar10/eif_emp_67 \
      --config=experiments/configs/vgg16_cifar10.py:eif_emp_67
  python -m experiments.train --workdir=runs/vgg16_cifar10/eif_emp_8bit \
      --config=experiments/configs/vgg16_cifar10.py:eif_emp_8bit
  python -m experiments.train --workdir=runs/vgg16_cifar10/ohem \
      --config=experiments/configs/vgg16_cifar10.py:ohem

Flags given beside ``--config`` override the config's values. ``,shrink`` after the
variant (``:eif_emp_67,shrink``) runs it for a few steps on random data
(``experiments.shrink``).
"""

from __future__ import annotations

from edgefilter.training.config import TrainConfig
from experiments.configs import common

SETTINGS = {
    **common.CIFAR,
    "model": "vgg16",
    "dataset": "cifar10",
}
VARIANTS = {
    "sgd": common.SGD,
    "eif_emp_67": common.eif_emp(r_set=0.42),
    "eif_emp_8bit": common.eif_emp(r_set=0.42, bits=8),
    "ohem": common.ohem(r_set=0.06),
}


def get_config(variant: str | None = None) -> TrainConfig:
    """The run of ``variant``, one of :data:`VARIANTS` (ValueError for another)."""
    return common.build(SETTINGS, VARIANTS, variant)
