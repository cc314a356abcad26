"""What a run records for the paper's Fig. 14, beside training: EMP's kept channels per
conv layer (read from the step's gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from edgefilter.method import emp
from tests.conftest import quick_jit


def test_kept_channels_counts_the_channels_with_a_weight_gradient():
    # One conv, 4 output channels, under the threshold policy S_j >= mean(S) (Eq. 14).
    # The output error is c: channel j's L1 norms sum to 0, 1, 2, 3 times the same
    # positive amount, so S = k * (0, 1, 2, 3), mean 1.5 k: channels 2 and 3 are kept.
    conv = emp.conv_general_dilated(emp.Threshold(1.0), xla_cpu=False)
    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    c = jnp.ones((2, 3, 3, 4)) * jnp.asarray([0.0, 1.0, 2.0, 3.0])

    def loss(k):
        return jnp.sum(conv(x, k, (1, 1), "VALID", dimension_numbers=dn) * c)

    grad = quick_jit(jax.grad(loss))(kernel)
    grads = {
        "Conv_0": {"kernel": grad, "bias": jnp.ones(4)},
        "Dense_0": {"kernel": jnp.ones((8, 2))},
    }
    counts = emp.kept_channels(grads)
    assert list(counts) == ["Conv_0"]  # Dense kernels (2-D) are not conv layers.
    assert int(counts["Conv_0"]) == 2
