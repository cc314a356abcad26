"""Resumable checkpoints of the whole training loop state, with orbax.

The loop state (parameters, optimizer state, batch-norm statistics, filter state and
the stream position) is one pytree, so a run killed at any point, even with SIGKILL,
resumes from its latest complete checkpoint: orbax writes each checkpoint into a
temporary directory and renames it only when complete, and unfinished temporaries are
removed when the manager is opened again.

A checkpoint damaged after it was written (a file deleted, a data file truncated, a
step folder emptied by a full disk or a copy gone wrong) does not make the workdir
unresumable. Each save ends by writing ``edgefilter_manifest.json`` into the step's
folder (every file's size and CRC-32), checked before orbax reads the checkpoint;
checkpoints without one are left to orbax's own checks.

:meth:`Checkpointer.restore` takes the newest checkpoint that restores cleanly (every
value read, every float finite), says in one warning line which newer one it skipped
and why, and then removes the damaged ones, so that the run can write those steps
again and orbax's ``max_to_keep`` never rotates the good one out in their favour. The
training loop saves only finite states (``training.divergence``), so the last good
checkpoint is never replaced by a diverged one.

In a multi-process run (:mod:`edgefilter.training.multihost`) every process makes the
same calls: orbax's own multi-process saving writes each array once (a replicated one
from one of its copies) and process 0 finalises the step's folder; the manifest is
written, and damaged checkpoints removed, by process 0 alone, the others waiting for it
(``jax.experimental.multihost_utils.sync_global_devices``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging as std_logging
import os
import shutil
import zlib
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from edgefilter.training import divergence


def _from_orbax(record: std_logging.LogRecord) -> bool:
    return "orbax" not in record.pathname


@contextlib.contextmanager
def _orbax_quiet() -> Iterator[None]:
    """Drops orbax's own log lines (absl's logger) while checkpoints are listed and read:
    for a damaged one, the one warning :meth:`Checkpointer.restore` writes says what
    happened."""
    logger = std_logging.getLogger("absl")
    logger.addFilter(_from_orbax)
    try:
        yield
    finally:
        logger.removeFilter(_from_orbax)


_MANIFEST = "edgefilter_manifest.json"
# Room a save needs beyond the tree's bytes (orbax's metadata, OCDBT's manifests).
_ROOM_FACTOR, _ROOM_BYTES = 1.1, 1 << 20


def _files(folder: str) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, crc32)}`` of every file under ``folder`` but the manifest."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder)
            if not relative.startswith(_MANIFEST):
                with open(path, "rb") as f:
                    out[relative] = (os.path.getsize(path), zlib.crc32(f.read()))
    return out


def _write_manifest(folder: str) -> None:
    """Records the size and CRC-32 of each file of a complete checkpoint, atomically."""
    files, tmp = _files(folder), os.path.join(folder, _MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(files, f)
    os.replace(tmp, os.path.join(folder, _MANIFEST))


def _verify(folder: str) -> None:
    """Raises ValueError naming the first file of ``folder`` that is missing or changed.

    Checks against the manifest written after the save; a checkpoint without one (an
    empty folder, or one saved before manifests) is left to orbax's own reading.
    """
    path = os.path.join(folder, _MANIFEST)
    if not os.path.exists(path):
        if not os.listdir(folder):
            raise ValueError(f"{folder} is empty")
        return
    with open(path) as f:
        expected = {name: tuple(v) for name, v in json.load(f).items()}
    found = _files(folder)
    for name, (size, crc) in sorted(expected.items()):
        if name not in found:
            raise ValueError(f"{name} is missing")
        if found[name][0] != size:
            raise ValueError(f"{name} has {found[name][0]} bytes, {size} were written")
        if found[name][1] != crc:
            raise ValueError(f"{name} changed since it was written (CRC-32 mismatch)")


def _all_processes_reach(name: str) -> None:
    """Waits until every process of a multi-process run has got here (else returns)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class NoGoodCheckpoint(ValueError):
    """A workdir has checkpoints, but none restores cleanly."""


