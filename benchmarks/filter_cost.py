r"""The instance filter's seconds per counted multiply-accumulate, against the main network's.

The counted reduction (``edgefilter.training.accounting``) charges the filter by its MACs:
its forward on every streamed instance and its training step on the instances whose
labels became known (PAPER.md Eq. 6-7). This times, in one process and in alternating
rounds (medians over rounds), each piece of a filtered chunk as the stream engine
compiles it (``edgefilter.backends.jit``, the run's backend switch), on random inputs of
the dataset's shape:

* ``main/train@<n>``: the main network's SGD step on ``n`` instances, for the chunk
  (``m``, SGD's step) and for EIF's ``train_size``;
* ``filter/forward@<n>``: the filter's forward (inference mode) on a chunk and on a
  block of ``block_chunks`` chunks at once (``--eif_predict_ahead``);
* ``filter/update@<n>``: the filter's training step on a chunk's known instances
  (``train_size + probe_size``) and on a block's.

For each it gives milliseconds and nanoseconds per counted MAC (``edgefilter.flops``:
forward MACs for a forward, forward + error propagation + weight gradient for a step).
Equal nanoseconds per MAC would make the filter cost what the count says; when the
filter's are higher, its share of a chunk's time exceeds its share of the count. The
ratio of the block's time to ``block_chunks`` times the chunk's says how much batching
the filter's work across a block could save.

  .venv/bin/python -m benchmarks.filter_cost \
      --output=benchmarks/results/filter_cost/filter_cost.json
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import report_json
from edgefilter import backends
from edgefilter import data as data_lib
from edgefilter.method import flops, instance_filter
from edgefilter.models.state import create_train_state
from edgefilter.training import config as config_lib
from edgefilter.training import eif_runner, runners
from edgefilter.training import steps as steps_lib
from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "lenet", "Main network.")
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset (its settings and image shape).")
flags.DEFINE_integer("rounds", 7, "Rounds; every number is the median over them.", lower_bound=1)
flags.DEFINE_integer("calls", 20, "Calls per round and piece.", lower_bound=1)
flags.DEFINE_string("output", "", "Write the results as JSON here.")
cli.check_flag(
    "output", lambda p: p == "" or cli.writable_file(p), "a file path in a writable folder"
)


def _pieces(config: config_lib.TrainConfig) -> dict[str, tuple[Callable[[], Any], int]]:
    """Each piece's name: (a call of it, the MACs it is counted at)."""
    fmodel = steps_lib.build_model(config.filter_model, 2, config.bits, xla_cpu=config.xla_cpu)
    sel = runners.engine_selector(config, fmodel)  # The run's selector: its slot counts.
    rng = np.random.default_rng(0)
    return {
        **_main_pieces(config, (config.batch_size, sel.train_size), rng),
        **_filter_pieces(config, fmodel, sel.train_size + sel.probe_size, rng),
    }


def _main_pieces(
    config: config_lib.TrainConfig, sizes: tuple[int, ...], rng: np.random.Generator
) -> dict[str, tuple[Callable[[], Any], int]]:
    """The main network's jitted train step on each of ``sizes`` instances."""
    info = data_lib.info(config.dataset)
    shape, classes = info.image_shape, info.num_classes
    model = steps_lib.build_model(config.model, classes, config.bits, xla_cpu=config.xla_cpu)
    tx = steps_lib.make_optimizer(config, 1000)  # Any length: the schedule costs the same.
    main = create_train_state(model, tx, jax.random.key(0), shape)
    train_step = steps_lib.make_train_step(info, xla_cpu=config.xla_cpu)
    macs = flops.per_instance(config.model, shape, classes)["train"]
    pieces = {}
    for n in sizes:
        images = jnp.asarray(rng.integers(0, 256, (n, *shape), dtype=np.uint8))
        labels = jnp.asarray(rng.integers(0, classes, n, dtype=np.int32))
        weights, key = jnp.ones((n,), jnp.float32), jax.random.key(1)
        state = {"main": jax.tree.map(jnp.copy, main)}  # Donated: each piece its own.

        def train(images=images, labels=labels, weights=weights, key=key, state=state):
            state["main"], _, losses = train_step(state["main"], images, labels, weights, key)
            return losses

        pieces[f"main/train@{n}"] = (train, n * macs)
    return pieces


def _filter_pieces(
    config: config_lib.TrainConfig, fmodel: Any, known: int, rng: np.random.Generator
) -> dict[str, tuple[Callable[[], Any], int]]:
    """The filter's forward on a chunk and a block, its update on their known instances."""
    shape = data_lib.info(config.dataset).image_shape
    m, blocks = config.batch_size, config.block_chunks
    macs = flops.per_instance(config.filter_model, shape, 2)
    fstate = instance_filter.init(
        fmodel, eif_runner.filter_optimizer(config), jax.random.key(2), shape, config.filter
    )
    forward = backends.jit(
        lambda net, x: net.apply_fn(
            {"params": net.params, "batch_stats": net.batch_stats}, x, train=False
        ),
        xla_cpu=config.xla_cpu,
    )
    update = backends.jit(
        lambda s, x, losses, high, mask: instance_filter.update(
            s, x, losses, high, mask, config.filter
        )[0],
        xla_cpu=config.xla_cpu,
    )
    pieces = {}
    for n in (m, blocks * m):
        x = jnp.asarray(rng.standard_normal((n, *shape)), jnp.float32)
        pieces[f"filter/forward@{n}"] = (lambda x=x: forward(fstate.net, x), n * macs["forward"])
    for n in (known, blocks * known):
        x = jnp.asarray(rng.standard_normal((n, *shape)), jnp.float32)
        losses = jnp.asarray(rng.random(n), jnp.float32)
        high = jnp.asarray(rng.random(n) < 0.5)
        mask = jnp.ones((n,), bool)
        pieces[f"filter/update@{n}"] = (
            lambda x=x, losses=losses, high=high, mask=mask: update(fstate, x, losses, high, mask),
            n * macs["train"],
        )
    return pieces


def main(argv: list[str]) -> None:
    del argv
    try:
        config = config_lib.resolve(
            config_lib.TrainConfig(model=FLAGS.model, dataset=FLAGS.dataset, method="eif")
        )
    except ValueError as e:
        cli.fail(str(e))
    pieces = _pieces(config)
    for call, _ in pieces.values():  # Compile.
        jax.block_until_ready(call())
    times: dict[str, list[float]] = {}
    for _ in range(FLAGS.rounds):
        for name, (call, _) in pieces.items():
            start = time.perf_counter()
            for _ in range(FLAGS.calls):
                out = call()
            jax.block_until_ready(out)
            times.setdefault(name, []).append(1e3 * (time.perf_counter() - start) / FLAGS.calls)
    result: dict[str, Any] = {
        "device": str(jax.devices()[0]),
        "model": config.model,
        "filter_model": config.filter_model,
        "chunk": config.batch_size,
        "block_chunks": config.block_chunks,
        "ms": {},
        "ns_per_counted_mac": {},
    }
    for name, (_, macs) in pieces.items():
        ms = statistics.median(times[name])
        result["ms"][name] = ms
        result["ns_per_counted_mac"][name] = 1e6 * ms / macs
    report_json(result, FLAGS.output)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
