"""k-bit quantized training: Banner et al., NeurIPS 2018, the scheme E2-Train and PAPER.md use.

"Scalable methods for 8-bit training of neural networks" quantizes, in every conv and
dense layer, the two forward operands (weights and input activations) and, in the
backward pass, the output error map ``delta`` (the cotangent of the layer's output);
the products are accumulated at higher precision. This module simulates that scheme in
floating point ("fake quantization"): every quantized tensor holds values on a
``b``-bit uniform grid, and the convolutions/matmuls run on those values in float32.

Public API:

* :func:`conv_general_dilated` and :func:`dot_general`: factories returning drop-in
  replacements for :func:`jax.lax.conv_general_dilated` / :func:`jax.lax.dot_general`
  (same arguments), for ``flax.linen.Conv(conv_general_dilated=...)`` and
  ``flax.linen.Dense(dot_general=...)``. ``bits=32`` returns lax's ``dot_general`` and
  lax's convolution (with :mod:`edgefilter.backends`' switch on, its XLA:CPU lowering
  :func:`~edgefilter.backends.xla_cpu.conv_backward.conv_general_dilated`, same values).
  ``conv_general_dilated(bits, policy=...)`` composes with error map pruning
  (:mod:`edgefilter.emp`).
* :func:`fake_quantize` (forward quantizer, round to nearest), :func:`fake_quantize_ste`
  (the same with a straight-through gradient), :func:`stochastic_quantize` (error-map
  quantizer, stochastic rounding, explicit key), :class:`ErrorQuantizer` /
  :func:`error_quantizer` (the seeded ``delta -> delta`` hook, usable as EMP's
  ``error_transform``), :func:`quantize_cotangent` (identity whose backward transforms
  the cotangent).
* :func:`bit_ops_factor`: cost of an ``a``-bit by ``b``-bit multiply-accumulate relative
  to a 32-bit one, for the accounting module.

Design choices (each one documented where Banner leaves room):

* **Bit widths** ``bits`` in ``{32, 16, 8, 6, 4}``. ``32`` is the unquantized computation
  (lax's own functions, bitwise). ``16`` is a 16-bit *uniform integer grid* like the
  others, not IEEE half precision.
* **Forward quantizer** (weights and activations): asymmetric, one range per tensor
  (``min``/``max`` over the whole tensor, the whole mini-batch for activations),
  deterministic round to nearest, ``2^b`` levels that include both ends of the range::

      Delta = (max(x) - min(x)) / (2^b - 1)
      Q(x)  = min(x) + Delta * round((x - min(x)) / Delta)

  Per-tensor ranges are Banner's choice (and what the BOP accounting assumes); per-output-
  channel weight ranges would be kinder to 4-bit weights but are not used. Asymmetric
  ranges fit post-ReLU activations (``min = 0`` is then exact) without wasting a bit.
* **Straight-through estimator**: the forward quantizer's derivative is taken as the
  identity (:func:`fake_quantize_ste`, a :func:`jax.custom_jvp`), so gradients pass
  through it unchanged, as in Banner (no clipping of the gradient, since the range is the
  tensor's own min/max and nothing is clipped).
* **Error-map quantizer** (backward): symmetric, one range per tensor, stochastic
  rounding, so zeros of ``delta`` (e.g. behind a ReLU) stay exactly zero and the
  quantizer is unbiased::

      K     = 2^(b-1) - 1,   Delta = max|delta| / K
      Q(d)  = Delta * clip(floor(d / Delta + u), -K, K),   u ~ U[0, 1)

  ``E_u[Q(d)] = d`` because ``E[floor(v + u)] = v``. It has ``2^b - 1`` levels (one
  fewer than the forward grid, the price of an exact zero). Keeping zeros exact matters
  for EMP: an asymmetric grid would turn every zero error into ``+-Delta`` noise and blur
  the channel scores ``||delta_ij||_1`` of Eq. 11.
* **Weight-gradient precision**: the weight gradient ``g_W = a * delta`` (Eq. 12) is
  computed from the quantized activation (the residual of the forward, already on its
  grid) and the quantized error, accumulated in float32 by lax's own backward
  convolution/matmul. Float32 has a 24-bit significand, which satisfies Banner's ">= 16
  bits" for this path. Banner's "gradient bifurcation" keeps a separate 16-bit copy of
  ``delta`` for the weight gradient and the 8-bit one for error propagation; here one
  quantized ``delta`` serves both (a single hook is what EMP exposes, and it is the
  stricter choice). The bias gradient (flax adds the bias outside these functions) is a
  sum of the quantized ``delta`` in float32; biases themselves are not quantized.
* **Randomness in the backward**: a ``jax.custom_vjp`` backward gets no key from the
  caller of a drop-in lax function, and EMP's ``error_transform`` is a static callable.
  The error quantizer therefore carries a static integer ``seed`` and derives its noise
  from the data it rounds: ``key = fold_in(key(seed), checksum(delta))`` with
  ``checksum`` the wrapping uint32 sum of ``delta``'s float32 bit patterns (an integer
  sum, so independent of reduction order), then ``u = uniform(key, delta.shape)``. It is
  jittable, hashable (a frozen dataclass, safe as a ``nondiff_argnums`` argument or a
  flax module field), deterministic for a given seed and data, and differs between
  layers and steps because their error maps differ. Nothing closes over a traced key, so
  it composes with any transformation order (``jit(grad)``, ``grad(jit)``, ``vmap``).
  Callers who hold a key can use :func:`stochastic_quantize` directly. The key uses
  JAX's ``"rbg"`` implementation by default: threefry's unrolled rounds cost seconds of
  XLA compile time per error-map shape on CPU (``ErrorQuantizer.prng_impl`` switches).
* **First and last layers**: quantized like every other layer. Banner quantizes all
  layers; the models take one ``conv_general_dilated`` / ``dot_general`` for all their
  layers, so keeping the first and last at higher precision would need per-layer wiring
  that the model contract does not have.
* **Batch norm** stays in float32 (Banner's range batch norm is out of scope); so do
  pooling, residual additions and the loss.

Why not qwix (google/qwix, version 0.1.8 tried, with jax 0.10.2 on CPU)? Its quantized
training (``QtRule(weight_qtype, act_qtype, bwd_qtype, bwd_stochastic_rounding)`` through
``qwix.quantize_model``) does not do this job:

* bit widths: 16-bit is refused ("Cannot use int16 as qtype", only 1-byte qtypes);
  ``jnp.int4`` convolutions fail to compile on XLA CPU ("does not support custom element
  sizes on non-sub-byte types"), and an int8 forward with ``bwd_qtype=int4`` fails with
  mixed int4/int8 conv operands; ``"int6"`` quantizes the forward, but the Dense backward
  with ``bwd_qtype="int6"`` fails an assertion (``dot_general_qt_bwd``: qtype != storage
  dtype), and the synthetic ``int2``-``int7`` types ignore the stochastic-rounding noise
  (``numerics.convert_to`` rounds them to nearest before the noise is added);
* stochastic rounding exists only for ``dot_general`` (Dense); ``ConvGeneralQtConfig`` has
  no noise function, so conv error maps would be rounded to nearest (biased); its noise is
  per axis-0 slice broadcast over the other axes by default, not per element;
* asymmetric (min/max) ranges are refused for weights ("Asymmetric quantization for rhs
  is not supported");
* composition with EMP: qwix's conv is its own ``jax.custom_vjp`` that quantizes ``delta``
  inside its backward with no hook, while EMP must own the conv's backward (channel
  selection, gathered backward convolutions); one op cannot have two backward rules.
  qwix also configures ops by intercepting ``jax.lax.*`` calls inside flax modules and
  requires the weight to be a flax param, so it is not a standalone drop-in function
  for ``nn.Conv(conv_general_dilated=...)``.

What remains usable (the standalone ``qwix.quantize``/``dequantize`` as a forward
fake-quantizer for 2 to 8 bits, with its own ``absmax / (qmax + 0.5)`` scale convention)
is a few lines of ``jnp`` here and would add a dependency that still lacks 16 bits and
the stochastic error quantizer. So this module implements the quantizers itself and
needs no new dependency.

Example::

    conv = quant.conv_general_dilated(8)               # or policy=emp.TopK(0.5)
    dense = quant.dot_general(8)
    layer = flax.linen.Conv(16, (3, 3), conv_general_dilated=conv)
    head = flax.linen.Dense(10, dot_general=dense)
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from jax import lax

from edgefilter import backends
from edgefilter.backends.xla_cpu import conv_backward

if TYPE_CHECKING:
    from edgefilter.method import emp

__all__ = [
    "FULL_PRECISION",
    "SUPPORTED_BITS",
    "ErrorQuantizer",
    "QuantizedConv",
    "QuantizedDot",
    "bit_ops_factor",
    "conv_general_dilated",
    "dot_general",
    "error_quantizer",
    "fake_quantize",
    "fake_quantize_ste",
    "quantize_cotangent",
    "stochastic_quantize",
]

#: Bit widths the quantized layers accept; 32 means no quantization at all.
SUPPORTED_BITS: tuple[int, ...] = (32, 16, 8, 6, 4)
FULL_PRECISION = 32


def _check_bits(bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}.")
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}.")
    return int(bits)


def _compute_dtype(x: jax.Array) -> Any:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"only floating-point arrays are quantized, got {x.dtype}.")
    return jnp.promote_types(x.dtype, jnp.float32)


def _safe_range(span: jax.Array) -> jax.Array:
    """``span`` where it is a positive normal number, else 1 (a constant tensor: k = 0)."""
    return jnp.where(span >= jnp.finfo(span.dtype).tiny, span, jnp.ones_like(span))


# ----------------------------------------------------------------------------------------
# Forward quantizer (weights and activations): asymmetric, per tensor, round to nearest.
# ----------------------------------------------------------------------------------------


def fake_quantize(x: jax.Array, bits: int) -> jax.Array:
    """Banner's forward quantizer: ``2^b`` levels spanning the tensor's own range.

    ``Delta = (max(x) - min(x)) / (2^b - 1)`` and
    ``Q(x) = min(x) + Delta * round((x - min(x)) / Delta)`` (round half to even). The
    top level is set to ``max(x)`` exactly and the result is clipped to
    ``[min(x), max(x)]``, so the output stays inside the input's range, has at most
    ``2^b`` distinct values, and ``Q(Q(x)) == Q(x)`` bitwise as long as float32 resolves
    the grid (``max|x| <= 2^(22-b) * (max(x) - min(x))``, e.g. offset up to 64 ranges at
    16 bits). A constant tensor is returned unchanged. The derivative of this function
    is zero almost everywhere; use :func:`fake_quantize_ste` in training.

    Args:
      x: floating-point array (computed in at least float32, returned in ``x.dtype``).
      bits: one of :data:`SUPPORTED_BITS`; 32 returns ``x`` itself.

    Returns:
      The quantized array, same shape and dtype as ``x``.
    """
    bits = _check_bits(bits)
    x = jnp.asarray(x)
    if bits == FULL_PRECISION:
        return x
    xc = x.astype(_compute_dtype(x))
    levels = 2**bits - 1
    lo, hi = jnp.min(xc), jnp.max(xc)
    # (x - lo) / Delta computed as (x - lo) / range * levels, and k * Delta as
    # k * range / levels: no subnormal Delta even for ranges near the float minimum.
    span = _safe_range(hi - lo)
    k = jnp.clip(jnp.round((xc - lo) / span * levels), 0, levels)
    q = jnp.where(k == levels, hi, lo + k * span / levels)
    return jnp.clip(q, lo, hi).astype(x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def fake_quantize_ste(x: jax.Array, bits: int) -> jax.Array:
    """:func:`fake_quantize` with a straight-through estimator: ``dQ/dx := I``.

    The forward value is exactly ``fake_quantize(x, bits)``; any tangent (and so any
    cotangent under ``jax.grad``) passes through unchanged.
    """
    return fake_quantize(x, bits)


@fake_quantize_ste.defjvp
def _fake_quantize_ste_jvp(
    bits: int, primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[jax.Array, jax.Array]:
    (x,), (x_dot,) = primals, tangents
    return fake_quantize(x, bits), x_dot


# ----------------------------------------------------------------------------------------
# Error-map quantizer (backward): symmetric, per tensor, stochastic rounding.
# ----------------------------------------------------------------------------------------


def stochastic_quantize(x: jax.Array, bits: int, key: jax.Array) -> jax.Array:
    """Symmetric ``b``-bit quantization with unbiased stochastic rounding.

    ``K = 2^(b-1) - 1``, ``Delta = max|x| / K`` and
    ``Q(x) = Delta * clip(floor(x / Delta + u), -K, K)`` with ``u ~ U[0, 1)`` drawn
    independently per element from ``key``; the end levels are ``+-max|x|`` exactly.
    It is computed as
    ``floor(v) + 1[u < v - floor(v)]`` with ``v = x / Delta`` (equal in distribution, and
    free of the rounding of ``v + u`` in float), so ``E_u[Q(x)] = x``: the rounding error
    is zero-mean with standard deviation at most ``Delta / 2``. The output has at most
    ``2^b - 1`` distinct values, lies in ``[-max|x|, max|x|]``, and zeros stay zero.

    Args:
      x: floating-point array (computed in at least float32, returned in ``x.dtype``).
      bits: one of :data:`SUPPORTED_BITS`; 32 returns ``x`` itself.
      key: a PRNG key (``jax.random.key`` or legacy ``PRNGKey``).

    Returns:
      The quantized array, same shape and dtype as ``x``.
    """
    bits = _check_bits(bits)
    x = jnp.asarray(x)
    if bits == FULL_PRECISION:
        return x
    dtype = _compute_dtype(x)
    xc = x.astype(dtype)
    kmax = 2 ** (bits - 1) - 1
    absmax = jnp.max(jnp.abs(xc))
    span = _safe_range(absmax)
    v = xc / span * kmax  # x / Delta, as in fake_quantize
    lower = jnp.floor(v)
    u = jax.random.uniform(key, x.shape, dtype)
    k = jnp.clip(lower + (u < v - lower).astype(dtype), -kmax, kmax)
    q = jnp.where(jnp.abs(k) == kmax, jnp.sign(k) * absmax, k * span / kmax)
    return jnp.clip(q, -absmax, absmax).astype(x.dtype)


def _checksum(x: jax.Array) -> jax.Array:
    """Wrapping uint32 sum of ``x``'s float32 bit patterns (order independent)."""
    bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.sum(bits, dtype=jnp.uint32)


