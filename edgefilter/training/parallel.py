"""Data parallelism over the local devices: a 1-D mesh and where each array lives on it.

The stream engine's block (:mod:`edgefilter.training.engine`) is one jitted program with
single-device semantics. Run data-parallel, it stays that program: its inputs, a block of
chunks ``[B, m, H, W, C]``, are split along the chunk's instance axis over the mesh's
``"data"`` axis (``m / n`` instances of every chunk on each of ``n`` devices), and
everything else (parameters, optimizer, batch statistics, the selector's state, a
packing selector's queue) is replicated. ``jax.jit`` (GSPMD) partitions the program and
inserts the collectives its global semantics need, so what a chunk-wide reduction
computes is computed over the whole chunk: batch norm's statistics, EMP's channel scores
(every device prunes the same channels), the filter's quantile over the chunk's margins
and its top-k, the main network's gradient. The values equal one device's up to the
order of float reductions. Inside the step, the instances chosen for training and for
probing are constrained to the data axis too (:func:`constrain_batch`), so the main
network's forward and backward are split, not repeated on every device; a count that
does not divide over the devices is padded by XLA.

Nothing here holds state: the mesh is built from the run's config
(``TrainConfig.data_parallel``) and passed to whatever places arrays.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "constrain_batch",
    "data_mesh",
    "default_devices",
    "replicate",
    "replicated",
    "shard_chunks",
]

DATA_AXIS = "data"


def default_devices() -> int:
    """The data-parallel width when none is set: every local device (1 on one device)."""
    return jax.local_device_count()


def data_mesh(devices: int) -> Mesh | None:
    """A 1-D ``"data"`` mesh over the first ``devices`` local devices; None for one.

    With one device the engine runs as it always has (no mesh, no sharding), so a
    one-device run computes exactly what it did before data parallelism existed.

    Raises:
      ValueError: ``devices`` is not between 1 and the local device count.
    """
    local = jax.local_devices()
    if not 1 <= devices <= len(local):
        raise ValueError(f"{devices} devices asked for, {len(local)} local devices exist")
    if devices == 1:
        return None
    return Mesh(np.asarray(local[:devices]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """``tree`` with its ``jax.Array`` leaves replicated over ``mesh`` (None: unchanged).

    NumPy leaves (the loop state's host counters) stay on the host.
    """
    if mesh is None:
        return tree
    sharding = replicated(mesh)
    return jax.tree.map(
        lambda x: jax.device_put(x, sharding) if isinstance(x, jax.Array) else x, tree
    )


def shard_chunks(arrays: Any, mesh: Mesh | None) -> Any:
    """Host arrays ``[B, m, ...]`` (a block of chunks) split along ``m`` over ``mesh``.

    None leaves stay None; with no mesh the arrays are returned as given.
    """
    if mesh is None:
        return arrays
    sharding = NamedSharding(mesh, P(None, DATA_AXIS))
    return jax.tree.map(lambda x: jax.device_put(x, sharding), arrays)


def constrain_batch(tree: Any, mesh: Mesh | None) -> Any:
    """Inside a jitted step: the leading (instance) axis of ``tree``'s arrays split over
    ``mesh``'s data axis (None: unchanged). A length that does not divide is padded."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)
