"""Run configuration: every command-line flag, the paper's defaults, and validation.

A :class:`TrainConfig` is a frozen dataclass, so it is hashable and safe to close over
in jitted code. Fields left as ``None`` take the paper's setting for the chosen model
and dataset when :func:`resolve` is called (PAPER.md, "Training settings"):

* MNIST-like data (mnist, fashion_mnist, idx:*): lr 0.01, momentum 0.5, no weight
  decay, batch 64, 20 epochs, constant learning rate.
* CIFAR-10/100: lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, 64k iterations
  (~164 epochs), lr divided by 10 at 50% and 75% of training (32k and 48k of 64k).
* ImageNet: lr 0.1, momentum 0.9, weight decay 1e-4, batch 256, lr divided by 10 at
  1/3 and 2/3 of training (150k and 300k of 450k).

Under the instance filter the main network trains on packed batches of
``eif_batch_size = round(r_set * batch_size)`` instances: one step per stream
mini-batch on average, as the paper's main network takes (see ``eif_training``).
"""

from __future__ import annotations

import dataclasses
import math

from edgefilter import backends, models
from edgefilter import data as data_lib
from edgefilter.instance_filter import CONTROLS, FilterConfig

METHODS = ("sgd", "emp", "eif", "eif_emp")
EMP_POLICIES = ("topk", "threshold")
BITS = (32, 16, 8, 6, 4)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """All settings of one run; ``None`` means "the paper's default" (see module doc)."""

    model: str = "lenet"
    dataset: str = "fashion_mnist"
    method: str = "sgd"
    bits: int = 32
    epochs: float | None = None
    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    lr_boundaries: tuple[float, ...] | None = None  # Fractions of training; lr /= 10 at each.
    seed: int = 0
    data_dir: str | None = None
    eval_batch_size: int = 1000
    checkpoint_every_steps: int = 1000
    log_every_steps: int = 50
    # Error map pruning (PAPER.md Eq. 11).
    emp_policy: str = "topk"
    emp_keep: float = 0.5
    emp_threshold: float = 1.0
    gamma1: float = 0.0
    gamma2: float = 1.0
    emp_first_layer: bool = False  # Prune the first conv layer's backward too.
    # Early instance filter (PAPER.md Eq. 1-7; see edgefilter.instance_filter).
    r_set: float = FilterConfig.r_set
    alpha1: float = FilterConfig.alpha1
    alpha2: float = FilterConfig.alpha2
    eif_window: int = FilterConfig.window
    entropy_threshold: float = FilterConfig.entropy_threshold
    init_threshold: float = FilterConfig.init_threshold
    filter_model: str | None = None  # lenet_slim / resnet8 / resnet10 by dataset.
    filter_learning_rate: float = 0.1
    filter_lr_decay_steps: int | None = None  # MNIST: 940 filter updates, then lr / 2.
    eif_batch_size: int | None = None  # Packed main-network batch under EIF: r_set * m.
    eif_probe_size: int | None = None  # Sampled instances per main step: eif_batch_size // 8.
    eif_random_probes: int = 1  # Random predicted-L instances sampled per chunk.
    eif_control: str = FilterConfig.control
    eif_label_rate: float | None = FilterConfig.label_rate
    eif_static_threshold: bool = False
    eif_uncertainty: bool = True
    eif_weighted: bool = True
    # edgefilter.backends' switch: XLA:CPU lowerings; None = on when jax.default_backend() is cpu.
    xla_cpu: bool | None = None

    @property
    def uses_emp(self) -> bool:
        return self.method in ("emp", "eif_emp")

    @property
    def uses_eif(self) -> bool:
        return self.method in ("eif", "eif_emp")


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


