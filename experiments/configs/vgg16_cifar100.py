r"""VGG-16 on CIFAR-100: the sixth row of the paper's results table (PAPER.md).

Settings (PAPER.md, "Training settings"): SGD momentum 0.9, weight decay 1e-4, batch
128, 64k iterations, lr 0.1 divided by 10 at 32k and 48k; the filter is ResNet-8, lr 0.1
(``common.CIFAR``).

VGG-16 with batch norm and the CIFAR head (global pooling, one FC layer).

Variants: the paper's computation reduction and accuracy, and the reduction edgefilter
counts for the setting at steady state (MACs, or bit-operations (BOP) at 8 bits, against
32-bit SGD on the same stream; ``common`` says how each setting was chosen):

==========  ==================================  ==========================  =======
variant     setting                             paper: reduction, accuracy  counted
==========  ==================================  ==========================  =======
sgd         standard SGD                        0%, 71.56%                  0%
eif_emp_50  EIF+EMP, R_set 0.64, EMP keeps 0.5  50.49%, 71.59%              50.49%
eif_emp_54  EIF+EMP, R_set 0.59, EMP keeps 0.5  53.86%, 70.92%              54.09%
ohem        OHEM, 26 of each 128 trained        46.99%, 65.17%              46.29%
smb         SGD on half of SGD's stream         50%, 68.76%                 50%
==========  ==================================  ==========================  =======

Commands, from the repository root (tfds must have ``cifar100`` prepared in
``--data_dir`` or ``~/tensorflow_datasets``):

  python -m experiments.train --workdir=runs/vgg16_cifar100/sgd \
      --config=experiments/configs/vgg16_cifar100.py:sgd
  python -m experiments.train --workdir=runs/vgg16_cifar100/eif_emp_50 \
      --config=experiments/configs/vgg16_cifar100.py:eif_emp_50
  python -m experiments.train --workdir=runs/vgg16_cifar100/eif_emp_54 \
      --config=experiments/configs/vgg16_cifar100.py:eif_emp_54
  python -m experiments.train --workdir=runs/vgg16_cifar100/ohem \
      --config=experiments/configs/vgg16_cifar100.py:ohem
  python -m experiments.train --workdir=runs/vgg16_cifar100/smb \
      --config=experiments/configs/vgg16_cifar100.py:smb

Flags given beside ``--config`` override the config's values. ``,shrink`` after the
variant (``:eif_emp_50,shrink``) runs it for a few steps on random data
(``experiments.shrink``).
"""

from __future__ import annotations

from edgefilter.training.config import TrainConfig
from experiments.configs import common

SETTINGS = {
    **common.CIFAR,
    "model": "vgg16",
    "dataset": "cifar100",
}
VARIANTS = {
    "sgd": common.SGD,
    "eif_emp_50": common.eif_emp(r_set=0.64),
    "eif_emp_54": common.eif_emp(r_set=0.59),
    "ohem": common.ohem(r_set=0.20),
    "smb": common.SMB,
}


def get_config(variant: str | None = None) -> TrainConfig:
    """The run of ``variant``, one of :data:`VARIANTS` (ValueError for another)."""
    return common.build(SETTINGS, VARIANTS, variant)
