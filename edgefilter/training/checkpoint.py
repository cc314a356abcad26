"""Resumable checkpoints of the whole training loop state, with orbax.

The loop state (parameters, optimizer state, batch-norm statistics, filter state and
the stream position) is one pytree, so a run killed at any point, even with SIGKILL,
resumes from its latest complete checkpoint: orbax writes each checkpoint into a
temporary directory and renames it only when complete, and unfinished temporaries are
removed when the manager is opened again.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


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
        self._manager = ocp.CheckpointManager(
            os.path.join(os.path.abspath(workdir), "checkpoints"), options=options
        )

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def restore(self, template: Any) -> Any:
        """Restores the newest checkpoint into the structure (and dtypes) of ``template``."""
        step = self._manager.latest_step()
        return self._manager.restore(step, args=ocp.args.StandardRestore(template))

    def save(self, step: int, tree: Any) -> None:
        """Writes ``tree`` as the checkpoint of ``step`` (replacing an existing one)."""
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
