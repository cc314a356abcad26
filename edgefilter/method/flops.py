"""Computation accounting: multiply-accumulates (MACs) of training one instance.

PAPER.md, "Computation accounting": the paper counts computation the way THOP counts it,
as the multiply-accumulates of the conv and dense (linear) layers. This module applies
that convention to every network of :mod:`edgefilter.models` by building the model with
counting ``conv_general_dilated`` / ``dot_general`` primitives and tracing it once with
:func:`jax.eval_shape` (no compilation, no arithmetic), so it counts exactly the layers
the model calls, with the shapes it calls them with.

Conventions (all counts are per instance, Python ints unless stated):

* **Forward.** A conv layer costs ``output elements * (kh * kw * c_in / groups)``, i.e.
  ``H_out * W_out * c_out * kh * kw * c_in / groups`` (padding taps included, as THOP
  counts them); a dense layer costs ``in * out``. Batch norm, ReLU, pooling, residual
  adds, bias adds, softmax and the loss are *not* counted.
* **Backward.** Error propagation (Eq. 8, ``delta_in = sum_j rot(W_j) * delta_j``, a
  transposed conv; for a dense layer ``delta @ W.T``) and the weight gradient (Eq. 12,
  ``g_W_j = a * delta_j``; for a dense layer ``a.T @ delta``) each cost as many MACs as
  the layer's forward pass. The exception is the **first** layer (the first conv/dense
  layer the model calls, which reads the input data): its input error is never needed,
  so its error propagation is counted as 0. ``train = forward + error_propagation +
  weight_gradient``, a little under 3x the forward.
* **Error map pruning** (:func:`emp_train`). Keeping ``k = ceil(keep_ratio * n)`` of a
  conv layer's ``n`` output-error channels (``edgefilter.emp.TopK``) scales both of its
  backward parts by exactly ``k / n``; dense layers are not pruned, nor is the first
  conv layer unless ``prune_first_layer`` (as ``train.build_model`` builds them). The
  channel selection is counted separately as ``selection`` (see :func:`emp_selection`).
* **Bits** (:func:`bit_ops`, :func:`scale_for_bits`). A MAC of an ``a``-bit by a
  ``b``-bit operand costs ``a * b / 32**2`` of a 32-bit MAC; counts scaled this way are
  in "BOP" (32-bit-MAC equivalents), so full-precision counts are unchanged.

XLA counts differently in two ways (checked in ``tests/test_flops.py``): its cost
analysis reports 2 flops per MAC, and for a padded convolution it counts only the taps
that read real input, never the zero padding. :attr:`LayerCost.unpadded_forward` gives
that count, so a compiled step can be reconciled with the THOP-style numbers.

Results are cached (:func:`functools.lru_cache`): repeated calls cost nothing.

Example::

    from edgefilter.method import flops
    sgd = flops.per_instance("resnet110", (32, 32, 3), 10)["train"]
    emp = flops.emp_train("resnet110", (32, 32, 3), 10, keep_ratio=0.5, batch_size=128)
    saved = 1 - emp["train"] / sgd
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from edgefilter import models
from edgefilter.method import emp

__all__ = [
    "KEYS",
    "LayerCost",
    "bit_ops",
    "emp_selection",
    "emp_train",
    "per_instance",
    "per_layer",
    "scale_for_bits",
]

#: Keys of the dicts returned by :func:`per_instance` (and :func:`emp_train`, which adds
#: ``"selection"``).
KEYS = ("forward", "error_propagation", "weight_gradient", "train")

_FULL_PRECISION_BITS = 32


class LayerCost(NamedTuple):
    """MACs of one conv or dense layer for one instance.

    Attributes:
      name: the layer's flax module path, e.g. ``"BasicBlock_1/Conv_0"``.
      kind: ``"conv"`` or ``"dense"``.
      forward: forward MACs (THOP: output elements times kernel taps per output).
      error_propagation: MACs of the input error (Eq. 8); ``forward``, or 0 for the first
        layer.
      weight_gradient: MACs of the weight gradient (Eq. 12); equals ``forward``.
      output_channels: ``n``, the output features (the channels EMP selects among).
      output_shape: output shape of one instance, channels last (``(H, W, n)`` for a 2-D
        conv, ``(n,)`` for a dense layer on a vector).
      kernel_shape: the kernel's shape, ``(kh, kw, c_in / groups, n)`` or ``(in, n)``.
      unpadded_forward: forward MACs whose input operand is real input, not padding: what
        XLA's cost analysis counts (equals ``forward`` for unpadded convs and dense).
    """

    name: str
    kind: str
    forward: int
    error_propagation: int
    weight_gradient: int
    output_channels: int
    output_shape: tuple[int, ...]
    kernel_shape: tuple[int, ...]
    unpadded_forward: int


# ----------------------------------------------------------------------------------------
# Tracing with counting primitives.
# ----------------------------------------------------------------------------------------


def _valid_taps(
    in_size: int,
    out_size: int,
    window: int,
    stride: int,
    pad_lo: int,
    lhs_dilation: int,
    rhs_dilation: int,
) -> int:
    """(output position, kernel tap) pairs of one spatial axis that read real input."""
    last = (in_size - 1) * lhs_dilation  # last real position of the dilated input
    count = 0
    for i in range(out_size):
        for k in range(window):
            pos = i * stride + k * rhs_dilation - pad_lo
            count += 0 <= pos <= last and pos % lhs_dilation == 0
    return count


class _Recorder:
    """Counting conv/dot primitives plus a flax interceptor that names the layers."""

    def __init__(self) -> None:
        self.layers: list[tuple[str, str, int, int, tuple[int, ...], tuple[int, ...]]] = []
        self._modules: list[nn.Module] = []

    def _name(self, kind: str) -> str:
        if self._modules and self._modules[-1].path:
            return "/".join(str(p) for p in self._modules[-1].path)
        return f"{kind}_{len(self.layers)}"

    def intercept(self, next_fun: Callable[..., Any], args: Any, kwargs: Any, context: Any) -> Any:
        """``nn.intercept_methods`` hook: keeps the stack of modules being called."""
        self._modules.append(context.module)
        try:
            return next_fun(*args, **kwargs)
        finally:
            self._modules.pop()

    def conv(
        self,
        lhs: jax.Array,
        rhs: jax.Array,
        window_strides: Sequence[int],
        padding: Any,
        lhs_dilation: Sequence[int] | None = None,
        rhs_dilation: Sequence[int] | None = None,
        dimension_numbers: Any = None,
        feature_group_count: int = 1,
        batch_group_count: int = 1,
        **kwargs: Any,
    ) -> jax.Array:
        """Drop-in ``lax.conv_general_dilated`` that records the layer's cost."""
        out = lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            **kwargs,
        )
        dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        nsp = len(dn.lhs_spec) - 2
        out_shape = (*(out.shape[d] for d in dn.out_spec[2:]), out.shape[dn.out_spec[1]])
        kernel_shape = (
            *(rhs.shape[d] for d in dn.rhs_spec[2:]),
            rhs.shape[dn.rhs_spec[1]],
            rhs.shape[dn.rhs_spec[0]],
        )
        batch = out.shape[dn.out_spec[0]]
        taps_per_output = math.prod(kernel_shape[:-1])  # kh * kw * c_in / groups
        forward = math.prod(out.shape) // batch * taps_per_output
        # Taps reading real input (XLA's count): per spatial axis, then times channels.
        in_sp = [lhs.shape[d] for d in dn.lhs_spec[2:]]
        win = list(kernel_shape[:nsp])
        ld = list(lhs_dilation or (1,) * nsp)
        rd = list(rhs_dilation or (1,) * nsp)
        if isinstance(padding, str):
            dilated_in = [(s - 1) * d + 1 for s, d in zip(in_sp, ld, strict=True)]
            dilated_win = [(s - 1) * d + 1 for s, d in zip(win, rd, strict=True)]
            padding = lax.padtype_to_pads(dilated_in, dilated_win, window_strides, padding)
        unpadded = (
            math.prod(
                _valid_taps(
                    in_sp[a], out_shape[a], win[a], window_strides[a], padding[a][0], ld[a], rd[a]
                )
                for a in range(nsp)
            )
            * kernel_shape[-2]
            * kernel_shape[-1]
        )
        self.layers.append(("conv", self._name("conv"), forward, unpadded, out_shape, kernel_shape))
        return out

    def dot(
        self, lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any, *args: Any, **kwargs: Any
    ) -> jax.Array:
        """Drop-in ``lax.dot_general`` that records the layer's cost (in * out)."""
        out = lax.dot_general(lhs, rhs, dimension_numbers, *args, **kwargs)
        (lhs_contract, _), _ = dimension_numbers
        # Traced with one instance, so every output element is this instance's.
        forward = math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract)
        out_shape, kernel_shape = tuple(out.shape[1:]), tuple(rhs.shape)
        self.layers.append(
            ("dense", self._name("dense"), forward, forward, out_shape, kernel_shape)
        )
        return out


