"""edgefilter: on-device CNN training by early instance filtering and error map pruning.

A JAX/Flax implementation of Wu et al., "Enabling On-Device CNN Training by
Self-Supervised Instance Filtering and Error Map Pruning" (IEEE TCAD 2020).

Modules, one concept each:

* ``edgefilter.models``: the paper's networks, with pluggable conv/dot primitives.
* ``edgefilter.emp``: error map pruning, a conv whose backward skips error channels.
* ``edgefilter.eif``: the early instance filter's equations (Eq. 1-7).
* ``edgefilter.flops``: analytic multiply-accumulate counts (forward and backward).
* ``edgefilter.data``: datasets (tfds, offline IDX files), normalisation, augmentation.
* ``edgefilter.instance_filter``: the filter's state and its predict/update/window steps.
* ``edgefilter.quant``: k-bit quantized conv/dense layers (Banner et al. 2018).
* ``edgefilter.accounting``: the run's counted computation against SGD.
* ``edgefilter.stream``: the instance stream and the packing queue.
* ``edgefilter.train``: the main network's state, optimizer and jitted steps.
* ``edgefilter.loop``: ``train_and_evaluate``, the loop behind the command line.
"""

from edgefilter import (
    accounting,
    config,
    data,
    eif,
    emp,
    flops,
    instance_filter,
    loop,
    models,
    quant,
    state,
    stream,
    train,
)

__all__ = [
    "accounting",
    "config",
    "data",
    "eif",
    "emp",
    "flops",
    "instance_filter",
    "loop",
    "models",
    "quant",
    "state",
    "stream",
    "train",
]
__version__ = "0.1.0"
