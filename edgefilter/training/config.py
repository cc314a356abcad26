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
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from edgefilter import backends, models
from edgefilter import data as data_lib
from edgefilter.method import emp
from edgefilter.method.instance_filter import CONTROLS, FilterConfig
from edgefilter.training import parallel

__all__ = [
    "BITS",
    "BUDGET_METHODS",
    "CONTROLS",
    "EMP_POLICIES",
    "FLAGS",
    "METHODS",
    "PACKING_BASELINES",
    "SELECTION_BASELINES",
    "EmpConfig",
    "FilterConfig",
    "Flag",
    "TrainConfig",
    "EIF_METHODS",
    "EMP_METHODS",
    "as_flags",
    "dataset_family",
    "foreign_flags",
    "from_flags",
    "resolve",
    "validate",
]

# Schedule- and model-level baselines (issue 18): edgefilter.training.budget (smb, smd),
# edgefilter.models.stochastic_depth (sd), and e2train (see TrainConfig.uses_smd).
BUDGET_METHODS = ("smb", "smd", "sd", "e2train")
# Data-selection baselines on the selection interface (issue #18; edgefilter.select).
SELECTION_BASELINES = (
    "random",
    "oracle",
    "ohem",
    "selective_backprop",
    "selective_backprop_stale",
    "infobatch",
)
# Those whose kept count varies: packed into full batches at each block's end.
PACKING_BASELINES = ("selective_backprop", "selective_backprop_stale", "infobatch")
METHODS = ("sgd", "emp", "eif", "eif_emp", *SELECTION_BASELINES, *BUDGET_METHODS)
EIF_METHODS = ("eif", "eif_emp")  # The methods with an instance filter.
# Flag ownership (foreign_flags): --r_set also sizes random, oracle and ohem's choice,
# and --select_emp adds EMP (its flags) to any selection baseline.
FILTER_FLAG_METHODS = (*EIF_METHODS, "random", "oracle", "ohem")
EMP_METHODS = ("emp", "eif_emp", *SELECTION_BASELINES)
EMP_POLICIES = ("topk", "threshold")
BITS = (32, 16, 8, 6, 4)


