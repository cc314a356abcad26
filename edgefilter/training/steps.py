"""The main network's training state, optimizer and jitted train/eval steps.

Pure pieces that :mod:`edgefilter.training.loop` (the command line's training loop) and users'
own loops compose: ``create_train_state``, ``make_optimizer``, ``train_step_body`` /
``make_train_step`` and ``make_eval_step``. ``build_model`` builds a network with the
conv/dense primitives the run asks for (EMP's pruned conv, k-bit quantized layers).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from edgefilter import backends, models
from edgefilter import data as data_lib
from edgefilter.backends.xla_cpu.layers import small_kernel_conv
from edgefilter.method import emp, quant
from edgefilter.models import selective_layer_update, stochastic_depth
from edgefilter.models.state import TrainState, create_train_state
from edgefilter.training import config as config_lib

__all__ = [
    "KEPT_CHANNELS",
    "TrainState",
    "build_model",
    "create_train_state",
    "emp_policy",
    "evaluate",
    "learning_rate_schedule",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "model_options",
    "preprocess",
    "train_step_body",
    "weighted_cross_entropy",
]


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


def weighted_cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Weighted mean cross-entropy; also returns the (unweighted) per-instance losses.

    ``sum(weights * losses) / #(weights > 0)``: weights are 1 for real instances and 0
    for the repeats that fill a run's last, partial batch (see ``stream_batch``), so those
    repeats contribute nothing and the loss is the mean over the real instances. A weight
    other than 1 rescales that instance's loss, as InfoBatch's ``1 / (1 - prune)`` does
    (Qin et al. 2024, Eq. 3: the sum over the batch divided by the batch size).
    """
    per_instance = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels
    )
    real = jnp.maximum(jnp.sum(weights > 0), 1).astype(jnp.float32)
    return jnp.sum(per_instance * weights) / real, per_instance


def preprocess(images: jax.Array, info: data_lib.DatasetInfo, key: jax.Array | None) -> jax.Array:
    """uint8 NHWC -> normalised float32, with the CIFAR augmentation when ``key`` is given."""
    x = data_lib.normalize(images, info)
    if key is not None and info.augment:
        x = data_lib.augment_cifar(key, x)
    return x


# The prefix of train_step_body's per-layer kept-channel counts (``channel_counts``).
KEPT_CHANNELS = "kept_channels/"

# What a training forward may write: batch statistics, and the baselines' records and
# loss terms (stochastic depth's decisions, E2-Train's gates).
_MUTABLE = ["batch_stats", stochastic_depth.COLLECTION, "losses", selective_layer_update.COLLECTION]


