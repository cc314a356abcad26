"""edgefilter: on-device CNN training by early instance filtering and error map pruning.

A JAX/Flax implementation of Wu et al., "Enabling On-Device CNN Training by
Self-Supervised Instance Filtering and Error Map Pruning" (IEEE TCAD 2020).

Modules, one concept each:

* ``edgefilter.models``: the paper's networks, with pluggable conv/dot primitives.
* ``edgefilter.emp``: error map pruning, a conv whose backward skips error channels.
* ``edgefilter.eif``: the early instance filter's equations (Eq. 1-7).
* ``edgefilter.flops``: analytic multiply-accumulate counts (forward and backward).
* ``edgefilter.data``: datasets (tfds, offline IDX files), normalisation, augmentation.
* ``edgefilter.train``: jitted steps and the training loop behind the command line.
"""

from edgefilter import config, data, eif, emp, flops, models, train

__all__ = ["config", "data", "eif", "emp", "flops", "models", "train"]
__version__ = "0.1.0"