def validate(config: TrainConfig) -> None:
    """Raises ``ValueError`` naming the first bad value and what is allowed."""

    def fail(name: str, value: object, allowed: str) -> None:
        raise ValueError(f"--{name}={value!r} is invalid: {allowed}")

    if config.model not in models.MODEL_NAMES:
        fail("model", config.model, f"choose one of {', '.join(models.MODEL_NAMES)}")
    if not (config.dataset.startswith("idx:") or config.dataset in data_lib.KNOWN_DATASETS):
        fail(
            "dataset",
            config.dataset,
            f"choose one of {', '.join(data_lib.KNOWN_DATASETS)} or idx:/path/to/folder",
        )
    if config.method not in METHODS:
        fail("method", config.method, f"choose one of {', '.join(METHODS)}")
    if config.bits not in BITS:
        fail("bits", config.bits, f"choose one of {', '.join(map(str, BITS))}")
    if config.epochs is not None and config.steps is not None:
        fail("steps", config.steps, "give --epochs or --steps, not both")
    positive = {
        "epochs": config.epochs,
        "steps": config.steps,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "eval_batch_size": config.eval_batch_size,
        "checkpoint_every_steps": config.checkpoint_every_steps,
        "log_every_steps": config.log_every_steps,
        "eif_batch_size": config.eif_batch_size,
    }
    for name, value in positive.items():
        if value is not None and not (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and value > 0
            and math.isfinite(value)
        ):
            fail(name, value, "must be a positive number")
    if config.momentum is not None and not 0 <= config.momentum < 1:
        fail("momentum", config.momentum, "must lie in [0, 1)")
    if config.weight_decay is not None and config.weight_decay < 0:
        fail("weight_decay", config.weight_decay, "must be >= 0")
    if config.lr_boundaries is not None and any(not 0 < b < 1 for b in config.lr_boundaries):
        fail("lr_boundaries", config.lr_boundaries, "fractions of training, each in (0, 1)")
    if config.emp_policy not in EMP_POLICIES:
        fail("emp_policy", config.emp_policy, f"choose one of {', '.join(EMP_POLICIES)}")
    if not 0 < config.emp_keep <= 1:
        fail("emp_keep", config.emp_keep, "the kept fraction of channels must lie in (0, 1]")
    if config.emp_threshold < 0:
        fail("emp_threshold", config.emp_threshold, "must be >= 0")
    if config.filter_model is not None and config.filter_model not in models.MODEL_NAMES:
        fail("filter_model", config.filter_model, f"choose one of {', '.join(models.MODEL_NAMES)}")
    if not config.filter_learning_rate > 0:
        fail("filter_learning_rate", config.filter_learning_rate, "must be > 0")
    if config.eif_probe_size is not None and config.eif_probe_size < 0:
        fail("eif_probe_size", config.eif_probe_size, "must be >= 0")
    if config.eif_random_probes < 0:
        fail("eif_random_probes", config.eif_random_probes, "must be >= 0")
    if config.uses_eif:
        # FilterConfig names these `window`, `control`, `label_rate`; name the flags instead.
        if not config.eif_window >= 1:
            fail("eif_window", config.eif_window, "must be a positive integer")
        if config.eif_control not in CONTROLS:
            fail("eif_control", config.eif_control, f"choose one of {', '.join(CONTROLS)}")
        if config.eif_label_rate is not None and not 0 < config.eif_label_rate < 1:
            fail("eif_label_rate", config.eif_label_rate, "must lie in (0, 1)")
        filter_config(config)  # Raises for a bad r_set, alpha1, alpha2, entropy_threshold, ...
    if config.gamma1 < 0 or config.gamma2 < 0 or config.gamma1 + config.gamma2 == 0:
        fail(
            "gamma1",
            (config.gamma1, config.gamma2),
            "gamma1 and gamma2 must be >= 0 and not both zero",
        )


_FILTER_MODELS = {"mnist": "lenet_slim", "cifar": "resnet8", "imagenet": "resnet10"}


def filter_config(config: TrainConfig) -> FilterConfig:
    """The instance filter's hyper-parameters from the run's flags."""
    return FilterConfig(
        r_set=config.r_set,
        alpha1=config.alpha1,
        alpha2=config.alpha2,
        window=config.eif_window,
        entropy_threshold=config.entropy_threshold,
        init_threshold=config.init_threshold,
        static_threshold=config.eif_static_threshold,
        uncertainty=config.eif_uncertainty,
        weighted=config.eif_weighted,
        control=config.eif_control,
        label_rate=config.eif_label_rate,
    )


def resolve(config: TrainConfig) -> TrainConfig:
    """Validates ``config`` and fills every ``None`` with the paper's default."""
    validate(config)
    paper = dict(_PAPER[dataset_family(config.dataset)])
    if config.epochs is not None or config.steps is not None:
        paper.pop("epochs", None)
        paper.pop("steps", None)
    family = dataset_family(config.dataset)
    paper["filter_model"] = _FILTER_MODELS[family]
    # The paper's MNIST filter: lr 0.1 decayed to 0.05 after 0.94k iterations.
    paper["filter_lr_decay_steps"] = 940 if family == "mnist" else 0
    filled = {k: v for k, v in paper.items() if getattr(config, k) is None}
    m = config.batch_size or paper["batch_size"]
    # The paper's main network takes one step per stream mini-batch, on the ~R_set * m
    # instances it keeps; packed steps of that size take as many steps as SGD.
    filled["eif_batch_size"] = config.eif_batch_size or max(1, round(config.r_set * m))
    if not config.eif_uncertainty and config.eif_random_probes == 0:
        filled["eif_probe_size"] = 0  # Nothing is sampled, so nothing is probed.
    elif config.eif_probe_size is None:
        filled["eif_probe_size"] = max(1, filled["eif_batch_size"] // 8)
    if config.eif_label_rate is None:
        filled["eif_label_rate"] = config.r_set  # T_l aims at labelling R_set of the stream H.
    filled["xla_cpu"] = backends.use_xla_cpu(config.xla_cpu)
    return dataclasses.replace(config, **filled)