def train_step_body(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    key: jax.Array,
    info: data_lib.DatasetInfo,
    *,
    channel_counts: bool = False,
) -> tuple[TrainState, dict[str, jax.Array], jax.Array]:
    """One SGD step of the main network (not jitted; the jitted steps call it).

    Normalises (and augments) the uint8 batch, runs the forward and backward pass of
    ``state.apply_fn`` (whose conv layers may be EMP's pruned ones), and applies the
    optimizer. ``key`` is the run's key: the step uses ``fold_in(key, state.step)``.
    Returns the new state, scalar metrics and the per-instance losses, which the
    instance filter labels high or low (Eq. 1). With ``channel_counts`` the metrics
    also hold ``kept_channels/<layer>`` for every conv layer: the output channels whose
    weight gradient this step is not all zero, EMP's kept channels
    (:func:`edgefilter.emp.kept_channels`; the paper's Fig. 14 plots them).
    """
    # The step's randomness, from the run's key and the step number: no host round trip.
    aug_key, dropout_key = jax.random.split(jax.random.fold_in(key, state.step))
    x = preprocess(images, info, aug_key)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            mutable=_MUTABLE,
            rngs={"dropout": dropout_key},
        )
        loss, per_instance = weighted_cross_entropy(logits, labels, weights)
        # Terms a model adds to the loss (E2-Train's SLU cost, models.selective_layer_update).
        loss = loss + sum(jax.tree.leaves(updates.get("losses", {})))
        return loss, (logits, per_instance, updates)

    (loss, (logits, per_instance, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    metrics = {
        "loss": loss,
        "accuracy": jnp.sum(correct * (weights > 0)) / jnp.maximum(jnp.sum(weights > 0), 1),
    }
    if channel_counts:  # Read from the gradients: the backward's own work, no extra pass.
        counts = emp.kept_channels(grads)
        metrics.update({f"{KEPT_CHANNELS}{name}": n for name, n in counts.items()})
    if stochastic_depth.COLLECTION in updates:  # Per residual block: bypassed in this step.
        metrics["sd_skipped"] = stochastic_depth.skipped(updates[stochastic_depth.COLLECTION])
    if selective_layer_update.COLLECTION in updates:  # Instance-blocks gated off (computed).
        (metrics["slu_gated"],) = updates[selective_layer_update.COLLECTION]["gated"]
    return state, metrics, per_instance


def make_train_step(
    info: data_lib.DatasetInfo, *, xla_cpu: bool | None = None, channel_counts: bool = False
) -> Callable:
    """Returns the jitted ``train_step(state, images, labels, weights, key)``.

    See :func:`train_step_body` (and its ``channel_counts``); the state's buffers are
    donated. ``xla_cpu``: the backend switch's compile options
    (:func:`edgefilter.backends.jit`).
    """
    step = functools.partial(train_step_body, info=info, channel_counts=channel_counts)
    return backends.jit(step, xla_cpu=xla_cpu, donate_argnums=0)


def make_eval_step(info: data_lib.DatasetInfo, *, xla_cpu: bool | None = None) -> Callable:
    """Returns the jitted ``eval_step(state, images, labels, valid) -> (correct, loss sum)``."""

    @functools.partial(backends.jit, xla_cpu=xla_cpu)
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


def emp_policy(config: config_lib.TrainConfig) -> emp.Policy | None:
    """The run's error-map-pruning policy (PAPER.md Eq. 11), or None without EMP."""
    return config.emp.as_policy() if config.uses_emp else None


def model_options(config: config_lib.TrainConfig) -> dict[str, object]:
    """The main network's options for the method: stochastic depth's ``final_survival``
    (``sd``), E2-Train's gates ``slu=(beta, minimum)`` (``e2train``), else none."""
    if config.uses_sd:
        return {"final_survival": config.sd_final_survival}
    if config.method == "e2train":
        return {"slu": (config.slu_beta, config.slu_minimum)}
    return {}


def build_model(
    name: str,
    num_classes: int,
    bits: int = 32,
    policy: emp.Policy | None = None,
    prune_first_layer: bool = False,
    *,
    xla_cpu: bool | None = None,
    **options: object,
) -> nn.Module:
    """Model ``name`` whose convs prune error maps (``policy``) and compute in ``bits``.

    At 32 bits without a policy these are lax's own primitives. See :mod:`edgefilter.emp`
    and :mod:`edgefilter.quant` for what the others do. The first conv layer's backward
    stays dense unless ``prune_first_layer`` (see :mod:`edgefilter.emp`, "First layer").

    ``xla_cpu`` is :mod:`edgefilter.backends`' switch (``None``: on when JAX's backend is
    the CPU). On, every layer takes its XLA:CPU lowering, and a dense 32-bit first conv
    with a tiny or single-channel kernel (LeNet's, the MNIST filter's) runs as a sum of
    per-tap matmuls (``backends.xla_cpu.layers.small_kernel_conv``); the values are the
    same either way.

    ``options`` go to :func:`edgefilter.models.create` (:func:`model_options`: stochastic
    depth's ``final_survival``, E2-Train's ``slu``).
    """
    xla_cpu = backends.use_xla_cpu(xla_cpu)
    conv = quant.conv_general_dilated(bits, policy=policy, xla_cpu=xla_cpu)
    if prune_first_layer:
        first = conv
    elif bits == quant.FULL_PRECISION and xla_cpu:  # Tiny or 1-channel kernels: see above.
        first = small_kernel_conv
    else:
        first = quant.conv_general_dilated(bits, xla_cpu=xla_cpu)
    return models.create(
        name,
        num_classes,
        conv_general_dilated=conv,
        first_conv_general_dilated=first,
        dot_general=quant.dot_general(bits),
        xla_cpu=xla_cpu,
        **options,
    )
