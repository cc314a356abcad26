"""Divergence: a run whose loss or parameters stop being finite ends at once.

A loss of NaN or infinity (``--learning_rate=1e6`` gives NaN from the third step) makes
every later step, checkpoint and accuracy meaningless, so the training loop stops the
run with :class:`Diverged` instead of training on:

* :func:`first_nonfinite_loss` looks at the per-chunk losses the runners have already
  fetched to the host (once per block), so the check adds no host sync;
* :func:`nonfinite_leaf` checks the loop state's floating-point leaves when a checkpoint
  is due, before it is written (the save fetches them anyway), so
  no checkpoint ever holds a non-finite value and the last finite one is never rotated
  out by orbax's ``max_to_keep``;
* :func:`json_safe` maps non-finite floats to ``None``, so ``summary.json`` and
  ``metrics.jsonl`` stay strict JSON (``json.dumps(..., allow_nan=False)``).

The command line (``experiments.train``) prints one line and exits with status 3.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LOSS_KEYS", "Diverged", "first_nonfinite_loss", "json_safe", "nonfinite_leaf"]

LOSS_KEYS = ("loss", "filter_loss")
"""The per-chunk metrics checked: the main network's and the instance filter's loss."""


class Diverged(RuntimeError):
    """The run's loss or parameters became non-finite.

    Attributes:
      step: the chunk (1-based, as in ``metrics.jsonl``) or checkpoint step where it was
        seen.
      what: what went non-finite, e.g. ``"loss is nan"`` or
        ``"state/params/Dense_0/kernel holds a NaN or infinity"``.
      last_good: the newest checkpoint (a path), all of whose values are finite, or None.
    """

    def __init__(self, step: int, what: str, last_good: str | None):
        self.step, self.what, self.last_good = step, what, last_good
        resume = last_good if last_good is not None else "none (no checkpoint was written)"
        super().__init__(
            f"training diverged at step {step}: {what}; last good checkpoint: {resume}"
        )

    def as_json(self) -> dict[str, Any]:
        """The ``diverged`` block of ``summary.json``."""
        return {"step": self.step, "what": self.what, "last_good_checkpoint": self.last_good}


def first_nonfinite_loss(
    records: Iterable[tuple[int, str, dict[str, Any]]],
) -> tuple[int, str] | None:
    """The first ``(step, "loss is nan")`` among a block's ``(chunk, kind, metrics)`` records.

    ``records`` hold host values (the runners fetch a block's metrics once); ``step`` is
    the chunk's number plus one, as ``metrics.jsonl`` numbers it. None when all are finite.
    """
    for chunk, _, metrics in records:
        for key in LOSS_KEYS:
            if key in metrics:
                value = float(np.asarray(metrics[key]))
                if not math.isfinite(value):
                    return chunk + 1, f"{key} is {value}"
    return None


def nonfinite_leaf(tree: Any) -> str | None:
    """The path of the first floating-point leaf of ``tree`` holding a NaN or infinity.

    The leaves are fetched once (a checkpoint's save fetches them anyway); None when all
    are finite.
    """
    paths, leaves = [], []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
            paths.append(path)
            leaves.append(leaf)
    for path, leaf in zip(paths, jax.device_get(leaves), strict=True):
        if not np.all(np.isfinite(leaf)):
            return jax.tree_util.keystr(path, simple=True, separator="/")
    return None


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by ``None``, recursively.

    Dicts, lists and tuples are rebuilt; other values are returned as they are.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
