r"""Where a chunk's time goes in the stream engine, per method, against SGD's chunk.

In one process, in alternating rounds (each number is the median over rounds), over
consecutive blocks of the same stream:

* ``<variant>/run``: milliseconds per chunk of the runner's ``run_block`` (gathering the
  block on the host, its dispatch, the device's work, the one sync at its end): what a
  run's train time is made of;
* ``<variant>/device``: the same blocks' jitted ``block_step`` alone, called back to back
  on blocks already on the device, synchronised once per round;
* ``<variant>/host_share``: ``1 - device / run``, the share of a chunk's time the
  device's work does not explain (dispatch, gathering, the metrics' sync);
* ``<variant>/measured``: ``1 - run / sgd's run``, against the counted reduction of the
  same chunks (``edgefilter.training.accounting``), and their ratio
  ``measured_over_counted``, the figure ``benchmarks.methods`` gives for whole runs.

``host_queue``: the same filtered method through the host-queue runner (one chunk at a
time, the filter's decisions read back every chunk; the path of the paper's argmax rule
and a non-default ``--eif_batch_size``), for comparison. ``sgd/rolled``: SGD's block
with the scan not unrolled (``make_block_step(..., unroll=False)``), what the engine
would cost on XLA:CPU without its unrolling. ``<method>/ahead`` (``--ahead``): the
filtered method with ``--eif_predict_ahead``, the filter predicting each block in one
forward from its parameters at the block's start. ``<method>/no_probes``
(``--no_probes``): the filtered method with ``--eif_probe_size=0`` (no main-network
forward on probes, no uncertainty sampling): what the probes cost. ``random`` in
``--methods``: the uniform random selection of the same ``R_set`` (``--method=random``),
the main network's steps on as many instances with no filter: what a filtered chunk
would cost if its selection were free.

  .venv/bin/python -m benchmarks.engine_block --output=benchmarks/results/engine_block.json
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags

from benchmarks import report_json
from edgefilter import data as data_lib
from edgefilter.method import instance_filter
from edgefilter.training import accounting, eif_runner, runners
from edgefilter.training import config as config_lib
from edgefilter.training import engine as engine_lib
from edgefilter.training import loop as loop_lib
from edgefilter.training import stream as stream_lib
from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "methods", ["eif", "eif_emp"], "Methods, each against sgd: eif, eif_emp, emp, random."
)
flags.DEFINE_string("model", "lenet", "Main network.")
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset (its settings and its data).")
flags.DEFINE_integer(
    "block_chunks", None, "Chunks per block (default: TrainConfig's).", lower_bound=1
)
flags.DEFINE_float("r_set", None, "The filtered methods' R_set (default: FilterConfig's, 0.3).")
flags.DEFINE_integer("blocks", 8, "Blocks per round and variant.", lower_bound=1)
flags.DEFINE_integer("rounds", 5, "Rounds; every number is the median over them.", lower_bound=1)
flags.DEFINE_bool("host_queue", True, "Also time the filtered methods' host-queue runner.")
flags.DEFINE_bool("rolled", True, "Also time SGD's block with its scan not unrolled.")
flags.DEFINE_bool("ahead", False, "Also time the filtered methods with --eif_predict_ahead.")
flags.DEFINE_bool("no_probes", False, "Also time the filtered methods with --eif_probe_size=0.")
flags.DEFINE_string("output", "", "Write the results as JSON here.")
cli.check_flag(
    "methods",
    cli.distinct_choices(("eif", "eif_emp", "emp", "random")),
    "eif, eif_emp, emp, random, once each",
)
cli.check_flag("r_set", lambda r: r is None or 0.0 < r < 1.0, "a fraction in (0, 1)")
cli.check_flag(
    "output", lambda p: p == "" or cli.writable_file(p), "a file path in a writable folder"
)


class _Variant:
    """A runner with its loop state, fed consecutive blocks of the run's stream."""

    def __init__(
        self,
        config: config_lib.TrainConfig,
        dataset: data_lib.Dataset,
        host: bool = False,
        rolled: bool = False,
    ):
        n = len(dataset.train_images)
        self.config, self.dataset = config, dataset
        self.runner, state = runners.build_runner(config, dataset, n)
        if rolled:  # The same selector, its scan not unrolled.
            self.runner.block_step = engine_lib.make_block_step(
                self.runner.selector, dataset.info, xla_cpu=config.xla_cpu, unroll=False
            )
        if host:  # The filtered method through the host-queue runner instead.
            filter_model = runners.steps_lib.build_model(
                config.filter_model, 2, config.bits, xla_cpu=config.xla_cpu
            )
            queue = eif_runner.EifRunner(
                config, dataset.info, filter_model, dataset, self.runner.root
            )
            self.runner = runners.HostQueueRunner(queue)
        self.loop = loop_lib.initial_loop(state, self.runner)
        self.stream = stream_lib.Stream(config.seed, n, n)
        self.chunk = 0

    def blocks(self, count: int) -> list[list[tuple[np.ndarray, np.ndarray, int]]]:
        m, size = self.config.batch_size, self.config.block_chunks
        out = []
        for _ in range(count):
            block = []
            for _ in range(size):
                start = (self.chunk * m) % (self.stream.num_train - m)
                idx, weights = stream_lib.stream_batch(self.stream.indices(start, m), m)
                block.append((idx, weights, self.chunk))
                self.chunk += 1
            out.append(block)
        return out

    def time_run(self, count: int) -> float:
        """Milliseconds per chunk of ``run_block`` over ``count`` blocks."""
        blocks = self.blocks(count)
        jax.block_until_ready(self.loop["state"])
        start = time.perf_counter()
        for block in blocks:
            self.loop, _ = self.runner.run_block(self.loop, block)
        jax.block_until_ready(self.loop["state"])
        return 1e3 * (time.perf_counter() - start) / (count * self.config.block_chunks)

    def time_device(self, count: int) -> float:
        """Milliseconds per chunk of the jitted block step alone, inputs on the device."""
        runner, m = self.runner, self.config.batch_size
        shape = self.dataset.info.image_shape
        inputs = []
        for block in self.blocks(count):
            idx = np.concatenate([i for i, _, _ in block])
            inputs.append(
                jax.device_put(
                    (
                        self.dataset.train_images[idx].reshape(len(block), m, *shape),
                        self.dataset.train_labels[idx].reshape(len(block), m),
                        np.stack([w > 0 for _, w, _ in block]),
                        np.asarray([c for _, _, c in block], np.int32),
                    )
                )
            )
        state = engine_lib.EngineState(main=self.loop["state"], selector=self.loop["selector"])
        jax.block_until_ready((state, inputs))
        start = time.perf_counter()
        for block in inputs:
            state, _ = runner.block_step(state, *block, runner.root)
        jax.block_until_ready(state)
        elapsed = time.perf_counter() - start
        self.loop = dict(self.loop, state=state.main, selector=state.selector)
        return 1e3 * elapsed / (count * self.config.block_chunks)

    def counted(self) -> float:
        """Counted MACs per streamed instance so far (accounting's compute block)."""
        loop = dict(
            self.loop,
            position=np.asarray(self.chunk * self.config.batch_size),
            chunk=np.asarray(self.chunk),
        )
        return accounting.run_compute(self.config, self.dataset.info, loop)["total"] / int(
            loop["position"]
        )


