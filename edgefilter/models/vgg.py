"""VGG-11 and VGG-16 with batch norm (Simonyan & Zisserman 2015; Ioffe & Szegedy 2015)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from edgefilter.models.layers import Ops

# Conv widths; "M" is a 2x2 max pooling.
CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ),
}


class VGG(nn.Module):
    """VGG with batch norm after every 3x3 conv.

    ``head="cifar"``: global pooling of the 1x1x512 map and one FC layer (the usual CIFAR
    variant, 14.7M parameters for VGG-16). ``head="imagenet"``: the original classifier,
    FC 4096, FC 4096 (ReLU, dropout 0.5), FC num_classes on the 7x7x512 map (138.4M for
    VGG-16 on 224x224 inputs).
    """

    num_classes: int
    config: Sequence[int | str]
    head: str = "cifar"
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        for i, width in enumerate(self.config):
            if width == "M":
                x = self.ops.max_pool(x)
            else:
                x = self.ops.conv(width, 3, first=i == 0)(x)
                x = nn.relu(self.ops.batch_norm(train)(x))
        if self.head == "cifar":
            x = x.mean(axis=(1, 2))
        else:
            x = x.reshape((x.shape[0], -1))
            for _ in range(2):
                x = nn.relu(self.ops.dense(4096)(x))
                x = nn.Dropout(0.5, deterministic=not train)(x)
        return self.ops.dense(self.num_classes)(x)