def setting(
    default: Any, help: str, flag: str | None = None, methods: tuple[str, ...] | None = None
) -> Any:
    """A config field: its default, its flag's help, and the flag's name if not the field's.

    For a field holding a nested config (``TrainConfig.filter``), ``help`` is the label
    put before the help of each of the nested config's flags (``"EIF: ..."``).
    ``methods`` declares the methods the setting belongs to (None: every method); a
    nested config's fields inherit it. Given on the command line with another method,
    the flag is ignored with a warning (:func:`foreign_flags`).
    """
    metadata: dict[str, Any] = {"help": help}
    if flag is not None:
        metadata["flag"] = flag
    if methods is not None:
        metadata["methods"] = tuple(methods)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class EmpConfig:
    """Error map pruning's settings (PAPER.md Eq. 8-14); :meth:`as_policy` is the policy.

    Both policies' parameters are kept, so that switching ``policy`` needs no other
    setting; a bad value raises ``ValueError`` naming the field (through
    :class:`~edgefilter.method.emp.TopK` and :class:`~edgefilter.method.emp.Threshold`,
    which check their own parameters).
    """

    policy: str = setting("topk", f"one of {', '.join(EMP_POLICIES)}.", "emp_policy")
    keep_ratio: float = setting(
        0.5, "fraction of error channels the topk policy keeps.", "emp_keep"
    )
    threshold: float = setting(
        1.0, "the threshold policy keeps channels with S_j >= threshold * mean(S).", "emp_threshold"
    )
    gamma1: float = setting(emp.TopK.gamma1, "weight of ||W_j||_1 in the score S_j (Eq. 11).")
    gamma2: float = setting(emp.TopK.gamma2, "weight of ||delta_ij||_1 in S_j (Eq. 11).")
    first_layer: bool = setting(
        False,
        "prune the first conv layer's backward too (default: it stays dense).",
        "emp_first_layer",
    )

    def __post_init__(self) -> None:
        if self.policy not in EMP_POLICIES:
            raise ValueError(f"policy={self.policy!r} must be one of {', '.join(EMP_POLICIES)}")
        if not isinstance(self.first_layer, bool):
            raise TypeError(f"first_layer={self.first_layer!r} must be True or False")
        emp.TopK(self.keep_ratio, self.gamma1, self.gamma2)
        emp.Threshold(self.threshold, self.gamma1, self.gamma2)

    def as_policy(self) -> emp.Policy:
        """The pruning policy: ``TopK`` or ``Threshold`` with these parameters (Eq. 11)."""
        if self.policy == "topk":
            return emp.TopK(self.keep_ratio, self.gamma1, self.gamma2)
        return emp.Threshold(self.threshold, self.gamma1, self.gamma2)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """All settings of one run; ``None`` means "the paper's default" (see module doc)."""

    model: str = setting("lenet", "Main network: one of edgefilter.models.")
    dataset: str = setting(
        "fashion_mnist", "mnist, fashion_mnist, cifar10, cifar100, imagenet2012 or idx:/folder."
    )
    method: str = setting("sgd", f"One of: {', '.join(METHODS)}.")
    bits: int = setting(32, f"Training precision: {', '.join(map(str, BITS))}.")
    epochs: float | None = setting(None, "Epochs over the training set (default: the paper's).")
    steps: int | None = setting(None, "Training steps instead of --epochs.")
    batch_size: int | None = setting(None, "Mini-batch size m (default: the paper's).")
    learning_rate: float | None = setting(None, "Initial learning rate (default: the paper's).")
    momentum: float | None = setting(None, "SGD momentum (default: the paper's).")
    weight_decay: float | None = setting(None, "L2 weight decay (default: the paper's).")
    lr_boundaries: tuple[float, ...] | None = setting(
        None, "Fractions of training at which the learning rate is divided by 10."
    )
    seed: int = setting(0, "Seed of initialisation and stream order.")
    data_dir: str | None = setting(None, "tensorflow-datasets data directory.")
    eval_batch_size: int = setting(1000, "Evaluation batch size.")
    checkpoint_every_steps: int = setting(
        1000, "Checkpoint period in steps (also at every epoch end)."
    )
    log_every_steps: int = setting(50, "How often per-step metrics are flushed to metrics.jsonl.")
    block_chunks: int = setting(
        8,
        "Chunks per on-device block of the stream engine: one dispatch and one host sync "
        "per block; metrics, evaluation and checkpoints happen at block ends.",
    )
    xla_cpu: bool | None = setting(
        None, "XLA:CPU lowerings: default on when jax.default_backend() is cpu."
    )
    snapshots: int = setting(
        4,
        "Chunks, evenly spaced from the first to the last, saved with the selection's "
        "keep/drop decision on each instance to <workdir>/snapshots/ (the paper's Fig. 13; "
        "edgefilter.training.snapshots); 0: none.",
        methods=(*EIF_METHODS, *SELECTION_BASELINES),
    )
    data_parallel: int | None = setting(
        None,
        "Local devices each chunk is split over (a 1-D data mesh; parameters and state "
        "replicated): default all of them. --batch_size must divide over them.",
    )
    coordinator_address: str | None = setting(
        None,
        "Multi-process run (jax.distributed): HOST:PORT of process 0's coordinator, the "
        "same for every process. Giving it, --num_processes > 1 or --process_id > 0 joins "
        "the processes (those not given: JAX's detection from the cluster's environment); "
        "none of them: one process.",
    )
    num_processes: int | None = setting(
        None,
        "Multi-process run: how many processes, each with --data_parallel local devices "
        "(--batch_size must divide over all of them); see --coordinator_address.",
    )
    process_id: int | None = setting(
        None,
        "Multi-process run: this process's number in [0, --num_processes); process 0 "
        "writes the workdir. See --coordinator_address.",
    )
    emp: EmpConfig = setting(EmpConfig(), "EMP", methods=EMP_METHODS)
    filter: FilterConfig = setting(FilterConfig(), "EIF", methods=FILTER_FLAG_METHODS)
    filter_model: str | None = setting(
        None,
        "EIF: filter network (default: lenet_slim, resnet8 or resnet10 by dataset).",
        methods=EIF_METHODS,
    )
    filter_learning_rate: float = setting(0.1, "EIF: filter lr.", methods=EIF_METHODS)
    filter_lr_decay_steps: int | None = setting(
        None,
        "EIF: filter updates after which its lr halves (MNIST: 940; 0: never).",
        methods=EIF_METHODS,
    )
    eif_batch_size: int | None = setting(
        None,
        "EIF: instances per main-network step, packed from the filter's selection "
        "(default: round(r_set * batch_size), one main step per chunk as in the paper).",
        methods=EIF_METHODS,
    )
    eif_probe_size: int | None = setting(
        None,
        "EIF: uncertainty-sampled instances probed per main step (eif_batch_size/8).",
        methods=EIF_METHODS,
    )
    eif_random_probes: int = setting(
        1,
        "EIF: random predicted-L instances sampled per chunk (set T_l under quantile control).",
        methods=EIF_METHODS,
    )
    eif_history: bool = setting(
        False,
        "EIF: rank each chunk by the filter's margin together with each instance's last "
        "recorded main-network loss (select.with_loss_history; issue 19, not in the paper).",
        methods=EIF_METHODS,
    )
    eif_predict_ahead: bool = setting(
        False,
        "EIF: the filter predicts a whole block of --block_chunks chunks in one forward, "
        "from its parameters at the block's start (up to block_chunks - 1 updates stale; "
        "select.eif's predict_ahead; not in the paper).",
        methods=EIF_METHODS,
    )
    # --- smb, smd, sd, e2train (BUDGET_METHODS): None takes the source's default. ---
    budget: float | None = setting(
        None,
        "smb/smd: compute budget in (0, 1], a fraction of SGD's iterations: smb trains on "
        "the first budget of the stream (default 0.5), smd skips each mini-batch with "
        "probability 1 - budget (sets --smd_skip).",
        methods=("smb", "smd"),
    )
    smd_skip: float | None = setting(
        None,
        "smd/e2train: probability that a mini-batch is skipped (E2-Train: 0.5).",
        methods=("smd", "e2train"),
    )
    sd_final_survival: float | None = setting(
        None,
        "sd: survival probability p_L of the last residual block (Huang et al.: 0.5).",
        methods=("sd",),
    )
    slu_beta: float | None = setting(
        None,
        "e2train: weight of SLU's computational-cost term (E2-Train's code: 1e-5).",
        methods=("e2train",),
    )
    slu_minimum: float | None = setting(
        None,
        "e2train: executed percentage of gated blocks below which the cost term rewards "
        "executing (E2-Train's code: 100, i.e. always).",
        methods=("e2train",),
    )
    # Data-selection baselines (issue #18; edgefilter.select), the sources' defaults.
    select_emp: bool = setting(
        False,
        "random/oracle/ohem/selective_backprop*/infobatch: with EMP (--emp_* settings).",
        methods=SELECTION_BASELINES,
    )
    sb_beta: float = setting(
        3.0,
        "selective_backprop: keep probability CDF(loss)^beta (Jiang et al. 2019: 3).",
        methods=("selective_backprop", "selective_backprop_stale"),
    )
    sb_history: int = setting(
        1024,
        "selective_backprop: recent losses the CDF is taken over (Jiang et al.: 1024).",
        methods=("selective_backprop", "selective_backprop_stale"),
    )
    sb_staleness: int = setting(
        3,
        "selective_backprop_stale: epochs a forwarded loss is reused (Jiang et al.: 3).",
        methods=("selective_backprop_stale",),
    )
    infobatch_prune: float = setting(
        0.5,
        "infobatch: fraction of the below-mean-loss instances pruned (Qin et al. 2024).",
        methods=("infobatch",),
    )
    infobatch_delta: float = setting(
        0.875,
        "infobatch: prune in the first delta of the epochs, then train on everything.",
        methods=("infobatch",),
    )

    @property
    def uses_emp(self) -> bool:
        return self.method in ("emp", "eif_emp") or self.select_emp

    @property
    def uses_eif(self) -> bool:
        return self.method in EIF_METHODS

    @property
    def uses_smd(self) -> bool:
        """Whether whole mini-batches are skipped (edgefilter.training.budget)."""
        return self.method in ("smd", "e2train")

    @property
    def uses_sd(self) -> bool:
        """Whether residual blocks are bypassed (edgefilter.models.stochastic_depth)."""
        return self.method == "sd"

    @property
    def uses_host_queue(self) -> bool:
        """Whether EIF runs on the host-queue runner (``training.eif_runner``), not the
        stream engine: the argmax rule, or a main batch other than ``round(r_set * m)``.
        Needs a resolved config (``eif_batch_size`` filled in)."""
        one_step_per_chunk = self.eif_batch_size == max(
            1, round(self.filter.r_set * self.batch_size)
        )
        return self.uses_eif and (self.filter.control != "quantile" or not one_step_per_chunk)


