"""edgefilter: on-device CNN training by early instance filtering and error map pruning.

A JAX/Flax implementation of Wu et al., "Enabling On-Device CNN Training by
Self-Supervised Instance Filtering and Error Map Pruning" (IEEE TCAD 2020).

Layout (imports run one way: backends -> data, models -> method -> training -> reporting):

* ``edgefilter.backends``: lowerings written for one backend's speed (XLA:CPU's), behind
  one switch; the method reads the same without them.
* ``edgefilter.data``: datasets (tfds, offline IDX files), normalisation, augmentation.
* ``edgefilter.models``: the paper's networks, with pluggable conv/dot primitives.
* ``edgefilter.method``: the paper's method: ``eif`` (Eq. 1-7), ``instance_filter``
  (the filter as init/predict/update/end_window), ``emp`` (error map pruning, Eq. 8-14),
  ``quant`` (k-bit training) and ``flops`` (analytic MAC counts). These modules are also
  reachable as ``edgefilter.eif``, ``edgefilter.emp``, ... (the names of DESIGN.md).
* ``edgefilter.training``: the run's config, train state and steps, the stream and its
  runners, the loop, checkpoints, metrics and the compute accounting.
* ``edgefilter.reporting``: tables comparing runs.
"""

import sys

from edgefilter import data, method, models, reporting, training
from edgefilter.method import eif, emp, flops, instance_filter, quant

# `import edgefilter.emp` (and the other method modules) keeps working: DESIGN.md's names.
for _name in ("eif", "emp", "flops", "instance_filter", "quant"):
    sys.modules[f"{__name__}.{_name}"] = getattr(method, _name)
del _name

__all__ = [
    "data",
    "eif",
    "emp",
    "flops",
    "instance_filter",
    "method",
    "models",
    "quant",
    "reporting",
    "training",
]
__version__ = "0.1.0"
