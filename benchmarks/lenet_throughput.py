r"""SGD training throughput of LeNet: edgefilter (JAX, jitted) against PyTorch CPU eager.

Both train the same network (PAPER.md's LeNet: 5x5 convs 20/50, FC 500, FC 10) with
the same optimizer (SGD, lr 0.01, momentum 0.5), batch size and input, on the same
machine, in one process, alternating rounds so that neither gets a warmer machine:

  .venv/bin/pip install -e '.[bench]'     # torch==2.13.0, CPU build
  .venv/bin/python -m benchmarks.lenet_throughput --batch_size=64 --steps=200

Reported: images per second (median over rounds) for each and their ratio. Data is a
fixed random uint8 batch set, so the number measures training compute and dispatch,
not input loading.
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import report_json
from edgefilter import data as data_lib
from edgefilter.training import config as config_lib
from edgefilter.training import steps as train_lib
from experiments import cli

flags.DEFINE_integer("batch_size", 64, "Mini-batch size.", lower_bound=1)
flags.DEFINE_integer("steps", 200, "Training steps per timed round.", lower_bound=1)
flags.DEFINE_integer("rounds", 5, "Timed rounds per framework (median is reported).", lower_bound=1)
flags.DEFINE_integer("threads", 0, "Threads for PyTorch (0: its default).", lower_bound=0)
flags.DEFINE_string("output", None, "Optional JSON file for the result.")
cli.check_flag("output", cli.writable_file, "a file path in a writable folder")
FLAGS = flags.FLAGS


def _batches(steps: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (steps, batch_size, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, (steps, batch_size)).astype(np.int32)
    return images, labels


def jax_round_factory(batch_size: int, steps: int):
    """Returns a function that trains ``steps`` steps with edgefilter's train_step."""
    config = config_lib.resolve(
        config_lib.TrainConfig(model="lenet", dataset="fashion_mnist", batch_size=batch_size)
    )
    info = data_lib.info("fashion_mnist")
    model = train_lib.build_model("lenet", 10)  # what experiments.train trains
    state = train_lib.create_train_state(
        model, train_lib.make_optimizer(config, 10**6), jax.random.key(0), info.image_shape
    )
    train_step = train_lib.make_train_step(info)
    images, labels = _batches(steps, batch_size)
    weights = np.ones(batch_size, np.float32)
    key = jax.random.key(1)
    holder = {"state": state}

    def run_round() -> float:
        state = holder["state"]
        start = time.perf_counter()
        for i in range(steps):
            state, metrics, _ = train_step(state, images[i], labels[i], weights, key)
        jax.block_until_ready(metrics["loss"])
        holder["state"] = state
        return steps * batch_size / (time.perf_counter() - start)

    run_round()  # Compile.
    return run_round


def torch_round_factory(batch_size: int, steps: int, threads: int):
    """Returns a function that trains ``steps`` steps of the same LeNet in PyTorch eager."""
    import torch  # An optional extra: `pip install -e '.[bench]'`.
    from torch import nn

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.5)
    images, labels = _batches(steps, batch_size)
    info = data_lib.info("fashion_mnist")
    mean, std = 255.0 * info.mean[0], 255.0 * info.std[0]
    images_t = torch.from_numpy(images).permute(0, 1, 4, 2, 3).contiguous()  # NCHW
    labels_t = torch.from_numpy(labels).long()

    def run_round() -> float:
        start = time.perf_counter()
        for i in range(steps):
            x = (images_t[i].float() - mean) / std
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(net(x), labels_t[i])
            loss.backward()
            opt.step()
        return steps * batch_size / (time.perf_counter() - start)

    run_round()  # Warm up allocator and kernels.
    return run_round, torch.get_num_threads(), torch.__version__


def main(argv: list[str]) -> None:
    del argv
    jax_round = jax_round_factory(FLAGS.batch_size, FLAGS.steps)
    torch_round, threads, torch_version = torch_round_factory(
        FLAGS.batch_size, FLAGS.steps, FLAGS.threads
    )
    jax_rates, torch_rates = [], []
    for _ in range(FLAGS.rounds):
        jax_rates.append(jax_round())
        torch_rates.append(torch_round())
    result = {
        "batch_size": FLAGS.batch_size,
        "steps_per_round": FLAGS.steps,
        "rounds": FLAGS.rounds,
        "jax_images_per_s": statistics.median(jax_rates),
        "torch_images_per_s": statistics.median(torch_rates),
        "jax_version": jax.__version__,
        "torch_version": torch_version,
        "torch_threads": threads,
        "device": str(jax.devices()[0]),
    }
    result["jax_over_torch"] = result["jax_images_per_s"] / result["torch_images_per_s"]
    report_json(result, FLAGS.output)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