# --- The paper's defaults -------------------------------------------------------------------


def dataset_family(dataset: str) -> str:
    """``"mnist"``, ``"cifar"`` or ``"imagenet"``: which of the paper's settings applies."""
    if dataset.startswith("idx:") or dataset in ("mnist", "fashion_mnist"):
        return "mnist"
    if dataset.startswith("cifar"):
        return "cifar"
    return "imagenet"


_PAPER = {
    # family: (lr, momentum, weight decay, batch, iterations or epochs, lr boundaries)
    "mnist": dict(
        learning_rate=0.01,
        momentum=0.5,
        weight_decay=0.0,
        batch_size=64,
        epochs=20.0,
        lr_boundaries=(),
    ),
    "cifar": dict(
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=128,
        steps=64_000,
        lr_boundaries=(0.5, 0.75),
    ),
    "imagenet": dict(
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=256,
        steps=450_000,
        lr_boundaries=(1 / 3, 2 / 3),
    ),
}
_FILTER_MODELS = {"mnist": "lenet_slim", "cifar": "resnet8", "imagenet": "resnet10"}


def resolve(config: TrainConfig) -> TrainConfig:
    """Validates ``config`` and fills every ``None`` with the paper's default."""
    validate(config)
    family = dataset_family(config.dataset)
    paper = dict(_PAPER[family])
    if config.epochs is not None or config.steps is not None:
        paper.pop("epochs", None)
        paper.pop("steps", None)
    paper["filter_model"] = _FILTER_MODELS[family]
    # The paper's MNIST filter: lr 0.1 decayed to 0.05 after 0.94k iterations.
    paper["filter_lr_decay_steps"] = 940 if family == "mnist" else 0
    filled = {k: v for k, v in paper.items() if getattr(config, k) is None}
    filled.update(_eif_sizes(config, config.batch_size or paper["batch_size"]))
    if config.filter.label_rate is None:  # T_l aims at labelling R_set of the stream H.
        filled["filter"] = dataclasses.replace(config.filter, label_rate=config.filter.r_set)
    filled["xla_cpu"] = backends.use_xla_cpu(config.xla_cpu)
    if config.data_parallel is None:
        filled["data_parallel"] = parallel.default_devices()
    filled.update(_budget_defaults(config))
    index, count, joined = parallel.processes()  # 0, 1, False unless this process joined.
    if config.num_processes is None:
        filled["num_processes"] = count
    if config.process_id is None:
        filled["process_id"] = index
    resolved = dataclasses.replace(config, **filled)
    _check_resolved(resolved)
    _check_joined(resolved, index, count, joined)
    _check_data_parallel(resolved)
    return resolved


