"""The XLA:CPU options edgefilter's steps are compiled with (see :func:`edgefilter.backends.jit`).

**YNNPACK fusions off.** On XLA:CPU, jaxlib 0.10 emits convolutions as YNNPACK fusions by
default. For the small convolutions of the paper's networks XLA's own Eigen convolutions
run the train steps markedly faster on the CPUs we measured (benchmarks/README.md,
"XLA:CPU lowerings"), so :func:`compiler_options` turns YNNPACK fusions off.

This is per compilation, not a process-wide flag: a user's own ``jax.jit`` is not
affected, and a user who sets ``xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS``
keeps their choice. Other backends get no options.

**Filter inference without the fusion emitters.** XLA:CPU generates code for its loop
fusions with its MLIR "fusion emitters" by default; ``xla_cpu_use_fusion_emitters=False``
brings back the older elemental emitter. The instance filter's forward on every streamed
chunk (its first layer a tap-sum conv, ReLU and 2x2 pooling in one fusion) runs faster
with the older emitter, from the same HLO; train steps do not clearly gain. So only filter
inference asks for it: ``jit(..., fusion_emitters=False)``.
"""

from __future__ import annotations

import functools
import os
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
