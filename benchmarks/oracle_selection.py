r"""An upper bound for any instance filter: keep each chunk's hardest instances by the main
network's own loss.

The early instance filter predicts, from the image alone, which instances the main
network would find hard, and keeps ``r`` of each chunk. This run replaces the filter by an
oracle: a main-network forward on the whole chunk, keeping the ``round(r * m)``
instances with the largest loss (``--mode=oracle``), or a random ``round(r * m)`` of them
(``--mode=random``, the no-skill baseline). Kept instances are packed into main steps of
``--train_batch`` instances (default ``round(r * m)``, one step per chunk), as in
:mod:`edgefilter.training.eif_runner`. Everything else is the paper's LeNet/MNIST setting.
The oracle's own forward passes make it no saving; it says how much accuracy a perfect
ranking at that budget could keep:

  .venv/bin/python -m benchmarks.oracle_selection --mode=oracle --r=0.3 --epochs=20

Prints the test accuracy after every epoch and a final JSON line.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import optax
from absl import app, flags

from edgefilter import backends
from edgefilter import data as data_lib
from edgefilter.training import config as config_lib
from edgefilter.training import steps as train_lib
from edgefilter.training import stream as stream_lib
from experiments import cli

flags.DEFINE_enum("mode", "oracle", ["oracle", "random"], "How each chunk's kept part is chosen.")
flags.DEFINE_float("r", 0.3, "Fraction of each chunk kept (r_set).")
flags.register_validator("r", lambda r: 0 < r <= 1, message="the kept fraction must lie in (0, 1]")
flags.DEFINE_integer("epochs", 20, "Epochs over the stream.", lower_bound=1)
flags.DEFINE_integer(
    "train_batch", None, "Instances per main step (default: round(r * m)).", lower_bound=1
)
flags.DEFINE_integer("seed", 0, "Seed of the initialisation and the stream order.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    dataset, info = data_lib.load("fashion_mnist"), data_lib.info("fashion_mnist")
    # --r may be 1 (train on everything), which the filter's r_set does not allow.
    config = config_lib.resolve(config_lib.TrainConfig(model="lenet", dataset="fashion_mnist"))
    chunk_size = config.batch_size
    batch = FLAGS.train_batch or max(1, round(FLAGS.r * chunk_size))
    state = train_lib.create_train_state(
        train_lib.build_model("lenet", info.num_classes),
        train_lib.make_optimizer(config, 10**6),  # Constant lr: the schedule is not used.
        jax.random.key(FLAGS.seed),
        info.image_shape,
    )
    train_step, eval_step = train_lib.make_train_step(info), train_lib.make_eval_step(info)

    @backends.jit
    def losses(state, images, labels):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        x = train_lib.preprocess(images, info, None)
        logits = state.apply_fn(variables, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    kept_per_chunk = round(FLAGS.r * chunk_size)
    rng = np.random.default_rng(FLAGS.seed)
    key, ones, history = jax.random.key(FLAGS.seed + 1), np.ones(batch, np.float32), []
    queue = stream_lib.Queue.empty(batch + chunk_size)  # Below one batch after every chunk.
    for epoch in range(FLAGS.epochs):
        order = rng.permutation(len(dataset.train_labels))
        for start in range(0, len(order) - chunk_size + 1, chunk_size):
            chunk = order[start : start + chunk_size]
            if FLAGS.mode == "oracle":
                chunk_losses = losses(
                    state, dataset.train_images[chunk], dataset.train_labels[chunk]
                )
                kept = chunk[np.argsort(-np.asarray(chunk_losses))[:kept_per_chunk]]
            else:
                kept = rng.choice(chunk, kept_per_chunk, replace=False)
            queue, overflow = queue.push(kept)
            assert overflow == 0
            while len(queue) >= batch:
                queue, idx = queue.pop(batch)
                state, _, _ = train_step(
                    state, dataset.train_images[idx], dataset.train_labels[idx], ones, key
                )
        result = train_lib.evaluate(
            eval_step, state, dataset.test_images, dataset.test_labels, config.eval_batch_size
        )
        history.append(round(100 * result["test_accuracy"], 2))
        print(f"epoch {epoch + 1}: test accuracy {history[-1]:.2f}%", flush=True)
    summary = {
        "mode": FLAGS.mode,
        "r": FLAGS.r,
        "train_batch": batch,
        "seed": FLAGS.seed,
        "history": history,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