@dataclasses.dataclass(frozen=True)
class ErrorQuantizer:
    """The error-map quantizer as a static ``delta -> delta`` callable.

    ``ErrorQuantizer(bits, seed)(delta) = stochastic_quantize(delta, bits, key)`` with
    ``key = fold_in(key(seed, impl=prng_impl), checksum(delta))``: the noise is a
    deterministic function of the seed and the error map itself (see the module docstring
    for why the key is not a traced operand). Frozen and hashable, so it can be EMP's
    ``error_transform``, a ``nondiff_argnums`` argument, or a flax module field.

    Attributes:
      bits: one of :data:`SUPPORTED_BITS`; 32 is the identity.
      seed: integer seed of the rounding noise.
      prng_impl: :func:`jax.random.key` implementation of the noise. The default
        ``"rbg"`` (XLA's RngBitGenerator) compiles in a fraction of a second per layer
        and is fast on accelerators; its bits are reproducible on one backend but may
        differ between backends or XLA versions. ``"threefry2x32"`` (JAX's default) is
        bit-identical everywhere but costs seconds of XLA compile time per distinct
        error-map shape on CPU.
    """

    bits: int
    seed: int = 0
    prng_impl: str = "rbg"

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise TypeError(f"seed must be an integer, got {self.seed!r}.")

    def __call__(self, delta: jax.Array) -> jax.Array:
        delta = jnp.asarray(delta)
        if self.bits == FULL_PRECISION:
            return delta
        base = jax.random.key(self.seed, impl=self.prng_impl)
        key = jax.random.fold_in(base, _checksum(delta))
        return stochastic_quantize(delta, self.bits, key)


