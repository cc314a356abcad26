"""Training and evaluation of the main network on a stream of instances.

The stream is the concatenation of seeded per-epoch permutations of the training set,
cut into chunks of ``batch_size`` instances as they "arrive" on the device. Standard SGD
and EMP train on every chunk; the early instance filter (``--method=eif``) decides per
chunk which instances the main network trains on. A run is fully determined by its
config: the stream order comes from ``(seed, epoch)`` and the per-step randomness from
``fold_in(seed, step)``, so a resumed run ends with the same parameters as an
uninterrupted one.

``train_and_evaluate(config, workdir)`` is what the command line, the notebooks and the
end-to-end tests call.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from edgefilter import checkpoint as checkpoint_lib
from edgefilter import config as config_lib
from edgefilter import data as data_lib
from edgefilter import emp, models
from edgefilter import metrics as metrics_lib


class TrainState(train_state.TrainState):
    """Flax's TrainState plus batch-norm statistics (``{}`` for models without BN)."""

    batch_stats: Any = None


def learning_rate_schedule(config: config_lib.TrainConfig, total_steps: int) -> optax.Schedule:
    """Piecewise-constant schedule: lr divided by 10 at each fraction in lr_boundaries."""
    boundaries = {int(round(b * total_steps)): 0.1 for b in config.lr_boundaries}
    return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


def make_optimizer(
    config: config_lib.TrainConfig, total_steps: int
) -> optax.GradientTransformation:
    """SGD with momentum and L2 weight decay added to the gradient (as PyTorch's SGD)."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(learning_rate_schedule(config, total_steps), momentum=config.momentum),
    )


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, key: jax.Array, image_shape: tuple[int, ...]
) -> TrainState:
    """Initialises parameters (and batch statistics) for NHWC inputs of ``image_shape``."""
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
    )
    # A concrete int32 step (not a weakly typed Python 0) and strongly typed optimizer
    # state, so the first train step does not compile a second time for step 2.
    return jax.tree.map(
        lambda x: jnp.asarray(x, jnp.asarray(x).dtype), state.replace(step=jnp.zeros((), jnp.int32))
    )


def weighted_cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy over instances with weight 1; also returns per-instance losses.

    Weights are 1 for real instances and 0 for the repeats that fill a run's last,
    partial batch (see ``stream_batch``), so those repeats contribute nothing.
    """
    per_instance = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels
    )
    return jnp.sum(per_instance * weights) / jnp.maximum(jnp.sum(weights), 1.0), per_instance


def preprocess(images: jax.Array, info: data_lib.DatasetInfo, key: jax.Array | None) -> jax.Array:
    """uint8 NHWC -> normalised float32, with the CIFAR augmentation when ``key`` is given."""
    x = data_lib.normalize(images, info)
    if key is not None and info.augment:
        x = data_lib.augment_cifar(key, x)
    return x


def make_train_step(info: data_lib.DatasetInfo) -> Callable:
    """Returns the jitted ``train_step(state, images, labels, weights, key)``.

    The step normalises (and augments) the uint8 batch, runs the forward and backward
    pass of ``state.apply_fn`` (whose conv layers may be EMP's pruned ones), and applies
    the optimizer. It returns the new state, scalar metrics and the per-instance losses
    (which the instance filter labels high or low, Eq. 1).
    """

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(
        state: TrainState, images: jax.Array, labels: jax.Array, weights: jax.Array, key: jax.Array
    ):
        aug_key, dropout_key = jax.random.split(key)
        x = preprocess(images, info, aug_key)

        def loss_fn(params):
            logits, updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_key},
            )
            loss, per_instance = weighted_cross_entropy(logits, labels, weights)
            return loss, (logits, per_instance, updates)

        (loss, (logits, per_instance, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        metrics = {
            "loss": loss,
            "accuracy": jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1.0),
        }
        return state, metrics, per_instance

    return train_step


def make_eval_step(info: data_lib.DatasetInfo) -> Callable:
    """Returns the jitted ``eval_step(state, images, labels, valid) -> (correct, loss sum)``."""

    @jax.jit
    def eval_step(state: TrainState, images: jax.Array, labels: jax.Array, valid: jax.Array):
        logits = state.apply_fn(
            {"params": state.params, "batch_stats": state.batch_stats},
            preprocess(images, info, None),
            train=False,
        )
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, -1) == labels) & valid
        return jnp.sum(correct), jnp.sum(jnp.where(valid, losses, 0.0))

    return eval_step