def _budget_defaults(config: TrainConfig) -> dict[str, float]:
    """The budget methods' settings: SMB's budget, SMD's skip probability, SD's p_L."""
    filled = {}
    if config.method == "smb" and config.budget is None:
        filled["budget"] = 0.5  # The paper's SMB rows (PAPER.md): 50% of SGD's iterations.
    if config.uses_smd and config.smd_skip is None:
        # E2-Train's released code skips a mini-batch when U(0, 1) > 0.5.
        filled["smd_skip"] = 0.5 if config.budget is None else 1.0 - config.budget
    if config.uses_sd and config.sd_final_survival is None:
        filled["sd_final_survival"] = 0.5  # Huang et al. 2016, Sec. 4: p_L = 0.5.
    if config.method == "e2train":  # E2-Train's main_all.py: --beta 1e-5, --minimum 100.
        filled["slu_beta"] = 1e-5 if config.slu_beta is None else config.slu_beta
        filled["slu_minimum"] = 100.0 if config.slu_minimum is None else config.slu_minimum
    return filled


def _eif_sizes(config: TrainConfig, batch_size: int) -> dict[str, int]:
    """The packed main batch and the probes per main step, unless given."""
    # The paper's main network takes one step per stream mini-batch, on the ~R_set * m
    # instances it keeps; packed steps of that size take as many steps as SGD.
    eif_batch = config.eif_batch_size or max(1, round(config.filter.r_set * batch_size))
    sizes = {"eif_batch_size": eif_batch}
    if not config.filter.uncertainty and config.eif_random_probes == 0:
        sizes["eif_probe_size"] = 0  # Nothing is sampled, so nothing is probed.
    elif config.eif_probe_size is None:
        sizes["eif_probe_size"] = max(1, eif_batch // 8)
    return sizes


# --- Validation of the run-level fields (FilterConfig and EmpConfig check their own) -------


def _fail(name: str, value: object, allowed: str) -> typing.NoReturn:
    raise ValueError(f"--{name}={value!r} is invalid: {allowed}")


def validate(config: TrainConfig) -> None:
    """Raises ``ValueError`` naming the first bad value (as its flag) and what is allowed.

    The nested ``filter`` and ``emp`` settings were checked when they were constructed.
    Every value is checked whatever the method (a bad value is an error even where the
    method ignores it); :func:`foreign_flags` says which given flags it ignores.
    """
    _check_choices(config)
    _check_positive(config)
    _check_optimizer(config)
    _check_probes(config)
    _check_budget(config)
    _check_baselines(config)
    _check_processes(config)
    _check_finite(config)


def _check_finite(config: TrainConfig) -> None:
    """Every number is finite (NaN or infinity has no meaning in any setting)."""
    for name, value in as_flags(config).items():
        if isinstance(value, tuple):
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in value):
                _fail(name, value, "every entry must be a finite number")
        elif isinstance(value, float) and not math.isfinite(value):
            _fail(name, value, "must be a finite number")