def error_quantizer(bits: int, seed: int = 0) -> ErrorQuantizer:
    """Returns the ``delta -> delta`` error quantizer (an :class:`ErrorQuantizer`).

    Example (the composition :func:`conv_general_dilated` does for ``policy=...``)::

        emp.conv_general_dilated(emp.TopK(0.5), error_transform=quant.error_quantizer(8))
    """
    return ErrorQuantizer(bits=bits, seed=seed)


# ----------------------------------------------------------------------------------------
# Identity whose backward transforms the cotangent: op, _fwd, _bwd, defvjp.
# ----------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def quantize_cotangent(transform: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """Identity in the forward pass; the backward applies ``transform`` to the cotangent.

    Placed on a layer's output, ``transform = ErrorQuantizer(bits, seed)`` quantizes the
    output error map ``delta`` before the layer's own backward (error propagation and
    weight gradient) consumes it.

    Args:
      transform: static, hashable callable ``delta -> delta`` (same shape).
      x: the array to pass through.

    Returns:
      ``x`` unchanged.
    """
    return x


def _quantize_cotangent_fwd(
    transform: Callable[[jax.Array], jax.Array], x: jax.Array
) -> tuple[jax.Array, None]:
    return x, None


def _quantize_cotangent_bwd(
    transform: Callable[[jax.Array], jax.Array], residuals: None, delta: jax.Array
) -> tuple[jax.Array]:
    del residuals
    return (jnp.asarray(transform(delta)).astype(delta.dtype),)


quantize_cotangent.defvjp(_quantize_cotangent_fwd, _quantize_cotangent_bwd)


# ----------------------------------------------------------------------------------------
# Drop-in lax replacements.
# ----------------------------------------------------------------------------------------


def _quantize_operands(lhs: jax.Array, rhs: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
    """The forward of every quantized layer: both operands through ``fake_quantize_ste``."""
    return fake_quantize_ste(jnp.asarray(lhs), bits), fake_quantize_ste(jnp.asarray(rhs), bits)


def _full_precision_conv(xla_cpu: bool) -> Callable[..., jax.Array]:
    """Lax's convolution, or with the backend switch on its XLA:CPU lowering (same values)."""
    return conv_backward.conv_general_dilated if xla_cpu else lax.conv_general_dilated


