"""Resumable checkpoints of the whole training loop state, with orbax.

The loop state (parameters, optimizer state, batch-norm statistics, filter state and
the stream position) is one pytree, so a run killed at any point, even with SIGKILL,
resumes from its latest complete checkpoint: orbax writes each checkpoint into a
temporary directory and renames it only when complete, and unfinished temporaries are
removed when the manager is opened again.

A checkpoint damaged after it was written (a file deleted, a data file truncated, a
step folder emptied by a full disk or a copy gone wrong) does not make the workdir
unresumable: :meth:`Checkpointer.restore` takes the newest checkpoint that restores
cleanly (every value read, every float finite), says in one warning line which newer
one it skipped and why, and removes the damaged one, so that the run can write that
step again and orbax's ``max_to_keep`` never rotates the good one out in its favour.
The training loop saves only finite states (``training.divergence``), so the last
good checkpoint is never replaced by a diverged one.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import orbax.checkpoint as ocp
from absl import logging

from edgefilter.training import divergence


class Checkpointer:
    """Saves and restores loop-state pytrees under ``<workdir>/checkpoints``.

    Saving is synchronous on purpose: the jitted train step donates its input buffers, so
    an asynchronous save could read buffers the next step has already reused.
    """

    def __init__(self, workdir: str, max_to_keep: int = 2):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=False,
        )
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def path(self, step: int) -> str:
        """The folder of the checkpoint of ``step``."""
        return os.path.join(self.directory, str(step))

    def restore(self, template: Any) -> Any | None:
        """The newest checkpoint that restores cleanly, in the structure of ``template``.

        Tries the checkpoints newest first; one that fails to restore, or holds a
        non-finite float, is skipped with a one-line warning naming it and the reason,
        and removed. Returns None (and warns) when there are checkpoints but none
        restores, None silently when there are none.
        """
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                tree = self._manager.restore(step, args=ocp.args.StandardRestore(template))
                bad = divergence.nonfinite_leaf(tree)
                if bad is not None:
                    raise ValueError(f"{bad} holds a NaN or infinity")
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types.
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                logging.warning(
                    "skipped damaged checkpoint %s (%s: %s); removed it, trying the one before",
                    self.path(step),
                    type(e).__name__,
                    reason,
                )
                shutil.rmtree(self.path(step), ignore_errors=True)
                self._manager.reload()
                continue
            return tree
        return None

    def save(self, step: int, tree: Any) -> None:
        """Writes ``tree`` as the checkpoint of ``step`` (a step saved already is kept)."""
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