def _check_choices(config: TrainConfig) -> None:
    """The names: model, dataset, method, precision and filter network."""
    if config.model not in models.MODEL_NAMES:
        _fail("model", config.model, f"choose one of {', '.join(models.MODEL_NAMES)}")
    if not (config.dataset.startswith("idx:") or config.dataset in data_lib.KNOWN_DATASETS):
        known = ", ".join(data_lib.KNOWN_DATASETS)
        _fail("dataset", config.dataset, f"choose one of {known} or idx:/path/to/folder")
    if config.method not in METHODS:
        _fail("method", config.method, f"choose one of {', '.join(METHODS)}")
    seed = config.seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        _fail("seed", seed, "must be an integer in [0, 2**32)")
    if config.bits not in BITS:
        _fail("bits", config.bits, f"choose one of {', '.join(map(str, BITS))}")
    if config.filter_model is not None and config.filter_model not in models.MODEL_NAMES:
        _fail("filter_model", config.filter_model, f"choose one of {', '.join(models.MODEL_NAMES)}")


def _check_positive(config: TrainConfig) -> None:
    """The run's length, batch sizes and cadences: positive finite numbers (or None)."""
    if config.epochs is not None and config.steps is not None:
        _fail("steps", config.steps, "give --epochs or --steps, not both")
    for name in (
        "epochs",
        "steps",
        "batch_size",
        "learning_rate",
        "eval_batch_size",
        "checkpoint_every_steps",
        "log_every_steps",
        "block_chunks",
        "eif_batch_size",
        "data_parallel",
    ):
        value = getattr(config, name)
        if value is not None and not (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and value > 0
            and math.isfinite(value)
        ):
            _fail(name, value, "must be a positive number")
    snapshots = config.snapshots
    if isinstance(snapshots, bool) or not isinstance(snapshots, numbers.Integral) or snapshots < 0:
        _fail("snapshots", snapshots, "must be an integer >= 0")


def _check_optimizer(config: TrainConfig) -> None:
    """Momentum, weight decay, learning-rate boundaries and the filter's learning rate."""
    if config.momentum is not None and not 0 <= config.momentum < 1:
        _fail("momentum", config.momentum, "must lie in [0, 1)")
    if config.weight_decay is not None and config.weight_decay < 0:
        _fail("weight_decay", config.weight_decay, "must be >= 0")
    boundaries = config.lr_boundaries
    if boundaries is not None and any(not 0 < b < 1 for b in boundaries):
        _fail("lr_boundaries", boundaries, "fractions of training, each in (0, 1)")
    if boundaries is not None and any(a >= b for a, b in itertools.pairwise(boundaries)):
        _fail("lr_boundaries", boundaries, "fractions of training in increasing order")
    if not config.filter_learning_rate > 0:
        _fail("filter_learning_rate", config.filter_learning_rate, "must be > 0")
    if config.filter_lr_decay_steps is not None and config.filter_lr_decay_steps < 0:
        _fail("filter_lr_decay_steps", config.filter_lr_decay_steps, "must be >= 0 (0: never)")


def _check_probes(config: TrainConfig) -> None:
    """The filter's sampled instances per main step and per chunk."""
    if config.eif_probe_size is not None and config.eif_probe_size < 0:
        _fail("eif_probe_size", config.eif_probe_size, "must be >= 0")
    if config.eif_random_probes < 0:
        _fail("eif_random_probes", config.eif_random_probes, "must be >= 0")


