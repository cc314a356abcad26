r"""ResNet-18 on ImageNet: the seventh row of the paper's results table (PAPER.md).

Settings (PAPER.md, "Training settings"): batch 256, 450k iterations, lr 0.1 divided by
10 at 150k and 300k, momentum 0.9, weight decay 1e-4; the filter is ResNet-10, lr 0.1
(``common.IMAGENET``).

Accuracies are top-1 (the paper's top-5: SGD 89.08%, EIF+EMP 89.63% and 89.35%);
edgefilter reports top-1 only. Images are resized (shorter side) and centre-cropped to
224x224 (``edgefilter.data``); the training split is not augmented.

Variants: the paper's computation reduction and accuracy, and the reduction edgefilter
counts for the setting at steady state (MACs, or bit-operations (BOP) at 8 bits, against
32-bit SGD on the same stream; ``common`` says how each setting was chosen):

==========  ==================================  ==========================  =======
variant     setting                             paper: reduction, accuracy  counted
==========  ==================================  ==========================  =======
sgd         standard SGD                        0%, 69.76%                  0%
eif_emp_59  EIF+EMP, R_set 0.52, EMP keeps 0.5  58.91%, 70.27%              59.31%
eif_emp_65  EIF+EMP, R_set 0.45, EMP keeps 0.5  64.71%, 68.98%              64.63%
ohem        OHEM, 49 of each 256 trained        46.67%, 62.09%              46.79%
sd          stochastic depth, p_L 0.5           50%, 65.36%                 26.60%
smb         SGD on half of SGD's stream         50%, 65.94%                 50%
==========  ==================================  ==========================  =======

Commands, from the repository root (tfds must have ``imagenet2012`` prepared in
``--data_dir`` or ``~/tensorflow_datasets``):

  python -m experiments.train --workdir=runs/resnet18_imagenet/sgd \
      --config=experiments/configs/resnet18_imagenet.py:sgd
  python -m experiments.train --workdir=runs/resnet18_imagenet/eif_emp_59 \
      --config=experiments/configs/resnet18_imagenet.py:eif_emp_59
  python -m experiments.train --workdir=runs/resnet18_imagenet/eif_emp_65 \
      --config=experiments/configs/resnet18_imagenet.py:eif_emp_65
  python -m experiments.train --workdir=runs/resnet18_imagenet/ohem \
      --config=experiments/configs/resnet18_imagenet.py:ohem
  python -m experiments.train --workdir=runs/resnet18_imagenet/sd \
      --config=experiments/configs/resnet18_imagenet.py:sd
  python -m experiments.train --workdir=runs/resnet18_imagenet/smb \
      --config=experiments/configs/resnet18_imagenet.py:smb

Flags given beside ``--config`` override the config's values. ``,shrink`` after the
variant (``:eif_emp_59,shrink``) runs it for a few steps on random data
(``experiments.shrink``).
"""

from __future__ import annotations

from edgefilter.training.config import TrainConfig
from experiments.configs import common

SETTINGS = {
    **common.IMAGENET,
    "model": "resnet18",
}
VARIANTS = {
    "sgd": common.SGD,
    "eif_emp_59": common.eif_emp(r_set=0.52),
    "eif_emp_65": common.eif_emp(r_set=0.45),
    "ohem": common.ohem(r_set=0.19),
    "sd": common.SD,
    "smb": common.SMB,
}


def get_config(variant: str | None = None) -> TrainConfig:
    """The run of ``variant``, one of :data:`VARIANTS` (ValueError for another)."""
    return common.build(SETTINGS, VARIANTS, variant)
