"""LeNet (the paper's MNIST main network) and the slim LeNet (its MNIST filter)."""

from __future__ import annotations

import flax.linen as nn
import jax

from edgefilter.models.layers import Ops, torch_default


class LeNet(nn.Module):
    """Two unpadded convs, each followed by ReLU and 2x2 max pooling, then two FC layers.

    With the defaults this is the classic network of PAPER.md (5x5 convs with 20 and 50
    filters, FC 500, FC num_classes: PyTorch's long-standing MNIST example, 431k
    parameters on 28x28 inputs). ``lenet_slim`` is the same shape with 3x3 kernels, 6 and
    16 filters and FC 120: the paper's MNIST instance filter. Initialisation follows
    PyTorch's defaults so the paper's MNIST settings (lr 0.01, momentum 0.5) transfer.
    """

    num_classes: int
    filters: tuple[int, int] = (20, 50)
    kernel: int = 5
    hidden: int = 500
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        del train  # No batch norm or dropout.
        for i, features in enumerate(self.filters):
            x = self.ops.conv(
                features,
                self.kernel,
                padding="VALID",
                use_bias=True,
                kernel_init=torch_default,
                first=i == 0,
            )(x)
            x = self.ops.max_pool(nn.relu(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(self.ops.dense(self.hidden, kernel_init=torch_default)(x))
        return self.ops.dense(self.num_classes, kernel_init=torch_default)(x)
