"""The training loop behind the command line: stream, methods, evaluation, checkpoints.

``train_and_evaluate(config, workdir)`` is what ``python -m experiments.train``, the
notebooks and the end-to-end tests call. The stream (:mod:`edgefilter.training.stream`)
delivers chunks of ``batch_size`` instances, in blocks of up to ``block_chunks``; a
*runner* (:mod:`edgefilter.training.runners`) trains a block: every method whose
selection fits the selection interface runs on the device, one dispatch per block
(:mod:`edgefilter.training.engine`); the paper's argmax rule and a non-default
``--eif_batch_size`` pack the filter's selection through host-side queues
(:mod:`edgefilter.training.eif_runner`).

Beside training, the loop records what the paper's figures need without changing what
is trained: EMP's kept channels per layer (from the step's metrics) and snapshots of the
selection's decision on whole chunks (:mod:`edgefilter.training.snapshots`).

A run is determined by its config: the stream order comes from ``(seed, epoch)`` and
the per-step randomness from ``fold_in(seed, step)``, and the whole loop state is one
checkpointed pytree, so a run resumed from its workdir (also after SIGKILL) ends with
the same parameters as an uninterrupted one.

A multi-process run (:mod:`edgefilter.training.multihost`) runs this loop in every
process on the same stream: every process computes every chunk's stream indices and
gathers its own rows of it (:mod:`edgefilter.training.parallel`), evaluates, and takes
part in each checkpoint; process 0 alone writes the workdir's other files and shows
progress.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import logging
from rich.console import Console
from rich.progress import Progress

from edgefilter import data as data_lib
from edgefilter.training import accounting, divergence, multihost, preflight, runners
from edgefilter.training import budget as budget_lib
from edgefilter.training import checkpoint as checkpoint_lib
from edgefilter.training import config as config_lib
from edgefilter.training import metrics as metrics_lib
from edgefilter.training import snapshots as snapshots_lib
from edgefilter.training import steps as train_lib
from edgefilter.training import stream as stream_lib


def _write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    """Strict JSON (a non-finite float is written as null), replacing ``path`` atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(divergence.json_safe(payload), f, indent=2, sort_keys=True, allow_nan=False)
    os.replace(tmp, path)


# Settings a resumed run may change: they do not alter what has been computed so far.
_RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "epochs",
        "checkpoint_every_steps",
        "log_every_steps",
        "eval_batch_size",
        "data_dir",
        "xla_cpu",  # The same values either way; checkpoints load in both modes.
        "block_chunks",  # Where blocks end changes no value (training.engine).
        "snapshots",  # Records of decisions, taken beside training (training.snapshots).
        "data_parallel",  # The same values up to float rounding (training.parallel).
        "num_processes",  # The same, over more devices (training.multihost).
        "process_id",  # config.json is process 0's; the others' differ here alone.
        "coordinator_address",  # Where the processes meet, not what they compute.
    }
)


