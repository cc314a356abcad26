"""The training loop behind the command line: stream, methods, evaluation, checkpoints.

``train_and_evaluate(config, workdir)`` is what ``python -m experiments.train``, the
notebooks and the end-to-end tests call. The stream (:mod:`edgefilter.training.stream`) delivers
chunks of ``batch_size`` instances; a *runner* decides what each chunk costs:

* ``sgd`` / ``emp``: every chunk is one training batch (EMP prunes its backward);
* ``eif`` / ``eif_emp``: the instance filter packs its selection into full batches
  (:mod:`edgefilter.training.eif_runner`).

A run is determined by its config: the stream order comes from ``(seed, epoch)`` and
the per-step randomness from ``fold_in(seed, step)``, and the whole loop state is one
checkpointed pytree, so a run resumed from its workdir (also after SIGKILL) ends with
the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np

from edgefilter import data as data_lib
from edgefilter.training import accounting
from edgefilter.training import checkpoint as checkpoint_lib
from edgefilter.training import config as config_lib
from edgefilter.training import eif_runner as eif_training
from edgefilter.training import metrics as metrics_lib
from edgefilter.training import steps as train_lib
from edgefilter.training import stream as stream_lib


class SgdRunner:
    """Every chunk is one training batch (standard SGD; EMP when the model prunes)."""

    def __init__(
        self,
        info: data_lib.DatasetInfo,
        dataset: data_lib.Dataset,
        root: jax.Array,
        xla_cpu: bool | None = None,
    ):
        self.dataset = dataset
        self.root = root
        self.step = train_lib.make_train_step(info, xla_cpu=xla_cpu)

    def initial(self) -> dict[str, Any]:
        return {}

    def process(
        self, loop: dict[str, Any], indices: np.ndarray, weights: np.ndarray, chunk: int
    ) -> tuple[dict[str, Any], list[tuple[str, dict]]]:
        del chunk
        state = loop["state"]
        state, metrics, _ = self.step(
            state,
            self.dataset.train_images[indices],
            self.dataset.train_labels[indices],
            weights,
            self.root,
        )
        trained = np.asarray(loop["trained"] + int(weights.sum()), np.int64)
        return dict(loop, state=state, trained=trained), [("train", metrics)]

    def finish(self, loop: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, dict]]]:
        return loop, []

    def compilations(self) -> dict[str, int]:
        return {"train": self.step._cache_size()}


def _write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
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
    current = json.loads(json.dumps(dataclasses.asdict(config)))
    changed = sorted(
        k
        for k in set(previous) | set(current)
        if k not in _RESUMABLE_CHANGES and previous.get(k) != current.get(k)
    )
    if changed:
        diffs = ", ".join(f"--{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ValueError(
            f"--workdir={workdir!r} holds a run with other settings ({diffs}); "
            "use a new --workdir or the same settings to resume it"
        )


def _stream_length(config: config_lib.TrainConfig, num_train: int) -> int:
    if config.steps is not None:
        return config.steps * config.batch_size
    return int(round(config.epochs * num_train))


def build_runner(
    config: config_lib.TrainConfig, dataset: data_lib.Dataset, length: int
) -> tuple[SgdRunner | eif_training.EifRunner, train_lib.TrainState]:
    """The runner for ``config.method`` and the main network's fresh train state.

    ``config`` must be resolved; ``length`` is the number of streamed instances, which
    sets the learning-rate schedule's step count.
    """
    info = dataset.info
    policy = train_lib.emp_policy(config)
    model = train_lib.build_model(
        config.model,
        info.num_classes,
        config.bits,
        policy,
        config.emp_first_layer,
        xla_cpu=config.xla_cpu,
    )
    # The schedule counts the main network's updates: with the filter, about r_set of
    # the stream, in steps of eif_batch_size (by default about one step per chunk).
    if config.uses_eif:
        main_steps = -(-int(length * config.r_set) // config.eif_batch_size)
    else:
        main_steps = -(-length // config.batch_size)
    tx = train_lib.make_optimizer(config, main_steps)
    root, init_key = jax.random.split(jax.random.key(config.seed))
    state = train_lib.create_train_state(model, tx, init_key, info.image_shape)
    if config.uses_eif:
        filter_model = train_lib.build_model(
            config.filter_model, 2, config.bits, xla_cpu=config.xla_cpu
        )
        return eif_training.EifRunner(config, info, filter_model, dataset, root), state
    return SgdRunner(info, dataset, root, config.xla_cpu), state


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

    Raises:
      ValueError: for an invalid config. data.DataUnavailableError: when the dataset
        cannot be had. Both happen before anything is written to ``workdir``.
    """
    config = config_lib.resolve(config)
    if dataset is None:
        dataset = data_lib.load(config.dataset, config.data_dir)
    info = dataset.info
    num_train = len(dataset.train_images)
    m = config.batch_size
    length = _stream_length(config, num_train)
    stream = stream_lib.Stream(config.seed, num_train, length)
    total_chunks = -(-length // m)

    runner, state = build_runner(config, dataset, length)
    loop = {
        "state": state,
        "position": np.asarray(0, np.int64),
        "chunk": np.asarray(0, np.int64),
        "trained": np.asarray(0, np.int64),
        "wall_time": np.asarray(0.0, np.float64),
        "side_time": np.asarray(0.0, np.float64),
        "compile_time": np.asarray(0.0, np.float64),
        **runner.initial(),
    }

    check_resumable(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    _write_json_atomic(os.path.join(workdir, "config.json"), dataclasses.asdict(config))
    checkpointer = checkpoint_lib.Checkpointer(workdir)
    if checkpointer.latest_step() is not None:
        loop = checkpointer.restore(loop)
    metrics_log = metrics_lib.MetricsLog(workdir, resume_step=int(loop["chunk"]))
    eval_step = train_lib.make_eval_step(info, xla_cpu=config.xla_cpu)

    def evaluate() -> dict[str, float]:
        return train_lib.evaluate(
            eval_step,
            loop["state"],
            dataset.test_images,
            dataset.test_labels,
            config.eval_batch_size,
        )

    last: dict[str, float] = {}
    started, wall_time = time.perf_counter(), float(loop["wall_time"])
    side_time = float(loop["side_time"])  # Evaluation and checkpointing.
    compile_started = metrics_lib.compile_seconds() - float(loop["compile_time"])
    with metrics_lib.progress_bar(show_progress) as progress:
        task = progress.add_task(
            f"{config.method} {config.model}",
            total=total_chunks,
            completed=int(loop["chunk"]),
            rate=0.0,
            info="",
        )
        while int(loop["position"]) < length:
            position, chunk = int(loop["position"]), int(loop["chunk"])
            count = min(m, length - position)
            idx, weights = stream_lib.stream_batch(stream.indices(position, count), m)
            loop, records = runner.process(loop, idx, weights, chunk)
            position, chunk = position + count, chunk + 1
            finished = position >= length
            if finished:
                loop, more = runner.finish(loop)
                records += more
            loop.update(position=np.asarray(position, np.int64), chunk=np.asarray(chunk, np.int64))
            for kind, metrics in records:
                prefix = "eif/" if kind == "window" else ""
                metrics_log.add(chunk, {f"{prefix}{k}": v for k, v in metrics.items()})
            epoch_done = position // num_train > (position - count) // num_train
            checkpoint_due = chunk % config.checkpoint_every_steps == 0 or epoch_done or finished
            if chunk % config.log_every_steps == 0 or checkpoint_due:
                last = metrics_log.flush() or last
            if epoch_done or finished:
                eval_started, eval_compile = time.perf_counter(), metrics_lib.compile_seconds()
                result = {**evaluate(), "epoch": position / num_train}
                metrics_log.add(chunk, result)
                metrics_log.flush()
                progress.console.print(
                    f"epoch {result['epoch']:.2f}: test accuracy {result['test_accuracy']:.4f}, "
                    f"loss {result['test_loss']:.4f}, trained {int(loop['trained'])} of "
                    f"{position} instances"
                )
                # Evaluation time, less its compilation (which compile_time counts).
                side_time += time.perf_counter() - eval_started
                side_time -= metrics_lib.compile_seconds() - eval_compile
            elapsed = wall_time + time.perf_counter() - started
            progress.update(
                task,
                completed=chunk,
                rate=position / max(elapsed, 1e-9),
                info=f"loss {last.get('loss', float('nan')):.3f}",
            )
            if checkpoint_due:  # Metrics up to here are flushed, so a resume loses none.
                saving_started = time.perf_counter()
                loop["wall_time"] = np.asarray(elapsed, np.float64)
                loop["side_time"] = np.asarray(side_time, np.float64)
                compiled = metrics_lib.compile_seconds() - compile_started
                loop["compile_time"] = np.asarray(compiled, np.float64)
                checkpointer.save(chunk, loop)
                side_time += time.perf_counter() - saving_started
    checkpointer.close()
    wall_time += time.perf_counter() - started
    # Compilation over all sessions of the run (a resumed run compiles again).
    compile_time = metrics_lib.compile_seconds() - compile_started

    history = [r for r in metrics_log.records() if "test_accuracy" in r]
    final = history[-1] if history else evaluate()
    summary = {
        "config": dataclasses.asdict(config),
        "test_accuracy": final["test_accuracy"],
        "test_loss": final["test_loss"],
        "instances_streamed": int(loop["position"]),
        "instances_trained": int(loop["trained"]),
        "chunks": int(loop["chunk"]),
        "steps": int(loop["state"].step),
        "compute": accounting.run_compute(config, info, loop),
        "wall_time_s": wall_time,
        # Measured: the wall time minus evaluation, checkpointing and compilation.
        "train_time_s": wall_time - side_time - compile_time,
        "compile_time_s": compile_time,
        # Compiled versions of each jitted step in this process: 1 unless shapes changed.
        "compilations": runner.compilations(),
        "history": history,
    }
    if config.uses_eif:
        summary["eif"] = {
            "final_threshold": float(loop["filter"].threshold),
            "final_offset": float(loop["filter"].offset),
            "skipped_probes": int(loop["skipped_probes"]),
            "filter_steps": int(loop["filter"].net.step),
        }
    _write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    summary["state"] = loop["state"]
    if config.uses_eif:
        summary["filter"] = loop["filter"]
    return summary
