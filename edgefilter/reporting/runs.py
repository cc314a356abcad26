"""A run's outputs read back from its workdir, for tables and figures.

A finished run (``edgefilter.training.loop.train_and_evaluate``) leaves
``summary.json`` and ``metrics.jsonl`` in its workdir. ``metrics.jsonl`` holds three
kinds of records, each with its ``step`` (the chunk count when it was written):

* per chunk: ``loss``, ``trained`` (instances the main network trained on), ...;
* per closed filter window (EIF methods): the window's metrics under ``eif/``
  (``eif/predicted_high_fraction``, ``eif/r_th``, ``eif/threshold``, ...);
* per evaluation (every epoch end and the run's end): ``test_accuracy``, ``test_loss``,
  ``epoch`` and ``train_time_s`` (training seconds so far; runs written before it was
  recorded lack it).

:class:`Run` holds both files' content with the label the run is reported under
(method or variant, budget, seed).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished run: its label, ``summary.json`` and the records of ``metrics.jsonl``.

    Attributes:
      path: the run's workdir.
      method: the name it is reported under (a method or a variant such as ``eif_static``).
      budget: the value of the method's budget flag (``--r_set``, ...), None if it has none.
      seed: the run's seed.
      summary: ``summary.json``.
      records: ``metrics.jsonl``'s records in order.
    """

    path: str
    method: str
    budget: float | None
    seed: int
    summary: dict[str, Any]
    records: tuple[dict[str, Any], ...]

    @property
    def label(self) -> str:
        """``method`` and, if it has one, the budget: ``"eif b0.3"``, ``"sgd"``."""
        return self.method if self.budget is None else f"{self.method} b{self.budget:g}"

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        """The test evaluations (epoch ends and the run's end), in order."""
        return [r for r in self.records if "test_accuracy" in r]

    @property
    def windows(self) -> list[dict[str, Any]]:
        """The instance filter's per-window records (``eif/`` keys); empty for other methods."""
        return [r for r in self.records if any(k.startswith("eif/") for k in r)]

    @property
    def chunks(self) -> list[dict[str, Any]]:
        """The per-chunk training records (those with ``trained``)."""
        return [r for r in self.records if "trained" in r]


def load(
    path: str, method: str | None = None, budget: float | None = None, seed: int | None = None
) -> Run:
    """Reads the run in ``path``; ``method`` and ``seed`` default to its config's.

    Raises:
      FileNotFoundError: ``path`` holds no ``summary.json`` (the run has not finished).
    """
    with open(os.path.join(path, "summary.json")) as f:
        summary = json.load(f)
    records: list[dict[str, Any]] = []
    metrics = os.path.join(path, "metrics.jsonl")
    if os.path.exists(metrics):
        with open(metrics) as f:
            records = [json.loads(line) for line in f if line.strip()]
    config = summary.get("config", {})
    return Run(
        path=path,
        method=method if method is not None else config.get("method", "?"),
        budget=budget,
        seed=seed if seed is not None else int(config.get("seed", 0)),
        summary=summary,
        records=tuple(records),
    )