def evaluate(
    eval_step: Callable, state: TrainState, images: np.ndarray, labels: np.ndarray, batch_size: int
) -> dict[str, float]:
    """Test accuracy and loss over all of ``images``; the last batch is padded and masked."""
    n = len(images)
    correct, loss = 0, 0.0
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        valid = idx < n
        idx = np.where(valid, idx, 0)
        c, s = eval_step(state, images[idx], labels[idx], valid)
        correct, loss = correct + c, loss + s
    return {"test_accuracy": float(correct) / n, "test_loss": float(loss) / n}


@dataclasses.dataclass(frozen=True)
class Stream:
    """The training stream: seeded per-epoch permutations, concatenated.

    Position ``s`` of the stream is instance ``permutation(seed, s // n)[s % n]``.
    """

    seed: int
    num_train: int
    length: int  # Instances streamed over the whole run.

    def indices(self, start: int, count: int) -> np.ndarray:
        """Training-set indices of stream positions ``[start, start + count)``."""
        positions = np.arange(start, start + count)
        epochs, offsets = np.divmod(positions, self.num_train)
        out = np.empty(count, np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self._permutation(int(epoch))[offsets[sel]]
        return out

    @functools.lru_cache(maxsize=4)  # noqa: B019 (bounded, and Stream is immutable)
    def _permutation(self, epoch: int) -> np.ndarray:
        return data_lib.epoch_permutation(self.seed, epoch, self.num_train)


def stream_batch(indices: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fills a batch of static size: ``indices`` then repeats of them with weight 0.

    Only a run's final chunk can be short. Repeating real instances (rather than zeros)
    keeps batch-norm statistics sane; their weight 0 removes them from the loss, so they
    are neither trained on nor counted as trained.
    """
    n = len(indices)
    weights = (np.arange(batch_size) < n).astype(np.float32)
    return indices[np.arange(batch_size) % n], weights


def build_main_model(config: config_lib.TrainConfig, num_classes: int) -> nn.Module:
    """The main network with the conv primitive the method asks for."""
    conv = jax.lax.conv_general_dilated
    if config.uses_emp:
        if config.emp_policy == "topk":
            policy = emp.TopK(config.emp_keep, config.gamma1, config.gamma2)
        else:
            policy = emp.Threshold(config.emp_threshold, config.gamma1, config.gamma2)
        conv = emp.conv_general_dilated(policy)
    return models.create(config.model, num_classes, conv_general_dilated=conv)


def _loop_state(state: TrainState, position: int, trained: int, wall_time: float) -> dict[str, Any]:
    """Everything a resumed run needs, as one checkpointable pytree."""
    return {
        "state": state,
        "position": np.asarray(position, np.int64),
        "trained": np.asarray(trained, np.int64),
        "wall_time": np.asarray(wall_time, np.float64),
    }


def _write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


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
      The summary dictionary that was written to ``summary.json``.

    Raises:
      ValueError: for an invalid config. data.DataUnavailableError: when the dataset
        cannot be had. Both happen before anything is written to ``workdir``.
    """
    config = config_lib.resolve(config)
    if config.uses_eif:
        raise NotImplementedError(f"--method={config.method} is not available yet")
    if dataset is None:
        dataset = data_lib.load(config.dataset, config.data_dir)
    info = dataset.info
    num_train = len(dataset.train_images)
    m = config.batch_size
    length = config.steps * m if config.steps is not None else int(round(config.epochs * num_train))
    stream = Stream(config.seed, num_train, length)
    total_steps = -(-length // m)

    model = build_main_model(config, info.num_classes)
    tx = make_optimizer(config, total_steps)
    root, init_key = jax.random.split(jax.random.key(config.seed))
    state = create_train_state(model, tx, init_key, info.image_shape)
    loop = _loop_state(state, 0, 0, 0.0)

    os.makedirs(workdir, exist_ok=True)
    _write_json_atomic(os.path.join(workdir, "config.json"), dataclasses.asdict(config))
    checkpointer = checkpoint_lib.Checkpointer(workdir)
    if checkpointer.latest_step() is not None:
        loop = checkpointer.restore(loop)
        logging.info("resumed from step %d", int(loop["state"].step))
    state = loop["state"]
    position, trained = int(loop["position"]), int(loop["trained"])
    wall_time = float(loop["wall_time"])
    metrics_log = metrics_lib.MetricsLog(workdir, resume_step=int(state.step))

    train_step = make_train_step(info)
    eval_step = make_eval_step(info)
    history: list[dict[str, float]] = []
    last: dict[str, float] = {}
    started = time.perf_counter()
    with metrics_lib.progress_bar(show_progress) as progress:
        task = progress.add_task(
            f"{config.method} {config.model}",
            total=total_steps,
            completed=int(state.step),
            rate=0.0,
            info="",
        )
        while position < length:
            count = min(m, length - position)
            idx, weights = stream_batch(stream.indices(position, count), m)
            step = int(state.step)
            state, metrics, _ = train_step(
                state,
                dataset.train_images[idx],
                dataset.train_labels[idx],
                weights,
                jax.random.fold_in(root, step),
            )
            metrics_log.add(step + 1, metrics)
            epoch_done = (position + count) // num_train > position // num_train
            position, trained = position + count, trained + count
            finished = position >= length
            checkpoint_due = (
                (step + 1) % config.checkpoint_every_steps == 0 or epoch_done or finished
            )
            if (step + 1) % config.log_every_steps == 0 or checkpoint_due:
                last = metrics_log.flush() or last
            if epoch_done or finished:
                result = evaluate(
                    eval_step,
                    state,
                    dataset.test_images,
                    dataset.test_labels,
                    config.eval_batch_size,
                )
                result["epoch"] = position / num_train
                history.append(result)
                metrics_log.add(step + 1, result)
                metrics_log.flush()
                progress.console.print(
                    f"epoch {result['epoch']:.2f}: test accuracy "
                    f"{result['test_accuracy']:.4f}, loss {result['test_loss']:.4f}"
                )
            elapsed = wall_time + time.perf_counter() - started
            progress.update(
                task,
                completed=step + 1,
                rate=trained / max(elapsed, 1e-9),
                info=f"loss {last.get('loss', float('nan')):.3f}",
            )
            if checkpoint_due:  # Metrics up to here are flushed, so a resume loses none.
                checkpointer.save(step + 1, _loop_state(state, position, trained, elapsed))
    checkpointer.close()
    wall_time += time.perf_counter() - started

    final = (
        history[-1]
        if history
        else evaluate(
            eval_step, state, dataset.test_images, dataset.test_labels, config.eval_batch_size
        )
    )
    summary = {
        "config": dataclasses.asdict(config),
        "test_accuracy": final["test_accuracy"],
        "test_loss": final["test_loss"],
        "instances_streamed": int(position),
        "instances_trained": int(trained),
        "steps": int(state.step),
        "wall_time_s": wall_time,
        "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        # Compiled versions of the train step in this process: 1 unless shapes changed.
        "train_step_compilations": int(train_step._cache_size()),
        "history": history,
    }
    _write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    summary["state"] = state
    return summary