def main(argv: list[str]) -> None:
    del argv
    base = {"model": FLAGS.model, "dataset": FLAGS.dataset, "epochs": 1.0}
    if FLAGS.block_chunks:
        base["block_chunks"] = FLAGS.block_chunks
    if FLAGS.r_set is not None:
        base["filter"] = instance_filter.FilterConfig(r_set=FLAGS.r_set)
    try:
        configs = {
            name: config_lib.resolve(config_lib.TrainConfig(**base, method=name))
            for name in ["sgd", *FLAGS.methods]
        }
        dataset = data_lib.load(FLAGS.dataset)
    except (ValueError, data_lib.DataUnavailableError) as e:
        cli.fail(str(e))
    variants = {name: _Variant(c, dataset) for name, c in configs.items()}
    if FLAGS.rolled:
        variants["sgd/rolled"] = _Variant(configs["sgd"], dataset, rolled=True)
    for name in FLAGS.methods:
        if not configs[name].uses_eif:
            continue
        if FLAGS.host_queue:
            variants[f"{name}/host_queue"] = _Variant(configs[name], dataset, host=True)
        if FLAGS.ahead:
            ahead = dataclasses.replace(configs[name], eif_predict_ahead=True)
            variants[f"{name}/ahead"] = _Variant(ahead, dataset)
        if FLAGS.no_probes:
            no_probes = dataclasses.replace(configs[name], eif_probe_size=0)
            variants[f"{name}/no_probes"] = _Variant(no_probes, dataset)
    times: dict[str, list[float]] = {}
    for name, v in variants.items():  # Warm-up: compile both block lengths.
        v.time_run(1)
        if not name.endswith("host_queue"):
            v.time_device(1)
    for _ in range(FLAGS.rounds):
        for name, v in variants.items():
            times.setdefault(f"{name}/run", []).append(v.time_run(FLAGS.blocks))
            if not name.endswith("host_queue"):
                times.setdefault(f"{name}/device", []).append(v.time_device(FLAGS.blocks))
    result: dict[str, Any] = {
        "device": str(jax.devices()[0]),
        "model": FLAGS.model,
        "block_chunks": configs["sgd"].block_chunks,
        "r_set": configs[FLAGS.methods[0]].filter.r_set,
        "ms_per_chunk": {k: statistics.median(t) for k, t in times.items()},
    }
    ms = result["ms_per_chunk"]
    sgd_macs = variants["sgd"].counted()
    for name, v in variants.items():
        if name == "sgd":
            continue
        counted = 1 - v.counted() / sgd_macs
        measured = 1 - ms[f"{name}/run"] / ms["sgd/run"]
        ratio = measured / counted if counted else None  # sgd/rolled counts as SGD.
        result[name] = {"counted": counted, "measured": measured, "measured_over_counted": ratio}
    for name in variants:
        if f"{name}/device" in ms:
            result[f"{name}/host_share"] = 1 - ms[f"{name}/device"] / ms[f"{name}/run"]
    report_json(result, FLAGS.output)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