class Checkpointer:
    """Saves and restores loop-state pytrees under ``<workdir>/checkpoints``.

    Saving is synchronous on purpose: the jitted train step donates its input buffers, so
    an asynchronous save could read buffers the next step has already reused.
    """

    def __init__(self, workdir: str, max_to_keep: int = 2):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=False,
        )
        with _orbax_quiet():  # It reads every step's metadata, warning about damaged ones.
            self._manager = ocp.CheckpointManager(self.directory, options=self._options)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def path(self, step: int) -> str:
        """The folder of the checkpoint of ``step``."""
        return os.path.join(self.directory, str(step))

    def restore(self, template: Any) -> Any | None:
        """The newest checkpoint that restores cleanly, in the structure of ``template``.

        Tries the checkpoints newest first; one that fails to restore, or holds a
        non-finite float, is skipped with a one-line warning naming it and the reason.
        Once one restores, the damaged ones newer than it are removed (so their steps
        can be written again). Returns None when there is no checkpoint.

        Raises:
          NoGoodCheckpoint: there are checkpoints but none restores (nothing is removed: a
            template that no longer matches, after a code change, fails them all).
        """
        with _orbax_quiet():
            return self._restore(template)

    def _restore(self, template: Any) -> Any | None:
        steps = sorted(self._manager.all_steps(), reverse=True)
        skipped = []
        for step in steps:
            try:
                _verify(self.path(step))  # Before orbax, whose failed reads spew tracebacks.
                tree = self._manager.restore(step, args=ocp.args.StandardRestore(template))
                bad = divergence.nonfinite_leaf(tree)
                if bad is not None:
                    raise ValueError(f"{bad} holds a NaN or infinity")
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types.
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                skipped.append(f"{self.path(step)} ({type(e).__name__}: {reason})")
                logging.warning("skipped damaged checkpoint %s", skipped[-1])
                # A failed restore can leave the manager's idea of the items wrong.
                self._manager.close()
                self._manager = ocp.CheckpointManager(self.directory, options=self._options)
                continue
            if jax.process_index() == 0:
                for newer in steps[: len(skipped)]:
                    shutil.rmtree(self.path(newer), ignore_errors=True)
            _all_processes_reach("edgefilter_checkpoint_restored")
            self._manager.reload()
            return tree
        if skipped:
            raise NoGoodCheckpoint(
                f"no checkpoint in {self.directory} restores; the newest: {skipped[0]}; move "
                "the folder away to start the run afresh"
            )
        return None

    def save(self, step: int, tree: Any) -> None:
        """Writes ``tree`` as the checkpoint of ``step`` (a step saved already is kept).

        Raises:
          OSError: ``ENOSPC`` naming the checkpoints folder, when the disk has less room
            than the tree's bytes (checked before orbax writes anything: orbax's own
            failure is a ValueError and a burst of tracebacks from its threads), or
            when orbax's write fails for lack of space.
        """
        if step in self._manager.all_steps():
            return
        needed = sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree.leaves(tree))
        free = shutil.disk_usage(self.directory).free
        if free < needed * _ROOM_FACTOR + _ROOM_BYTES:
            raise OSError(
                errno.ENOSPC,
                f"{free} bytes free, a checkpoint needs about {needed}",
                self.directory,
            )
        try:
            with _orbax_quiet():
                self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)
                self._manager.wait_until_finished()
        except ValueError as e:  # tensorstore's errors reach us as ValueError.
            if "No space left on device" in str(e) or "os_error_code='28'" in str(e):
                raise OSError(errno.ENOSPC, "No space left on device", self.directory) from e
            raise
        if jax.process_index() == 0:
            _write_manifest(self.path(step))
        _all_processes_reach(f"edgefilter_checkpoint_saved_{step}")

    def close(self) -> None:
        self._manager.close()
