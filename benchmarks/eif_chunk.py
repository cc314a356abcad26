r"""Where a filtered chunk's time goes, part by part, against SGD's chunk.

In one process, in alternating rounds (each number is the median over rounds):

* ``sgd_chunk`` and ``eif_chunk``: ``runner.process`` per chunk of the same stream,
  what a run's train time is made of (``loop.train_and_evaluate`` adds nothing
  measurable around it);
* the jitted parts of an EIF chunk, each called back to back on its own outputs:
  ``filter_predict`` (the filter's forward on the chunk) and ``eif_step`` (the packed
  step: probe forward, main-network training on ``eif_batch_size`` instances, filter
  update), and, splitting the step, ``main_step`` (the main network's train step alone
  on the packed batch) and ``filter_update`` (alone, on the batch and the probes).

From them: ``host_and_launch = eif_chunk - filter_predict - steps_per_chunk * eif_step``,
the time the jitted parts do not explain (dispatch, the filter's decisions coming back
to the host, packing); the measured reduction ``1 - eif_chunk / sgd_chunk``; and
``parts_only``, the reduction if ``host_and_launch`` were zero. Both are also given over
the counted reduction of the chunks processed (``edgefilter.training.accounting``), the ratio
``benchmarks.methods`` reports for whole runs.

  .venv/bin/python -m benchmarks.eif_chunk --output=benchmarks/results/eif_chunk.json

``--eif_batch_size`` sets the main network's packed step size (default ``round(r_set *
batch_size)``, one step per chunk as in the paper), as ``benchmarks.methods`` does.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from edgefilter import backends
from edgefilter import data as data_lib
from edgefilter.method import instance_filter
from edgefilter.training import accounting
from edgefilter.training import config as config_lib
from edgefilter.training import loop as loop_lib
from edgefilter.training import steps as train_lib
from edgefilter.training import stream as stream_lib
from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_enum("method", "eif_emp", ["eif", "eif_emp"], "The filtered method.")
flags.DEFINE_string("model", "lenet", "Main network.")
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset (its settings and its data).")
flags.DEFINE_integer(
    "eif_batch_size",
    None,
    "EIF's main-network step size (default: round(r_set * batch)).",
    lower_bound=1,
)
flags.DEFINE_integer("chunks", 100, "Chunks per process round (per method).", lower_bound=1)
flags.DEFINE_integer("calls", 100, "Calls per round of each jitted part.", lower_bound=1)
flags.DEFINE_integer("rounds", 9, "Rounds; every number is the median over them.", lower_bound=1)
flags.DEFINE_string("output", "", "Write the results as JSON here.")

PARTS = ("filter_predict", "eif_step", "main_step", "filter_update")


def _copy(tree: Any) -> Any:
    """Fresh device buffers for every array leaf (the jitted parts donate their state)."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True) if isinstance(x, jax.Array) else x, tree)


class _Recorder:
    """Calls a jitted function and keeps a copy of its last arguments."""

    def __init__(self, fn: Any):
        self.fn, self.args = fn, None

    def __call__(self, *args: Any) -> Any:
        self.args = _copy(args)
        return self.fn(*args)


def _time_calls(fn: Any, carried: tuple, rest: tuple, calls: int) -> float:
    """Milliseconds per call of ``fn(*carried, *rest)``, feeding its outputs back."""
    carried = _copy(carried)
    jax.block_until_ready(carried)
    start = time.perf_counter()
    for _ in range(calls):
        out = fn(*carried, *rest)
        carried = tuple(out[: len(carried)])
    jax.block_until_ready(out)
    return 1e3 * (time.perf_counter() - start) / calls


class _Stream:
    """A runner with its loop state, fed consecutive chunks of the run's stream."""

    def __init__(self, config: config_lib.TrainConfig, dataset: data_lib.Dataset, length: int):
        self.runner, state = loop_lib.build_runner(config, dataset, length)
        self.loop = {"state": state, "trained": np.asarray(0, np.int64), **self.runner.initial()}
        self.stream = stream_lib.Stream(config.seed, len(dataset.train_images), length)
        self.m, self.chunk, self.steps = config.batch_size, 0, 0

    def process(self, chunks: int) -> float:
        """Milliseconds per chunk of ``runner.process`` over the next ``chunks`` chunks."""
        batches = [
            stream_lib.stream_batch(self.stream.indices((self.chunk + i) * self.m, self.m), self.m)
            for i in range(chunks)
        ]
        jax.block_until_ready(self.loop["state"])
        start = time.perf_counter()
        for indices, weights in batches:
            self.loop, records = self.runner.process(self.loop, indices, weights, self.chunk)
            self.steps += sum(kind == "train" for kind, _ in records)
            self.chunk += 1
        jax.block_until_ready(self.loop["state"])
        return 1e3 * (time.perf_counter() - start) / chunks


