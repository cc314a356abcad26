"""Validation of the run-level settings (``FilterConfig`` and ``EmpConfig`` check their
own): every error names the bad value as its flag and says what is allowed."""

from __future__ import annotations

import itertools
import math
import numbers
import typing

from edgefilter import data as data_lib
from edgefilter import models
from edgefilter.training import parallel
from edgefilter.training.config.flags import BY_NAME, as_flags
from edgefilter.training.config.paper import PAPER, dataset_family
from edgefilter.training.config.schema import (
    BITS,
    METHODS,
    SELECTION_BASELINES,
    TrainConfig,
)

__all__ = ["check_data_parallel", "check_joined", "check_resolved", "validate"]


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


def check_resolved(config: TrainConfig) -> None:
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


def check_data_parallel(config: TrainConfig) -> None:
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


def check_joined(config: TrainConfig, index: int, count: int, joined: bool) -> None:
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
        methods = BY_NAME[name].methods  # Declared on the field (setting(methods=...)).
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
    batch_size = config.batch_size or PAPER[dataset_family(config.dataset)]["batch_size"]
    if config.sb_history < batch_size:
        _fail("sb_history", config.sb_history, f"must be at least the batch size, {batch_size}")
    if config.sb_staleness < 1:
        _fail("sb_staleness", config.sb_staleness, "must be a positive integer")
    if not 0 <= config.infobatch_prune <= 0.9:
        # InfoBatch keeps at least a tenth of the well-learned instances (its keep_ratio).
        _fail("infobatch_prune", config.infobatch_prune, "must lie in [0, 0.9]")
    if not 0 <= config.infobatch_delta <= 1:
        _fail("infobatch_delta", config.infobatch_delta, "must lie in [0, 1]")
