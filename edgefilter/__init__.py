"""edgefilter: on-device CNN training by early instance filtering and error map pruning.

A JAX/Flax implementation of Wu et al., "Enabling On-Device CNN Training by
Self-Supervised Instance Filtering and Error Map Pruning" (IEEE TCAD 2020).

Layout (imports run one way: backends -> data, models -> method -> select -> training ->
reporting):

* ``edgefilter.backends``: lowerings written for one backend's speed (XLA:CPU's), behind
  one switch; the method reads the same without them.
* ``edgefilter.data``: datasets (tfds, offline IDX files), normalisation, augmentation.
* ``edgefilter.models``: the paper's networks, with pluggable conv/dot primitives.
* ``edgefilter.method``: the paper's method: ``eif`` (Eq. 1-7), ``instance_filter``
  (the filter as init/predict/update/end_window), ``emp`` (error map pruning, Eq. 8-14),
  ``quant`` (k-bit training) and ``flops`` (analytic MAC counts). These modules are also
  reachable as ``edgefilter.eif``, ``edgefilter.emp``, ... (the names of DESIGN.md).
* ``edgefilter.select``: data selection as one interface (``init`` / ``select`` /
  ``observe``, fixed shapes) with the early instance filter and uniform random
  selection as implementations, for a user's own jitted loop.
* ``edgefilter.training``: the run's config, train state and steps, the stream and its
  runners, the loop, checkpoints, metrics and the compute accounting.
* ``edgefilter.reporting``: tables and figures comparing runs, the baselines harness;
  imported when first used (``edgefilter.reporting`` or ``from edgefilter import
  reporting``): it brings matplotlib and SciPy, which training does not need.

Public API. The modules above are the API; ``__all__`` also re-exports, one by one, the
classes and functions a user's own training code needs whose names say what they are
without their module:

* ``TopK``, ``Threshold``: EMP's selection policies (``edgefilter.emp``).
* ``FilterConfig``, ``FilterState``: the instance filter's settings and state
  (``edgefilter.instance_filter``).
* ``Dataset``, ``DatasetInfo``, ``DataUnavailableError`` (``edgefilter.data``).
* ``TrainState``, ``create_train_state``: a network's parameters, optimizer state and
  batch statistics (``edgefilter.models.state``).
* ``TrainConfig``, ``train_and_evaluate``: the command line's run, callable from Python
  (``edgefilter.training``).

Names that read right only with their module stay qualified: ``models.create``,
``emp.conv_general_dilated``, ``emp.pruning``, ``quant.conv_general_dilated``,
``instance_filter.init`` / ``predict`` / ``update`` / ``end_window``,
``flops.per_instance``, ``data.load``. ``edgefilter.backends`` (lowerings for one
backend's speed) is not part of the public API::

  import edgefilter as ef

  model = ef.models.create("lenet", 10)
  with ef.emp.pruning(ef.TopK(keep_ratio=0.5)):  # every conv but the first
      grads = jax.grad(loss_fn)(params)
"""

import importlib
import sys

from edgefilter import data, method, models, select, training
from edgefilter.data import Dataset, DatasetInfo, DataUnavailableError
from edgefilter.method import eif, emp, flops, instance_filter, quant
from edgefilter.method.emp import Threshold, TopK
from edgefilter.method.instance_filter import FilterConfig, FilterState
from edgefilter.models.state import TrainState, create_train_state
from edgefilter.training.config import TrainConfig
from edgefilter.training.loop import train_and_evaluate

# `import edgefilter.emp` (and the other method modules) keeps working: DESIGN.md's names.
for _name in ("eif", "emp", "flops", "instance_filter", "quant"):
    sys.modules[f"{__name__}.{_name}"] = getattr(method, _name)
del _name

__all__ = [
    # Modules.
    "data",
    "eif",
    "emp",
    "flops",
    "instance_filter",
    "method",
    "models",
    "quant",
    "reporting",
    "select",
    "training",
    # The method's settings and state.
    "FilterConfig",
    "FilterState",
    "Threshold",
    "TopK",
    # Data, networks, training.
    "DataUnavailableError",
    "Dataset",
    "DatasetInfo",
    "TrainConfig",
    "TrainState",
    "create_train_state",
    "train_and_evaluate",
]
__version__ = "0.1.0"

_LAZY_MODULES = ("reporting",)


def __getattr__(name: str):
    """``edgefilter.reporting``, imported on first access (PEP 562)."""
    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_MODULES})
