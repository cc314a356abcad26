r"""Error map pruning: the whole jitted train step against the dense step.

For each network (ResNet-20 on CIFAR-shaped batches of 128, LeNet on 28x28 batches of
64) and each keep ratio, in one process on the same machine:

* compiled FLOPs of the jitted train step (XLA's ``cost_analysis()``), as a ratio to the
  dense step's (what the compiled program does, not what we count);
* the analytic MAC ratio of the step (``edgefilter.flops``, forward + backward);
* wall-clock time per step, median over ``--repeats`` timed rounds of ``--steps`` steps,
  rounds of all variants interleaved so they see the same machine state.

  .venv/bin/python -m benchmarks.emp_step --output=benchmarks/results/emp_step.json
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import report_json
from edgefilter import backends, models
from edgefilter import data as data_lib
from edgefilter.method import emp, flops
from edgefilter.training import config as config_lib
from edgefilter.training import steps as train_lib
from experiments import cli

flags.DEFINE_list("keeps", ["0.5", "0.25"], "TopK keep ratios to compare with dense.")
flags.DEFINE_integer("steps", 20, "Steps per timed round.", lower_bound=1)
flags.DEFINE_integer("repeats", 7, "Timed rounds per variant (median reported).", lower_bound=1)
flags.DEFINE_list("networks", ["resnet20", "lenet"], "Networks to benchmark.")
flags.DEFINE_string("output", None, "Optional JSON output file.")
cli.check_flag("keeps", cli.finite_in(0.0, 1.0), "keep ratios in (0, 1], comma-separated")
cli.check_flag(
    "networks",
    cli.distinct_choices(models.MODEL_NAMES),
    ", ".join(models.MODEL_NAMES) + ", once each",
)
cli.check_flag("output", cli.writable_file, "a file path in a writable folder")
FLAGS = flags.FLAGS

SETTINGS = {  # name: (dataset for shapes and defaults, batch size)
    "resnet20": ("cifar10", 128),
    "lenet": ("fashion_mnist", 64),
}


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def make_variant(name: str, keep: float | None):
    """A jitted train step, its state and a batch for one network and keep ratio."""
    dataset, batch = SETTINGS[name]
    info = data_lib.info(dataset)
    config = config_lib.resolve(config_lib.TrainConfig(model=name, dataset=dataset))
    policy = emp.TopK(keep) if keep is not None else None
    model = train_lib.build_model(name, info.num_classes, 32, policy)
    state = train_lib.create_train_state(
        model, train_lib.make_optimizer(config, 10**6), jax.random.key(0), info.image_shape
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, *info.image_shape), dtype=np.uint8)
    labels = rng.integers(0, info.num_classes, batch).astype(np.int32)
    weights = np.ones(batch, np.float32)
    step = backends.jit(lambda s, x, y, w, k: train_lib.train_step_body(s, x, y, w, k, info))
    args = (images, labels, weights, jax.random.key(1))
    compiled = step.lower(state, *args).compile()
    shape = info.image_shape
    if keep is None:
        macs = flops.per_instance(name, shape, info.num_classes)["train"]
    else:
        macs = flops.emp_train(name, shape, info.num_classes, keep, batch_size=batch)["train"]
    return {
        "compiled": compiled,
        "state": state,
        "args": args,
        "flops": _flops(compiled),
        "macs": macs,
        "batch": batch,
    }


def time_round(variant, steps: int) -> float:
    state, compiled = variant["state"], variant["compiled"]
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics, _ = compiled(state, *variant["args"])
    jax.block_until_ready(metrics["loss"])
    variant["state"] = state
    return (time.perf_counter() - start) / steps


def main(argv: list[str]) -> None:
    del argv
    results = {"device": str(jax.devices()[0]), "jax": jax.__version__, "networks": {}}
    for name in FLAGS.networks:
        keeps = [None] + [float(k) for k in FLAGS.keeps]
        variants = {keep: make_variant(name, keep) for keep in keeps}
        for v in variants.values():
            time_round(v, 2)  # Warm up.
        times = {keep: [] for keep in keeps}
        for _ in range(FLAGS.repeats):
            for keep, v in variants.items():
                times[keep].append(time_round(v, FLAGS.steps))
        dense = variants[None]
        dense_time = statistics.median(times[None])
        rows = []
        for keep, v in variants.items():
            t = statistics.median(times[keep])
            rows.append(
                {
                    "keep": 1.0 if keep is None else keep,
                    "emp": keep is not None,
                    "step_ms": 1e3 * t,
                    "compiled_flops_ratio": v["flops"] / dense["flops"],
                    "analytic_mac_ratio": v["macs"] / dense["macs"],
                    "wall_clock_ratio": t / dense_time,
                    "speedup": dense_time / t,
                }
            )
        results["networks"][name] = {"batch": dense["batch"], "rows": rows}
        print(
            f"\n{name} (batch {dense['batch']}), median of {FLAGS.repeats} rounds x "
            f"{FLAGS.steps} steps"
        )
        print(
            "| keep | step (ms) | compiled FLOPs ratio | analytic MAC ratio | wall-clock ratio |"
            " speed-up |"
        )
        print("|---|---|---|---|---|---|")
        for r in rows:
            label = "dense" if not r["emp"] else f"{r['keep']:g}"
            print(
                f"| {label} | {r['step_ms']:.1f} | {r['compiled_flops_ratio']:.3f} "
                f"| {r['analytic_mac_ratio']:.3f} | {r['wall_clock_ratio']:.3f} "
                f"| {r['speedup']:.2f}x |"
            )
    report_json(results, FLAGS.output, show=False)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
