"""``jit``: :func:`jax.jit` with the XLA options edgefilter's steps are measured under.

On XLA:CPU, jaxlib 0.10 emits convolutions as YNNPACK fusions by default. On the
2-core x86-64 CPU where our benchmarks run (AVX2, no AVX-512), XLA's own Eigen
convolutions are much faster for the networks of the paper (same step, compiled
with and without YNNPACK fusions):

  jitted train step, median          YNNPACK     Eigen
  LeNet, batch 64                   22-23 ms    13-14 ms
  ResNet-20, CIFAR shapes, batch 128  644 ms      437 ms

(``benchmarks/lenet_throughput.py`` and ``benchmarks/emp_step.py``. A trace with
``jax.profiler`` and ``--xla_cpu_enable_xprof_traceme=true`` put about 16 of the LeNet
step's 22 ms in YNNPACK fusions.) On a 2-core AMD Zen 4 (AVX-512) it was the same
story: the LeNet step took 20.7 ms with YNNPACK fusions and 12.7 ms without.
:func:`compiler_options` therefore turns YNNPACK fusions off for every step edgefilter
compiles.

This is per compilation, not a process-wide flag: a user's own ``jax.jit`` is not
affected, and a user who sets ``xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS``
keeps their choice. Other backends get no options.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# An empty list: no YNNPACK fusions, so convolutions go to Eigen and dots to XLA's own
# kernels (as compile options the list replaces the default; "-name" is XLA_FLAGS syntax).
CPU_OPTIONS = {YNN_FUSION_OPTION: ""}


def compiler_options(backend: str | None = None) -> dict[str, str]:
    """The XLA options edgefilter compiles its steps with on ``backend`` (default: JAX's).

    CPU: ``CPU_OPTIONS`` (see the module doc), unless ``XLA_FLAGS`` already sets the
    YNNPACK fusion types. Any other backend: none.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu" or YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(CPU_OPTIONS)


def jit(fun: Callable, **kwargs: Any) -> Any:
    """:func:`jax.jit` with :func:`compiler_options` (explicit ``compiler_options`` win)."""
    options = {**compiler_options(), **(kwargs.pop("compiler_options", None) or {})}
    return jax.jit(fun, compiler_options=options or None, **kwargs)