@dataclasses.dataclass(frozen=True)
class QuantizedConv:
    """Drop-in :func:`jax.lax.conv_general_dilated` with ``bits``-bit training.

    Forward: ``conv(Q(lhs), Q(rhs))`` with :func:`fake_quantize_ste` on both operands.
    Backward: the output error is quantized by ``ErrorQuantizer(bits, seed)``; without a
    policy the rest is lax's backward on the quantized residuals (with the backend switch
    ``xla_cpu`` on, :func:`edgefilter.backends.xla_cpu.conv_backward.conv_vjp`), with a
    policy it is EMP's pruned backward, which applies the quantizer as its
    ``error_transform`` before scoring the channels. Made by :func:`conv_general_dilated`;
    frozen and hashable.
    """

    bits: int
    seed: int = 0
    policy: emp.Policy | None = None
    xla_cpu: bool = False

    @property
    def error_quantizer(self) -> ErrorQuantizer:
        return ErrorQuantizer(self.bits, self.seed)

    def __call__(self, lhs: jax.Array, rhs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        """Same arguments as :func:`jax.lax.conv_general_dilated` (forwarded as given)."""
        lhs, rhs = _quantize_operands(lhs, rhs, self.bits)
        if self.policy is None:
            out = _full_precision_conv(self.xla_cpu)(lhs, rhs, *args, **kwargs)
            return quantize_cotangent(self.error_quantizer, out)
        # Imported here so that quant does not depend on emp unless EMP is used.
        from edgefilter.method import emp

        pruned = emp.conv_general_dilated(
            self.policy, error_transform=self.error_quantizer, xla_cpu=self.xla_cpu
        )
        return pruned(lhs, rhs, *args, **kwargs)


@dataclasses.dataclass(frozen=True)
class QuantizedDot:
    """Drop-in :func:`jax.lax.dot_general` with ``bits``-bit training.

    Forward: ``dot(Q(lhs), Q(rhs))`` with :func:`fake_quantize_ste` on both operands;
    backward: lax's, on the output error quantized by ``ErrorQuantizer(bits, seed)``.
    Made by :func:`dot_general`; frozen and hashable.
    """

    bits: int
    seed: int = 0

    @property
    def error_quantizer(self) -> ErrorQuantizer:
        return ErrorQuantizer(self.bits, self.seed)

    def __call__(self, lhs: jax.Array, rhs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        """Same arguments as :func:`jax.lax.dot_general` (forwarded as given)."""
        lhs, rhs = _quantize_operands(lhs, rhs, self.bits)
        out = lax.dot_general(lhs, rhs, *args, **kwargs)
        return quantize_cotangent(self.error_quantizer, out)


def conv_general_dilated(
    bits: int, *, policy: emp.Policy | None = None, seed: int = 0, xla_cpu: bool | None = None
) -> Callable[..., jax.Array]:
    """A ``bits``-bit training replacement for :func:`jax.lax.conv_general_dilated`.

    Args:
      bits: one of :data:`SUPPORTED_BITS`. ``32`` returns
        :func:`jax.lax.conv_general_dilated` (with ``xla_cpu`` on,
        :func:`backends.xla_cpu.conv_backward.conv_general_dilated`: lax's convolution,
        its error propagation computed as GEMM + overlap-add where that is cheaper), or
        ``emp.conv_general_dilated(policy)`` when a policy is given.
      policy: optional EMP policy (``emp.TopK`` / ``emp.Threshold``). The forward then
        quantizes the operands and calls
        ``emp.conv_general_dilated(policy, error_transform=ErrorQuantizer(bits, seed))``,
        so the error map is quantized inside EMP's backward, before channel scoring.
      seed: seed of the stochastic rounding of the error map.
      xla_cpu: :mod:`edgefilter.backends`' switch, passed on to EMP; ``None`` resolves
        it from JAX's backend. The values are the same either way.

    Returns:
      A callable with lax's signature, e.g. for
      ``flax.linen.Conv(..., conv_general_dilated=conv_general_dilated(8))``.
    """
    bits = _check_bits(bits)
    xla_cpu = backends.use_xla_cpu(xla_cpu)
    if bits == FULL_PRECISION:
        if policy is None:
            return _full_precision_conv(xla_cpu)
        from edgefilter.method import emp

        return emp.conv_general_dilated(policy, xla_cpu=xla_cpu)
    return QuantizedConv(bits=bits, seed=seed, policy=policy, xla_cpu=xla_cpu)


def dot_general(bits: int, *, seed: int = 0) -> Callable[..., jax.Array]:
    """A ``bits``-bit training replacement for :func:`jax.lax.dot_general`.

    Args:
      bits: one of :data:`SUPPORTED_BITS`; ``32`` returns ``jax.lax.dot_general`` itself.
      seed: seed of the stochastic rounding of the error map.

    Returns:
      A callable with lax's signature, e.g. for
      ``flax.linen.Dense(..., dot_general=dot_general(8))``.
    """
    bits = _check_bits(bits)
    if bits == FULL_PRECISION:
        return lax.dot_general
    return QuantizedDot(bits=bits, seed=seed)


# ----------------------------------------------------------------------------------------
# Accounting.
# ----------------------------------------------------------------------------------------


def bit_ops_factor(bits_a: int, bits_b: int) -> float:
    """Cost of one ``a``-bit by ``b``-bit multiply-accumulate relative to a 32-bit one.

    ``factor = a * b / 32^2`` (bit operations scale with the product of the operand
    widths), so ``bit_ops_factor(8, 8) == 1 / 16`` and ``bit_ops_factor(32, 32) == 1``.

    Args:
      bits_a: width of one operand, a positive integer.
      bits_b: width of the other operand, a positive integer.

    Returns:
      The factor as a Python float.
    """
    for name, value in (("bits_a", bits_a), ("bits_b", bits_b)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return bits_a * bits_b / FULL_PRECISION**2