def _options_key(options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(options.items()))


def _input_key(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (H, W, C) of positive ints, got {input_shape!r}.")
    return shape


@functools.cache
def _layers(
    model_name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    options: tuple[tuple[str, Any], ...],
) -> tuple[LayerCost, ...]:
    recorder = _Recorder()
    model = models.create(
        model_name,
        num_classes,
        conv_general_dilated=recorder.conv,
        dot_general=recorder.dot,
        **dict(options),
    )
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    with nn.intercept_methods(recorder.intercept):
        # Batch 1 and eval mode: the shapes, hence the counts, are one instance's.
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return tuple(
        LayerCost(
            name=name,
            kind=kind,
            forward=forward,
            error_propagation=0 if index == 0 else forward,
            weight_gradient=forward,
            output_channels=out_shape[-1],
            output_shape=out_shape,
            kernel_shape=kernel_shape,
            unpadded_forward=unpadded,
        )
        for index, (kind, name, forward, unpadded, out_shape, kernel_shape) in enumerate(
            recorder.layers
        )
    )


# ----------------------------------------------------------------------------------------
# Public counts.
# ----------------------------------------------------------------------------------------


def per_layer(
    model_name: str, input_shape: Sequence[int], num_classes: int, **options: Any
) -> tuple[LayerCost, ...]:
    """Per-layer MACs of one instance, in the order the model calls its layers.

    Conventions of PAPER.md "Computation accounting" (THOP), see the module docstring:
    forward = output elements x taps per output (conv) or in x out (dense); error
    propagation (Eq. 8) = forward except 0 for the first layer; weight gradient (Eq. 12)
    = forward. Batch norm, activations, pooling and adds are not counted.

    Args:
      model_name: a name in ``edgefilter.models.MODEL_NAMES``.
      input_shape: ``(H, W, C)`` of one instance.
      num_classes: the model's output size.
      **options: passed to ``edgefilter.models.create`` (e.g. ``head="imagenet"``).

    Returns:
      A tuple of :class:`LayerCost` (cached: the same tuple on every call).
    """
    return _layers(model_name, _input_key(input_shape), int(num_classes), _options_key(options))


def _totals(layers: Sequence[LayerCost]) -> dict[str, int]:
    forward = sum(layer.forward for layer in layers)
    error = sum(layer.error_propagation for layer in layers)
    weight = sum(layer.weight_gradient for layer in layers)
    return {
        "forward": forward,
        "error_propagation": error,
        "weight_gradient": weight,
        "train": forward + error + weight,
    }


def per_instance(
    model_name: str, input_shape: Sequence[int], num_classes: int, **options: Any
) -> dict[str, int]:
    """MACs of conv and dense layers for one instance of standard SGD training.

    PAPER.md "Computation accounting" (THOP): ``forward`` is the forward pass,
    ``error_propagation`` the input errors of Eq. 8 (every layer but the first, whose
    input is data), ``weight_gradient`` the weight gradients of Eq. 12 (every layer, each
    equal to its forward MACs), ``train`` their sum.

    Args:
      model_name: a name in ``edgefilter.models.MODEL_NAMES``.
      input_shape: ``(H, W, C)`` of one instance.
      num_classes: the model's output size.
      **options: passed to ``edgefilter.models.create``.

    Returns:
      ``{"forward", "error_propagation", "weight_gradient", "train"}`` as ints (a fresh
      dict; the counting itself is cached).

    Example:
      >>> per_instance("lenet", (28, 28, 1), 10)["forward"]
      2293000
    """
    return _totals(per_layer(model_name, input_shape, num_classes, **options))


def _num_kept(keep_ratio: float, layer: LayerCost) -> int:
    return emp.TopK(keep_ratio).num_kept(layer.output_channels)


def _pruned(layers: Sequence[LayerCost], prune_first_layer: bool) -> list[bool]:
    """Which layers EMP prunes: the conv layers, less the first unless asked."""
    convs = [i for i, layer in enumerate(layers) if layer.kind == "conv"]
    pruned = set(convs if prune_first_layer else convs[1:])
    return [i in pruned for i in range(len(layers))]


@functools.cache
def _emp_selection(
    layers: tuple[LayerCost, ...], keep_ratio: float, batch_size: int, prune_first_layer: bool
) -> int:
    total = 0
    for layer, pruned in zip(layers, _pruned(layers, prune_first_layer), strict=True):
        if pruned and _num_kept(keep_ratio, layer) < layer.output_channels:
            total += emp.selection_macs(
                (batch_size, *layer.output_shape),
                layer.kernel_shape,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
    return total


def emp_selection(
    model_name: str,
    input_shape: Sequence[int],
    num_classes: int,
    keep_ratio: float,
    batch_size: int,
    *,
    prune_first_layer: bool = False,
    **options: Any,
) -> int:
    """Operations EMP's channel selection costs for one mini-batch of ``batch_size``.

    For each conv layer whose backward is pruned (``ceil(keep_ratio * n) < n``; the
    first conv layer only with ``prune_first_layer``, as in ``train.build_model``), the
    count of ``edgefilter.emp.selection_macs`` (adds and compares counted as one MAC
    each, an upper bound):

    * per instance: ``||delta_ij||_1`` summed over spatial positions, ``H_out * W_out * n``
      adds (Eq. 11/14);
    * per mini-batch: the kernel norms ``||W_j||_1`` (``kh * kw * c_in * n`` adds), the
      score combination, and the top-k (``n * ceil(log2 n)`` compares).

    With ``keep_ratio == 1`` nothing is selected (EMP runs the dense backward): 0.

    Args:
      model_name: a name in ``edgefilter.models.MODEL_NAMES``.
      input_shape: ``(H, W, C)`` of one instance.
      num_classes: the model's output size.
      keep_ratio: fraction of output-error channels kept, in (0, 1].
      batch_size: instances in the mini-batch that shares one selection (>= 1).
      prune_first_layer: whether the first conv layer is pruned too.
      **options: passed to ``edgefilter.models.create``.

    Returns:
      The whole mini-batch's selection cost, an int.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    emp.TopK(keep_ratio)  # validates keep_ratio
    layers = per_layer(model_name, input_shape, num_classes, **options)
    return _emp_selection(layers, float(keep_ratio), int(batch_size), bool(prune_first_layer))


def emp_train(
    model_name: str,
    input_shape: Sequence[int],
    num_classes: int,
    keep_ratio: float,
    *,
    batch_size: int = 1,
    prune_first_layer: bool = False,
    **options: Any,
) -> dict[str, float]:
    """MACs of one instance trained with error map pruning (``edgefilter.emp.TopK``).

    Forward as in :func:`per_instance`. Each pruned conv layer (every conv layer but the
    first, unless ``prune_first_layer``, as ``train.build_model`` builds them) keeps
    ``k = ceil(keep_ratio * n)`` of its ``n`` output-error channels, so its error
    propagation (Eq. 8) and weight gradient (Eq. 12) are scaled by exactly ``k / n``
    (integers: ``H_out * W_out * k * kh * kw * c_in``). Dense layers are not pruned.
    ``selection`` is the channel selection of :func:`emp_selection` for a mini-batch of
    ``batch_size``, divided by ``batch_size`` (its kernel-norm and top-k parts are
    shared by the mini-batch; the default ``batch_size=1`` charges them to every
    instance, the worst case).

    Args:
      model_name: a name in ``edgefilter.models.MODEL_NAMES``.
      input_shape: ``(H, W, C)`` of one instance.
      num_classes: the model's output size.
      keep_ratio: fraction of output-error channels kept, in (0, 1]; 1 gives
        :func:`per_instance`'s counts and ``selection == 0``.
      batch_size: mini-batch size sharing one selection (>= 1).
      prune_first_layer: whether the first conv layer is pruned too.
      **options: passed to ``edgefilter.models.create``.

    Returns:
      ``{"forward", "error_propagation", "weight_gradient", "selection", "train"}`` with
      ``train = forward + error_propagation + weight_gradient + selection``. The first
      three are ints; ``selection`` and ``train`` are floats (amortised per instance).
    """
    layers = per_layer(model_name, input_shape, num_classes, **options)
    counted = []
    for layer, pruned in zip(layers, _pruned(layers, prune_first_layer), strict=True):
        if pruned:
            k, n = _num_kept(keep_ratio, layer), layer.output_channels
            # forward * k / n is exact: forward is a multiple of n.
            layer = layer._replace(
                error_propagation=layer.error_propagation * k // n,
                weight_gradient=layer.weight_gradient * k // n,
            )
        counted.append(layer)
    totals = _totals(counted)
    selection = (
        emp_selection(
            model_name,
            input_shape,
            num_classes,
            keep_ratio,
            batch_size,
            prune_first_layer=prune_first_layer,
            **options,
        )
        / batch_size
    )
    return {
        "forward": totals["forward"],
        "error_propagation": totals["error_propagation"],
        "weight_gradient": totals["weight_gradient"],
        "selection": selection,
        "train": totals["train"] + selection,
    }


# ----------------------------------------------------------------------------------------
# Bit widths.
# ----------------------------------------------------------------------------------------


def scale_for_bits(bits_a: int, bits_b: int | None = None) -> float:
    """Cost of one ``bits_a`` x ``bits_b`` MAC relative to a 32-bit one: ``a * b / 32**2``.

    Args:
      bits_a: bit width of one operand (>= 1).
      bits_b: bit width of the other operand; ``None`` means ``bits_a``.

    Returns:
      The factor, e.g. ``scale_for_bits(8) == 1 / 16``.
    """
    bits_b = bits_a if bits_b is None else bits_b
    for name, bits in (("bits_a", bits_a), ("bits_b", bits_b)):
        if isinstance(bits, bool) or int(bits) != bits or bits < 1:
            raise ValueError(f"{name} must be a positive integer, got {bits!r}.")
    return float(Fraction(int(bits_a) * int(bits_b), _FULL_PRECISION_BITS**2))


def bit_ops(macs: float, bits_a: int, bits_b: int | None = None) -> float:
    """``macs`` MACs of ``bits_a`` x ``bits_b`` operands in BOP (32-bit-MAC equivalents).

    ``bit_ops(m, 32) == m``; ``bit_ops(m, 8) == m / 16`` (8-bit training, PAPER.md).
    """
    return macs * scale_for_bits(bits_a, bits_b)
