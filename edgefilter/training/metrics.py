"""Per-step metrics as JSON lines and TensorBoard events, and a terminal progress display.

Metrics are kept as device arrays and fetched in one transfer every ``flush`` call, so
logging every step does not force a host-device synchronisation every step. Each flush
appends the records to ``metrics.jsonl`` and writes their scalars as TensorBoard events
into the workdir (``tensorboard --logdir WORKDIR`` shows the training curves, the
filter's per-window ``eif/`` metrics and ``test_accuracy``), under the same names.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax
import numpy as np
import tensorboardX
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from edgefilter.training import divergence


class MetricsLog:
    """Appends ``{"step": s, **metrics}`` records to ``<workdir>/metrics.jsonl`` and
    their scalars to TensorBoard event files in ``workdir``; :meth:`close` ends both.

    With ``workdir=None`` (a process of a multi-process run other than process 0, which
    writes the files) the records are kept in memory, this session's only, and nothing
    is written.
    """

    def __init__(self, workdir: str | None, resume_step: int = 0):
        self._pending: list[tuple[int, dict[str, Any]]] = []
        self._memory: list[dict[str, Any]] | None = None
        if workdir is None:
            self.path, self._events, self._memory = None, None, []
            return
        self.path = os.path.join(workdir, "metrics.jsonl")
        resuming = os.path.exists(self.path)
        if resuming:
            # Records written after the checkpoint we resume from are replayed: drop them.
            kept = [r for r in self.records() if r.get("step", 0) <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(_line(r) for r in kept)
        # On resume, purge_step tells TensorBoard to discard the earlier events from the
        # replayed steps on, as the JSON lines above drop them.
        # The suffix keeps a resumed run's event file from overwriting one opened in the
        # same second (the file name otherwise holds whole seconds only).
        self._events = tensorboardX.SummaryWriter(
            workdir,
            purge_step=resume_step + 1 if resuming else None,
            filename_suffix=f".{time.time_ns()}",
        )

    def add(self, step: int, metrics: dict[str, Any]) -> None:
        """Queues the metrics of ``step`` (device arrays are fine)."""
        self._pending.append((step, metrics))

    def records(self) -> list[dict[str, Any]]:
        """Every record written so far (after a flush), in order.

        A last line cut short (a kill or a full disk while it was written) is dropped;
        a damaged line before it raises ValueError naming the file and line.
        """
        if self._memory is not None:
            return [json.loads(_line(r)) for r in self._memory]
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            lines = f.readlines()
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                if number == len(lines):
                    break  # Half-written: what it held is replayed after the checkpoint.
                raise ValueError(f"{self.path}, line {number}, is not JSON ({e})") from None
        return records

    def flush(self) -> dict[str, float]:
        """Writes all queued records; returns the last one as floats (empty if none)."""
        if not self._pending:
            return {}
        fetched = jax.device_get(self._pending)
        records = [
            {"step": int(step), **{k: _to_json(v) for k, v in metrics.items()}}
            for step, metrics in fetched
        ]
        if self._memory is not None:
            self._memory.extend(records)
        else:
            with open(self.path, "a") as f:
                for record in records:
                    f.write(_line(record))
                    for name, value in record.items():
                        # Non-finite values are null in the JSON lines and left out here.
                        if (
                            name != "step"
                            and isinstance(value, int | float)
                            and math.isfinite(value)
                        ):
                            self._events.add_scalar(name, value, record["step"])
            self._events.flush()
        self._pending.clear()
        return {k: _to_json(v) for k, v in fetched[-1][1].items()}

    def close(self) -> None:
        """Writes what is queued and closes the event file."""
        self.flush()
        if self._events is not None:
            self._events.close()


_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
# Process-wide by nature: jax.monitoring listeners are global and cannot be removed, so
# one listener is registered once and callers take differences of the running total.
_compile_seconds = [0.0]
_listening = [False]


def _on_event(event: str, duration_secs: float, **kwargs: Any) -> None:
    del kwargs
    if event in _COMPILE_EVENTS:
        _compile_seconds[0] += duration_secs


def compile_seconds() -> float:
    """Seconds this process has spent tracing and compiling jitted functions so far."""
    if not _listening[0]:
        jax.monitoring.register_event_duration_secs_listener(_on_event)
        _listening[0] = True
    return _compile_seconds[0]


def _line(record: dict[str, Any]) -> str:
    """One strict-JSON line: a NaN or infinity is written as null (``divergence``)."""
    return json.dumps(divergence.json_safe(record), allow_nan=False) + "\n"


def _to_json(value: Any) -> Any:
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


def progress_bar(enabled: bool | None = None) -> Progress:
    """A rich progress display (count, rate, elapsed, ETA); off when not on a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8.0f} img/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not enabled,
        transient=False,
        refresh_per_second=4,
    )
