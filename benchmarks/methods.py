r"""SGD, EMP, EIF and EIF+EMP over the same stream: counted against measured savings.

One command, one process, one machine:

  .venv/bin/python -m benchmarks.methods --workdir=/tmp/edgefilter_bench

1. LeNet on the offline Fashion-MNIST (``--lenet_epochs``, default 2);
2. ResNet-20 on a CIFAR-shaped stream (random 32x32x3 images with random labels, which
   is all a timing needs; ``--resnet_instances`` of them, default 6400, batch 128);
3. LeNet SGD training throughput in PyTorch CPU eager against edgefilter's, as
   ``benchmarks.lenet_throughput`` measures it (skipped without torch).

Each table row comes from ``edgefilter.reporting.comparison`` (see its docstring for the columns):
the counted reduction is analytic (MACs), the measured reduction is
``1 - train time / SGD's train time`` with evaluation, checkpointing and compilation
excluded. The whole sequence of variants runs ``--repeats`` times (default 3) and each
variant's row is its median run (``comparison.median_of_repeats``): on a shared machine
one run's times drift from the next (benchmarks/README.md gives the run time and the
drift seen). Results go to ``benchmarks/results/methods.{md,json}`` (``--results_dir``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

import jax
import numpy as np
from absl import app, flags, logging

from benchmarks import lenet_throughput
from edgefilter import data as data_lib
from edgefilter.reporting import comparison
from edgefilter.training import config as config_lib
from experiments import cli

flags.DEFINE_string("workdir", "/tmp/edgefilter_bench", "Where the runs go (wiped first).")
flags.DEFINE_string("results_dir", "benchmarks/results", "Where the tables go.")
flags.DEFINE_float(
    "lenet_epochs", 2.0, "Epochs of Fashion-MNIST for the LeNet table.", lower_bound=0.01
)
flags.DEFINE_integer("resnet_instances", 6400, "Instances in the ResNet-20 stream.", lower_bound=1)
flags.DEFINE_list("variants", ["sgd", "emp", "eif", "eif_emp"], "Variants to compare.")
flags.DEFINE_integer(
    "eif_batch_size",
    None,
    "EIF's main-network step size (default: round(r_set * batch)).",
    lower_bound=1,
)
flags.DEFINE_integer(
    "repeats",
    3,
    "Runs of the whole sequence of variants; the tables give median times.",
    lower_bound=1,
)
STREAMS = ("lenet_fashion_mnist", "resnet20_cifar_shaped")
flags.DEFINE_list(
    "streams",
    list(STREAMS),
    "Which tables to run: LeNet on Fashion-MNIST and/or ResNet-20 on a CIFAR-shaped "
    "stream (the ResNet-only baselines sd and e2train need resnet20_cifar_shaped alone).",
)
flags.DEFINE_integer(
    "block_chunks",
    8,
    "Chunks per dispatch of the stream engine, for every variant (1 for sd and e2train "
    "on XLA:CPU: their per-block conditionals, unrolled over 8 chunks, compile for "
    "longer than a run takes).",
    lower_bound=1,
)
flags.DEFINE_bool("torch", True, "Also time PyTorch CPU eager LeNet SGD (needs torch).")
cli.check_flag("lenet_epochs", cli.finite_in(0.0, math.inf), "a finite number of epochs > 0")
cli.check_flag(
    "variants",
    cli.distinct_choices(tuple(comparison.VARIANTS)),
    ", ".join(comparison.VARIANTS) + ", once each",
)
cli.check_flag("streams", cli.distinct_choices(STREAMS), ", ".join(STREAMS) + ", once each")
cli.check_flag("workdir", cli.writable_folder, "a folder that can be written (it is wiped)")
cli.check_flag("results_dir", cli.writable_folder, "a folder that can be written")
FLAGS = flags.FLAGS


def cifar_shaped_stream(n: int, seed: int = 0) -> data_lib.Dataset:
    """Random CIFAR-shaped data: a timing stream, not a learning task."""
    rng = np.random.default_rng(seed)
    info = dataclasses.replace(data_lib.info("cifar10"), name="cifar_shaped_random")
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    return data_lib.Dataset(info, images, labels, images[:1000], labels[:1000])


def _stream(name: str) -> tuple[config_lib.TrainConfig, data_lib.Dataset]:
    """The base config and the data of table ``name`` (one of ``STREAMS``)."""
    if name == "lenet_fashion_mnist":
        config = config_lib.TrainConfig(
            model="lenet",
            dataset="fashion_mnist",
            epochs=FLAGS.lenet_epochs,
            eif_batch_size=FLAGS.eif_batch_size,
            block_chunks=FLAGS.block_chunks,
        )
        return config_lib.resolve(config), data_lib.load("fashion_mnist")
    config = config_lib.TrainConfig(
        model="resnet20",
        dataset="cifar10",
        epochs=1.0,
        checkpoint_every_steps=10**6,
        eif_batch_size=FLAGS.eif_batch_size,
        block_chunks=FLAGS.block_chunks,
    )
    return config_lib.resolve(config), cifar_shaped_stream(FLAGS.resnet_instances)


def main(argv: list[str]) -> None:
    del argv
    try:
        comparison.check_variants(FLAGS.variants)
    except ValueError as e:
        cli.fail(str(e))
    logging.set_verbosity(logging.WARNING)
    os.makedirs(FLAGS.results_dir, exist_ok=True)
    sections, payload = [], {"device": str(jax.devices()[0]), "jax": jax.__version__}
    for name in FLAGS.streams:
        base, dataset = _stream(name)
        workdir = os.path.join(FLAGS.workdir, name)
        if os.path.exists(workdir):  # Fresh runs: a resumed run would time nothing.
            shutil.rmtree(workdir)
        repeats = [
            comparison.compare(
                base, FLAGS.variants, os.path.join(workdir, f"run{i}"), dataset, False
            )
            for i in range(FLAGS.repeats)
        ]
        rows = comparison.median_of_repeats(repeats)
        markdown = comparison.write_table(rows, base, workdir)
        sections.append(f"### {name}\n\n{markdown}")
        payload[name] = rows
    if FLAGS.torch:
        try:
            jax_round = lenet_throughput.jax_round_factory(64, 200)
            torch_round, threads, version = lenet_throughput.torch_round_factory(64, 200, 0)
        except ImportError:
            sections.append("PyTorch not installed: `pip install -e '.[bench]'`.\n")
        else:
            rates = {"jax": [], "torch": []}
            for _ in range(5):
                rates["jax"].append(jax_round())
                rates["torch"].append(torch_round())
            jax_rate, torch_rate = float(np.median(rates["jax"])), float(np.median(rates["torch"]))
            payload["lenet_sgd_throughput"] = {
                "jax_images_per_s": jax_rate,
                "torch_images_per_s": torch_rate,
                "jax_over_torch": jax_rate / torch_rate,
                "torch_version": version,
                "torch_threads": threads,
            }
            sections.append(
                "### LeNet SGD throughput, batch 64 (median of 5 rounds of 200 steps)\n\n"
                f"edgefilter (JAX, jitted): {jax_rate:.0f} img/s; PyTorch {version} CPU eager "
                f"({threads} threads): {torch_rate:.0f} img/s; ratio {jax_rate / torch_rate:.2f}\n"
            )
    markdown = "\n".join(sections)
    with open(os.path.join(FLAGS.results_dir, "methods.md"), "w") as f:
        f.write(f"Device: {payload['device']}, jax {payload['jax']}\n\n{markdown}")
    with open(os.path.join(FLAGS.results_dir, "methods.json"), "w") as f:
        json.dump(payload, f, indent=2)
    print(markdown)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
