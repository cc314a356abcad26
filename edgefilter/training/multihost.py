"""Joining the processes of a multi-process run (``jax.distributed``), and which one writes.

A run is multi-process when its settings (:class:`~edgefilter.training.config.TrainConfig`)
give a ``--coordinator_address``, ``--num_processes`` above 1 or ``--process_id`` above
0: :func:`join` then calls ``jax.distributed.initialize`` with those given, and JAX
detects the others from the cluster's environment (Slurm, Open MPI, Cloud TPU,
``JAX_COORDINATOR_ADDRESS`` ...). Otherwise (none given, or a resolved one-process
config: 1 process, id 0) the run is one process, as always, and nothing is called: a
Slurm job's variables alone do not make a run multi-process. On the CPU, XLA's
collectives between the processes are JAX's ``jax_cpu_collectives_implementation``:
gloo, JAX 0.10's default, also when it is unset; a user's choice (mpi) is kept.

Each process starts the same command with the same settings but ``--process_id``; the
mesh then spans the devices of every process (:mod:`edgefilter.training.parallel`),
each process gathers its own rows of every chunk, and parameters and state are
replicated on every device of every process. Process 0 alone writes the workdir's
files (``config.json``, ``metrics.jsonl`` and TensorBoard events, snapshots,
``summary.json``); checkpoints are orbax's multi-process saving, which every process
takes part in (:mod:`edgefilter.training.checkpoint`). The workdir must be one folder
that every process sees (on several hosts: a shared file system).
"""

from __future__ import annotations

import json
import zlib

import jax
import numpy as np
from jax.experimental import multihost_utils

from edgefilter.training import config as config_lib

__all__ = ["check_agreement", "is_writer", "join", "requested"]

# Settings that may differ between the processes: each one's number, and each host's
# path to its copy of the data.
_PER_PROCESS = ("process_id", "data_dir")

_INITIALIZATION_TIMEOUT_S = 300  # JAX's default: how long a process waits for the others.


def requested(config: config_lib.TrainConfig) -> bool:
    """Whether ``config`` asks for a multi-process run (see the module doc)."""
    return (
        config.coordinator_address is not None
        or (config.num_processes or 1) > 1
        or (config.process_id or 0) > 0
    )


def join(config: config_lib.TrainConfig) -> None:
    """Connects this process to the other processes of ``config``'s run.

    Does nothing for a one-process run, or when this process has joined already (then
    :func:`~edgefilter.training.config.resolve` checks that it is the process
    ``config`` names). Must come before anything uses a JAX backend (``jax.devices()``,
    any computation); it waits up to 5 minutes for the other processes.

    Raises:
      ValueError: a multi-process setting is invalid (checked before any connection),
        JAX ran in this process before, or the processes could not be joined; one line
        naming the setting.
    """
    if not requested(config) or jax.distributed.is_initialized():
        return
    config_lib.validate(config)
    shown = _shown(config)
    if jax.config.jax_cpu_collectives_implementation is None:  # XLA:CPU could not run
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # across processes.
    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
            initialization_timeout=_INITIALIZATION_TIMEOUT_S,
        )
    except (RuntimeError, ValueError, TypeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ValueError(f"{shown} could not join the run's processes: {reason}") from None


def check_agreement(config: config_lib.TrainConfig) -> None:
    """Raises ValueError unless every process of the run resolved the same settings
    (``--process_id`` and ``--data_dir`` aside): one line naming those that differ, or
    saying that another process did not get here (it stopped, e.g. on a bad setting of
    its own; JAX gives up waiting for it after about 30 s).

    Every process must call it (a collective over the processes); in one process it
    returns at once.
    """
    if jax.process_count() == 1:
        return
    flat = {k: v for k, v in config_lib.as_flags(config).items() if k not in _PER_PROCESS}
    names = sorted(flat)
    digests = np.asarray(
        [zlib.crc32(json.dumps(flat[k], sort_keys=True).encode()) for k in names], np.uint32
    )
    try:
        every = np.asarray(multihost_utils.process_allgather(digests))  # [processes, flags]
    except jax.errors.JaxRuntimeError as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(
            f"process {jax.process_index()}: not every one of the {jax.process_count()} "
            f"processes reached the start of training ({reason}); see the others' output"
        ) from None
    differ = [name for name, column in zip(names, every.T, strict=True) if len(set(column)) > 1]
    if differ:
        shown = ", ".join(f"--{name}" for name in differ)
        raise ValueError(
            f"the {jax.process_count()} processes were given different settings ({shown}); "
            "start each with the same flags but --process_id"
        )


def is_writer() -> bool:
    """Whether this process writes the workdir's files: process 0 (the only one, in a
    one-process run)."""
    return jax.process_index() == 0


def _shown(config: config_lib.TrainConfig) -> str:
    """The multi-process flags given, as on the command line."""
    given = {
        "coordinator_address": config.coordinator_address,
        "num_processes": config.num_processes,
        "process_id": config.process_id,
    }
    return " ".join(f"--{name}={value}" for name, value in given.items() if value is not None)
