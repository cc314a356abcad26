"""Layer factories shared by the model zoo.

Every layer of :mod:`edgefilter.models` is built by an :class:`Ops`. Conv and dense layers
take their ``conv_general_dilated`` / ``dot_general`` from the caller (flax.linen's
``Conv`` and ``Dense`` already accept them), so error map pruning (:mod:`edgefilter.emp`)
and k-bit quantization (:mod:`edgefilter.quant`) plug into any model without editing it,
and :mod:`edgefilter.flops` counts multiply-accumulates by passing counting functions.
Batch norm and 2x2 max pooling are flax's own, or their XLA:CPU lowerings when
:mod:`edgefilter.backends`' switch is on (``Ops.xla_cpu``); the models do not choose.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from edgefilter.backends.xla_cpu import conv_backward
from edgefilter.backends.xla_cpu import layers as xla_cpu_layers

ConvFn = Callable[..., jax.Array]
DotFn = Callable[..., jax.Array]

# He et al. (2015) initialisation, as the CIFAR ResNets and VGG use.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# PyTorch's default for Conv2d/Linear (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in)).
lecun_normal = nn.initializers.lecun_normal()
torch_default = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# PyTorch's batch-norm defaults: its momentum 0.1 is flax's 0.9; eps 1e-5.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class Ops:
    """How a model's layers are computed: its primitives and the backend switch.

    Attributes:
      conv_general_dilated: drop-in for ``jax.lax.conv_general_dilated`` used by every
        conv layer; ``None`` means lax's own (switch off) or
        ``backends.xla_cpu.conv_backward.conv_general_dilated`` (switch on: the same
        forward, Eq. 8 computed as a GEMM where that skips zeros).
      dot_general: drop-in for ``jax.lax.dot_general``.
      dtype: computation dtype of conv/dense layers (parameters stay float32).
      first_conv_general_dilated: the primitive of the first conv layer (the one that
        sees the input); ``None`` means ``conv_general_dilated``. Error map pruning
        leaves that layer dense by default (see :mod:`edgefilter.emp`).
      xla_cpu: the resolved backend switch (:mod:`edgefilter.backends`): whether batch
        norm, 2x2 max pooling and the default conv are the XLA:CPU lowerings (True) or
        flax's and lax's own (False, the default of a bare ``Ops()``;
        ``models.create`` resolves it from the backend).
      axis_name: a mapped axis (``jax.vmap``/``shard_map``) over which batch norm
        averages its batch statistics, as ``flax.linen.BatchNorm(axis_name=...)``;
        ``None`` uses each batch's own.
    """

    conv_general_dilated: ConvFn | None = None
    dot_general: DotFn = jax.lax.dot_general
    dtype: Any = jnp.float32
    first_conv_general_dilated: ConvFn | None = None
    xla_cpu: bool = False
    axis_name: str | None = None

    def conv(
        self,
        features: int,
        kernel: int,
        *,
        stride: int = 1,
        padding: Any = "SAME",
        use_bias: bool = False,
        kernel_init: Any = he_normal,
        name: str | None = None,
        first: bool = False,
    ) -> nn.Conv:
        """A square ``nn.Conv`` (NHWC/HWIO) using this object's conv primitive.

        ``first=True`` marks the model's first conv layer, which uses
        ``first_conv_general_dilated`` when that is set.
        """
        conv = self.conv_general_dilated
        if first and self.first_conv_general_dilated is not None:
            conv = self.first_conv_general_dilated
        if conv is None:
            conv = (
                conv_backward.conv_general_dilated if self.xla_cpu else jax.lax.conv_general_dilated
            )
        return nn.Conv(
            features,
            (kernel, kernel),
            strides=(stride, stride),
            padding=padding,
            use_bias=use_bias,
            kernel_init=kernel_init,
            dtype=self.dtype,
            conv_general_dilated=conv,
            name=name,
        )

    def dense(
        self,
        features: int,
        *,
        kernel_init: Any = lecun_normal,
        name: str | None = None,
    ) -> nn.Dense:
        """An ``nn.Dense`` using this object's dot primitive."""
        return nn.Dense(
            features,
            kernel_init=kernel_init,
            dtype=self.dtype,
            dot_general=self.dot_general,
            name=name,
        )

    def batch_norm(self, train: bool, name: str | None = None) -> nn.Module:
        """Batch norm over all axes but the last, with PyTorch's defaults.

        Normalises by the batch's statistics (averaged over ``axis_name`` when set) and
        updates the running ones in training, by the running ones in evaluation. Flax's
        ``nn.BatchNorm``, or the folded :class:`backends.xla_cpu.layers.BatchNorm` when
        ``xla_cpu``: the same variables (``scale``, ``bias``; ``mean``, ``var``) and
        values up to float rounding.
        """
        norm = xla_cpu_layers.BatchNorm if self.xla_cpu else nn.BatchNorm
        return norm(
            use_running_average=not train,
            momentum=BATCH_NORM_MOMENTUM,
            epsilon=BATCH_NORM_EPSILON,
            axis_name=self.axis_name,
            name=name,
        )

    def max_pool(self, x: jax.Array) -> jax.Array:
        """2x2 max pooling with stride 2 (VALID): ``nn.max_pool``, or its XLA:CPU lowering."""
        if self.xla_cpu:
            return xla_cpu_layers.max_pool_2x2(x)
        return nn.max_pool(x, (2, 2), strides=(2, 2))


__all__ = [
    "BATCH_NORM_EPSILON",
    "BATCH_NORM_MOMENTUM",
    "Ops",
    "he_normal",
    "lecun_normal",
    "torch_default",
]
