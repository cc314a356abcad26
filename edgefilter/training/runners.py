"""What the training loop does with a block of chunks, per method.

* :class:`EngineRunner`: every method whose selection fits the selection interface
  (:mod:`edgefilter.select`) with one main step per chunk: ``sgd`` and ``emp`` (every
  instance), ``eif`` and ``eif_emp`` under quantile control with the default main batch
  (``round(r_set * m)`` instances per chunk), and the data-selection baselines
  (``random``: a uniform ``round(r_set * m)`` of each chunk; ``oracle`` and ``ohem``:
  its highest-loss ``round(r_set * m)`` by the main network's forward;
  ``selective_backprop`` and ``infobatch``: a random count per chunk, packed into full
  batches on the device). A block of chunks is one
  dispatch of the stream engine (:mod:`edgefilter.training.engine`) and one host sync.
* :class:`~edgefilter.training.eif_runner.EifRunner`: the filter's selection packed
  through host-side queues, chunk by chunk, for what the interface's fixed shapes do not
  cover yet: the paper's argmax rule (a data-dependent count per chunk) and a main batch
  other than ``round(r_set * m)`` (``--eif_batch_size``).
* :class:`BudgetRunner`: the engine for ``smd``, ``sd`` and ``e2train``: SMD's skipped
  chunks never reach the device; stochastic depth's bypassed blocks and SLU's gated
  instance-blocks are counted.

A runner's state is part of the loop state (``initial``), so it is checkpointed with the
rest; ``run_block`` takes a list of ``(indices, weights, chunk)`` (training-set indices
of a chunk, 1/0 weights marking the padding of a short last chunk, the chunk's number)
and returns the loop state and ``(chunk, kind, metrics)`` records; ``finish`` ends the
run after its last chunk; ``decide`` gives, for a snapshot, the decision the next
block takes on its first chunk (:mod:`edgefilter.training.snapshots`).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from edgefilter import backends, models, select
from edgefilter import data as data_lib
from edgefilter.training import budget, eif_runner, pack, parallel, snapshots
from edgefilter.training import config as config_lib
from edgefilter.training import engine as engine_lib
from edgefilter.training import steps as steps_lib

Record = tuple[int, str, dict[str, Any]]


def engine_selector(
    config: config_lib.TrainConfig, filter_model: Any, *, num_train: int = 0, length: int = 0
) -> select.Selector | None:
    """The run's selector, or None when the method needs the host-queue runner.

    ``config`` must be resolved; ``filter_model`` is used by the EIF methods only;
    ``num_train`` (the training set's size) and ``length`` (instances streamed) by
    Selective-Backprop and InfoBatch, which work in epochs.
    """
    m = config.batch_size
    if config.method == "infobatch":
        return select.infobatch(
            config.infobatch_prune,
            config.infobatch_delta,
            chunk_size=m,
            num_train=num_train,
            epochs=length / num_train,
        )
    if config.method in ("selective_backprop", "selective_backprop_stale"):
        stale = config.method == "selective_backprop_stale"
        return select.selective_backprop(
            config.sb_beta,
            config.sb_history,
            chunk_size=m,
            prime=num_train,  # The source primes with the first epoch.
            staleness=config.sb_staleness if stale else None,
            num_train=num_train,
        )
    if config.method == "random":
        return select.uniform(config.filter.r_set, chunk_size=m)
    if config.method == "oracle":
        return select.oracle(config.filter.r_set, chunk_size=m)
    if config.method == "ohem":
        return select.ohem(config.filter.r_set, chunk_size=m)
    if not config.uses_eif:
        return select.everything(chunk_size=m)
    if config.uses_host_queue:
        return None
    selector = select.eif(
        filter_model,
        eif_runner.filter_optimizer(config),
        config.filter,
        chunk_size=m,
        probe_size=config.eif_probe_size,
        random_probes=config.eif_random_probes,
        predict_ahead=config.eif_predict_ahead,
    )
    if config.eif_history:
        return select.with_loss_history(selector, num_train=num_train)
    return selector


class EngineRunner:
    """A block of chunks is one dispatch of the stream engine and one host sync."""

    def __init__(
        self,
        config: config_lib.TrainConfig,
        info: data_lib.DatasetInfo,
        selector: select.Selector,
        dataset: data_lib.Dataset,
        root: jax.Array,
    ):
        self.config, self.info, self.selector = config, info, selector
        self.mesh = parallel.data_mesh(config.data_parallel)  # None on one device.
        self.dataset, self.root = dataset, parallel.replicate(root, self.mesh)
        self._init_key = jax.random.fold_in(root, 2**31 - 1)  # On one device (initial).
        options = {"xla_cpu": config.xla_cpu, "mesh": self.mesh}
        self.block_step = engine_lib.make_block_step(
            selector, info, channel_counts=config.uses_emp, **options
        )
        self.queue_step = None
        self._decide = None  # Built at the first snapshot (decide).
        if selector.pack_size is not None:
            self.queue_step = engine_lib.make_queue_step(selector, info, **options)

    def decide(
        self, loop: dict[str, Any], chunk: tuple[np.ndarray, np.ndarray, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(kept, losses)`` of ``chunk``, the next to train, from the loop state before
        it: the decision the engine's step takes on it (:mod:`edgefilter.training.snapshots`)."""
        if self._decide is None:
            self._decide = snapshots.engine_decision(
                self.selector, self.info, xla_cpu=self.config.xla_cpu
            )
        indices, weights, number = chunk
        state = engine_lib.EngineState(
            main=loop["state"], selector=loop["selector"], queue=loop.get("queue")
        )
        data = self.dataset
        return jax.device_get(
            self._decide(
                state,
                data.train_images[indices],
                data.train_labels[indices],
                weights > 0,
                np.int32(number),
                self.root,
                indices.astype(np.int32),
            )
        )

    def initial(self) -> dict[str, Any]:
        """The runner's part of a fresh loop state: the selector's state (and the queue
        of a packing selector: :mod:`edgefilter.training.pack`), replicated over the
        data mesh when there is one. It is made on one device, then replicated, as the
        main network's is (:func:`build_runner`): the same values, a one-device program."""
        m, shape = self.config.batch_size, self.info.image_shape
        example = np.zeros((m, *shape), np.float32)
        out = {"selector": self.selector.init(self._init_key, example)}
        if self.selector.pack_size is not None:
            size, chunks = self.selector.pack_size, self.config.block_chunks
            out["queue"] = pack.empty(size, m, shape, chunks)
        return parallel.replicate(out, self.mesh)

    def run_block(
        self, loop: dict[str, Any], chunks: list[tuple[np.ndarray, np.ndarray, int]]
    ) -> tuple[dict[str, Any], list[Record]]:
        """The chunks through the stream engine: one dispatch for a full block, else one
        per chunk; one host sync either way (a packing selector adds one per dispatch,
        to read its queue's count, and one dispatch per full batch)."""
        full = len(chunks) == self.config.block_chunks
        groups = [chunks] if full else [[c] for c in chunks]
        state = engine_lib.EngineState(
            main=loop["state"], selector=loop["selector"], queue=loop.get("queue")
        )
        outputs = []
        for group in groups:
            block, numbers = self._gather(group)
            state, metrics = self.block_step(state, *block[:3], numbers, self.root, block[3])
            if self.queue_step is not None:
                state, metrics = self._train_full_batches(state, metrics)
            outputs.append(metrics)
        fetched = jax.device_get(outputs)  # The block's one host sync.
        metrics = {k: np.concatenate([o[k] for o in fetched]) for k in fetched[0]}
        loop = dict(
            loop,
            state=state.main,
            selector=state.selector,
            trained=np.asarray(loop["trained"] + int(np.sum(metrics["trained"])), np.int64),
        )
        if state.queue is not None:
            loop["queue"] = state.queue
        return loop, _records(metrics, [c for _, _, c in chunks])

    def _gather(
        self, group: list[tuple[np.ndarray, np.ndarray, int]]
    ) -> tuple[tuple[jax.Array, ...], np.ndarray]:
        """The chunks of ``group`` as the block step takes them: ``(images, labels, valid,
        indices)`` ``[B, m, ...]`` placed over the mesh, and the chunks' numbers.

        Only this process's rows of each chunk are read from the dataset
        (:func:`~edgefilter.training.parallel.local_rows`: all of them in one process).
        """
        m, shape = self.config.batch_size, self.info.image_shape
        rows = parallel.local_rows(self.mesh, m)
        indices = np.stack([idx for idx, _, _ in group])[:, rows]
        valid = np.stack([w > 0 for _, w, _ in group])[:, rows]
        numbers = np.asarray([c for _, _, c in group], np.int32)
        flat = indices.reshape(-1)
        images = self.dataset.train_images[flat].reshape(*indices.shape, *shape)
        labels = self.dataset.train_labels[flat].reshape(indices.shape)
        local = (images, labels, valid, indices.astype(np.int32))
        return parallel.shard_chunks(local, self.mesh), numbers

    def _train_full_batches(
        self, state: engine_lib.EngineState, metrics: dict[str, jax.Array]
    ) -> tuple[engine_lib.EngineState, dict[str, Any]]:
        """A packing selector's main steps after a block: one per full queued batch.

        Reads the queue's count (a host sync) and dispatches that many steps. The
        block's per-chunk metrics get what they trained at the block's last chunk:
        ``trained`` (0 before it), and the steps' mean ``loss`` and ``accuracy`` with
        ``stepped`` set where any step ran.
        """
        steps = int(state.queue.count) // self.selector.pack_size
        done = []
        for _ in range(steps):
            state, step_metrics = self.queue_step(state, self.root)
            done.append(step_metrics)
        done = jax.device_get(done)
        chunks = len(metrics["kept"])
        last = np.arange(chunks) == chunks - 1
        trained = sum(int(d["trained"]) for d in done)
        metrics = dict(
            metrics,
            trained=np.where(last, trained, 0),
            stepped=last & bool(steps),
            queued=np.full(chunks, int(state.queue.count)),
        )
        for key in ("loss", "accuracy"):
            mean = float(np.mean([d[key] for d in done])) if done else 0.0
            metrics[key] = np.where(last, mean, 0.0)
        return state, metrics

    def finish(self, loop: dict[str, Any], chunk: int) -> tuple[dict[str, Any], list[Record]]:
        """Trains a packing selector's last, partial batch (else nothing is queued)."""
        if self.queue_step is None or int(loop["queue"].count) == 0:
            return loop, []
        state = engine_lib.EngineState(
            main=loop["state"], selector=loop["selector"], queue=loop["queue"]
        )
        state, metrics = self.queue_step(state, self.root)
        metrics = jax.device_get(metrics)
        trained = np.asarray(loop["trained"] + int(metrics["trained"]), np.int64)
        loop = dict(
            loop, state=state.main, selector=state.selector, queue=state.queue, trained=trained
        )
        return loop, [(chunk, "train", metrics)]

    def compilations(self) -> dict[str, int]:
        out = {"block": self.block_step._cache_size()}  # Lengths block_chunks and 1.
        if self.queue_step is not None:
            out["queue_step"] = self.queue_step._cache_size()
        return out


def _records(metrics: dict[str, np.ndarray], chunks: list[int]) -> list[Record]:
    """Per chunk, a "train" record, and a "window" record where a filter window closed.

    A packing selector's chunk that took no main step has no loss or accuracy in its
    record (it trained nothing)."""
    window_keys = [k for k in metrics if k.startswith("window/")]
    hidden = {"window_closed", "stepped"}
    train_keys = [k for k in metrics if k not in window_keys and k not in hidden]
    records: list[Record] = []
    for i, chunk in enumerate(chunks):
        keys = train_keys
        if "stepped" in metrics and not metrics["stepped"][i]:  # A packing selector's
            keys = [k for k in keys if k not in ("loss", "accuracy")]  # chunk, no step.
        records.append((chunk, "train", {k: metrics[k][i] for k in keys}))
        if "window_closed" in metrics and metrics["window_closed"][i]:
            window = {k.removeprefix("window/"): metrics[k][i] for k in window_keys}
            records.append((chunk, "window", window))
    return records


class HostQueueRunner:
    """:class:`~edgefilter.training.eif_runner.EifRunner`, a block as one chunk at a time."""

    def __init__(self, runner: eif_runner.EifRunner):
        self.runner = runner
        self._decide = None  # Built at the first snapshot (decide).

    def decide(
        self, loop: dict[str, Any], chunk: tuple[np.ndarray, np.ndarray, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(kept, losses)`` of ``chunk``, the next to arrive: the instances the filter
        predicts high-loss, which join the train queue (:mod:`edgefilter.training.snapshots`)."""
        runner = self.runner
        if self._decide is None:
            xla_cpu = runner.config.xla_cpu
            self._decide = snapshots.filter_decision(runner.info, runner.fconfig, xla_cpu=xla_cpu)
        indices, weights, _ = chunk
        images, labels = runner.dataset.train_images[indices], runner.dataset.train_labels[indices]
        decided = self._decide(loop["state"], loop["filter"], images, labels, weights > 0)
        return jax.device_get(decided)

    def initial(self) -> dict[str, Any]:
        return self.runner.initial()

    def run_block(
        self, loop: dict[str, Any], chunks: list[tuple[np.ndarray, np.ndarray, int]]
    ) -> tuple[dict[str, Any], list[Record]]:
        records: list[Record] = []
        for indices, weights, chunk in chunks:
            loop, more = self.runner.process(loop, indices, weights, chunk)
            records += [(chunk, kind, metrics) for kind, metrics in more]
        return loop, jax.device_get(records)  # One fetch per block, as the engine's.

    def finish(self, loop: dict[str, Any], chunk: int) -> tuple[dict[str, Any], list[Record]]:
        """Trains what the queue still holds after the run's last chunk, ``chunk``."""
        loop, more = self.runner.finish(loop)
        return loop, jax.device_get([(chunk, kind, metrics) for kind, metrics in more])

    def compilations(self) -> dict[str, int]:
        return self.runner.compilations()


# --- smd, sd, e2train (issue 18): skipped mini-batches, bypassed blocks -------------------


class BudgetRunner(EngineRunner):
    """The stream engine for SMD (skipped chunks) and stochastic depth (bypassed blocks).

    SMD's decisions are made here, on the host (:func:`budget.smd_skipped`: from the
    seed and the chunk's number): a skipped chunk is not gathered nor sent to the
    device, and takes a zero-gradient optimizer step (:func:`budget.zero_gradient_step`,
    as E2-Train's code); the kept chunks run through the engine, as one dispatch when a
    full block is kept, else one per chunk (block lengths ``block_chunks`` and 1 only,
    as :class:`EngineRunner`). The loop state counts ``skipped_batches`` and, under
    stochastic depth, ``skipped_blocks`` (per residual block, the mini-batches that
    bypassed it), which the accounting subtracts.
    """

    def __init__(self, *args: Any, num_blocks: int = 0):
        super().__init__(*args)
        self.num_blocks = num_blocks
        self.zero_step = backends.jit(
            budget.zero_gradient_step, xla_cpu=self.config.xla_cpu, donate_argnums=0
        )

    def initial(self) -> dict[str, Any]:
        counts = {"skipped_batches": np.asarray(0, np.int64)}
        if self.config.uses_sd:
            counts["skipped_blocks"] = np.zeros(self.num_blocks, np.int64)
        if self.config.method == "e2train":
            counts["slu_gated"] = np.asarray(0, np.int64)
        return {**super().initial(), **counts}

    def _dispatch(
        self, state: engine_lib.EngineState, group: list[tuple[np.ndarray, np.ndarray, int]]
    ) -> tuple[engine_lib.EngineState, dict[str, Any]]:
        block, numbers = self._gather(group)
        return self.block_step(state, *block[:3], numbers, self.root)

    def run_block(
        self, loop: dict[str, Any], chunks: list[tuple[np.ndarray, np.ndarray, int]]
    ) -> tuple[dict[str, Any], list[Record]]:
        skip = np.zeros(len(chunks), bool)
        if self.config.uses_smd:
            numbers = [c for _, _, c in chunks]
            skip = budget.smd_skipped(self.config.seed, numbers, self.config.smd_skip)
        kept = [c for c, s in zip(chunks, skip, strict=True) if not s]
        state = engine_lib.EngineState(main=loop["state"], selector=loop["selector"])
        outputs = []
        if len(kept) == self.config.block_chunks:
            state, metrics = self._dispatch(state, kept)
            outputs.append(metrics)
        else:
            for chunk, skipped in zip(chunks, skip, strict=True):
                if skipped:
                    state = state.replace(main=self.zero_step(state.main))
                else:
                    state, metrics = self._dispatch(state, [chunk])
                    outputs.append(metrics)
        fetched = jax.device_get(outputs)  # The block's one host sync.
        loop = dict(
            loop,
            state=state.main,
            selector=state.selector,
            skipped_batches=np.asarray(loop["skipped_batches"] + int(skip.sum()), np.int64),
        )
        if not fetched:
            return loop, []
        metrics = {k: np.concatenate([o[k] for o in fetched]) for k in fetched[0]}
        if "sd_skipped" in metrics:  # [chunks, blocks]: kept out of the per-chunk records.
            per_block = metrics.pop("sd_skipped")
            loop["skipped_blocks"] = loop["skipped_blocks"] + per_block.sum(0).astype(np.int64)
            metrics["blocks_skipped"] = per_block.sum(1)
        if "slu_gated" in metrics:  # Instance-blocks SLU gated off (computed all the same).
            gated = np.asarray(loop["slu_gated"] + int(metrics["slu_gated"].sum()), np.int64)
            loop["slu_gated"] = gated
        trained = loop["trained"] + int(np.sum(metrics["trained"]))
        loop["trained"] = np.asarray(trained, np.int64)
        return loop, _records(metrics, [c for _, _, c in kept])


Runner = EngineRunner | HostQueueRunner


def build_runner(
    config: config_lib.TrainConfig, dataset: data_lib.Dataset, length: int
) -> tuple[Runner, steps_lib.TrainState]:
    """The runner for ``config.method`` and the main network's fresh train state.

    ``config`` must be resolved; ``length`` is the number of streamed instances, which
    sets the learning-rate schedule's step count (the main network's updates).
    """
    info = dataset.info
    model = steps_lib.build_model(
        config.model,
        info.num_classes,
        config.bits,
        steps_lib.emp_policy(config),
        config.emp.first_layer,
        xla_cpu=config.xla_cpu,
        **steps_lib.model_options(config),
    )
    filter_model = None
    if config.uses_eif:
        filter_model = steps_lib.build_model(
            config.filter_model, 2, config.bits, xla_cpu=config.xla_cpu
        )
    num_train = len(dataset.train_labels)
    selector = engine_selector(config, filter_model, num_train=num_train, length=length)
    chunks = -(-length // config.batch_size)
    if selector is not None:
        # One main step per chunk. A packing selector (Selective-Backprop, InfoBatch)
        # takes fewer, a number not known in advance: its schedule's boundaries are
        # placed as for one step a chunk (the paper's MNIST schedule has none).
        main_steps = chunks
    else:  # Packed: about r_set of the stream, in steps of eif_batch_size.
        main_steps = -(-int(length * config.filter.r_set) // config.eif_batch_size)
    tx = steps_lib.make_optimizer(config, main_steps)
    root, init_key = jax.random.split(jax.random.key(config.seed))
    state = steps_lib.create_train_state(model, tx, init_key, info.image_shape)
    if selector is not None and config.method in ("smd", "sd", "e2train"):
        blocks = models.residual_blocks(config.model)
        runner = BudgetRunner(config, info, selector, dataset, root, num_blocks=blocks)
        return runner, parallel.replicate(state, runner.mesh)
    if selector is not None:
        runner = EngineRunner(config, info, selector, dataset, root)
        return runner, parallel.replicate(state, runner.mesh)
    host = eif_runner.EifRunner(config, info, filter_model, dataset, root)
    return HostQueueRunner(host), state


def filter_state(loop: dict[str, Any]) -> Any:
    """The instance filter's state in a loop state (either runner's), or None."""
    if "selector" in loop:
        selector = loop["selector"]
        if isinstance(selector, select.LossHistoryState):
            selector = selector.inner
        return getattr(selector, "filter", None)
    return loop.get("filter")


def selection_forwarded(loop: dict[str, Any]) -> int:
    """Chunk slots the main network ran forward on to select (0 for most methods).

    Selectors that run such a forward (``select.top_loss``, ``select.selective_backprop``)
    count its slots in their state's ``forwarded``.
    """
    return int(getattr(loop.get("selector"), "forwarded", 0))


def skipped_probes(loop: dict[str, Any]) -> int:
    """Uncertainty-sampled instances that found no probe slot, over the run so far."""
    if "selector" in loop:
        return int(getattr(loop["selector"], "unprobed", 0))
    return int(loop["skipped_probes"])
