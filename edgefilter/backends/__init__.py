"""The backend switch: XLA:CPU lowerings on or off, decided once per model and per step.

Everything in :mod:`edgefilter.backends.xla_cpu` computes what flax or lax computes (the
same values up to float rounding), in a form that XLA:CPU runs faster. One boolean,
``xla_cpu``, decides whether those forms are used. With it **on**:

* a conv layer's error propagation (PAPER.md Eq. 8) runs as one GEMM over the output
  positions plus an overlap-add where lax's transposed convolution would mostly multiply
  zeros (:mod:`~edgefilter.backends.xla_cpu.conv_backward`);
* batch norm sums its per-channel statistics, forward and backward, on a folded wide view
  of the activations (:mod:`~edgefilter.backends.xla_cpu.channel_fold`,
  :class:`~edgefilter.backends.xla_cpu.layers.BatchNorm`), and so do EMP's channel
  scores (Eq. 11);
* a first conv with a tiny or single-channel kernel is a sum of per-tap matmuls
  (:func:`~edgefilter.backends.xla_cpu.layers.small_kernel_conv`, used by
  ``training.steps.build_model``);
* 2x2 max pooling records its argmax and has a one-pass backward (a ``jax.custom_vjp``,
  :func:`~edgefilter.backends.xla_cpu.layers.max_pool_2x2`);
* large conv inputs and EMP's error maps are computed once into buffers of their own
  (:mod:`~edgefilter.backends.xla_cpu.own_buffer`);
* the steps are compiled with XLA:CPU options (YNNPACK fusions off; the filter's forward
  without the fusion emitters): :func:`jit`, :mod:`~edgefilter.backends.xla_cpu.compile`.

With it **off**, models use flax's ``nn.BatchNorm`` and ``nn.max_pool`` and lax's
convolution with its own backward, EMP's backward is lax's vjp on the kept channels, and
:func:`jit` is :func:`jax.jit`.

**Default**: on when :func:`jax.default_backend` is ``"cpu"``, off on any other backend
(:func:`use_xla_cpu`). **Forcing it**: pass ``xla_cpu=True`` or ``xla_cpu=False`` to
``models.create``, ``emp.conv_general_dilated``, ``quant.conv_general_dilated``,
``training.steps.build_model`` and :func:`jit`; on the command line,
``--xla_cpu`` / ``--xla_cpu=false`` (``TrainConfig.xla_cpu``, recorded resolved in
``summary.json``'s config). The choice is explicit per call: there is no global state.
A model's variables have the same names and shapes either way, so a checkpoint written in
one mode loads in the other.

**Forward-mode autodiff.** Off, :func:`jax.jvp` and :func:`jax.linearize` work through
every model of :mod:`edgefilter.models`. On, the GEMM error propagation, the tap-sum conv,
the argmax pooling and ``own_buffer`` are ``jax.custom_vjp`` functions, which define a
reverse-mode derivative only: ``jax.jvp`` through them raises a ``TypeError`` that says to
turn this switch off. (``jax.linearize`` itself succeeds, since reverse mode uses it;
applying the linear map it returns raises JAX's own "can't apply forward-mode autodiff
(jvp) to a custom_vjp function", as does ``jax.jvp`` traced inside ``jax.jit``.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from edgefilter.backends.xla_cpu import compile as compile_lib

__all__ = ["jit", "use_xla_cpu"]


def use_xla_cpu(setting: bool | None = None) -> bool:
    """The switch's state: ``setting`` when given, else whether JAX's backend is the CPU."""
    if setting is None:
        return jax.default_backend() == "cpu"
    if not isinstance(setting, bool):
        raise ValueError(f"xla_cpu={setting!r} must be True, False or None (backend default)")
    return setting


def jit(
    fun: Callable,
    *,
    xla_cpu: bool | None = None,
    fusion_emitters: bool = True,
    **kwargs: Any,
) -> Any:
    """:func:`jax.jit`, with the XLA:CPU compile options when the switch is on.

    On, ``fun`` is compiled with :func:`compile_lib.compiler_options` (YNNPACK fusions
    off; also the fusion emitters off when ``fusion_emitters`` is False, which the
    instance filter's forward asks for); options given in ``compiler_options`` win. Off,
    this is ``jax.jit(fun, **kwargs)``. Per compilation: a user's own ``jax.jit`` is not
    affected.
    """
    options = {}
    if use_xla_cpu(xla_cpu):
        options = compile_lib.compiler_options(fusion_emitters=fusion_emitters)
    options.update(kwargs.pop("compiler_options", None) or {})
    return jax.jit(fun, compiler_options=options or None, **kwargs)
