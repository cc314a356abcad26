r"""VGG-11 on ImageNet: the eighth and last row of the paper's results table (PAPER.md).

Settings (PAPER.md, "Training settings"): batch 256, 450k iterations, lr 0.1 divided by
10 at 150k and 300k, momentum 0.9, weight decay 1e-4; the filter is ResNet-10, lr 0.1
(``common.IMAGENET``).

Accuracies are top-1 (the paper's top-5: SGD 89.81%, EIF+EMP 89.98% and 89.83%);
edgefilter reports top-1 only. Deviation: ``--model=vgg11`` is VGG-11 with batch norm
and the CIFAR head (global pooling, one FC layer); the paper's SGD figures (70.38%,
89.81%) are torchvision's for VGG-11 with batch norm and the original FC 4096-4096 head
(``VGG(head="imagenet")`` in ``edgefilter.models.vgg``, which no flag selects yet). The
head is 1.6% of the network's forward MACs. Images are resized and centre-cropped to
224x224, not augmented.

Variants: the paper's computation reduction and accuracy, and the reduction edgefilter
counts for the setting at steady state (MACs, or bit-operations (BOP) at 8 bits, against
32-bit SGD on the same stream; ``common`` says how each setting was chosen):

==========  ==================================  ==========================  =======
variant     setting                             paper: reduction, accuracy  counted
==========  ==================================  ==========================  =======
sgd         standard SGD                        0%, 70.38%                  0%
eif_emp_52  EIF+EMP, R_set 0.67, EMP keeps 0.5  51.63%, 70.36%              51.39%
eif_emp_61  EIF+EMP, R_set 0.54, EMP keeps 0.5  60.59%, 70.01%              60.92%
ohem        OHEM, 51 of each 256 trained        46.59%, 56.39%              46.62%
smb         SGD on half of SGD's stream         50%, 63.76%                 50%
==========  ==================================  ==========================  =======

Commands, from the repository root (tfds must have ``imagenet2012`` prepared in
``--data_dir`` or ``~/tensorflow_datasets``):

  python -m experiments.train --workdir=runs/vgg11_imagenet/sgd \
      --config=experiments/configs/vgg11_imagenet.py:sgd
  python -m experiments.train --workdir=runs/vgg11_imagenet/eif_emp_52 \
      --config=experiments/configs/vgg11_imagenet.py:eif_emp_52
  python -m experiments.train --workdir=runs/vgg11_imagenet/eif_emp_61 \
      --config=experiments/configs/vgg11_imagenet.py:eif_emp_61
  python -m experiments.train --workdir=runs/vgg11_imagenet/ohem \
      --config=experiments/configs/vgg11_imagenet.py:ohem
  python -m experiments.train --workdir=runs/vgg11_imagenet/smb \
      --config=experiments/configs/vgg11_imagenet.py:smb

Flags given beside ``--config`` override the config's values. ``,shrink`` after the
variant (``:eif_emp_52,shrink``) runs it for a few steps on random data
(``experiments.shrink``).
"""

from __future__ import annotations

from edgefilter.training.config import TrainConfig
from experiments.configs import common

SETTINGS = {
    **common.IMAGENET,
    "model": "vgg11",
}
VARIANTS = {
    "sgd": common.SGD,
    "eif_emp_52": common.eif_emp(r_set=0.67),
    "eif_emp_61": common.eif_emp(r_set=0.54),
    "ohem": common.ohem(r_set=0.20),
    "smb": common.SMB,
}


def get_config(variant: str | None = None) -> TrainConfig:
    """The run of ``variant``, one of :data:`VARIANTS` (ValueError for another)."""
    return common.build(SETTINGS, VARIANTS, variant)
