"""A convolution's backward pass with error propagation as one GEMM and an overlap-add.

A conv layer's backward does two convolutions with the output error ``delta``: error
propagation ``delta_in = sum_j rot(W_j) * delta_j`` (PAPER.md Eq. 8, a transposed
convolution) and the weight gradient ``g_W = a * delta`` (Eq. 12). XLA computes Eq. 8 as
a convolution over every *input* position, with ``delta`` dilated by the stride and
padded by ``k - 1``, so when the input has many more positions than the output most of its
multiply-accumulates hit zeros: LeNet's second conv (5x5, 12x12 -> 8x8) runs 2.25x the
real work, a stride-2 conv about 4x. On XLA:CPU those convolutions are also slow per
MAC (Eigen).

Here Eq. 8 is computed over the *output* positions instead: one GEMM
``P = delta @ W^T`` gives, for every output position, the ``kh * kw * c_in`` input-error
contributions of its window (no zeros are multiplied), and an overlap-add ("col2im")
sums each tap's ``[N, oh, ow, c_in]`` slice of ``P`` into the input error at its offset.
The overlap-add runs on a stride-phase view of the padded input error, where every tap's
slice is unit-stride: each kernel row's ``kw`` taps are padded into place and summed (one
fusion), and the row is added in place with ``dynamic_update_slice``. (Written as one
sum of ``kh * kw`` padded arrays, XLA:CPU split it inside a whole train step into one
full-size pad per tap, slower than lax; one in-place update per tap was faster, one per
kernel row fastest. benchmarks/README.md, "XLA:CPU lowerings", has the timings.)

:func:`uses_gemm` decides per layer: the GEMM form is used when the input has at least
``GEMM_MIN_WASTE`` times as many positions as the output (so lax's form would spend at
least half its MACs on zeros) and the layout is flax's NHWC/HWIO, undilated, ungrouped,
with non-negative padding; everything else gets lax's own backward. The weight gradient
(Eq. 12) is always lax's. Both paths give the same gradient up to float rounding
(tested against :func:`jax.vjp` of the lax convolution).

Public API:

* :func:`error_propagation`: Eq. 8 as GEMM + overlap-add (any stride and padding).
* :func:`uses_gemm`: the rule above.
* :func:`conv_vjp`: both cotangents of a lax convolution, Eq. 8 by the rule above;
  :func:`lax_vjp`: the same by lax alone (bit-for-bit :func:`jax.vjp`).
* :func:`conv_general_dilated`: drop-in :func:`jax.lax.conv_general_dilated` (same
  forward) whose backward is :func:`conv_vjp` (reverse mode only, see
  :mod:`edgefilter.backends`); :mod:`edgefilter.emp`, with the backend switch on, runs its
  pruned backward through :func:`conv_vjp` on the kept channels.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from edgefilter.backends.xla_cpu import own_buffer
from edgefilter.backends.xla_cpu.forward_mode import reverse_mode_only

__all__ = [
    "GEMM_MIN_WASTE",
    "ConvSpec",
    "conv_general_dilated",
    "conv_vjp",
    "error_propagation",
    "lax_vjp",
    "uses_gemm",
]

#: Input positions per output position from which Eq. 8 runs as GEMM + overlap-add.
GEMM_MIN_WASTE = 2.0

_NHWC = ("NHWC", "HWIO", "NHWC")


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """The static (hashable) arguments of one :func:`jax.lax.conv_general_dilated` call."""

    window_strides: tuple[int, ...]
    padding: str | tuple[tuple[int, int], ...]
    lhs_dilation: tuple[int, ...] | None
    rhs_dilation: tuple[int, ...] | None
    dimension_numbers: lax.ConvDimensionNumbers
    precision: Any
    preferred_element_type: Any
    feature_group_count: int = 1
    batch_group_count: int = 1

    @classmethod
    def create(
        cls,
        lhs_shape: Sequence[int],
        rhs_shape: Sequence[int],
        window_strides: Sequence[int],
        padding: str | Sequence[tuple[int, int]],
        lhs_dilation: Sequence[int] | None = None,
        rhs_dilation: Sequence[int] | None = None,
        dimension_numbers: Any = None,
        precision: Any = None,
        preferred_element_type: Any = None,
        *,
        feature_group_count: int = 1,
        batch_group_count: int = 1,
    ) -> ConvSpec:
        """Normalises lax's arguments (tuples, parsed dimension numbers) into a spec."""

        def optional(values: Sequence[int] | None) -> tuple[int, ...] | None:
            return None if values is None else tuple(int(v) for v in values)

        if not isinstance(padding, str):
            padding = tuple((int(lo), int(hi)) for lo, hi in padding)
        return cls(
            window_strides=tuple(int(s) for s in window_strides),
            padding=padding,
            lhs_dilation=optional(lhs_dilation),
            rhs_dilation=optional(rhs_dilation),
            dimension_numbers=lax.conv_dimension_numbers(
                tuple(lhs_shape), tuple(rhs_shape), dimension_numbers
            ),
            precision=tuple(precision) if isinstance(precision, list) else precision,
            preferred_element_type=preferred_element_type,
            feature_group_count=int(feature_group_count),
            batch_group_count=int(batch_group_count),
        )

    def apply(self, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        """The convolution itself, by lax."""
        return lax.conv_general_dilated(
            lhs,
            rhs,
            self.window_strides,
            self.padding,
            lhs_dilation=self.lhs_dilation,
            rhs_dilation=self.rhs_dilation,
            dimension_numbers=self.dimension_numbers,
            feature_group_count=self.feature_group_count,
            batch_group_count=self.batch_group_count,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
        )

    def explicit_padding(
        self, lhs_shape: Sequence[int], rhs_shape: Sequence[int]
    ) -> tuple[tuple[int, int], ...]:
        """``padding`` as ``(low, high)`` pairs per spatial axis (NHWC/HWIO shapes)."""
        if isinstance(self.padding, str):
            return tuple(
                lax.padtype_to_pads(
                    lhs_shape[1:-1], rhs_shape[:-2], self.window_strides, self.padding
                )
            )
        return self.padding


def uses_gemm(spec: ConvSpec, lhs_shape: Sequence[int], rhs_shape: Sequence[int]) -> bool:
    """Whether :func:`conv_vjp` computes Eq. 8 of this layer as GEMM + overlap-add.

    True for an ungrouped 2-D NHWC/HWIO convolution without dilation, with non-negative
    padding, whose input has at least ``GEMM_MIN_WASTE`` times as many spatial positions
    as its output (lax's transposed convolution would multiply zeros at least half the
    time).
    """
    ones = (1, 1)
    if spec.feature_group_count != 1 or spec.batch_group_count != 1:
        return False
    if len(lhs_shape) != 4 or spec.dimension_numbers != lax.conv_dimension_numbers(
        tuple(lhs_shape), tuple(rhs_shape), _NHWC
    ):
        return False
    if (spec.lhs_dilation or ones) != ones or (spec.rhs_dilation or ones) != ones:
        return False
    pads = spec.explicit_padding(lhs_shape, rhs_shape)
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        return False
    out = [
        (size + lo + hi - k) // s + 1
        for size, (lo, hi), k, s in zip(
            lhs_shape[1:3], pads, rhs_shape[:2], spec.window_strides, strict=True
        )
    ]
    if min(out) < 1:
        return False
    return math.prod(lhs_shape[1:3]) >= GEMM_MIN_WASTE * math.prod(out)


def error_propagation(
    delta: jax.Array,
    rhs: jax.Array,
    lhs_shape: Sequence[int],
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    precision: Any = None,
) -> jax.Array:
    """Eq. 8, the input error of an NHWC/HWIO convolution, as GEMM + overlap-add.

    ``P[n, y, x, (i, j, c)] = sum_o delta[n, y, x, o] * W[i, j, c, o]`` (one GEMM over the
    output positions), then ``delta_in[n, s*y + i - p, s*x + j - q, c] += P[n, y, x, i, j,
    c]`` for every tap ``(i, j)``: the same value as the transpose of the convolution.

    Args:
      delta: the output error, ``[N, oh, ow, c_out]``.
      rhs: the kernel, ``[kh, kw, c_in, c_out]``.
      lhs_shape: the convolution input's shape ``[N, H, W, c_in]``.
      window_strides: ``(s_h, s_w)``.
      padding: ``((low_h, high_h), (low_w, high_w))``, non-negative.
      precision: passed to the GEMM.

    Returns:
      The input error, ``lhs_shape``, in ``delta``'s dtype.
    """
    kh, kw, c_in, c_out = rhs.shape
    n, oh, ow, _ = delta.shape
    (sh, sw), ((ph, _), (pw, _)) = window_strides, padding
    height, width = lhs_shape[1:3]
    acc = jnp.promote_types(delta.dtype, jnp.float32)
    taps = lax.dot_general(
        delta,
        rhs.reshape(kh * kw * c_in, c_out),
        (((3,), (1,)), ((), ())),
        precision=precision,
        preferred_element_type=acc,
    ).reshape(n, oh, ow, kh, kw, c_in)
    # The padded input error, viewed as [N, rows, s_h, cols, s_w, c_in]: tap (i, j) lands on
    # the unit-stride block [i // s_h : + oh, i % s_h, j // s_w : + ow, j % s_w].
    rows = max(-(-(ph + height) // sh), (kh - 1) // sh + oh)
    cols = max(-(-(pw + width) // sw), (kw - 1) // sw + ow)
    out = jnp.zeros((n, rows, sh, cols, sw, c_in), acc)
    for i in range(kh):
        row = None  # Kernel row i's taps, overlap-added along the width by padding.
        for j in range(kw):
            tap = taps[:, :, :, i, j, :].reshape(n, oh, 1, ow, 1, c_in)
            block, phase = divmod(j, sw)
            widths = ((block, cols - ow - block), (phase, sw - 1 - phase))
            tap = jnp.pad(tap, ((0, 0), (0, 0), (0, 0), *widths, (0, 0)))
            row = tap if row is None else row + tap
        start = (0, i // sh, i % sh, 0, 0, 0)
        window = lax.dynamic_slice(out, start, row.shape)
        out = lax.dynamic_update_slice(out, window + row, start)
    out = out.reshape(n, rows * sh, cols * sw, c_in)
    return out[:, ph : ph + height, pw : pw + width, :].astype(delta.dtype)


def lax_vjp(
    spec: ConvSpec, lhs: jax.Array, rhs: jax.Array, delta: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Both cotangents of ``spec.apply(lhs, rhs)`` exactly as :func:`jax.vjp` gives them."""
    _, vjp = jax.vjp(spec.apply, lhs, rhs)
    return vjp(delta)


def conv_vjp(
    spec: ConvSpec, lhs: jax.Array, rhs: jax.Array, delta: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Both cotangents of ``spec.apply(lhs, rhs)`` for the output error ``delta``.

    Eq. 8 (input error) by :func:`error_propagation` where :func:`uses_gemm` says so,
    Eq. 12 (weight gradient) by lax; elsewhere :func:`lax_vjp`. Cotangents are in the
    primal dtypes.
    """
    if not uses_gemm(spec, lhs.shape, rhs.shape):
        return lax_vjp(spec, lhs, rhs, delta)
    _, rhs_vjp = jax.vjp(lambda w: spec.apply(lhs, w), rhs)
    (g_rhs,) = rhs_vjp(delta)
    pads = spec.explicit_padding(lhs.shape, rhs.shape)
    g_lhs = error_propagation(delta, rhs, lhs.shape, spec.window_strides, pads, spec.precision)
    return g_lhs.astype(lhs.dtype), g_rhs.astype(rhs.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv(spec: ConvSpec, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    return spec.apply(lhs, rhs)


def _conv_fwd(
    spec: ConvSpec, lhs: jax.Array, rhs: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return spec.apply(lhs, rhs), (lhs, rhs)


def _conv_bwd(
    spec: ConvSpec, residuals: tuple[jax.Array, jax.Array], delta: jax.Array
) -> tuple[jax.Array, jax.Array]:
    lhs, rhs = residuals
    return conv_vjp(spec, lhs, rhs, delta)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """:func:`jax.lax.conv_general_dilated` whose backward runs Eq. 8 by :func:`conv_vjp`.

    Same arguments and forward value as lax. Grouped convolutions, and layers where
    :func:`uses_gemm` is False, are lax's own convolution (and backward) unchanged. An
    input of at least ``own_buffer.MIN_ELEMENTS`` elements is computed into a buffer of
    its own first (:mod:`own_buffer`).
    """
    lhs, rhs = own_buffer.own_buffer(jnp.asarray(lhs)), jnp.asarray(rhs)
    spec = ConvSpec.create(
        lhs.shape,
        rhs.shape,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        precision,
        preferred_element_type,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
    )
    if not uses_gemm(spec, lhs.shape, rhs.shape):
        return spec.apply(lhs, rhs)
    return reverse_mode_only(_conv, "conv_backward.conv_general_dilated")(spec, lhs, rhs)
