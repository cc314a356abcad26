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

**Filter inference without the fusion emitters.** XLA:CPU generates code for its loop
fusions with its MLIR "fusion emitters" by default; ``xla_cpu_use_fusion_emitters=False``
brings back the older elemental emitter. For the instance filter's forward on every
streamed chunk, that is much faster: the slim LeNet filter's first layer (a 3x3x1x6
tap-sum conv, ReLU and 2x2 pooling in one fusion, see ``models.layers``) took 0.14
instead of 0.50 ms on 64 instances, and the whole jitted ``predict`` 0.95 instead of
1.31 ms (same HLO, only the generated code differs). The ResNet-8 filter's forward on
128 CIFAR-shaped instances was unchanged (38.9 against 39.8 ms). Train steps do not
clearly gain: the ResNet-20 train step (batch 128) got slower, 712 against 665 ms;
LeNet's SGD step changed by -5%, -3% and +2% and the EIF step (the main network on 19
instances and the filter's update) by -1%, -3% and -9% in three A/Bs, within this
machine's noise. So only filter inference asks for it: ``jit(...,
fusion_emitters=False)``. (2-core AMD Zen 4 VM, jaxlib 0.10.2; medians of rounds
alternating both compilations in one process.)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# An empty list: no YNNPACK fusions, so convolutions go to Eigen and dots to XLA's own
# kernels (as compile options the list replaces the default; "-name" is XLA_FLAGS syntax).
CPU_OPTIONS = {YNN_FUSION_OPTION: ""}
FUSION_EMITTERS_OPTION = "xla_cpu_use_fusion_emitters"


def compiler_options(backend: str | None = None, *, fusion_emitters: bool = True) -> dict[str, Any]:
    """The XLA options edgefilter compiles its steps with on ``backend`` (default: JAX's).

    CPU: ``CPU_OPTIONS`` (see the module doc), plus ``xla_cpu_use_fusion_emitters=False``
    when ``fusion_emitters`` is False (filter inference, see the module doc); an option
    that ``XLA_FLAGS`` already sets is left to it, and one this jaxlib does not know
    (:func:`cpu_accepts`) is left out. Any other backend: none.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return {}
    options: dict[str, Any] = dict(CPU_OPTIONS)
    if not fusion_emitters:
        options[FUSION_EMITTERS_OPTION] = False
    user_flags = os.environ.get("XLA_FLAGS", "")
    return {
        name: value
        for name, value in options.items()
        if name not in user_flags and cpu_accepts(name, value)
    }


@functools.cache
def cpu_accepts(name: str, value: Any) -> bool:
    """Whether this jaxlib's XLA:CPU knows compile option ``name`` (one tiny compile).

    The options above are recent (jaxlib 0.10 has them); an XLA that does not know one
    refuses to compile anything given it, so such an option is left out instead.
    """
    x = jax.device_put(np.float32(0), jax.devices("cpu")[0])
    try:
        jax.jit(lambda a: a + 1, compiler_options={name: value}).lower(x).compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True


def jit(fun: Callable, *, fusion_emitters: bool = True, **kwargs: Any) -> Any:
    """:func:`jax.jit` with :func:`compiler_options` (explicit ``compiler_options`` win).

    ``fusion_emitters=False`` compiles with XLA:CPU's older elemental emitter (see the
    module doc); other backends ignore it.
    """
    options = {
        **compiler_options(fusion_emitters=fusion_emitters),
        **(kwargs.pop("compiler_options", None) or {}),
    }
    return jax.jit(fun, compiler_options=options or None, **kwargs)
