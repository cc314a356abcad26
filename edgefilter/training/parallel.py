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

**Several processes** (``jax.distributed``, joined by
:mod:`edgefilter.training.multihost`): the mesh spans ``devices`` local devices of every
process, ordered by process, then by device id, so the chunk's instance axis is split
first over the processes, then over each process's devices. With ``P`` processes of
``D`` devices, process ``p`` holds instances ``[p m/P, (p+1) m/P)`` of every chunk
(:func:`local_rows`), its ``d``-th device ``m/(P D)`` of those in order. Each process
gathers only its own rows of each chunk and :func:`shard_chunks` assembles the global
block from every process's rows (``jax.make_array_from_process_local_data``); the
program, and so every value it computes, is the one-process program on the whole chunk,
with XLA's collectives (gloo on CPU) between the processes.

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
    "local_rows",
    "processes",
    "replicate",
    "replicated",
    "shard_chunks",
]

DATA_AXIS = "data"


def default_devices() -> int:
    """The data-parallel width when none is set: every local device (1 on one device)."""
    return jax.local_device_count()


def processes() -> tuple[int, int, bool]:
    """``(this process's index, number of processes, whether it joined any)``:
    ``(0, 1, False)`` unless the process joined others (``jax.distributed``)."""
    return jax.process_index(), jax.process_count(), jax.distributed.is_initialized()


def data_mesh(devices: int) -> Mesh | None:
    """A 1-D ``"data"`` mesh over the first ``devices`` local devices of every process
    (process 0's first, see the module doc); None for one device in one process.

    With one device the engine runs as it always has (no mesh, no sharding), so a
    one-device run computes exactly what it did before data parallelism existed.

    Raises:
      ValueError: ``devices`` is not between 1 and the local device count.
    """
    local = jax.local_devices()
    if not 1 <= devices <= len(local):
        raise ValueError(f"{devices} devices asked for, {len(local)} local devices exist")
    if jax.process_count() == 1:
        return None if devices == 1 else Mesh(np.asarray(local[:devices]), (DATA_AXIS,))
    everywhere = jax.devices()  # Each process's in the order of its jax.local_devices().
    chosen = [
        d
        for process in range(jax.process_count())
        for d in [d for d in everywhere if d.process_index == process][:devices]
    ]
    return Mesh(np.asarray(chosen), (DATA_AXIS,))


def local_rows(mesh: Mesh | None, chunk_size: int) -> slice:
    """The instances of every chunk of ``chunk_size`` that this process's devices hold:
    all of them in one process; process ``p`` of ``P``: ``[p m/P, (p+1) m/P)``."""
    if mesh is None or not mesh.is_multi_process:
        return slice(0, chunk_size)
    held = NamedSharding(mesh, P(DATA_AXIS)).addressable_devices_indices_map((chunk_size,))
    starts = sorted(index[0].indices(chunk_size)[:2] for index in held.values())
    for (_, stop), (start, _) in zip(starts, starts[1:], strict=False):
        if stop != start:
            raise ValueError(f"this process's rows {starts} of a chunk are not contiguous")
    return slice(starts[0][0], starts[-1][1])


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """``tree`` with its ``jax.Array`` leaves replicated over ``mesh`` (None: unchanged).

    NumPy leaves (the loop state's host counters) stay on the host. Over several
    processes each leaf is placed from this process's copy of it (every process holds
    the same values: they come from the same seed), a PRNG key through its key data.
    """
    if mesh is None:
        return tree
    sharding = replicated(mesh)
    if not mesh.is_multi_process:
        return jax.tree.map(
            lambda x: jax.device_put(x, sharding) if isinstance(x, jax.Array) else x, tree
        )

    def place(x: Any) -> Any:
        if not isinstance(x, jax.Array):
            return x
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = place(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.make_array_from_process_local_data(sharding, np.asarray(x), x.shape)

    return jax.tree.map(place, tree)


def shard_chunks(arrays: Any, mesh: Mesh | None) -> Any:
    """Host arrays ``[B, rows, ...]`` (this process's rows of a block of chunks,
    :func:`local_rows`) as global arrays ``[B, m, ...]`` split along ``m`` over ``mesh``.

    In one process the rows are the whole chunk. None leaves stay None; with no mesh
    the arrays are returned as given.
    """
    if mesh is None:
        return arrays
    sharding = NamedSharding(mesh, P(None, DATA_AXIS))
    if not mesh.is_multi_process:
        return jax.tree.map(lambda x: jax.device_put(x, sharding), arrays)
    share = mesh.size // len(mesh.local_devices)  # Global rows per local row.
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(
            sharding, x, (x.shape[0], x.shape[1] * share, *x.shape[2:])
        ),
        arrays,
    )


def constrain_batch(tree: Any, mesh: Mesh | None) -> Any:
    """Inside a jitted step: the leading (instance) axis of ``tree``'s arrays split over
    ``mesh``'s data axis (None: unchanged). A length that does not divide is padded."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)
