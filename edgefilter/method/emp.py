"""Error map pruning (EMP): a convolution whose backward pass skips output-error channels.

PAPER.md, "Error map pruning". For a conv layer with ``n`` output channels the backward
pass does two convolutions with the output error ``delta`` (the cotangent of the layer's
output): error propagation ``delta_in = sum_j rot(W_j) * delta_j`` (Eq. 8, a transposed
conv) and the weight gradient ``g_W_j = a * delta_j`` (Eq. 12). EMP scores every channel
``j`` over the mini-batch (Eq. 11; Eq. 14 is its special case ``gamma1 = 0, gamma2 = 1``)::

    S_j = sum_i [gamma1 * ||W_j||_1 + gamma2 * ||delta_ij||_1]
        = N * gamma1 * ||W_j||_1 + gamma2 * sum_i ||delta_ij||_1

and runs both backward convolutions on the selected channels only; the same channels are
pruned for every instance of the mini-batch. The forward pass is untouched.

Public API:

* :class:`TopK` and :class:`Threshold`: frozen (hashable, jit-static) selection policies.
* :func:`conv_general_dilated`: ``conv_general_dilated(policy)`` returns a drop-in
  replacement for :func:`jax.lax.conv_general_dilated` (a :class:`PrunedConv`), e.g.
  ``flax.linen.Conv(16, (3, 3), conv_general_dilated=emp.conv_general_dilated(TopK(0.5)))``.
* :func:`pruning`: ``with emp.pruning(TopK(0.5)):`` gives every ``flax.linen.Conv`` of an
  unmodified flax model that pruned convolution (the first one left dense).
* :func:`channel_scores` (Eq. 11) and :func:`select_channels`: the selection as pure
  functions, for tests, analysis and accounting.
* :func:`backward_macs` and :func:`selection_macs`: analytic operation counts, so the
  selection overhead can be stated against the layer's backward cost.
* :func:`kept_channels`: per conv layer, the channels a step's gradients show were kept
  (what the training loop records for the paper's Fig. 14).

Design notes:

* **Real savings, static shapes.** ``TopK`` keeps a static number of channels
  ``k = ceil(keep_ratio * n)``: their indices come from :func:`jax.lax.top_k`, the kept
  slices of ``delta`` (output feature axis) and of the kernel (output feature axis) are
  gathered, Eq. 8 and Eq. 12 are computed on the ``k``-channel operands by lax's vjp of
  the convolution (every layout, stride, padding and dilation that lax supports), and the
  ``k``-channel weight gradient is scattered into a zero kernel gradient. Pruned channels
  get an exactly zero weight gradient. The multiply-accumulates of both backward
  convolutions shrink to ``k / n``. When every channel is kept the backward is lax's
  own, bit for bit.
* **Threshold buckets.** ``Threshold`` keeps the data-dependent set
  ``S_j >= threshold * mean_j(S_j)``, whose size is unknown at trace time. Its count is
  rounded *up* to one of a few static bucket sizes (multiples of ``ceil(n / buckets)``,
  ``buckets = 8`` by default) and :func:`jax.lax.switch` runs the branch that gathers that
  static number of highest-scoring channels; channels inside the bucket that are not in
  the kept set get their ``delta`` zeroed, so the result equals the exact threshold rule
  while the work done is at most ``ceil(n / buckets)`` channels more than needed. An empty
  kept set (possible when ``threshold > 1``) takes a branch that does no convolution.
  Under :func:`jax.vmap` with a batched predicate ``lax.switch`` turns into a select that
  evaluates every branch; the saving then disappears (the result stays correct).
* **First layer.** Nobody needs the input error of the first conv. Under ``jax.jit`` with
  gradients taken with respect to the parameters only, the custom backward's input-error
  output is unused and XLA removes the transposed convolution as dead code, so only the
  weight gradient is computed (checked with ``cost_analysis`` in ``tests/test_emp.py``).
  Outside ``jit`` (eager op-by-op execution) it is computed and thrown away. Pruning
  the first layer therefore saves only part of its weight gradient, and it slows early
  learning: LeNet on Fashion-MNIST after 5 epochs (keep 0.5, seeds 0-2) lost 0.57 points
  to SGD on average with every conv pruned and 0.23 with the first conv left dense.
  ``train.build_model`` (and so the CLI) therefore leaves the first conv layer's
  backward dense unless asked (``prune_first_layer``, ``--emp_first_layer``); a model
  built here directly with ``models.create(conv_general_dilated=...)`` prunes every conv
  layer, and ``first_conv_general_dilated`` picks the first layer's primitive.
* **Bias.** ``flax.linen.Conv`` adds its bias outside ``conv_general_dilated``, so this op
  never sees it: the bias gradient (a per-channel sum of ``delta``, no multiply-
  accumulates) stays dense. Only the convolution's backward is pruned.
* **Backend switch.** With :mod:`edgefilter.backends`' switch on (``xla_cpu``, by
  default when JAX's backend is the CPU), the same values are computed in forms XLA:CPU
  runs faster: the kept channels' backward is
  :func:`backends.xla_cpu.conv_backward.conv_vjp` (Eq. 8 as one GEMM plus an overlap-add
  where lax's transposed conv would mostly multiply zeros; the overlap-add, ``c_in``
  wide, does not shrink with ``k``), the scores' per-channel sums run on a folded wide
  view (:mod:`backends.xla_cpu.channel_fold`), and a large error map and a large input
  are computed once into buffers of their own before they are read twice
  (:mod:`backends.xla_cpu.own_buffer`). Off, none of these is used.
* **Dtypes.** Scores are computed in at least float32; the cotangents returned are in the
  primal dtypes (a bfloat16 layer gets bfloat16 gradients, like ``jax.grad`` gives).
* **Error transform.** ``error_transform`` is an optional static hook applied to the
  output error before scoring and before both backward convolutions; the k-bit
  quantization module uses it to quantize error maps inside the same backward.
* Grouped convolutions (``feature_group_count`` or ``batch_group_count`` != 1) are not
  supported and raise :class:`NotImplementedError`.

Example::

    conv = emp.conv_general_dilated(emp.TopK(keep_ratio=0.5))
    layer = flax.linen.Conv(16, (3, 3), conv_general_dilated=conv)
    grads = jax.grad(loss_fn)(params)   # backward convs use 8 of the 16 error channels
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from edgefilter import backends
from edgefilter.backends.xla_cpu import channel_fold, conv_backward, own_buffer

__all__ = [
    "ErrorTransform",
    "Policy",
    "PrunedConv",
    "Threshold",
    "TopK",
    "backward_macs",
    "channel_scores",
    "conv_general_dilated",
    "kept_channels",
    "pruning",
    "select_channels",
    "selection_macs",
]

#: Static callable applied to the output error map before scoring, ``delta -> delta'``
#: (same shape; the result is cast back to ``delta``'s dtype).
ErrorTransform = Callable[[jax.Array], jax.Array]


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_gammas(gamma1: Any, gamma2: Any) -> None:
    for name, value in (("gamma1", gamma1), ("gamma2", gamma2)):
        if not _is_real(value) or not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"{name}={value!r} must be a finite number >= 0")
    if gamma1 == 0.0 and gamma2 == 0.0:
        raise ValueError(
            f"gamma1={gamma1!r} and gamma2={gamma2!r} must not both be 0 "
            "(every channel would score 0)"
        )


@dataclasses.dataclass(frozen=True)
class TopK:
    """Keep the ``ceil(keep_ratio * n)`` channels with the largest score (Eq. 11).

    Attributes:
      keep_ratio: fraction ``alpha = n' / n`` of output-error channels kept, in (0, 1].
        At least one channel is always kept; ``1.0`` gives the exact dense backward.
      gamma1: weight of the kernel's L1 norm ``||W_j||_1`` in the score (>= 0).
      gamma2: weight of the error map's L1 norm ``||delta_ij||_1`` (>= 0). The defaults
        ``gamma1 = 0, gamma2 = 1`` are the paper's Eq. 14.
    """

    keep_ratio: float
    gamma1: float = 0.0
    gamma2: float = 1.0

    def __post_init__(self) -> None:
        r = self.keep_ratio
        if not _is_real(r) or not 0.0 < r <= 1.0:
            raise ValueError(f"keep_ratio={r!r} must lie in (0, 1]")
        _check_gammas(self.gamma1, self.gamma2)

    def num_kept(self, num_channels: int) -> int:
        """Static kept count ``max(1, ceil(keep_ratio * num_channels))``.

        The product is taken in exact rational arithmetic on the float's value, so
        ``TopK(0.3).num_kept(10) == 3`` (the float product ``0.3 * 10`` rounds to
        ``3.0000000000000004``).
        """
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels!r}.")
        return max(1, math.ceil(Fraction(self.keep_ratio) * num_channels))


@dataclasses.dataclass(frozen=True)
class Threshold:
    """Keep the channels whose score is at least ``threshold`` times the mean score.

    The kept set is ``{j : S_j >= threshold * mean_j(S_j)}`` (scores from Eq. 11). Its
    size depends on the data; the backward rounds it up to a static bucket size (see the
    module docstring), which changes the work done, never the result.

    Attributes:
      threshold: multiple of the mean channel score a channel needs to be kept (>= 0).
        ``0`` keeps every channel; values above ``1`` can keep none, in which case the
        layer's backward is skipped entirely (zero gradients).
      gamma1: weight of ``||W_j||_1`` in the score (>= 0).
      gamma2: weight of ``||delta_ij||_1`` in the score (>= 0).
      buckets: number of static kept-count buckets, multiples of ``ceil(n / buckets)``
        (>= 1). More buckets waste less work but compile more branches.
    """

    threshold: float
    gamma1: float = 0.0
    gamma2: float = 1.0
    buckets: int = 8

    def __post_init__(self) -> None:
        t = self.threshold
        if not _is_real(t) or not (math.isfinite(t) and t >= 0.0):
            raise ValueError(f"threshold={t!r} must be a finite number >= 0")
        _check_gammas(self.gamma1, self.gamma2)
        b = self.buckets
        if not isinstance(b, numbers.Integral) or isinstance(b, bool) or b < 1:
            raise ValueError(f"buckets={b!r} must be an integer >= 1")

    def bucket_sizes(self, num_channels: int) -> tuple[int, ...]:
        """Static kept counts the backward can run with, ascending, ending at ``n``."""
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels!r}.")
        step = -(-num_channels // self.buckets)
        return tuple(sorted({min(num_channels, m * step) for m in range(1, self.buckets + 1)}))


Policy = TopK | Threshold


# ----------------------------------------------------------------------------------------
# Selection (pure helpers).
# ----------------------------------------------------------------------------------------


def _dimension_numbers(
    lhs_shape: Sequence[int], rhs_shape: Sequence[int], dimension_numbers: Any
) -> lax.ConvDimensionNumbers:
    return lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), dimension_numbers)


def _score_dtype(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)


def _sum_over_all_but(x: jax.Array, axis: int, xla_cpu: bool) -> jax.Array:
    """``jnp.sum`` over every axis of ``x`` but ``axis``.

    With the backend switch on and ``axis`` the minor one (NHWC error maps), the sum runs
    on :mod:`backends.xla_cpu.channel_fold`'s wide view, which XLA:CPU sums faster.
    """
    if xla_cpu and axis == x.ndim - 1:
        return channel_fold.channel_sum(x)
    return jnp.sum(x, axis=tuple(a for a in range(x.ndim) if a != axis))


def _scores(
    kernel: jax.Array,
    delta: jax.Array,
    gamma1: float,
    gamma2: float,
    dn: lax.ConvDimensionNumbers,
    xla_cpu: bool = False,
) -> jax.Array:
    out_axis, batch_axis, rhs_axis = dn.out_spec[1], dn.out_spec[0], dn.rhs_spec[0]
    dtype = _score_dtype(delta.dtype)
    n = delta.shape[out_axis]
    scores = jnp.zeros((n,), dtype)
    if gamma2 != 0.0:
        l1 = _sum_over_all_but(jnp.abs(delta.astype(dtype)), out_axis, xla_cpu)
        scores = scores + gamma2 * l1
    if gamma1 != 0.0:
        axes = tuple(a for a in range(kernel.ndim) if a != rhs_axis)
        kernel_l1 = jnp.sum(jnp.abs(kernel.astype(dtype)), axis=axes)
        scores = scores + (gamma1 * delta.shape[batch_axis]) * kernel_l1
    return scores


def channel_scores(
    kernel: jax.Array,
    delta: jax.Array,
    *,
    gamma1: float = 0.0,
    gamma2: float = 1.0,
    dimension_numbers: Any = None,
) -> jax.Array:
    """Batch channel importance ``S_j`` of Eq. 11 (Eq. 14 when ``gamma1 = 0``).

    ``S_j = N * gamma1 * ||W_j||_1 + gamma2 * sum_i ||delta_ij||_1``, where ``||W_j||_1``
    sums ``|w|`` over the whole kernel of output channel ``j`` and ``||delta_ij||_1`` sums
    ``|delta|`` over the spatial positions of channel ``j`` of instance ``i``.

    Args:
      kernel: the conv kernel (``rhs`` of the conv).
      delta: the output error map, shaped like the conv's output.
      gamma1: kernel-norm weight (a Python float; 0 skips that term).
      gamma2: error-norm weight (a Python float; 0 skips that term).
      dimension_numbers: as for :func:`jax.lax.conv_general_dilated`; ``None`` means lax's
        default ``NC...`` / ``OI...`` layout (pass ``("NHWC", "HWIO", "NHWC")`` for flax).

    Returns:
      ``[n]`` scores in float32 (or wider if the inputs are wider).
    """
    delta, kernel = jnp.asarray(delta), jnp.asarray(kernel)
    dn = _dimension_numbers(delta.shape, kernel.shape, dimension_numbers)
    return _scores(kernel, delta, float(gamma1), float(gamma2), dn)


def _threshold_mask(scores: jax.Array, threshold: float) -> jax.Array:
    return scores >= threshold * jnp.mean(scores)


def select_channels(
    policy: Policy,
    kernel: jax.Array,
    delta: jax.Array,
    *,
    dimension_numbers: Any = None,
) -> jax.Array:
    """Boolean ``[n]`` mask of the output-error channels ``policy`` keeps (Eq. 11).

    ``TopK`` keeps the ``policy.num_kept(n)`` largest scores (ties go to the lower index,
    as in :func:`jax.lax.top_k`); ``Threshold`` keeps ``S_j >= threshold * mean(S)``.
    This is the selection the backward of :func:`conv_general_dilated` makes (exactly with
    the backend switch off; on, its per-channel sums are folded, equal up to rounding).

    Args:
      policy: a :class:`TopK` or :class:`Threshold`.
      kernel: the conv kernel.
      delta: the output error map.
      dimension_numbers: as for :func:`jax.lax.conv_general_dilated`.

    Returns:
      ``[n]`` bool array, True for kept channels.
    """
    if not isinstance(policy, (TopK, Threshold)):
        raise TypeError(f"policy must be a TopK or Threshold, got {type(policy).__name__}.")
    delta, kernel = jnp.asarray(delta), jnp.asarray(kernel)
    dn = _dimension_numbers(delta.shape, kernel.shape, dimension_numbers)
    scores = _scores(kernel, delta, policy.gamma1, policy.gamma2, dn)
    n = scores.shape[0]
    if isinstance(policy, TopK):
        _, idx = lax.top_k(scores, policy.num_kept(n))
        return jnp.zeros((n,), bool).at[idx].set(True)
    return _threshold_mask(scores, policy.threshold)


def kept_channels(grads: Any) -> dict[str, jax.Array]:
    """Per conv layer of a gradient pytree, the output channels the backward kept.

    EMP's backward computes the weight gradient (Eq. 12) on the kept channels only and
    scatters it into a zero kernel gradient, so a pruned channel's gradient is exactly
    zero. This counts, for every conv kernel in ``grads`` (a leaf named ``kernel`` with
    at least 3 dimensions, output features last: flax's layout), the output channels
    whose gradient is not all zero. That is the number of channels the step kept, less
    any kept channel whose output error was zero over the whole batch (which adds
    nothing to either backward convolution); for a dense (unpruned) layer, its
    channels with any gradient. With :class:`TopK` the kept number is fixed,
    ``num_kept(n)``; with :class:`Threshold` it varies from step to step.

    Counting costs one comparison and one reduction per kernel weight, no host sync;
    the gradients are what the step computes anyway.

    Args:
      grads: gradients of a flax model's parameters (e.g. ``{"Conv_1": {"kernel": ...}}``).

    Returns:
      ``{layer path: int32 scalar}``, the path being the kernel's module path joined by
      ``/`` (``"Conv_1"``, ``"BasicBlock_0/Conv_0"``).
    """
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        names = [str(getattr(entry, "key", entry)) for entry in path]
        if names[-1] == "kernel" and leaf.ndim >= 3:
            nonzero = jnp.any(leaf != 0, axis=tuple(range(leaf.ndim - 1)))
            out["/".join(names[:-1])] = jnp.sum(nonzero, dtype=jnp.int32)
    return out


# ----------------------------------------------------------------------------------------
# Accounting.
# ----------------------------------------------------------------------------------------


def _num_channels(
    output_shape: Sequence[int], kernel_shape: Sequence[int], dimension_numbers: Any
) -> int:
    dn = _dimension_numbers(output_shape, kernel_shape, dimension_numbers)
    n, n_kernel = output_shape[dn.out_spec[1]], kernel_shape[dn.rhs_spec[0]]
    if n != n_kernel:
        raise ValueError(
            f"output_shape {tuple(output_shape)} has {n} channels but kernel_shape "
            f"{tuple(kernel_shape)} has {n_kernel} output features; check "
            f"dimension_numbers (got {dimension_numbers!r}, None means NC.../OI...)."
        )
    return int(n)


def backward_macs(
    output_shape: Sequence[int],
    kernel_shape: Sequence[int],
    *,
    dimension_numbers: Any = None,
    kept_channels: int | None = None,
) -> int:
    """Multiply-accumulates of a conv layer's backward pass, Eq. 8 plus Eq. 12.

    Each of error propagation (Eq. 8) and weight gradient (Eq. 12) costs as many MACs as
    the forward pass, ``prod(output_shape) * prod(kernel_shape) / n``; keeping ``n'``
    channels scales both by ``n' / n``.

    Args:
      output_shape: shape of the conv output (and of ``delta``).
      kernel_shape: shape of the kernel.
      dimension_numbers: as for :func:`jax.lax.conv_general_dilated`.
      kept_channels: ``n'``; ``None`` means all ``n`` (the dense backward).

    Returns:
      The MAC count as a Python int.
    """
    n = _num_channels(output_shape, kernel_shape, dimension_numbers)
    kept = n if kept_channels is None else int(kept_channels)
    if not 0 <= kept <= n:
        raise ValueError(f"kept_channels must be in [0, {n}], got {kept_channels!r}.")
    forward = math.prod(output_shape) * math.prod(kernel_shape) // n
    return 2 * forward * kept // n


def selection_macs(
    output_shape: Sequence[int],
    kernel_shape: Sequence[int],
    *,
    dimension_numbers: Any = None,
) -> int:
    """Operations the channel selection (Eq. 11 + top-k or threshold) costs, as a count.

    Every add, compare or scale counts as one operation on the MAC scale (an upper bound:
    an add is cheaper than a multiply-accumulate):

    * ``sum_i ||delta_ij||_1``: one add per element of ``delta``, ``N * H * W * n``;
    * ``||W_j||_1``: one add per kernel weight, ``kh * kw * c_in * n`` (counted even when
      ``gamma1 = 0`` skips it);
    * combining the two terms: ``2 n``; the mean of a threshold rule: ``n``;
    * selecting: ``n * ceil(log2 n)`` comparisons (a sort; top-k is no dearer).

    Args:
      output_shape: shape of the conv output (and of ``delta``).
      kernel_shape: shape of the kernel.
      dimension_numbers: as for :func:`jax.lax.conv_general_dilated`.

    Returns:
      The operation count as a Python int.
    """
    n = _num_channels(output_shape, kernel_shape, dimension_numbers)
    compare = n * max(1, math.ceil(math.log2(n))) if n > 1 else 0
    return math.prod(output_shape) + math.prod(kernel_shape) + 3 * n + compare


# ----------------------------------------------------------------------------------------
# The pruned convolution: op, _fwd, _bwd, defvjp.
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ConvConfig:
    """Static (hashable) arguments of one pruned conv call."""

    policy: Policy
    error_transform: ErrorTransform | None
    spec: conv_backward.ConvSpec
    xla_cpu: bool

    @property
    def dimension_numbers(self) -> lax.ConvDimensionNumbers:
        return self.spec.dimension_numbers


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _pruned_conv(config: _ConvConfig, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """The convolution itself; only its backward differs from lax's."""
    return config.spec.apply(lhs, rhs)


def _pruned_conv_fwd(
    config: _ConvConfig, lhs: jax.Array, rhs: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return config.spec.apply(lhs, rhs), (lhs, rhs)


def _keep_along(mask: jax.Array, ndim: int, axis: int) -> jax.Array:
    """Reshapes a ``[c]`` mask to broadcast along ``axis`` of an ``ndim`` array."""
    shape = [1] * ndim
    shape[axis] = mask.shape[0]
    return mask.reshape(shape)


def _lax_vjp(
    config: _ConvConfig, lhs: jax.Array, rhs: jax.Array, delta: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Both cotangents of the convolution, exactly as :func:`jax.vjp` of lax's gives them."""
    _, vjp = jax.vjp(config.spec.apply, lhs, rhs)
    return vjp(delta)


def _kept_vjp(
    config: _ConvConfig, lhs: jax.Array, rhs: jax.Array, delta: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Eq. 8 and Eq. 12 for the (kept channels') output error ``delta``: lax's vjp.

    With the backend switch on, :func:`backends.xla_cpu.conv_backward.conv_vjp` (the same
    values, Eq. 8 as a GEMM where lax's transposed conv would mostly multiply zeros).
    """
    if config.xla_cpu:
        return conv_backward.conv_vjp(config.spec, lhs, rhs, delta)
    return _lax_vjp(config, lhs, rhs, delta)


def _gathered_vjp(
    config: _ConvConfig,
    lhs: jax.Array,
    rhs: jax.Array,
    delta: jax.Array,
    idx: jax.Array,
    keep: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Eq. 8 and Eq. 12 on the ``len(idx)`` gathered channels only (static count).

    ``keep`` (a ``[n]`` mask) zeroes gathered channels that are not really kept.
    """
    dn = config.dimension_numbers
    out_axis, rhs_axis = dn.out_spec[1], dn.rhs_spec[0]
    take = functools.partial(jnp.take, indices=idx, mode="clip", unique_indices=True)
    rhs_k = take(rhs, axis=rhs_axis)
    delta_k = take(delta, axis=out_axis)
    if keep is not None:
        live = _keep_along(keep[idx], delta_k.ndim, out_axis)
        delta_k = jnp.where(live, delta_k, jnp.zeros((), delta_k.dtype))
    g_lhs, g_rhs_k = _kept_vjp(config, lhs, rhs_k, delta_k)
    where = (slice(None),) * rhs_axis + (idx,)
    g_rhs = jnp.zeros(rhs.shape, g_rhs_k.dtype).at[where].set(g_rhs_k, unique_indices=True)
    return g_lhs, g_rhs


def _threshold_vjp(
    config: _ConvConfig,
    policy: Threshold,
    lhs: jax.Array,
    rhs: jax.Array,
    delta: jax.Array,
    scores: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Exact threshold rule, run on the smallest static bucket that holds the kept set."""
    dn = config.dimension_numbers
    n = scores.shape[0]
    keep = _threshold_mask(scores, policy.threshold)
    _, order = lax.top_k(scores, n)  # kept channels first: they hold the top scores
    sizes = (0, *policy.bucket_sizes(n))

    def skip(_):
        return jnp.zeros(lhs.shape, lhs.dtype), jnp.zeros(rhs.shape, rhs.dtype)

    def masked_dense(_):
        live = _keep_along(keep, delta.ndim, dn.out_spec[1])
        masked = jnp.where(live, delta, jnp.zeros((), delta.dtype))
        return _kept_vjp(config, lhs, rhs, masked)

    def gathered(k: int) -> Callable[[Any], tuple[jax.Array, jax.Array]]:
        return lambda _: _gathered_vjp(config, lhs, rhs, delta, order[:k], keep)

    branches = [skip] + [gathered(k) if k < n else masked_dense for k in sizes[1:]]
    count = jnp.sum(keep, dtype=jnp.int32)
    index = jnp.searchsorted(jnp.asarray(sizes, jnp.int32), count, side="left")

    def cast(grads: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        return grads[0].astype(lhs.dtype), grads[1].astype(rhs.dtype)

    return lax.switch(index, [lambda x, b=b: cast(b(x)) for b in branches], None)


def _pruned_conv_bwd(
    config: _ConvConfig, residuals: tuple[jax.Array, jax.Array], delta: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Eq. 8 and Eq. 12 on the channels kept by Eq. 11, with real (gathered) savings."""
    lhs, rhs = residuals
    if config.error_transform is not None:
        transformed = config.error_transform(delta)
        if jnp.shape(transformed) != delta.shape:
            raise ValueError(
                f"error_transform must keep delta's shape {delta.shape}, "
                f"got {jnp.shape(transformed)}."
            )
        delta = jnp.asarray(transformed).astype(delta.dtype)
    policy = config.policy
    dn = config.dimension_numbers
    n = rhs.shape[dn.rhs_spec[0]]
    topk = isinstance(policy, TopK) and policy.num_kept(n) < n
    threshold = isinstance(policy, Threshold) and policy.threshold > 0.0
    if not (topk or threshold):  # every channel is kept: bit-for-bit lax's backward
        g_lhs, g_rhs = _lax_vjp(config, lhs, rhs, delta)
        return g_lhs.astype(lhs.dtype), g_rhs.astype(rhs.dtype)
    if config.xla_cpu:  # Read twice (scores, gather): computed once, into its own buffer.
        delta = own_buffer.own_buffer(delta)
    scores = _scores(rhs, delta, policy.gamma1, policy.gamma2, dn, config.xla_cpu)
    if topk:
        _, idx = lax.top_k(scores, policy.num_kept(n))
        g_lhs, g_rhs = _gathered_vjp(config, lhs, rhs, delta, idx)
    else:
        g_lhs, g_rhs = _threshold_vjp(config, policy, lhs, rhs, delta, scores)
    return g_lhs.astype(lhs.dtype), g_rhs.astype(rhs.dtype)


_pruned_conv.defvjp(_pruned_conv_fwd, _pruned_conv_bwd)


@dataclasses.dataclass(frozen=True)
class PrunedConv:
    """Drop-in :func:`jax.lax.conv_general_dilated` with an error-map-pruned backward.

    Made by :func:`conv_general_dilated`; frozen and hashable, so two made from equal
    policies compare equal (useful as a flax module field). ``xla_cpu`` is the resolved
    backend switch (see the module doc).
    """

    policy: Policy
    error_transform: ErrorTransform | None = None
    xla_cpu: bool = False

    def __call__(
        self,
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
        out_sharding: Any = None,
    ) -> jax.Array:
        """Same arguments and forward result as :func:`jax.lax.conv_general_dilated`."""
        if feature_group_count != 1 or batch_group_count != 1:
            raise NotImplementedError(
                "emp.conv_general_dilated supports ungrouped convolutions only, got "
                f"feature_group_count={feature_group_count}, "
                f"batch_group_count={batch_group_count}."
            )
        if out_sharding is not None:
            raise NotImplementedError("emp.conv_general_dilated does not take out_sharding.")
        lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
        if self.xla_cpu:  # Read by the forward and the backward: in a buffer of its own.
            lhs = own_buffer.own_buffer(lhs)
        config = _ConvConfig(
            policy=self.policy,
            error_transform=self.error_transform,
            xla_cpu=self.xla_cpu,
            spec=conv_backward.ConvSpec.create(
                lhs.shape,
                rhs.shape,
                window_strides,
                padding,
                lhs_dilation,
                rhs_dilation,
                dimension_numbers,
                precision,
                preferred_element_type,
            ),
        )
        return _pruned_conv(config, lhs, rhs)


def conv_general_dilated(
    policy: Policy,
    *,
    error_transform: ErrorTransform | None = None,
    xla_cpu: bool | None = None,
) -> PrunedConv:
    """A :func:`jax.lax.conv_general_dilated` whose backward keeps selected channels only.

    The forward pass is lax's. The backward (a :func:`jax.custom_vjp`) scores the output
    error channels with Eq. 11 (Eq. 14 for the default gammas), keeps those ``policy``
    selects, and computes error propagation (Eq. 8) and the weight gradient (Eq. 12) on
    the gathered kept channels only; pruned channels get zero weight gradient and do not
    contribute to the input error.

    Args:
      policy: :class:`TopK` or :class:`Threshold`.
      error_transform: optional static callable ``delta -> delta'`` applied to the output
        error map at the start of the backward, before scoring and before both backward
        convolutions (default: identity). It must be traceable, keep the shape, and be
        hashable (plain functions are); its result is cast back to ``delta``'s dtype. The
        k-bit quantization module passes its error quantizer here so that error maps are
        quantized inside this same backward.
      xla_cpu: :mod:`edgefilter.backends`' switch (see the module doc); ``None``
        resolves it from JAX's backend. The values are the same either way.

    Returns:
      A callable with :func:`jax.lax.conv_general_dilated`'s signature, for example
      ``flax.linen.Conv(..., conv_general_dilated=conv_general_dilated(TopK(0.5)))``.
    """
    if not isinstance(policy, (TopK, Threshold)):
        raise TypeError(f"policy must be a TopK or Threshold, got {type(policy).__name__}.")
    if error_transform is not None and not callable(error_transform):
        raise TypeError(f"error_transform must be callable or None, got {error_transform!r}.")
    return PrunedConv(
        policy=policy, error_transform=error_transform, xla_cpu=backends.use_xla_cpu(xla_cpu)
    )


# ----------------------------------------------------------------------------------------
# Pruning an unmodified flax model: method interception.
# ----------------------------------------------------------------------------------------


class _PruningInterceptor:
    """The flax method interceptor behind :func:`pruning` (one per ``with`` block).

    It sees every wrapped method call of every module. A call that arrives while no other
    intercepted call is running (``depth == 0``) starts a new top-level module call (an
    ``apply`` or ``init``), so the record of that call's first convolution is reset.
    """

    def __init__(self, conv: PrunedConv, skip_first: bool) -> None:
        self.conv = conv
        self.skip_first = skip_first
        self.depth = 0
        self.first: tuple[str, ...] | None = None  # scope path of the first nn.Conv called

    def __call__(self, next_fun: Callable[..., Any], args: Any, kwargs: Any, context: Any) -> Any:
        if self.depth == 0:
            self.first = None
        self.depth += 1
        try:
            return self._intercept(next_fun, args, kwargs, context)
        finally:
            self.depth -= 1

    def _intercept(self, next_fun: Callable[..., Any], args: Any, kwargs: Any, context: Any) -> Any:
        module = context.module
        if (
            context.method_name != "__call__"
            or not isinstance(module, nn.Conv)
            or module.conv_general_dilated is self.conv  # the clone made below
        ):
            return next_fun(*args, **kwargs)
        path = tuple(module.scope.path)
        if self.first is None:
            self.first = path
        if self.skip_first and path == self.first:
            return next_fun(*args, **kwargs)
        own = module.conv_general_dilated_cls or module.conv_general_dilated
        if own not in (None, lax.conv_general_dilated, conv_backward.conv_general_dilated):
            raise ValueError(
                f"emp.pruning: nn.Conv {'/'.join(path)!r} computes its convolution with "
                f"{own!r}; pruning replaces only lax.conv_general_dilated (flax's default, "
                "or its XLA:CPU lowering that edgefilter.models uses with the switch on). "
                "Build that layer with conv_general_dilated=emp.conv_general_dilated(policy) "
                "(quant.conv_general_dilated takes a policy too) instead."
            )
        # The same layer (same scope: same parameters, names and rngs) with EMP's primitive.
        pruned = module.clone(
            parent=module.scope, conv_general_dilated=self.conv, conv_general_dilated_cls=None
        )
        return getattr(pruned, context.method_name)(*args, **kwargs)


def pruning(
    policy: Policy, *, skip_first: bool = True, xla_cpu: bool | None = None
) -> contextlib.AbstractContextManager[None]:
    """Error map pruning for every ``flax.linen.Conv`` of an unmodified flax model.

    Inside the ``with`` block every :class:`flax.linen.Conv` computes its convolution with
    ``conv_general_dilated(policy)``: the forward pass is unchanged, and the backward
    scores the output-error channels by Eq. 11 (Eq. 14 for the default gammas) and runs
    error propagation (Eq. 8) and the weight gradient (Eq. 12) on the kept channels only.
    It is the same as building each layer with ``conv_general_dilated=`` this module's
    :func:`conv_general_dilated` (and the first one without it, see ``skip_first``),
    without editing the model::

        with emp.pruning(emp.TopK(0.5)):
            grads = jax.grad(loss_fn)(params)   # loss_fn calls model.apply

    The layers keep their parameters, names and random streams (each is run as a clone
    bound to its own scope, by :func:`flax.linen.intercept_methods`), so ``init`` gives
    the same variables inside and outside the block.

    Args:
      policy: :class:`TopK` or :class:`Threshold`.
      skip_first: leave the first ``nn.Conv`` that each top-level module call (each
        ``apply`` or ``init`` of the outermost module) calls dense: the layer that sees
        the input, whose input error nobody needs (see "First layer" in the module
        docstring; edgefilter's training leaves it dense by default too). The layer is
        identified by its scope path, so a shared layer called again later in the same
        call stays dense too. ``False`` prunes every ``nn.Conv``.
      xla_cpu: the backend switch of :func:`conv_general_dilated` (``None``: on when
        JAX's default backend is the CPU; see :mod:`edgefilter.backends`).

    Returns:
      A context manager; the interception is active until its block exits.

    Raises:
      TypeError: ``policy`` is not a :class:`TopK` or :class:`Threshold`.
      ValueError: ``skip_first`` is not a bool; or, while a model runs in the block, a
        layer to be pruned was built with a primitive of its own (``conv_general_dilated``
        or ``conv_general_dilated_cls`` other than lax's), which pruning would silently
        replace: build that layer with the explicit primitive instead.

    Notes:
      * The interception acts when the model's Python code runs, that is while a
        function is traced. A function ``jax.jit`` traced *outside* the block does not
        prune when called inside it (its compiled program is reused), and one traced
        inside keeps pruning when called later outside. Put the block inside the jitted
        function (``with emp.pruning(p): return jax.grad(loss_fn)(params)``), as
        ``tests/test_emp_pruning.py`` does.
      * Only ``nn.Conv`` is intercepted: ``nn.ConvTranspose`` and ``nn.ConvLocal`` take
        no ``conv_general_dilated`` and stay dense, as do dense layers. Grouped
        convolutions raise :class:`NotImplementedError`, as with the explicit primitive.
    """
    conv = conv_general_dilated(policy, xla_cpu=xla_cpu)
    if not isinstance(skip_first, bool):
        raise ValueError(f"skip_first must be True or False, got {skip_first!r}.")
    return nn.intercept_methods(_PruningInterceptor(conv, skip_first))