def main(argv: list[str]) -> None:
    del argv
    settings = dict(model=FLAGS.model, dataset=FLAGS.dataset)
    try:  # Bad --model or --dataset: one line and status 2, before any work.
        config = config_lib.resolve(
            config_lib.TrainConfig(
                method=FLAGS.method, eif_batch_size=FLAGS.eif_batch_size, **settings
            )
        )
        sgd_config = config_lib.resolve(config_lib.TrainConfig(method="sgd", **settings))
        dataset = data_lib.load(config.dataset, config.data_dir)
    except (ValueError, data_lib.DataUnavailableError) as e:
        cli.fail(str(e))
    info = dataset.info
    length = (FLAGS.rounds + 1) * FLAGS.chunks * config.batch_size
    sgd, eif = _Stream(sgd_config, dataset, length), _Stream(config, dataset, length)
    runner = eif.runner
    predict, step = _Recorder(runner.predict), _Recorder(runner.step)
    runner.predict, runner.step = predict, step
    sgd.process(FLAGS.chunks)  # Warm-up (compilation) and a filter past its first updates.
    eif.process(FLAGS.chunks)
    runner.predict, runner.step = predict.fn, step.fn

    main_state, fstate, images, labels, weights, p_images, p_labels, p_mask, p_random, key = (
        step.args
    )
    x = train_lib.preprocess(
        jnp.concatenate([jnp.asarray(images), jnp.asarray(p_images)]), info, None
    )
    known = len(x)
    update = backends.jit(
        lambda fstate, x, losses, pred_high, mask, random: instance_filter.update(
            fstate, x, losses, pred_high, mask, runner.fconfig, random
        ),
        donate_argnums=0,
    )
    update_rest = (
        x,
        jnp.linspace(0.0, 2.0, known),  # Main-network losses: labels both H and L.
        jnp.arange(known) < len(images),
        jnp.concatenate([jnp.asarray(weights) > 0, jnp.asarray(p_mask)]),
        jnp.concatenate([jnp.zeros(len(images), bool), jnp.asarray(p_random)]),
    )
    jitted = {
        "filter_predict": (runner.predict, (predict.args[0],), predict.args[1:]),
        "eif_step": (runner.step, (main_state, fstate), step.args[2:]),
        "main_step": (
            train_lib.make_train_step(info),
            (main_state,),
            (images, labels, weights, key),
        ),
        "filter_update": (update, (fstate,), update_rest),
    }
    for fn, carried, rest in jitted.values():
        _time_calls(fn, carried, rest, 1)  # Compilation.
    times: dict[str, list[float]] = {name: [] for name in ("sgd_chunk", "eif_chunk", *PARTS)}
    steps_before, chunks_before = eif.steps, eif.chunk
    for _ in range(FLAGS.rounds):
        times["sgd_chunk"].append(sgd.process(FLAGS.chunks))
        times["eif_chunk"].append(eif.process(FLAGS.chunks))
        for name, (fn, carried, rest) in jitted.items():
            times[name].append(_time_calls(fn, carried, rest, FLAGS.calls))
    steps_per_chunk = (eif.steps - steps_before) / (eif.chunk - chunks_before)

    ms = {name: statistics.median(values) for name, values in times.items()}
    parts = ms["filter_predict"] + steps_per_chunk * ms["eif_step"]
    ms["host_and_launch"] = ms["eif_chunk"] - parts
    eif.loop.update(
        chunk=np.asarray(eif.chunk, np.int64),
        position=np.asarray(eif.chunk * config.batch_size, np.int64),
    )
    counted = accounting.run_compute(config, info, eif.loop)["reduction"]
    measured = 1.0 - ms["eif_chunk"] / ms["sgd_chunk"]
    parts_only = 1.0 - parts / ms["sgd_chunk"]
    results = {
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "method": config.method,
        "model": config.model,
        "dataset": config.dataset,
        "batch_size": config.batch_size,
        "eif_batch_size": config.eif_batch_size,
        "eif_probe_size": config.eif_probe_size,
        "rounds": FLAGS.rounds,
        "ms": ms,
        "ms_every_round": times,
        "steps_per_chunk": steps_per_chunk,
        "counted_reduction": counted,
        "measured_reduction": measured,
        "parts_only_reduction": parts_only,
        "measured_over_counted": measured / counted,
        "parts_only_over_counted": parts_only / counted,
    }
    print(
        f"{config.method} on {config.model}/{config.dataset}, chunks of {config.batch_size}, "
        f"main steps of {config.eif_batch_size} + {config.eif_probe_size} probes, "
        f"{steps_per_chunk:.2f} steps per chunk; median of {FLAGS.rounds} rounds "
        f"({results['device']})\n"
    )
    print("| part | ms |\n|---|---|")
    for name in ("sgd_chunk", "eif_chunk", *PARTS, "host_and_launch"):
        print(f"| {name} | {ms[name]:.2f} |")
    print(
        f"\ncounted reduction {counted:.3f}; measured {measured:.3f} "
        f"(measured/counted {measured / counted:.2f}); jitted parts only {parts_only:.3f} "
        f"({parts_only / counted:.2f})"
    )
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