def _check_resolved(config: TrainConfig) -> None:
    """What only the filled-in sizes tell: the probes a chunk of the stream engine holds.

    On the stream engine (quantile control, one main step per chunk) a chunk's probes
    are drawn from its predicted-L instances, ``batch_size - eif_batch_size`` of them;
    the host-queue runner (argmax control, or another ``--eif_batch_size``) queues
    probes across chunks and takes any number.
    """
    if not config.uses_eif:
        return
    train = max(1, round(config.filter.r_set * config.batch_size))
    for name in ("eif_history", "eif_predict_ahead"):
        if getattr(config, name) and config.uses_host_queue:
            _fail(
                name,
                True,
                "needs the stream engine: --eif_control=quantile and the default "
                f"--eif_batch_size ({train})",
            )
    if config.uses_host_queue:
        return
    limit = config.batch_size - train
    if config.eif_probe_size > limit:
        _fail(
            "eif_probe_size",
            config.eif_probe_size,
            f"at most {limit}: a chunk of --batch_size={config.batch_size} holds {limit} "
            f"instances the filter does not keep (the {train} it keeps are trained)",
        )


def _check_data_parallel(config: TrainConfig) -> None:
    """The devices exist, a chunk splits evenly over them (over every process's, in a
    multi-process run), and the method runs on the stream engine (the host-queue runner
    of the argmax rule or another ``--eif_batch_size`` is single-device and
    single-process)."""
    devices, local = config.data_parallel, parallel.default_devices()
    processes = config.num_processes
    if isinstance(devices, bool) or not isinstance(devices, numbers.Integral):
        _fail("data_parallel", devices, "must be a positive integer")
    if devices > local:
        _fail("data_parallel", devices, f"at most {local}, the local devices")
    if devices * processes == 1:
        return
    if config.batch_size % (devices * processes):
        over = f"--data_parallel={devices} devices"
        if processes > 1:
            over = f"--num_processes={processes} x --data_parallel={devices} devices"
        _fail(
            "batch_size",
            config.batch_size,
            f"a chunk of {config.batch_size} does not split over {over}; use a multiple "
            "of the device count",
        )
    if config.uses_host_queue:
        if processes > 1:
            _fail(
                "num_processes",
                processes,
                "--eif_control=argmax and a non-default --eif_batch_size run in one process "
                "only (their host-side queue); use one process",
            )
        _fail(
            "data_parallel",
            devices,
            "--eif_control=argmax and a non-default --eif_batch_size run on one device "
            "only (their host-side queue); use --data_parallel=1",
        )


def _host_port(address: object) -> bool:
    """Whether ``address`` is ``HOST:PORT`` (``[IPV6]:PORT``) with PORT in [1, 65535]."""
    if not isinstance(address, str) or ":" not in address or any(c.isspace() for c in address):
        return False
    host, port = address.rsplit(":", 1)
    if host.startswith("["):
        bracketed = host.endswith("]") and len(host) > 2
        host_ok = bracketed and "[" not in host[1:-1] and "]" not in host[1:-1]
    else:
        host_ok = bool(host) and not set(host) & set(":[]/")
    return host_ok and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535


def _check_processes(config: TrainConfig) -> None:
    """The multi-process settings, each on its own and together, before any process is
    joined (``edgefilter.training.multihost``): a connection is never attempted with a
    value that cannot work."""
    count, index = config.num_processes, config.process_id
    integer = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)  # noqa: E731
    if count is not None and not (integer(count) and count >= 1):
        _fail("num_processes", count, "must be a positive integer")
    if index is not None and not (integer(index) and index >= 0):
        _fail("process_id", index, "must be an integer >= 0")
    if count is not None and index is not None and index >= count:
        _fail("process_id", index, f"must lie in [0, --num_processes={count})")
    address = config.coordinator_address
    if address is not None and not _host_port(address):
        _fail(
            "coordinator_address",
            address,
            "HOST:PORT of process 0's coordinator, e.g. 10.0.0.1:8476 or [::1]:8476, "
            "PORT in [1, 65535]",
        )


def _check_joined(config: TrainConfig, index: int, count: int, joined: bool) -> None:
    """The process is the one the settings say: joined to ``--num_processes`` processes
    as ``--process_id`` (``jax.process_count()`` and ``jax.process_index()``), through
    a coordinator if one is named (``jax.distributed.is_initialized()``)."""
    how = "edgefilter.training.multihost.join joins them (experiments.train calls it)"
    if config.coordinator_address is not None and not joined:
        _fail(
            "coordinator_address",
            config.coordinator_address,
            f"this process has joined no other processes; {how}",
        )
    if config.num_processes != count:
        _fail(
            "num_processes",
            config.num_processes,
            f"this process is one of {count}, not of {config.num_processes}; {how}",
        )
    if config.process_id != index:
        _fail(
            "process_id",
            config.process_id,
            f"this process is process {index} of {count}; {how}",
        )


