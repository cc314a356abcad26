"""Layer factories shared by the model zoo.

Every conv and dense layer of :mod:`edgefilter.models` is built here, taking its
``conv_general_dilated`` / ``dot_general`` from the caller (flax.linen's ``Conv`` and
``Dense`` already accept them). Error map pruning (:mod:`edgefilter.emp`) and k-bit
quantization (:mod:`edgefilter.quant`) therefore plug into any model without editing it,
and :mod:`edgefilter.flops` counts multiply-accumulates by passing counting functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from edgefilter.backends.xla_cpu.layers import BatchNorm, max_pool_2x2

ConvFn = Callable[..., jax.Array]
DotFn = Callable[..., jax.Array]

# He et al. (2015) initialisation, as the CIFAR ResNets and VGG use.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# PyTorch's default for Conv2d/Linear (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in)).
lecun_normal = nn.initializers.lecun_normal()
torch_default = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class Ops:
    """The two primitives every conv and dense layer of a model is built from.

    Attributes:
      conv_general_dilated: drop-in for ``jax.lax.conv_general_dilated``.
      dot_general: drop-in for ``jax.lax.dot_general``.
      dtype: computation dtype of conv/dense layers (parameters stay float32).
      first_conv_general_dilated: the primitive of the first conv layer (the one that
        sees the input); ``None`` means ``conv_general_dilated``. Error map pruning
        leaves that layer dense by default (see :mod:`edgefilter.emp`).
    """

    conv_general_dilated: ConvFn = jax.lax.conv_general_dilated
    dot_general: DotFn = jax.lax.dot_general
    dtype: Any = jnp.float32
    first_conv_general_dilated: ConvFn | None = None

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


def batch_norm(train: bool, name: str | None = None) -> BatchNorm:
    """Batch norm with PyTorch's defaults (momentum 0.1 there is 0.9 here, eps 1e-5)."""
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


__all__ = ["Ops", "batch_norm", "he_normal", "lecun_normal", "max_pool_2x2", "torch_default"]
