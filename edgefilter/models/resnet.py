"""ResNets: the CIFAR family (depth 6n+2, He et al. 2016) and the ImageNet ResNet-10/18.

``final_survival`` (``None``: off) trains either family with stochastic depth
(:mod:`edgefilter.models.stochastic_depth`); ``slu`` (``None``: off) gives a CIFAR ResNet
E2-Train's recurrent gates (:mod:`edgefilter.models.selective_layer_update`).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from edgefilter.models import selective_layer_update as slu_lib
from edgefilter.models import stochastic_depth
from edgefilter.models.layers import Ops


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm; the shortcut is option A or B of He et al.

    Option A (CIFAR ResNets): a parameter-free shortcut that subsamples by the stride and
    zero-pads the new channels, which gives the published parameter counts (ResNet-20
    0.27M, ResNet-110 1.7M). Option B (ImageNet ResNets): a strided 1x1 conv + batch norm.
    """

    features: int
    stride: int
    shortcut: str  # "A" or "B"
    ops: Ops
    survival: float | None = None  # Stochastic depth's p_l; None: always computed.

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        def residual(x: jax.Array) -> jax.Array:
            y = self.ops.conv(self.features, 3, stride=self.stride, name="Conv_0")(x)
            y = nn.relu(self.ops.batch_norm(train, name="BatchNorm_0")(y))
            y = self.ops.conv(self.features, 3, name="Conv_1")(y)
            return self.ops.batch_norm(train, name="bn_out")(y)

        if self.survival is None:
            y = residual(x)
        elif not train:  # Huang et al. Eq. 5: the residual scaled by its survival p_l.
            y = self.survival * residual(x)
        else:  # Bypassed for the whole mini-batch with probability 1 - p_l.
            keep = jax.random.bernoulli(self.make_rng("dropout"), self.survival)
            self.sow(stochastic_depth.COLLECTION, "kept", keep)
            y = nn.cond(
                keep,
                lambda module, x: residual(x),
                lambda module, x: jnp.zeros(_residual_shape(x, self), x.dtype),
                self,
                x,
            )
        if self.stride != 1 or x.shape[-1] != self.features:
            if self.shortcut == "A":
                x = shortcut_a(x, self.stride, self.features)
            else:
                x = self.ops.conv(self.features, 1, stride=self.stride, name="proj")(x)
                x = self.ops.batch_norm(train, name="proj_bn")(x)
        return nn.relu(x + y)


def shortcut_a(x: jax.Array, stride: int, features: int) -> jax.Array:
    """Option A: subsample by ``stride``, zero-pad to ``features`` channels (both sides)."""
    x = x[:, ::stride, ::stride, :]
    extra = features - x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


def _residual_shape(x: jax.Array, block: BasicBlock) -> tuple[int, ...]:
    """The residual branch's output shape (SAME padding, stride ``block.stride``)."""
    n, h, w, _ = x.shape
    s = block.stride
    return (n, -(-h // s), -(-w // s), block.features)


def _survivals(num_blocks: int, final_survival: float | None) -> list[float | None]:
    if final_survival is None:
        return [None] * num_blocks
    return list(stochastic_depth.survival_probabilities(num_blocks, final_survival))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2: 3x3 conv 16, three stages of n blocks (16/32/64)."""

    num_classes: int
    blocks_per_stage: int
    ops: Ops = Ops()
    final_survival: float | None = None  # Stochastic depth's p_L; None: off.
    slu: tuple[float, float] | None = None  # E2-Train's gates: (beta, minimum); None: off.

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = nn.relu(self.ops.batch_norm(train)(self.ops.conv(16, 3, first=True)(x)))
        num_blocks = 3 * self.blocks_per_stage
        survivals = iter(_survivals(num_blocks, self.final_survival))
        gate = None if self.slu is None else slu_lib.RecurrentGate(self.ops, name="slu_gate")
        carry = (jnp.zeros((len(x), slu_lib.HIDDEN)),) * 2
        masks, q = [], None
        for stage, features in enumerate((16, 32, 64)):
            for block in range(self.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                out = BasicBlock(features, stride, "A", self.ops, next(survivals))(x, train)
                if gate is not None and (stage, block) != (0, 0):  # The first always runs.
                    m = self._slu_mask(q, train)[:, None, None, None]
                    masks.append(m[:, 0, 0, 0])
                    out = m * out + (1 - m) * shortcut_a(x, stride, features)
                x = out
                if gate is not None and len(masks) < num_blocks - 1:  # No gate after the last.
                    pooled = jnp.mean(x, axis=(1, 2))
                    embedded = self.ops.dense(slu_lib.EMBED, name=f"slu_embed_{len(masks)}")
                    carry, q = gate(embedded(pooled), carry)
        if gate is not None and train:
            stacked = jnp.stack(masks)
            self.sow("losses", "slu_cost", slu_lib.cost_term(stacked, *self.slu))
            gated = jnp.sum(1 - jax.lax.stop_gradient(stacked))
            self.sow(slu_lib.COLLECTION, "gated", gated)
        x = jnp.mean(x, axis=(1, 2))
        return self.ops.dense(self.num_classes)(x)

    def _slu_mask(self, q: jax.Array, train: bool) -> jax.Array:
        """Per instance: run the block if q > u (training, straight-through) or q > 0.5."""
        if not train:
            return (q > 0.5).astype(q.dtype)
        u = jax.random.uniform(self.make_rng("dropout"), q.shape)
        return (q > u).astype(q.dtype) - jax.lax.stop_gradient(q) + q


class ImageNetResNet(nn.Module):
    """ImageNet ResNet with basic blocks: ResNet-18 ([2, 2, 2, 2]) and the ResNet-10 filter.

    ``input_downsample`` > 1 average-pools the input by that factor before the 7x7 stem:
    the paper's ResNet-10 filter has "an extra stride-4 downsampling" so the filter looks
    at a 56x56 version of a 224x224 image and costs a small fraction of the main network.
    """

    num_classes: int
    stage_sizes: Sequence[int]
    input_downsample: int = 1
    ops: Ops = Ops()
    final_survival: float | None = None  # Stochastic depth's p_L; None: off.

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        if self.input_downsample > 1:
            d = self.input_downsample
            x = nn.avg_pool(x, (d, d), strides=(d, d))
        x = self.ops.conv(64, 7, stride=2, padding=((3, 3), (3, 3)), first=True)(x)
        x = nn.relu(self.ops.batch_norm(train)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        survivals = iter(_survivals(sum(self.stage_sizes), self.final_survival))
        for stage, blocks in enumerate(self.stage_sizes):
            features = 64 * 2**stage
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(features, stride, "B", self.ops, next(survivals))(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return self.ops.dense(self.num_classes)(x)
