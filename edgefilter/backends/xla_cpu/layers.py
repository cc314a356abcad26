"""XLA:CPU lowerings of model layers: folded batch norm, argmax pooling, tap-sum convs.

Each gives flax's (or lax's) values up to float rounding, computed in a form XLA:CPU
runs faster (see benchmarks/README.md for the measurements).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from edgefilter.backends.xla_cpu import channel_fold, conv_backward, own_buffer


class BatchNorm(nn.Module):
    """``flax.linen.BatchNorm`` over all axes but the last, on a folded view of the input.

    The same variables (``params``: ``scale``, ``bias``; ``batch_stats``: ``mean``,
    ``var``), statistics (``var = mean(x^2) - mean(x)^2``, clipped at 0, as flax's default)
    and running-average update as ``nn.BatchNorm``, and the same values up to float
    rounding (tested). Every per-channel sum, here and in the backward pass that autodiff
    derives, runs over the wide columns of :func:`backends.xla_cpu.channel_fold.fold`'s view:
    on XLA:CPU flax's batch norm (forward and backward, with the ReLU after it) took
    11.2 ms against 3.8 ms this way for a 128x32x32x16 ResNet-20 activation, 3.8 against
    1.9 ms at 128x16x16x32 (2-core x86-64, jaxlib 0.10).

    Attributes:
      use_running_average: normalise by the running statistics (evaluation) instead of
        the batch's (training, which also updates them).
      momentum: running-average decay (flax's convention; PyTorch's 0.1 is 0.9 here).
      epsilon: added to the variance.
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
        folded, groups = channel_fold.fold(x.astype(jnp.float32))
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            count = folded.shape[0] * groups
            mean = channel_fold.channel_sum(folded, groups) / count
            mean_sq = channel_fold.channel_sum(folded * folded, groups) / count
            var = jnp.maximum(0.0, mean_sq - mean * mean)
            if not self.is_initializing():
                decay = self.momentum
                running_mean.value = decay * running_mean.value + (1 - decay) * mean
                running_var.value = decay * running_var.value + (1 - decay) * var
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        shift = bias - mean * mul
        y = folded * channel_fold.tile(mul, groups) + channel_fold.tile(shift, groups)
        return y.reshape(x.shape)


def _max_pool_2x2_with_argmax(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    x = x[:, :h, :w]
    a, b, c, d = x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]
    top, bottom = jnp.maximum(a, b), jnp.maximum(c, d)
    # Which of a, b, c, d (0-3) holds the maximum; the first in that order on ties.
    argmax = jnp.where(top >= bottom, jnp.where(a >= b, 0, 1), jnp.where(c >= d, 2, 3))
    return jnp.maximum(top, bottom), argmax.astype(jnp.int8)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 (VALID): ``nn.max_pool(x, (2, 2), strides=(2, 2))``.

    Same values and gradient as flax's ``max_pool`` (on ties the gradient goes to the
    first maximum of the window in row-major order, as XLA's select-and-scatter does),
    computed differently for XLA:CPU. The forward is the max of four strided slices and
    also records, as int8, which of the four held the maximum; the backward places the
    output gradient there in one elementwise pass over an ``[N, H/2, 2, W/2, 2, C]`` view.
    On LeNet's train step (batch 64, 2-core CPU) that took the step from 10.7 to 8.6 ms:
    XLA's select-and-scatter had cost 4.6 ms for the first pooling alone, and a backward
    derived by autodiff from the slices (four padded selects) recomputed the pooled
    activations in every one of them.
    """
    return _max_pool_2x2_with_argmax(x)[0]


def _max_pool_2x2_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, tuple[int, ...]]]:
    y, argmax = _max_pool_2x2_with_argmax(x)
    return y, (argmax, x.shape)


def _max_pool_2x2_bwd(
    residuals: tuple[jax.Array, tuple[int, ...]], g: jax.Array
) -> tuple[jax.Array]:
    argmax, shape = residuals
    n, h, w, c = argmax.shape
    position = jnp.arange(4, dtype=jnp.int8).reshape(1, 1, 2, 1, 2, 1)
    dx = jnp.where(
        argmax[:, :, None, :, None, :] == position,
        g[:, :, None, :, None, :],
        jnp.zeros((), g.dtype),
    ).reshape(n, 2 * h, 2 * w, c)
    dx = jnp.pad(dx, ((0, 0), (0, shape[1] - 2 * h), (0, shape[2] - 2 * w), (0, 0)))
    return (dx,)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


# Kernels with at most this many weights, or with one input channel and at most this
# many taps, take the tap-sum path (see small_kernel_conv).
SMALL_KERNEL_WEIGHTS = 64
SINGLE_CHANNEL_MAX_TAPS = 25
_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers: Any, ndim: int) -> bool:
    if dimension_numbers is None or ndim != 4:
        return False
    if isinstance(dimension_numbers, jax.lax.ConvDimensionNumbers):
        return dimension_numbers == jax.lax.conv_dimension_numbers(
            (1, 1, 1, 1), (1, 1, 1, 1), _NHWC
        )
    return tuple(dimension_numbers) == _NHWC


def _taps(x: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int]) -> list[jax.Array]:
    """The kh*kw strided views of a padded NHWC input that a VALID conv multiplies by W[i, j]."""
    (kh, kw), (sh, sw), (h, w) = kernel_hw, strides, x.shape[1:3]
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    return [
        x[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]


def _channel_matmul(x: jax.Array, w: jax.Array, precision: Any, out_dtype: Any) -> jax.Array:
    """``[N, H, W, C] @ [C, O] -> [N, H, W, O]``."""
    return jax.lax.dot_general(
        x, w, (((3,), (0,)), ((), ())), precision=precision, preferred_element_type=out_dtype
    )


def _tap_sum(
    x: jax.Array, w: jax.Array, strides: tuple[int, int], precision: Any, out_dtype: Any
) -> jax.Array:
    taps = _taps(x, w.shape[:2], strides)
    terms = [
        _channel_matmul(tap, w_tap, precision, out_dtype)
        for tap, w_tap in zip(taps, w.reshape(-1, *w.shape[2:]), strict=True)
    ]
    return sum(terms[1:], terms[0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _tap_conv(
    x: jax.Array, w: jax.Array, strides: tuple[int, int], precision: Any, out_dtype: Any
) -> jax.Array:
    return _tap_sum(x, w, strides, precision, out_dtype)


def _tap_conv_fwd(
    x: jax.Array, w: jax.Array, strides: tuple[int, int], precision: Any, out_dtype: Any
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    # In a buffer of its own, or XLA:CPU recomputes the tap sum in every reader.
    out = own_buffer.own_buffer(_tap_sum(x, w, strides, precision, out_dtype), min_elements=0)
    return out, (x, w)


def _tap_conv_bwd(
    strides: tuple[int, int],
    precision: Any,
    out_dtype: Any,
    residuals: tuple[jax.Array, jax.Array],
    g: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    del out_dtype
    x, w = residuals
    spec = conv_backward.ConvSpec.create(
        x.shape, w.shape, strides, "VALID", dimension_numbers=_NHWC, precision=precision
    )
    dx, dw = conv_backward.lax_vjp(spec, x, w, g.astype(jnp.result_type(x, w)))
    return dx.astype(x.dtype), dw.astype(w.dtype)


_tap_conv.defvjp(_tap_conv_fwd, _tap_conv_bwd)


def small_kernel_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Any,
    padding: Any,
    lhs_dilation: Any = None,
    rhs_dilation: Any = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``jax.lax.conv_general_dilated``, computed as a tap sum for tiny or 1-channel kernels.

    A 2-D NHWC/HWIO convolution (ungrouped, undilated) whose kernel has at most
    ``SMALL_KERNEL_WEIGHTS`` weights, or one input channel and at most
    ``SINGLE_CHANNEL_MAX_TAPS`` taps, is computed as ``sum_{i,j} x[:, i::s, j::s, :] @
    W[i, j]``, one small matmul per tap that XLA fuses into one loop. Under
    differentiation (a ``jax.custom_vjp``) that sum is computed once into a buffer of its
    own (:func:`backends.xla_cpu.own_buffer.own_buffer`) and the backward is lax's (Eq. 8 and
    Eq. 12 of PAPER.md; for a first layer only the weight gradient survives XLA's dead
    code elimination). Anything else goes to lax.

    Why: XLA:CPU's convolution kernels are slow for very few input channels: a conv then
    has only ``kh * kw * c_in`` multiply-accumulates per output. The first conv of the
    paper's MNIST filter (3x3, 1 -> 6 channels) took 0.73 ms of the filter's 1.4 ms
    forward on 64 instances, and the filter's forward runs on every streamed chunk; as a
    tap sum the whole forward took 1.1 ms against 2.2 ms (2-core CPU, jaxlib 0.10).
    LeNet's first conv (5x5, 1 -> 20) on 64 instances: 0.68 against 1.3 ms. Left to
    itself, XLA fuses the tap sum into each reader of the conv's output and recomputes it
    there (LeNet's train step ran at 5400 instead of 7200 img/s), hence the buffer.
    Against the im2col matmul this path used before under differentiation (with lax for
    LeNet's first conv), alternating in one process on a 2-core Intel Xeon (AVX-512),
    medians of 9 rounds: LeNet's SGD step (batch 64) 7500 -> 7820 img/s, the filter's
    update 1.57 -> 1.36 ms on 21 instances and 3.31 -> 3.03 ms on 72. Same values as lax
    up to float rounding (tested).
    """
    ones = (1,) * (lhs.ndim - 2)
    few_weights = rhs.size <= SMALL_KERNEL_WEIGHTS
    single_channel = lhs.ndim == 4 and rhs.shape[2] == 1
    tiny = (
        _is_nhwc(dimension_numbers, lhs.ndim)
        and (
            few_weights
            or (single_channel and rhs.shape[0] * rhs.shape[1] <= SINGLE_CHANNEL_MAX_TAPS)
        )
        and tuple(lhs_dilation or ones) == ones
        and tuple(rhs_dilation or ones) == ones
        and feature_group_count == 1
        and batch_group_count == 1
    )
    if not tiny:
        return jax.lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            precision,
            preferred_element_type,
        )
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    lhs = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    return _tap_conv(lhs, rhs, tuple(window_strides), precision, preferred_element_type)
