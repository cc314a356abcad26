"""A clear error where forward-mode autodiff meets one of the XLA:CPU lowerings.

The lowerings that change a backward pass (the GEMM error propagation, the tap-sum conv,
the argmax pooling, ``own_buffer``) are ``jax.custom_vjp`` functions: JAX differentiates
them in reverse mode only, and ``jax.jvp`` through one raises a ``TypeError`` that does
not say which function or what to do. :func:`reverse_mode_only` wraps a lowering so that
this error names the lowering and :mod:`edgefilter.backends`' switch, which selects
flax's and lax's own layers (forward-differentiable) when off.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

__all__ = ["ForwardModeError", "reverse_mode_only"]

# The start of JAX's message for jax.jvp of a custom_vjp function (jax 0.4 to 0.10).
_JAX_MESSAGE = "can't apply forward-mode autodiff (jvp) to a custom_vjp function"


class ForwardModeError(TypeError):
    """``jax.jvp`` reached an XLA:CPU lowering that has a reverse-mode derivative only."""


def reverse_mode_only(fun: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``fun``, raising :class:`ForwardModeError` naming ``name`` and the switch under jvp."""

    @functools.wraps(fun)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fun(*args, **kwargs)
        except ForwardModeError:
            raise
        except TypeError as e:
            if _JAX_MESSAGE not in str(e):
                raise
            raise ForwardModeError(
                f"{name} is an XLA:CPU lowering (edgefilter.backends' switch is on): a "
                "jax.custom_vjp, differentiable in reverse mode only, so jax.jvp cannot "
                "pass through it. For forward mode turn the switch off: "
                "models.create(..., xla_cpu=False), training.steps.build_model(..., "
                "xla_cpu=False), or --xla_cpu=false on the command line."
            ) from e

    return call
