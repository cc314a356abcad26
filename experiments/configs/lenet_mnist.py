r"""LeNet on MNIST: the fourth row of the paper's results table (PAPER.md).

Settings (PAPER.md, "Training settings"): lr 0.01, momentum 0.5, batch 64, 20 epochs
(18.75k iterations; the paper's "18.7k"); the filter is the slim LeNet, lr 0.1 halved to
0.05 after 0.94k updates (``common.MNIST``).

LeNet: unpadded 5x5 convolutions of 20 and 50 filters, each with 2x2 max pooling, FC
500, FC 10. OHEM's forward on every instance alone is 34.8% of SGD's count, so 65.2% is
its limit here; training one instance per mini-batch, the least it can, gives 63.65%.

Variants: the paper's computation reduction and accuracy, and the reduction edgefilter
counts for the setting at steady state (MACs, or bit-operations (BOP) at 8 bits, against
32-bit SGD on the same stream; ``common`` says how each setting was chosen):

==========  ==================================  ==========================  =======
variant     setting                             paper: reduction, accuracy  counted
==========  ==================================  ==========================  =======
sgd         standard SGD                        0%, 99.23%                  0%
eif_emp_79  EIF+EMP, R_set 0.22, EMP keeps 0.5  78.60%, 99.47%              78.11%
ohem        OHEM, 1 of each 64 trained          65.24%, 99.33%              63.65%
==========  ==================================  ==========================  =======

Commands, from the repository root (tfds must have ``mnist`` prepared in ``--data_dir``
or ``~/tensorflow_datasets``):

  python -m experiments.train --workdir=runs/lenet_mnist/sgd \
      --config=experiments/configs/lenet_mnist.py:sgd
  python -m experiments.train --workdir=runs/lenet_mnist/eif_emp_79 \
      --config=experiments/configs/lenet_mnist.py:eif_emp_79
  python -m experiments.train --workdir=runs/lenet_mnist/ohem \
      --config=experiments/configs/lenet_mnist.py:ohem

Flags given beside ``--config`` override the config's values. ``,shrink`` after the
variant (``:eif_emp_79,shrink``) runs it for a few steps on random data
(``experiments.shrink``).
"""

from __future__ import annotations

from edgefilter.training.config import TrainConfig
from experiments.configs import common

SETTINGS = {
    **common.MNIST,
    "model": "lenet",
}
VARIANTS = {
    "sgd": common.SGD,
    "eif_emp_79": common.eif_emp(r_set=0.22),
    "ohem": common.ohem(r_set=0.01),
}


def get_config(variant: str | None = None) -> TrainConfig:
    """The run of ``variant``, one of :data:`VARIANTS` (ValueError for another)."""
    return common.build(SETTINGS, VARIANTS, variant)
