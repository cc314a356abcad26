"""The model zoo of the paper: ``create(name, num_classes, **options)``.

Every conv and dense layer takes its ``conv_general_dilated`` / ``dot_general`` from
the caller, so error map pruning and quantization plug in without editing model code::

  model = edgefilter.models.create(
      "resnet20", 10, conv_general_dilated=edgefilter.emp.conv_general_dilated(policy))
  variables = model.init(key, images, train=False)
  logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])

``xla_cpu`` is :mod:`edgefilter.backends`' switch (default: on when JAX's backend is the
CPU): off, batch norm and pooling are flax's and the default conv is lax's, and
``jax.jvp`` / ``jax.linearize`` work through every model; on, they are the XLA:CPU
lowerings. ``axis_name`` synchronises batch norm's statistics over a mapped axis.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from edgefilter import backends
from edgefilter.models.layers import Ops
from edgefilter.models.lenet import LeNet
from edgefilter.models.resnet import CifarResNet, ImageNetResNet
from edgefilter.models.vgg import CONFIGS, VGG

_CIFAR_DEPTHS = {
    "resnet8": 8,
    "resnet20": 20,
    "resnet32": 32,
    "resnet44": 44,
    "resnet56": 56,
    "resnet74": 74,
    "resnet110": 110,
}

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "lenet": functools.partial(LeNet, filters=(20, 50), kernel=5, hidden=500),
    "lenet_slim": functools.partial(LeNet, filters=(6, 16), kernel=3, hidden=120),
    **{
        name: functools.partial(CifarResNet, blocks_per_stage=(depth - 2) // 6)
        for name, depth in _CIFAR_DEPTHS.items()
    },
    "resnet10": functools.partial(ImageNetResNet, stage_sizes=(1, 1, 1, 1), input_downsample=4),
    "resnet18": functools.partial(ImageNetResNet, stage_sizes=(2, 2, 2, 2)),
    **{name: functools.partial(VGG, config=config) for name, config in CONFIGS.items()},
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)
# Models whose layers include batch norm (their state carries ``batch_stats``).
_WITHOUT_BATCH_NORM = frozenset({"lenet", "lenet_slim"})


def create(
    name: str,
    num_classes: int,
    *,
    conv_general_dilated: Callable[..., jax.Array] | None = None,
    dot_general: Callable[..., jax.Array] = jax.lax.dot_general,
    dtype: jnp.dtype = jnp.float32,
    first_conv_general_dilated: Callable[..., jax.Array] | None = None,
    xla_cpu: bool | None = None,
    axis_name: str | None = None,
    **options,
) -> nn.Module:
    """Builds model ``name`` with ``num_classes`` outputs.

    Args:
      name: one of ``MODEL_NAMES``.
      num_classes: size of the output layer (2 for an instance filter).
      conv_general_dilated: the primitive every conv layer calls (e.g. EMP's); ``None``
        means lax's convolution (with the switch on, its XLA:CPU lowering: the same
        forward, Eq. 8 as a GEMM where that skips zeros).
      dot_general: the primitive every dense layer calls (e.g. a quantized one).
      dtype: computation dtype of conv and dense layers.
      first_conv_general_dilated: the primitive of the first conv layer only (the one
        that sees the input); ``None`` means ``conv_general_dilated``.
      xla_cpu: :mod:`edgefilter.backends`' switch; ``None`` resolves it from JAX's
        backend (:func:`edgefilter.backends.use_xla_cpu`).
      axis_name: mapped axis over which batch norm averages its batch statistics.
      **options: model-specific fields, e.g. ``head="imagenet"`` for VGG.

    Returns:
      A ``flax.linen.Module`` called as ``model.apply(variables, x, train=...)`` on NHWC
      float inputs.

    Raises:
      ValueError: for an unknown name or a non-positive ``num_classes``.
      TypeError: for a ``num_classes`` that is not an integer (``10.0``, ``2.5``).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(
            f"num_classes must be an int (the size of the output layer), got {num_classes!r}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    ops = Ops(
        conv_general_dilated=conv_general_dilated,
        dot_general=dot_general,
        dtype=dtype,
        first_conv_general_dilated=first_conv_general_dilated,
        xla_cpu=backends.use_xla_cpu(xla_cpu),
        axis_name=axis_name,
    )
    return _REGISTRY[name](num_classes=int(num_classes), ops=ops, **options)


def has_batch_norm(name: str) -> bool:
    """Whether model ``name`` keeps batch-norm statistics in ``batch_stats``."""
    return name not in _WITHOUT_BATCH_NORM


def residual_blocks(name: str) -> int:
    """How many residual blocks model ``name`` has (0 but for the ResNets)."""
    if name in _CIFAR_DEPTHS:
        return 3 * ((_CIFAR_DEPTHS[name] - 2) // 6)
    return {"resnet10": 4, "resnet18": 8}.get(name, 0)


def has_residual_blocks(name: str) -> bool:
    """Whether model ``name`` is a ResNet (stochastic depth bypasses its blocks)."""
    return residual_blocks(name) > 0


def has_slu_gates(name: str) -> bool:
    """Whether model ``name`` takes E2-Train's SLU gates (the CIFAR ResNets)."""
    return name in _CIFAR_DEPTHS


__all__ = [
    "MODEL_NAMES",
    "Ops",
    "create",
    "has_batch_norm",
    "has_residual_blocks",
    "has_slu_gates",
    "residual_blocks",
]