def check_resumable(config: config_lib.TrainConfig, workdir: str) -> None:
    """Raises ValueError if ``workdir`` holds a run whose settings differ from ``config``.

    Only the length of the run and the logging/evaluation cadence may change on resume;
    anything else would silently continue a different experiment.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        previous = json.load(f)
    current = json.loads(json.dumps(config_lib.as_flags(config)))
    resumable = _RESUMABLE_CHANGES
    if config.method in config_lib.PACKING_BASELINES or config.eif_predict_ahead:
        # Their queue's size, SB's values and the filter's stale predictions depend on it.
        resumable = resumable - {"block_chunks"}
    changed = sorted(
        k
        for k in set(previous) | set(current)
        if k not in resumable and previous.get(k) != current.get(k)
    )
    if changed:
        diffs = ", ".join(f"--{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ValueError(
            f"--workdir={workdir!r} holds a run with other settings ({diffs}); "
            "use a new --workdir or the same settings to resume it"
        )


def initial_loop(state: train_lib.TrainState, runner: runners.Runner) -> dict[str, Any]:
    """A fresh loop state: the whole checkpointed pytree of a run at its start."""
    return {
        "state": state,
        "position": np.asarray(0, np.int64),  # Instances streamed.
        "chunk": np.asarray(0, np.int64),  # Chunks streamed.
        "trained": np.asarray(0, np.int64),  # Instances trained on.
        "wall_time": np.asarray(0.0, np.float64),
        "side_time": np.asarray(0.0, np.float64),
        "compile_time": np.asarray(0.0, np.float64),
        **runner.initial(),
    }


def train_and_evaluate(
    config: config_lib.TrainConfig,
    workdir: str,
    *,
    dataset: data_lib.Dataset | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) one training run and writes ``<workdir>/summary.json``.

    Args:
      config: the run's settings; ``None`` fields take the paper's defaults.
      workdir: where checkpoints, ``metrics.jsonl`` and ``summary.json`` go. A workdir
        holding a checkpoint of the same run is resumed from it.
      dataset: an already loaded dataset (tests and notebooks); loaded from
        ``config.dataset`` when None.
      show_progress: force the terminal progress display on or off (default: on a TTY).

    Returns:
      The summary written to ``summary.json``, plus the final ``state`` (and ``filter``).

    A config with multi-process settings first joins the run's other processes
    (:func:`edgefilter.training.multihost.join`); each of them calls this function with
    the same settings but ``process_id``, and only process 0 writes ``workdir``'s files
    besides the checkpoints (the others return their summary, with this session's
    history only).

    Raises:
      ValueError: for an invalid config, a workdir that cannot be written or holds
        another run, or data the run cannot train on (``training.preflight``).
        data.DataUnavailableError: when the dataset cannot be had. All happen before
        anything is written to ``workdir``.
      divergence.Diverged: the loss or the parameters became non-finite; the run
        stopped at once, ``summary.json`` says so (``"diverged"``) and no checkpoint
        holds a non-finite value.
    """
    multihost.join(config)
    config = config_lib.resolve(config)
    check_resumable(config, workdir)
    preflight.check_workdir(workdir)
    writer = multihost.is_writer()
    if dataset is None:
        dataset = data_lib.load(config.dataset, config.data_dir)
    for warning in preflight.check_run(config, dataset):
        logging.warning("%s", warning)
    multihost.check_agreement(config)  # Every process passed its checks, alike.
    num_train = len(dataset.train_images)
    reference = preflight.stream_length(config, num_train)  # SGD's: costs are against it.
    length = reference
    if config.method == "smb":  # The first budget of SGD's stream (training.budget).
        length = budget_lib.smb_length(reference, config.batch_size, config.budget)
    runner, state = runners.build_runner(config, dataset, length)
    loop, checkpointer = _open_workdir(config, workdir, initial_loop(state, runner), writer)
    session = _Session(
        config=config,
        dataset=dataset,
        runner=runner,
        stream=stream_lib.Stream(config.seed, num_train, length),
        metrics_log=metrics_lib.MetricsLog(
            workdir if writer else None, resume_step=int(loop["chunk"])
        ),
        checkpointer=checkpointer,
        eval_step=train_lib.make_eval_step(dataset.info, xla_cpu=config.xla_cpu),
        clock=_Clock.resume(loop),
        reference_length=reference,
        workdir=workdir,
        snapshot_chunks=snapshots_lib.targets(
            -(-length // config.batch_size), snapshots_lib.count(config)
        ),
        writer=writer,
    )
    try:
        with metrics_lib.progress_bar(show_progress if writer else False) as progress:
            loop = _train_stream(session, loop, progress)
    except divergence.Diverged as diverged:
        session.metrics_log.close()
        checkpointer.close()
        if writer:
            summary = _diverged(session, diverged)
            _write_json_atomic(os.path.join(workdir, "summary.json"), summary)
        raise
    checkpointer.close()
    session.metrics_log.close()
    summary = _summary(session, loop)
    if writer:
        _write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    summary["state"] = loop["state"]
    if config.uses_eif:
        summary["filter"] = runners.filter_state(loop)
    return summary


def _open_workdir(
    config: config_lib.TrainConfig, workdir: str, loop: dict[str, Any], writer: bool
) -> tuple[dict[str, Any], checkpoint_lib.Checkpointer]:
    """Records the config (``workdir`` was checked to hold no other run; the writing
    process only), restores the loop."""
    os.makedirs(workdir, exist_ok=True)
    if writer:
        _write_json_atomic(os.path.join(workdir, "config.json"), config_lib.as_flags(config))
    checkpointer = checkpoint_lib.Checkpointer(workdir)
    restored = checkpointer.restore(loop)  # The newest that restores cleanly.
    return (loop if restored is None else restored), checkpointer


@dataclasses.dataclass
class _Clock:
    """A run's wall, side (evaluation, checkpointing) and compile time, over its sessions.

    The loop state carries each total of the sessions before (checkpointed with it), so
    a resumed run reports the time of the whole run.
    """

    wall_before: float
    side: float
    compile_started: float
    started: float = dataclasses.field(default_factory=time.perf_counter)

    @classmethod
    def resume(cls, loop: dict[str, Any]) -> _Clock:
        compiled_before = float(loop["compile_time"])
        return cls(
            wall_before=float(loop["wall_time"]),
            side=float(loop["side_time"]),
            compile_started=metrics_lib.compile_seconds() - compiled_before,
        )

    def elapsed(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def compiled(self) -> float:
        """Compilation over all sessions of the run (a resumed run compiles again)."""
        return metrics_lib.compile_seconds() - self.compile_started


@dataclasses.dataclass
class _Session:
    """What one process's part of a run works with, besides the loop state."""

    config: config_lib.TrainConfig
    dataset: data_lib.Dataset
    runner: runners.Runner
    stream: stream_lib.Stream
    metrics_log: metrics_lib.MetricsLog
    checkpointer: checkpoint_lib.Checkpointer
    eval_step: Callable
    clock: _Clock
    reference_length: int  # SGD's stream, against which the compute is counted.
    workdir: str
    snapshot_chunks: tuple[int, ...]  # Chunks whose decision is saved (training.snapshots).
    writer: bool = True  # Writes the workdir's files: process 0 of a multi-process run.

    @property
    def num_train(self) -> int:
        return self.stream.num_train

    def evaluate(self, state: train_lib.TrainState) -> dict[str, float]:
        """Test accuracy and loss of ``state``."""
        data, batch = self.dataset, self.config.eval_batch_size
        return train_lib.evaluate(self.eval_step, state, data.test_images, data.test_labels, batch)


def _train_stream(session: _Session, loop: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Streams the run's remaining chunks, block by block: train, log, evaluate, checkpoint.

    A block ends early after a chunk that ends an epoch (evaluation), is due a
    checkpoint (every ``checkpoint_every_steps`` chunks) or ends the run. Metrics are
    flushed after a block that passed a multiple of ``log_every_steps`` chunks and
    before every checkpoint, so a resumed run neither loses nor repeats a record.
    """
    config, length = session.config, session.stream.length
    task = progress.add_task(
        f"{config.method} {config.model}",
        total=-(-length // config.batch_size),
        completed=int(loop["chunk"]),
        rate=0.0,
        info="",
    )
    last: dict[str, float] = {}
    while int(loop["position"]) < length:
        before = int(loop["chunk"])
        loop, records, boundary = _stream_block(session, loop)
        position, chunk = int(loop["position"]), int(loop["chunk"])
        _log_records(session, records)
        nonfinite = divergence.first_nonfinite_loss(records)  # Host values: no sync.
        if nonfinite is not None:
            raise divergence.Diverged(*nonfinite, _last_good(session))
        finished = position >= length
        checkpoint_due = boundary in ("epoch", "checkpoint") or finished
        if chunk // config.log_every_steps > before // config.log_every_steps or checkpoint_due:
            last = session.metrics_log.flush() or last
        if boundary == "epoch" or finished:
            _evaluate_epoch(session, loop, progress.console)
        elapsed = session.clock.elapsed()
        loss = last.get("loss", float("nan"))
        rate = position / max(elapsed, 1e-9)
        progress.update(task, completed=chunk, rate=rate, info=f"loss {loss:.3f}")
        if checkpoint_due:
            loop = _checkpoint(session, loop, elapsed)
    return loop


def _log_records(session: _Session, records: list[runners.Record]) -> None:
    """Queues a block's records: per chunk, per closed filter window (``eif/``), and
    under EMP the per-layer kept channels (``emp/kept_channels/<layer>``) of the step of
    every ``log_every_steps``-th chunk only, as their own record (every step's counts
    reach the host with the block's metrics; one record per layer and chunk would
    dwarf the rest of ``metrics.jsonl`` for a deep network)."""
    every = session.config.log_every_steps
    counted: set[int] = set()
    for number, kind, metrics in records:
        counts = {k: v for k, v in metrics.items() if k.startswith(train_lib.KEPT_CHANNELS)}
        prefix = "eif/" if kind == "window" else ""
        logged = {f"{prefix}{k}": v for k, v in metrics.items() if k not in counts}
        session.metrics_log.add(number + 1, logged)
        if counts and (number + 1) % every == 0 and number not in counted:
            counted.add(number)  # The host-queue runner may step twice in a chunk.
            session.metrics_log.add(number + 1, {f"emp/{k}": v for k, v in counts.items()})


def _stream_block(
    session: _Session, loop: dict[str, Any]
) -> tuple[dict[str, Any], list[runners.Record], str]:
    """The next block of chunks through the runner (finished after the run's last chunk).

    Returns the loop state past the block, the runner's metric records, and why the
    block ended: ``"epoch"`` (its last chunk ends an epoch), ``"checkpoint"``,
    ``"end"`` (of the run) or ``"full"``.
    """
    config, stream, n = session.config, session.stream, session.num_train
    length, m = stream.length, config.batch_size
    position, chunk = int(loop["position"]), int(loop["chunk"])
    start = position
    chunks, boundary = [], "full"
    while len(chunks) < config.block_chunks and boundary == "full":
        count = min(m, length - position)
        indices, weights = stream_lib.stream_batch(stream.indices(position, count), m)
        chunks.append((indices, weights, chunk))
        position, chunk = position + count, chunk + 1
        if position >= length:
            boundary = "end"
        elif position // n > (position - count) // n:
            boundary = "epoch"
        elif chunk % config.checkpoint_every_steps == 0:
            boundary = "checkpoint"
    if snapshots_lib.due(session.snapshot_chunks, chunks[0][2], chunks[-1][2]):
        _snapshot(session, loop, chunks[0], start / n)
    loop, records = session.runner.run_block(loop, chunks)
    if position >= length:
        loop, more = session.runner.finish(loop, chunk - 1)
        records += more
    loop.update(position=np.asarray(position, np.int64), chunk=np.asarray(chunk, np.int64))
    return loop, records, boundary


def _snapshot(
    session: _Session, loop: dict[str, Any], chunk: tuple[np.ndarray, np.ndarray, int], epoch: float
) -> None:
    """Saves ``chunk``, the next to train, with the run's decision on it (side time)."""
    started, compiled = time.perf_counter(), metrics_lib.compile_seconds()
    kept, losses = session.runner.decide(loop, chunk)  # Every process takes part.
    indices, weights, number = chunk
    if session.writer:
        snapshot = snapshots_lib.Snapshot(
            chunk=number,
            step=number + 1,
            epoch=epoch,
            images=session.dataset.train_images[indices],
            labels=session.dataset.train_labels[indices],
            valid=weights > 0,
            kept=np.asarray(kept, bool),
            losses=np.asarray(losses, np.float32),
        )
        snapshots_lib.write(session.workdir, snapshot)
    session.clock.side += time.perf_counter() - started
    session.clock.side -= metrics_lib.compile_seconds() - compiled


def _evaluate_epoch(session: _Session, loop: dict[str, Any], console: Console) -> None:
    """Evaluates on the test set, logs and prints the result; its time is side time.

    The record holds the run's training seconds up to this evaluation (``train_time_s``,
    what summary.json's ``train_time_s`` is at the end), so accuracy can be read
    against training time (``edgefilter.reporting``).
    """
    position = int(loop["position"])
    clock = session.clock
    train_time = clock.elapsed() - clock.side - clock.compiled()
    started, compiled = time.perf_counter(), metrics_lib.compile_seconds()
    result = {
        **session.evaluate(loop["state"]),
        "epoch": position / session.num_train,
        "train_time_s": train_time,
    }
    session.metrics_log.add(int(loop["chunk"]), result)
    session.metrics_log.flush()
    if session.writer:
        console.print(
            f"epoch {result['epoch']:.2f}: test accuracy {result['test_accuracy']:.4f}, "
            f"loss {result['test_loss']:.4f}, trained {int(loop['trained'])} of "
            f"{position} instances"
        )
    # Evaluation time, less its compilation (which compile_time counts).
    session.clock.side += time.perf_counter() - started
    session.clock.side -= metrics_lib.compile_seconds() - compiled


def _checkpoint(session: _Session, loop: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """Saves the loop state, with the run's time so far; saving is side time."""
    started = time.perf_counter()
    loop = dict(
        loop,
        wall_time=np.asarray(elapsed, np.float64),
        side_time=np.asarray(session.clock.side, np.float64),
        compile_time=np.asarray(session.clock.compiled(), np.float64),
    )
    bad = divergence.nonfinite_leaf(loop)  # Checked before saving: never a NaN checkpoint.
    if bad is not None:
        what = f"{bad} holds a NaN or infinity"
        raise divergence.Diverged(int(loop["chunk"]), what, _last_good(session))
    session.checkpointer.save(int(loop["chunk"]), loop)
    session.clock.side += time.perf_counter() - started
    return loop


def _last_good(session: _Session) -> str | None:
    """The newest checkpoint's folder (all saved ones are finite), or None."""
    step = session.checkpointer.latest_step()
    return None if step is None else session.checkpointer.path(step)


def _diverged(session: _Session, diverged: divergence.Diverged) -> dict[str, Any]:
    """summary.json of a run that diverged: no accuracy, where and what went non-finite."""
    history = [r for r in session.metrics_log.records() if "test_accuracy" in r]
    return {
        "config": config_lib.as_flags(session.config),
        "diverged": diverged.as_json(),
        "test_accuracy": None,
        "history": history,
    }


def _summary(session: _Session, loop: dict[str, Any]) -> dict[str, Any]:
    """summary.json's content (DESIGN.md, "Command-line contract") for a finished run."""
    config, clock = session.config, session.clock
    wall_time, compile_time = clock.elapsed(), clock.compiled()
    history = [r for r in session.metrics_log.records() if "test_accuracy" in r]
    final = history[-1] if history else session.evaluate(loop["state"])
    summary = {
        "config": config_lib.as_flags(config),
        "test_accuracy": final["test_accuracy"],
        "test_loss": final["test_loss"],
        "instances_streamed": int(loop["position"]),
        "instances_trained": int(loop["trained"]),
        "chunks": int(loop["chunk"]),
        "steps": int(loop["state"].step),
        "compute": accounting.run_compute(
            config, session.dataset.info, loop, sgd_instances=session.reference_length
        ),
        "budget": accounting.budget_summary(config, loop),
        "wall_time_s": wall_time,
        # Measured: the wall time minus evaluation, checkpointing and compilation.
        "train_time_s": wall_time - clock.side - compile_time,
        "compile_time_s": compile_time,
        # Compiled versions of each jitted step in this process: 1 unless shapes changed.
        "compilations": session.runner.compilations(),
        "history": history,
    }
    if config.uses_emp:  # The layers its emp/kept_channels/ records name.
        layers = accounting.emp_layers(config, session.dataset.info)
        summary["emp"] = {"policy": config.emp.policy, "layers": layers}
    if config.uses_eif:
        fstate = runners.filter_state(loop)
        summary["eif"] = {
            "final_threshold": float(fstate.threshold),
            "final_offset": float(fstate.offset),
            "skipped_probes": runners.skipped_probes(loop),
            "filter_steps": int(fstate.net.step),
        }
    return summary
