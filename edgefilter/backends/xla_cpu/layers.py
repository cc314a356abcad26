"""XLA:CPU lowerings of model layers: folded batch norm, argmax pooling, tap-sum convs.

Each gives flax's (or lax's) values up to float rounding, computed in a form XLA:CPU
runs faster (benchmarks/README.md, "XLA:CPU lowerings", has the measurements).
``edgefilter.models.Ops`` uses them when :mod:`edgefilter.backends`' switch is on.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from edgefilter.backends.xla_cpu import channel_fold, conv_backward, own_buffer
from edgefilter.backends.xla_cpu.forward_mode import reverse_mode_only


class BatchNorm(nn.Module):
    """``flax.linen.BatchNorm`` over all axes but the last, on a folded view of the input.

    The same variables (``params``: ``scale``, ``bias``; ``batch_stats``: ``mean``,
    ``var``), statistics (``var = mean(x^2) - mean(x)^2``, clipped at 0, as flax's default),
    cross-device synchronisation (``axis_name``: the batch mean and mean of squares are
    averaged over that axis with ``lax.pmean``, as flax does) and running-average update
    as ``nn.BatchNorm``, and the same values up to float rounding (tested). The class
    name is flax's too, so unnamed layers get the same automatic names (``BatchNorm_0``).

    Why: XLA:CPU sums over a narrow minor axis (a CIFAR ResNet's 16 to 64 channels)
    several times slower than over a wide one, and batch norm's statistics and the
    gradients autodiff derives for them are such sums. Here every per-channel sum runs
    over the wide columns of :func:`channel_fold.fold`'s view, and per-channel vectors are
    tiled onto that view, so the derived backward sums the same way.

    Attributes:
      use_running_average: normalise by the running statistics (evaluation) instead of
        the batch's (training, which also updates them).
      momentum: running-average decay (flax's convention; PyTorch's 0.1 is 0.9 here).
      epsilon: added to the variance.
      axis_name: a mapped axis (``jax.vmap``/``shard_map``) to average the batch
        statistics over; ``None`` uses the local batch.
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
        folded, groups = channel_fold.fold(x.astype(jnp.promote_types(x.dtype, jnp.float32)))
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            count = folded.shape[0] * groups
            mean = channel_fold.channel_sum(folded, groups) / count
            mean_sq = channel_fold.channel_sum(folded * folded, groups) / count
            if self.axis_name is not None and not self.is_initializing():
                mean, mean_sq = jax.lax.pmean((mean, mean_sq), self.axis_name)
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
def _max_pool_2x2(x: jax.Array) -> jax.Array:
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


_max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 (VALID): ``nn.max_pool(x, (2, 2), strides=(2, 2))``.

    Same values and gradient as flax's ``max_pool`` (on ties the gradient goes to the
    first maximum of the window in row-major order, as XLA's select-and-scatter does).
    The forward is the max of four strided slices and also records, as int8, which of the
    four held the maximum; the backward (a ``jax.custom_vjp``) places the output gradient
    there in one elementwise pass over an ``[N, H/2, 2, W/2, 2, C]`` view.

    Why: XLA:CPU's select-and-scatter, flax's pooling backward, is slow; a backward that
    autodiff derives from the four slices is four padded selects, each recomputing the
    pooled activations. Reverse mode only (see :mod:`edgefilter.backends`).
    """
    return reverse_mode_only(_max_pool_2x2, "max_pool_2x2")(x)


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

    Why: XLA:CPU's convolution kernels are slow for very few input channels, where a
    conv has only ``kh * kw * c_in`` multiply-accumulates per output; the instance
    filter's first conv runs on every streamed chunk. Left to itself, XLA fuses the tap
    sum into each reader of the conv's output and recomputes it there, hence the buffer.
    Same values as lax up to float rounding (tested). Reverse mode only (see
    :mod:`edgefilter.backends`).
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
    tap_conv = reverse_mode_only(_tap_conv, "small_kernel_conv")
    return tap_conv(lhs, rhs, tuple(window_strides), precision, preferred_element_type)