def _check_budget(config: TrainConfig) -> None:
    """smb/smd/sd/e2train: their settings' ranges, and no setting given to another method."""
    if config.budget is not None and not 0 < config.budget <= 1:
        _fail("budget", config.budget, "a fraction of SGD's iterations in (0, 1]")
    if config.smd_skip is not None and not 0 <= config.smd_skip < 1:
        _fail("smd_skip", config.smd_skip, "a probability in [0, 1)")
    if config.sd_final_survival is not None and not 0 < config.sd_final_survival <= 1:
        _fail("sd_final_survival", config.sd_final_survival, "a probability in (0, 1]")
    if config.slu_beta is not None and not config.slu_beta >= 0:
        _fail("slu_beta", config.slu_beta, "must be >= 0")
    if config.slu_minimum is not None and not 0 <= config.slu_minimum <= 100:
        _fail("slu_minimum", config.slu_minimum, "a percentage in [0, 100]")
    for name in ("budget", "smd_skip", "sd_final_survival", "slu_beta", "slu_minimum"):
        methods = _BY_NAME[name].methods  # Declared on the field (setting(methods=...)).
        if getattr(config, name) is not None and config.method not in methods:
            _fail(name, getattr(config, name), f"only --method={' or '.join(methods)} uses it")
    if (
        config.method == "smd"
        and None not in (config.budget, config.smd_skip)
        and not math.isclose(config.smd_skip, 1.0 - config.budget)
    ):
        _fail("smd_skip", config.smd_skip, f"--budget={config.budget} sets it to 1 - budget")
    if config.uses_sd and not models.has_residual_blocks(config.model):
        _fail("method", config.method, f"--model={config.model} has no residual blocks")
    if config.method == "e2train" and not models.has_slu_gates(config.model):
        _fail("method", config.method, f"--model={config.model} is not a CIFAR ResNet (SLU)")


def _check_baselines(config: TrainConfig) -> None:
    """The data-selection baselines' settings (issue #18; sources in edgefilter.select)."""
    if config.select_emp and config.method not in SELECTION_BASELINES:
        _fail(
            "select_emp",
            config.select_emp,
            f"it adds EMP to a selection baseline only ({', '.join(SELECTION_BASELINES)}); "
            "for SGD or EIF with EMP use --method=emp or --method=eif_emp",
        )
    if not (config.sb_beta > 0 and math.isfinite(config.sb_beta)):
        _fail("sb_beta", config.sb_beta, "must be a positive number")
    batch_size = config.batch_size or _PAPER[dataset_family(config.dataset)]["batch_size"]
    if config.sb_history < batch_size:
        _fail("sb_history", config.sb_history, f"must be at least the batch size, {batch_size}")
    if config.sb_staleness < 1:
        _fail("sb_staleness", config.sb_staleness, "must be a positive integer")
    if not 0 <= config.infobatch_prune <= 0.9:
        # InfoBatch keeps at least a tenth of the well-learned instances (its keep_ratio).
        _fail("infobatch_prune", config.infobatch_prune, "must lie in [0, 0.9]")
    if not 0 <= config.infobatch_delta <= 1:
        _fail("infobatch_delta", config.infobatch_delta, "must lie in [0, 1]")


# --- Flags: derived from the fields -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Flag:
    """One command-line flag: a leaf field of :class:`TrainConfig` or of a config in it.

    Attributes:
      name: the flag's name (``metadata["flag"]``, else the field's name).
      path: the field's attribute path from a TrainConfig, e.g. ``("filter", "window")``.
      kind: ``str``, ``int``, ``float``, ``bool`` or ``tuple`` (a list of floats).
      default: the field's default.
      help: the field's ``metadata["help"]``, after its group's (``"EIF: ..."``).
      methods: the methods the setting belongs to (``metadata["methods"]``, its own or
        its nested config's field's); None for every method.
    """

    name: str
    path: tuple[str, ...]
    kind: type
    default: Any
    help: str
    methods: tuple[str, ...] | None = None


def _field_types(cls: type) -> list[tuple[dataclasses.Field, type]]:
    """Each field of the dataclass ``cls`` with its type, ``None`` and type arguments dropped."""
    hints = typing.get_type_hints(cls)
    out = []
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if isinstance(hint, types.UnionType):  # `X | None`.
            (hint,) = (a for a in typing.get_args(hint) if a is not type(None))
        out.append((field, typing.get_origin(hint) or hint))
    return out


