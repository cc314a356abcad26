"""Run configuration: every setting of a run, defined once, with the paper's defaults.

A :class:`TrainConfig` is a frozen dataclass, so it is hashable and safe to close over
in jitted code. It nests the instance filter's settings (``filter``, a
:class:`~edgefilter.method.instance_filter.FilterConfig`) and error map pruning's
(``emp``, an :class:`EmpConfig`)::

  config = TrainConfig(method="eif_emp", filter=FilterConfig(r_set=0.4),
                       emp=EmpConfig(keep_ratio=0.25))

Fields left as ``None`` take the paper's setting for the chosen model and dataset when
:func:`resolve` is called (PAPER.md, "Training settings"):

* MNIST-like data (mnist, fashion_mnist, idx:*): lr 0.01, momentum 0.5, no weight
  decay, batch 64, 20 epochs, constant learning rate.
* CIFAR-10/100: lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, 64k iterations
  (~164 epochs), lr divided by 10 at 50% and 75% of training (32k and 48k of 64k).
* ImageNet: lr 0.1, momentum 0.9, weight decay 1e-4, batch 256, lr divided by 10 at
  1/3 and 2/3 of training (150k and 300k of 450k).

Under the instance filter the main network trains on packed batches of
``eif_batch_size = round(r_set * batch_size)`` instances: one step per stream
mini-batch on average, as the paper's main network takes (see ``eif_runner``).

**Flags.** Every leaf field of the nested config is one command-line flag: its type and
default are the field's, its help is ``metadata["help"]`` and its name the field's own
or ``metadata["flag"]`` (``FilterConfig.window`` is ``--eif_window``). :data:`FLAGS`
lists them; ``experiments.cli`` defines the absl flags from that list. :func:`as_flags`
flattens a config into ``{flag: value}`` (what ``config.json`` and ``summary.json``
record) and :func:`from_flags` builds one back, naming the flag in its errors
(``--eif_window=0 is invalid: must be a positive integer``) where the nested classes name
their field (``window=0 must be a positive integer``).

**Which flags belong to which methods** is declared with the field, once
(``setting(..., methods=...)``; a nested config's field declares it for all of its
flags), and :func:`foreign_flags` reads it back:

==========================================  ======================================
flags                                        methods
==========================================  ======================================
``TrainConfig.filter`` (``--r_set``,         eif, eif_emp, random, oracle, ohem
``--eif_*``, ``--alpha1`` ...)               (``--r_set`` sizes their choice)
``--filter_*``, ``--eif_batch_size``,        ``EIF_METHODS``: eif, eif_emp
``--eif_probe_size``, ``--eif_random_probes``,
``--eif_history``, ``--eif_predict_ahead``
``TrainConfig.emp`` (``--emp_*``,            ``EMP_METHODS``: emp, eif_emp, and the
``--gamma1``, ``--gamma2``)                  selection baselines (``--select_emp``)
``--select_emp``                             the selection baselines
``--sb_beta``, ``--sb_history``              selective_backprop(_stale)
``--sb_staleness``                           selective_backprop_stale
``--infobatch_*``                            infobatch
``--budget``                                 smb, smd
``--smd_skip``                               smd, e2train
``--sd_final_survival``                      sd
``--slu_beta``, ``--slu_minimum``            e2train
every other flag                             every method
==========================================  ======================================

A new method's flag adds its owners in its ``setting``. Values are validated whatever
the method (a bad value is an error even where it would be ignored); a flag given with
a method that does not use it is ignored with a warning on the command line, except the
budget methods' flags, which are refused (``--budget`` with ``--method=sgd`` would read
as a budget that is not applied).

**The package.** :mod:`.schema` defines the dataclasses and the method lists,
:mod:`.paper` the paper's settings by dataset family, :mod:`.flags` the flags derived
from the fields, :mod:`.checks` the validation of the run-level settings, and
:mod:`.resolution` :func:`resolve`; each imports only those before it in this list
(the checks read the paper's batch size). Import the names from here.
"""

from edgefilter.method.instance_filter import CONTROLS, FilterConfig
from edgefilter.training.config.checks import validate
from edgefilter.training.config.flags import FLAGS, Flag, as_flags, foreign_flags, from_flags
from edgefilter.training.config.paper import dataset_family
from edgefilter.training.config.resolution import resolve
from edgefilter.training.config.schema import (
    BITS,
    BUDGET_METHODS,
    EIF_METHODS,
    EMP_METHODS,
    EMP_POLICIES,
    METHODS,
    PACKING_BASELINES,
    SELECTION_BASELINES,
    EmpConfig,
    TrainConfig,
    setting,
)

__all__ = [
    "BITS",
    "BUDGET_METHODS",
    "CONTROLS",
    "EIF_METHODS",
    "EMP_METHODS",
    "EMP_POLICIES",
    "FLAGS",
    "METHODS",
    "PACKING_BASELINES",
    "SELECTION_BASELINES",
    "EmpConfig",
    "FilterConfig",
    "Flag",
    "TrainConfig",
    "as_flags",
    "dataset_family",
    "foreign_flags",
    "from_flags",
    "resolve",
    "setting",
    "validate",
]