def _walk(
    cls: type,
    path: tuple[str, ...] = (),
    group: str = "",
    methods: tuple[str, ...] | None = None,
) -> list[Flag]:
    out = []
    for field, kind in _field_types(cls):
        if "help" not in field.metadata:
            raise TypeError(f"{cls.__name__}.{field.name} needs metadata['help']: it is a flag")
        help_, where = field.metadata["help"], (*path, field.name)
        owners = field.metadata.get("methods", methods)
        if dataclasses.is_dataclass(kind):
            out += _walk(kind, where, help_, owners)
        else:
            name = field.metadata.get("flag", field.name)
            help_ = f"{group}: {help_}" if group else help_
            out.append(Flag(name, where, kind, field.default, help_, owners))
    return out


FLAGS: tuple[Flag, ...] = tuple(_walk(TrainConfig))
_BY_NAME = {f.name: f for f in FLAGS}
if len(_BY_NAME) != len(FLAGS):
    raise TypeError(f"two config fields share a flag name: {[f.name for f in FLAGS]}")


def foreign_flags(methods: Sequence[str], given: Sequence[str]) -> list[str]:
    """The flags among ``given`` that none of ``methods`` uses, in ``given``'s order.

    Which flag belongs to which methods is declared once, in its field's
    ``metadata["methods"]`` (:func:`setting`): ``--r_set`` and the other ``EIF:`` flags
    belong to eif and eif_emp, the ``EMP:`` flags to emp and eif_emp, the rest to every
    method. ``foreign_flags(["sgd"], ["r_set", "epochs"]) == ["r_set"]``.
    """
    return [
        name
        for name in given
        if name in _BY_NAME
        and _BY_NAME[name].methods is not None
        and not set(methods) & set(_BY_NAME[name].methods)
    ]


def as_flags(config: TrainConfig) -> dict[str, Any]:
    """``{flag name: value}`` for every flag: the flat record of ``config``."""
    out = {}
    for flag in FLAGS:
        value = config
        for attribute in flag.path:
            value = getattr(value, attribute)
        out[flag.name] = value
    return out


def from_flags(values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """The TrainConfig of ``base`` (default: ``TrainConfig()``) with flag ``values`` set.

    ``values`` maps flag names to values, e.g. ``{"method": "eif", "eif_window": 4}``;
    ``lr_boundaries`` may be a sequence of numbers or of numeric strings (as absl's list
    flags give). A bad value raises ``ValueError`` naming its flag:
    ``--eif_window=0 is invalid: must be a positive integer``.
    """
    unknown = sorted(set(values) - set(_BY_NAME))
    if unknown:
        raise ValueError(f"unknown flags {unknown}; the flags are {', '.join(_BY_NAME)}")
    flat = as_flags(base if base is not None else TrainConfig())
    flat.update({name: _parse(_BY_NAME[name], value) for name, value in values.items()})
    return _build(TrainConfig, (), flat)


def _parse(flag: Flag, value: Any) -> Any:
    if flag.kind is not tuple or value is None:
        return value
    items = value.split(",") if isinstance(value, str) else value
    try:
        return tuple(float(v) for v in items)
    except (TypeError, ValueError):
        shown = ",".join(map(str, items)) if isinstance(items, Sequence) else items
        raise ValueError(
            f"--{flag.name}={shown!r} is invalid: comma-separated fractions in (0, 1)"
        ) from None


def _build(cls: type, path: tuple[str, ...], flat: dict[str, Any]) -> Any:
    """An instance of ``cls`` (at ``path`` in a TrainConfig) from flat flag values."""
    kwargs, flag_of = {}, {}
    for field, kind in _field_types(cls):
        where = (*path, field.name)
        if dataclasses.is_dataclass(kind):
            kwargs[field.name] = _build(kind, where, flat)
        else:
            flag_of[field.name] = field.metadata.get("flag", field.name)
            kwargs[field.name] = flat[flag_of[field.name]]
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise _name_the_flag(e, kwargs, flag_of) from None


def _name_the_flag(error: ValueError, kwargs: dict[str, Any], flag_of: dict[str, str]) -> Exception:
    """``window=0 must ...`` (a field's error) as ``--eif_window=0 is invalid: must ...``."""
    message = str(error)
    for name, flag in flag_of.items():
        prefix = f"{name}={kwargs[name]!r} "
        if message.startswith(prefix + "must"):
            return ValueError(f"--{flag}={kwargs[name]!r} is invalid: {message[len(prefix) :]}")
    return error
